-- Question: which predicted tags changed between two rounds of the same run and language
--   (word by word, for sentences pseudo-labeled in both rounds)?
-- Parameters: round_a, round_b (DuckDB variables; defaults: the first and the last round of
--   each run and language). Nothing is returned when both are the same round.
-- Output columns: run_id, lang, round_a, round_b, tag_a, tag_b, words,
--   share_of_tag_a (of all round-a words tagged tag_a, the share that became tag_b)
WITH bounds AS (
  SELECT run_id, lang,
    coalesce(getvariable('round_a'), min(round))::INTEGER AS round_a,
    coalesce(getvariable('round_b'), max(round))::INTEGER AS round_b
  FROM pseudo_labels
  GROUP BY ALL
),
pairs AS (
  SELECT a.run_id, a.lang, r.round_a, r.round_b,
    unnest(a.tags) AS tag_a, unnest(b.tags) AS tag_b
  FROM bounds r
  JOIN pseudo_labels a ON a.run_id = r.run_id AND a.lang = r.lang AND a.round = r.round_a
  JOIN pseudo_labels b ON b.run_id = r.run_id AND b.lang = r.lang AND b.round = r.round_b
    AND b.sent_id = a.sent_id
  WHERE r.round_a <> r.round_b
)
SELECT run_id, lang, round_a, round_b, tag_a, tag_b,
  count(*) AS words,
  count(*) / sum(count(*)) OVER (PARTITION BY run_id, lang, round_a, round_b, tag_a)
    AS share_of_tag_a
FROM pairs
GROUP BY run_id, lang, round_a, round_b, tag_a, tag_b
QUALIFY tag_a IS DISTINCT FROM tag_b
ORDER BY run_id, lang, round_a, round_b, words DESC, tag_a, tag_b;
