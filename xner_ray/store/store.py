"""The Parquet store: layout, round manifests, the runs table, and datasets over complete rounds.

Layout under ``root`` (a local folder or a URI pyarrow.fs understands, e.g. ``s3://bucket/x``)::

    <table>/run_id=<id>/lang=<l>/round=<k>/part-00000.parquet   sentences, pseudo_labels,
                                                                  rejects, projections
    runs/run_id=<id>/run.parquet                                  one row per run
    _manifests/run_id=<id>/lang=<l>/round=<k>/_manifest.json      the commit mark of a round
    _tmp/run_id=<id>/lang=<l>/round=<k>/<attempt>/...             rounds being written

Hive partitioning: DuckDB, Polars and pyarrow read ``run_id``/``lang``/``round`` from the path
(the files do not repeat them). ``run_id`` stays in the path so several runs share one store
without overwriting each other and a run can be deleted with one ``rm -r`` per table; queries
that mix runs group or filter by it.

A round is *complete* iff its manifest exists. :class:`~xner_ray.store.writer.RoundWriter`
writes into ``_tmp`` (outside every table folder, so no glob sees it), renames each table's
folder into place, then writes the manifest last. On a local disk the renames are atomic and
take microseconds; on object stores (where "rename" is copy + delete) the manifest is what
makes a round visible to :meth:`Store.dataset` and ``sqlshell.connect`` (read-only), which read
exactly the files the manifests list. A rerun removes the leftovers of an unfinished round.
One writer per (run_id, lang, round) at a time: the pipeline runs one task per round/language.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import uuid
from typing import Any, Optional

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from xner_ray.store import schema as S

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFESTS, TMP, MANIFEST_FILE = "_manifests", "_tmp", "_manifest.json"


def check_name(kind: str, value: str) -> str:
    """run ids and language codes become path parts: letters, digits, ``._-`` only (and not a
    leading ``_`` or ``.``, which readers treat as hidden)."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"invalid {kind} {value!r}: use letters, digits, '.', '_', '-' "
                         "(not first), at most 128 characters")
    return value


