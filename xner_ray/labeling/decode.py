"""Post-processing of teacher outputs in a few torch calls per block, on the model's device.

Everything the labeling stage does after a forward pass works here on one flat ``[N, L]`` array
of word rows (N = the words of every sentence of a block, sentence after sentence) plus the
sentence lengths, never on per-sentence Python lists:

- :func:`viterbi_packed` -- the BIO-valid Viterbi of :func:`xner_ray.labels.viterbi_batch`,
  batched over all sentences at once. On an accelerator, sentences are sorted longest first
  and their words packed time-major (as ``torch.nn.utils.rnn.PackedSequence`` does), so step
  ``t`` touches only the sentences still running: a 2,000-word sentence costs its own steps,
  not 2,000 padded steps for every sentence of the block. On the CPU a numba-compiled loop
  decodes sentence after sentence (per-step array calls cost more than the arithmetic there).
  Same float64 arithmetic, same first-index tie-breaking, so the same tags as the numpy
  decoder (tested on hand-made, random and real dev data).
- :func:`mix` -- the teachers' weighted mean (TSL Eq. 6) or, per sentence, the most confident
  teacher (AdvPicker 4.1), vectorised.
- :func:`scores` -- ``confidence``, ``f_conf``, ``n_entities``, ``length`` and ``agreement`` with
  the definitions of :mod:`xner_ray.scores` (same float64 operations in the same order).

:func:`reference_postprocess` keeps the stage's previous per-sentence implementation, for the
equality tests and ``benchmarks/postprocess.py``; it is not used on the labeling path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numba
import numpy as np
import torch

from xner_ray.labels import allowed_starts, allowed_transitions

FLOOR = -1e30  # as xner_ray.labels._FLOOR: stands in for log(0)
EPS = 1e-12  # as xner_ray.scores.EPS: floor for log p in f_conf


class LabelSet:
    """A label list's Viterbi constraints and tag classes as tensors on one device."""

    def __init__(self, labels: Sequence[str], device: torch.device | str = "cpu"):
        self.labels = list(labels)
        self.device = torch.device(device)
        self.trans = torch.as_tensor(np.where(allowed_transitions(self.labels), 0.0, -np.inf),
                                     dtype=torch.float64, device=self.device)
        self.start = torch.as_tensor(np.where(allowed_starts(self.labels), 0.0, -np.inf),
                                     dtype=torch.float64, device=self.device)
        self.is_begin = torch.as_tensor([t.startswith("B-") for t in self.labels],
                                        device=self.device)
        self.o_index = self.labels.index("O") if "O" in self.labels else 0
        # BIO structure for the CPU decoder: a label that is not I-X may follow anything; I-X
        # only its own B-X / I-X (the lower and higher index of the two)
        allowed = allowed_transitions(self.labels)
        inside = ~allowed.all(axis=0)
        self.i_cols = np.flatnonzero(inside)
        prevs = [np.flatnonzero(allowed[:, j]) for j in self.i_cols]
        self.structured = all(len(p) == 2 for p in prevs)
        self.pair_lo = np.array([p[0] for p in prevs], dtype=np.int64)
        self.pair_hi = np.array([p[-1] for p in prevs], dtype=np.int64)
        self.start_np = np.where(allowed_starts(self.labels), 0.0, -np.inf)


@dataclass
class Packing:
    """Host-side plan of the time-major packing of ragged sentences (longest first)."""

    perm: np.ndarray  # [N] packed position -> flat word index
    steps: np.ndarray  # [T] sentences still running at step t (non-increasing)
    offsets: np.ndarray  # [T + 1] start of step t in the packed order


