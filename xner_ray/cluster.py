"""Connecting to Ray and deriving resources from the cluster (never hard-coded).

Library code never calls ``ray.init`` on its own; entry points (CLI, jobs) call
:func:`init_ray` once. Resources are read off the cluster: on a 2-core laptop an actor or
training worker that asks for a whole CPU starves Ray Data's read tasks and the job hangs
(PLATFORM.md), so CPU-only workers ask for fractions and leave room for the data pipeline.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger(__name__)


def init_ray(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
             object_store_memory: Optional[int] = None, quiet: bool = True) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS`` or start a local one in-process.

    ``quiet`` keeps Ray's own console output to what a user acts on: Ray's driver logs at
    WARNING, Ray Data without execution plans or progress bars (``ray-data.log`` keeps them),
    and Ray Train's print patch off (it logs every worker ``print`` a second time). A private
    local cluster also filters Ray Train's State-API polling warning in its workers (see
    :mod:`xner_ray.logs`): it has no dashboard, which would cost ~10 processes and ~1 GB to
    serve a check that matters only on a long-lived cluster. ``num_cpus`` and
    ``object_store_memory`` (bytes) size a private cluster only.
    """
    import ray

    from xner_ray import logs

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # (a value the user or the job's runtime env set wins; repeating its key would conflict)
    env_vars = ({} if not quiet or "RAY_TRAIN_ENABLE_PRINT_PATCH" in os.environ
                else {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"})
    kwargs: dict = dict(log_to_driver=True, configure_logging=True,
                        logging_level=logging.WARNING if quiet else logging.INFO)
    if address:
        # A shared cluster (`ray start --head`) runs its dashboard, so the State API is there.
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None,
                 **kwargs)
    else:
        # A private cluster for this process, without the dashboard (a web service nobody
        # asked for). Workers inherit this process's environment.
        os.environ.update(env_vars)
        logs.filter_ray_messages()
        runtime_env = {"worker_process_setup_hook": "xner_ray.logs.quiet_ray_worker"} \
            if quiet else None
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 object_store_memory=object_store_memory, runtime_env=runtime_env,
                 _system_config=local_system_config(num_cpus), **kwargs)
    if quiet:
        logs.quiet_ray_data()
    check_workers()


IDLE_WORKERS_ABOVE_CPUS = 8


def local_system_config(num_cpus: Optional[int] = None) -> dict:
    """Ray settings of a private local cluster: keep idle workers alive (``engine``'s warm
    workers). Ray retires idle workers beyond ``num_workers_soft_limit`` (default: the
    node's CPUs) after a second; on a small node the pipeline's own processes (two
    teacher workers, read and write workers, Ray Data's helper actors, the progress
    counter) already exceed it, so every run would start its workers cold again. A value
    in ``$RAY_num_workers_soft_limit`` wins (the same setting for ``ray start`` nodes)."""
    if os.environ.get("RAY_num_workers_soft_limit", "").strip():
        return {}
    cpus = num_cpus or os.cpu_count() or 1
    return {"num_workers_soft_limit": int(cpus) + IDLE_WORKERS_ABOVE_CPUS}


def _package_file() -> str:
    import xner_ray

    return xner_ray.__file__


