"""The read side of labeling: one read task per input file (``engine.dataset``).

Each task runs the same reader the rest of the project uses (so every layout and every reject
reason behaves the same) and yields Arrow blocks of ``rows_per_block`` sentences: memory stays
bounded by the block size, not by the file. The task writes its file's rejects itself
(``store.sink.RejectFiles``) -- nothing is silently dropped, and no reject passes through the
driver. The projection's corpus reader (``methods/projection/corpus.py``) does the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from xner_ray.records import MALFORMED_LINE, Reject, RejectSink, Sentence
from xner_ray.store.sink import SOURCE_FILE  # the stored sentences file a row was read from

SENTENCE_COLUMNS = pa.schema([
    ("sent_id", pa.string()), ("lang", pa.string()), ("source", pa.string()),
    ("line", pa.int64()), ("tokens", pa.list_(pa.string())),
    ("gold_tags", pa.list_(pa.string())), ("text", pa.string()),
])


@dataclass(frozen=True)
class InputSpec:
    """One input: a path spec (file, dir, glob), its language, format, and whether to keep the
    file's tags as ``gold_tags`` (evaluation only -- never used for training or selection)."""

    path: str
    lang: str
    fmt: str = "auto"
    gold: bool = False


def _rows(sents: list[Sentence], gold: bool) -> pa.Table:
    return pa.Table.from_pylist([
        {"sent_id": s.sent_id, "lang": s.lang, "source": s.source, "line": s.line,
         "tokens": s.tokens, "gold_tags": s.tags if gold else None, "text": s.text}
        for s in sents], schema=SENTENCE_COLUMNS)


def read_file(path: str, spec: InputSpec, max_words: int, rows_per_block: int,
              rejects=None) -> Iterator[pa.Table]:
    """Stream one file as Arrow blocks. Its rejects go to ``rejects(lang, path, sink)`` (e.g. a
    ``store.sink.RejectFiles``, which writes them from this task) once the file is read."""
    from xner_ray.io.text import read_unlabeled

    sink = RejectSink()
    sents: list[Sentence] = []
    for s in read_unlabeled(path, lang=spec.lang, fmt=spec.fmt, rejects=sink,
                            max_words=max_words, keep_tags=spec.gold):
        if spec.gold and s.tags is None:  # a one-column sentence inside a tagged file
            sink.add(Reject(path, s.line, MALFORMED_LINE, "\n".join(s.tokens),
                            detail="gold tags requested but the sentence has none"))
            continue
        s.lang = spec.lang  # the run's language wins over a file prefix
        sents.append(s)
        if len(sents) >= rows_per_block:
            yield _rows(sents, spec.gold)
            sents = []
    if sents:
        yield _rows(sents, spec.gold)
    if sink.total:
        if rejects is None:
            raise RuntimeError(f"{path}: {sink.summary()} but nowhere to write rejects")
        rejects(spec.lang, path, sink)


def resolve_inputs(inputs: list[InputSpec]) -> list[tuple[str, InputSpec]]:
    """(file, spec) pairs, checked on the driver before any task starts: a spec that matches
    no file, or gold tags asked of a file that is not CoNLL, is an error naming the file."""
    from xner_ray.io.files import expand_paths
    from xner_ray.io.text import detect_format

    files = [(path, spec) for spec in inputs for path in expand_paths(spec.path)]
    for path, spec in files:
        if spec.gold and (spec.fmt if spec.fmt != "auto" else detect_format(path)) != "conll":
            raise ValueError(f"{path}: gold=True needs a CoNLL file with tags, but it reads as "
                             f"{detect_format(path)!r}; pass fmt='conll' if it is CoNLL")
    return files


# Rounds after the first label the sentences an earlier round of the same run stored (RIKD's
# rounds relabel the same text): the store keeps one sentences table per run and language.
STORED_COLUMNS = SENTENCE_COLUMNS.append(pa.field(SOURCE_FILE, pa.string()))


def read_stored(item: tuple[str, str], rows: int) -> Iterator[pa.Table]:
    """One read task: a stored ``sentences`` file of an earlier round (``(lang, uri)``) as
    blocks of ``rows`` sentences, each row tagged with the file's name (``SOURCE_FILE``) so the
    new round's files can be paired with it (``store.sink.RoundSink``). No rejects: the file
    holds only sentences that were accepted when they were first read."""
    import pyarrow.parquet as pq

    from xner_ray.store.sink import split_uri

    lang, uri = item
    fs, path = split_uri(uri)
    name = path.rsplit("/", 1)[-1]
    cols = [c for c in SENTENCE_COLUMNS.names if c not in ("lang", "line")]
    with fs.open_input_file(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=cols):
            n = batch.num_rows
            table = pa.Table.from_batches([batch])
            out = {c: table.column(c) if c in table.column_names else pa.nulls(n, t)
                   for c, t in zip(SENTENCE_COLUMNS.names, SENTENCE_COLUMNS.types)}
            out["lang"] = pa.array([lang] * n, pa.string())
            out["line"] = pa.nulls(n, pa.int64())
            out[SOURCE_FILE] = pa.array([name] * n, pa.string())
            yield pa.table(out, schema=STORED_COLUMNS)
