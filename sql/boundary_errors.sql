-- Question: where gold exists, which kinds of errors do the pseudo-labels make, per run,
--   language and round? (CalibreNet Table 1: super / sub / drifted / adjacent span errors;
--   entity type errors separately.)
-- Output columns: run_id, lang, round, category, boundary (true for the four boundary
--   categories), errors, share (of all errors in the group)
-- Spans are strict IOB2 (bio_spans), [start, end) word offsets. Every predicted span P that is
--   not an exact match (same start, end, type) of a gold span gets the first category that
--   applies, G ranging over the gold spans of its sentence:
--   type          some G has P's start and end but another type
--   super         some G of P's type lies inside P (P.start <= G.start, G.end <= P.end); P is
--                 strictly larger, since exact matches are not errors
--   sub           P lies strictly inside some G of its type
--   drifted       P overlaps some G of its type, neither containing the other
--   adjacent      P touches some G of its type without overlapping it (P.end = G.start or
--                 G.end = P.start): the shifted-by-its-length case
--   type_boundary P overlaps only gold spans of other types, with other boundaries
--   spurious      P overlaps no gold span and touches none of its type
--   Every gold span G that no predicted span overlaps, and none of G's type touches, counts
--   once as missed.
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
pred_errors AS (
  SELECT run_id, lang, round, CASE
    WHEN list_contains(gold_spans, p) THEN NULL
    WHEN len(list_filter(gold_spans, lambda g: g.start = p.start AND g."end" = p."end")) > 0
      THEN 'type'
    WHEN len(list_filter(gold_spans, lambda g: g.type = p.type
      AND p.start <= g.start AND g."end" <= p."end")) > 0 THEN 'super'
    WHEN len(list_filter(gold_spans, lambda g: g.type = p.type
      AND g.start <= p.start AND p."end" <= g."end")) > 0 THEN 'sub'
    WHEN len(list_filter(gold_spans, lambda g: g.type = p.type
      AND p.start < g."end" AND g.start < p."end")) > 0 THEN 'drifted'
    WHEN len(list_filter(gold_spans, lambda g: g.type = p.type
      AND (p."end" = g.start OR g."end" = p.start))) > 0 THEN 'adjacent'
    WHEN len(list_filter(gold_spans, lambda g: p.start < g."end" AND g.start < p."end")) > 0
      THEN 'type_boundary'
    ELSE 'spurious' END AS category
  FROM preds
),
golds AS (
  SELECT run_id, lang, round, pred_spans, unnest(gold_spans) AS g FROM spans
),
missed AS (
  SELECT run_id, lang, round, 'missed' AS category
  FROM golds
  WHERE len(list_filter(pred_spans, lambda p: (p.start < g."end" AND g.start < p."end")
    OR (p.type = g.type AND (p."end" = g.start OR g."end" = p.start)))) = 0
),
errors AS (
  SELECT * FROM pred_errors WHERE category IS NOT NULL
  UNION ALL
  SELECT * FROM missed
)
SELECT run_id, lang, round, category,
  category IN ('super', 'sub', 'drifted', 'adjacent') AS boundary,
  count(*) AS errors,
  count(*) / sum(count(*)) OVER (PARTITION BY run_id, lang, round) AS share
FROM errors
GROUP BY run_id, lang, round, category
ORDER BY run_id, lang, round, errors DESC, category;
