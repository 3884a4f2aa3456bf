-- Question: which runs are in the store, in what state, for how long, with which metrics?
-- Output columns: run_id, job, status, state (status, or 'stale' for a run still marked
--   running whose driver stopped renewing its heartbeat: killed), code_version, started_at,
--   ended_at, heartbeat_at, seconds (null while running), heartbeat_age_s,
--   rounds_with_metrics, metrics (JSON {round: {metric: value}})
-- Parameter: stale_after_s (default 300: five missed heartbeats of a minute each)
SELECT run_id, job, status,
  CASE WHEN status = 'running' AND epoch(now()) - epoch(coalesce(heartbeat_at, started_at))
         > coalesce(getvariable('stale_after_s'), 300) THEN 'stale' ELSE status END AS state,
  code_version, started_at, ended_at, heartbeat_at,
  epoch(ended_at) - epoch(started_at) AS seconds,
  round(epoch(now()) - epoch(coalesce(heartbeat_at, started_at)), 1) AS heartbeat_age_s,
  len(json_keys(metrics)) AS rounds_with_metrics,
  metrics
FROM runs
ORDER BY started_at, run_id;