def packing(lengths: np.ndarray) -> Packing:
    """The packing of sentences with ``lengths`` words, from a few numpy calls."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    t_max = int(lengths.max()) if len(lengths) else 0
    if n == 0:
        return Packing(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64))
    order = np.argsort(-lengths, kind="stable")  # rank -> sentence
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    # steps[t] = number of sentences longer than t
    steps = len(lengths) - np.cumsum(np.bincount(lengths, minlength=t_max + 1))[:t_max]
    offsets = np.zeros(t_max + 1, dtype=np.int64)
    np.cumsum(steps, out=offsets[1:])
    sent = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    t_of_word = np.arange(n) - starts[sent]
    packed_of_flat = offsets[t_of_word] + rank[sent]
    perm = np.empty(n, dtype=np.int64)
    perm[packed_of_flat] = np.arange(n)
    return Packing(perm, steps, offsets)


def viterbi_packed(log_probs: torch.Tensor, lengths: np.ndarray, ls: LabelSet,
                   plan: Optional[Packing] = None) -> torch.Tensor:
    """Tag indices [N] (int64, flat word order) of the best IOB2-valid path of each sentence.

    ``log_probs`` is the flat [N, L] float64 array of all sentences' rows (sentence after
    sentence, ``lengths`` words each; ``-inf`` allowed), on ``ls.device``. Identical to
    :func:`xner_ray.labels.viterbi_batch` (floored at -1e30, first index on ties).
    """
    if log_probs.device.type == "cpu" and ls.structured:  # compiled, no packing needed
        return torch.from_numpy(_viterbi_cpu(log_probs.numpy(), np.asarray(lengths), ls))
    plan = plan if plan is not None else packing(lengths)
    n = len(plan.perm)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=log_probs.device)
    perm = torch.as_tensor(plan.perm, device=log_probs.device)
    emit = log_probs.to(torch.float64).clamp_min(FLOOR).index_select(0, perm)
    steps = plan.steps.tolist()
    off = plan.offsets.tolist()
    score = emit[: steps[0]] + ls.start
    back = torch.empty((n, emit.shape[1]), dtype=torch.long, device=emit.device)
    trans = ls.trans
    for t in range(1, len(steps)):
        k, o = steps[t], off[t]
        best, idx = (score[:k, :, None] + trans).max(dim=1)  # [k, prev, cur] -> over prev
        score[:k] = best + emit[o:o + k]
        back[o:o + k] = idx
    cur = score.argmax(dim=1)  # sentences ending at step t keep their final argmax until then
    path = torch.empty(n, dtype=torch.long, device=emit.device)
    for t in range(len(steps) - 1, -1, -1):
        k, o = steps[t], off[t]
        path[o:o + k] = cur[:k]
        if t:
            cur[:k] = back[o:o + k].gather(1, cur[:k, None])[:, 0]
    out = torch.empty_like(path)
    out[perm] = path
    return out


def _viterbi_cpu(log_probs: np.ndarray, lengths: np.ndarray, ls: LabelSet) -> np.ndarray:
    """The CPU decoder: :func:`_viterbi_bio`, compiled, sentence after sentence."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    emit = np.maximum(np.ascontiguousarray(log_probs, dtype=np.float64), FLOOR)
    out = np.empty(len(emit), dtype=np.int64)
    _viterbi_bio(emit, offsets, ls.start_np, ls.i_cols, ls.pair_lo, ls.pair_hi, out)
    return out


@numba.njit(cache=True, nogil=True)
def _first_max(values):  # pragma: no cover - compiled
    """Index of the largest value, the first on ties (``np.argmax``)."""
    a = 0
    for y in range(1, len(values)):
        if values[y] > values[a]:
            a = y
    return a


