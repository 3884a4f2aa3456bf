"""The engine: plans of Ray-free parts, run in-process or on Ray with the same result; exact
whole-set cut-offs without the rows on the driver."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from xner_ray import engine


def _read(item: int, rows: int = 10):
    for start in range(0, rows, 4):
        n = min(4, rows - start)
        yield pa.table({"lang": ["xx"] * n, "i": [item * 100 + start + k for k in range(n)]})


class Double:
    def __init__(self, factor: int = 2):
        self.factor = factor

    def __call__(self, table: pa.Table) -> pa.Table:
        return table.append_column("y", pa.array([v * self.factor for v in
                                                  table.column("i").to_pylist()]))


class FileSink:
    """Writes each call's rows to one Parquet file; returns only its path and row count."""

    def __init__(self, folder: str):
        self.folder = folder

    def write(self, tables):
        import uuid

        t = pa.concat_tables(tables)
        path = f"{self.folder}/part-{uuid.uuid4().hex}.parquet"
        pq.write_table(t, path)
        return [{"path": path, "rows": t.num_rows}]


def _plan(tmp_path, name: str) -> engine.Plan:
    folder = tmp_path / name
    folder.mkdir()
    return engine.Plan(items=[1, 2, 3], read=partial(_read, rows=10),
                       stages=[engine.Stage(Double, (3,), batch_size=3)],
                       sink=FileSink(str(folder)), rows_per_write=8)


def _rows(records) -> list:
    return sorted(r for rec in records for r in
                  zip(*pq.read_table(rec["path"]).select(["i", "y"]).to_pydict().values()))


def test_local_runner_writes_every_row_through_the_sink(tmp_path):
    records = engine.run(_plan(tmp_path, "local"), local=True)
    assert sum(r["rows"] for r in records) == 30
    assert all(r["rows"] >= 8 or r is records[-1] for r in records)  # gathered before writing
    assert _rows(records) == sorted((i, 3 * i) for it in (1, 2, 3) for i in
                                    range(it * 100, it * 100 + 10))


@pytest.mark.slow
def test_ray_runner_gives_the_same_rows(ray_cluster, tmp_path):
    local = _rows(engine.run(_plan(tmp_path, "a"), local=True))
    records = engine.run(_plan(tmp_path, "b"))
    assert set(records[0]) == {"path", "rows"}  # the driver gets records, not rows
    assert _rows(records) == local


class AddOne:
    def __call__(self, table: pa.Table) -> pa.Table:
        return table.set_column(table.schema.get_field_index("y"), "y",
                                pa.array([v + 1 for v in table.column("y").to_pylist()]))


@pytest.mark.parametrize("local", [True, False])
def test_fused_stages_run_in_order_in_one_pool(request, tmp_path, local):
    """``engine.fuse``: the stages apply in their order (x3 then +1, not +1 then x3) with the
    resources of the stage named, as the unfused chain would."""
    if not local:
        request.getfixturevalue("ray_cluster")
    like = engine.Stage(Double, (3,), batch_size=3, num_cpus=0.2)
    fused = engine.fuse([like, engine.Stage(AddOne)], like=like)
    assert (fused.batch_size, fused.num_cpus, fused.max_actors) == (3, 0.2, 1)
    plan = _plan(tmp_path, "fused")
    plan.stages = [fused]
    assert _rows(engine.run(plan, local=local)) == sorted(
        (i, 3 * i + 1) for it in (1, 2, 3) for i in range(it * 100, it * 100 + 10))


