"""Store: schemas, batch conversion, atomic/resumable round writes, runs, hive reads."""

from __future__ import annotations

import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xner_ray import sqlshell
from xner_ray.records import Reject, RejectSink
from xner_ray.store import PSEUDO_LABELS, SENTENCES, Store, batch_to_table, describe
from xner_ray.store.schema import TABLES, file_schema

LABELS = ["O", "B-PER", "I-PER"]


def pl_rows(ids, probs=None, **over):
    """Pseudo-label rows over LABELS; probs default to one confident word per row."""
    n = len(ids)
    probs = probs if probs is not None else [np.array([[0.1, 0.8, 0.1]], np.float32)] * n
    cols = {"sent_id": list(ids), "teacher": ["t@0"] * n,
            "tags": [["B-PER"] * len(p) for p in probs],
            "probs": np.array(list(probs) + [None], dtype=object)[:-1],
            "confidence": [0.8] * n, "f_conf": [0.22] * n, "n_entities": [1] * n,
            "length": [len(p) for p in probs], "selected": [True] * n,
            "selector": ["keep_all.v1"] * n, "weight": [1.0] * n}
    cols.update(over)
    return cols


def visible_files(root) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if not rel.startswith(("_tmp", "_manifests", "_leases")):
            out += [os.path.join(rel, n) for n in names]
    return sorted(out)


# -- schema and conversion ----------------------------------------------------------------------
def test_schema_docs_and_partition_columns():
    assert "RIKD Eq. 5" in describe(PSEUDO_LABELS)
    fs = TABLES["pseudo_labels"].file_schema
    assert {"run_id", "lang", "round"}.isdisjoint(fs.names) and "probs" in fs.names
    assert fs.metadata[b"xner_ray.schema_version"] == b"1"
    assert file_schema(SENTENCES, ["round"]).field("tokens").metadata[b"doc"] == b"words"
    assert PSEUDO_LABELS.field("probs").type == pa.list_(pa.list_(pa.float32()))


def test_batch_to_table_from_rows_dicts_and_numpy():
    rows = [{"sent_id": "a", "lang": "es", "source": "x", "tokens": ["Hola"], "round": 0,
             "run_id": "r"}]
    t = batch_to_table(rows, SENTENCES)
    assert t.schema == SENTENCES and t.column("gold_tags").null_count == 1
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.ones((2, 3)), np.zeros((1, 3))
    padded = np.ones((2, 4, 3))  # a padded [B, T, L] array converts too
    for probs, lengths in ((ragged, [2, 1]), (padded, [4, 4]), ([[[0.5, 0.5]]], [1])):
        arr = batch_to_table({"p": probs}, pa.schema([("p", PSEUDO_LABELS.field("probs").type)]))
        assert arr.column("p").type == pa.list_(pa.list_(pa.float32()))
        assert [len(x) for x in arr.column("p").to_pylist()] == lengths
    assert arr.column("p").to_pylist() == [[[0.5, 0.5]]]


@pytest.mark.parametrize("bad, message", [
    ({"sent_id": ["a"]}, "missing required column 'source'"),
    ({"sent_id": ["a"], "source": ["x"], "tokens": [["a"]], "oops": [1]}, "not in the schema"),
    ({"sent_id": [None], "source": ["x"], "tokens": [["a"]]}, "not nullable"),
    ({"sent_id": ["a", "b"], "source": ["x"], "tokens": [["a"]]}, "has 1 rows, expected 2"),
])
def test_batch_to_table_errors(bad, message):
    schema = pa.schema([f for f in SENTENCES if f.name not in ("lang", "round", "run_id")])
    with pytest.raises(ValueError, match=message):
        batch_to_table(bad, schema)


