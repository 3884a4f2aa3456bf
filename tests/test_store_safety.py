"""Store safety: writer leases, commits killed (SIGKILL) at every step, validated manifests,
``store check`` / quarantine, committed-only views, run heartbeats. No Ray.

Killed writers are real processes (``python -c``) that write a round through
``Store.attempt_prefix`` + ``commit_round`` or a ``RoundWriter`` and SIGKILL themselves at a
step of the commit (``XNER_STORE_FAILPOINT``); the store after a rerun must hold the same rows as
one written without interruption.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from xner_ray import sqlshell
from xner_ray.store import Store
from xner_ray.store import check as C
from xner_ray.store.lease import (LeaseHeld, LeaseLost, _dir_lock, read_lease,
                                  write_local_atomic)
from xner_ray.store.store import FAILPOINT_ENV, ManifestError, MissingFilesError

REPO = Path(__file__).resolve().parents[1]

# The writer both the killed child processes and the in-process reference/rerun run.
WRITER = r'''
import os, sys, time
import pyarrow.parquet as pq
from xner_ray.store import Store, batch_to_table
from xner_ray.store.schema import TABLES
from xner_ray.store.store import utcnow

LABELS = ["O", "B-PER", "I-PER"]
CHUNKS = [["a", "b"], ["c", "d", "e"]]


def sent_rows(ids):
    return {"sent_id": ids, "source": ["hand"] * len(ids), "tokens": [[i.upper()] for i in ids]}


def pl_rows(ids):
    n = len(ids)
    return {"sent_id": ids, "teacher": ["t@0"] * n, "tags": [["B-PER"]] * n,
            "probs": [[[0.1, 0.8, 0.1]]] * n, "labels": [LABELS] * n, "confidence": [0.8] * n,
            "f_conf": [0.22] * n, "n_entities": [1] * n, "length": [1] * n,
            "selected": [True] * n, "selector": ["keep_all.v1"] * n, "weight": [1.0] * n}


def write_round(store, mode, lang="es", hold=None):
    if mode == "prefix":  # the labeling pipeline's way: workers write under the prefix
        if store.is_complete("r1", lang, 0):
            return store.manifest("r1", lang, 0)
        prefix = store.attempt_prefix("r1", lang, 0)
        files, rows = {}, {}
        for i, ids in enumerate(CHUNKS):
            for t, cols in (("sentences", sent_rows(ids)), ("pseudo_labels", pl_rows(ids))):
                path = f"{prefix}/{t}/part-{i:05d}.parquet"
                store.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
                pq.write_table(batch_to_table(cols, TABLES[t].file_schema), path,
                               filesystem=store.fs)
                files.setdefault(t, []).append(path)
                rows[t] = rows.get(t, 0) + len(ids)
        return store.commit_round("r1", lang, 0, files, labels=LABELS, meta={"counts": rows},
                                  started_at=utcnow(), rows=rows)
    with store.round_writer("r1", lang, 0, labels=LABELS, rows_per_file=2,
                            meta={"counts": {"n": 5}}) as w:
        for ids in CHUNKS:
            w.write_sentences(sent_rows(ids))
            w.write_pseudo_labels(pl_rows(ids))
        if hold:  # concurrency test: hold the lease until told to go on
            open(hold + ".ready", "w").close()
            while not os.path.exists(hold + ".go"):
                time.sleep(0.05)
    return w.manifest


def run_job(job):
    store = Store(job["root"])
    if job["mode"] == "run":  # a driver that records its run and is killed
        store.record_run("r1", "label", {"a": 1})
        os.kill(os.getpid(), 9)
    while job.get("after") and not os.path.exists(job["after"]):  # once another writer is in
        time.sleep(0.02)
    write_round(store, job["mode"], hold=job.get("hold"))


if __name__ == "__main__":
    # One interpreter imports once, then forks a process per job (a writer, killed by its
    # failpoint, or not); it prints the pids, then each job's exit (-9: SIGKILL).
    import json
    jobs, pids = json.loads(sys.argv[1]), []
    for job in jobs:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if job.get("failpoint"):
                    os.environ["XNER_STORE_FAILPOINT"] = job["failpoint"]
                run_job(job)
            except BaseException as exc:
                with open(job["err"], "w") as f:
                    f.write(f"{type(exc).__name__}: {exc}")
                code = 1
            os._exit(code)
        pids.append(pid)
    print(json.dumps(pids), flush=True)
    exits = []
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        exits.append(-os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st))
    print(json.dumps(exits), flush=True)
'''
NS: dict = {}
exec(compile(WRITER, "<writer>", "exec"), NS)  # noqa: S102 - our own test code


def spawn(jobs: list[dict]) -> subprocess.Popen:
    """A ``python -c`` process that forks one writer process per job (see WRITER)."""
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    environ.pop(FAILPOINT_ENV, None)
    return subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(jobs)], cwd=REPO,
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"no {path}"
        time.sleep(0.02)


def rows(store: Store) -> dict:
    return {t: sorted(store.read(t).to_pylist(), key=lambda r: r["sent_id"])
            for t in ("sentences", "pseudo_labels")}


def plain_duckdb(store: Store) -> duckdb.DuckDBPyConnection:
    """What a user without the package gets: sql/setup/views.sql over the store folder."""
    con = duckdb.connect()
    con.execute("SET VARIABLE store = ?", [store.uri])
    for st in con.extract_statements((sqlshell.sql_dir() / "setup" / "views.sql").read_text()):
        con.execute(st.query)
    return con


def counts(con) -> tuple:
    return tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("sentences", "pseudo_labels"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The rows of each mode's round written without interruption."""
    out = {}
    for mode in ("prefix", "writer"):
        store = Store(tmp_path_factory.mktemp(f"ref-{mode}"))
        NS["write_round"](store, mode)
        out[mode] = rows(store)
    assert out["prefix"] == out["writer"] and len(out["prefix"]["pseudo_labels"]) == 5
    return out


