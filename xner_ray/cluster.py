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
             quiet: bool = True) -> None:
    """Join the cluster at ``address`` / ``$RAY_ADDRESS`` or start a local one in-process.

    ``quiet`` keeps Ray's own console output to what a user acts on: Ray's driver logs at
    WARNING, Ray Data without execution plans or progress bars (``ray-data.log`` keeps them),
    and Ray Train's print patch off (it logs every worker ``print`` a second time). A private
    local cluster also filters Ray Train's State-API polling warning in its workers (see
    :mod:`xner_ray.logs`): it has no dashboard, which would cost ~10 processes and ~1 GB to
    serve a check that matters only on a long-lived cluster.
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
                 runtime_env=runtime_env, **kwargs)
    if quiet:
        logs.quiet_ray_data()


def cluster_cpus_gpus() -> tuple[float, float]:
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))


@dataclass(frozen=True)
class WorkerResources:
    num_workers: int
    cpus_per_worker: float
    use_gpu: bool
    torch_threads: int


def derive_workers(num_workers: Optional[int] = None, use_gpu: Optional[bool] = None,
                   *, reserve_cpus: Optional[float] = None) -> WorkerResources:
    """Training/inference worker layout for the connected cluster.

    GPU clusters: one worker per GPU with an equal share of the CPUs. CPU clusters: ``reserve``
    CPUs (default a quarter of the cluster, at least one: a Ray Data task asks for a whole CPU
    unless told otherwise) stay free for the data pipeline; the rest is split across the
    workers in half-CPU steps, one worker per ~8 CPUs by default (torch's intra-op threads stop
    paying off beyond that).
    """
    cpus, gpus = cluster_cpus_gpus()
    if cpus <= 0:
        raise RuntimeError("the Ray cluster reports no CPUs")
    gpu = bool(gpus >= 1) if use_gpu is None else use_gpu
    if gpu and gpus < 1:
        raise ValueError("use_gpu=True but the cluster has no GPU")
    reserve = max(1.0, cpus / 4) if reserve_cpus is None else reserve_cpus
    n = num_workers or (int(gpus) if gpu else max(1, int((cpus - reserve) // 8)))
    per = max(0.5, math.floor(2 * (cpus - reserve) / n) / 2)
    if n * per > cpus:
        raise ValueError(f"{n} workers x {per} CPU do not fit a cluster of {cpus:g} CPUs")
    return WorkerResources(n, per, gpu, torch_threads=max(1, int(per)))
