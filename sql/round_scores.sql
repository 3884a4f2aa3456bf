-- Question: how did each round's model score, on the source-language dev set (the one that
--   chose its checkpoint) and, for reporting only, on the target dev set -- overall and per
--   entity type -- and what did it learn from?
-- Output columns: run_id, job, lang, round, teacher, student, n_train, source_dev_f1,
--   target_dev_f1, target_f1_per_type (JSON {type: f1}), discard_ratio, seconds
-- Source: runs.metrics, {round: {lang: round summary}} as the distillation jobs write it
--   (rounds of a labeling-only run have no scores and are left out).
WITH per_round AS (
  SELECT run_id, job, unnest(json_keys(metrics)) AS rnd, metrics::JSON AS metrics FROM runs
), per_lang AS (
  SELECT run_id, job, rnd, unnest(json_keys(json_extract(metrics, '$."' || rnd || '"'))) AS lang,
    metrics
  FROM per_round
), summary AS (
  SELECT run_id, job, lang, rnd::INTEGER AS round,
    json_extract(metrics, '$."' || rnd || '"."' || lang || '"') AS m
  FROM per_lang
)
SELECT run_id, job, lang, round,
  m ->> 'teacher' AS teacher, m ->> 'student' AS student,
  (m ->> 'n_train')::BIGINT AS n_train,
  round((m ->> 'source_dev_f1')::DOUBLE, 4) AS source_dev_f1,
  round((m -> 'target_dev' ->> 'f1')::DOUBLE, 4) AS target_dev_f1,
  m -> 'target_dev' -> 'per_type' AS target_f1_per_type,
  round((m ->> 'discard_ratio')::DOUBLE, 3) AS discard_ratio,
  (m ->> 'seconds')::DOUBLE AS seconds
FROM summary
WHERE m ->> 'source_dev_f1' IS NOT NULL
ORDER BY run_id, lang, round;
