"""Raw-text input: a Unicode-aware word tokenizer with offsets, and readers for one sentence per
line, JSONL, and a dispatcher that picks the reader for unlabeled target text.

Offsets let pseudo-labels be written back as character spans over the original text, so the
tokenizer never rewrites characters: ``text[start:end] == token`` always holds.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import unicodedata
from typing import Iterator, Optional

from xner_ray.io.conll import read_conll
from xner_ray.io.files import (
    PathSpecs, ReadStats, expand_paths, iter_lines, open_binary, strip_compression_ext,
)
from xner_ray.records import (
    BAD_JSON, DEFAULT_MAX_WORDS, EMPTY_SENTENCE, INVALID_UTF8, MALFORMED_LINE, TOO_LONG, Reject,
    RejectSink, Sentence,
)

FORMATS = ("auto", "text", "jsonl", "conll")
SNIFF_LINES = 20
# Invisible characters that separate like spaces (with whitespace and C0/C1 controls); the
# joiners among them stay inside a word when they sit between two word characters.
_JOINERS = "\u00ad\u200c\u200d"  # soft hyphen, ZWNJ (Persian, Indic), ZWJ
_INVISIBLE = "\u200b\u200e\u200f\u2060\ufeff" + _JOINERS
_WORD_JOINERS = "\\-\u2010\u2011'\u2019" + _JOINERS  # hyphens and apostrophes


def _ranges(codepoints: list[int]) -> str:
    """Regex character-class body for sorted code points, as ``a-b`` ranges."""
    parts, start = [], None
    for i, cp in enumerate(codepoints):
        start = cp if start is None else start
        if i + 1 == len(codepoints) or codepoints[i + 1] != cp + 1:
            parts.append(f"{re.escape(chr(start))}-{re.escape(chr(cp))}")
            start = None
    return "".join(parts)


@functools.lru_cache(maxsize=1)
def _token_pattern() -> re.Pattern[str]:
    """Built once per process (~0.1 s): Python's ``\\w`` misses combining marks (Mn/Mc, e.g.
    Yoruba tone marks, Devanagari vowel signs), which must not split words. The marks outside
    the BMP sit behind a cheap guard: ``re`` scans such classes range by range (3x slower)."""
    marks = [cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp))[0] == "M"]
    bmp, astral = [cp for cp in marks if cp < 0x10000], [cp for cp in marks if cp >= 0x10000]
    word = rf"(?:[^\W_]|[{_ranges(bmp)}]|(?=[\U00010000-\U0010ffff])[{_ranges(astral)}])"
    inner = rf"(?:[{_WORD_JOINERS}]|(?<=\d)[.,](?=\d))"  # numbers keep inner . and ,
    other = rf"[^\s\x00-\x1f\x7f-\x9f{_INVISIBLE}]"
    return re.compile(rf"{word}+(?:{inner}{word}+)*|{other}")


def word_tokenize(text: str) -> list[tuple[str, int, int]]:
    """Split ``text`` into ``(token, start, end)`` with ``text[start:end] == token``.

    Tokens: words (letters, digits, combining marks) with inner hyphens/apostrophes
    (``well-known``, ``don't``); numbers with inner ``.``/``,`` (``1,000.50``); every other
    visible character alone (punctuation, symbols, emoji). Only whitespace, control characters
    and invisible format characters (ZWSP, BOM, LRM/RLM, word joiner, and soft hyphen/ZWNJ/ZWJ
    outside words) are skipped.
    """
    return [(m.group(), m.start(), m.end()) for m in _token_pattern().finditer(text)]


class TextReject(ValueError):
    """Why a piece of text cannot become a sentence (reason is a records reject constant)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def text_sentence(text: str, *, lang: str, source: str, line: int,
                  max_words: Optional[int] = DEFAULT_MAX_WORDS) -> Sentence:
    """Tokenized :class:`Sentence` with ``text`` and ``offsets``; raises :class:`TextReject`
    (EMPTY_SENTENCE, TOO_LONG). Shared by the text, JSONL and parallel readers."""
    found = list(_token_pattern().finditer(text))
    if not found:
        raise TextReject(EMPTY_SENTENCE, "no tokens (only spaces or invisible characters)")
    if max_words is not None and len(found) > max_words:
        raise TextReject(TOO_LONG, f"{len(found)} words > max_words={max_words}")
    return Sentence(tokens=[m.group() for m in found], lang=lang, source=source, line=line,
                    offsets=[m.span() for m in found], text=text)


def _reject(sink: RejectSink, stats: ReadStats, path: str, line: int, reason: str, raw: str,
            detail: str) -> None:
    sink.add(Reject(path, line, reason, raw, detail))
    stats.rejected += 1


def _accept(stats: ReadStats, sent: Sentence) -> Sentence:
    stats.sentences += 1
    stats.tokens += len(sent.tokens)
    stats.langs[sent.lang] += 1
    return sent


def read_text(paths: PathSpecs, *, lang: str, rejects: Optional[RejectSink] = None,
              max_words: Optional[int] = DEFAULT_MAX_WORDS,
              stats: Optional[ReadStats] = None) -> Iterator[Sentence]:
    """One sentence per line, word-tokenized with offsets.

    Blank lines (empty or ASCII spaces only) separate and are skipped; a non-blank line with no
    token (Unicode spaces, controls, invisibles only) is an EMPTY_SENTENCE reject, since
    something was there. Invalid UTF-8 -> INVALID_UTF8; > ``max_words`` -> TOO_LONG.
    """
    files = expand_paths(paths)  # raises now, not at first use, when nothing matches
    return _read_text(files, lang, max_words, rejects if rejects is not None else RejectSink(),
                      stats if stats is not None else ReadStats())


def _read_text(files: list[str], lang: str, max_words: Optional[int], sink: RejectSink,
               stats: ReadStats) -> Iterator[Sentence]:
    for path in files:
        stats.files += 1
        for number, text, raw in iter_lines(path):
            stats.lines += 1
            if text is None:
                _reject(sink, stats, path, number, INVALID_UTF8, raw.decode("utf-8", "replace"),
                        "line is not valid UTF-8")
                continue
            sent = _try_sentence(text, lang, path, number, max_words, sink, stats) if text else None
            if sent is not None:
                yield sent


def _try_sentence(text: str, lang: str, path: str, line: int, max_words: Optional[int],
                  sink: RejectSink, stats: ReadStats, ref: Optional[str] = None,
                  raw: Optional[str] = None) -> Optional[Sentence]:
    """The accepted sentence, or None after recording its reject (``raw`` defaults to text)."""
    try:
        sent = text_sentence(text, lang=lang, source=path, line=line, max_words=max_words)
    except TextReject as exc:
        _reject(sink, stats, path, line, exc.reason, text if raw is None else raw, exc.detail)
        return None
    sent.ref = ref
    return _accept(stats, sent)


def _json_fields(record: object, text_field: str, lang_field: str, id_field: Optional[str],
                 default_lang: Optional[str]) -> tuple[str, str, Optional[str]]:
    """``(text, lang, ref)`` of a decoded JSONL record; raises :class:`TextReject`."""
    if not isinstance(record, dict):
        raise TextReject(MALFORMED_LINE, f"expected a JSON object, got {type(record).__name__}")
    text = record.get(text_field)
    if not isinstance(text, str):
        raise TextReject(MALFORMED_LINE, f"field {text_field!r} missing or not a string")
    lang = record.get(lang_field)
    lang = default_lang if lang is None else lang
    if lang is not None and not isinstance(lang, str):
        raise TextReject(MALFORMED_LINE, f"field {lang_field!r} is not a string")
    ref = None
    if id_field is not None:
        if not isinstance(record.get(id_field), (str, int)) or isinstance(record[id_field], bool):
            raise TextReject(MALFORMED_LINE, f"field {id_field!r} missing or not a string/int")
        ref = str(record[id_field])
    return text, lang or "", ref


def read_jsonl(paths: PathSpecs, *, lang: Optional[str] = None, text_field: str = "text",
               lang_field: str = "lang", id_field: Optional[str] = None,
               rejects: Optional[RejectSink] = None,
               max_words: Optional[int] = DEFAULT_MAX_WORDS,
               stats: Optional[ReadStats] = None) -> Iterator[Sentence]:
    """One JSON object per line; ``text_field`` is word-tokenized with offsets.

    A record's own ``lang_field`` wins over ``lang`` (the default for records without one);
    ``id_field``, when given, must be present and becomes ``Sentence.ref``. Blank lines are
    skipped. Rejects: BAD_JSON (unparsable line), MALFORMED_LINE (not an object, text/lang/id
    field missing or of the wrong type), EMPTY_SENTENCE (text without tokens), TOO_LONG,
    INVALID_UTF8.
    """
    files = expand_paths(paths)
    fields = (text_field, lang_field, id_field, lang)
    return _read_jsonl(files, fields, max_words, rejects if rejects is not None else RejectSink(),
                       stats if stats is not None else ReadStats())


def _read_jsonl(files: list[str], fields: tuple[str, str, Optional[str], Optional[str]],
                max_words: Optional[int], sink: RejectSink,
                stats: ReadStats) -> Iterator[Sentence]:
    for path in files:
        stats.files += 1
        for number, line, raw in iter_lines(path):
            stats.lines += 1
            if line is None:
                _reject(sink, stats, path, number, INVALID_UTF8, raw.decode("utf-8", "replace"),
                        "line is not valid UTF-8")
                continue
            if not line:
                continue
            try:
                text, rec_lang, ref = _json_fields(_loads(line), *fields)
            except TextReject as exc:
                _reject(sink, stats, path, number, exc.reason, line, exc.detail)
                continue
            sent = _try_sentence(text, rec_lang, path, number, max_words, sink, stats, ref, line)
            if sent is not None:
                yield sent


def _loads(line: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise TextReject(BAD_JSON, f"invalid JSON: {exc}") from exc


def _looks_like_conll(path: str) -> bool:
    """Sniff the first non-blank lines: CoNLL when each has <= 4 columns (4, not 3, so the
    original 4-column CoNLL-2003 layout counts too) and either a ``-DOCSTART-`` line or a tag
    in the last column of every line says so (a first sentence may be longer than the sniffed
    window), or blank lines separate them (one-column, unlabeled CoNLL)."""
    from xner_ray.labels import is_valid_tag

    seen, pending_blank, blank_between, all_tagged = 0, False, False, True
    for _, text, _ in iter_lines(path):
        if not text:
            pending_blank = seen > 0
            continue
        cols = text.split()
        if len(cols) > 4:
            return False
        if cols[0] == "-DOCSTART-":
            return True
        all_tagged = all_tagged and len(cols) >= 2 and is_valid_tag(cols[-1])
        blank_between = blank_between or pending_blank
        seen += 1
        if seen >= SNIFF_LINES:
            break
    return blank_between or (seen > 0 and all_tagged)


def detect_format(path: str) -> str:
    """``jsonl``, ``conll`` or ``text`` for one file (see :func:`read_unlabeled`)."""
    name = strip_compression_ext(path).lower()
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith((".conll", ".bio")):
        return "conll"
    return "conll" if _looks_like_conll(path) else "text"


def count_records(path: str, fmt: str = "auto") -> int:
    """Sentences in one file as :func:`read_unlabeled` would see them before any check: CoNLL
    blocks, or non-blank lines of text and JSONL. A fast count for progress totals (nothing is
    decoded; a rejected sentence is still counted)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    n, inside = 0, False
    with open_binary(path) as handle:
        for line in handle:
            blank = not line.strip()
            if fmt == "conll":
                n += not blank and not inside
                inside = not blank
            else:
                n += not blank
    return n


def read_unlabeled(path_spec: PathSpecs, *, lang: str, fmt: str = "auto",
                   rejects: Optional[RejectSink] = None,
                   max_words: Optional[int] = DEFAULT_MAX_WORDS, keep_tags: bool = False,
                   text_field: str = "text", stats: Optional[ReadStats] = None
                   ) -> Iterator[Sentence]:
    """Unlabeled target-language sentences from text, JSONL or CoNLL files.

    ``fmt="auto"`` decides per file: ``.jsonl``/``.json`` -> jsonl, ``.conll``/``.bio`` ->
    conll (compression extensions ignored), else sniffed: CoNLL when the first 20 non-blank
    lines have <= 4 whitespace columns and blank lines occur among them, text otherwise.
    CoNLL tags are dropped unless ``keep_tags`` (the papers use target data without labels;
    keep them only to measure pseudo-label quality).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; valid: {FORMATS}")
    files = expand_paths(path_spec)
    sink = rejects if rejects is not None else RejectSink()
    stats = stats if stats is not None else ReadStats()
    common = dict(lang=lang, rejects=sink, max_words=max_words, stats=stats)
    return _read_unlabeled(files, fmt, keep_tags, text_field, common)


def _read_unlabeled(files: list[str], fmt: str, keep_tags: bool, text_field: str,
                    common: dict) -> Iterator[Sentence]:
    for path in files:
        kind = detect_format(path) if fmt == "auto" else fmt
        if kind == "text":
            yield from read_text(path, **common)
        elif kind == "jsonl":
            yield from read_jsonl(path, text_field=text_field, **common)
        else:
            for sent in read_conll(path, require_tags=False, **common):
                sent.tags = sent.tags if keep_tags else None
                yield sent