@numba.njit(cache=True, nogil=True)
def _viterbi_bio(emit, offsets, start, i_cols, lo_i, hi_i, out):  # pragma: no cover - compiled
    """BIO Viterbi of each sentence of a flat [N, L] float64 array (floored), compiled by numba:
    the recurrence of :func:`xner_ray.labels.viterbi_batch` with the BIO structure of
    :class:`LabelSet` -- a label that is not I-X takes the best previous label (first index on
    ties, as ``argmax``), I-X the better of its B-X / I-X (the lower index on ties) -- in the
    same float64 operations, so the same tags. ~20 comparisons per word instead of numpy's
    per-step array calls (a 2-core labeling actor spent most of its post-processing there)."""
    n_lab = emit.shape[1]
    longest = 1
    for s in range(len(offsets) - 1):
        longest = max(longest, offsets[s + 1] - offsets[s])
    back = np.empty((longest, n_lab), dtype=np.int64)
    score = np.empty(n_lab)
    prev = np.empty(n_lab)
    for s in range(len(offsets) - 1):
        o = offsets[s]
        n = offsets[s + 1] - o
        if n == 0:
            continue
        for y in range(n_lab):
            score[y] = emit[o, y] + start[y]
        for t in range(1, n):
            a = _first_max(score)
            m = score[a]
            for y in range(n_lab):
                prev[y] = score[y]
                score[y] = m + emit[o + t, y]
                back[t, y] = a
            for j in range(len(i_cols)):
                c = i_cols[j]
                lo = prev[lo_i[j]]
                hi = prev[hi_i[j]]
                if hi > lo:
                    score[c] = hi + emit[o + t, c]
                    back[t, c] = hi_i[j]
                else:
                    score[c] = lo + emit[o + t, c]
                    back[t, c] = lo_i[j]
        c = _first_max(score)
        out[o + n - 1] = c
        for t in range(n - 1, 0, -1):
            c = back[t, c]
            out[o + t - 1] = c


def viterbi_tags(log_probs: Sequence[np.ndarray], labels: Sequence[str],
                 device: torch.device | str = "cpu", dense: bool = False) -> list[list[str]]:
    """Drop-in counterpart of :func:`xner_ray.labels.viterbi_batch` (ragged list in, tag
    strings out) on top of :func:`viterbi_packed`; for tests and one-off use. ``dense``: the
    torch decoder also on the CPU (otherwise the CPU takes the compiled one)."""
    lengths = np.array([len(a) for a in log_probs], dtype=np.int64)
    ls = LabelSet(labels, device)
    flat = (np.concatenate([np.asarray(a, np.float64).reshape(-1, len(labels))
                            for a in log_probs]) if len(log_probs) else
            np.zeros((0, len(labels))))
    if np.isnan(flat).any():
        raise ValueError("log_probs must be NaN-free")
    if dense:  # the torch decoder even on the CPU (what runs on an accelerator)
        ls.structured = False
    ids = viterbi_packed(torch.as_tensor(flat, device=ls.device), lengths, ls).cpu().numpy()
    names = np.array(ls.labels, dtype=object)[ids]
    return [list(x) for x in np.split(names, np.cumsum(lengths)[:-1])] if len(lengths) else []


def log(probs: torch.Tensor) -> torch.Tensor:
    """``log`` of float64 probabilities; numpy's on the CPU (~2.5x faster than torch's there,
    and the very function the reference decoder applies)."""
    if probs.device.type != "cpu":
        return torch.log(probs)
    with np.errstate(divide="ignore"):
        return torch.from_numpy(np.log(probs.numpy()))


def segment_ids(lengths: np.ndarray, device) -> torch.Tensor:
    return torch.as_tensor(np.repeat(np.arange(len(lengths)), lengths), device=device)


