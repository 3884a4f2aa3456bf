"""The projection filters of Li et al. Sec. 4.3, as a pure function over one sentence pair.

"we discarded examples if any English entity failed to map to tokens in the target language.
We also discarded examples where there are overlapping target entities because it will cause
conflicts in token labels. Furthermore, when one entity is mapped to multiple, we only keep the
example if all the target mention phrases are the same" (to allow an entity mentioned twice).

A pair gets one status, the first failing check in the paper's order: ``unmapped``,
``overlap``, ``inconsistent``; ``ok`` otherwise. ``reason`` names every failure (what the
store's ``projections.reason`` keeps), so no drop is silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from xner_ray.labels import spans_to_tags

OK, UNMAPPED, OVERLAP, INCONSISTENT = "ok", "unmapped", "overlap", "inconsistent"
MAX_REASONS = 5  # details kept per pair (the status already says which check failed first)


@dataclass(frozen=True)
class TargetSpan:
    """A projected target span: words ``[start, end)`` and the aligner's score for it."""

    start: int
    end: int
    score: float = 1.0


@dataclass
class MappedEntity:
    """One distinct source entity (surface text + type), its source mentions and the target
    spans the aligner found for it (every mention of it in the target)."""

    text: str
    type: str
    mentions: list[tuple[int, int]]
    spans: list[TargetSpan] = field(default_factory=list)

    def label(self) -> str:
        where = ", ".join(f"{s}-{e}" for s, e in self.mentions)
        return f"{self.type} {self.text!r} (source words {where})"


@dataclass
class Projection:
    """The outcome for one pair: status, why, the target spans (typed) and, when ok, tags."""

    status: str
    reason: Optional[str]
    spans: list[tuple[int, int, str, float]]  # (start, end, type, score), sorted
    tags: Optional[list[str]]

    @property
    def score(self) -> Optional[float]:
        """Pair-level alignment score: the mean span score (None without spans)."""
        return sum(s[3] for s in self.spans) / len(self.spans) if self.spans else None


def _phrase(tokens: Sequence[str], span: TargetSpan) -> str:
    return " ".join(tokens[span.start:span.end])


def _unique(spans: Sequence[TargetSpan]) -> list[TargetSpan]:
    """Identical spans once (two source mentions may find the same target mention), best score."""
    best: dict[tuple[int, int], TargetSpan] = {}
    for s in spans:
        if (s.start, s.end) not in best or s.score > best[(s.start, s.end)].score:
            best[(s.start, s.end)] = s
    return [best[k] for k in sorted(best)]


def _unmapped(entities: Sequence[MappedEntity]) -> list[str]:
    return [f"no target span for {e.label()}" for e in entities if not e.spans]


def _inconsistent(entities: Sequence[MappedEntity], tokens: Sequence[str]) -> list[str]:
    out = []
    for e in entities:
        phrases = {}
        for s in e.spans:
            phrases.setdefault(_phrase(tokens, s).casefold(), f"{_phrase(tokens, s)!r} "
                                                              f"({s.start}-{s.end})")
        if len(phrases) > 1:
            out.append(f"{e.label()} maps to different target strings: "
                       + ", ".join(phrases.values()))
    return out


def _overlaps(entities: Sequence[MappedEntity]) -> list[str]:
    """Spans of *different* entities sharing a target word (identical spans included)."""
    owned = sorted((s.start, s.end, i) for i, e in enumerate(entities) for s in e.spans)
    out = []
    for k, (a0, a1, i) in enumerate(owned):
        for b0, b1, j in owned[k + 1:]:
            if b0 >= a1:
                break
            if i != j:
                out.append(f"{entities[i].label()} at {a0}-{a1} overlaps "
                           f"{entities[j].label()} at {b0}-{b1}")
    return out


def _within_entity_overlap(entities: Sequence[MappedEntity], tokens: Sequence[str]) -> list[str]:
    """Two spans of one entity that share words cannot both be labelled. Spans with different
    strings are reported by :func:`_inconsistent` already; this catches equal strings at
    overlapping places (``a a`` at 2-4 and 3-5 of ``x x a a a``)."""
    out = []
    for e in entities:
        spans = e.spans
        for k, a in enumerate(spans):
            for b in spans[k + 1:]:
                same = _phrase(tokens, a).casefold() == _phrase(tokens, b).casefold()
                if same and b.start < a.end and a.start < b.end:
                    out.append(f"{e.label()} maps to overlapping spans "
                               f"{_phrase(tokens, a)!r} ({a.start}-{a.end}) and "
                               f"{_phrase(tokens, b)!r} ({b.start}-{b.end})")
    return out


def filter_pair(tgt_tokens: Sequence[str], entities: Sequence[MappedEntity]) -> Projection:
    """Apply the Sec. 4.3 filters to one pair's aligned entities.

    Spans must lie inside the target sentence (``ValueError`` otherwise: an aligner bug, not
    bad input). A pair without source entities is ``ok`` with all-``O`` tags (entity-less
    sentences are training data too).
    """
    n = len(tgt_tokens)
    for e in entities:
        for s in e.spans:
            if not 0 <= s.start < s.end <= n:
                raise ValueError(f"span {s} of {e.label()} is outside the {n} target words")
        e.spans = _unique(e.spans)
    spans = sorted((s.start, s.end, e.type, float(s.score)) for e in entities for s in e.spans)
    checks = [(UNMAPPED, _unmapped(entities)),
              (OVERLAP, _overlaps(entities)),
              (INCONSISTENT, _inconsistent(entities, tgt_tokens)
               + _within_entity_overlap(entities, tgt_tokens))]
    failed = [(status, details) for status, details in checks if details]
    if failed:
        details = [d for _, ds in failed for d in ds]
        reason = "; ".join(details[:MAX_REASONS]) + (
            f"; ... {len(details) - MAX_REASONS} more" if len(details) > MAX_REASONS else "")
        return Projection(failed[0][0], reason, spans, None)
    return Projection(OK, None, spans, spans_to_tags([s[:3] for s in spans], n))


def group_entities(src_tokens: Sequence[str], src_spans: Sequence[tuple[int, int, str]]
                   ) -> list[MappedEntity]:
    """Source entity spans -> one :class:`MappedEntity` per distinct (surface text, type), in
    order of first mention: the same name mentioned twice is one entity with two mentions."""
    groups: dict[tuple[str, str], MappedEntity] = {}
    for start, end, typ in src_spans:
        text = " ".join(src_tokens[start:end])
        groups.setdefault((text, typ), MappedEntity(text, typ, [])).mentions.append((start, end))
    return list(groups.values())
