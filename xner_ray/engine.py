"""The one module that wires Ray Data: every pipeline of the project runs through here.

A :class:`Plan` is Ray-free: work items and a read function (one read task per item, e.g. an
input file), a chain of :class:`Stage` s (plain classes that load their model in ``__init__``
and map a ``pyarrow.Table`` to a ``pyarrow.Table``), and a sink (a plain object whose
``write(tables) -> list[dict]`` writes files and returns small records: paths, row counts,
sums). :func:`run` executes it on the connected Ray cluster -- read tasks, actor pools with
the stages' resources, write tasks -- and returns the sink's records; :func:`run_local` does
the same in this process, with the same signature, for tests and baselines. No row reaches
the driver on either path: the driver plans, then commits from the records.

Where stages run: a GPU stage in an actor pool (each actor holds its model and device). A
CPU-only stage in *warm workers*: Ray tasks in worker processes that outlive the run, each
building the stage once per run and process (:func:`_warm_call`), so a run pays no process
start, no ``import torch``/``transformers`` and no tokenizer load once a worker has done them
(``benchmarks/worker_startup.py``: 5.2 s of CPU cold, 0.03 s to rebuild the teacher's stages
warm; docs/DECISIONS.md); an idle one frees its stages after :func:`warm_idle_s`.
``Stage.warm`` overrides the choice.

Whole-set decisions (top-rho selectors) also stay off the driver: :func:`exact_cutoffs` sorts
the ranking keys with Ray Data and fetches the one block that holds the cut-off row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A Ray-free batch transform and the resources of the actors that run it."""

    cls: type
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    batch_size: int = 256
    num_cpus: float = 0.1
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int = 1
    # torch threads of each actor when more than one: its OpenMP/MKL pools are sized to match
    # (Ray sets OMP_NUM_THREADS to an actor's whole CPUs, 1 for a fractional request; a pool
    # of 1 under torch.set_num_threads(2) was slower than one sized at start in a one-off
    # timing, not yet in a benchmark)
    threads: int = 0
    # warm workers (tasks, one instance per run and process; at most max_actors at once,
    # min_actors unused) or an actor pool; None: warm workers for a CPU-only stage, actors
    # for a GPU one
    warm: Optional[bool] = None

    @property
    def runs_warm(self) -> bool:
        return (not self.num_gpus) if self.warm is None else bool(self.warm)


def fuse(stages: Sequence[Stage], like: Stage) -> Stage:
    """``stages`` run one after another inside each actor of one pool, with ``like``'s
    resources and batch size. On CPU-only nodes every extra actor pool is a process to start
    (imports, its model or tokenizer) and a hop of each block through the object store, on the
    same cores the model needs; fused, a block goes read -> one actor -> write. A GPU layout
    keeps its stages apart, so that the GPU actor does not wait on CPU work."""
    specs = tuple((s.cls, s.args, s.kwargs) for s in stages)
    return Stage(_Chain, (specs,), batch_size=like.batch_size, num_cpus=like.num_cpus,
                 num_gpus=like.num_gpus, min_actors=like.min_actors, max_actors=like.max_actors,
                 threads=like.threads, warm=like.warm)


class _Chain:
    """Stages applied in order to each batch (see :func:`fuse`)."""

    def __init__(self, specs):
        self.stages = [cls(*args, **kwargs) for cls, args, kwargs in specs]

    def __call__(self, batch):
        for stage in self.stages:
            batch = stage(batch)
        return batch


@dataclass
class Plan:
    """Items -> read -> stages -> sink. ``read(item)`` yields Arrow tables of ``schema``."""

    items: list
    read: Callable[[Any], Iterator[pa.Table]]
    stages: list[Stage]
    sink: Any
    schema: Optional[pa.Schema] = None
    read_cpus: float = 0.25
    rows_per_write: Optional[int] = None  # rows a write task gathers before writing one file
    name: str = "pipeline"
    # live progress of the rows through the stages, on the driver: ``progress`` names the loop
    # in its lines ("[label] round 0"), ``unit`` what a row is, ``total`` the rows expected
    # (None: count and rate, no ETA). The stages' actors report counts to a 0-CPU actor.
    progress: Optional[str] = None
    unit: str = "rows"
    total: Optional[int] = None


