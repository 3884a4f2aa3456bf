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


COMBINE = ("mean", "best_confidence")  # TSL Eq. 6 weighted mean | AdvPicker 4.1 seed ensemble


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

    AdvPicker: ``combine="best_confidence"`` keeps, per sentence, the one teacher's soft labels
    with the highest summed label confidence instead of averaging (seed ensemble, AdvPicker
    4.1). ``lang_scorers`` are TLADV folders (encoder + ``discriminator.safetensors``); each
    gives P(source | x), the mean over the sentence's sub-words of its discriminator's sigmoid
    (Eq. 5), and l_score = 1 - |P - 0.5| (Eq. 6). ``lang_scores`` holds every scorer's
    l_score (for set selectors; not stored) and ``lang_score`` the stored one: the chosen
    teacher's when every teacher is a scorer and ``combine="best_confidence"`` (its score
    travels with its soft labels), else the highest over the scorers. A scorer that is also a
    teacher reuses that teacher's forward pass. Without scorers both columns are null.
    """

    def __init__(self, teachers: Sequence[str], *, weights: Optional[Sequence[float]] = None,
                 student: Optional[str] = None, batch_size: int = 32,
                 device: Optional[str] = None, threads: Optional[int] = None,
                 teacher_id: Optional[str] = None, combine: str = "mean",
                 lang_scorers: Optional[Sequence[str]] = None):
        import torch

        from xner_ray.models.classifier import load_token_classifier

        if not teachers:
            raise ValueError("TeacherStage needs at least one teacher model")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        if combine == "best_confidence" and weights is not None:
            raise ValueError("teacher weights apply to combine='mean' only")
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
        self.combine = combine
        self._load_scorers([str(t) for t in teachers], [str(s) for s in lang_scorers or []])

    def _load_scorers(self, teachers: list[str], scorers: list[str]) -> None:
        """(teacher index or own model, discriminator) per scorer (AdvPicker Eq. 5)."""
        from xner_ray.models.classifier import load_token_classifier
        from xner_ray.models.discriminator import load_discriminator

        self.scorers = []
        for s in scorers:
            model = teachers.index(s) if s in teachers else (
                load_token_classifier(s).to(self.device).eval())
            disc = load_discriminator(s).to(self.device).eval()
            enc = self.models[model] if isinstance(model, int) else model
            if disc.input_dim != enc.config.hidden_size:
                raise ValueError(f"{s}: discriminator input {disc.input_dim} != encoder hidden "
                                 f"size {enc.config.hidden_size}")
            self.scorers.append((model, disc))
        self.chosen_score = (self.combine == "best_confidence" and len(scorers) == len(teachers)
                             and all(isinstance(m, int) and m == k
                                     for k, (m, _) in enumerate(self.scorers)))

    def _inputs(self, ids: list[list[int]]):
        import torch

        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, :len(x)] = torch.tensor(x)
            mask[i, :len(x)] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _forward(self, model, inputs, pos: list[list[int]], hidden: bool = False):
        """Per-word soft labels, and the encoder's last hidden states when ``hidden``."""
        import torch

        input_ids, mask = inputs
        use_bf16 = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16,
                                                    enabled=use_bf16):
            out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=hidden)
        probs = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()
        rows_out = []
        for i, p in enumerate(pos):
            p = np.asarray(p, dtype=np.int64)
            rows = np.zeros((len(p), len(self.labels)), dtype=np.float64)
            rows[:, self.o_index] = 1.0  # words cut by truncation: certain O
            ok = p >= 0
            rows[ok] = probs[i, p[ok]]
            rows_out.append(rows)
        return rows_out, (out.hidden_states[-1] if hidden else None)

    def _probs(self, model, ids: list[list[int]], pos: list[list[int]]) -> list[np.ndarray]:
        return self._forward(model, self._inputs(ids), pos)[0]

    def _lang_scores(self, inputs, hiddens: dict, pos) -> np.ndarray:
        """[n_scorers, batch] l_score (AdvPicker Eq. 5-6) of every scorer."""
        import torch

        from xner_ray.scores import batch_lang_score
        from xner_ray.models.discriminator import sentence_source_prob

        out = np.zeros((len(self.scorers), len(pos)))
        for j, (model, disc) in enumerate(self.scorers):
            with torch.inference_mode():
                h = hiddens[model] if isinstance(model, int) else model.base_model(
                    input_ids=inputs[0], attention_mask=inputs[1]).last_hidden_state
                p = sentence_source_prob(disc(h.float()), inputs[1]).cpu().numpy()
            out[j] = batch_lang_score(p)
        return out

    def _combined(self, ids, pos):
        """(soft labels, student soft labels or None, [n_scorers, batch] l_scores, index of
        the teacher each sentence's soft labels come from or None when averaged)."""
        from xner_ray.scores import most_confident

        inputs = self._inputs(ids)
        want = {m for m, _ in self.scorers if isinstance(m, int)}
        per_model, hiddens = [], {}
        for k, m in enumerate(self.models):
            rows, h = self._forward(m, inputs, pos, hidden=k in want)
            per_model.append(rows)
            if h is not None:
                hiddens[k] = h
        if self.combine == "best_confidence":
            chosen = most_confident(per_model)  # AdvPicker 4.1
            mixed = [per_model[k][i] for i, k in enumerate(chosen)]
        else:
            chosen = None
            mixed = [sum(w * pm[i] for w, pm in zip(self.weights, per_model))
                     for i in range(len(ids))]
        student = self._probs(self.student, ids, pos) if self.student is not None else None
        lang = self._lang_scores(inputs, hiddens, pos) if self.scorers else None
        return mixed, student, lang, chosen

    def _stored_lang_score(self, lang: np.ndarray, chosen) -> np.ndarray:
        if self.chosen_score:
            return lang[chosen, np.arange(lang.shape[1])]
        return lang.max(axis=0)

    def __call__(self, batch: Batch) -> pa.Table:
        from xner_ray.labels import viterbi_batch
        from xner_ray.scores import batch_agreement, score_batch

        ids = _column(batch, "input_ids")
        pos = _column(batch, "word_pos")
        probs: list[Optional[np.ndarray]] = [None] * len(ids)
        stud: list[Optional[np.ndarray]] = [None] * len(ids)
        lang_all = np.full((len(ids), len(self.scorers)), np.nan)
        lang_one = np.full(len(ids), np.nan)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for k in range(0, len(order), self.batch_size):
            idx = order[k:k + self.batch_size]
            mixed, student, lang, chosen = self._combined([ids[i] for i in idx],
                                                          [pos[i] for i in idx])
            for j, i in enumerate(idx):
                probs[i] = mixed[j]
                if student is not None:
                    stud[i] = student[j]
            if lang is not None:
                lang_all[idx] = lang.T
                lang_one[idx] = self._stored_lang_score(lang, chosen)
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
            "lang_score": pa.array(lang_one.astype(np.float32), mask=np.isnan(lang_one)),
            "lang_scores": pa.array([row.astype(np.float32) for row in lang_all]
                                    if self.scorers else [None] * len(ids),
                                    pa.list_(pa.float32())),
        }
        for name, arr in cols.items():
            table = table.append_column(name, arr)
        return table
