"""Labeling on a real multi-node Ray cluster: a head of 0 CPUs and two worker nodes.

Run as a script (its own process: a test session holds one in-process cluster already):

    python tests/_multinode.py TEACHER_DIR STORE_URI INPUT

Every read, stage and write task must run on the worker nodes (the head has no CPU to give),
and the driver must receive only the sink's records. Prints one JSON object on its last line.
"""

from __future__ import annotations

import json
import sys


def main(teacher: str, store: str, data: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        from xner_ray import engine
        from xner_ray.labeling.pipeline import LabelConfig, label

        head = ray.get_runtime_context().get_node_id()
        seen: list[dict] = []
        real_run = engine.run_ray

        def recording_run(plan):
            records = real_run(plan)
            seen.extend(records)
            return records

        engine.run_ray = recording_run
        summary = label(LabelConfig(teachers=[teacher], store=store, run_id="mn",
                                    inputs=[{"path": data, "lang": "de"}], block_rows=64,
                                    rows_per_file=100, selector="top_rho:confidence:0.5"))
        nodes = sorted({r["node"] for r in seen})
        return {"summary": summary, "write_nodes": nodes, "head": head,
                "workers": sorted(n.node_id for n in workers), "records": len(seen),
                "record_keys": sorted({k for r in seen for k in r})}
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
