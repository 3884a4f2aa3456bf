"""Streaming CoNLL reader for every column layout the project meets.

Layouts: ``token tag``, ``token POS ... tag`` (first column = token, last = tag), tab-separated
(tokens may then contain spaces), WikiANN's ``lang:token<TAB>tag`` prefixes, ``-DOCSTART-``
lines, CRLF line ends, trailing spaces, a missing final blank line, compressed files. A sentence
with any bad line is rejected whole (never truncated), with all of its lines as ``raw``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from xner_ray.io.files import PathSpecs, ReadStats, expand_paths, iter_lines
from xner_ray.labels import OUTSIDE, _repair, is_valid_tag
from xner_ray.records import (
    DEFAULT_MAX_WORDS, EMPTY_SENTENCE, INVALID_BIO, INVALID_UTF8, MALFORMED_LINE, TOO_LONG,
    UNKNOWN_LABEL, Reject, RejectSink, Sentence,
)

logger = logging.getLogger(__name__)

SCHEMES = ("auto", "iob2", "iob1")
DOCSTART = "-DOCSTART-"
SNIFF_LINES = 20  # token lines looked at for separator, language prefix and column count
_PREFIX = re.compile(r"([a-z]{2,3}):.")
_SEP = re.compile(r"[ \t]+")

Line = tuple[int, Optional[str], bytes]


class _BadLine(Exception):
    """A line that spoils its sentence: carries the reject reason and a detail message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class _FileFormat:
    """What is sniffed per file: separator, language prefix, column count."""

    tab: bool = False
    prefix: str = ""  # e.g. "de:" for WikiANN files
    columns: int = 0  # the most common column count among the sniffed lines


def _split(text: str, tab: bool) -> list[str]:
    """Columns of a line; a leading separator yields an empty first column (empty token)."""
    if tab:
        parts = text.split("\t")
        return [part.strip(" ") for part in parts] if " " in text else parts
    parts = text.split() if text.isascii() else _SEP.split(text.strip(" \t"))
    return [""] + parts if text[0] in " \t" else parts


def sniff_prefix(first_tokens: Iterable[str]) -> str:
    """``"de:"`` when every token starts with the same 2-3 letter ``xx:`` code, else ``""``.

    Requiring *all* sniffed tokens to agree keeps ``a:b`` tokens (times, URLs, Bible verses) in
    ordinary files intact.
    """
    codes = {m.group(1) if (m := _PREFIX.match(tok)) else None for tok in first_tokens}
    return f"{codes.pop()}:" if len(codes) == 1 and None not in codes else ""


def _sniff(head: list[Line]) -> _FileFormat:
    """Separator, prefix and column count (the most common one) from a file's first lines."""
    texts = [t for _, t, _ in head if t and not t.startswith(DOCSTART)]
    if not texts:
        return _FileFormat()
    tab = "\t" in texts[0]
    rows = [_split(t, tab) for t in texts]
    counts = collections.Counter(len(row) for row in rows)
    return _FileFormat(tab=tab, prefix=sniff_prefix(row[0] for row in rows),
                       columns=counts.most_common(1)[0][0])


@dataclass
class _Options:
    lang: Optional[str]
    allowed_types: Optional[frozenset[str]]
    max_words: Optional[int]
    require_tags: bool
    scheme: str
    drop_empty_tokens: bool
    tag_cache: dict[str, Optional[str]] = field(default_factory=dict)


def _tag_type(tag: str, opts: _Options) -> Optional[str]:
    """Entity type of a tag (``None`` for O), checked once per distinct tag string."""
    if tag in opts.tag_cache:
        return opts.tag_cache[tag]
    if not is_valid_tag(tag):
        raise _BadLine(INVALID_BIO, f"tag {tag!r} is not O, B-TYPE or I-TYPE")
    typ = None if tag == OUTSIDE else tag[2:]
    if typ is not None and opts.allowed_types is not None and typ not in opts.allowed_types:
        raise _BadLine(UNKNOWN_LABEL, f"entity type {typ!r} of tag {tag!r} not in "
                                      f"{sorted(opts.allowed_types)}")
    opts.tag_cache[tag] = typ
    return typ


