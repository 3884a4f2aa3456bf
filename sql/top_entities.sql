-- Question: which entity strings does the teacher predict most often, per entity type, run,
--   language and round?
-- Parameters: top_k (DuckDB variable, default 10): strings kept per type.
-- Output columns: run_id, lang, round, type, entity (words joined by a space), predictions,
--   selected_predictions, rank (1 = most frequent; ties by entity string)
-- Spans: strict IOB2 via the bio_spans macro (sql/_views.sql). Words come from the sentences
--   table (joined on lang + sent_id, any round); rows without their sentence are skipped.
WITH sent AS (
  SELECT lang, sent_id, any_value(tokens) AS tokens FROM sentences GROUP BY ALL
),
spans AS (
  SELECT p.run_id, p.lang, p.round, p.selected, s.tokens, unnest(bio_spans(p.tags)) AS span
  FROM pseudo_labels p
  JOIN sent s ON s.lang = p.lang AND s.sent_id = p.sent_id
),
entities AS (
  SELECT run_id, lang, round, span.type AS type,
    array_to_string(tokens[span.start + 1 : span."end"], ' ') AS entity,
    count(*) AS predictions,
    count(*) FILTER (WHERE selected) AS selected_predictions
  FROM spans
  GROUP BY ALL
)
SELECT *,
  row_number() OVER (PARTITION BY run_id, lang, round, type
                     ORDER BY predictions DESC, entity) AS rank
FROM entities
QUALIFY rank <= coalesce(getvariable('top_k'), 10)
ORDER BY run_id, lang, round, type, rank;
