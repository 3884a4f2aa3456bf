-- Question: where gold exists, how does CalibreNet's calibration change the error categories
--   of the base tagger's spans, per run, language, round and entity type? (CalibreNet Table 1
--   categories before and after the calibration stage.)
-- Output columns: run_id, lang, round, type, category, boundary (true for the four boundary
--   categories), before (errors of calibrations.orig_tags), after (errors of
--   calibrations.calib_tags), change (after - before; negative = fewer errors)
-- Categories exactly as sql/boundary_errors.sql (first that applies to a predicted span P,
--   G ranging over the gold spans of its sentence): type, super, sub, drifted, adjacent,
--   type_boundary, spurious; a gold span no prediction overlaps (nor touches with its type)
--   is missed. `type` is P's type (the gold span's for missed). Spans are strict IOB2
--   (bio_spans), [start, end) word offsets. One calibrations row per pseudo_labels row, so
--   `before` repeats boundary_errors.sql for the calibrated rounds.
-- Gold: sentences.gold_tags joined on lang + sent_id (any round); rows without gold are left
--   out. Categories with no error on either side do not appear.
WITH gold AS (
  SELECT lang, sent_id, any_value(gold_tags) AS gold_tags
  FROM sentences WHERE gold_tags IS NOT NULL
  GROUP BY ALL
),
spans AS (
  SELECT c.run_id, c.lang, c.round, s.side, bio_spans(g.gold_tags) AS gold_spans,
    bio_spans(CASE s.side WHEN 'before' THEN c.orig_tags ELSE c.calib_tags END) AS pred_spans
  FROM calibrations c
  JOIN gold g ON g.lang = c.lang AND g.sent_id = c.sent_id
  CROSS JOIN (VALUES ('before'), ('after')) s(side)
),
preds AS (
  SELECT run_id, lang, round, side, gold_spans, unnest(pred_spans) AS p FROM spans
),
pred_errors AS (
  SELECT run_id, lang, round, side, p.type AS type, CASE
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
  SELECT run_id, lang, round, side, pred_spans, unnest(gold_spans) AS g FROM spans
),
missed AS (
  SELECT run_id, lang, round, side, g.type AS type, 'missed' AS category
  FROM golds
  WHERE len(list_filter(pred_spans, lambda p: (p.start < g."end" AND g.start < p."end")
    OR (p.type = g.type AND (p."end" = g.start OR g."end" = p.start)))) = 0
),
errors AS (
  SELECT * FROM pred_errors WHERE category IS NOT NULL
  UNION ALL
  SELECT * FROM missed
)
SELECT run_id, lang, round, type, category,
  category IN ('super', 'sub', 'drifted', 'adjacent') AS boundary,
  count_if(side = 'before') AS before,
  count_if(side = 'after') AS after,
  count_if(side = 'after') - count_if(side = 'before') AS change
FROM errors
GROUP BY run_id, lang, round, type, category
ORDER BY run_id, lang, round, type, before DESC, category;