def run(plan: Plan, *, local: bool = False) -> list[dict]:
    """Execute ``plan`` on the connected Ray cluster (or in-process); the sink's records."""
    return run_local(plan) if local else run_ray(plan)


def _progress(plan: Plan):
    from contextlib import nullcontext

    from xner_ray.logs import progress

    if plan.progress is None:
        return nullcontext(None)
    return progress(plan.progress, plan.total, plan.unit, logger=logger)


def run_local(plan: Plan) -> list[dict]:
    """The same plan in this process: one instance per stage, blocks in order."""
    stages = [s.cls(*s.args, **s.kwargs) for s in plan.stages]
    records: list[dict] = []
    pending: list[pa.Table] = []
    rows = 0
    with _progress(plan) as bar:
        for item in plan.items:
            for table in plan.read(item):
                n_in = table.num_rows
                for stage, spec in zip(stages, plan.stages):
                    table = _in_batches(stage, table, spec.batch_size)
                if bar is not None:
                    bar.update(n_in)
                pending.append(table)
                rows += table.num_rows
                if plan.rows_per_write is None or rows >= plan.rows_per_write:
                    records += plan.sink.write(pending)
                    pending, rows = [], 0
        if pending:
            records += plan.sink.write(pending)
    return records


def _in_batches(stage, table: pa.Table, size: int) -> pa.Table:
    if table.num_rows <= size:
        return stage(table)
    return pa.concat_tables([stage(table.slice(i, size)) for i in range(0, table.num_rows, size)])


def dataset(items: list, read: Callable[[Any], Iterator[pa.Table]], *,
            schema: Optional[pa.Schema] = None, read_cpus: float = 0.25):
    """A Ray dataset with one read task per item (a file, a pair of files...)."""
    import ray

    return ray.data.read_datasource(_item_source(items, read, schema), num_cpus=read_cpus)


def _apply_stages(ds, stages: Sequence[Stage], counter=None, token: Optional[str] = None):
    """The stages as warm-worker tasks or actor pools (:attr:`Stage.runs_warm`); with
    ``counter``, the last stage reports the rows that came through every stage
    (fire-and-forget calls to the counter actor, under ``token``)."""
    import uuid

    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    token = token or uuid.uuid4().hex
    idle_s = warm_idle_s() if any(s.runs_warm for s in stages) else 0.0  # checked here
    for i, s in enumerate(stages):
        report = counter if i == len(stages) - 1 else None
        if s.runs_warm:
            ds = ds.map_batches(_warm_call, batch_size=s.batch_size, batch_format="pyarrow",
                                fn_kwargs=dict(key=(token, i), spec=(s.cls, s.args, s.kwargs),
                                               counter=report, idle_s=idle_s),
                                compute=TaskPoolStrategy(size=s.max_actors),
                                num_cpus=s.num_cpus, num_gpus=s.num_gpus,
                                **worker_env(s.threads, pool=stage_names(s)))
            # Ray Data's resource reservation splits the cluster evenly between a dataset's
            # operators and lets a task pool exceed its share by one task only: beside the
            # read and write operators, two 0.75-CPU teacher tasks never ran together on 2
            # CPUs (actor pools are sized apart from it). Without it, tasks are bounded by
            # the pool size and the cluster; memory stayed flat streaming 2M sentences
            # through a 75 MiB object store (benchmarks/streaming_memory.py).
            ds.context.op_resource_reservation_enabled = False
            continue
        cls, args, kwargs = s.cls, s.args, s.kwargs
        if report is not None:
            cls, args, kwargs = _Counted, (report, token, s.cls, s.args, s.kwargs), {}
        ds = ds.map_batches(cls, fn_constructor_args=args, fn_constructor_kwargs=kwargs,
                            batch_size=s.batch_size, batch_format="pyarrow",
                            compute=ActorPoolStrategy(min_size=s.min_actors,
                                                      max_size=s.max_actors),
                            num_cpus=s.num_cpus, num_gpus=s.num_gpus, **worker_env(s.threads))
    return ds


