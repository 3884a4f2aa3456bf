"""Row types shared by readers, stages and the store.

Readers yield :class:`Sentence`; anything they cannot turn into a sentence becomes a
:class:`Reject` handed to a :class:`RejectSink` -- bad input is kept and counted, never dropped.
"""

from __future__ import annotations

import collections
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

logger = logging.getLogger(__name__)

# Reject reasons: a closed set so that SQL over the rejects table can group by them.
MALFORMED_LINE = "malformed_line"
INVALID_BIO = "invalid_bio"
UNKNOWN_LABEL = "unknown_label"
INVALID_UTF8 = "invalid_utf8"
EMPTY_SENTENCE = "empty_sentence"
TOO_LONG = "too_long"
MISALIGNED_PAIR = "misaligned_pair"
BAD_JSON = "bad_json"
REJECT_REASONS = (
    MALFORMED_LINE, INVALID_BIO, UNKNOWN_LABEL, INVALID_UTF8, EMPTY_SENTENCE, TOO_LONG,
    MISALIGNED_PAIR, BAD_JSON,
)

# Longest sentence (in words) a reader accepts by default; longer ones are rejected, not cut.
# CoNLL-2002 holds a few unsplit paragraphs of 654-1,238 words that the papers' counts include,
# so the default sits above them; pass a smaller cap to reject such blocks.
DEFAULT_MAX_WORDS = 2048


def sentence_id(tokens: Iterable[str], lang: str = "") -> str:
    """Stable content hash of a tokenized sentence: reruns and rounds join on it."""
    h = hashlib.blake2b(digest_size=12)
    h.update(lang.encode("utf-8"))
    for tok in tokens:
        h.update(b"\x1f")
        h.update(tok.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@dataclass
class Sentence:
    """One tokenized sentence; ``tags`` is None for unlabeled text."""

    tokens: list[str]
    tags: Optional[list[str]] = None
    lang: str = ""
    source: str = ""  # path of the file it came from
    line: int = 0  # 1-based line of its first token (or of the text line)
    offsets: Optional[list[tuple[int, int]]] = None  # character spans in the raw text, if any
    text: Optional[str] = None  # raw text when read from raw-text input
    ref: Optional[str] = None  # external id of the record, if the input has one (JSONL id field)

    @property
    def sent_id(self) -> str:
        return sentence_id(self.tokens, self.lang)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Reject:
    """A piece of input that could not be used, with where it came from and why."""

    path: str
    line: int
    reason: str
    raw: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}; valid: {REJECT_REASONS}")


@dataclass
class RejectSink:
    """Collects rejects and counts them per reason; warns once per reason.

    ``keep`` bounds how many rejects are held in memory (the counts stay exact); the store
    writes the kept ones to its rejects table.
    """

    keep: int = 100_000
    rejects: list[Reject] = field(default_factory=list)
    counts: collections.Counter = field(default_factory=collections.Counter)

    def add(self, reject: Reject) -> None:
        if not self.counts[reject.reason]:
            logger.warning("rejecting input (%s) at %s:%d: %s", reject.reason, reject.path,
                           reject.line, reject.detail or reject.raw[:80])
        self.counts[reject.reason] += 1
        if len(self.rejects) < self.keep:
            self.rejects.append(reject)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __iter__(self) -> Iterator[Reject]:
        return iter(self.rejects)

    def summary(self) -> str:
        if not self.total:
            return "no rejects"
        parts = ", ".join(f"{r}={n}" for r, n in sorted(self.counts.items()))
        return f"{self.total} rejects ({parts})"
