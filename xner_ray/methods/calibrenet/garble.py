"""Initial-answer garbling for CalibreNet (Sec. 3.2.2): No-Op / Add / Delete / Shift.

A gold span is turned into a plausible *initial answer* -- what a base tagger would have
predicted -- by one operation ``op`` on ``n_op`` words, with ``(op, n_op)`` drawn from an
empirical distribution ``p(op, n_op)``. The paper builds ``p`` from its Table 1 error counts;
here :func:`estimate_op_dist` counts the base tagger's own boundary errors (e.g. on English
dev) with :func:`classify_op`, and :func:`default_op_dist` is the smoothed fallback.

Everything is word-level and pure Python: spans are ``(start, end_exclusive)`` word offsets as
in :func:`xner_ray.labels.tags_to_spans`. Entity types play no part: the garbler models
boundary noise only (type errors are the type head's business, Eq. 8-9).
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

NOOP, ADD, DELETE, SHIFT = "noop", "add", "delete", "shift"
OPS = (NOOP, ADD, DELETE, SHIFT)
MAX_N = 4  # n_op is clipped to this: longer boundary errors are rare and look alike
Op = tuple[str, int]  # (op, n_op); No-Op always has n_op = 0

# CalibreNet Table 1 summed over en/es/de/nl (XLM-R base on XGLUE-NER test): 22,720 entities,
# 548 super (Add), 556 sub (Delete), 5 drifted + 1,358 adjacent (Shift); the rest keep their
# boundaries (No-Op). The table gives no n_op, so the default spreads each op over n_op with
# p(n) ~ 2^-(n-1) (our assumption: one-word errors dominate).
TABLE1_COUNTS = {NOOP: 22720 - 548 - 556 - 5 - 1358, ADD: 548, DELETE: 556, SHIFT: 5 + 1358}


def support(max_n: int = MAX_N) -> list[Op]:
    """Every ``(op, n_op)`` the distribution can hold, in a fixed order."""
    return [(NOOP, 0)] + [(op, n) for op in (ADD, DELETE, SHIFT) for n in range(1, max_n + 1)]


@dataclass(frozen=True)
class OpDist:
    """``p(op, n_op)`` over :func:`support` (CalibreNet Sec. 3.2.2)."""

    probs: Mapping[Op, float]

    def __post_init__(self) -> None:
        total = sum(self.probs.values())
        if not self.probs or any(p < 0 for p in self.probs.values()) or abs(total - 1) > 1e-6:
            raise ValueError(f"p(op, n_op) must be non-negative and sum to 1, got {dict(self.probs)}")
        bad = [k for k in self.probs if k[0] not in OPS or (k[0] == NOOP) != (k[1] == 0)]
        if bad:
            raise ValueError(f"invalid (op, n_op) keys {bad}; ops: {OPS}, n_op >= 1 except noop")

    def to_json(self) -> list[dict]:
        return [{"op": op, "n_op": n, "p": p} for (op, n), p in sorted(self.probs.items())]

    @classmethod
    def from_json(cls, rows: Iterable[Mapping]) -> "OpDist":
        return cls({(r["op"], int(r["n_op"])): float(r["p"]) for r in rows})

    def without_noop(self) -> "OpDist":
        """The distribution given that a real garble happens (fine-tuning's extra error cases)."""
        rest = {k: p for k, p in self.probs.items() if k[0] != NOOP and p > 0}
        total = sum(rest.values())
        if total <= 0:
            raise ValueError("p(op, n_op) has no mass outside noop")
        return OpDist({k: p / total for k, p in rest.items()})


def dist_from_counts(counts: Mapping[Op, float], *, max_n: int = MAX_N,
                     smoothing: float = 1.0) -> OpDist:
    """Add-``smoothing`` estimate over the full support, so no garble is impossible."""
    keys = support(max_n)
    raw = {k: float(counts.get(k, 0.0)) + smoothing for k in keys}
    total = sum(raw.values())
    return OpDist({k: v / total for k, v in raw.items()})


def default_op_dist(max_n: int = MAX_N) -> OpDist:
    """Table 1 op shares with a halving n_op profile (see ``TABLE1_COUNTS``)."""
    weights = [2.0 ** -(n - 1) for n in range(1, max_n + 1)]
    counts: dict[Op, float] = {(NOOP, 0): TABLE1_COUNTS[NOOP]}
    for op in (ADD, DELETE, SHIFT):
        for n, w in zip(range(1, max_n + 1), weights):
            counts[(op, n)] = TABLE1_COUNTS[op] * w / sum(weights)
    return dist_from_counts(counts, max_n=max_n, smoothing=0.0)


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def classify_op(pred: tuple[int, int], gold: tuple[int, int], max_n: int = MAX_N) -> Op:
    """The ``(op, n_op)`` that turns ``gold`` into ``pred`` (the inverse of :func:`garble`).

    Add = ``pred`` strictly contains ``gold`` (super span), n = words added on both sides;
    Delete = strictly inside (sub span), n = words removed; anything else that overlaps or
    touches (drifted, adjacent) is Shift with n = |start difference|. n is clipped to max_n.
    """
    (ps, pe), (gs, ge) = pred[:2], gold[:2]
    if (ps, pe) == (gs, ge):
        return (NOOP, 0)
    if ps <= gs and ge <= pe:
        return (ADD, min(max_n, (gs - ps) + (pe - ge)))
    if gs <= ps and pe <= ge:
        return (DELETE, min(max_n, (ps - gs) + (ge - pe)))
    return (SHIFT, min(max_n, max(1, abs(ps - gs))))


def match_gold(pred: tuple[int, int], golds: Sequence[Sequence]) -> Optional[int]:
    """Index of the gold span ``pred`` is an attempt at, or None (a spurious prediction).

    Candidates overlap ``pred`` or touch it (adjacent); the closest wins -- exact boundaries
    first, then the smallest boundary distance, then the leftmost -- so the choice is
    deterministic. Types are ignored: a type error still has a gold boundary to recover.
    """
    best, best_key = None, None
    for i, g in enumerate(golds):
        gs, ge = int(g[0]), int(g[1])
        if not (_overlaps(pred[:2], (gs, ge)) or pred[1] == gs or ge == pred[0]):
            continue
        key = (abs(pred[0] - gs) + abs(pred[1] - ge), gs, ge)
        if best_key is None or key < best_key:
            best, best_key = i, key
    return best


def estimate_op_dist(pred_spans: Sequence[Sequence[Sequence]], gold_spans: Sequence[Sequence[Sequence]],
                     *, max_n: int = MAX_N, smoothing: float = 1.0
                     ) -> tuple[OpDist, collections.Counter]:
    """``p(op, n_op)`` from a tagger's predictions vs gold, one sentence per list item.

    Every predicted span matched to a gold span (:func:`match_gold`) counts once with
    :func:`classify_op`; spurious predictions and missed gold spans are not boundary errors
    and are left out, as in the paper's Table 1 boundary columns. Returns the smoothed
    distribution and the raw counts (for the record next to a trained model).
    """
    if len(pred_spans) != len(gold_spans):
        raise ValueError(f"{len(pred_spans)} predicted sentences but {len(gold_spans)} gold")
    counts: collections.Counter = collections.Counter()
    for preds, golds in zip(pred_spans, gold_spans):
        for p in preds:
            i = match_gold((int(p[0]), int(p[1])), golds)
            if i is not None:
                counts[classify_op((int(p[0]), int(p[1])), golds[i][:2], max_n)] += 1
    return dist_from_counts(counts, max_n=max_n, smoothing=smoothing), counts


def feasible(span: tuple[int, int], n_words: int, op: Op) -> bool:
    """Whether ``op`` can be applied to ``span`` inside a sentence of ``n_words`` words."""
    (s, e), (name, n) = span, op
    if name == NOOP:
        return True
    if name == ADD:
        return s + (n_words - e) >= n
    if name == DELETE:
        return e - s > n
    return s - n >= 0 or e + n <= n_words  # SHIFT


def apply_op(span: tuple[int, int], n_words: int, op: Op, rng: random.Random) -> tuple[int, int]:
    """One garble (CalibreNet Sec. 3.2.2): sides and direction are drawn uniformly among
    those that fit; raises ValueError when ``op`` does not fit at all (see :func:`feasible`)."""
    if not feasible(span, n_words, op):
        raise ValueError(f"{op} does not fit span {span} in {n_words} words")
    (s, e), (name, n) = span, op
    if name == NOOP:
        return s, e
    if name == SHIFT:  # keep the length, move the start left or right by n
        dirs = [d for d in (-n, n) if 0 <= s + d and e + d <= n_words]
        d = rng.choice(dirs)
        return s + d, e + d
    room_left, room_right = (s, n_words - e) if name == ADD else (e - s - 1, e - s - 1)
    # left k words, right n - k: k = n is "left", k = 0 "right", anything between "both"
    splits = [k for k in range(n + 1) if k <= room_left and n - k <= room_right
              and (name == ADD or k + (n - k) < e - s)]
    sides = {"left": [k for k in splits if k == n], "right": [k for k in splits if k == 0],
             "both": [k for k in splits if 0 < k < n]}
    k = rng.choice(sides[rng.choice([side for side, ks in sides.items() if ks])])
    if name == ADD:
        return s - k, e + (n - k)
    return s + k, e - (n - k)


def sample_op(dist: OpDist, span: tuple[int, int], n_words: int, rng: random.Random) -> Op:
    """Draw ``(op, n_op)`` from ``dist`` restricted to the ops that fit this span (the
    distribution renormalised over them; No-Op always fits)."""
    keys = [k for k in sorted(dist.probs) if dist.probs[k] > 0 and feasible(span, n_words, k)]
    if not keys:
        return (NOOP, 0)
    return rng.choices(keys, weights=[dist.probs[k] for k in keys])[0]


def garble(span: tuple[int, int], n_words: int, dist: OpDist, rng: random.Random
           ) -> tuple[tuple[int, int], Op]:
    """A garbled initial answer for the gold ``span`` and the op that made it."""
    op = sample_op(dist, span, n_words, rng)
    return apply_op(span, n_words, op, rng), op


def dist_from_rows(rows: Iterable[Mapping], *, max_n: int = MAX_N, smoothing: float = 1.0
                   ) -> OpDist:
    """``p(op, n_op)`` from ``sql/boundary_ops.sql`` rows (``op``, ``n_op``, ``spans``),
    summed over their groups and with n_op clipped to ``max_n`` as :func:`classify_op` does."""
    counts: collections.Counter = collections.Counter()
    for r in rows:
        n = 0 if r["op"] == NOOP else min(max_n, int(r["n_op"]))
        counts[(r["op"], n)] += int(r["spans"])
    return dist_from_counts(counts, max_n=max_n, smoothing=smoothing)