def _parse_line(text: Optional[str], fmt: _FileFormat, opts: _Options) -> tuple[str, Optional[str]]:
    """``(token, tag)`` of one token line, or raise :class:`_BadLine`."""
    if text is None:
        raise _BadLine(INVALID_UTF8, "line is not valid UTF-8")
    parts = _split(text, fmt.tab)
    if opts.require_tags and len(parts) < 2:
        raise _BadLine(MALFORMED_LINE, f"expected a token and a tag, got {len(parts)} column")
    if len(parts) != fmt.columns:
        raise _BadLine(MALFORMED_LINE, f"expected {fmt.columns} columns like the start of "
                                       f"the file, got {len(parts)}")
    token, tag = parts[0], (parts[-1] if len(parts) > 1 else None)
    if fmt.prefix and token:
        if not token.startswith(fmt.prefix):
            raise _BadLine(MALFORMED_LINE, f"token lacks the file's prefix {fmt.prefix!r}")
        token = token[len(fmt.prefix):]
    if tag is not None and tag not in opts.tag_cache:
        _tag_type(tag, opts)
    return token, tag


def _blocks(lines: Iterable[Line], fmt: _FileFormat, stats: ReadStats) -> Iterator[list[Line]]:
    """Group token lines into sentences; blank and ``-DOCSTART-`` lines end a sentence."""
    docstart = (DOCSTART, fmt.prefix + DOCSTART)
    block: list[Line] = []
    for item in lines:
        stats.lines += 1
        text = item[1]
        if text == "" or (text is not None and text.startswith(docstart)
                          and _split(text, fmt.tab)[0] in docstart):
            stats.docstarts += text != ""
            if block:
                yield block
                block = []
        else:
            block.append(item)
    if block:
        yield block


def _reject(block: list[Line], path: str, exc: _BadLine, sink: RejectSink,
            stats: ReadStats) -> None:
    raw = "\n".join(t if t is not None else r.decode("utf-8", "replace") for _, t, r in block)
    sink.add(Reject(path, block[0][0], exc.reason, raw, exc.detail))
    stats.rejected += 1


def _check_scheme(tags: list[str], lines: list[int], opts: _Options) -> tuple[list[str], int]:
    """IOB2 tags and the number of repairs; in strict ``iob2`` mode a repair is an error."""
    fixed, repairs = _repair(tags)
    if repairs and opts.scheme == "iob2":
        i = next(i for i, (a, b) in enumerate(zip(tags, fixed)) if a != b)
        raise _BadLine(INVALID_BIO, f"line {lines[i]}: {tags[i]!r} starts an entity, which "
                                    f"IOB2 forbids (use scheme='auto' to repair)")
    return fixed, repairs


def _sentence(block: list[Line], fmt: _FileFormat, opts: _Options,
              stats: ReadStats) -> tuple[list[str], Optional[list[str]], list[int]]:
    """Tokens, tags (IOB2 or None) and line numbers of one block; raises :class:`_BadLine`."""
    tokens, tags, lines, dropped = [], [], [], 0
    for number, text, _raw in block:
        try:
            token, tag = _parse_line(text, fmt, opts)
        except _BadLine as exc:
            exc.detail = f"line {number}: {exc.detail}"
            raise
        if not token:
            if not (opts.drop_empty_tokens and tag in (None, OUTSIDE)):
                raise _BadLine(MALFORMED_LINE, f"line {number}: empty token")
            dropped += 1
            continue
        tokens.append(token)
        tags.append(tag)
        lines.append(number)
    if not tokens:
        raise _BadLine(EMPTY_SENTENCE, f"line {block[0][0]}: sentence has only empty tokens")
    if opts.max_words is not None and len(tokens) > opts.max_words:
        raise _BadLine(TOO_LONG, f"{len(tokens)} words > max_words={opts.max_words}")
    if tags[0] is None:  # one-column file: every line has the same column count
        return tokens, None, lines
    fixed, repairs = _check_scheme(tags, lines, opts)
    stats.bio_repairs += repairs
    stats.empty_tokens_dropped += dropped
    return tokens, fixed, lines