# -- round writes -------------------------------------------------------------------------------
def test_round_trip_duckdb_reads_probs_as_nested_floats(tmp_path):
    store = Store(tmp_path)
    probs = [np.array([[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]], np.float32)]
    with store.round_writer("r1", "es", 0, labels=LABELS) as w:
        assert w.write_pseudo_labels(pl_rows(["a"], probs, tags=[["B-PER", "O"]])) == 1
    con = duckdb.connect()
    glob = f"{tmp_path}/pseudo_labels/*/*/*/*.parquet"
    typ = con.execute(f"SELECT typeof(probs), typeof(labels) FROM read_parquet('{glob}')"
                      ).fetchone()
    assert typ == ("FLOAT[][]", "VARCHAR[]")
    row = con.execute(f"SELECT probs[2][1], labels[2], lang, round, run_id FROM read_parquet("
                      f"'{glob}', hive_partitioning = true)").fetchone()
    assert row == (pytest.approx(0.7, abs=1e-3), "B-PER", "es", 0, "r1")  # stored as float16
    back = store.read("pseudo_labels").to_pylist()[0]
    assert back["probs"] == [pytest.approx([0.1, 0.8, 0.1], abs=1e-3),
                             pytest.approx([0.7, 0.2, 0.1], abs=1e-3)]
    assert (back["lang"], back["round"], back["run_id"], back["labels"]) == ("es", 0, "r1",
                                                                             LABELS)


def test_polars_reads_partition_columns(tmp_path):
    import polars as pl

    store = Store(tmp_path)
    with store.round_writer("r1", "nl", 2, labels=LABELS) as w:
        w.write_pseudo_labels(pl_rows(["a", "b"]))
    df = pl.scan_parquet(f"{tmp_path}/pseudo_labels/**/*.parquet", hive_partitioning=True
                         ).select("sent_id", "lang", "round").collect()
    assert df.sort("sent_id").rows() == [("a", "nl", 2), ("b", "nl", 2)]


def test_manifest_rotation_and_counts(tmp_path):
    store = Store(tmp_path)
    with store.round_writer("r1", "es", 0, labels=LABELS, rows_per_file=2,
                            meta={"selector": "keep_all"}) as w:
        w.write_pseudo_labels(pl_rows("abc"))
        arrow = pl_rows("de")
        arrow["probs"] = [p.tolist() for p in arrow["probs"]]
        w.write_pseudo_labels(pa.Table.from_pydict(arrow))  # Arrow batches too
        sink = RejectSink(keep=1)
        sink.add(Reject("in.txt", 4, "malformed_line", "bad \udcff"))
        sink.add(Reject("in.txt", 9, "malformed_line", "dropped from memory, still counted"))
        w.write_rejects(sink)
        w.meta["teacher"] = "t@0"
    m = store.manifest("r1", "es", 0)
    assert m == w.manifest
    assert m["tables"]["pseudo_labels"]["rows"] == 5
    assert [f.rsplit("/", 1)[1] for f in m["tables"]["pseudo_labels"]["files"]] == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert m["tables"]["projections"] == {"rows": 0, "files": []}
    assert (m["labels"], m["rejects_by_reason"], m["schema_version"]) == (
        LABELS, {"malformed_line": 1}, 1)
    assert m["meta"] == {"selector": "keep_all", "teacher": "t@0",
                         "rejects_seen": {"malformed_line": 2}}
    assert store.read("rejects").column("raw").to_pylist() == ["bad \\xff"]
    assert not os.listdir(tmp_path / "_tmp" / "run_id=r1" / "lang=es")


