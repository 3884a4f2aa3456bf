"""Parallel (bitext) readers: OPUS Moses file pairs and ``src<TAB>tgt`` files.

Both sides are word-tokenized with character offsets, so word alignments and projected entity
spans (e.g. the Bible's ``links.jsonl`` character spans) can be mapped onto tokens.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

from xner_ray.io.files import (
    COMPRESSION_BY_EXT, PathSpecs, ReadStats, count_lines, expand_paths, iter_lines,
)
from xner_ray.io.text import TextReject, text_sentence
from xner_ray.records import (
    DEFAULT_MAX_WORDS, INVALID_UTF8, MALFORMED_LINE, Reject, RejectSink, Sentence,
)

Line = tuple[int, Optional[str], bytes]


@dataclass
class SentencePair:
    """One aligned pair. ``pair_id`` hashes both languages, texts and ``ref`` (stable across
    reruns; identical untagged pairs share an id on purpose -- they are the same data)."""

    pair_id: str
    src: Sentence
    tgt: Sentence
    ref: Optional[str]  # e.g. the verse id from a Moses ``.ids`` file
    line: int  # 1-based line in the input file(s)


def pair_id(src_lang: str, tgt_lang: str, src_text: str, tgt_text: str,
            ref: Optional[str] = None) -> str:
    """Content hash of a pair; the Bible has 164 repeated verse pairs, told apart by ``ref``."""
    h = hashlib.blake2b(digest_size=12)
    for part in (src_lang, tgt_lang, ref or "", src_text, tgt_text):
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


class ParallelLengthError(ValueError):
    """The two sides (or the ids file) of a Moses corpus have different line counts: every
    line after the first gap would pair wrong, so the whole corpus is refused."""


class MosesFiles(NamedTuple):
    src: str
    tgt: str
    ids: Optional[str]


def _existing(stem: str) -> Optional[str]:
    """``stem`` or a compressed variant of it, if one exists."""
    for ext in ("", *COMPRESSION_BY_EXT):
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


def _moses_stems(dir_or_prefix: str, src_lang: str, tgt_lang: str) -> list[str]:
    """Candidate stems ``X.l1-l2`` (both language orders, OPUS sorts them)."""
    pairs = (f"{src_lang}-{tgt_lang}", f"{tgt_lang}-{src_lang}")
    if not os.path.isdir(dir_or_prefix):
        return [f"{dir_or_prefix}.{p}" for p in pairs] + [dir_or_prefix]
    stems = set()
    for name in sorted(os.listdir(dir_or_prefix)):
        base = name
        for ext in COMPRESSION_BY_EXT:
            base = base[: -len(ext)] if base.endswith(ext) else base
        for p in pairs:
            if base.endswith(f".{p}.{src_lang}") and not name.startswith("."):
                stems.add(os.path.join(dir_or_prefix, base[: -len(src_lang) - 1]))
    return sorted(stems)


def find_moses(dir_or_prefix: str, src_lang: str, tgt_lang: str) -> MosesFiles:
    """Locate OPUS Moses files ``X.src-tgt.src``/``.tgt`` (and ``.ids`` if present) in a
    directory, or from a prefix (``.../bible`` or ``.../bible.en-es``); local paths only.

    Raises ``FileNotFoundError`` listing what was tried, ``ValueError`` when a directory holds
    several corpora for the pair (pass the prefix then).
    """
    found = []
    for stem in _moses_stems(dir_or_prefix, src_lang, tgt_lang):
        src, tgt = _existing(f"{stem}.{src_lang}"), _existing(f"{stem}.{tgt_lang}")
        if src and tgt:
            found.append(MosesFiles(src, tgt, _existing(f"{stem}.ids")))
    if not found:
        tried = [f"{s}.{src_lang}" for s in _moses_stems(dir_or_prefix, src_lang, tgt_lang)]
        raise FileNotFoundError(f"no Moses files for {src_lang}-{tgt_lang} at {dir_or_prefix!r}"
                                f" (looked for X.{src_lang}-{tgt_lang}.{src_lang} and "
                                f"X.{src_lang}-{tgt_lang}.{tgt_lang}; tried {tried or 'none'})")
    if len(found) > 1:
        raise ValueError(f"several Moses corpora for {src_lang}-{tgt_lang} in "
                         f"{dir_or_prefix!r}: {[f.src for f in found]}; pass a prefix")
    return found[0]


@dataclass
class _PairReader:
    """Turns two decoded sides into a :class:`SentencePair` or a reject."""

    src_lang: str
    tgt_lang: str
    max_words: Optional[int]
    sink: RejectSink
    stats: ReadStats

    def pair(self, path: str, line: int, src: tuple[str, Optional[str], bytes],
             tgt: tuple[str, Optional[str], bytes], ref: Optional[str]) -> Optional[SentencePair]:
        """``src``/``tgt`` are ``(source_path, text_or_None, raw)``; None when rejected."""
        raw = "\t".join(t if t is not None else r.decode("utf-8", "replace")
                        for _, t, r in (src, tgt))
        bad = [side for side, (_, text, _) in (("source", src), ("target", tgt)) if text is None]
        if bad:
            return self.reject(path, line, INVALID_UTF8, raw, f"{' and '.join(bad)} side "
                                                               f"is not valid UTF-8")
        sents = []
        for side, (source, text, _), lang in (("source", src, self.src_lang),
                                              ("target", tgt, self.tgt_lang)):
            try:
                sents.append(text_sentence(text or "", lang=lang, source=source, line=line,
                                           max_words=self.max_words))
            except TextReject as exc:
                return self.reject(path, line, exc.reason, raw, f"{side} side: {exc.detail}")
        for sent in sents:
            sent.ref = ref
            self.stats.tokens += len(sent)
        self.stats.sentences += 1
        self.stats.langs[f"{self.src_lang}-{self.tgt_lang}"] += 1
        pid = pair_id(self.src_lang, self.tgt_lang, sents[0].text or "", sents[1].text or "", ref)
        return SentencePair(pair_id=pid, src=sents[0], tgt=sents[1], ref=ref, line=line)

    def reject(self, path: str, line: int, reason: str, raw: str, detail: str) -> None:
        self.sink.add(Reject(path, line, reason, raw, detail))
        self.stats.rejected += 1


def _check_lengths(paths: dict[str, str]) -> None:
    counts = {role: count_lines(path) for role, path in paths.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{role} {paths[role]!r}: {n} lines" for role, n in counts.items())
        raise ParallelLengthError(f"parallel files differ in length: {listing}")


def read_moses(src_path: str, tgt_path: str, *, src_lang: str, tgt_lang: str,
               ids_path: Optional[str] = None, rejects: Optional[RejectSink] = None,
               max_words: Optional[int] = DEFAULT_MAX_WORDS,
               stats: Optional[ReadStats] = None) -> Iterator[SentencePair]:
    """Stream line-aligned pairs from two Moses files (plus an optional ``.ids`` file).

    Line counts are compared first (a streaming pass), so unequal files raise
    :class:`ParallelLengthError` at call time, before any pair is produced. Rejects (``path`` =
    source file, ``raw`` = ``"src<TAB>tgt"``): INVALID_UTF8, EMPTY_SENTENCE (an empty or
    blank side), TOO_LONG (either side). ``stats.sentences`` counts pairs.
    """
    files = {"source": src_path, "target": tgt_path}
    if ids_path is not None:
        files["ids"] = ids_path
    _check_lengths(files)
    reader = _PairReader(src_lang, tgt_lang, max_words,
                         rejects if rejects is not None else RejectSink(),
                         stats if stats is not None else ReadStats())
    return _moses_pairs(src_path, tgt_path, ids_path, reader)


def _moses_pairs(src_path: str, tgt_path: str, ids_path: Optional[str],
                 reader: _PairReader) -> Iterator[SentencePair]:
    reader.stats.files += 2 + (ids_path is not None)
    ids = iter_lines(ids_path) if ids_path is not None else None
    for (line, s_text, s_raw), (_, t_text, t_raw) in zip(iter_lines(src_path),
                                                         iter_lines(tgt_path)):
        reader.stats.lines += 1
        ref = None
        if ids is not None:
            _, ref_text, ref_raw = next(ids)
            ref = ref_text if ref_text is not None else ref_raw.decode("utf-8", "replace")
        pair = reader.pair(src_path, line, (src_path, s_text, s_raw),
                           (tgt_path, t_text, t_raw), ref)
        if pair is not None:
            yield pair


def read_tsv_pairs(paths: PathSpecs, *, src_lang: str, tgt_lang: str, id_column: bool = False,
                   rejects: Optional[RejectSink] = None,
                   max_words: Optional[int] = DEFAULT_MAX_WORDS,
                   stats: Optional[ReadStats] = None) -> Iterator[SentencePair]:
    """Pairs from ``src<TAB>tgt`` lines, or ``src<TAB>tgt<TAB>ref`` with ``id_column=True``.

    Any other number of tabs is MALFORMED_LINE (tabs inside a sentence cannot be told from the
    separator); lines of only spaces are skipped. An empty side is EMPTY_SENTENCE.
    """
    files = expand_paths(paths)  # raises now, not at first use, when nothing matches
    reader = _PairReader(src_lang, tgt_lang, max_words,
                         rejects if rejects is not None else RejectSink(),
                         stats if stats is not None else ReadStats())
    return _tsv_pairs(files, reader, 3 if id_column else 2)


def _tsv_pairs(files: list[str], reader: _PairReader, want: int) -> Iterator[SentencePair]:
    for path in files:
        reader.stats.files += 1
        for line, text, raw in iter_lines(path, rstrip=False):
            reader.stats.lines += 1
            pair = _tsv_pair(reader, path, line, text, raw, want)
            if pair is not None:
                yield pair


def _tsv_pair(reader: _PairReader, path: str, line: int, text: Optional[str], raw: bytes,
              want: int) -> Optional[SentencePair]:
    if text is None:
        return reader.reject(path, line, INVALID_UTF8, raw.decode("utf-8", "replace"),
                             "line is not valid UTF-8")
    if not text.strip():
        return None
    cols = text.split("\t")
    if len(cols) != want:
        return reader.reject(path, line, MALFORMED_LINE, text,
                             f"expected {want} tab-separated columns, got {len(cols)}")
    ref = (cols[2].strip() or None) if want == 3 else None
    return reader.pair(path, line, (path, cols[0].rstrip(), raw), (path, cols[1].rstrip(), raw),
                       ref)
