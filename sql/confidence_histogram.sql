-- Question: how is the teacher's sentence confidence (RIKD Eq. 5, mean max label probability)
--   distributed per run, language and round, and where do the selected rows sit?
-- Output columns: run_id, lang, round, bin (0..19), bin_lo, bin_hi, sentences, selected
-- Bins are [bin_lo, bin_hi) of width 0.05, bin = floor(confidence * 20), with 1.0 in bin 19;
-- every bin is listed (0 when empty). Rows with a null confidence are not counted.
WITH groups AS (
  SELECT DISTINCT run_id, lang, round FROM pseudo_labels
),
bins AS (
  SELECT range::INTEGER AS bin FROM range(20)
),
counts AS (
  SELECT run_id, lang, round,
    least(floor(confidence * 20), 19)::INTEGER AS bin,
    count(*) AS sentences,
    count(*) FILTER (WHERE selected) AS selected
  FROM pseudo_labels
  WHERE confidence IS NOT NULL
  GROUP BY ALL
)
SELECT g.run_id, g.lang, g.round, b.bin,
  b.bin / 20 AS bin_lo, (b.bin + 1) / 20 AS bin_hi,
  coalesce(c.sentences, 0) AS sentences,
  coalesce(c.selected, 0) AS selected
FROM groups g
CROSS JOIN bins b
LEFT JOIN counts c ON c.run_id = g.run_id AND c.lang = g.lang AND c.round = g.round
  AND c.bin = b.bin
ORDER BY g.run_id, g.lang, g.round, b.bin;
