-- Question: how much input was rejected, and why, per run, language and round?
-- Output columns: run_id, lang, round, reason, rejects, files (distinct input paths),
--   example_path, example_line, example_raw (the first reject by path and line; raw cut to
--   200 characters)
SELECT run_id, lang, round, reason,
  count(*) AS rejects,
  count(DISTINCT path) AS files,
  first(path ORDER BY path, line) AS example_path,
  first(line ORDER BY path, line) AS example_line,
  left(first(raw ORDER BY path, line), 200) AS example_raw
FROM rejects
GROUP BY ALL
ORDER BY run_id, lang, round, rejects DESC, reason;
