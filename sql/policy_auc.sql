-- Question: does RIKD's policy keep the right pseudo-labels? Per run, language and round, the
--   AUC of the policy's keep probability policy_p against sentence-level pseudo-label
--   correctness (RIKD Eq. 4's pi(s); issue 16: a policy that learns ranks correct above wrong).
-- Output columns: run_id, lang, round, sentences, correct, wrong, auc, mean_p_correct,
--   mean_p_wrong
-- Correct: the pseudo-label tags equal the gold tags word for word (sentences.gold_tags, joined
--   on lang + sent_id, any round; gold is kept for evaluation only). Rows without gold or
--   without a policy decision (policy_p null: not reached by the reinforced phase) are left out.
-- auc = P(policy_p of a random correct sentence > that of a random wrong one), ties counted 1/2
--   (Mann-Whitney U / (correct * wrong), average ranks); 0.5 = chance, null when either class
--   is empty.
-- Parameters (optional, `--param name=value`; NULL = every one): run_id, lang.
WITH gold AS (
  SELECT lang, sent_id, any_value(gold_tags) AS gold_tags
  FROM sentences WHERE gold_tags IS NOT NULL
  GROUP BY ALL
),
scored AS (
  SELECT p.run_id, p.lang, p.round, p.policy_p::DOUBLE AS policy_p,
    (p.tags = g.gold_tags) AS ok
  FROM pseudo_labels p
  JOIN gold g ON g.lang = p.lang AND g.sent_id = p.sent_id
  WHERE p.policy_p IS NOT NULL
    AND coalesce(p.run_id = getvariable('run_id'), true)
    AND coalesce(p.lang = getvariable('lang'), true)
),
ranked AS (
  SELECT *,
    rank() OVER (PARTITION BY run_id, lang, round ORDER BY policy_p)
      + (count(*) OVER (PARTITION BY run_id, lang, round, policy_p) - 1) / 2.0 AS r
  FROM scored
),
counts AS (
  SELECT run_id, lang, round, count(*) AS sentences,
    count(*) FILTER (WHERE ok) AS correct,
    count(*) FILTER (WHERE NOT ok) AS wrong,
    sum(r) FILTER (WHERE ok) AS rank_sum,
    avg(policy_p) FILTER (WHERE ok) AS mean_p_correct,
    avg(policy_p) FILTER (WHERE NOT ok) AS mean_p_wrong
  FROM ranked
  GROUP BY ALL
)
SELECT run_id, lang, round, sentences, correct, wrong,
  CASE WHEN correct > 0 AND wrong > 0
       THEN (rank_sum - correct * (correct + 1) / 2.0) / (correct * wrong) END AS auc,
  mean_p_correct, mean_p_wrong
FROM counts
ORDER BY run_id, lang, round;
