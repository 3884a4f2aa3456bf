"""The Parquet store: layout, round manifests, the runs table, and datasets over complete rounds.

Layout under ``root`` (a local folder or a URI pyarrow.fs understands, e.g. ``s3://bucket/x``)::

    <table>/run_id=<id>/lang=<l>/round=<k>/part-00000.parquet   sentences, pseudo_labels,
                                                                  rejects, projections, decisions
    runs/run_id=<id>/run.parquet                                  one row per run
    _manifests/run_id=<id>/lang=<l>/round=<k>/_manifest.json      the commit mark of a round
    _leases/run_id=<id>/lang=<l>/round=<k>.json                   the writer lease of a round
    _tmp/run_id=<id>/lang=<l>/round=<k>/<attempt>/...             rounds being written
    _quarantine/<stamp>/...                                       rounds moved aside (store check)

Hive partitioning: DuckDB, Polars and pyarrow read ``run_id``/``lang``/``round`` from the path
(the files do not repeat them). ``run_id`` stays in the path so several runs share one store
without overwriting each other and a run can be deleted with one ``rm -r`` per table; queries
that mix runs group or filter by it.

**Commit protocol.** A round is *complete* iff its manifest exists (and is valid). One attempt
at a time writes a round: :meth:`Store.attempt_prefix` (and ``RoundWriter.__enter__``) first
takes the round's writer lease (:mod:`xner_ray.store.lease`: heartbeat, expiry, a clear error
naming the holder for a second writer). Holding it, the attempt removes what earlier, dead
attempts left (their ``_tmp`` folders, and files of the uncommitted round in its partition
folders) -- never a live writer's, since a live writer holds the lease -- and writes under its
own ``_tmp/<key>/<attempt>/`` prefix, outside every table folder. The commit then

1. checks it still holds the lease (the fence),
2. moves the files into the round's partition folders,
3. checks the lease again and writes the manifest -- last, atomically (local disks: temporary
   file, fsync, rename, fsync of the folder; object stores: one put),
4. removes ``_tmp/<key>`` and releases the lease.

Uncommitted files sit in partition folders only during step 2 (on a local disk, microseconds
per file; on object stores, where a move is copy + delete, longer) and, if the writer dies
there, until the next attempt removes them. No reader shows them: :meth:`Store.dataset` and the
read-only ``sqlshell.connect`` read exactly the files the manifests list, and the glob views
(``--read-write``, ``sql/setup/views.sql``) keep only partitions that have a manifest.

**Reads validate.** A manifest that is empty, not JSON, incomplete or misplaced raises
:class:`ManifestError` naming the file; a manifest whose files are missing raises
:class:`MissingFilesError` naming the round. ``xner store check`` lists such problems and
``--quarantine`` moves a bad round aside (:mod:`xner_ray.store.check`). A rerun of the round
repairs it too: an attempt treats a corrupt manifest, or one whose files are gone, as no
commit (it moves the manifest to ``_quarantine`` and writes the round again).

**Runs.** ``runs`` rows carry ``heartbeat_at``, renewed by a daemon thread of the driver that
recorded the run (every ``run_heartbeat_s``) and by every :meth:`Store.update_run`; a row still
``running`` whose heartbeat is old belongs to a killed driver (``sql/runs_overview.sql`` shows
it as ``stale``). A rerun marks it running again and records its outcome.

Failpoints for tests: ``XNER_STORE_FAILPOINT=<step>`` makes the process SIGKILL itself at that
step of a commit (``files_written``, ``mid_move``, ``before_manifest``, ``after_manifest``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import signal
import threading
import uuid
from typing import Any, Optional

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from xner_ray.store import schema as S
from xner_ray.store.lease import (DEFAULT_TTL_S, LEASES, Lease, active_lease, fsync_dir,
                                  write_local_atomic)

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MANIFESTS, TMP, MANIFEST_FILE = "_manifests", "_tmp", "_manifest.json"
QUARANTINE = "_quarantine"
FAILPOINT_ENV = "XNER_STORE_FAILPOINT"
FAILPOINTS = ("files_written", "mid_move", "before_manifest", "after_manifest")
MANIFEST_KEYS = ("schema_version", "run_id", "lang", "round", "tables", "committed_at")
KEY_RE = re.compile(r"^run_id=([^/]+)/lang=([^/]+)/round=([0-9]+)$")


def config_diff(old: dict, new: dict) -> list[str]:
    """The top-level keys on which a resumed run's config differs from the recorded one. A key
    the recorded config lacks counts only when its new value is set: a setting added to the
    code since the run started, left at its unset default (None), changes nothing the run
    did."""
    keys = sorted(set(old) | set(new))
    return [k for k in keys
            if old.get(k) != new.get(k) and not (k not in old and new.get(k) is None)]


class StoreError(ValueError):
    """A store that cannot be read as it is (the message names the file or round)."""


class ManifestError(StoreError):
    """A manifest that is empty, not JSON, incomplete or in the wrong place."""


class MissingFilesError(StoreError):
    """A committed round whose manifest lists files that are not there."""


class RoundCommitted(StoreError):
    """The round was committed (by another writer) before this attempt began."""


def failpoint(step: str) -> None:
    """Tests: die here (SIGKILL, no cleanup at all) when ``$XNER_STORE_FAILPOINT == step``."""
    if os.environ.get(FAILPOINT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


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


def parse_round_key(key: str) -> tuple[str, str, int]:
    """``"run_id=r1/lang=es/round=0"`` -> ``("r1", "es", 0)``."""
    m = KEY_RE.match(key.strip("/"))
    if not m:
        raise ValueError(f"invalid round key {key!r}: expected run_id=<id>/lang=<l>/round=<k>")
    return check_name("run_id", m.group(1)), check_name("lang", m.group(2)), int(m.group(3))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def parse_manifest(data: bytes, where: str, key: Optional[str] = None) -> dict:
    """A manifest's JSON, validated; :class:`ManifestError` naming ``where`` otherwise."""
    hint = ("; `xner store check` lists the store's problems and `--quarantine` moves the "
            "round aside (or rerun the round to rewrite it)")
    if not data.strip():
        raise ManifestError(f"corrupt manifest {where}: empty file{hint}")
    try:
        m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"corrupt manifest {where}: not valid JSON ({exc}){hint}") from None
    if not isinstance(m, dict):
        raise ManifestError(f"corrupt manifest {where}: not a JSON object{hint}")
    missing = [k for k in MANIFEST_KEYS if k not in m]
    if missing:
        raise ManifestError(f"incomplete manifest {where}: no {', '.join(missing)}{hint}")
    tables = m["tables"]
    if not isinstance(tables, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("files"), list)
            and all(isinstance(f, str) for f in v["files"]) and isinstance(v.get("rows"), int)
            for v in tables.values()):
        raise ManifestError(f"corrupt manifest {where}: 'tables' must map each table to "
                            f"{{rows: int, files: [str]}}{hint}")
    try:
        own = Store.round_key(m["run_id"], m["lang"], m["round"])
    except ValueError as exc:
        raise ManifestError(f"corrupt manifest {where}: {exc}{hint}") from None
    if key is not None and own != key:
        raise ManifestError(f"misplaced manifest {where}: it describes {own}{hint}")
    return m


