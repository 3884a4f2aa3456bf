"""Post-processing of teacher outputs in a few torch calls per block, on the model's device.

Everything the labeling stage does after a forward pass works here on one flat ``[N, L]`` array
of word rows (N = the words of every sentence of a block, sentence after sentence) plus the
sentence lengths, never on per-sentence Python lists:

- :func:`viterbi_packed` -- the BIO-valid Viterbi of :func:`xner_ray.labels.viterbi_batch`,
  batched over all sentences at once. Sentences are sorted longest first and their words packed
  time-major (as ``torch.nn.utils.rnn.PackedSequence`` does), so step ``t`` touches only the
  sentences still running: a 2,000-word sentence costs its own steps, not 2,000 padded steps
  for every sentence of the block. Same float64 arithmetic, same first-index tie-breaking, so
  the same tags as the numpy decoder (tested on hand-made, random and real dev data).
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
        self.allowed_np = allowed


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
    plan = plan if plan is not None else packing(lengths)
    n = len(plan.perm)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=log_probs.device)
    if log_probs.device.type == "cpu" and ls.structured:
        return torch.from_numpy(_viterbi_cpu(log_probs.numpy(), np.asarray(lengths), ls, plan))
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


def argmax_shortcut(log_probs: np.ndarray, lengths: np.ndarray, ls: LabelSet):
    """(per-word argmax, per-sentence bool: that argmax is the Viterbi path).

    With transitions of 0 or -inf, a valid path scores the sum of its emissions, so where the
    per-word argmax sequence is valid IOB2 it is the best path; it is the *only* best path (so
    the decoder returns it whatever its tie-breaking) when every word's top label beats its
    second by more than float64 rounding can move a running sum (margin > 1e-9 * (1 + the
    sum of |top| up to that word)). Sentences failing either test go through the decoder."""
    lp = np.maximum(np.asarray(log_probs, dtype=np.float64), FLOOR)
    n = len(lp)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.ones(len(lengths), dtype=bool)
    top2 = np.partition(lp, -2, axis=1)[:, -2:]
    arg = lp.argmax(axis=1)
    sent = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    first = np.zeros(n, dtype=bool)
    first[starts[lengths > 0]] = True
    prev = np.concatenate([[0], arg[:-1]])
    ok_word = np.where(first, ls.start_np[arg] == 0.0, ls.allowed_np[prev, arg])
    cum = np.cumsum(np.abs(top2[:, 1]))
    cum_before = cum - np.abs(top2[:, 1]) - np.concatenate([[0.0], cum])[starts][sent]
    ok_word &= (top2[:, 1] - top2[:, 0]) > 1e-9 * (1.0 + cum_before + np.abs(top2[:, 1]))
    bad = np.bincount(sent, weights=~ok_word, minlength=len(lengths)) > 0
    return arg, ~bad


def _viterbi_cpu(log_probs: np.ndarray, lengths: np.ndarray, ls: LabelSet,
                 plan: Packing) -> np.ndarray:
    """The CPU decoder: the argmax where it is provably the unique best path, the packed numpy
    Viterbi over the other sentences."""
    arg, easy = argmax_shortcut(log_probs, lengths, ls)
    if easy.all():
        return arg
    hard = ~easy
    word_hard = np.repeat(hard, lengths)
    sub = log_probs[word_hard]
    arg[word_hard] = _viterbi_packed_numpy(sub, packing(lengths[hard]), ls)
    return arg


def _viterbi_packed_numpy(log_probs: np.ndarray, plan: Packing, ls: LabelSet) -> np.ndarray:
    """:func:`viterbi_packed` on the CPU in numpy (a small op costs ~1 us there against several
    for torch), using the BIO structure instead of the [k, L, L] candidate array: a label other
    than I-X takes the best previous label (first on ties), I-X the better of its B-X / I-X.
    The same values and first-index choices as the dense max over ``score + trans``."""
    n = len(plan.perm)
    emit = np.maximum(np.asarray(log_probs, dtype=np.float64)[plan.perm], FLOOR)
    steps, off = plan.steps.tolist(), plan.offsets.tolist()
    i_cols, lo_i, hi_i = ls.i_cols, ls.pair_lo, ls.pair_hi
    n_i = len(i_cols)
    pair = np.concatenate([lo_i, hi_i])
    emit_i = emit[:, i_cols]
    score = emit[: steps[0]] + ls.start_np
    best = np.empty(n, dtype=np.int64)  # best previous label of a non-I label
    best_i = np.empty((n, n_i), dtype=np.int64)  # best previous label of each I-X
    for t in range(1, len(steps)):
        k, o = steps[t], off[t]
        s = score[:k]
        a = s.argmax(axis=1)
        m = s.max(axis=1)
        lohi = s[:, pair]
        lo, hi = lohi[:, :n_i], lohi[:, n_i:]
        take_hi = hi > lo  # first index on ties: lo < hi
        best[o:o + k] = a
        best_i[o:o + k] = np.where(take_hi, hi_i, lo_i)
        np.add(m[:, None], emit[o:o + k], out=s)
        s[:, i_cols] = np.maximum(lo, hi) + emit_i[o:o + k]
    cur = score.argmax(axis=1)
    path = np.empty(n, dtype=np.int64)
    which_i = np.full(emit.shape[1], 0, dtype=np.int64)
    which_i[i_cols] = np.arange(n_i)
    is_i = np.zeros(emit.shape[1], dtype=bool)
    is_i[i_cols] = True
    for t in range(len(steps) - 1, -1, -1):
        k, o = steps[t], off[t]
        c = cur[:k]
        path[o:o + k] = c
        if t:
            rows = np.arange(o, o + k)
            cur[:k] = np.where(is_i[c], best_i[rows, which_i[c]], best[rows])
    out = np.empty_like(path)
    out[plan.perm] = path
    return out


def viterbi_tags(log_probs: Sequence[np.ndarray], labels: Sequence[str],
                 device: torch.device | str = "cpu", dense: bool = False) -> list[list[str]]:
    """Drop-in counterpart of :func:`xner_ray.labels.viterbi_batch` (ragged list in, tag
    strings out) on top of :func:`viterbi_packed`; for tests and one-off use. ``dense``: the
    torch decoder also on the CPU (otherwise the CPU takes the numpy one)."""
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
