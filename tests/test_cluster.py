"""Worker layouts derived from the cluster's resources (no hard-coded CPUs)."""

from __future__ import annotations

import pytest

from xner_ray import cluster


@pytest.mark.parametrize("cpus,gpus,expect", [
    (2, 0, (1, 1.0, False, 1)),     # a laptop: one worker, one CPU left to Ray Data tasks
    (4, 0, (1, 3.0, False, 3)),
    (64, 0, (6, 8.0, False, 8)),    # 48 CPUs for workers, one per ~8
    (16, 2, (2, 6.0, True, 6)),     # one worker per GPU, CPUs shared out
])
def test_derived_layouts(monkeypatch, cpus, gpus, expect):
    monkeypatch.setattr(cluster, "cluster_cpus_gpus", lambda: (float(cpus), float(gpus)))
    monkeypatch.setattr(cluster, "_gpu_node_cpu_share", lambda: cpus / gpus if gpus else None)
    r = cluster.derive_workers()
    assert (r.num_workers, r.cpus_per_worker, r.use_gpu, r.torch_threads) == expect
    assert r.num_workers * r.cpus_per_worker <= cpus - 1


def test_impossible_requests_are_clear(monkeypatch):
    monkeypatch.setattr(cluster, "cluster_cpus_gpus", lambda: (2.0, 0.0))
    with pytest.raises(ValueError, match="5 workers x 0.5 CPU do not fit"):
        cluster.derive_workers(num_workers=5)


def test_gpus_are_asked_for_not_checked(monkeypatch):
    """use_gpu on a cluster with no GPU node yet plans GPU workers (pending demands the
    autoscaler answers); $XNER_MAX_GPUS says how many the GPU group may grow to."""
    monkeypatch.setattr(cluster, "cluster_cpus_gpus", lambda: (8.0, 0.0))
    monkeypatch.setattr(cluster, "_gpu_node_cpu_share", lambda: None)
    r = cluster.derive_workers(use_gpu=True)
    assert (r.num_workers, r.use_gpu, r.gpus_per_worker) == (1, True, 1.0)
    monkeypatch.setenv("XNER_MAX_GPUS", "4")
    monkeypatch.setenv("XNER_CPUS_PER_GPU", "8")
    r = cluster.derive_workers()  # use_gpu unset: the GPUs that may come count
    assert (r.num_workers, r.use_gpu, r.cpus_per_worker, r.min_workers) == (4, True, 6.0, 1)
    lab = cluster.inference_layout()
    assert (lab.num_workers, lab.gpus_per_worker, lab.cpus_per_worker) == (8, 0.5, 3.0)


@pytest.mark.parametrize("cpus,expect", [
    (2, (2, 0.75, 1)),      # 2 actors x 1 thread; 0.5 CPU left to reads, tokenizer, writes
    (8, (4, 1.87, 2)),
    (64, (16, 3.96, 4)),
])
def test_inference_layout_on_cpus(monkeypatch, cpus, expect):
    monkeypatch.setattr(cluster, "cluster_cpus_gpus", lambda: (float(cpus), 0.0))
    r = cluster.inference_layout()
    assert (r.num_workers, r.cpus_per_worker, r.torch_threads) == expect
    assert r.num_workers * r.cpus_per_worker + 5 * cluster.LIGHT_CPUS <= cpus
    assert cluster.inference_layout(num_actors=1, threads=2).num_workers == 1


def test_workers_that_import_the_package_pass_the_check(ray_cluster):
    assert cluster.check_workers(timeout_s=60).endswith("xner_ray/__init__.py")


def test_workers_that_cannot_start_fail_fast_with_the_fix():
    """A worker set-up hook that cannot be imported (what a stale install on the nodes looks
    like): a clear error in seconds, not Ray Data restarting its actors forever."""
    import subprocess
    import sys

    code = ("import ray, time\n"
            "ray.init(address='local', num_cpus=1, include_dashboard=False, "
            "logging_level='ERROR', runtime_env={'worker_process_setup_hook': "
            "'no_such_package.hook'})\n"
            "from xner_ray.cluster import check_workers\n"
            "t0 = time.time()\n"
            "try:\n"
            "    check_workers(timeout_s=90)\n"
            "except RuntimeError as exc:\n"
            "    print('ERROR', round(time.time() - t0), exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=240).stdout
    line = [x for x in out.splitlines() if x.startswith("ERROR")]
    assert line, out
    assert "cannot start with xner_ray" in line[0] and "--working-dir" in line[0]
    assert int(line[0].split()[1]) < 60
