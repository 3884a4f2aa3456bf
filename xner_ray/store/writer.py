"""RoundWriter: stream one (run_id, lang, round) into the store; visible only when complete.

::

    with store.round_writer("r1", "es", 0, labels=label_list) as w:
        if not w.skipped:                     # complete already: a rerun skips it
            for batch in batches:
                w.write_sentences(batch)
                w.write_pseudo_labels(batch)
            w.write_rejects(sink)             # records.Reject items (or a RejectSink)

Batches stream into Parquet files in ``_tmp`` (a new file every ``rows_per_file`` rows; a round
is never held in memory). On a clean exit each table's folder is renamed into place and the
manifest (counts, files, schema version, label set, times, ``meta``) is written last -- the
manifest is the commit. Entering the block takes the round's writer lease (a second writer of
the same round gets ``LeaseHeld`` naming this one); leaving it commits and releases the lease.
On an exception the attempt's temporary folder is removed, the lease released and nothing
becomes visible. Leftovers of an interrupted attempt (``_tmp`` folders, partitions without a
manifest) are removed when the round is written again -- see the commit protocol in
:mod:`xner_ray.store.store`.
"""

from __future__ import annotations

import collections
import logging
from typing import Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xner_ray.records import Reject, RejectSink
from xner_ray.store import schema as S
from xner_ray.store.store import Store, check_name, check_round, failpoint, utcnow

logger = logging.getLogger(__name__)

DEFAULT_ROWS_PER_FILE = 100_000