# -- SIGKILL at each step of a commit --------------------------------------------------------------
KILLS = [("prefix", "files_written"), ("prefix", "mid_move"), ("prefix", "before_manifest"),
         ("prefix", "after_manifest"), ("writer", "mid_move"), ("writer", "after_manifest")]


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict:
    """Real processes, all forked from one interpreter: one writer per (mode, step) SIGKILLed at
    that step, a driver killed after recording its run, and two concurrent writers of one
    round (the first holds the lease until told to go on; the second tries meanwhile)."""
    out: dict = {k: tmp_path_factory.mktemp(f"kill-{k[0]}-{k[1]}") for k in KILLS}
    out["run"] = tmp_path_factory.mktemp("kill-run")
    out["race"] = race = tmp_path_factory.mktemp("race")
    hold = str(race / "hold")
    jobs = [{"mode": m, "root": str(out[(m, st)]), "failpoint": st, "err": str(out[(m, st)]
                                                                                / "err")}
            for m, st in KILLS]
    jobs += [{"mode": "run", "root": str(out["run"]), "err": str(out["run"] / "err")},
             {"mode": "writer", "root": str(race), "hold": hold, "err": str(race / "err1")},
             {"mode": "writer", "root": str(race), "after": hold + ".ready",
              "err": str(race / "err2")}]
    proc = spawn(jobs)
    try:
        pids = json.loads(proc.stdout.readline())
        wait_for(str(race / "err2"), proc)  # the second writer gave up
        time.sleep(0.1)
        store = Store(race)
        out["race_seen"] = {"first_pid": pids[-2], "error": (race / "err2").read_text(),
                            "lease": read_lease(store, store.lease_path("r1", "es", 0)),
                            "problems": C.check_store(store)}
    finally:
        Path(hold + ".go").touch()
    stdout, stderr = proc.communicate(timeout=120)
    exits = json.loads(stdout.strip().splitlines()[-1])
    assert exits == [-signal.SIGKILL] * (len(KILLS) + 1) + [0, 1], (exits, stderr)
    return out