def worker_env(threads: int, pool: Optional[str] = None) -> dict:
    """Ray remote args for a stage's workers (merged into the job's runtime env): OpenMP/MKL
    pools sized to ``threads`` (when more than one; nothing for one thread, Ray's own default
    for a fractional CPU request) and, for warm workers, a
    pool name. Ray hands a task only to an idle worker started with the same runtime env, so
    the name keeps a stage's tasks in the processes that hold its imports and tokenizer
    (instead of the read and write tasks' workers, where each would start cold)."""
    env = {}
    if threads > 1:
        n = str(int(threads))
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    if pool:
        env["XNER_WORKER_POOL"] = pool
    return {"runtime_env": {"env_vars": env}} if env else {}


def stage_names(stage: Stage) -> str:
    """The classes a stage runs, fused ones joined by ``+`` (its warm workers' pool name)."""
    names = ([c.__name__ for c, _, _ in stage.args[0]] if stage.cls is _Chain
             else [stage.cls.__name__])
    return "+".join(names)


# per worker process: {(run token, stage index): stage}, one run's (see _warm_call)
_WARM: dict = {}
_WARM_STATE = {"last": 0.0, "busy": 0, "reaper": None, "lock": None, "idle_s": 0.0}
WARM_IDLE_ENV = "XNER_WARM_IDLE_S"
DEFAULT_WARM_IDLE_S = 60.0


def warm_idle_s() -> float:
    """How long a warm worker keeps its stages after its last batch (``$XNER_WARM_IDLE_S``,
    default 60 s; 0 or less: until the next run's first call there)."""
    import os

    text = os.environ.get(WARM_IDLE_ENV, "")
    try:
        return float(text) if text else DEFAULT_WARM_IDLE_S
    except ValueError:
        raise ValueError(f"${WARM_IDLE_ENV}={text!r} is not a number of seconds") from None


def _warm_reaper() -> None:
    """Free this process's stages (their models) once no batch came for the last run's
    :func:`warm_idle_s`: idle workers stay alive for the next run's imports and tokenizer
    cache, but must not hold a model each while the node trains. The process keeps everything
    else it imported."""
    import gc
    import time

    lock = _WARM_STATE["lock"]
    while True:
        idle_s = _WARM_STATE["idle_s"]
        time.sleep(min(max(idle_s / 4, 0.05), 10.0) if idle_s > 0 else 10.0)
        with lock:
            if idle_s <= 0 or not _WARM or _WARM_STATE["busy"] or \
                    time.monotonic() - _WARM_STATE["last"] <= idle_s:
                continue
            _WARM.clear()
        gc.collect()


def _warm_call(batch, *, key: tuple, spec: tuple, counter=None,
               idle_s: float = DEFAULT_WARM_IDLE_S):
    """One stage call in a warm worker: the stage is built at the run's first call in this
    process and kept for the run's later calls. Another run's first call here frees it (its
    model), as does no call for ``idle_s`` (the driver's :func:`warm_idle_s`): different runs
    never share an instance, and a process holds one run's stages at most. Building one in a
    warm process costs what the stage itself loads (the imports and the tokenizer's cache
    stay; ``benchmarks/worker_startup.py``), so runs that interleave on one worker rebuild
    cheaply."""
    import threading
    import time

    if _WARM_STATE["lock"] is None:
        _WARM_STATE["lock"] = threading.Lock()
    _WARM_STATE["idle_s"] = idle_s
    if _WARM_STATE["reaper"] is None and idle_s > 0:
        _WARM_STATE["reaper"] = threading.Thread(target=_warm_reaper, daemon=True,
                                                 name="xner-warm-reaper")
        _WARM_STATE["reaper"].start()
    lock = _WARM_STATE["lock"]
    with lock:
        _WARM_STATE["busy"] += 1
        stage = _WARM.get(key)
        if stage is None:
            for k in [k for k in _WARM if k[0] != key[0]]:
                del _WARM[k]
    try:
        if stage is None:
            cls, args, kwargs = spec
            stage = cls(*args, **kwargs)
            with lock:
                _WARM[key] = stage
        out = stage(batch)
    finally:
        with lock:
            _WARM_STATE["busy"] -= 1
            _WARM_STATE["last"] = time.monotonic()
    if counter is not None:
        counter.add.remote(key[0], batch.num_rows)
    return out


