"""Parallel corpora as projection inputs: the spec of one corpus, its pairs as Arrow rows, gold
word links, and the read function of the projection's engine plans (one read task per corpus).

Rows carry both sides' words, the target language (the store partition) and, when the corpus
has a links file (the Bible's ``links.jsonl``: Strong's-number word links as character spans
``src``/``tgt``, one JSON object per line of the corpus), the links as word spans. Read rejects
(invalid UTF-8, empty or over-long sides, a links line whose id is not the pair's) go to a
``rejects`` callable -- a ``store.sink.RejectFiles``, which writes them from the read task into
the target language's attempt prefix -- so nothing is dropped silently and no reject passes
through the driver. The module imports no Ray.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import pyarrow as pa

from xner_ray.records import (
    BAD_JSON, INVALID_UTF8, MALFORMED_LINE, MISALIGNED_PAIR, Reject, RejectSink,
)

FORMATS = ("moses", "tsv")
LINK = pa.struct([("src_start", pa.int32()), ("src_end", pa.int32()),
                  ("tgt_start", pa.int32()), ("tgt_end", pa.int32())])
PAIR_COLUMNS = pa.schema([
    ("pair_id", pa.string()), ("lang", pa.string()), ("src_lang", pa.string()),
    ("ref", pa.string()), ("source", pa.string()), ("line", pa.int64()),
    ("src_tokens", pa.list_(pa.string())), ("tgt_tokens", pa.list_(pa.string())),
    ("links", pa.list_(LINK)),
])


@dataclass(frozen=True)
class ParallelSpec:
    """One parallel corpus: source -> target language ``lang`` (the store partition)."""

    lang: str
    path: str
    src_lang: str = "en"
    fmt: str = "moses"
    links: Optional[str] = None
    dev: Optional[str] = None
    limit: Optional[int] = None
    id_column: bool = False

    HELP = ("{lang: target language, path: Moses folder/prefix (X.src-tgt.src/.tgt[.ids]) or "
            "TSV file(s), src_lang: en, fmt: moses|tsv, links: gold word links JSONL (one line "
            "per pair), dev: target CoNLL dev file (scores reported only), limit: first N pairs, "
            "id_column: TSV has a third id column}")

    def __post_init__(self) -> None:
        from xner_ray.store.store import check_name

        check_name("lang", self.lang)
        if self.fmt not in FORMATS:
            raise ValueError(f"corpus {self.path!r}: fmt must be one of {FORMATS}, got {self.fmt!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"corpus {self.path!r}: limit must be >= 1, got {self.limit}")
        if self.links and self.fmt != "moses":
            raise ValueError(f"corpus {self.path!r}: links are read line by line beside Moses "
                             "files; a TSV corpus cannot have them")

    @classmethod
    def parse(cls, value) -> "ParallelSpec":
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"a corpus must be a mapping {cls.HELP}, got {value!r}")
        from xner_ray import config as config_mod

        return config_mod.build(cls, value, what="corpus")


def parse_corpora(values: Sequence) -> list[ParallelSpec]:
    corpora = [ParallelSpec.parse(v) for v in values or []]
    if not corpora:
        raise ValueError("at least one parallel corpus is required")
    langs = [c.lang for c in corpora]
    if len(set(langs)) != len(langs):
        raise ValueError(f"target languages repeat: {langs} (one corpus per target language; "
                         "concatenate corpora of one language into one file or folder)")
    return corpora


def check_corpus(spec: ParallelSpec) -> None:
    """Fail on the driver, before any task: files missing, unequal line counts."""
    from xner_ray.io import ParallelLengthError, count_lines, expand_paths

    if spec.fmt == "tsv":
        expand_paths(spec.path)
        return
    files = _moses(spec)
    if spec.links:
        n, m = count_lines(files.src), count_lines(spec.links)
        if n != m:
            raise ParallelLengthError(f"links file {spec.links!r} has {m} lines but the corpus "
                                      f"{files.src!r} has {n}: they must pair line by line")


def _moses(spec: ParallelSpec):
    from xner_ray.io import find_moses

    return find_moses(spec.path, spec.src_lang, spec.lang)


def iter_pairs(spec: ParallelSpec, sink: RejectSink, max_words: int):
    """The corpus' :class:`~xner_ray.io.SentencePair` s (at most ``spec.limit``); rejects,
    pairs over ``max_words`` among them, go to ``sink``."""
    from xner_ray.io import read_moses, read_tsv_pairs

    if spec.fmt == "tsv":
        pairs = read_tsv_pairs(spec.path, src_lang=spec.src_lang, tgt_lang=spec.lang,
                               id_column=spec.id_column, rejects=sink, max_words=max_words)
    else:
        files = _moses(spec)
        pairs = read_moses(files.src, files.tgt, src_lang=spec.src_lang, tgt_lang=spec.lang,
                           ids_path=files.ids, rejects=sink, max_words=max_words)
    return itertools.islice(pairs, spec.limit)


def _word_span(offsets: Sequence[tuple[int, int]], start: int, end: int
               ) -> Optional[tuple[int, int]]:
    """Words overlapping the character span ``[start, end)``, as ``[first, last + 1)``."""
    hit = [i for i, (a, b) in enumerate(offsets) if a < end and start < b]
    return (hit[0], hit[-1] + 1) if hit else None


def links_to_words(pair, record: dict) -> list[dict]:
    """Character-span links of one pair -> word spans; links that cover no word are skipped."""
    out = []
    for link in record.get("links") or []:
        src = _word_span(pair.src.offsets, *link["src"])
        tgt = _word_span(pair.tgt.offsets, *link["tgt"])
        if src and tgt:
            out.append({"src_start": src[0], "src_end": src[1],
                        "tgt_start": tgt[0], "tgt_end": tgt[1]})
    return out


def _links_by_line(path: str) -> Iterator[tuple[int, Optional[str]]]:
    from xner_ray.io import iter_lines

    for number, text, _ in iter_lines(path):
        yield number, text


def _pair_links(pair, links_iter, path: str, sink: RejectSink) -> Optional[list[dict]]:
    """Advance the links file to the pair's line; its links as word spans, or None after a
    reject (undecodable line, bad JSON, or an id that is not the pair's verse reference)."""
    for number, text in links_iter:
        if number < pair.line:
            continue
        raw = f"{pair.src.text}\t{pair.tgt.text}"
        if text is None:
            sink.add(Reject(path, number, INVALID_UTF8, raw, "links line is not valid UTF-8"))
            return None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            sink.add(Reject(path, number, BAD_JSON, raw, f"links line: {exc}"))
            return None
        if not isinstance(record, dict):
            sink.add(Reject(path, number, MALFORMED_LINE, raw, "links line is not a JSON object"))
            return None
        if pair.ref is not None and record.get("id") not in (None, pair.ref):
            sink.add(Reject(path, number, MISALIGNED_PAIR, raw,
                            f"links line has id {record.get('id')!r} but the pair is {pair.ref!r}"))
            return None
        return links_to_words(pair, record)
    return []


def pair_row(pair, spec: ParallelSpec, links: Optional[list[dict]]) -> dict:
    return {"pair_id": pair.pair_id, "lang": spec.lang, "src_lang": spec.src_lang,
            "ref": pair.ref, "source": pair.src.source, "line": pair.line,
            "src_tokens": pair.src.tokens, "tgt_tokens": pair.tgt.tokens, "links": links}


def read_corpus(spec: ParallelSpec, *, max_words: int, rows_per_block: int, with_links: bool,
                rejects=None) -> Iterator[pa.Table]:
    """Stream one corpus as Arrow blocks of :data:`PAIR_COLUMNS` (an engine plan's ``read``).
    Its rejects go to ``rejects(lang, path, sink)`` (e.g. a ``store.sink.RejectFiles``) once
    the corpus is read, keyed by the target language."""
    sink = RejectSink()
    links_iter = _links_by_line(spec.links) if with_links and spec.links else None
    rows = []
    for pair in iter_pairs(spec, sink, max_words):
        links = None
        if links_iter is not None:
            links = _pair_links(pair, links_iter, spec.links, sink)
            if links is None:
                continue
        rows.append(pair_row(pair, spec, links))
        if len(rows) >= rows_per_block:
            yield pa.Table.from_pylist(rows, schema=PAIR_COLUMNS)
            rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=PAIR_COLUMNS)
    if sink.total:
        if rejects is None:
            raise RuntimeError(f"{spec.path}: {sink.summary()} but nowhere to write rejects")
        rejects(spec.lang, spec.path, sink)