@pytest.mark.parametrize("mode, step", KILLS)
def test_killed_commit_then_rerun_equals_uninterrupted(killed, reference, mode, step):
    tmp_path = killed[(mode, step)]
    (tmp_path / "err").unlink(missing_ok=True)
    store = Store(tmp_path)
    committed = step == "after_manifest"
    assert store.is_complete("r1", "es", 0) is committed
    lease = read_lease(store, store.lease_path("r1", "es", 0))
    assert lease is not None and lease["pid"] != os.getpid()  # the dead child's, never released
    if step in ("mid_move", "before_manifest"):  # files in the partition folders, no manifest
        assert [f for t in ("sentences", "pseudo_labels") for f in (tmp_path / t).rglob("*.parquet")]
    # No reader shows an uncommitted round: read-only views, --read-write and plain DuckDB.
    expected = (5, 5) if committed else (0, 0)
    for con in (sqlshell.connect(store), sqlshell.connect(store, read_only=False),
                plain_duckdb(store)):
        assert counts(con) == expected
    problems = C.check_store(store)
    assert not [p for p in problems if p.level == C.ERROR]
    if not committed:
        assert {p.kind for p in problems} >= {"stale_lease"}
    # The rerun takes the dead writer's lease over at once (its pid is gone) and redoes the
    # round -- or skips it when the manifest made it.
    again = NS["write_round"](store, mode)
    assert rows(store) == reference[mode]
    assert again == store.manifest("r1", "es", 0)
    assert counts(plain_duckdb(store)) == (5, 5)
    left = C.check_store(store)
    if committed:  # the dead writer's lease and emptied attempt folder: warnings, cleanable
        assert {p.kind for p in left} <= {"stale_lease", "stale_attempt"}
        assert C.clean(store, left) and C.check_store(store) == []
    else:
        assert left == []
    assert not list((tmp_path / "_tmp").rglob("*.parquet"))


def test_second_writer_gets_lease_error_and_first_commits(killed, reference):
    tmp_path, seen = killed["race"], killed["race_seen"]
    store = Store(tmp_path)
    assert seen["error"].startswith("LeaseHeld: round run_id=r1/lang=es/round=0 is being "
                                    f"written by {socket.gethostname()}/{seen['first_pid']}/")
    assert "expires" in seen["error"] and seen["lease"]["pid"] == seen["first_pid"]
    assert seen["problems"] == []  # a live writer is no problem
    # the second writer removed nothing of the first: it committed its own attempt's files
    assert rows(store) == reference["writer"]
    assert store.manifest("r1", "es", 0)["attempt"] == seen["lease"]["attempt"]
    assert not store.exists(store.lease_path("r1", "es", 0))  # released on commit
    assert C.check_store(store) == []


def test_live_lease_of_another_host_blocks_until_it_expires(tmp_path, caplog):
    store = Store(tmp_path)
    path = Path(store.lease_path("r1", "es", 0))
    path.parent.mkdir(parents=True)
    now = dt.datetime.now(dt.timezone.utc)
    other = {"holder": "gpu-7/4242/abc123", "host": "gpu-7", "pid": 4242, "attempt": "abc123",
             "heartbeat_at": now.isoformat(),
             "expires_at": (now + dt.timedelta(seconds=60)).isoformat()}
    path.write_text(json.dumps(other))
    (tmp_path / "_tmp" / "run_id=r1" / "lang=es" / "round=0" / "abc123").mkdir(parents=True)
    with pytest.raises(LeaseHeld, match=r"gpu-7/4242/abc123 .*expires " + now.year.__str__()):
        store.attempt_prefix("r1", "es", 0)
    assert (tmp_path / "_tmp" / "run_id=r1" / "lang=es" / "round=0" / "abc123").is_dir()
    path.write_text(json.dumps({**other, "expires_at": (now - dt.timedelta(seconds=1))
                               .isoformat()}))
    prefix = store.attempt_prefix("r1", "es", 0)  # expired: taken over, logged
    assert "taking over the stale lease of gpu-7/4242/abc123" in caplog.text
    assert not (tmp_path / "_tmp" / "run_id=r1" / "lang=es" / "round=0" / "abc123").exists()
    assert read_lease(store, str(path))["attempt"] == prefix.rsplit("/", 1)[1]
    store.abort_round("r1", "es", 0)
    assert not path.exists() and not os.path.exists(prefix)


def test_heartbeat_renews_and_a_lost_lease_does_not_commit(tmp_path):
    store = Store(tmp_path, lease_ttl_s=0.4)
    prefix = store.attempt_prefix("r1", "es", 0)
    path = store.lease_path("r1", "es", 0)
    first = read_lease(store, path)
    time.sleep(0.5)  # longer than the TTL: alive only through the heartbeat
    later = read_lease(store, path)
    assert later["holder"] == first["holder"] and later["expires_at"] > first["expires_at"]
    # another writer took it over (as if ours had expired): the commit must not happen
    fake = {**later, "holder": "elsewhere/1/zzz", "host": "elsewhere", "attempt": "zzz",
            "expires_at": (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60)).isoformat()}
    with _dir_lock(os.path.dirname(path)):  # as a writer would, not racing our heartbeat
        write_local_atomic(path, json.dumps(fake).encode())
    f = f"{prefix}/pseudo_labels/part-0.parquet"
    os.makedirs(os.path.dirname(f))
    Path(f).write_bytes(b"x")
    with pytest.raises(LeaseLost, match="elsewhere/1/zzz"):
        store.commit_round("r1", "es", 0, {"pseudo_labels": [f]}, labels=None, meta={},
                           started_at=dt.datetime.now(dt.timezone.utc), rows={})
    assert not store.exists(store.manifest_path("r1", "es", 0))
    assert not (tmp_path / "pseudo_labels").exists()


