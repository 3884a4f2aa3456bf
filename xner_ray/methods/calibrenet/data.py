"""Fine-tuning data for CalibreNet (Sec. 3.1.2 end, Sec. 4): one instance per entity.

The base tagger's predictions on English train give one instance per predicted span, its
target the gold span it was an attempt at (``garble.match_gold``); because most predictions
are already right, every gold span also gets garbled copies (Add/Delete/Shift drawn from
``p(op, n_op)`` given a real garble) so the module sees enough error cases. Predictions that
match no gold span (spurious) have no boundary to recover and are skipped and counted.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Optional, Sequence

from xner_ray.labels import tags_to_spans
from xner_ray.methods.calibrenet.encode import CalibInstance
from xner_ray.methods.calibrenet.garble import OpDist, garble, match_gold


@dataclass
class DevSet:
    """English dev for checkpoint selection (the zero-shot rule: no target labels)."""

    words: list[list[str]]
    pred_tags: list[list[str]]  # the base tagger's
    gold_tags: list[list[str]]

    def __post_init__(self) -> None:
        if not len(self.words) == len(self.pred_tags) == len(self.gold_tags):
            raise ValueError("dev words, predicted tags and gold tags differ in length")


def predicted_instances(words: Sequence[str], pred_tags: Sequence[str], gold_tags: Sequence[str],
                        *, lang: str = "", stats: Optional[collections.Counter] = None
                        ) -> list[CalibInstance]:
    """One instance per predicted span with the gold span it matches as target."""
    stats = stats if stats is not None else collections.Counter()
    golds = tags_to_spans(gold_tags)
    out = []
    for s, e, _ in tags_to_spans(pred_tags):
        i = match_gold((s, e), golds)
        if i is None:
            stats["spurious_skipped"] += 1
            continue
        stats["pred"] += 1
        out.append(CalibInstance(list(words), (s, e), golds[i], "pred", lang))
    return out


def garbled_instances(words: Sequence[str], gold_tags: Sequence[str], dist: OpDist,
                      rng: random.Random, *, copies: int = 1, lang: str = "",
                      stats: Optional[collections.Counter] = None) -> list[CalibInstance]:
    """``copies`` garbled initial answers per gold span, No-Op excluded (they add error
    cases; the base predictions already hold the correct ones)."""
    stats = stats if stats is not None else collections.Counter()
    errors = dist.without_noop()
    out = []
    for s, e, t in tags_to_spans(gold_tags):
        for _ in range(copies):
            answer, (op, _n) = garble((s, e), len(words), errors, rng)
            stats[f"garble:{op}"] += 1
            out.append(CalibInstance(list(words), answer, (s, e, t), f"garble:{op}", lang))
    return out


def finetune_instances(words: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                       gold_tags: Sequence[Sequence[str]], dist: OpDist, *, copies: int = 1,
                       seed: int = 0, lang: str = "en"
                       ) -> tuple[list[CalibInstance], collections.Counter]:
    """The fine-tuning set (CalibreNet Sec. 3.1.2): base predictions + garbled gold copies."""
    if not len(words) == len(pred_tags) == len(gold_tags):
        raise ValueError(f"{len(words)} sentences, {len(pred_tags)} predictions, "
                         f"{len(gold_tags)} gold tag rows")
    rng = random.Random(seed)
    stats: collections.Counter = collections.Counter()
    out: list[CalibInstance] = []
    for w, p, g in zip(words, pred_tags, gold_tags):
        out += predicted_instances(w, p, g, lang=lang, stats=stats)
        out += garbled_instances(w, g, dist, rng, copies=copies, lang=lang, stats=stats)
    return out, stats


def base_predictions(model_dir: str, words: Sequence[Sequence[str]], *, batch_size: int = 32,
                     device: Optional[str] = None) -> list[list[str]]:
    """The base tagger's Viterbi (BIO-valid) tags, e.g. on English train and dev."""
    import torch

    from xner_ray.evaluate import predict_tags
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_token_classifier(model_dir).to(dev)
    return predict_tags(model, load_tokenizer(model_dir), words, batch_size=batch_size,
                        device=dev)


def calibrated_scores(model, tokenizer, dev: DevSet, *, batch_size: int = 32,
                      max_length: int = 192, device="cpu") -> dict:
    """seqeval F1 of the base tags and of the calibrated tags on ``dev``."""
    from xner_ray.evaluate import score_tags
    from xner_ray.labels import spans_to_tags
    from xner_ray.methods.calibrenet.stage import calibrate_sentences, span_scores

    orig = [span_scores(t, None, None) for t in dev.pred_tags]
    calib = calibrate_sentences(model, tokenizer, dev.words, orig, batch_size=batch_size,
                                max_length=max_length, device=device)
    tags = [spans_to_tags([(s["start"], s["end"], s["type"]) for s in row], len(w))
            for row, w in zip(calib, dev.words)]
    before, after = score_tags(dev.gold_tags, dev.pred_tags), score_tags(dev.gold_tags, tags)
    return {"base_f1": before["f1"], "f1": after["f1"], "precision": after["precision"],
            "recall": after["recall"]}
