-- Question: what did the calibration stage do to each calibrated round, per run, language,
--   round and calibrator -- how many spans moved, with what scores, and (where gold exists)
--   how did entity F1 change? (CalibreNet Table 5 shape: base tagger vs CalibreNet(base).)
-- Output columns: run_id, lang, round, calibrator, sentences, orig_spans, calib_spans,
--   spans_changed (sum of n_changed), sentences_changed (n_changed > 0), avg_orig_score (mean
--   soft-label probability of the base spans; null without probs), avg_calib_score (mean of
--   calib_score), gold_sentences, gold_entities, f1_before, f1_after (null without gold)
-- F1: entity-level exact match as seqeval mode='strict', scheme=IOB2 (bio_spans: same start,
--   end and type), micro over the round's rows with gold, as sql/pseudo_label_prf.sql; gold is
--   sentences.gold_tags joined on lang + sent_id (any round).
WITH gold AS (
  SELECT lang, sent_id, any_value(gold_tags) AS gold_tags
  FROM sentences WHERE gold_tags IS NOT NULL
  GROUP BY ALL
),
scored AS (
  SELECT c.*, bio_spans(g.gold_tags) AS gold_spans,
    bio_spans(c.orig_tags) AS before_spans, bio_spans(c.calib_tags) AS after_spans
  FROM calibrations c
  LEFT JOIN gold g ON g.lang = c.lang AND g.sent_id = c.sent_id
),
counts AS (
  SELECT run_id, lang, round, calibrator,
    count(*) AS sentences,
    sum(len(orig_spans))::BIGINT AS orig_spans,
    sum(len(calib_spans))::BIGINT AS calib_spans,
    sum(n_changed)::BIGINT AS spans_changed,
    count_if(n_changed > 0) AS sentences_changed,
    avg(list_avg(list_transform(orig_spans, lambda s: s.score))) AS avg_orig_score,
    avg(calib_score) AS avg_calib_score,
    count(gold_spans) AS gold_sentences,
    sum(len(gold_spans))::BIGINT AS gold_entities,
    sum(len(before_spans)) FILTER (WHERE gold_spans IS NOT NULL) AS pred_before,
    sum(len(after_spans)) FILTER (WHERE gold_spans IS NOT NULL) AS pred_after,
    sum(len(list_filter(before_spans, lambda x: list_contains(gold_spans, x)))) AS ok_before,
    sum(len(list_filter(after_spans, lambda x: list_contains(gold_spans, x)))) AS ok_after
  FROM scored
  GROUP BY run_id, lang, round, calibrator
)
SELECT run_id, lang, round, calibrator, sentences, orig_spans, calib_spans, spans_changed,
  sentences_changed, avg_orig_score, avg_calib_score, gold_sentences, gold_entities,
  CASE WHEN gold_sentences = 0 THEN NULL WHEN gold_entities + pred_before = 0 THEN 0
       ELSE 2 * ok_before / (gold_entities + pred_before) END AS f1_before,
  CASE WHEN gold_sentences = 0 THEN NULL WHEN gold_entities + pred_after = 0 THEN 0
       ELSE 2 * ok_after / (gold_entities + pred_after) END AS f1_after
FROM counts
ORDER BY run_id, lang, round, calibrator;