def test_exception_in_writer_releases_lease(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        with store.round_writer("r1", "es", 0) as w:
            w.write_sentences(NS["sent_rows"](["a"]))
            raise RuntimeError("boom")
    assert not store.exists(store.lease_path("r1", "es", 0))
    assert C.check_store(store) == []


# -- manifests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, why", [
    (b"", "empty file"), (b'{"run_id": "r1", "la', "not valid JSON"),
    (b'{"run_id": "r1"}', "incomplete manifest"), (b"[1]", "not a JSON object")])
def test_corrupt_manifest_names_file_check_and_quarantine(tmp_path, content, why):
    store = Store(tmp_path)
    NS["write_round"](store, "writer", "es")
    NS["write_round"](store, "writer", "nl")
    mpath = Path(store.manifest_path("r1", "es", 0))
    mpath.write_bytes(content)
    for read in (lambda: store.manifest("r1", "es", 0), lambda: store.read("pseudo_labels"),
                 lambda: sqlshell.connect(store), lambda: counts(plain_duckdb(store))):
        with pytest.raises((ManifestError, duckdb.Error), match=str(mpath)) as exc:
            read()
        assert "Expecting value" not in str(exc.value)
    assert why in str(pytest.raises(ManifestError, store.read, "sentences").value)
    (problem,) = C.check_store(store)
    assert (problem.kind, problem.level, problem.round_key) == (
        "corrupt_manifest", "error", "run_id=r1/lang=es/round=0")
    dest = C.quarantine(store, problem.round_key)
    assert (tmp_path / dest / "_manifests" / "run_id=r1" / "lang=es" / "round=0"
            / "_manifest.json").read_bytes() == content
    assert list((tmp_path / dest / "pseudo_labels").rglob("*.parquet"))
    assert counts(sqlshell.connect(store)) == (5, 5) == counts(plain_duckdb(store))  # nl only
    assert C.check_store(store) == []
    NS["write_round"](store, "writer", "es")  # and the round can be rerun
    assert counts(sqlshell.connect(store)) == (10, 10)


def test_rerun_repairs_a_corrupt_manifest(tmp_path, reference):
    store = Store(tmp_path)
    NS["write_round"](store, "prefix")
    Path(store.manifest_path("r1", "es", 0)).write_bytes(b"")
    assert not store.is_complete("r1", "es", 0)
    NS["write_round"](store, "prefix")
    assert rows(store) == reference["prefix"]
    assert list((tmp_path / "_quarantine").rglob("_manifest.json"))  # the evidence is kept


def test_missing_files_name_the_round(tmp_path, capsys):
    store = Store(tmp_path)
    NS["write_round"](store, "writer", "es")
    NS["write_round"](store, "writer", "nl")
    m = store.manifest("r1", "es", 0)
    os.remove(store.path(m["tables"]["pseudo_labels"]["files"][0]))
    with pytest.raises(MissingFilesError, match="round run_id=r1/lang=es/round=0 .*pseudo_labels"):
        sqlshell.connect(store)
    assert not store.is_complete("r1", "es", 0)
    assert C.main(["check", "--store", str(tmp_path)]) == 1
    assert "missing_files" in capsys.readouterr().out
    assert C.main(["check", "--store", str(tmp_path), "--quarantine"]) == 0
    assert "quarantined run_id=r1/lang=es/round=0" in capsys.readouterr().out
    assert counts(sqlshell.connect(store)) == (5, 5)


def test_orphan_partition_is_invisible_and_cleaned(tmp_path):
    store = Store(tmp_path)
    NS["write_round"](store, "writer", "es")
    orphan = tmp_path / "pseudo_labels" / "run_id=r1" / "lang=nl" / "round=0"
    orphan.mkdir(parents=True)
    shutil.copy(next((tmp_path / "pseudo_labels").rglob("*.parquet")), orphan / "part-x.parquet")
    for con in (plain_duckdb(store), sqlshell.connect(store, read_only=False),
                sqlshell.connect(store)):
        assert counts(con) == (5, 5)
    (problem,) = C.check_store(store)
    assert problem.kind == "orphan_partition" and problem.level == "warning"
    assert C.main(["check", "--store", str(tmp_path), "--clean"]) == 0
    assert not orphan.exists() and C.check_store(store) == []