def check_round(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid round {value!r}: a non-negative int")
    return value


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Store:
    """A Parquet store rooted at a local folder or a pyarrow.fs URI."""

    def __init__(self, root: str | os.PathLike, filesystem: Optional[pafs.FileSystem] = None):
        root = os.fspath(root)
        if filesystem is not None:
            self.fs, self.root = filesystem, root.rstrip("/")
            self.uri = self.root
        elif "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
            self.root = self.root.rstrip("/")
            self.uri = root.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
            self.uri = self.root
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def to_uri(self, path: str) -> str:
        """A path of this store's filesystem as a URI any node can open (workers get these)."""
        if self.is_local or "://" in path:
            return path
        return f"{self.uri.split('://', 1)[0]}://{path}"

    @staticmethod
    def round_key(run_id: str, lang: str, round: int) -> str:
        return (f"run_id={check_name('run_id', run_id)}/lang={check_name('lang', lang)}"
                f"/round={check_round(round)}")

    def partition_dir(self, table: str, run_id: str, lang: str, round: int) -> str:
        if table not in S.ROUND_TABLES:
            raise ValueError(f"unknown round table {table!r}; valid: {S.ROUND_TABLES}")
        return self.path(table, self.round_key(run_id, lang, round))

    def manifest_path(self, run_id: str, lang: str, round: int) -> str:
        return self.path(MANIFESTS, self.round_key(run_id, lang, round), MANIFEST_FILE)

    def run_path(self, run_id: str) -> str:
        return self.path("runs", f"run_id={check_name('run_id', run_id)}", "run.parquet")

    # -- small fs helpers ------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def delete_dir(self, path: str) -> bool:
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
            return True
        return False

    def move_dir(self, src: str, dest: str) -> None:
        """Rename a folder (one atomic rename on a local disk; file by file on object stores,
        where the manifest written afterwards is what commits)."""
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        if self.is_local:
            self.fs.move(src, dest)
            return
        for info in self.fs.get_file_info(pafs.FileSelector(src, recursive=True)):
            if info.type == pafs.FileType.File:
                target = dest + info.path[len(src):]
                self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                self.fs.move(info.path, target)
        self.fs.delete_dir(src)

    def new_tmp_dir(self, *parts: str) -> str:
        path = self.path(TMP, *parts, uuid.uuid4().hex[:12])
        self.fs.create_dir(path, recursive=True)
        return path

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write into ``_tmp`` and rename over ``path`` (atomic replace on a local disk)."""
        tmp = self.new_tmp_dir("files")
        with self.fs.open_output_stream(f"{tmp}/{path.rsplit('/', 1)[-1]}") as out:
            out.write(data)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        self.fs.move(f"{tmp}/{path.rsplit('/', 1)[-1]}", path)
        self.fs.delete_dir(tmp)

    def read_json(self, path: str) -> dict:
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode("utf-8"))

    # -- rounds ----------------------------------------------------------------------------------
    def round_writer(self, run_id: str, lang: str, round: int, **kwargs: Any):
        """``with store.round_writer(run_id, lang, k) as w: w.write_pseudo_labels(batch)``.

        See :class:`xner_ray.store.writer.RoundWriter` for the keyword arguments.
        """
        from xner_ray.store.writer import RoundWriter

        return RoundWriter(self, run_id, lang, round, **kwargs)

    def attempt_prefix(self, run_id: str, lang: str, round: int) -> str:
        """A fresh prefix for one attempt at a round (workers write there; nothing globs it).

        Leftovers of earlier attempts at the same round (and files of an uncommitted round in
        its partition folders) are removed first: a resumed round never reads them."""
        key = self.round_key(run_id, lang, round)
        for p in [self.path(TMP, key)] + [self.partition_dir(t, run_id, lang, round)
                                           for t in S.ROUND_TABLES]:
            if self.delete_dir(p):
                logger.warning("removed leftovers of an interrupted write: %s", p)
        return self.new_tmp_dir(key)

    def commit_round(self, run_id: str, lang: str, round: int, files: dict[str, list[str]], *,
                     labels: Optional[list[str]], meta: dict, started_at: dt.datetime,
                     rows: dict[str, int], rejects_by_reason: Optional[dict] = None) -> dict:
        """Move the reported files of an attempt into the round's partitions, then write the
        manifest (the commit). ``files``: {table: [paths under the attempt prefix]}."""
        key = self.round_key(run_id, lang, round)
        tables = {}
        for name in S.ROUND_TABLES:
            final = self.partition_dir(name, run_id, lang, round)
            moved = []
            for src in sorted(files.get(name, [])):
                dest = f"{final}/{src.rsplit('/', 1)[-1]}"
                self.fs.create_dir(final, recursive=True)
                self.fs.move(src, dest)
                moved.append(dest[len(self.root) + 1:])
            tables[name] = {"rows": int(rows.get(name, 0)), "files": moved}
        manifest = {
            "schema_version": S.SCHEMA_VERSION, "run_id": run_id, "lang": lang, "round": round,
            "started_at": started_at.isoformat(), "committed_at": utcnow().isoformat(),
            "tables": tables, "labels": labels,
            "rejects_by_reason": dict(sorted((rejects_by_reason or {}).items())), "meta": meta}
        data = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
        self.write_bytes_atomic(self.manifest_path(run_id, lang, round), data)
        self.delete_dir(self.path(TMP, key))
        logger.info("committed %s: %s", key, {t: v["rows"] for t, v in tables.items()})
        return manifest

    def is_complete(self, run_id: str, lang: str, round: int) -> bool:
        return self.exists(self.manifest_path(run_id, lang, round))

    def manifest(self, run_id: str, lang: str, round: int) -> Optional[dict]:
        path = self.manifest_path(run_id, lang, round)
        return self.read_json(path) if self.exists(path) else None

    def manifests(self, run_id: Optional[str] = None, lang: Optional[str] = None) -> list[dict]:
        """Manifests of all complete rounds (optionally of one run / language), sorted."""
        base = self.path(MANIFESTS)
        if run_id is not None:
            base += f"/run_id={check_name('run_id', run_id)}"
            if lang is not None:
                base += f"/lang={check_name('lang', lang)}"
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        found = [self.read_json(i.path) for i in infos
                 if i.type == pafs.FileType.File and i.base_name == MANIFEST_FILE]
        return sorted(found, key=lambda m: (m["run_id"], m["lang"], m["round"]))

    def complete_rounds(self, run_id: str, lang: str) -> list[int]:
        return [m["round"] for m in self.manifests(run_id, lang)]

    def last_complete_round(self, run_id: str, lang: str) -> Optional[int]:
        """The highest complete round of (run_id, lang), or None: where a rerun resumes."""
        rounds = self.complete_rounds(run_id, lang)
        return rounds[-1] if rounds else None

    def dataset(self, table: str, *, run_id: Optional[str] = None, lang: Optional[str] = None,
                round: Optional[int] = None) -> ds.Dataset:
        """A pyarrow dataset over the complete rounds only (the files their manifests list).

        Streams: ``store.dataset("pseudo_labels", run_id=r, lang="es", round=1)
        .to_batches(filter=pc.field("selected"))``. Always has the full table schema, even
        when no round is complete yet.
        """
        spec = S.TABLES[table]
        if table == "runs":
            files = self._run_files() if run_id is None else [
                p for p in [self.run_path(run_id)] if self.exists(p)]
        else:
            files = [self.path(f) for m in self.manifests(run_id, lang)
                     if round is None or m["round"] == round
                     for f in m["tables"].get(table, {}).get("files", [])]
        if not files:
            return ds.dataset(spec.schema.empty_table())
        part = ds.partitioning(pa.schema([spec.schema.field(c) for c in spec.partition_cols]),
                               flavor="hive")
        return ds.dataset(files, schema=spec.schema, format="parquet", filesystem=self.fs,
                          partitioning=part, partition_base_dir=self.path(table))

    def read(self, table: str, **filters: Any) -> pa.Table:
        """The whole (filtered) table in memory: for tests and small tables."""
        return self.dataset(table, **filters).to_table()

    # -- runs ------------------------------------------------------------------------------------
    def _run_files(self) -> list[str]:
        base = self.path("runs")
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted(i.path for i in infos if i.base_name == "run.parquet")

    def run_ids(self) -> list[str]:
        return [p.rsplit("/", 2)[-2].split("=", 1)[1] for p in self._run_files()]

    def get_run(self, run_id: str) -> Optional[dict]:
        path = self.run_path(run_id)
        if not self.exists(path):
            return None
        with self.fs.open_input_file(path) as f:
            row = pq.ParquetFile(f).read().to_pylist()[0]
        return {"run_id": run_id, **row}

    def _write_run(self, record: dict) -> dict:
        if record["status"] not in S.RUN_STATUSES:
            raise ValueError(f"invalid run status {record['status']!r}; valid: {S.RUN_STATUSES}")
        table = S.batch_to_table([record], S.TABLES["runs"].file_schema, extra="drop")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes_atomic(self.run_path(record["run_id"]), sink.getvalue().to_pybytes())
        return record

    def record_run(self, run_id: str, job: str, config: Any, *,
                   code_version: Optional[str] = None, started_at: Optional[dt.datetime] = None,
                   status: str = "running") -> dict:
        """Create the run's row, or mark an existing run running again (a resumed rerun).

        Resuming with a different config raises: results of one run id must come from one
        config. ``config`` is a dict (stored as sorted JSON) or a JSON string.
        """
        config_json = config if isinstance(config, str) else json.dumps(
            config, sort_keys=True, default=str)
        old = self.get_run(run_id)
        if old is not None:
            if json.loads(old["config"]) != json.loads(config_json):
                raise ValueError(f"run {run_id!r} exists with a different config; "
                                 "use a new run id")
            return self._write_run({**old, "status": status, "ended_at": None})
        if code_version is None:
            from xner_ray import __version__ as code_version
        return self._write_run({
            "run_id": check_name("run_id", run_id), "job": job, "config": config_json,
            "code_version": code_version, "started_at": started_at or utcnow(),
            "ended_at": None, "status": status, "metrics": "{}"})

    def update_run(self, run_id: str, *, status: Optional[str] = None,
                   metrics: Optional[dict] = None, round: Optional[int] = None,
                   ended_at: Optional[dt.datetime] = None) -> dict:
        """Merge ``metrics`` into the run's row -- under ``round`` when given, else ``metrics``
        is ``{round: {...}}`` -- and/or set ``status`` (ending statuses stamp ``ended_at``).

        Read-modify-write of one small file: call it from one process (the driver), not from
        parallel workers."""
        record = self.get_run(run_id)
        if record is None:
            raise ValueError(f"no run {run_id!r} in {self}; call record_run first")
        merged = json.loads(record["metrics"] or "{}")
        per_round = {} if metrics is None else (
            {check_round(round): metrics} if round is not None else metrics)
        for k, values in per_round.items():
            merged.setdefault(str(k), {}).update(values)
        record["metrics"] = json.dumps(merged, sort_keys=True, default=str)
        if status is not None:
            record["status"] = status
            if status != "running":
                record["ended_at"] = ended_at or utcnow()
        return self._write_run(record)