HEARTBEAT = "heartbeat_at"
HEARTBEAT_FIELD = pa.field(HEARTBEAT, pa.timestamp("us", tz=S.TZ), nullable=True, metadata={
    "doc": "last sign of life of the run's driver (UTC); a run still 'running' with an old "
           "heartbeat was killed"})


def table_schema(table: str) -> pa.Schema:
    """The schema readers see for ``table``: ``schema.TABLES[table].schema``, with the runs
    heartbeat column added where schema.py does not have it yet."""
    schema = S.TABLES[table].schema
    if table == "runs" and HEARTBEAT not in schema.names:
        schema = schema.append(HEARTBEAT_FIELD)
    return schema


def run_file_schema() -> pa.Schema:
    return S.file_schema(table_schema("runs"), S.TABLES["runs"].partition_cols)


_RUN_LOCKS: dict[tuple[str, str], threading.RLock] = {}
_RUN_BEATS: dict[tuple[str, str], threading.Event] = {}
_RUNS_GUARD = threading.Lock()


class Store:
    """A Parquet store rooted at a local folder or a pyarrow.fs URI.

    ``lease_ttl_s``: how long a round's writer lease lives without a heartbeat (default
    ``$XNER_LEASE_TTL_S`` or 120 s). ``run_heartbeat_s``: how often a recorded run's
    ``heartbeat_at`` is renewed while it runs (default ``$XNER_RUN_HEARTBEAT_S`` or 60 s).
    """

    def __init__(self, root: str | os.PathLike, filesystem: Optional[pafs.FileSystem] = None, *,
                 lease_ttl_s: Optional[float] = None, run_heartbeat_s: Optional[float] = None):
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
        self.lease_ttl_s = float(lease_ttl_s if lease_ttl_s is not None else
                                 os.environ.get("XNER_LEASE_TTL_S", DEFAULT_TTL_S))
        self.run_heartbeat_s = float(run_heartbeat_s if run_heartbeat_s is not None else
                                     os.environ.get("XNER_RUN_HEARTBEAT_S", 60))

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

    def rel(self, path: str) -> str:
        """``path`` relative to the store root."""
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

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

    def lease_path(self, run_id: str, lang: str, round: int) -> str:
        return self.path(LEASES, self.round_key(run_id, lang, round) + ".json")

    def run_path(self, run_id: str) -> str:
        return self.path("runs", f"run_id={check_name('run_id', run_id)}", "run.parquet")

    # -- small fs helpers ------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def listdir(self, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
        """Entries under ``path`` ([] when it is not a folder)."""
        if not self.is_dir(path):
            return []
        return self.fs.get_file_info(pafs.FileSelector(path, recursive=recursive))

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

    def move_file(self, src: str, dest: str) -> None:
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        self.fs.move(src, dest)

    def new_tmp_dir(self, *parts: str) -> str:
        path = self.path(TMP, *parts, uuid.uuid4().hex[:12])
        self.fs.create_dir(path, recursive=True)
        return path

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` with ``data`` all at once: readers see the old or the new bytes,
        never a part. Local disks: a temporary file in the same folder, fsynced, renamed over
        ``path``, then the folder fsynced. Object stores: one put (an object appears whole)."""
        if self.is_local:
            write_local_atomic(path, data)
            return
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(data)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_json(self, path: str) -> dict:
        return json.loads(self.read_bytes(path).decode("utf-8"))

    def quarantine_dir(self, tag: str = "") -> str:
        stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
        return self.path(QUARANTINE, f"{stamp}-{tag or uuid.uuid4().hex[:8]}")

    # -- leases ----------------------------------------------------------------------------------
    def acquire_lease(self, run_id: str, lang: str, round: int) -> Lease:
        """Take the writer lease of a round (raises ``LeaseHeld`` naming the live holder)."""
        return Lease(self, self.round_key(run_id, lang, round)).acquire()

    def begin_attempt(self, run_id: str, lang: str,
                      round: int) -> Optional[tuple[str, Lease, bool]]:
        """Take the round's lease and clean up after dead attempts: ``(prefix, lease,
        cleaned)``, or None (lease released) when the round is complete already."""
        key = self.round_key(run_id, lang, round)
        lease = self.acquire_lease(run_id, lang, round)
        try:
            state, why = self.round_state(run_id, lang, round)
            if state == "complete":
                lease.release()
                return None
            cleaned = False
            if state == "corrupt":  # no valid commit: keep the evidence, redo the round
                dest = f"{self.quarantine_dir(lease.attempt)}/{MANIFESTS}/{key}/{MANIFEST_FILE}"
                self.move_file(self.manifest_path(run_id, lang, round), dest)
                logger.warning("%s: %s; moved it to %s and writing the round again", key, why,
                               self.to_uri(dest))
                cleaned = True
            for info in self.listdir(self.path(TMP, key)):
                if info.base_name != lease.attempt:  # attempts without a live lease: dead
                    if info.type == pafs.FileType.Directory:
                        self.fs.delete_dir(info.path)
                    else:
                        self.fs.delete_file(info.path)
                    logger.warning("removed leftovers of an interrupted attempt: %s", info.path)
                    cleaned = True
            for t in S.ROUND_TABLES:
                p = self.partition_dir(t, run_id, lang, round)
                if self.delete_dir(p):
                    logger.warning("removed uncommitted files of an interrupted commit: %s", p)
                    cleaned = True
            prefix = self.path(TMP, key, lease.attempt)
            self.fs.create_dir(prefix, recursive=True)
        except BaseException:
            lease.release()
            raise
        return prefix, lease, cleaned

    # -- rounds ----------------------------------------------------------------------------------
    def round_writer(self, run_id: str, lang: str, round: int, **kwargs: Any):
        """``with store.round_writer(run_id, lang, k) as w: w.write_pseudo_labels(batch)``.

        See :class:`xner_ray.store.writer.RoundWriter` for the keyword arguments.
        """
        from xner_ray.store.writer import RoundWriter

        return RoundWriter(self, run_id, lang, round, **kwargs)

    def attempt_prefix(self, run_id: str, lang: str, round: int) -> str:
        """A fresh prefix for one attempt at a round (workers write there; nothing globs it).

        Takes the round's writer lease (held, with a heartbeat, until :meth:`commit_round` or
        :meth:`abort_round`; a second writer gets ``LeaseHeld`` naming this one) and removes
        the leftovers of earlier, dead attempts -- their ``_tmp`` folders and the files of the
        uncommitted round in its partition folders. Raises :class:`RoundCommitted` when
        another writer committed the round meanwhile."""
        began = self.begin_attempt(run_id, lang, round)
        if began is None:
            raise RoundCommitted(f"round {self.round_key(run_id, lang, round)} of {self} was "
                                 "committed meanwhile by another writer; nothing to write")
        return began[0]

    def abort_round(self, run_id: str, lang: str, round: int) -> None:
        """Give up this process's attempt at a round: its ``_tmp`` folder goes, the lease is
        released (nothing of the attempt becomes visible)."""
        key = self.round_key(run_id, lang, round)
        lease = active_lease(self, key)
        if lease is None:
            return
        try:
            self.delete_dir(self.path(TMP, key, lease.attempt))
        finally:
            lease.release()
        logger.warning("round %s not committed: attempt %s aborted", key, lease.attempt)

    def _lease_for_commit(self, key: str) -> Lease:
        lease = active_lease(self, key)
        if lease is None:  # committed by a process that did not take the attempt's lease
            run_id, lang, round = parse_round_key(key)
            lease = self.acquire_lease(run_id, lang, round)
        return lease

    def commit_round(self, run_id: str, lang: str, round: int, files: dict[str, list[str]], *,
                     labels: Optional[list[str]], meta: dict, started_at: dt.datetime,
                     rows: dict[str, int], rejects_by_reason: Optional[dict] = None) -> dict:
        """Move the reported files of an attempt into the round's partitions, then write the
        manifest (the commit). ``files``: {table: [paths under the attempt prefix]}."""
        key = self.round_key(run_id, lang, round)
        lease = self._lease_for_commit(key)
        tmp = self.path(TMP, key) + "/"
        outside = [p for v in files.values() for p in v if not p.startswith(tmp)]
        if outside:
            raise StoreError(f"commit of {key}: files outside its attempt prefix {tmp}: "
                             f"{outside[:3]}")
        failpoint("files_written")
        lease.check()
        tables = {}
        for name in S.ROUND_TABLES:
            final = self.partition_dir(name, run_id, lang, round)
            moved = []
            for src in sorted(files.get(name, [])):
                dest = f"{final}/{src.rsplit('/', 1)[-1]}"
                self.move_file(src, dest)
                moved.append(self.rel(dest))
                failpoint("mid_move")
            tables[name] = {"rows": int(rows.get(name, 0)), "files": moved}
        manifest = {
            "schema_version": S.SCHEMA_VERSION, "run_id": run_id, "lang": lang, "round": round,
            "started_at": started_at.isoformat(), "committed_at": None,
            "tables": tables, "labels": labels,
            "rejects_by_reason": dict(sorted((rejects_by_reason or {}).items())), "meta": meta,
            "attempt": lease.attempt}
        return self.finish_commit(key, lease, manifest)

    def finish_commit(self, key: str, lease: Lease, manifest: dict) -> dict:
        """Steps 3-4 of the commit protocol, once the files are in place (see module doc)."""
        failpoint("before_manifest")
        lease.check()
        manifest["committed_at"] = utcnow().isoformat()
        data = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
        run_id, lang, round = parse_round_key(key)
        self.write_bytes_atomic(self.manifest_path(run_id, lang, round), data)
        failpoint("after_manifest")
        self.delete_dir(self.path(TMP, key))
        lease.release()
        logger.info("committed %s: %s", key,
                    {t: v["rows"] for t, v in manifest["tables"].items()})
        return manifest

    def read_manifest(self, path: str) -> dict:
        """The manifest at ``path``, validated (:class:`ManifestError` names the file)."""
        rel = self.rel(path)
        key = rel[len(MANIFESTS) + 1:-len(MANIFEST_FILE) - 1] if rel.startswith(
            MANIFESTS + "/") and rel.endswith("/" + MANIFEST_FILE) else None
        try:
            data = self.read_bytes(path)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) or not self.exists(path):
                raise FileNotFoundError(path) from None
            raise ManifestError(f"unreadable manifest {self.to_uri(path)}: {exc}") from None
        return parse_manifest(data, self.to_uri(path), key)

    def missing_files(self, manifest: dict, tables: Optional[list[str]] = None
                      ) -> dict[str, list[str]]:
        """{table: [files the manifest lists that are not there]} (one listing per folder)."""
        out: dict[str, list[str]] = {}
        for name, entry in manifest["tables"].items():
            if tables is not None and name not in tables:
                continue
            by_dir: dict[str, list[str]] = {}
            for f in entry["files"]:
                by_dir.setdefault(f.rsplit("/", 1)[0] if "/" in f else "", []).append(f)
            for d, fs in by_dir.items():
                present = {i.base_name for i in self.listdir(self.path(d))
                           if i.type == pafs.FileType.File}
                gone = [f for f in fs if f.rsplit("/", 1)[-1] not in present]
                if gone:
                    out.setdefault(name, []).extend(gone)
        return out

    def present_files(self, base: str) -> set[str]:
        """Store-relative paths of the files under ``base`` (one recursive listing)."""
        return {self.rel(i.path) for i in self.listdir(base, recursive=True)
                if i.type == pafs.FileType.File}

    def check_files(self, manifest: dict, tables: Optional[list[str]] = None) -> None:
        """Raise :class:`MissingFilesError` naming the round when listed files are gone."""
        gone = self.missing_files(manifest, tables)
        if gone:
            key = self.round_key(manifest["run_id"], manifest["lang"], manifest["round"])
            n = sum(len(v) for v in gone.values())
            first = next(iter(gone.values()))[0]
            raise MissingFilesError(
                f"round {key} of {self}: its manifest lists {n} file(s) that are missing "
                f"({', '.join(sorted(gone))}; e.g. {first}); `xner store check --quarantine` "
                "moves the round aside (or rerun the round to rewrite it)")

    def round_state(self, run_id: str, lang: str, round: int) -> tuple[str, Optional[str]]:
        """("complete", None), ("absent", None) or ("corrupt", why) -- a manifest that does not
        validate, or whose files are missing, is no commit."""
        path = self.manifest_path(run_id, lang, round)
        try:
            m = self.read_manifest(path)
        except FileNotFoundError:
            return "absent", None
        except ManifestError as exc:
            return "corrupt", str(exc).split(";")[0]
        gone = self.missing_files(m)
        if gone:
            n = sum(len(v) for v in gone.values())
            return "corrupt", f"its manifest lists {n} missing file(s) ({', '.join(sorted(gone))})"
        return "complete", None

    def is_complete(self, run_id: str, lang: str, round: int) -> bool:
        state, why = self.round_state(run_id, lang, round)
        if state == "corrupt":
            logger.warning("%s of %s is not complete: %s", self.round_key(run_id, lang, round),
                           self, why)
        return state == "complete"

    def manifest(self, run_id: str, lang: str, round: int) -> Optional[dict]:
        """The round's manifest (validated), or None when the round is not committed."""
        try:
            return self.read_manifest(self.manifest_path(run_id, lang, round))
        except FileNotFoundError:
            return None

    def manifest_paths(self, run_id: Optional[str] = None,
                       lang: Optional[str] = None) -> list[str]:
        base = self.path(MANIFESTS)
        if run_id is not None:
            base += f"/run_id={check_name('run_id', run_id)}"
            if lang is not None:
                base += f"/lang={check_name('lang', lang)}"
        return sorted(i.path for i in self.listdir(base, recursive=True)
                      if i.type == pafs.FileType.File and i.base_name == MANIFEST_FILE)

    def manifests(self, run_id: Optional[str] = None, lang: Optional[str] = None) -> list[dict]:
        """Manifests of all complete rounds (optionally of one run / language), sorted.
        A corrupt one raises :class:`ManifestError` naming it."""
        found = [self.read_manifest(p) for p in self.manifest_paths(run_id, lang)]
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
        when no round is complete yet. A corrupt manifest raises :class:`ManifestError`
        naming it, a round with missing files :class:`MissingFilesError` naming the round.
        """
        spec = S.TABLES[table]
        schema = table_schema(table)
        if table == "runs":
            files = self._run_files() if run_id is None else [
                p for p in [self.run_path(run_id)] if self.exists(p)]
        else:
            ms = [m for m in self.manifests(run_id, lang) if round is None or m["round"] == round]
            listed = [f for m in ms for f in m["tables"].get(table, {}).get("files", [])]
            if listed:  # one (recursive) listing, not one per round: cheap on object stores
                base = self.path(table, *([f"run_id={run_id}"] if run_id is not None else []),
                                 *([f"lang={lang}"] if run_id is not None and lang is not None
                                   else []))
                present = self.present_files(base)
                for m in ms:
                    if any(f not in present for f in m["tables"].get(table, {}).get("files", [])):
                        self.check_files(m, [table])
            files = [self.path(f) for f in listed]
        if not files:
            return ds.dataset(schema.empty_table())
        part = ds.partitioning(pa.schema([schema.field(c) for c in spec.partition_cols]),
                               flavor="hive")
        return ds.dataset(files, schema=schema, format="parquet", filesystem=self.fs,
                          partitioning=part, partition_base_dir=self.path(table))

    def read(self, table: str, **filters: Any) -> pa.Table:
        """The whole (filtered) table in memory: for tests and small tables."""
        return self.dataset(table, **filters).to_table()

    # -- runs ------------------------------------------------------------------------------------
    def _run_files(self) -> list[str]:
        return sorted(i.path for i in self.listdir(self.path("runs"), recursive=True)
                      if i.base_name == "run.parquet")

    def run_ids(self) -> list[str]:
        return [p.rsplit("/", 2)[-2].split("=", 1)[1] for p in self._run_files()]

    def _run_lock(self, run_id: str) -> threading.RLock:
        with _RUNS_GUARD:
            return _RUN_LOCKS.setdefault((self.uri, run_id), threading.RLock())

    def get_run(self, run_id: str) -> Optional[dict]:
        path = self.run_path(run_id)
        if not self.exists(path):
            return None
        try:
            with self.fs.open_input_file(path) as f:
                row = pq.ParquetFile(f).read().to_pylist()[0]
        except (pa.ArrowInvalid, IndexError, OSError) as exc:
            raise StoreError(f"corrupt run file {self.to_uri(path)}: {exc}") from None
        return {"run_id": run_id, **row}

    def _write_run(self, record: dict) -> dict:
        if record["status"] not in S.RUN_STATUSES:
            raise ValueError(f"invalid run status {record['status']!r}; valid: {S.RUN_STATUSES}")
        table = S.batch_to_table([record], run_file_schema(), extra="drop")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes_atomic(self.run_path(record["run_id"]), sink.getvalue().to_pybytes())
        return record

    def record_run(self, run_id: str, job: str, config: Any, *,
                   code_version: Optional[str] = None, started_at: Optional[dt.datetime] = None,
                   status: str = "running") -> dict:
        """Create the run's row, or mark an existing run running again (a resumed rerun).

        Resuming with a different config raises: results of one run id must come from one
        config. ``config`` is a dict (stored as sorted JSON) or a JSON string. While the run
        is ``running`` a daemon thread renews its ``heartbeat_at`` every ``run_heartbeat_s``.
        """
        config_json = config if isinstance(config, str) else json.dumps(
            config, sort_keys=True, default=str)
        with self._run_lock(run_id):
            old = self.get_run(run_id)
            if old is not None:
                diff = config_diff(json.loads(old["config"]), json.loads(config_json))
                if diff:
                    raise ValueError(f"run {run_id!r} exists with a different config "
                                     f"({', '.join(diff)}); use a new run id, or move the "
                                     f"old run aside with `xner store drop-run --store "
                                     f"{self.uri} --run {run_id}`")
                if old["status"] == "running" and (age := self._heartbeat_age(old)) is not None \
                        and age < 2 * self.run_heartbeat_s:
                    logger.warning("run %s is marked running with a heartbeat %.0f s old: if "
                                   "another driver still runs it, the round leases stop one "
                                   "of the two", run_id, age)
                elif old["status"] == "running":
                    logger.warning("run %s was left running by a driver that stopped (last "
                                   "heartbeat %s): resuming it", run_id,
                                   old.get("heartbeat_at") or old["started_at"])
                record = self._write_run({**old, "status": status, "ended_at": None,
                                          "heartbeat_at": utcnow()})
            else:
                if code_version is None:
                    from xner_ray import __version__ as code_version
                record = self._write_run({
                    "run_id": check_name("run_id", run_id), "job": job, "config": config_json,
                    "code_version": code_version, "started_at": started_at or utcnow(),
                    "ended_at": None, "status": status, "metrics": "{}",
                    "heartbeat_at": utcnow()})
        if status == "running":
            self._start_run_heartbeat(run_id)
        return record

    @staticmethod
    def _heartbeat_age(record: dict) -> Optional[float]:
        beat = record.get("heartbeat_at") or record.get("started_at")
        if beat is None:
            return None
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=dt.timezone.utc)
        return (utcnow() - beat).total_seconds()

    def _start_run_heartbeat(self, run_id: str) -> None:
        key = (self.uri, run_id)
        stop = threading.Event()
        with _RUNS_GUARD:
            old = _RUN_BEATS.pop(key, None)
            _RUN_BEATS[key] = stop
        if old is not None:
            old.set()

        def beat() -> None:
            while not stop.wait(self.run_heartbeat_s):
                try:
                    if not self.touch_run(run_id):
                        return
                except Exception as exc:  # noqa: BLE001 - a flaky store must not kill the job
                    logger.warning("run %s: heartbeat failed: %s", run_id, exc)

        threading.Thread(target=beat, name=f"xner-run-{run_id}", daemon=True).start()

    def _stop_run_heartbeat(self, run_id: str) -> None:
        with _RUNS_GUARD:
            stop = _RUN_BEATS.pop((self.uri, run_id), None)
        if stop is not None:
            stop.set()

    def touch_run(self, run_id: str) -> bool:
        """Renew a running run's ``heartbeat_at``; False (nothing written) if it is not
        running any more."""
        with self._run_lock(run_id):
            record = self.get_run(run_id)
            if record is None or record["status"] != "running":
                return False
            record["heartbeat_at"] = utcnow()
            self._write_run(record)
            return True

    def update_run(self, run_id: str, *, status: Optional[str] = None,
                   metrics: Optional[dict] = None, round: Optional[int] = None,
                   ended_at: Optional[dt.datetime] = None) -> dict:
        """Merge ``metrics`` into the run's row -- under ``round`` when given, else ``metrics``
        is ``{round: {...}}`` -- and/or set ``status`` (ending statuses stamp ``ended_at``
        and stop the heartbeat). Every update renews ``heartbeat_at``.

        Read-modify-write of one small file: call it from one process (the driver), not from
        parallel workers."""
        with self._run_lock(run_id):
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
            record["heartbeat_at"] = utcnow()
            out = self._write_run(record)
        if status is not None and status != "running":
            self._stop_run_heartbeat(run_id)
        return out

    def backfill_metrics(self, run_id: str, meta_key: str) -> int:
        """Copy ``manifest["meta"][meta_key]`` of each committed round of the run into
        ``runs.metrics[round][lang]`` where that entry is missing -- the metrics of a round
        committed just before a kill, which its resumed rerun skips. Returns how many."""
        with self._run_lock(run_id):
            record = self.get_run(run_id)
            if record is None:
                raise ValueError(f"no run {run_id!r} in {self}; call record_run first")
            merged = json.loads(record["metrics"] or "{}")
            added = 0
            for m in self.manifests(run_id):
                value = (m.get("meta") or {}).get(meta_key)
                per = merged.setdefault(str(m["round"]), {})
                if value is not None and m["lang"] not in per:
                    per[m["lang"]] = value
                    added += 1
            if added:
                record["metrics"] = json.dumps({k: v for k, v in merged.items() if v},
                                               sort_keys=True, default=str)
                record["heartbeat_at"] = utcnow()
                self._write_run(record)
        return added


__all__ = ["Store", "StoreError", "ManifestError", "MissingFilesError", "RoundCommitted",
           "HEARTBEAT", "table_schema", "check_name", "check_round", "parse_round_key",
           "parse_manifest", "utcnow", "failpoint", "fsync_dir"]
