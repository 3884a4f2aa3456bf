-- Question: which runs are in the store, in what state, for how long, with which metrics?
-- Output columns: run_id, job, status, code_version, started_at, ended_at, seconds
--   (null while running), rounds_with_metrics, metrics (JSON {round: {metric: value}})
SELECT run_id, job, status, code_version, started_at, ended_at,
  epoch(ended_at) - epoch(started_at) AS seconds,
  len(json_keys(metrics)) AS rounds_with_metrics,
  metrics
FROM runs
ORDER BY started_at, run_id;