class _PartWriter:
    """Appends tables to ``dir/part-NNNNN.parquet``, starting a new file every ``limit`` rows."""

    def __init__(self, store: Store, directory: str, schema: pa.Schema, limit: int):
        self.store, self.dir, self.schema, self.limit = store, directory, schema, limit
        self.files: list[str] = []
        self.rows = 0
        self._writer: Optional[pq.ParquetWriter] = None
        self._in_file = 0

    def write(self, table: pa.Table) -> None:
        start = 0
        while start < table.num_rows:
            if self._writer is None or self._in_file >= self.limit:
                self._open()
            take = min(self.limit - self._in_file, table.num_rows - start)
            self._writer.write_table(table.slice(start, take))
            start += take
            self._in_file += take
            self.rows += take

    def _open(self) -> None:
        self.close()
        if not self.files:
            self.store.fs.create_dir(self.dir, recursive=True)
        name = f"part-{len(self.files):05d}.parquet"
        self.files.append(name)
        self._writer = pq.ParquetWriter(f"{self.dir}/{name}", self.schema,
                                        filesystem=self.store.fs, compression="zstd")
        self._in_file = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _safe_text(value: Optional[str]) -> Optional[str]:
    """Arrow strings must be valid UTF-8: escape lone surrogates (surrogateescape'd bytes)."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class RoundWriter:
    """Writes one round of one language of one run; see the module doc.

    ``labels``: the label set (order of ``probs``). Without it the first pseudo-label batch's
    set becomes the round's. Every batch must use that one set; once it is known, batches may
    omit the ``labels`` column. ``meta``: JSON-able extras for the manifest (teacher, selector
    spec, ...); ``w.meta`` can also be filled inside the block.
    """

    def __init__(self, store: Store, run_id: str, lang: str, round: int, *,
                 rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                 labels: Optional[Sequence[str]] = None, meta: Optional[dict] = None):
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
        self.store = store
        self.run_id, self.lang = check_name("run_id", run_id), check_name("lang", lang)
        self.round = check_round(round)
        self.rows_per_file = rows_per_file
        self.labels = list(labels) if labels is not None else None
        self.meta = dict(meta or {})
        self.skipped = False
        self.cleaned = False
        self.manifest: Optional[dict] = None
        self.reject_counts: collections.Counter = collections.Counter()
        self._parts: dict[str, _PartWriter] = {}
        self._tmp: Optional[str] = None
        self._lease = None
        self._started = None

    @property
    def key(self) -> str:
        return Store.round_key(self.run_id, self.lang, self.round)

    @property
    def counts(self) -> dict[str, int]:
        return {t: (self._parts[t].rows if t in self._parts else 0) for t in S.ROUND_TABLES}

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> "RoundWriter":
        st = self.store
        if st.is_complete(self.run_id, self.lang, self.round):
            return self._skip()
        began = st.begin_attempt(self.run_id, self.lang, self.round)  # takes the lease
        if began is None:  # committed by another writer while we waited for nothing
            return self._skip()
        self._tmp, self._lease, self.cleaned = began
        if self.cleaned:
            logger.warning("removed leftovers of an interrupted write of %s in %s", self.key, st)
        self._started = utcnow()
        return self

    def _skip(self) -> "RoundWriter":
        self.skipped = True
        self.manifest = self.store.manifest(self.run_id, self.lang, self.round)
        logger.info("round %s is complete in %s: skipping", self.key, self.store)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.skipped:
            return False
        if exc_type is not None:
            for part in self._parts.values():
                try:
                    part.close()
                except Exception:  # noqa: BLE001 - the original exception matters more
                    pass
            self.store.abort_round(self.run_id, self.lang, self.round)
            return False
        try:
            for part in self._parts.values():
                part.close()
            self._commit()
        except BaseException:
            self.store.abort_round(self.run_id, self.lang, self.round)
            raise
        return False

    def _commit(self) -> None:
        """The commit protocol of :mod:`xner_ray.store.store`: fence, move, fence, manifest."""
        st = self.store
        failpoint("files_written")
        self._lease.check()
        tables = {}
        for name in S.ROUND_TABLES:
            part = self._parts.get(name)
            final = st.partition_dir(name, self.run_id, self.lang, self.round)
            if part is not None and part.files:
                st.move_dir(part.dir, final)
                failpoint("mid_move")
            rel = st.rel(final)
            files = [f"{rel}/{f}" for f in part.files] if part is not None else []
            tables[name] = {"rows": part.rows if part is not None else 0, "files": files}
        manifest = {
            "schema_version": S.SCHEMA_VERSION, "run_id": self.run_id, "lang": self.lang,
            "round": self.round, "started_at": self._started.isoformat(),
            "committed_at": None, "tables": tables, "labels": self.labels,
            "rejects_by_reason": dict(sorted(self.reject_counts.items())), "meta": self.meta,
            "attempt": self._lease.attempt,
        }
        self.manifest = st.finish_commit(self.key, self._lease, manifest)

    # -- writes ------------------------------------------------------------------------------------
    def write(self, table: str, batch: S.Batch) -> int:
        """Append a batch to ``table`` (a round table); returns the rows written (0 if skipped)."""
        if table not in S.ROUND_TABLES:
            raise ValueError(f"unknown round table {table!r}; valid: {S.ROUND_TABLES}")
        if self.skipped:
            return 0
        if self._tmp is None:
            raise RuntimeError("use the RoundWriter as a context manager: with ... as w:")
        spec = S.TABLES[table]
        full = S.batch_to_table(self._with_partition_cols(batch, spec.partition_cols),
                                spec.schema)
        self._check_partition_cols(full, spec.partition_cols)
        if table == "pseudo_labels":
            self._check_labels(full)
        if full.num_rows:
            if table not in self._parts:
                self._parts[table] = _PartWriter(self.store, f"{self._tmp}/{table}",
                                                 spec.file_schema, self.rows_per_file)
            self._parts[table].write(full.select(spec.file_schema.names)
                                     .replace_schema_metadata(spec.file_schema.metadata)
                                     .cast(spec.file_schema))
        return full.num_rows

    def files(self, table: str) -> list[str]:
        """Full paths of the files written so far to ``table`` in this (uncommitted) round,
        flushed so they can be read; a later write starts a new file."""
        part = self._parts.get(table)
        if self.skipped or part is None:
            return []
        part.close()
        return [f"{part.dir}/{name}" for name in part.files]

    def rewrite(self, table: str, fn) -> None:
        """Before commit, replace each written file of ``table`` by ``fn(file_table)``.

        For decisions that need the whole round first (e.g. a top-rho selector fitted on every
        score): one file in memory at a time; ``fn`` must keep the rows and the schema."""
        if self.skipped:
            return
        part = self._parts.get(table)
        if part is None:
            return
        part.close()
        spec = S.TABLES[table]
        for name in part.files:
            path = f"{part.dir}/{name}"
            before = pq.read_table(path, filesystem=self.store.fs)
            after = fn(before)
            if after.num_rows != before.num_rows:
                raise ValueError(f"rewrite of {table} changed the row count of {name}")
            after = after.select(spec.file_schema.names).cast(spec.file_schema)
            pq.write_table(after.replace_schema_metadata(spec.file_schema.metadata), path,
                           filesystem=self.store.fs, compression="zstd")

    def write_sentences(self, batch: S.Batch) -> int:
        return self.write("sentences", batch)

    def write_pseudo_labels(self, batch: S.Batch) -> int:
        if not self.skipped and self.labels is not None:
            batch = self._with_labels(batch)
        return self.write("pseudo_labels", batch)

    def write_projections(self, batch: S.Batch) -> int:
        return self.write("projections", batch)

    def write_rejects(self, rejects: Iterable[Reject]) -> int:
        """Write ``Reject`` items (a list, a generator or a ``RejectSink``) in bounded chunks.

        A ``RejectSink`` keeps at most ``keep`` rejects but counts all of them: its exact counts
        go to the manifest as ``rejects_seen``."""
        if isinstance(rejects, RejectSink) and not self.skipped:
            seen = self.meta.setdefault("rejects_seen", {})
            for reason, n in rejects.counts.items():
                seen[reason] = seen.get(reason, 0) + n
        total, chunk = 0, []
        for r in rejects:
            chunk.append({"path": _safe_text(r.path), "line": r.line, "reason": r.reason,
                          "raw": _safe_text(r.raw), "detail": _safe_text(r.detail)})
            if len(chunk) >= self.rows_per_file:
                total += self._write_reject_rows(chunk)
                chunk = []
        return total + (self._write_reject_rows(chunk) if chunk else 0)

    def _write_reject_rows(self, rows: list[dict]) -> int:
        n = self.write("rejects", rows)
        if not self.skipped:
            self.reject_counts.update(r["reason"] for r in rows)
        return n

    # -- checks ------------------------------------------------------------------------------------
    def _with_partition_cols(self, batch: S.Batch, cols: Sequence[str]) -> S.Batch:
        """Fill missing partition columns with the writer's key (batches need not carry them)."""
        values = {"run_id": self.run_id, "lang": self.lang, "round": self.round}
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        if isinstance(batch, pa.Table):
            for c in cols:
                if c not in batch.column_names:
                    batch = batch.append_column(c, pa.array([values[c]] * batch.num_rows))
            return batch
        if isinstance(batch, dict):
            n = len(next(iter(batch.values()))) if batch else 0
            return {**{c: [values[c]] * n for c in cols if c not in batch}, **batch}
        return [{**{c: values[c] for c in cols}, **row} for row in batch]

    def _check_partition_cols(self, table: pa.Table, cols: Sequence[str]) -> None:
        for c in cols:
            expected = getattr(self, c)
            if table.num_rows and not pc.all(pc.equal(table.column(c), expected)).as_py():
                bad = pc.unique(table.column(c)).to_pylist()
                raise ValueError(f"batch has {c} values {bad[:5]} but this writer writes "
                                 f"{c}={expected!r}")

    def _with_labels(self, batch: S.Batch) -> S.Batch:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        if isinstance(batch, pa.Table):
            if "labels" in batch.column_names:
                return batch
            return batch.append_column("labels", pa.array([self.labels] * batch.num_rows,
                                                          pa.list_(pa.string())))
        if isinstance(batch, dict):
            n = len(next(iter(batch.values()))) if batch else 0
            return batch if "labels" in batch else {**batch, "labels": [self.labels] * n}
        return [row if "labels" in row else {**row, "labels": self.labels} for row in batch]

    def _check_labels(self, table: pa.Table) -> None:
        """One label set per round, and every probs row over it with one row per word."""
        if not table.num_rows:
            return
        labels = table.column("labels").combine_chunks()
        if self.labels is None:
            self.labels = labels[0].as_py()
        n = len(self.labels)
        lengths = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(labels).to_numpy(zero_copy_only=False)
        if not (np.all(lengths == n) and np.array_equal(flat, np.tile(self.labels, len(labels)))):
            raise ValueError(f"pseudo-label batch uses a label set other than the round's "
                             f"{self.labels}")
        probs = table.column("probs").combine_chunks()
        has = pc.is_valid(probs)
        words = pc.list_value_length(pc.filter(probs, has))
        tags = pc.list_value_length(pc.filter(table.column("tags").combine_chunks(), has))
        if not pc.all(pc.equal(words, tags)).as_py() and len(words):
            raise ValueError("probs and tags differ in length (words) in some rows")
        widths = pc.list_value_length(pc.list_flatten(pc.filter(probs, has)))
        if len(widths) and not pc.all(pc.equal(widths, n)).as_py():
            raise ValueError(f"probs rows must have {n} values (one per label in {self.labels})")