def test_drop_run_moves_one_language_then_the_whole_run(tmp_path, capsys):
    store = Store(tmp_path, run_heartbeat_s=0.05)
    store.record_run("r1", "label", {"a": 1})
    NS["write_round"](store, "writer", "es")
    NS["write_round"](store, "writer", "nl")
    with pytest.raises(C.StoreError, match="marked running with a heartbeat"):
        C.drop_run(store, "r1")  # its driver (this process) still beats
    store.update_run("r1", status="failed")
    with pytest.raises(ValueError, match="different config.*xner store drop-run --store .* --run r1"):
        store.record_run("r1", "label", {"a": 2})
    assert C.main(["drop-run", "--store", str(tmp_path), "--run", "r1", "--lang", "nl",
                   "--dry-run"]) == 0
    assert "would move _manifests/run_id=r1/lang=nl" in capsys.readouterr().out
    assert counts(sqlshell.connect(store)) == (10, 10)  # a dry run moves nothing
    assert C.main(["drop-run", "--store", str(tmp_path), "--run", "r1", "--lang", "nl"]) == 0
    out = capsys.readouterr().out
    assert "moved pseudo_labels/run_id=r1/lang=nl" in out and "runs/" not in out
    assert counts(sqlshell.connect(store)) == (5, 5) == counts(plain_duckdb(store))  # es only
    assert store.get_run("r1") is not None and C.check_store(store) == []
    dest, moved = C.drop_run(store, "r1")
    assert moved[0] == "_manifests/run_id=r1" and "runs/run_id=r1" in moved
    assert store.run_ids() == [] and counts(sqlshell.connect(store)) == (0, 0)
    kept = tmp_path / dest
    assert len(list((kept / "pseudo_labels").rglob("*.parquet"))) == 3  # es's files, not deleted
    assert (kept / "runs" / "run_id=r1" / "run.parquet").is_file()
    assert C.check_store(store) == []
    store.record_run("r1", "label", {"a": 2})  # the run id starts again with a new config
    NS["write_round"](store, "writer", "es")
    assert counts(sqlshell.connect(store)) == (5, 5)
    with pytest.raises(C.StoreError, match=r"run 'r9' has nothing in .*recorded runs: r1"):
        C.drop_run(store, "r9")
    assert C.main(["drop-run", "--store", str(tmp_path), "--run", "../x"]) == 2
    assert "xner store drop-run: error: invalid run_id" in capsys.readouterr().err


def test_drop_run_refuses_a_live_writer(tmp_path):
    store = Store(tmp_path)
    NS["write_round"](store, "writer", "es")
    prefix = store.attempt_prefix("r1", "nl", 0)  # a writer of r1 is at work on nl
    with pytest.raises(LeaseHeld, match="run_id=r1/lang=nl/round=0"):
        C.drop_run(store, "r1")
    C.drop_run(store, "r1", "es")  # the other language may go
    store.abort_round("r1", "nl", 0)
    assert not store.exists(prefix)
    with pytest.raises(C.StoreError, match="has nothing"):  # the abort left nothing behind
        C.drop_run(store, "r1")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=60)
    write_local_atomic(store.lease_path("r1", "nl", 0), json.dumps(
        {"holder": "gpu-7/4242/abc", "host": "gpu-7", "pid": 4242,
         "expires_at": past.isoformat()}).encode())  # a killed writer's: it does not block
    assert C.drop_run(store, "r1")[1] == ["_leases/run_id=r1"]
    assert C.check_store(store) == []