def test_exception_leaves_nothing_visible(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with store.round_writer("r1", "es", 0, labels=LABELS, rows_per_file=1) as w:
            w.write_pseudo_labels(pl_rows("ab"))
            w.write_sentences([{"sent_id": "a", "source": "x", "tokens": ["A"]}])
            raise RuntimeError("boom")
    assert visible_files(tmp_path) == []
    assert not store.is_complete("r1", "es", 0) and store.last_complete_round("r1", "es") is None
    for read_only in (True, False):
        con = sqlshell.connect(tmp_path, read_only=read_only)
        assert con.execute("SELECT count(*) FROM pseudo_labels").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM sentences").fetchone() == (0,)


def test_killed_run_is_cleaned_and_redone(tmp_path):
    store = Store(tmp_path)
    killed = store.round_writer("r1", "es", 0, labels=LABELS)
    killed.__enter__()  # ... and the process dies: no __exit__
    killed.write_pseudo_labels(pl_rows("xyz"))
    assert any((tmp_path / "_tmp").rglob("*.parquet")) and visible_files(tmp_path) == []
    # A crash in the middle of a commit: a partition renamed into place, no manifest.
    stale = tmp_path / "sentences" / "run_id=r1" / "lang=es" / "round=0"
    stale.mkdir(parents=True)
    pq.write_table(pa.table({"sent_id": ["stale"]}), stale / "part-00000.parquet")
    assert sqlshell.connect(tmp_path).execute("SELECT count(*) FROM sentences").fetchone() == (0,)
    with store.round_writer("r1", "es", 0, labels=LABELS) as w:
        assert w.cleaned and not w.skipped
        w.write_pseudo_labels(pl_rows("ab"))
    assert sorted(store.read("pseudo_labels").column("sent_id").to_pylist()) == ["a", "b"]
    assert store.read("sentences").num_rows == 0 and not stale.exists()
    assert not list((tmp_path / "_tmp").rglob("*.parquet"))


def test_rerun_of_complete_round_is_skipped(tmp_path):
    store = Store(tmp_path)
    with store.round_writer("r1", "es", 0, labels=LABELS) as w:
        w.write_pseudo_labels(pl_rows("ab"))
    before = {p: os.stat(tmp_path / p).st_mtime_ns for p in visible_files(tmp_path)}
    with store.round_writer("r1", "es", 0, labels=LABELS) as again:
        assert again.skipped and again.manifest["tables"]["pseudo_labels"]["rows"] == 2
        assert again.write_pseudo_labels(pl_rows("cde")) == 0
        assert again.write_rejects([Reject("f", 1, "bad_json", "{")]) == 0
    assert {p: os.stat(tmp_path / p).st_mtime_ns for p in visible_files(tmp_path)} == before
    assert store.read("pseudo_labels").num_rows == 2


def test_rounds_and_resume_point(tmp_path):
    store = Store(tmp_path)
    for k in (0, 1):
        with store.round_writer("r1", "es", k, labels=LABELS) as w:
            w.write_pseudo_labels(pl_rows("a"))
    with store.round_writer("r1", "nl", 0, labels=LABELS):
        pass  # an empty round is a complete round
    assert store.complete_rounds("r1", "es") == [0, 1]
    assert store.last_complete_round("r1", "es") == 1
    assert store.last_complete_round("r1", "nl") == 0 and store.is_complete("r1", "nl", 0)
    assert store.last_complete_round("r2", "es") is None
    assert store.read("pseudo_labels", round=1).num_rows == 1
    assert store.read("pseudo_labels", run_id="r1", lang="es").num_rows == 2


@pytest.mark.parametrize("batch, message", [
    (pl_rows("a", lang=["nl"]), "lang values"),
    (pl_rows("a", round=[3]), "round values"),
    (pl_rows("a", labels=[["O", "B-LOC", "I-LOC"]]), "label set"),
    (pl_rows("a", [np.ones((1, 2), np.float32)]), "must have 3 values"),
    (pl_rows("a", tags=[["O", "O"]]), "differ in length"),
])
def test_inconsistent_batches_raise(tmp_path, batch, message):
    store = Store(tmp_path)
    with pytest.raises(ValueError, match=message):
        with store.round_writer("r1", "es", 0, labels=LABELS) as w:
            w.write_pseudo_labels(batch)
    assert not store.is_complete("r1", "es", 0)


def test_label_set_from_first_batch(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ValueError, match="missing required column 'labels'"):
        with store.round_writer("r1", "es", 0) as w:
            w.write_pseudo_labels(pl_rows("b"))  # no label set known yet
    with store.round_writer("r1", "es", 0) as w:
        w.write_pseudo_labels(pl_rows("a", labels=[LABELS]))
        w.write_pseudo_labels(pl_rows("b"))  # the round's set is known now
    assert store.manifest("r1", "es", 0)["labels"] == LABELS
    assert store.read("pseudo_labels").column("labels").to_pylist() == [LABELS, LABELS]


@pytest.mark.parametrize("run_id, lang, round_", [
    ("../x", "es", 0), ("_hidden", "es", 0), ("r1", "e s", 0), ("r1", "es", -1),
    ("r1", "es", "0")])
def test_invalid_names(tmp_path, run_id, lang, round_):
    with pytest.raises(ValueError, match="invalid"):
        Store(tmp_path).round_writer(run_id, lang, round_)


# -- runs ---------------------------------------------------------------------------------------
def test_runs_table(tmp_path):
    store = Store(tmp_path)
    rec = store.record_run("r1", "rikd", {"b": 1, "a": [1, 2]}, code_version="abc")
    assert rec["status"] == "running" and rec["config"] == '{"a": [1, 2], "b": 1}'
    store.update_run("r1", round=0, metrics={"f1": 0.5, "kept": 10})
    store.update_run("r1", metrics={1: {"f1": 0.6}, 0: {"f1": 0.55}})
    done = store.update_run("r1", status="failed")
    assert json.loads(done["metrics"]) == {"0": {"f1": 0.55, "kept": 10}, "1": {"f1": 0.6}}
    assert done["ended_at"] is not None and done["ended_at"] >= done["started_at"]
    resumed = store.record_run("r1", "rikd", '{"a": [1, 2], "b": 1}')  # same config, as JSON
    assert resumed["status"] == "running" and resumed["ended_at"] is None
    assert json.loads(resumed["metrics"])["1"] == {"f1": 0.6}
    with pytest.raises(ValueError, match=r"different config \(a, b\)"):
        store.record_run("r1", "rikd", {"a": 2})
    # a setting the code gained since the run started, left unset: the same run
    assert store.record_run("r1", "rikd", {"a": [1, 2], "b": 1, "keep_target": None})
    with pytest.raises(ValueError, match=r"different config \(keep_target\)"):
        store.record_run("r1", "rikd", {"a": [1, 2], "b": 1, "keep_target": 0.6})
    with pytest.raises(ValueError, match=r"different config \(b\)"):  # a key dropped
        store.record_run("r1", "rikd", {"a": [1, 2]})
    with pytest.raises(ValueError, match="invalid run status"):
        store.update_run("r1", status="weird")
    with pytest.raises(ValueError, match="no run"):
        store.update_run("r9", status="failed")
    store.record_run("r2", "tsl", {})
    assert store.run_ids() == ["r1", "r2"]
    con = sqlshell.connect(tmp_path)
    assert con.execute("SELECT run_id, job, code_version FROM runs ORDER BY 1").fetchall()[0] \
        == ("r1", "rikd", "abc")
    assert not list((tmp_path / "runs").rglob("*.tmp*"))


def test_object_store_path_without_directory_renames():
    """Non-local filesystems (s3://, gs://) move file by file; the manifest commits.
    pyarrow's in-memory mock filesystem stands in for a bucket."""
    fs_mod = pytest.importorskip("pyarrow.fs")
    store = Store("bucket/store", filesystem=fs_mod._MockFileSystem())
    assert not store.is_local
    with store.round_writer("r1", "es", 0, labels=LABELS, rows_per_file=1) as w:
        w.write_pseudo_labels(pl_rows("ab"))
    store.record_run("r1", "rikd", {})
    con = sqlshell.connect(store)
    assert con.execute("SELECT sent_id, lang, round FROM pseudo_labels ORDER BY 1").fetchall() \
        == [("a", "es", 0), ("b", "es", 0)]
    assert con.execute("SELECT status FROM runs").fetchall() == [("running",)]
    with store.round_writer("r1", "es", 0) as again:
        assert again.skipped
