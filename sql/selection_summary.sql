-- Question: how many pseudo-labels did each selector keep and discard per run, language and
--   round, and how do the scores of the kept and the discarded rows compare?
-- Output columns: run_id, lang, round, selector, selected, sentences,
--   share (of the group's rows: the selection ratio on the selected = true row),
--   avg_confidence, median_confidence, avg_f_conf, avg_agreement, avg_lang_score,
--   avg_policy_p, avg_length, avg_entities (averages skip nulls; null when all are null)
SELECT run_id, lang, round, selector, selected,
  count(*) AS sentences,
  count(*) / sum(count(*)) OVER (PARTITION BY run_id, lang, round, selector) AS share,
  avg(confidence) AS avg_confidence,
  quantile_cont(confidence, 0.5) AS median_confidence,
  avg(f_conf) AS avg_f_conf,
  avg(agreement) AS avg_agreement,
  avg(lang_score) AS avg_lang_score,
  avg(policy_p) AS avg_policy_p,
  avg(length) AS avg_length,
  avg(n_entities) AS avg_entities
FROM pseudo_labels
GROUP BY run_id, lang, round, selector, selected
ORDER BY run_id, lang, round, selector, selected DESC;
