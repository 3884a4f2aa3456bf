-- Question: how are the predicted tags distributed per run, language and round, over all
--   pseudo-labels and over the selected ones?
-- Output columns: run_id, lang, round, tag, words, share (of all words in the group),
--   selected_words, selected_share (of the selected rows' words; 0 when none selected)
WITH words AS (
  SELECT run_id, lang, round, selected, unnest(tags) AS tag FROM pseudo_labels
)
SELECT run_id, lang, round, tag,
  count(*) AS words,
  count(*) / sum(count(*)) OVER (PARTITION BY run_id, lang, round) AS share,
  count(*) FILTER (WHERE selected) AS selected_words,
  coalesce(count(*) FILTER (WHERE selected)
    / nullif(sum(count(*) FILTER (WHERE selected)) OVER (PARTITION BY run_id, lang, round), 0),
    0) AS selected_share
FROM words
GROUP BY run_id, lang, round, tag
ORDER BY run_id, lang, round, words DESC, tag;
