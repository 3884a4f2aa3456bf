"""Entity-level evaluation with seqeval (strict IOB2), per language and per entity type."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

logger = logging.getLogger(__name__)


def score_tags(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """seqeval precision/recall/F1, strict IOB2 matching, overall and per entity type."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predictions")
    gold = [list(g) for g in gold]
    pred = [list(p) for p in pred]
    report = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True,
                                   zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    per_type = {
        name: {"precision": float(v["precision"]), "recall": float(v["recall"]),
               "f1": float(v["f1-score"]), "support": int(v["support"])}
        for name, v in report.items() if not name.endswith(" avg")
    }
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "n_sentences": len(gold),
        "n_gold_entities": int(micro["support"]),
        "per_type": per_type,
    }


def predict_tags(model, tokenizer, words: Sequence[Sequence[str]], *, batch_size: int = 32,
                 device: str = "cpu") -> list[list[str]]:
    """BIO-valid Viterbi decoding of the model's word-level distributions."""
    from xner_ray.labels import viterbi_decode
    from xner_ray.models.classifier import predict_log_probs

    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    logps = predict_log_probs(model, tokenizer, words, batch_size=batch_size, device=device)
    return [viterbi_decode(lp, labels) for lp in logps]


def evaluate_model(model_dir: str, data: str, *, lang: Optional[str] = None, batch_size: int = 32,
                   device: Optional[str] = None, label_map: Optional[str] = None) -> dict:
    """Evaluate a token classifier on a CoNLL file (any layout the reader accepts).

    Gold entity types the model does not know are mapped to ``O`` only when ``label_map``
    says so (e.g. ``"drop:DATE"``); otherwise they count as misses, which is the honest score.
    """
    import torch

    from xner_ray.io import read_conll
    from xner_ray.labels import LabelMap
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer
    from xner_ray.records import RejectSink

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rejects = RejectSink()
    sents = list(read_conll(data, lang=lang, rejects=rejects))
    if not sents:
        raise ValueError(f"{data}: no sentences to evaluate ({rejects.summary()})")
    gold = [s.tags for s in sents]
    if label_map:
        lm = LabelMap.from_spec(label_map)
        gold = [lm.apply(g) for g in gold]
    model = load_token_classifier(model_dir).to(device)
    tokenizer = load_tokenizer(model_dir)
    pred = predict_tags(model, tokenizer, [s.tokens for s in sents], batch_size=batch_size,
                        device=device)
    result = score_tags(gold, pred)
    result.update(lang=lang or sents[0].lang or None, data=str(data), model=str(model_dir),
                  rejects=rejects.total)
    return result