def check_workers(timeout_s: float = 120.0) -> str:
    """Fail fast, with the fix in the message, when Ray cannot start a worker that imports
    xner_ray (the package not installed where the workers run, a stale editable install, a
    worker set-up hook that fails): Ray Data would otherwise restart its actors forever, which
    looks like a hang. One 0-CPU task without retries; returns where the worker found the
    package."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError

    ref = ray.remote(num_cpus=0, max_retries=0)(_package_file).remote()
    fix = ("install the package where the workers run (pip install -e . on every node or in "
           "its image), or submit the job with `ray job submit --working-dir . -- python "
           "jobs/...`; the worker logs are under /tmp/ray/session_latest/logs on that node")
    try:
        return ray.get(ref, timeout=timeout_s)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise RuntimeError(f"no Ray worker started and imported xner_ray within "
                           f"{timeout_s:.0f} s; if workers fail to start, {fix}") from None
    except RayError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"Ray workers cannot start with xner_ray ({type(exc).__name__}: "
                           f"{reason}); {fix}") from exc


def cluster_cpus_gpus() -> tuple[float, float]:
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


@dataclass(frozen=True)
class WorkerResources:
    num_workers: int          # the most workers / actors to plan for
    cpus_per_worker: float
    use_gpu: bool
    torch_threads: int
    gpus_per_worker: float = 0.0
    min_workers: int = 1      # actor pools scale between min_workers and num_workers


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"${name} must be a number, got {value!r}") from None


def _gpu_node_cpu_share() -> Optional[float]:
    """CPUs per GPU on the smallest GPU node present (None when no GPU node is up yet)."""
    import ray

    shares = [n["Resources"].get("CPU", 0.0) / n["Resources"]["GPU"] for n in ray.nodes()
              if n.get("Alive") and n["Resources"].get("GPU", 0) >= 1]
    return min(shares) if shares else None


def _gpu_plan(gpus: float, num_workers: Optional[int], per_gpu: int) -> WorkerResources:
    """GPU workers are *asked for*, not checked: a request no node can hold yet is a pending
    resource demand, and the autoscaler starts a GPU node for it. ``$XNER_MAX_GPUS`` (set on a
    cluster whose GPU group scales from 0) is how many GPUs the plan may grow to."""
    max_gpus = max(int(gpus), int(_env_number("XNER_MAX_GPUS", 0)), 1)
    n = num_workers or max_gpus * per_gpu
    share = _gpu_node_cpu_share()
    per_gpu_cpus = share if share is not None else _env_number("XNER_CPUS_PER_GPU", 1.0)
    # leave a quarter of a GPU node's CPUs (at least one) to the data pipeline beside it
    per = max(0.5, math.floor(2 * (per_gpu_cpus - max(1.0, per_gpu_cpus / 4)) / per_gpu) / 2)
    return WorkerResources(n, per, True, torch_threads=max(1, int(per)),
                           gpus_per_worker=1.0 / per_gpu, min_workers=1)


def derive_workers(num_workers: Optional[int] = None, use_gpu: Optional[bool] = None,
                   *, reserve_cpus: Optional[float] = None) -> WorkerResources:
    """Training worker layout for the connected cluster.

    GPU (present, or asked for with ``use_gpu=True``): one worker per GPU (see
    :func:`_gpu_plan`). CPU clusters: ``reserve`` CPUs (default a quarter of the cluster, at
    least one) stay free for the data pipeline; the rest is split across the workers in
    half-CPU steps, one worker per ~8 CPUs by default (torch's intra-op threads stop paying
    off beyond that).
    """
    cpus, gpus = cluster_cpus_gpus()
    max_gpus = max(gpus, _env_number("XNER_MAX_GPUS", 0))
    gpu = bool(max_gpus >= 1) if use_gpu is None else use_gpu
    if gpu:
        return _gpu_plan(gpus, num_workers, per_gpu=1)
    if cpus <= 0:
        raise RuntimeError("the Ray cluster reports no CPUs")
    reserve = max(1.0, cpus / 4) if reserve_cpus is None else reserve_cpus
    n = num_workers or max(1, int((cpus - reserve) // 8))
    per = max(0.5, math.floor(2 * (cpus - reserve) / n) / 2)
    if n * per > cpus:
        raise ValueError(f"{n} workers x {per} CPU do not fit a cluster of {cpus:g} CPUs")
    return WorkerResources(n, per, False, torch_threads=max(1, int(per)), min_workers=n)


# Logical CPUs of the light labeling tasks and actors around the teachers (read tasks, the
# sub-word and selector actors, write tasks): what the teacher layout leaves free for them.
LIGHT_CPUS = 0.1


def inference_layout(num_actors: Optional[int] = None, use_gpu: Optional[bool] = None,
                     threads: Optional[int] = None, *, actors_per_gpu: int = 2
                     ) -> WorkerResources:
    """Teacher actors for labeling (issue 14: actors x threads from the cluster, overridable).

    GPU: ``actors_per_gpu`` actors share each device (fractional GPUs), so one actor's CPU work
    (tokenizing, post-processing, writing) overlaps another's forward. CPU: torch threads per
    actor ``threads`` (default 1 on <= 4 CPUs, 2 on <= 16, else 4: intra-op threads stop
    paying off and collapse under load on shared cores, PLATFORM.md), one actor per ``threads``
    cores; each asks for an equal share of what the light tasks leave (they need ~0.5 CPU
    together: asking for a whole CPU per actor is how a 2-core machine hangs).
    """
    cpus, gpus = cluster_cpus_gpus()
    max_gpus = max(gpus, _env_number("XNER_MAX_GPUS", 0))
    if (bool(max_gpus >= 1) if use_gpu is None else use_gpu):
        return _gpu_plan(gpus, num_actors, per_gpu=actors_per_gpu)
    if cpus <= 0:
        raise RuntimeError("the Ray cluster reports no CPUs")
    t = threads or (1 if cpus <= 4 else 2 if cpus <= 16 else 4)
    n = num_actors or max(1, int(cpus // t))
    free = cpus - 5 * LIGHT_CPUS
    per = math.floor(100 * free / n) / 100
    if per < 0.05:
        raise ValueError(f"{n} teacher actors do not fit a cluster of {cpus:g} CPUs")
    return WorkerResources(n, per, False, torch_threads=t, min_workers=n)
