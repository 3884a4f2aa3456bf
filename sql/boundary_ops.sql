-- Question: where gold exists, which boundary operation (op) on how many words (n_op) turns
--   each gold span into the tagger's predicted span, per run, language and round? This is
--   CalibreNet's p(op, n_op) (Sec. 3.2.2), estimated from a tagger's own errors -- run it on a
--   round that labeled English dev to get the garbling distribution for PBR and fine-tuning.
-- Output columns: run_id, lang, round, op (noop / add / delete / shift), n_op, spans,
--   share (of the matched predicted spans in the group)
-- Spans are strict IOB2 (bio_spans), [start, end) word offsets; entity types are ignored (a
--   type error still has a boundary). Each predicted span P is matched to the gold span G of
--   its sentence that overlaps or touches it with the smallest |P.start - G.start| +
--   |P.end - G.end| (ties: smaller G.start, then G.end); P matching none (spurious) and
--   missed gold spans are left out. Then, as xner_ray.methods.calibrenet.garble.classify_op:
--   noop    P = G, n_op 0
--   add     P strictly contains G (super span), n_op = words added on both sides
--   delete  P lies strictly inside G (sub span), n_op = words removed
--   shift   otherwise (drifted, adjacent), n_op = |P.start - G.start|
--   n_op is not clipped here; the Python estimate clips it to its max_n.
WITH gold AS (
  SELECT lang, sent_id, any_value(gold_tags) AS gold_tags
  FROM sentences WHERE gold_tags IS NOT NULL
  GROUP BY ALL
),
spans AS (
  SELECT p.run_id, p.lang, p.round,
    bio_spans(g.gold_tags) AS gold_spans, bio_spans(p.tags) AS pred_spans
  FROM pseudo_labels p
  JOIN gold g ON g.lang = p.lang AND g.sent_id = p.sent_id
),
preds AS (
  SELECT run_id, lang, round, gold_spans, unnest(pred_spans) AS p FROM spans
),
matched AS (
  SELECT run_id, lang, round, p,
    list_min(list_transform(
      list_filter(gold_spans, lambda g: (p.start < g."end" AND g.start < p."end")
        OR p."end" = g.start OR g."end" = p.start),
      lambda g: {'d': abs(p.start - g.start) + abs(p."end" - g."end"),
                 's': g.start, 'e': g."end"})) AS m
  FROM preds
),
ops AS (
  SELECT run_id, lang, round,
    CASE
      WHEN p.start = m.s AND p."end" = m.e THEN 'noop'
      WHEN p.start <= m.s AND m.e <= p."end" THEN 'add'
      WHEN m.s <= p.start AND p."end" <= m.e THEN 'delete'
      ELSE 'shift' END AS op,
    CASE
      WHEN p.start = m.s AND p."end" = m.e THEN 0
      WHEN p.start <= m.s AND m.e <= p."end" THEN (m.s - p.start) + (p."end" - m.e)
      WHEN m.s <= p.start AND p."end" <= m.e THEN (p.start - m.s) + (m.e - p."end")
      ELSE greatest(1, abs(p.start - m.s)) END AS n_op
  FROM matched
  WHERE m IS NOT NULL
)
SELECT run_id, lang, round, op, n_op, count(*) AS spans,
  count(*) / sum(count(*)) OVER (PARTITION BY run_id, lang, round) AS share
FROM ops
GROUP BY run_id, lang, round, op, n_op
ORDER BY run_id, lang, round, op, n_op;
