-- Question: per run, language and round, how many sentences and words were pseudo-labeled, how
--   many entities the teacher predicted, and how many of those the selector kept?
-- Output columns: run_id, lang, round, sentences, words, entities, entities_per_sentence,
--   selected_sentences, selected_entities, input_sentences (rows of the sentences table
--   written in that round; 0 when the round reused an earlier round's sentences)
-- Entities are pseudo_labels.n_entities: strict-IOB2 spans (one per B- tag).
WITH inputs AS (
  SELECT run_id, lang, round, count(*) AS input_sentences
  FROM sentences GROUP BY ALL
)
SELECT p.run_id, p.lang, p.round,
  count(*) AS sentences,
  sum(p.length)::BIGINT AS words,
  sum(p.n_entities)::BIGINT AS entities,
  sum(p.n_entities) / count(*) AS entities_per_sentence,
  count(*) FILTER (WHERE p.selected) AS selected_sentences,
  coalesce(sum(p.n_entities) FILTER (WHERE p.selected), 0)::BIGINT AS selected_entities,
  coalesce(any_value(i.input_sentences), 0) AS input_sentences
FROM pseudo_labels p
LEFT JOIN inputs i USING (run_id, lang, round)
GROUP BY p.run_id, p.lang, p.round
ORDER BY p.run_id, p.lang, p.round;