# -- runs --------------------------------------------------------------------------------------------
def test_killed_driver_shows_stale_and_rerun_records_outcome(killed):
    store = Store(killed["run"])
    run = store.get_run("r1")
    assert run["status"] == "running" and run["heartbeat_at"] is not None
    time.sleep(0.05)
    (row,) = sqlshell.run_sql(store, "runs_overview", {"stale_after_s": 0.01},
                              output="arrow").to_pylist()
    assert (row["status"], row["state"]) == ("running", "stale") and row["heartbeat_age_s"] >= 0
    (row,) = sqlshell.run_sql(store, "runs_overview", output="arrow").to_pylist()
    assert row["state"] == "running"  # within the default 300 s
    assert [p.kind for p in C.check_store(store, stale_run_s=0.01)] == ["stale_run"]
    store.record_run("r1", "label", {"a": 1})  # the rerun
    store.update_run("r1", status="succeeded")
    (row,) = sqlshell.run_sql(plain_duckdb(store), "runs_overview", {"stale_after_s": 0.01},
                              output="arrow").to_pylist()
    assert (row["status"], row["state"]) == ("succeeded", "succeeded")
    assert C.check_store(store, stale_run_s=0.01) == []


def test_run_heartbeat_thread(tmp_path):
    store = Store(tmp_path, run_heartbeat_s=0.1)
    first = store.record_run("r2", "rikd", {})["heartbeat_at"]
    time.sleep(0.5)
    beat = store.get_run("r2")["heartbeat_at"]
    assert beat > first
    store.update_run("r2", status="failed")
    ended = store.get_run("r2")
    time.sleep(0.3)
    assert store.get_run("r2")["heartbeat_at"] == ended["heartbeat_at"]  # stopped


def test_backfill_metrics_of_a_round_committed_before_a_kill(tmp_path):
    store = Store(tmp_path)
    store.record_run("r1", "label", {})
    NS["write_round"](store, "prefix", "es")  # committed; the kill came before update_run
    store.update_run("r1", round=0, metrics={"nl": {"sentences": 1}})
    assert store.backfill_metrics("r1", "counts") == 1
    assert json.loads(store.get_run("r1")["metrics"])["0"] == {
        "es": {"sentences": 5, "pseudo_labels": 5}, "nl": {"sentences": 1}}
    assert store.backfill_metrics("r1", "counts") == 0  # never overwrites


# -- object store (moto) -----------------------------------------------------------------------------
@pytest.fixture
def s3_store(tmp_path, monkeypatch):
    exe = shutil.which("moto_server")
    if exe is None:
        pytest.skip("moto_server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        monkeypatch.setattr("xner_ray.store.lease.SETTLE_S", 0.05)
        for var, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(var, value)
        import pyarrow.fs as pafs

        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.time() < deadline, "moto_server did not start"
                time.sleep(0.1)
        fs, _ = pafs.FileSystem.from_uri("s3://bucket?allow_bucket_creation=true")
        fs.create_dir("bucket")
        yield Store("s3://bucket/store")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_object_store_lease_manifest_and_quarantine(s3_store, reference):
    store = s3_store
    assert not store.is_local
    NS["write_round"](store, "prefix", "es")
    NS["write_round"](store, "writer", "nl")
    assert len(rows(store)["pseudo_labels"]) == 10
    now = dt.datetime.now(dt.timezone.utc)
    with store.fs.open_output_stream(store.lease_path("r1", "de", 0)) as out:
        out.write(json.dumps({"holder": "gpu-7/4242/abc", "host": "gpu-7", "pid": 4242,
                              "expires_at": (now + dt.timedelta(seconds=60)).isoformat()}
                             ).encode())
    with pytest.raises(LeaseHeld, match="s3://bucket/store/_leases/run_id=r1/lang=de/round=0"):
        store.attempt_prefix("r1", "de", 0)
    prefix = store.attempt_prefix("r1", "fr", 0)
    assert read_lease(store, store.lease_path("r1", "fr", 0))["attempt"] == prefix[-12:]
    store.abort_round("r1", "fr", 0)
    assert not store.exists(prefix) and not store.exists(store.lease_path("r1", "fr", 0))
    with store.fs.open_output_stream(store.manifest_path("r1", "es", 0)) as out:
        out.write(b"")
    with pytest.raises(ManifestError, match="s3://bucket/store/_manifests/run_id=r1/lang=es"):
        sqlshell.connect(store)
    (problem,) = C.check_store(store)
    C.quarantine(store, problem.round_key)
    assert counts(sqlshell.connect(store)) == (5, 5)
    dest, moved = C.drop_run(store, "r1", "nl")  # file by file on an object store
    assert "pseudo_labels/run_id=r1/lang=nl" in moved and "_leases/run_id=r1/lang=de" not in moved
    assert counts(sqlshell.connect(store)) == (0, 0)
    assert store.listdir(store.path(dest, "pseudo_labels"), recursive=True)  # kept, not deleted