class _Counted:
    """A stage that reports how many rows it processed to a counter actor."""

    def __init__(self, counter, token, cls, args, kwargs):
        self.counter, self.token, self.inner = counter, token, cls(*args, **kwargs)

    def __call__(self, batch):
        out = self.inner(batch)
        self.counter.add.remote(self.token, batch.num_rows)
        return out


class _RowCounter:
    """Rows done per run (the runs of one driver share this actor: one process, not one per
    run)."""

    def __init__(self):
        self.n: dict = {}

    def add(self, token: str, n: int) -> None:
        self.n[token] = self.n.get(token, 0) + n

    def get(self, token: str) -> int:
        return self.n.get(token, 0)

    def drop(self, token: str) -> None:
        self.n.pop(token, None)


_COUNTER: dict = {}  # (Ray job id, driver's node id) -> this driver's counter actor


def _counter():
    import ray

    ctx = ray.get_runtime_context()  # a new cluster may number its jobs the same
    job = (ctx.get_job_id(), ctx.get_node_id())
    if job not in _COUNTER:
        _COUNTER.clear()
        _COUNTER[job] = ray.remote(num_cpus=0)(_RowCounter).remote()
    return _COUNTER[job]


def run_ray(plan: Plan) -> list[dict]:
    import threading
    import time
    import uuid

    import ray

    token = uuid.uuid4().hex
    with _progress(plan) as bar:
        counter = None if bar is None else _counter()
        ds = _apply_stages(dataset(plan.items, plan.read, schema=plan.schema,
                                   read_cpus=plan.read_cpus), plan.stages, counter, token)
        if bar is None:
            return write(ds, plan.sink, rows_per_write=plan.rows_per_write)
        stop = threading.Event()
        seen = [0]

        def poll() -> None:
            try:
                n = ray.get(counter.get.remote(token), timeout=10)
            except Exception:  # a slow answer skips one update, nothing more
                return
            bar.update(n - seen[0])
            seen[0] = n

        def watch() -> None:
            while not stop.wait(1.0):
                poll()

        watcher = threading.Thread(target=watch, name="xner-progress", daemon=True)
        watcher.start()
        try:
            records = write(ds, plan.sink, rows_per_write=plan.rows_per_write)
            stop.set()
            watcher.join(timeout=15)
            # the last counts: the stages finished before the writes did, and their
            # fire-and-forget reports may still be on the way (up to ~2 s)
            for _ in range(10):
                before = seen[0]
                poll()
                if plan.total is not None and seen[0] >= plan.total:
                    break
                if seen[0] == before and seen[0] > 0:
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            counter.drop.remote(token)
        return records


def write(ds, sink, *, rows_per_write: Optional[int] = None, num_cpus: float = 0.1) -> list[dict]:
    """Write a Ray dataset through a Ray-free sink in write tasks; the sink's records."""
    datasink = _make_datasink(sink, rows_per_write)
    ds.write_datasink(datasink, ray_remote_args={"num_cpus": num_cpus})
    return datasink.records


def _make_datasink(sink, rows_per_write: Optional[int]):
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class SinkAdapter(Datasink):
        """Write tasks call the sink; the driver keeps only the records they return."""

        def __init__(self):
            self.records: list[dict] = []

        def write(self, blocks, ctx) -> list[dict]:
            return sink.write([BlockAccessor.for_block(b).to_arrow() for b in blocks])

        def on_write_complete(self, write_result) -> None:
            self.records = [r for task in write_result.write_returns for r in task]

        @property
        def min_rows_per_write(self) -> Optional[int]:
            return rows_per_write

        def get_name(self) -> str:
            return type(sink).__name__

    return SinkAdapter()


def _item_source(items: list, read: Callable, schema: Optional[pa.Schema]):
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class ItemSource(Datasource):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
            tasks = []
            for item in items:
                meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                     input_files=None)
                tasks.append(ReadTask(lambda item=item: read(item), meta, schema=schema,
                                      per_task_row_limit=per_task_row_limit))
            return tasks

    return ItemSource()