@pytest.mark.parametrize("local", [True, False])
def test_progress_counts_every_row_on_both_runners(request, tmp_path, caplog, local):
    """A plan with ``progress`` logs count, rate and -- with a total -- the share done; the
    final line counts every row the stages took in (on Ray, the stages' actors report)."""
    import logging

    if not local:
        request.getfixturevalue("ray_cluster")
    plan = _plan(tmp_path, "p")
    plan.progress, plan.unit, plan.total = "[test] xx", "sentences", 30
    with caplog.at_level(logging.INFO, logger="xner_ray"):
        records = engine.run(plan, local=local)
    assert sum(r["rows"] for r in records) == 30
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[test] xx: ")]
    assert lines and lines[-1].startswith("[test] xx: 30/30 sentences (100%)"), lines
    assert "elapsed" in lines[-1]


class _Top:
    """A minimal set selector over one score column (the protocol of selectors.SetSelector)."""

    rank_columns = ("score",)

    def __init__(self, rho):
        from xner_ray.selectors import TopRho

        self.inner = TopRho("score", rho)
        self.rho = rho

    def batch_keys(self, table):
        return self.inner.batch_keys(table)


def _score_files(tmp_path, n: int, parts: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(n), 2)  # many ties
    ids = [f"s{i:05d}" for i in rng.permutation(n)]
    files = []
    for k, chunk in enumerate(np.array_split(np.arange(n), parts)):
        path = str(tmp_path / f"scores-{k}.parquet")
        pq.write_table(pa.table({"sent_id": [ids[i] for i in chunk],
                                 "score": scores[chunk].astype(np.float32)}), path)
        files.append(path)
    return files


@pytest.mark.parametrize("rho", [0.0, 0.35, 0.8, 1.0])
def test_local_cutoffs_equal_an_in_memory_fit(tmp_path, rho):
    from xner_ray.selectors import TopRho

    files = _score_files(tmp_path, 500, 4)
    got = engine.exact_cutoffs(files, pafs.LocalFileSystem(), _Top(rho), 500, local=True)
    whole = pa.concat_tables([pq.read_table(f) for f in files])
    assert got == TopRho("score", rho).fit(whole).cutoffs


@pytest.mark.slow
def test_distributed_cutoffs_equal_an_in_memory_fit(ray_cluster, tmp_path):
    from xner_ray.selectors import TopRho

    files = _score_files(tmp_path, 3000, 6, seed=1)
    whole = pa.concat_tables([pq.read_table(f) for f in files])
    for rho in (0.3, 0.8):
        got = engine.exact_cutoffs(files, pafs.LocalFileSystem(), _Top(rho), 3000)
        assert got == TopRho("score", rho).fit(whole).cutoffs
        kept = TopRho("score", rho).set_cutoffs(got).select(whole).column("selected")
        assert sum(kept.to_pylist()) == int(rho * 3000)


class ThreadEnv:
    """Records the actor's OpenMP pool size as the column ``y``."""

    def __call__(self, table: pa.Table) -> pa.Table:
        import os

        n = int(os.environ.get("OMP_NUM_THREADS", "0"))
        return table.append_column("y", pa.array([n] * table.num_rows))


@pytest.mark.slow
def test_actors_of_a_multi_thread_stage_size_their_openmp_pool(ray_cluster, tmp_path):
    """``Stage.threads`` > 1 reaches the actors' environment before torch starts (Ray's
    default for a fractional CPU request is a pool of 1); one thread keeps Ray's default."""
    assert engine.worker_env(1) == {}
    plan = _plan(tmp_path, "threads")
    plan.stages = [engine.fuse([engine.Stage(ThreadEnv)],
                               like=engine.Stage(ThreadEnv, num_cpus=0.5, threads=3))]
    assert {y for _, y in _rows(engine.run(plan))} == {3}


class WhoAmI:
    """Tags each row with the worker process and the stage instance that labeled it (a new
    id per instance: ``id()`` can repeat once an instance is freed)."""

    def __init__(self):
        import uuid

        self.uid = uuid.uuid4().hex

    def __call__(self, table: pa.Table) -> pa.Table:
        import os

        n = table.num_rows
        return (table.append_column("pid", pa.array([os.getpid()] * n))
                .append_column("inst", pa.array([self.uid] * n)))


