"""BIO tag utilities: validation, IOB1/IOB2 repair, spans, label lists, label mapping, Viterbi.

Everything here works on IOB2 (every entity starts with ``B-``). Readers repair IOB1 and broken
IOB2 on the way in, so the rest of the system can assume well-formed tags; :func:`viterbi_decode`
keeps model outputs well-formed on the way out.
"""

from __future__ import annotations

import collections
from typing import Mapping, Optional, Sequence

import numpy as np

OUTSIDE = "O"
Span = tuple[int, int, str]  # (start, end_exclusive, entity_type)


def is_valid_tag(tag: str) -> bool:
    """True for ``O``, ``B-X`` and ``I-X`` with a non-empty type ``X`` without whitespace."""
    if tag == OUTSIDE:
        return True
    return (len(tag) > 2 and tag[0] in "BI" and tag[1] == "-"
            and not any(ch.isspace() for ch in tag))


def entity_type(tag: str) -> Optional[str]:
    """The ``X`` of ``B-X``/``I-X``; ``None`` for ``O``. Raises ``ValueError`` on other tags."""
    if tag == OUTSIDE:
        return None
    if not is_valid_tag(tag):
        raise ValueError(f"invalid BIO tag {tag!r}: expected 'O', 'B-TYPE' or 'I-TYPE'")
    return tag[2:]


def _check_tags(tags: Sequence[str]) -> None:
    for tag in tags:
        if not is_valid_tag(tag):
            raise ValueError(f"invalid BIO tag {tag!r}: expected 'O', 'B-TYPE' or 'I-TYPE'")


def repair_bio(tags: Sequence[str]) -> tuple[list[str], int]:
    """Turn every ``I-X`` that does not continue an ``X`` entity into ``B-X``.

    An ``I-X`` at the start, after ``O`` or after another type can only mean a new entity (the
    IOB1 reading, and what seqeval's default mode assumes). Returns the tags and how many were
    changed, so callers can count repairs instead of rejecting whole sentences.
    """
    _check_tags(tags)
    return _repair(tags)


