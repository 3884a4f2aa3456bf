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
    r = cluster.derive_workers()
    assert (r.num_workers, r.cpus_per_worker, r.use_gpu, r.torch_threads) == expect
    assert r.num_workers * r.cpus_per_worker <= cpus - 1


def test_impossible_requests_are_clear(monkeypatch):
    monkeypatch.setattr(cluster, "cluster_cpus_gpus", lambda: (2.0, 0.0))
    with pytest.raises(ValueError, match="no GPU"):
        cluster.derive_workers(use_gpu=True)
    with pytest.raises(ValueError, match="5 workers x 0.5 CPU do not fit"):
        cluster.derive_workers(num_workers=5)