def _read_file(path: str, opts: _Options, sink: RejectSink, stats: ReadStats) -> Iterator[Sentence]:
    lines = iter_lines(path)
    head: list[Line] = []
    token_lines = 0
    for item in lines:
        head.append(item)
        token_lines += bool(item[1])
        if token_lines >= SNIFF_LINES:
            break
    fmt = _sniff(head)
    lang = opts.lang if opts.lang is not None else fmt.prefix[:-1]
    repairs_before = stats.bio_repairs
    for block in _blocks(itertools.chain(head, lines), fmt, stats):
        try:
            tokens, tags, numbers = _sentence(block, fmt, opts, stats)
        except _BadLine as exc:
            _reject(block, path, exc, sink, stats)
            continue
        stats.sentences += 1
        stats.tokens += len(tokens)
        stats.entities += sum(1 for t in tags if t[0] == "B") if tags else 0
        stats.langs[lang] += 1
        yield Sentence(tokens=tokens, tags=tags, lang=lang, source=path, line=numbers[0])
    if opts.scheme == "auto" and stats.bio_repairs > repairs_before:
        logger.warning("%s: repaired %d I- tags that started an entity into B- (IOB1 input?)",
                       path, stats.bio_repairs - repairs_before)


def label_types(labels: Optional[Iterable[str]]) -> Optional[frozenset[str]]:
    """Entity types from a set of types and/or tags (``{"PER", "B-LOC", "O"}`` -> PER, LOC)."""
    if labels is None:
        return None
    types = set()
    for label in labels:
        if label != OUTSIDE:
            types.add(label[2:] if is_valid_tag(label) else label)
    return frozenset(types)


def read_conll(paths: PathSpecs, *, lang: Optional[str] = None,
               rejects: Optional[RejectSink] = None,
               labels: Optional[Iterable[str]] = None,
               max_words: Optional[int] = DEFAULT_MAX_WORDS, require_tags: bool = True,
               scheme: str = "auto", drop_empty_tokens: bool = True,
               stats: Optional[ReadStats] = None) -> Iterator[Sentence]:
    """Stream sentences from CoNLL files (anything :func:`expand_paths` takes).

    ``lang``: language of every sentence; ``None`` takes it from a WikiANN-style ``xx:`` token
    prefix (stripped either way) or leaves it empty. ``labels``: allowed entity types or tags;
    others reject the sentence (UNKNOWN_LABEL). ``scheme``: ``"auto"`` and ``"iob1"`` rewrite an
    ``I-X`` that starts an entity into ``B-X`` and count it in ``stats.bio_repairs`` (``auto``
    also warns once per file where that happened); ``"iob2"`` rejects such sentences
    (INVALID_BIO). ``require_tags=False`` also accepts one-column (unlabeled) files, whose
    sentences get ``tags=None``; a multi-column file must still end in a tag column.
    ``drop_empty_tokens``: a line with an empty token and tag ``O`` (MasakhaNER xho has two)
    is dropped and counted in ``stats.empty_tokens_dropped``; an empty token with an entity
    tag, or any empty token when False, rejects the sentence (MALFORMED_LINE). Every reject
    goes to ``rejects`` (a fresh sink, which still warns once per reason, when None); its
    ``line`` is the sentence's first line and its ``detail`` names the offending line.

    A bad ``scheme`` or a spec matching no file raises here, at the call, not at first use.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tag scheme {scheme!r}; valid: {SCHEMES}")
    files = expand_paths(paths)
    opts = _Options(lang=lang, allowed_types=label_types(labels), max_words=max_words,
                    require_tags=require_tags, scheme=scheme, drop_empty_tokens=drop_empty_tokens)
    return _read_files(files, opts, rejects if rejects is not None else RejectSink(),
                       stats if stats is not None else ReadStats())


def _read_files(files: list[str], opts: _Options, sink: RejectSink,
                stats: ReadStats) -> Iterator[Sentence]:
    for path in files:
        stats.files += 1
        yield from _read_file(path, opts, sink, stats)
