-- Question: how did annotation projection on parallel data go per run, language and round:
--   how many pairs were kept (ok) or dropped by each filter (unmapped / overlap /
--   inconsistent), with how many entities and what alignment scores?
-- Output columns: run_id, lang, round, status, pairs, share, src_entities, projected_spans,
--   avg_alignment_score
SELECT run_id, lang, round, status,
  count(*) AS pairs,
  count(*) / sum(count(*)) OVER (PARTITION BY run_id, lang, round) AS share,
  sum(len(src_entities))::BIGINT AS src_entities,
  sum(len(tgt_spans))::BIGINT AS projected_spans,
  avg(alignment_score) AS avg_alignment_score
FROM projections
GROUP BY run_id, lang, round, status
ORDER BY run_id, lang, round, status;
