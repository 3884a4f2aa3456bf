-- Question: how good are the pseudo-labels where gold exists, per run, language, round and
--   selection bucket? (AdvPicker Table 4: F1 of the "selected" vs the "other" data.)
-- Output columns: run_id, lang, round, bucket ('selected' | 'other' | 'all'), sentences,
--   gold_entities, pred_entities, correct, precision, recall, f1
-- Entity-level exact match as seqeval mode='strict', scheme=IOB2: spans from the bio_spans
--   macro; a predicted span is correct when a gold span has the same start, end and type.
--   precision = correct / pred, recall = correct / gold, f1 = 2PR / (P + R) (= 2 correct /
--   (gold + pred)); each is 0 when its denominator is 0 (seqeval's zero_division default).
-- Gold: sentences.gold_tags, joined on lang + sent_id (any round); rows without gold are left out.
-- sent_id is a content hash, so repeated sentences share it; where copies carry different
--   gold tags (CoNLL-2002 es train: 53 such sentences, e.g. bylines tagged differently) one
--   copy's tags are used for all: the gold count can differ slightly from a per-line count
--   (es train: 18,789 here vs 18,798 B- tags in the file).
-- Parameters (optional, `--param name=value`; NULL = every one): run_id, lang.
WITH gold AS (
  SELECT lang, sent_id, any_value(gold_tags) AS gold_tags
  FROM sentences WHERE gold_tags IS NOT NULL
  GROUP BY ALL
),
scored AS (
  SELECT p.run_id, p.lang, p.round,
    CASE WHEN p.selected THEN 'selected' ELSE 'other' END AS bucket,
    bio_spans(g.gold_tags) AS gold_spans, bio_spans(p.tags) AS pred_spans
  FROM pseudo_labels p
  JOIN gold g ON g.lang = p.lang AND g.sent_id = p.sent_id
  WHERE coalesce(p.run_id = getvariable('run_id'), true)
    AND coalesce(p.lang = getvariable('lang'), true)
),
counts AS (
  SELECT run_id, lang, round, bucket,
    count(*) AS sentences,
    sum(len(gold_spans))::BIGINT AS gold_entities,
    sum(len(pred_spans))::BIGINT AS pred_entities,
    sum(len(list_filter(pred_spans, lambda x: list_contains(gold_spans, x))))::BIGINT AS correct
  FROM scored
  GROUP BY GROUPING SETS ((run_id, lang, round, bucket), (run_id, lang, round))
)
SELECT run_id, lang, round, coalesce(bucket, 'all') AS bucket,
  sentences, gold_entities, pred_entities, correct,
  CASE WHEN pred_entities > 0 THEN correct / pred_entities ELSE 0 END AS precision,
  CASE WHEN gold_entities > 0 THEN correct / gold_entities ELSE 0 END AS recall,
  CASE WHEN gold_entities + pred_entities > 0
       THEN 2 * correct / (gold_entities + pred_entities) ELSE 0 END AS f1
FROM counts
ORDER BY run_id, lang, round, bucket DESC;
