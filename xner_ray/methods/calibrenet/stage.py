"""CalibreNet as a labeling stage: every predicted span of a sentence is re-read and refined.

``CalibrationStage`` loads a trained CalibreNet folder once in ``__init__`` and maps a batch
(``pyarrow.Table`` or dict) with ``tokens`` and IOB2 ``tags`` to the same batch plus
``calib_tags``, ``orig_spans``, ``calib_spans``, ``calib_score`` and ``n_changed``. It knows
nothing of Ray: try it on a literal dict. Calibrated spans of one sentence can collide (two
initial answers recovered to overlapping spans); :func:`resolve_overlaps` keeps the best ones
deterministically, and the sentence is turned back into IOB2 tags (CalibreNet Sec. 4.4).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import torch

from xner_ray.labels import spans_to_tags, tags_to_spans
from xner_ray.methods.calibrenet.encode import CalibInstance, decode, encode_instances
from xner_ray.models.classifier import length_buckets

Batch = Union[pa.Table, Mapping[str, Any]]
SPAN_STRUCT = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("type", pa.string()),
                         ("score", pa.float32())])
SPANS = pa.list_(SPAN_STRUCT)
STAGE_VERSION = "calibrenet.v1"


def resolve_overlaps(spans: Sequence[dict]) -> list[dict]:
    """Non-overlapping spans, best first: higher score (missing = 0), then earlier start, then
    shorter, then type name; exact duplicates collapse. Returned sorted by start."""
    def key(s: dict) -> tuple:
        return (-(s["score"] if s["score"] is not None else 0.0), s["start"],
                s["end"] - s["start"], s["type"])

    kept: list[dict] = []
    for s in sorted(spans, key=key):
        if all(s["end"] <= k["start"] or k["end"] <= s["start"] for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s["start"])


def span_scores(tags: Sequence[str], probs: Optional[Sequence], labels: Optional[Sequence[str]]
                ) -> list[dict]:
    """The tagger's spans with the mean probability of their tags (None without soft labels)."""
    index = {l: i for i, l in enumerate(labels or [])}
    out = []
    for s, e, t in tags_to_spans(tags):
        score = None
        if probs is not None and labels:
            score = float(np.mean([probs[w][index[tags[w]]] for w in range(s, e)]))
        out.append({"start": s, "end": e, "type": t, "score": score})
    return out


@torch.inference_mode()
def calibrate_sentences(model, tokenizer, words: Sequence[Sequence[str]],
                        spans: Sequence[Sequence[dict]], *, batch_size: int = 32,
                        max_length: int = 192, device: str | torch.device = "cpu"
                        ) -> list[list[dict]]:
    """Calibrated, overlap-resolved spans per sentence. A span whose words fall past
    ``max_length`` sub-words keeps its original boundaries, type and score."""
    model.eval()
    flat = [(i, sp) for i, row in enumerate(spans) for sp in row]
    instances = [CalibInstance(list(words[i]), (sp["start"], sp["end"])) for i, sp in flat]
    results: list[Optional[dict]] = [None] * len(flat)
    for idx in length_buckets([len(inst.words) for inst in instances], batch_size):
        enc = encode_instances(tokenizer, [instances[k] for k in idx], model.cfg.types,
                               max_length)
        for k, ok, d in zip(idx, enc.valid.tolist(), decode(model, enc.to(device),
                                                             model.cfg.types)):
            if ok and d is not None:
                results[k] = {"start": d.start, "end": d.end, "type": d.type, "score": d.score}
    out: list[list[dict]] = [[] for _ in words]
    for (i, sp), res in zip(flat, results):
        out[i].append(res if res is not None else dict(sp))
    return [resolve_overlaps(row) for row in out]


def _column(batch: Batch, name: str) -> Optional[list]:
    if isinstance(batch, pa.Table):
        return batch.column(name).to_pylist() if name in batch.column_names else None
    if name not in batch:
        return None
    return [list(v) if isinstance(v, np.ndarray) else v for v in batch[name]]


def _table(batch: Batch) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    return pa.table({k: (v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v)
                     for k, v in batch.items()})


class CalibrationStage:
    """Loads a CalibreNet folder once; ``__call__`` adds the calibration columns to a batch.

    ``probs``/``labels`` columns, when present (the store's soft labels), score the original
    spans; without them ``orig_spans.score`` is null.
    """

    def __init__(self, model_path: str, *, batch_size: int = 32, max_length: int = 192,
                 tags_column: str = "tags", device: Optional[str] = None,
                 threads: Optional[int] = None):
        from xner_ray.methods.calibrenet.checkpoint import load_calibrenet

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tokenizer = load_calibrenet(model_path, with_mlm=False,
                                                     device=self.device)
        self.batch_size, self.max_length, self.tags_column = batch_size, max_length, tags_column
        self.id = f"{STAGE_VERSION}({model_path})"

    def __call__(self, batch: Batch) -> pa.Table:
        words = _column(batch, "tokens")
        tags = _column(batch, self.tags_column)
        if words is None or tags is None:
            raise ValueError(f"CalibrationStage needs 'tokens' and {self.tags_column!r} columns")
        probs, labels = _column(batch, "probs"), _column(batch, "labels")
        orig = [span_scores(t, probs[i] if probs else None, labels[i] if labels else None)
                for i, t in enumerate(tags)]
        calib = calibrate_sentences(self.model, self.tokenizer, words, orig,
                                    batch_size=self.batch_size, max_length=self.max_length,
                                    device=self.device)
        return self.add_columns(_table(batch), words, orig, calib)

    @staticmethod
    def add_columns(table: pa.Table, words, orig: list[list[dict]], calib: list[list[dict]]
                    ) -> pa.Table:
        """``n_changed``: original spans not found unchanged (start, end, type) among the
        calibrated ones; ``calib_score``: mean calibrated span score, null without spans."""
        calib_tags = [spans_to_tags([(s["start"], s["end"], s["type"]) for s in row], len(w))
                      for row, w in zip(calib, words)]
        changed = []
        for o, c in zip(orig, calib):
            kept = {(s["start"], s["end"], s["type"]) for s in c}
            changed.append(sum((s["start"], s["end"], s["type"]) not in kept for s in o))
        scores = [float(np.mean([s["score"] for s in row if s["score"] is not None]))
                  if any(s["score"] is not None for s in row) else None for row in calib]
        return (table.append_column("calib_tags", pa.array(calib_tags, pa.list_(pa.string())))
                .append_column("orig_spans", pa.array(orig, SPANS))
                .append_column("calib_spans", pa.array(calib, SPANS))
                .append_column("calib_score", pa.array(scores, pa.float32()))
                .append_column("n_changed", pa.array(changed, pa.int32())))