def segment_mean(values: torch.Tensor, seg: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean per segment (NaN for empty ones), summed in word order as ``np.bincount`` does."""
    sums = torch.zeros(len(lengths), dtype=torch.float64, device=values.device)
    sums.index_add_(0, seg, values.to(torch.float64))
    return torch.where(lengths > 0, sums / lengths.clamp(min=1), torch.nan)


def mix(per_model: Sequence[torch.Tensor], weights: Sequence[float], combine: str,
        seg: torch.Tensor, n_sent: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """float64 [N, L] combined soft labels and, for ``best_confidence``, the chosen model per
    sentence ([S] int64) -- the stage's previous per-sentence loops, vectorised."""
    if combine == "best_confidence":
        sums = torch.zeros((len(per_model), n_sent), dtype=torch.float64,
                           device=per_model[0].device)
        for k, p in enumerate(per_model):  # AdvPicker 4.1: highest sum_i max_c p_c(x_i)
            sums[k].index_add_(0, seg, p.to(torch.float64).max(dim=1).values)
        chosen = sums.argmax(dim=0)
        stacked = torch.stack([p.to(torch.float64) for p in per_model])
        return stacked[chosen[seg], torch.arange(len(seg), device=seg.device)], chosen
    out = None
    for w, p in zip(weights, per_model):  # TSL Eq. 6, summed in model order like sum()
        term = float(w) * p.to(torch.float64)
        out = term if out is None else out + term
    return out, None


def scores(probs: torch.Tensor, tags: torch.Tensor, lengths: np.ndarray, ls: LabelSet,
           student: Optional[torch.Tensor] = None, seg: Optional[torch.Tensor] = None) -> dict:
    """The score columns (float64/int64 tensors [S]) with :mod:`xner_ray.scores`' definitions:
    RIKD Eq. 5 confidence, RIKD 3.3.1 f_conf, strict-IOB2 entity count, length, and RIKD
    Eq. 6 agreement with ``student`` (NaN without one)."""
    dev = probs.device
    seg = seg if seg is not None else segment_ids(lengths, dev)
    lens = torch.as_tensor(np.asarray(lengths, dtype=np.int64), device=dev)
    p = probs.to(torch.float64)
    conf = segment_mean(p.max(dim=1).values, seg, lens)
    picked = p.gather(1, tags[:, None])[:, 0]
    f_conf = segment_mean(-torch.log(picked.clamp_min(EPS)), seg, lens)
    n_ent = torch.zeros(len(lengths), dtype=torch.long, device=dev)
    n_ent.index_add_(0, seg, ls.is_begin[tags].to(torch.long))
    if student is not None:
        d = p - student.to(torch.float64)
        sq = d[:, 0] * d[:, 0]
        for c in range(1, d.shape[1]):  # left to right, as numpy's mean over 7-9 labels
            sq = sq + d[:, c] * d[:, c]
        agree = 0.0 - segment_mean(sq / d.shape[1], seg, lens)
    else:
        agree = torch.full((len(lengths),), math.nan, dtype=torch.float64, device=dev)
    return {"confidence": conf, "f_conf": f_conf, "n_entities": n_ent, "length": lens,
            "agreement": agree}


def reference_postprocess(logits: Sequence[Sequence[torch.Tensor]], positions: Sequence[list],
                          labels: Sequence[str], weights: Sequence[float],
                          student_logits: Optional[Sequence[torch.Tensor]] = None,
                          combine: str = "mean") -> dict:
    """The labeling stage's post-processing as it was before this module (per-sentence numpy
    and Python), from each forward batch's logits: ``logits[b][k]`` is model k's [B, W, L]
    output for batch b, ``positions[b]`` its sentences' first-sub-word positions (-1: none).
    Returns the stage's columns as Python/numpy objects. Kept for tests and benchmarks."""
    from xner_ray.labels import viterbi_batch
    from xner_ray.scores import batch_agreement, most_confident, score_batch

    o_index = list(labels).index("O")
    w = np.asarray(weights, dtype=np.float64)

    def rows_of(lg: torch.Tensor, pos: list) -> list[np.ndarray]:
        probs = torch.softmax(lg.float(), dim=-1).cpu().numpy()
        out = []
        for i, q in enumerate(pos):
            q = np.asarray(q, dtype=np.int64)
            rows = np.zeros((len(q), len(labels)), dtype=np.float64)
            rows[:, o_index] = 1.0
            ok = q >= 0
            rows[ok] = probs[i, q[ok]]
            out.append(rows)
        return out

    probs, stud = [], []
    for b, pos in enumerate(positions):
        per_model = [rows_of(lg, pos) for lg in logits[b]]
        if combine == "best_confidence":
            chosen = most_confident(per_model)
            probs += [per_model[k][i] for i, k in enumerate(chosen)]
        else:
            probs += [sum(wk * pm[i] for wk, pm in zip(w, per_model)) for i in range(len(pos))]
        if student_logits is not None:
            stud += rows_of(student_logits[b], pos)
    with np.errstate(divide="ignore"):
        tags = viterbi_batch([np.log(p) for p in probs], labels)
    sc = score_batch(probs, tags, labels)
    agreement = (batch_agreement(probs, stud).astype(np.float32) if student_logits is not None
                 else np.full(len(probs), math.nan, dtype=np.float32))
    return {"tags": tags, "probs": probs, "agreement": agreement, **sc}
