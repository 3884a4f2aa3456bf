"""Labeling stages: plain callables that map a batch to a batch and know nothing of Ray.

``SubwordStage`` (CPU) turns words into sub-word ids; ``TeacherStage`` loads one or more teacher
models once in ``__init__`` and turns sub-word ids into per-word soft labels, BIO-valid Viterbi
tags and the RIKD scores. Both take a ``pyarrow.Table`` or a dict of columns and return a
``pyarrow.Table`` -- soft labels stay plain ``list<list<float32>>`` Arrow lists (never a Ray
tensor extension type, which DuckDB cannot read). Each can be tried on a literal dict.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

Batch = Union[pa.Table, Mapping[str, Any]]


def _column(batch: Batch, name: str) -> list:
    if isinstance(batch, pa.Table):
        return batch.column(name).to_pylist()
    col = batch[name]
    return [list(v) if isinstance(v, np.ndarray) else v for v in col]


def _table(batch: Batch) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    return pa.table({k: (v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v)
                     for k, v in batch.items()})


def nested_probs(probs: list, n_labels: int) -> pa.Array:
    """Ragged [T_i, L] arrays -> one ``list<list<float32>>`` Arrow array, built from a single
    flat buffer and offsets (no per-word Python lists on the hot path)."""
    lengths = np.fromiter((len(p) for p in probs), dtype=np.int64, count=len(probs))
    flat = (np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, n_labels) for p in probs])
            if len(probs) else np.zeros((0, n_labels), dtype=np.float32))
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, flat.size + 1, n_labels, dtype=np.int32)),
        pa.array(flat.ravel()))
    outer_offsets = np.zeros(len(probs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=outer_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


class SubwordStage:
    """Sub-word ids and each word's first sub-word position (-1 past ``max_length``)."""

    def __init__(self, tokenizer_path: str, max_length: int = 512):
        from xner_ray.models.classifier import load_tokenizer, max_tokens

        self.tokenizer = load_tokenizer(tokenizer_path)
        self.max_length = max_tokens(self.tokenizer, max_length)

    def __call__(self, batch: Batch) -> pa.Table:
        words = _column(batch, "tokens")
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True,
                             max_length=self.max_length)
        ids, firsts, n_cut = [], [], []
        for i, sent in enumerate(words):
            pos = [-1] * len(sent)
            prev = None
            for j, w in enumerate(enc.word_ids(i)):
                if w is not None and w != prev:
                    pos[w] = j
                prev = w
            ids.append(enc["input_ids"][i])
            firsts.append(pos)
            n_cut.append(pos.count(-1))
        table = _table(batch)
        return (table.append_column("input_ids", pa.array(ids, pa.list_(pa.int32())))
                .append_column("word_pos", pa.array(firsts, pa.list_(pa.int32())))
                .append_column("n_truncated", pa.array(n_cut, pa.int32())))


class TeacherStage:
    """Soft labels from one teacher or a weighted ensemble, plus tags and scores.

    Several teachers (multi-source, or an ensemble) are combined as a weighted average of their
    distributions, p = sum_k alpha_k p_k (TSL Eq. 6); weights default to uniform (TSL Eq. 7).
    With ``student`` given, ``agreement`` is RIKD Eq. 6 between the combined teacher and it.
    Sub-batches are sorted by length (length bucketing) so padding stays small.
    """

    def __init__(self, teachers: Sequence[str], *, weights: Optional[Sequence[float]] = None,
                 student: Optional[str] = None, batch_size: int = 32,
                 device: Optional[str] = None, threads: Optional[int] = None,
                 teacher_id: Optional[str] = None):
        import torch

        from xner_ray.models.classifier import load_token_classifier

        if not teachers:
            raise ValueError("TeacherStage needs at least one teacher model")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.models = [load_token_classifier(t).to(self.device).eval() for t in teachers]
        self.labels = [self.models[0].config.id2label[i]
                       for i in range(self.models[0].config.num_labels)]
        for t, m in zip(teachers, self.models):
            got = [m.config.id2label[i] for i in range(m.config.num_labels)]
            if got != self.labels:
                raise ValueError(f"teacher {t} has labels {got}, expected {self.labels}")
        w = np.ones(len(teachers)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(teachers),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(teachers)} non-negative numbers, got {weights}")
        self.weights = w / w.sum()
        self.student = load_token_classifier(student).to(self.device).eval() if student else None
        self.batch_size = batch_size
        self.pad_id = self.models[0].config.pad_token_id or 0
        self.o_index = self.labels.index("O")
        self.teacher_id = teacher_id or "+".join(str(t) for t in teachers)

    def _probs(self, model, ids: list[list[int]], pos: list[list[int]]) -> list[np.ndarray]:
        import torch

        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        use_bf16 = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16,
                                                    enabled=use_bf16):
            logits = model(input_ids=input_ids.to(self.device),
                           attention_mask=mask.to(self.device)).logits
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        out = []
        for i, p in enumerate(pos):
            p = np.asarray(p, dtype=np.int64)
            rows = np.zeros((len(p), len(self.labels)), dtype=np.float64)
            rows[:, self.o_index] = 1.0  # words cut by truncation: certain O
            ok = p >= 0
            rows[ok] = probs[i, p[ok]]
            out.append(rows)
        return out

    def _combined(self, ids, pos) -> tuple[list[np.ndarray], Optional[list[np.ndarray]]]:
        per_model = [self._probs(m, ids, pos) for m in self.models]
        mixed = [sum(w * pm[i] for w, pm in zip(self.weights, per_model))
                 for i in range(len(ids))]
        student = self._probs(self.student, ids, pos) if self.student is not None else None
        return mixed, student

    def __call__(self, batch: Batch) -> pa.Table:
        from xner_ray.labels import viterbi_batch
        from xner_ray.scores import batch_agreement, score_batch

        ids = _column(batch, "input_ids")
        pos = _column(batch, "word_pos")
        probs: list[Optional[np.ndarray]] = [None] * len(ids)
        stud: list[Optional[np.ndarray]] = [None] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for k in range(0, len(order), self.batch_size):
            idx = order[k:k + self.batch_size]
            mixed, student = self._combined([ids[i] for i in idx], [pos[i] for i in idx])
            for j, i in enumerate(idx):
                probs[i] = mixed[j]
                if student is not None:
                    stud[i] = student[j]
        with np.errstate(divide="ignore"):
            tags = viterbi_batch([np.log(p) for p in probs], self.labels)
        scores = score_batch(probs, tags, self.labels)
        agreement = (batch_agreement(probs, stud).astype(np.float32) if self.student is not None
                     else np.full(len(ids), math.nan, dtype=np.float32))
        table = _table(batch).drop_columns(["input_ids", "word_pos"])
        cols = {
            "teacher": pa.array([self.teacher_id] * len(ids), pa.string()),
            "tags": pa.array(tags, pa.list_(pa.string())),
            "probs": nested_probs(probs, len(self.labels)),
            "confidence": pa.array(scores["confidence"]),
            "f_conf": pa.array(scores["f_conf"]),
            "n_entities": pa.array(scores["n_entities"]),
            "length": pa.array(scores["length"]),
            "agreement": pa.array(agreement, mask=np.isnan(agreement) if self.student is None
                                  else None),
        }
        for name, arr in cols.items():
            table = table.append_column(name, arr)
        return table
