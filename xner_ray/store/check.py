"""``xner store check``: what is wrong with a store, and moving bad rounds aside.

:func:`check_store` lists :class:`Problem` s, each an ``error`` (queries over the store fail
until it is fixed) or a ``warning`` (harmless leftovers; the next writer of the round or
``--clean`` removes them):

=====================  =======  ===========================================================
kind                   level    what
=====================  =======  ===========================================================
corrupt_manifest       error    a manifest that is empty, not JSON, incomplete or misplaced
missing_files          error    a manifest listing files that are not there
corrupt_run            error    a ``runs`` file that does not read
unlisted_file          warning  a file in a committed partition its manifest does not list
                                (plain-DuckDB glob views would show its rows)
orphan_partition       warning  partition files of a round without a manifest and without a
                                live writer (a commit killed mid-move); invisible to readers
stale_lease            warning  a writer lease whose holder stopped renewing it (or is gone)
stale_attempt          warning  a ``_tmp`` attempt folder no live writer owns
stale_tmp_file         warning  a temporary file of an interrupted atomic write
stale_run              warning  a run marked ``running`` whose heartbeat is old (killed)
=====================  =======  ===========================================================

:func:`quarantine` moves a round's manifest (first: that un-commits it at once) and its
partition folders under ``_quarantine/<stamp>/``, keeping their paths, so queries over the rest
of the store work again and the round can be rerun. Nothing is ever deleted by ``--quarantine``;
``--clean`` deletes only the warnings' leftovers (stale leases, attempts, temporary files and
orphan partitions).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

import pyarrow.fs as pafs

from xner_ray.store import schema as S
from xner_ray.store.lease import LEASES, LeaseHeld, read_lease, stale_reason
from xner_ray.store.store import (MANIFEST_FILE, MANIFESTS, TMP, ManifestError, Store,
                                  StoreError, check_name, parse_round_key, utcnow)

ERROR, WARNING = "error", "warning"
ROUND_ERRORS = ("corrupt_manifest", "missing_files")
DEFAULT_STALE_RUN_S = 300.0


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str
    level: str
    path: str  # store-relative
    detail: str
    round_key: Optional[str] = None

    def __str__(self) -> str:
        where = self.round_key or self.path
        return f"{self.level:7s} {self.kind:17s} {where}: {self.detail}"


def _key_of(rel: str) -> Optional[str]:
    """The round key inside a store-relative path (``<x>/run_id=../lang=../round=../...``)."""
    parts = rel.split("/")
    for i in range(len(parts) - 2):
        if parts[i].startswith("run_id=") and parts[i + 1].startswith("lang="):
            try:
                return Store.round_key(*parse_round_key("/".join(parts[i:i + 3])))
            except ValueError:
                return None
    return None


def _live_leases(store: Store, problems: list[Problem]) -> dict[str, dict]:
    """{round key: lease} of live writers; stale leases become problems."""
    live = {}
    for info in store.listdir(store.path(LEASES), recursive=True):
        if info.type != pafs.FileType.File:
            continue
        rel = store.rel(info.path)
        if ".tmp-" in info.base_name:
            problems.append(Problem("stale_tmp_file", WARNING, rel,
                                    "temporary file of an interrupted lease write"))
            continue
        if not info.base_name.endswith(".json"):
            continue
        key = rel[len(LEASES) + 1:-len(".json")]
        lease = read_lease(store, info.path)
        why = stale_reason(lease)
        if why is None:
            live[key] = lease
        else:
            problems.append(Problem("stale_lease", WARNING, rel,
                                    f"lease of {lease.get('holder') if lease else '?'} is stale "
                                    f"({why})", key))
    return live


def check_store(store: Store, *, stale_run_s: float = DEFAULT_STALE_RUN_S) -> list[Problem]:
    """Every problem of ``store`` (see the module doc), errors first."""
    problems: list[Problem] = []
    live = _live_leases(store, problems)
    committed: dict[str, dict] = {}
    present = {t: store.present_files(store.path(t)) for t in S.ROUND_TABLES}  # one listing each
    # manifests
    for info in store.listdir(store.path(MANIFESTS), recursive=True):
        if info.type != pafs.FileType.File:
            continue
        rel = store.rel(info.path)
        if ".tmp-" in info.base_name:
            problems.append(Problem("stale_tmp_file", WARNING, rel,
                                    "temporary file of an interrupted manifest write"))
            continue
        if info.base_name != MANIFEST_FILE:
            continue
        key = rel[len(MANIFESTS) + 1:-len(MANIFEST_FILE) - 1]
        try:
            m = store.read_manifest(info.path)
        except (ManifestError, FileNotFoundError) as exc:
            problems.append(Problem("corrupt_manifest", ERROR, rel, str(exc).split(";")[0], key))
            continue
        committed[key] = m
        gone = {t: missing for t, v in m["tables"].items()
                if (missing := [f for f in v["files"] if f not in present.get(t, ())])}
        gone = store.missing_files(m, sorted(gone)) if gone else {}  # (files of other folders)
        if gone:
            n = sum(len(v) for v in gone.values())
            first = next(iter(gone.values()))[0]
            problems.append(Problem("missing_files", ERROR, rel,
                                    f"its manifest lists {n} missing file(s) in "
                                    f"{', '.join(sorted(gone))}, e.g. {first}", key))
    # partition folders
    for table in S.ROUND_TABLES:
        orphans: dict[str, int] = {}
        for rel in sorted(present[table]):
            key = _key_of(rel)
            if key is None:
                continue
            if key in committed:
                listed = set(committed[key]["tables"].get(table, {}).get("files", []))
                if rel not in listed:
                    problems.append(Problem("unlisted_file", WARNING, rel,
                                            "in a committed partition but not in its manifest",
                                            key))
            elif key not in live and not any(p.round_key == key and p.kind == "corrupt_manifest"
                                             for p in problems):
                orphans[key] = orphans.get(key, 0) + 1
        for key, n in sorted(orphans.items()):
            problems.append(Problem("orphan_partition", WARNING, f"{table}/{key}",
                                    f"{n} file(s) of a round without a manifest nor a live "
                                    "writer (a killed commit; invisible to readers)", key))
    # attempts
    for info in store.listdir(store.path(TMP), recursive=True):
        if info.type != pafs.FileType.Directory:
            continue
        rel = store.rel(info.path)
        parts = rel.split("/")
        if len(parts) == 5 and _key_of(rel):
            key, attempt = "/".join(parts[1:4]), parts[4]
            if live.get(key, {}).get("attempt") != attempt:
                problems.append(Problem("stale_attempt", WARNING, rel,
                                        "attempt folder of a writer that holds no live lease",
                                        key))
        elif len(parts) == 2 and parts[1] == "files":  # older stores' atomic-write folder
            problems.append(Problem("stale_attempt", WARNING, rel,
                                    "temporary folder of older atomic writes"))
    # runs
    now = utcnow()
    for path in store._run_files():
        rel = store.rel(path)
        run_id = rel.split("/")[1].split("=", 1)[1]
        try:
            run = store.get_run(run_id)
        except StoreError as exc:
            problems.append(Problem("corrupt_run", ERROR, rel, str(exc)))
            continue
        if run["status"] != "running":
            continue
        beat = run.get("heartbeat_at") or run["started_at"]
        beat = beat if beat.tzinfo else beat.replace(tzinfo=dt.timezone.utc)
        age = (now - beat).total_seconds()
        if age > stale_run_s:
            problems.append(Problem("stale_run", WARNING, rel,
                                    f"marked running, last heartbeat {beat.isoformat()} "
                                    f"({age:.0f} s ago): its driver was killed; rerun it to "
                                    "resume and record its outcome"))
    return sorted(problems, key=lambda p: (p.level != ERROR, p.kind, p.path))


def quarantine(store: Store, round_key: str) -> str:
    """Move a round's manifest, then its partition folders, under ``_quarantine/<stamp>/``
    (same relative paths). Refuses while a live writer holds the round's lease. Returns the
    quarantine folder (store-relative)."""
    run_id, lang, round = parse_round_key(round_key)
    key = Store.round_key(run_id, lang, round)
    lease = read_lease(store, store.lease_path(run_id, lang, round))
    if lease is not None and stale_reason(lease) is None:
        raise LeaseHeld(key, lease, store.to_uri(store.lease_path(run_id, lang, round)))
    dest = store.quarantine_dir()
    manifest = store.manifest_path(run_id, lang, round)
    if store.exists(manifest):
        store.move_file(manifest, f"{dest}/{MANIFESTS}/{key}/{MANIFEST_FILE}")
    for table in S.ROUND_TABLES:
        src = store.partition_dir(table, run_id, lang, round)
        if store.is_dir(src):
            store.move_dir(src, f"{dest}/{table}/{key}")
    return store.rel(dest)


def clean(store: Store, problems: Sequence[Problem]) -> list[Problem]:
    """Delete the leftovers behind the warnings (each re-checked first); returns those done."""
    done = []
    for p in problems:
        path = store.path(p.path)
        if p.kind == "stale_lease":
            if stale_reason(read_lease(store, path)) is None:
                continue  # renewed or taken meanwhile
            store.fs.delete_file(path)
        elif p.kind == "stale_tmp_file":
            store.fs.delete_file(path)
        elif p.kind == "stale_attempt":
            if p.round_key is not None:
                lease = read_lease(store, store.path(LEASES, p.round_key + ".json"))
                if lease is not None and stale_reason(lease) is None and \
                        lease.get("attempt") == p.path.rsplit("/", 1)[-1]:
                    continue
            store.delete_dir(path)
        elif p.kind == "orphan_partition":
            run_id, lang, round = parse_round_key(p.round_key)
            lease = read_lease(store, store.lease_path(run_id, lang, round))
            if store.exists(store.manifest_path(run_id, lang, round)) or (
                    lease is not None and stale_reason(lease) is None):
                continue
            store.delete_dir(path)
        else:
            continue
        done.append(p)
    return done


def drop_run(store: Store, run_id: str, lang: Optional[str] = None, *,
             dry_run: bool = False) -> tuple[str, list[str]]:
    """Move a run (or one language of it) out of the store, under ``_quarantine/``: so that it
    can start again from scratch, e.g. with a changed config (``record_run`` refuses a run id
    whose stored config differs). Nothing is deleted; ``rm -r`` the quarantine folder to free
    the space.

    Its manifests go first (that un-commits its rounds at once), then its partition folders of
    every round table, its leases and ``_tmp`` attempts and, for a whole run, its ``runs``
    record (the config). Refuses while the run is alive: a round lease of it that is still
    renewed, or a ``running`` record whose heartbeat is younger than twice the heartbeat
    interval. Returns ``(quarantine folder, store-relative paths moved)``; ``dry_run``: the
    paths only, nothing moved."""
    check_name("run_id", run_id)
    scope = f"run_id={run_id}" + (f"/lang={check_name('lang', lang)}" if lang else "")
    what = f"run {run_id!r}" + (f" (lang {lang})" if lang else "")
    run = store.get_run(run_id)
    if run is not None and run["status"] == "running":
        age = store._heartbeat_age(run)
        if age is not None and age < 2 * store.run_heartbeat_s:
            raise StoreError(f"{what} is marked running with a heartbeat {age:.0f} s old: stop "
                             f"its driver first (if it was killed, retry after "
                             f"{2 * store.run_heartbeat_s - age:.0f} s)")
    for key, lease in _live_leases(store, []).items():
        if key.startswith(scope + "/"):
            raise LeaseHeld(key, lease, store.to_uri(store.path(LEASES, key + ".json")))
    folders = [f"{MANIFESTS}/{scope}", *(f"{t}/{scope}" for t in S.ROUND_TABLES),
               f"{LEASES}/{scope}", f"{TMP}/{scope}"]
    if lang is None:
        folders.append(store.rel(store.run_path(run_id).rsplit("/", 1)[0]))
    found = [f for f in folders if any(i.type == pafs.FileType.File for i in
                                       store.listdir(store.path(f), recursive=True))]
    if not found:
        known = ", ".join(store.run_ids()) or "none"
        raise StoreError(f"{what} has nothing in {store} (recorded runs: {known})")
    dest = store.quarantine_dir(f"drop-{run_id}-{uuid.uuid4().hex[:6]}")
    if not dry_run:
        for rel in found:  # manifests first: from here on no reader sees the rounds
            store.move_dir(store.path(rel), f"{dest}/{rel}")
    return store.rel(dest), found


STORE_ENTRIES = ("_manifests", "runs", "_tmp", *S.ROUND_TABLES)


def check_store_path(root) -> None:
    """A local store path must exist (a mistyped one must not read as an empty store), and a
    folder with other things in it must look like a store. URIs (``s3://...``) are not
    checked here: the store reads them as they are."""
    from xner_ray.config import ConfigError

    text = os.fspath(root)
    if "://" in text and not text.startswith("file://"):
        return
    path = Path(text[len("file://"):] if text.startswith("file://") else text)
    if not path.exists():
        hint = next((f"; did you mean {c}?" for c in (path.parent / "store",) if c.is_dir()
                     and c != path), "")
        raise ConfigError(f"store {text} does not exist{hint}")
    if not path.is_dir():
        raise ConfigError(f"store {text} is not a folder")
    names = {p.name for p in path.iterdir()}
    if names and not names & set(STORE_ENTRIES):
        inner = path / "store"
        hint = f"; did you mean {inner}?" if inner.is_dir() else ""
        raise ConfigError(f"{text} is not a store (none of {', '.join(STORE_ENTRIES[:3])}, "
                          f"sentences/ ... in it){hint}")



# -- command line ---------------------------------------------------------------------------------
def cmd_store_check(args: argparse.Namespace) -> int:
    """Handler of ``xner store check``: exit 0 when no error remains, 1 otherwise."""
    check_store_path(args.store)
    store = Store(args.store)
    problems = check_store(store, stale_run_s=args.stale_after)
    out = sys.stdout
    actions = []
    if args.quarantine:
        for key in sorted({p.round_key for p in problems if p.kind in ROUND_ERRORS}):
            actions.append(f"quarantined {key} -> {quarantine(store, key)}")
    if args.clean:
        for p in clean(store, [p for p in problems if p.level == WARNING]):
            actions.append(f"cleaned {p.kind} {p.path}")
    if actions:
        remaining = check_store(store, stale_run_s=args.stale_after)
    else:
        remaining = problems
    if args.format == "json":
        print(json.dumps({"problems": [dataclasses.asdict(p) for p in problems],
                          "actions": actions,
                          "remaining": [dataclasses.asdict(p) for p in remaining]}), file=out)
    else:
        for p in problems:
            print(p, file=out)
        for a in actions:
            print(a, file=out)
        errors = sum(p.level == ERROR for p in remaining)
        warnings = len(remaining) - errors
        print(f"{store}: {errors} error(s), {warnings} warning(s)"
              + ("" if not errors or args.quarantine else
                 "; --quarantine moves the bad rounds aside"), file=out)
    return 1 if any(p.level == ERROR for p in remaining) else 0


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, help="store root (folder or URI)")
    p.add_argument("--quarantine", action="store_true",
                   help="move rounds with a corrupt manifest or missing files under "
                        "_quarantine/ (nothing is deleted)")
    p.add_argument("--clean", action="store_true",
                   help="delete stale leases, dead attempts' _tmp folders, temporary files "
                        "and orphan partitions")
    p.add_argument("--stale-after", type=float, default=DEFAULT_STALE_RUN_S, metavar="SECONDS",
                   help="a running run whose heartbeat is older is reported stale "
                        "(default: %(default)s)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="output format (default: %(default)s)")


def cmd_store_drop_run(args: argparse.Namespace) -> int:
    """Handler of ``xner store drop-run``."""
    check_store_path(args.store)
    store = Store(args.store)
    dest, moved = drop_run(store, args.run, args.lang, dry_run=args.dry_run)
    for rel in moved:
        print(f"{'would move' if args.dry_run else 'moved'} {rel}"
              + ("" if args.dry_run else f" -> {dest}/{rel}"))
    what = f"run {args.run}" + (f" (lang {args.lang})" if args.lang else "")
    print(f"{what}: nothing moved (--dry-run)" if args.dry_run else
          f"{what} is out of the store, kept under {store.to_uri(store.path(dest))} "
          "(delete that folder to free the space); it can be run again from scratch")
    return 0


def add_store_parser(subparsers: Any) -> list[argparse.ArgumentParser]:
    """Plug ``store check`` and ``store drop-run`` into the ``xner`` command's subparsers;
    returns their parsers (where the common flags go)."""
    p = subparsers.add_parser("store", help="inspect and repair the store",
                              description="Inspect and repair a store.", allow_abbrev=False)
    sub = p.add_subparsers(dest="store_command", required=True)
    c = sub.add_parser("check", help="list problems (corrupt manifests, missing files, stale "
                                     "leases/attempts/runs); optionally fix them",
                       description=__doc__.split("\n\n")[0], allow_abbrev=False)
    _store_args(c)
    c.set_defaults(func=cmd_store_check)
    d = sub.add_parser("drop-run", help="move a run (or one language of it) under _quarantine/, "
                                        "to run it again from scratch",
                       description="Move a run (or one language of it) under _quarantine/ "
                                   "(nothing is deleted), so that it can start again from "
                                   "scratch, e.g. with a changed config. Refuses while its "
                                   "driver or one of its writers is alive.",
                       allow_abbrev=False)
    d.add_argument("--store", required=True, help="store root (folder or URI)")
    d.add_argument("--run", required=True, help="the run id")
    d.add_argument("--lang", help="only this language's rounds (the run's record and config "
                                  "stay: a changed config needs the whole run dropped)")
    d.add_argument("--dry-run", action="store_true", help="list what would move; move nothing")
    d.set_defaults(func=cmd_store_drop_run)
    return [c, d]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m xner_ray.store.check check --store DIR`` (the same as ``xner store check``;
    ``drop-run`` likewise)."""
    p = argparse.ArgumentParser(prog="xner", allow_abbrev=False)
    add_store_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["store", *(argv if argv is not None else sys.argv[1:])])
    try:
        return args.func(args)
    except (ValueError, RuntimeError) as exc:
        print(f"xner store {args.store_command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
