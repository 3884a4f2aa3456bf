"""Worker-side writes of a round: Parquet files into each language's attempt prefix.

A :class:`RoundSink` is a plain object (no Ray): a write task calls ``sink.write(tables)`` with
the blocks it was handed, and gets back one small record per file it wrote -- table, language,
path, rows and a few sums -- never the rows. The driver commits a round from those records
(:meth:`xner_ray.store.Store.commit_round`), so no per-row data passes through it.

Files of one write call share one name across tables (``sentences/part-X.parquet`` and
``pseudo_labels/part-X.parquet`` hold the same rows in the same order), which lets a training
set read the two side by side without a join. A later round of the same run labels the stored
sentences again and writes no sentences table: its ``pseudo_labels/part-X.<hex>.parquet`` hold
rows of the earlier round's ``sentences/part-X.parquet`` (a reader joins the two by sent_id,
one file pair at a time). A retried write task writes new names; only the
files a finished task reported are committed, the others are removed with the attempt prefix.

:class:`RejectFiles` is the same idea for the read side: a read task writes its input file's
rejects itself (one file per input, a deterministic name, so a retried read overwrites it) with
the exact counts per reason in the file's metadata, where the commit reads them from the footer.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xner_ray.io import uri as _uri
from xner_ray.records import RejectSink
from xner_ray.store import schema as S
from xner_ray.store.writer import _safe_text as _safe

ROW_GROUP_ROWS = 65_536  # issue 14: row groups of >= 64k rows (or one file's rows, if fewer)
COUNTS_KEY = b"xner_ray.reject_counts"


# (filesystem, path) of a store root, file or folder given as a local path or a pyarrow URI;
# whole small files read and written (atomically) the same way: ``io.uri`` for every caller
open_fs = split_uri = _uri.filesystem
read_text, write_text = _uri.read_text, _uri.write_text


def _file_table(table: pa.Table, name: str) -> pa.Table:
    """The columns of store table ``name`` that live inside its files, cast to their types."""
    spec = S.TABLES[name]
    cols = [c for c in spec.file_schema.names if c in table.column_names]
    full = S.batch_to_table(table.select(cols), pa.schema(
        [f for f in spec.schema if f.name in spec.file_schema.names]))
    return full.cast(spec.file_schema)


def _sums(name: str, table: pa.Table) -> dict:
    out = {"rows": table.num_rows}
    if name in ("pseudo_labels", "decisions"):
        out["selected"] = int(pc.sum(table.column("selected").cast(pa.int64())).as_py() or 0)
    if name == "pseudo_labels":
        out["entities"] = int(pc.sum(table.column("n_entities")).as_py() or 0)
    return out


@dataclass
class RoundSink:
    """Writes blocks of rows (with a ``lang`` column) into ``prefixes[lang]/<table>/``.

    ``tables`` maps each store table to write to the block columns it takes (those in the
    table's file schema). ``labels`` fills ``pseudo_labels.labels`` when a block lacks it.
    """

    root: str
    prefixes: dict[str, str]
    tables: Sequence[str]
    labels: Optional[list[str]] = None
    _fs: object = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_fs"} | {"_fs": None}

    @property
    def fs(self):
        if self._fs is None:
            self._fs = open_fs(self.root)[0]
        return self._fs

    def write(self, blocks: Iterable[pa.Table]) -> list[dict]:
        blocks = [b for b in blocks if b.num_rows]
        if not blocks:
            return []
        table = pa.concat_tables(blocks, promote_options="default")
        langs = pc.unique(table.column("lang")).to_pylist()
        unknown = sorted(set(langs) - set(self.prefixes))
        if unknown:
            raise ValueError(f"rows of languages {unknown} but this round writes "
                             f"{sorted(self.prefixes)}")
        out = []
        name = f"part-{uuid.uuid4().hex[:16]}.parquet"
        node = _node_id()
        for lang in sorted(langs):
            part = table.filter(pc.equal(table.column("lang"), lang))
            for file, rows in _by_source(part, name):
                for t in self.tables:
                    out.append({**self._write_one(t, lang, file, rows), "node": node})
        return out

    def _write_one(self, name: str, lang: str, file: str, part: pa.Table) -> dict:
        if name == "pseudo_labels" and "labels" not in part.column_names:
            part = part.append_column("labels", pa.array([self.labels] * part.num_rows,
                                                         pa.list_(pa.string())))
        table = _file_table(part, name)
        path = f"{self.prefixes[lang]}/{name}/{file}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table, path, filesystem=self.fs, compression="zstd",
                       row_group_size=ROW_GROUP_ROWS)
        return {"table": name, "lang": lang, "path": path, **_sums(name, table)}


# A column of rows read back from a stored sentences file (``labeling.source.read_stored``):
# that file's name. Not stored; it names the files the rows are written to.
SOURCE_FILE = "src_file"


def file_stem(name: str) -> str:
    """``part-<hex>`` of ``part-<hex>.parquet`` and of ``part-<hex>.<hex>.parquet``: the stored
    sentences file whose rows a round's file holds (see :func:`_by_source`)."""
    return name.rsplit("/", 1)[-1].split(".", 1)[0]


def pair_files(sentences: Sequence[str], labels: Sequence[str]) -> list[tuple[str, str]]:
    """(sentences file, pseudo_labels file) pairs of a round, by :func:`file_stem`: the file
    written with it (same rows, same order) or, for a round that labeled stored sentences, the
    stored file its rows came from (a subset, any order: join by sent_id). Sorted by the
    labels file."""
    se = {file_stem(p): p for p in sentences}
    pairs = []
    for pl in sorted(labels):
        if file_stem(pl) not in se:
            raise ValueError(f"{pl} has no sentences file it was labeled from (no "
                             f"sentences/{file_stem(pl)}.parquet): the round was not written "
                             "by this version's sink; label it again")
        pairs.append((se[file_stem(pl)], pl))
    return pairs


def _by_source(part: pa.Table, name: str) -> list[tuple[str, pa.Table]]:
    """(file name, rows) of one write call. Rows read from a stored ``sentences`` file of an
    earlier round (a ``src_file`` column) are written per source file, named
    ``<its stem>.<hex>.parquet``, so a reader pairs the new files with the sentences they hold
    (:func:`file_stem`) -- the sentences are stored once per run and language."""
    if SOURCE_FILE not in part.column_names:
        return [(name, part)]
    col = part.column(SOURCE_FILE)
    tag = name.split("-", 1)[1].split(".", 1)[0]
    return [(f"{file_stem(src)}.{tag}.parquet", part.filter(pc.equal(col, src)))
            for src in sorted(pc.unique(col).to_pylist())]


def _node_id() -> Optional[str]:
    """The Ray node a write runs on (None outside Ray): where the data went, for the record."""
    import sys

    if "ray" not in sys.modules:
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@dataclass
class RejectFiles:
    """Writes the rejects of one input file to ``prefixes[lang]/rejects/part-<hash>.parquet``."""

    root: str
    prefixes: dict[str, str]

    def __call__(self, lang: str, source: str, sink: RejectSink) -> Optional[str]:
        if not sink.total:
            return None
        fs = open_fs(self.root)[0]
        rows = [{"path": _safe(r.path), "line": r.line, "reason": r.reason, "raw": _safe(r.raw),
                 "detail": _safe(r.detail)} for r in sink]
        table = _file_table(S.batch_to_table(rows, pa.schema(
            [f for f in S.REJECTS if f.name not in S.ROUND_PARTITION])), "rejects")
        meta = dict(table.schema.metadata or {})
        meta[COUNTS_KEY] = json.dumps(dict(sink.counts), sort_keys=True).encode()
        key = hashlib.blake2b(source.encode("utf-8", "surrogateescape"),
                              digest_size=8).hexdigest()
        path = f"{self.prefixes[lang]}/rejects/part-{key}.parquet"
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(table.replace_schema_metadata(meta), path, filesystem=fs,
                       compression="zstd")
        return path


def reject_counts(fs, path: str) -> dict[str, int]:
    """Exact counts per reason of a rejects file, from its footer (no rows read)."""
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).schema_arrow.metadata or {}
    return json.loads(meta.get(COUNTS_KEY, b"{}"))