# -- whole-set decisions -------------------------------------------------------------------------
class KeyStage:
    """Ranking keys of a set selector: columns ``key_0..key_{K-1}`` and ``sent_id``."""

    def __init__(self, selector):
        self.selector = selector

    def __call__(self, table: pa.Table) -> pa.Table:
        keys, _ = self.selector.batch_keys(table)
        keys = np.asarray(keys, dtype=np.float64).reshape(table.num_rows, -1)
        out = {f"key_{k}": keys[:, k] for k in range(keys.shape[1])}
        return pa.table({**out, "sent_id": table.column("sent_id")})


def _cutoff(key: float, sent_id: str, k: int, n: int) -> tuple:
    if k >= n:
        return ("all",)
    if k == 0:
        return ("none",)
    return ("at", key, sent_id)


def exact_cutoffs(files: list[str], filesystem, selector, n_rows: int, *,
                  local: bool = False) -> list[tuple]:
    """Each ranking's cut-off of a set selector over the rows of ``files`` (Parquet).

    Ray: the keys are computed in tasks, sorted by Ray Data (key, then sent_id: ties broken as
    the selector does) and only the block holding row k-1 is fetched -- the driver never holds
    the set. ``local``: the same, in memory (tests, the in-process runner)."""
    from xner_ray.selectors import n_kept

    k = n_kept(selector.rho, n_rows)
    stage = KeyStage(selector)
    if local or k in (0, n_rows):
        return _cutoffs_local(files, filesystem, stage, k, n_rows, selector)
    import ray

    keys = ray.data.read_parquet(files, filesystem=filesystem,
                                 columns=list(dict.fromkeys([*selector.rank_columns, "sent_id"])),
                                 num_cpus=0.1)
    keys = keys.map_batches(stage, batch_format="pyarrow", num_cpus=0.1).materialize()
    n_keys = len([c for c in keys.schema().names if c.startswith("key_")])
    return [_kth_row(keys.select_columns([f"key_{j}", "sent_id"]).sort([f"key_{j}", "sent_id"]),
                     f"key_{j}", k, n_rows) for j in range(n_keys)]


def _kth_row(sorted_ds, key: str, k: int, n: int) -> tuple:
    import ray
    from ray.data.block import BlockAccessor

    seen = 0
    for bundle in sorted_ds.iter_internal_ref_bundles():
        for entry in bundle.blocks:
            ref, meta = (entry.ref, entry.metadata) if hasattr(entry, "ref") else entry
            if seen + meta.num_rows >= k:
                block = BlockAccessor.for_block(ray.get(ref)).to_arrow()
                row = block.slice(k - 1 - seen, 1).to_pylist()[0]
                return _cutoff(row[key], row["sent_id"], k, n)
            seen += meta.num_rows
    raise RuntimeError(f"sorted keys hold {seen} rows, expected {n}")


def _cutoffs_local(files, filesystem, stage: KeyStage, k: int, n: int, selector) -> list[tuple]:
    import pyarrow.parquet as pq

    from xner_ray.selectors import cutoffs_from_keys

    cols = list(dict.fromkeys([*selector.rank_columns, "sent_id"]))
    tables = [stage(pq.read_table(f, filesystem=filesystem, columns=cols)) for f in files]
    if not tables:
        return [("none",)]
    keys = pa.concat_tables(tables)
    names = [c for c in keys.column_names if c.startswith("key_")]
    matrix = np.stack([keys.column(c).to_numpy() for c in names], axis=1)
    return cutoffs_from_keys(matrix, np.asarray(keys.column("sent_id").to_pylist(), dtype=str),
                             selector.rho)


def map_files(files: list[str], filesystem, stages: Sequence[Stage], sink, *,
              columns: Optional[list[str]] = None, local: bool = False) -> list[dict]:
    """Read Parquet ``files`` (only ``columns``), run ``stages``, write through ``sink``."""
    if local:
        import pyarrow.parquet as pq

        plan = Plan(items=list(files), stages=list(stages), sink=sink,
                    read=lambda f: iter([pq.read_table(f, filesystem=filesystem,
                                                       columns=columns)]))
        return run_local(plan)
    import ray

    ds = ray.data.read_parquet(files, filesystem=filesystem, columns=columns, num_cpus=0.1)
    return write(_apply_stages(ds, stages), sink)