def _repair(tags: Sequence[str]) -> tuple[list[str], int]:
    """:func:`repair_bio` for tags already known to be valid (readers check them once)."""
    out, repairs, prev_type = list(tags), 0, None
    for i, tag in enumerate(out):
        if tag == OUTSIDE:
            prev_type = None
            continue
        if tag[0] == "I" and tag[2:] != prev_type:
            out[i] = "B-" + tag[2:]
            repairs += 1
        prev_type = tag[2:]
    return out, repairs


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 (``B-`` only between two adjacent same-type entities) -> IOB2.

    IOB1 and IOB2 agree on where entities are; only the first tag of an entity that follows
    ``O`` or another type differs (``I-`` vs ``B-``), which is exactly what :func:`repair_bio`
    rewrites.
    """
    return repair_bio(tags)[0]


def is_valid_iob2(tags: Sequence[str]) -> bool:
    """True when the tags need no repair (every entity starts with ``B-``)."""
    return repair_bio(tags)[1] == 0


def tags_to_spans(tags: Sequence[str]) -> list[Span]:
    """Entity spans ``(start, end_exclusive, type)``; an ``I-X`` that starts an entity counts as
    ``B-X`` (as :func:`repair_bio`), so any valid-tag sequence has a span reading."""
    spans: list[Span] = []
    start, current = 0, None
    for i, tag in enumerate(list(repair_bio(tags)[0]) + [OUTSIDE]):
        if current is not None and (tag == OUTSIDE or tag[0] == "B"):
            spans.append((start, i, current))
            current = None
        if tag != OUTSIDE and tag[0] == "B":
            start, current = i, tag[2:]
    return spans


def spans_to_tags(spans: Sequence[Span], n: int) -> list[str]:
    """IOB2 tags of length ``n`` for non-overlapping spans; raises ``ValueError`` on overlap,
    empty spans or spans outside ``[0, n)`` -- a silent overwrite would corrupt labels."""
    tags = [OUTSIDE] * n
    for start, end, typ in sorted(spans):
        if not (0 <= start < end <= n):
            raise ValueError(f"span {(start, end, typ)} is empty or outside [0, {n})")
        if any(tag != OUTSIDE for tag in tags[start:end]):
            raise ValueError(f"span {(start, end, typ)} overlaps another span in {list(spans)}")
        if not typ or any(ch.isspace() for ch in typ):
            raise ValueError(f"span {(start, end, typ)} has an invalid entity type")
        tags[start:end] = ["B-" + typ] + ["I-" + typ] * (end - start - 1)
    return tags


def _type_of(label: str) -> str:
    """``B-PER``/``I-PER``/``PER`` -> ``PER``: lets callers pass either types or tags."""
    return label[2:] if len(label) > 2 and label[1] == "-" and label[0] in "BI" else label


def label_list(entity_types: Sequence[str]) -> list[str]:
    """``["O", "B-T1", "I-T1", "B-T2", "I-T2", ...]`` with types sorted by name.

    Accepts types or tags (``O`` is ignored). Sorting makes label ids reproducible, as in
    transformers' ``run_ner.py``, which then stores ``label2id``/``id2label`` in the model
    config; unlike run_ner's sorted tag strings, ``O`` gets id 0 and each type's ``B``/``I``
    are adjacent.
    """
    types = sorted({_type_of(t) for t in entity_types if t != OUTSIDE})
    return [OUTSIDE] + [f"{p}-{t}" for t in types for p in ("B", "I")]


class LabelMap:
    """Map one entity scheme onto another, e.g. OntoNotes-style ``PERSON``/``GPE``/``DATE`` onto
    CoNLL ``PER``/``LOC``, so teacher and target data share a label set.

    ``mapping`` maps a source type to a target type, or to ``None``/``"O"`` to drop it (its
    tokens become ``O``). Types missing from ``mapping`` are *unknown*: dropped too, unless
    ``keep_unknown`` passes them through unchanged. ``apply`` counts entities per source type in
    ``mapped``, ``dropped`` and ``unknown`` (Counters) so a run can log what the mapping did.
    ``target_types``, when given, is the closed set the values must come from.
    """

    SPEC_HELP = ("comma-separated items: 'SRC=DST' maps SRC to DST, 'SRC' keeps SRC, "
                 "'drop:SRC' or 'SRC=O' drops SRC, '*' keeps every type not listed")

    def __init__(self, mapping: Mapping[str, Optional[str]], *,
                 target_types: Optional[Sequence[str]] = None, keep_unknown: bool = False):
        valid = None if target_types is None else sorted({_type_of(t) for t in target_types})
        self.mapping: dict[str, Optional[str]] = {}
        for src, dst in mapping.items():
            self._check_type(src, "source")
            dst = None if dst in (None, OUTSIDE) else dst
            if dst is not None:
                self._check_type(dst, "target")
                if valid is not None and dst not in valid:
                    raise ValueError(f"label map target {dst!r} (for {src!r}) is not a target "
                                     f"type; valid: {valid} or None/'O' to drop")
            self.mapping[src] = dst
        self.keep_unknown = keep_unknown
        self.mapped: collections.Counter = collections.Counter()
        self.dropped: collections.Counter = collections.Counter()
        self.unknown: collections.Counter = collections.Counter()

    @staticmethod
    def _check_type(name: object, role: str) -> None:
        if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
            raise ValueError(f"invalid {role} entity type {name!r}: need a non-empty string "
                             f"without spaces")
        if name == OUTSIDE or _type_of(name) != name:
            raise ValueError(f"{role} entity type {name!r} looks like a tag; give types "
                             f"such as 'PER', not 'O'/'B-PER'")

    @classmethod
    def from_spec(cls, spec: str, *, target_types: Optional[Sequence[str]] = None) -> "LabelMap":
        """Parse the CLI form, e.g. ``"PERSON=PER,GPE=LOC,LOC,drop:MISC,DATE=O"``
        (see :attr:`SPEC_HELP`)."""
        mapping: dict[str, Optional[str]] = {}
        keep_unknown = False
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                raise ValueError(f"empty item in label map spec {spec!r}; {cls.SPEC_HELP}")
            if item == "*":
                keep_unknown = True
            elif item.startswith("drop:"):
                mapping[item[5:].strip()] = None
            elif "=" in item:
                src, dst = (x.strip() for x in item.split("=", 1))
                mapping[src] = dst or None
            else:
                mapping[item] = item
        return cls(mapping, target_types=target_types, keep_unknown=keep_unknown)

    def apply(self, tags: Sequence[str]) -> list[str]:
        """Mapped IOB2 tags (input may be IOB1; it is repaired first)."""
        spans = []
        for start, end, typ in tags_to_spans(tags):
            if typ not in self.mapping:
                self.unknown[typ] += 1
                if self.keep_unknown:
                    spans.append((start, end, typ))
            elif self.mapping[typ] is None:
                self.dropped[typ] += 1
            else:
                self.mapped[typ] += 1
                spans.append((start, end, self.mapping[typ]))
        return spans_to_tags(spans, len(tags))

    def summary(self) -> str:
        """One log line: per-type entity counts by outcome."""
        parts = [f"{name}={dict(sorted(c.items()))}" for name, c in
                 (("mapped", self.mapped), ("dropped", self.dropped), ("unknown", self.unknown))]
        return "label map: " + ", ".join(parts)


def _type_ids(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    _check_tags(labels)
    types = sorted({t[2:] for t in labels if t != OUTSIDE})
    tid = np.array([-1 if t == OUTSIDE else types.index(t[2:]) for t in labels])
    inside = np.array([t.startswith("I-") for t in labels])
    return tid, inside


def allowed_transitions(labels: Sequence[str]) -> np.ndarray:
    """Bool matrix ``[L, L]``: ``[i, j]`` is True when ``labels[j]`` may follow ``labels[i]``
    in IOB2 (``I-X`` only after ``B-X`` or ``I-X``; anything else may follow anything)."""
    tid, inside = _type_ids(labels)
    same_entity = (tid[:, None] == tid[None, :]) & (tid[:, None] >= 0)
    return ~inside[None, :] | same_entity


def allowed_starts(labels: Sequence[str]) -> np.ndarray:
    """Bool vector ``[L]``: which labels may open a sentence (all but ``I-X``)."""
    return ~_type_ids(labels)[1]


_FLOOR = -1e30  # stands in for log(0): keeps every path finite so argmax never picks a banned one


def viterbi_batch(log_probs: Sequence[np.ndarray], labels: Sequence[str]) -> list[list[str]]:
    """:func:`viterbi_decode` for many sentences at once, vectorized over the batch and labels
    (sentences are padded to the longest; padding steps copy the state through)."""
    allowed, starts = allowed_transitions(labels), allowed_starts(labels)
    n_labels = len(labels)
    lengths = np.array([len(a) for a in log_probs], dtype=np.int64)
    if not len(lengths) or lengths.max() == 0:
        return [[] for _ in log_probs]
    batch = np.zeros((len(lengths), int(lengths.max()), n_labels))
    for b, arr in enumerate(log_probs):
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != n_labels or np.isnan(arr).any():
            raise ValueError(f"log_probs[{b}] must be a NaN-free [T, {n_labels}] array, "
                             f"got shape {arr.shape}")
        batch[b, : len(arr)] = np.maximum(arr, _FLOOR)
    return _viterbi_padded(batch, lengths, np.where(allowed, 0.0, -np.inf),
                           np.where(starts, 0.0, -np.inf), list(labels))


def _viterbi_padded(batch: np.ndarray, lengths: np.ndarray, trans: np.ndarray,
                    start: np.ndarray, labels: list[str]) -> list[list[str]]:
    n_batch, n_steps, n_labels = batch.shape
    score = batch[:, 0] + start
    back = np.zeros((n_steps, n_batch, n_labels), dtype=np.int64)
    identity = np.broadcast_to(np.arange(n_labels), (n_batch, n_labels))
    for t in range(1, n_steps):
        cand = score[:, :, None] + trans[None]  # [batch, prev, cur]
        best = cand.argmax(axis=1)
        new = np.take_along_axis(cand, best[:, None, :], axis=1)[:, 0] + batch[:, t]
        active = (t < lengths)[:, None]
        score = np.where(active, new, score)
        back[t] = np.where(active, best, identity)
    path = np.empty((n_batch, n_steps), dtype=np.int64)
    path[:, -1] = score.argmax(axis=1)
    rows = np.arange(n_batch)
    for t in range(n_steps - 1, 0, -1):
        path[:, t - 1] = back[t, rows, path[:, t]]
    return [[labels[i] for i in path[b, : lengths[b]]] for b in range(n_batch)]


def viterbi_decode(log_probs: np.ndarray, labels: Sequence[str]) -> list[str]:
    """Highest-scoring IOB2-valid tag sequence for one sentence (exact max-sum decoding).

    ``log_probs`` is ``[T, L]`` per-token log-probabilities (log-softmax output) or any other
    additive scores such as logits -- *not* probabilities, whose sums mean nothing. Greedy
    argmax can emit ``O I-PER``; this never does, and differs from argmax only where argmax
    was invalid or a better valid path exists. ``-inf`` entries are allowed (banned labels).
    """
    return viterbi_batch([log_probs], labels)[0]