SELECTED_KEY = b"xner_ray.selected"


def write_decisions(uri: str, sent_ids: list, policy_p: list, selected: list,
                    selector_id: str) -> None:
    """Rows of the store's ``decisions`` table written by a worker in training (stage 1: RIKD's
    ranks, over any decision taken at labeling); the number selected rides in the file
    metadata, so a commit reads only footers."""
    n = len(sent_ids)
    sel = pa.array([bool(s) for s in selected], pa.bool_())
    table = _file_table(pa.table({
        "sent_id": pa.array([str(s) for s in sent_ids], pa.string()),
        "policy_p": pa.array(policy_p, pa.float32()), "selected": sel,
        "selector": pa.array([selector_id] * n, pa.string()),
        "weight": pc.cast(sel, pa.float32()),
        "stage": pa.array([1] * n, pa.int32())}), "decisions")
    meta = dict(table.schema.metadata or {})
    meta[SELECTED_KEY] = str(int(pc.sum(sel.cast(pa.int64())).as_py() or 0)).encode()
    fs, path = split_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table.replace_schema_metadata(meta), path, filesystem=fs, compression="zstd")


def file_stats(fs, path: str) -> dict:
    """Rows (and selected, when recorded) of a Parquet file, from its footer."""
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        meta = pf.schema_arrow.metadata or {}
        out = {"rows": pf.metadata.num_rows}
    if SELECTED_KEY in meta:
        out["selected"] = int(meta[SELECTED_KEY])
    return out
