"""The distributed data path against real parts: an S3 server (moto_server on 127.0.0.1), a
multi-node Ray cluster (a 0-CPU head and two worker nodes), a write task killed mid-round.

The S3 and multi-node runs start their own processes: a fresh process starts its own Ray
cluster, whose workers inherit the S3 settings from the environment, as a user's would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from xner_ray.demo import sample_path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on a free loopback port, a bucket, and the env that points at it."""
    boto3 = pytest.importorskip("boto3")
    if shutil.which("moto_server") is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = _free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                              aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name="us-east-1")
        for _ in range(100):
            try:
                client.create_bucket(Bucket="xner-test")
                break
            except Exception:  # the server is still starting
                time.sleep(0.1)
        else:
            pytest.fail("moto_server did not start")
        yield {**os.environ, **env}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _run(argv: list[str], env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{argv} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def _sql(store: str, query: str, env: dict) -> list:
    out = _run([sys.executable, "-m", "xner_ray.cli", "sql", "--store", store, "--format", "json",
                query], env)
    return json.loads(out.stdout.strip().splitlines()[-1] if out.stdout.strip().startswith("[")
                      else out.stdout)


def _s3_files(env: dict, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"],
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="xner-test", Prefix=prefix)
    return [o["Key"] for p in pages for o in p.get("Contents", [])]


@pytest.mark.slow
def test_label_and_sql_on_object_storage(s3_env, tiny_teacher_dir, tmp_path):
    store = "s3://xner-test/label-store"
    _run([sys.executable, "-m", "xner_ray.cli", "label", "--model", str(tiny_teacher_dir),
          "--store", store, "--run-id", "s3", "--input", str(sample_path("de.dev.txt")),
          "--lang", "de", "--gold", "--selector", "top_rho:confidence:0.5"], s3_env)
    keys = _s3_files(s3_env, "label-store/")
    assert any(k.startswith("label-store/pseudo_labels/run_id=s3/lang=de/round=0/") for k in keys)
    assert any(k.startswith("label-store/decisions/run_id=s3/") for k in keys)
    # the attempt's files are gone after the commit (S3 keeps empty "folder/" marker keys)
    assert not any("/_tmp/" in k and not k.endswith("/") for k in keys)
    rows = _sql(store, "SELECT count(*)::INT AS n, sum(selected::INT)::INT AS kept "
                "FROM pseudo_labels", s3_env)
    assert rows == [{"n": 300, "kept": 150}]


def test_model_folder_fetched_once_per_node(s3_env, tiny_teacher_dir, tmp_path, monkeypatch):
    """A model URI is downloaded into the node's cache once; a rewritten folder at the same URI
    gets a new copy; a URI with no model under it is an error naming it."""
    import boto3

    from xner_ray.models.cache import COMPLETE, fetch_model
    from xner_ray.models.classifier import load_token_classifier

    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.setenv(k, s3_env[k])
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"],
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    for f in tiny_teacher_dir.iterdir():
        client.upload_file(str(f), "xner-test", f"models/teacher/{f.name}")
    uri = "s3://xner-test/models/teacher"
    cache = tmp_path / "cache"
    first = fetch_model(uri, cache)
    assert sorted(p.name for p in first.iterdir()) == sorted(
        [COMPLETE, *(f.name for f in tiny_teacher_dir.iterdir())])
    stamp = (first / COMPLETE).stat().st_mtime_ns
    assert fetch_model(uri, cache) == first and (first / COMPLETE).stat().st_mtime_ns == stamp
    monkeypatch.setenv("XNER_CACHE_DIR", str(cache))
    model = load_token_classifier(uri)  # every loader goes through the cache
    assert model.config.num_labels == 7
    client.put_object(Bucket="xner-test", Key="models/teacher/README.md", Body=b"changed")
    second = fetch_model(uri, cache)
    assert second != first and (second / "README.md").read_text() == "changed"
    with pytest.raises(FileNotFoundError, match="s3://xner-test/models/none"):
        fetch_model("s3://xner-test/models/none", cache)


@pytest.mark.slow
def test_rikd_round_on_object_storage(s3_env, tiny_teacher_dir, tiny_model_dir, tmp_path):
    store = "s3://xner-test/rikd-store"
    cfg = {"run_id": "r-s3", "store": str(tmp_path / "ignored"), "out": str(tmp_path / "out"),
           "source_dev": str(sample_path("en.dev.txt")), "teacher": str(tiny_teacher_dir),
           "targets": [{"lang": "de", "unlabeled": str(sample_path("de.dev.txt"))}],
           "rounds": 2, "warmup_steps": 2,
           "student": {"model": str(tiny_model_dir), "epochs": 1, "batch_size": 32, "lr": 3e-3,
                       "freeze_layers": 0, "freeze_embeddings": False}}
    path = tmp_path / "rikd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the students (and results.json) go to S3 too; every process fetches a model from there
    # into its node's cache (here: one node, one cache folder)
    out = "s3://xner-test/rikd-out"
    env = {**s3_env, "XNER_CACHE_DIR": str(tmp_path / "cache")}
    _run([sys.executable, "jobs/rikd.py", "--config", str(path), "--set", f"store={store}",
          "--set", f"out={out}"], env, timeout=900)
    rows = _sql(store, "SELECT round, count(*) AS n, count(policy_p) AS decided FROM "
                "pseudo_labels GROUP BY round ORDER BY round", s3_env)
    assert [r["round"] for r in rows] == [0, 1]
    assert all(r["n"] == 300 and r["decided"] > 0 for r in rows)
    # round 1's teacher is round 0's student: the job ran teacher -> label -> student -> next
    keys = _s3_files(s3_env, "rikd-out/")
    assert "rikd-out/results.json" in keys
    for k in (0, 1):
        assert {f"rikd-out/de/round{k}/{f}" for f in ("model.safetensors", "config.json",
                "train_summary.json", "round_summary.json", "README.md")} <= set(keys)
    assert not any("_checkpoints" in k and not k.endswith("/") for k in keys)  # removed
    assert not (tmp_path / "out").exists()  # nothing on the driver's disk
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"],
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    results = json.loads(client.get_object(Bucket="xner-test", Key="rikd-out/results.json")
                         ["Body"].read())
    assert results["de"][0]["student"] == f"{out}/de/round0"
    assert results["de"][1]["teacher"] == results["de"][0]["student"]
    # round 0's student, labeling round 1 (and evaluated), came through the cache, once
    cached = list((tmp_path / "cache" / "remote-models").glob("round0-*"))
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()


@pytest.mark.slow
def test_labeling_runs_on_worker_nodes_only(tiny_teacher_dir, tmp_path):
    """Head of 0 CPUs + two 1-CPU worker nodes: every write happens on a worker node, and
    the driver gets records (paths, counts), never rows."""
    store = tmp_path / "store"
    out = _run([sys.executable, "tests/_multinode.py", str(tiny_teacher_dir), str(store),
                str(sample_path("de.dev.txt"))], dict(os.environ), timeout=900)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["summary"]["de"]["sentences"] == 300 and got["summary"]["de"]["selected"] == 150
    assert got["write_nodes"] and set(got["write_nodes"]) <= set(got["workers"])
    assert got["head"] not in got["write_nodes"]
    assert set(got["record_keys"]) <= {"table", "lang", "path", "rows", "entities", "selected",
                                       "node"}


class _DyingOnce:
    """A RoundSink whose first write kills its worker process (Ray retries the task)."""

    def __init__(self, sink, marker: str):
        self.sink, self.marker = sink, marker

    def write(self, tables):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text("died once")
            os._exit(1)
        return self.sink.write(tables)


@pytest.mark.slow
def test_killed_write_task_commits_the_same_round(ray_cluster, tiny_teacher_dir, tmp_path):
    from xner_ray import engine
    from xner_ray.labeling.pipeline import LabelConfig, label, label_rounds
    from xner_ray.sqlshell import connect
    from xner_ray.store import Store

    def cfg(store: str) -> LabelConfig:
        return LabelConfig(teachers=[str(tiny_teacher_dir)], store=store, run_id="w",
                           inputs=[{"path": str(sample_path("de.dev.txt")), "lang": "de"}],
                           block_rows=64, rows_per_file=100)

    label(cfg(str(tmp_path / "clean")))
    marker = str(tmp_path / "died")
    real_run = engine.run_ray

    def run_with_a_dying_writer(plan):
        plan.sink = _DyingOnce(plan.sink, marker)
        return real_run(plan)

    engine.run_ray = run_with_a_dying_writer
    try:
        store = Store(tmp_path / "killed")
        store.record_run("w", "label", {})
        with label_rounds(cfg(str(tmp_path / "killed")), store) as rounds:
            assert rounds["de"].counts["sentences"] == 300
    finally:
        engine.run_ray = real_run
    assert os.path.exists(marker)  # a write task did die
    query = ("SELECT sent_id, tags, probs, confidence FROM pseudo_labels "
             "ORDER BY sent_id, confidence")
    assert (connect(tmp_path / "killed").execute(query).fetchall()
            == connect(tmp_path / "clean").execute(query).fetchall())


@pytest.mark.parametrize("job", ["tsl", "advpicker", "project", "calibrenet", "combined"])
def test_jobs_writing_local_outputs_refuse_a_uri_out(job):
    """Only RIKD publishes students to a URI; the others say so in one line."""
    out = subprocess.run([sys.executable, f"jobs/{job}.py", "--config", f"configs/{job}_demo.yaml",
                          "--set", "out=s3://bucket/run", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode in (1, 2), out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "out: s3://bucket/run is a URI" in lines[0]