def _who(records) -> dict:
    tables = [pq.read_table(r["path"]).select(["pid", "inst"]) for r in records]
    t = pa.concat_tables(tables).to_pydict()
    who: dict = {}
    for pid, inst in zip(t["pid"], t["inst"]):
        who.setdefault(pid, set()).add(inst)
    return who


def test_cpu_stages_run_in_warm_workers_and_gpu_stages_in_actors():
    assert engine.Stage(Double).runs_warm
    assert not engine.Stage(Double, num_gpus=1).runs_warm
    assert not engine.Stage(Double, warm=False).runs_warm
    fused = engine.fuse([engine.Stage(Double)], like=engine.Stage(Double, warm=False))
    assert fused.warm is False and engine.stage_names(fused) == "Double"
    env = engine.worker_env(2, pool="A")["runtime_env"]["env_vars"]
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "XNER_WORKER_POOL": "A"}


def test_a_warm_worker_builds_a_stage_once_per_run_and_frees_the_last_runs():
    engine._WARM.clear()
    t = pa.table({"i": [1, 2]})
    call = partial(engine._warm_call, spec=(WhoAmI, (), {}), idle_s=0)
    first = call(t, key=("run1", 0)).column("inst")[0].as_py()
    assert call(t, key=("run1", 0)).column("inst")[0].as_py() == first
    call(t, key=("run1", 1))  # a second stage of the same run
    assert sorted(engine._WARM) == [("run1", 0), ("run1", 1)]
    second = call(t, key=("run2", 0)).column("inst")[0].as_py()
    assert second != first  # never shared between runs
    assert sorted(engine._WARM) == [("run2", 0)]  # run1's stages freed
    engine._WARM.clear()


class Slow:
    def __call__(self, batch):
        time.sleep(1.0)
        return batch


def test_an_idle_warm_worker_frees_its_stages(monkeypatch):
    """No batch for ``idle_s``: the process drops its stages (their models), never one in the
    middle of a call; a bad ``$XNER_WARM_IDLE_S`` is an error on the driver."""
    engine._WARM.clear()
    t = pa.table({"i": [1]})
    engine._warm_call(t, key=("r", 0), spec=(Slow, (), {}), idle_s=0.2)  # 1 s > idle_s
    assert list(engine._WARM) == [("r", 0)]  # kept through its own call
    deadline = time.monotonic() + 15  # the reaper wakes every idle_s / 4 (10 s at most)
    while engine._WARM and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine._WARM
    engine._warm_call(t, key=("r", 0), spec=(Double, (), {}), idle_s=0)  # 0: kept
    time.sleep(0.5)
    assert list(engine._WARM) == [("r", 0)]
    engine._WARM.clear()
    monkeypatch.setenv("XNER_WARM_IDLE_S", "1m")
    with pytest.raises(ValueError, match=r"XNER_WARM_IDLE_S='1m' is not a number of seconds"):
        engine._apply_stages(None, [engine.Stage(Double)])
    monkeypatch.setenv("XNER_WARM_IDLE_S", "5")
    assert engine.warm_idle_s() == 5.0


@pytest.mark.slow
def test_a_second_run_reuses_the_first_runs_worker_processes(ray_cluster, tmp_path):
    """Warm workers outlive a run (the cluster keeps idle workers: local_system_config) and
    build a new stage instance in each run: one instance per process and run."""
    runs = []
    for name in ("w1", "w2"):
        plan = _plan(tmp_path, name)
        plan.stages = [engine.Stage(WhoAmI, batch_size=3, num_cpus=0.5, max_actors=2)]
        runs.append(_who(engine.run(plan)))
    for who in runs:
        assert all(len(insts) == 1 for insts in who.values()), who
    assert set(runs[1]) <= set(runs[0]), runs  # no new process in the second run
    assert not set().union(*runs[0].values()) & set().union(*runs[1].values())
