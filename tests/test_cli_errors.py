"""The command line's error contract: one line on stderr, exit 2 for a bad command line or
config (missing inputs, models, stores included), 1 when the work fails; --debug adds the
traceback. No test here starts Ray: every error is caught before."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from xner_ray import cli, sqlshell
from xner_ray.demo import sample_path

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _rikd_config(tmp_path, **extra) -> str:
    cfg = {"run_id": "r", "store": str(tmp_path / "store"), "out": str(tmp_path / "out"),
           "source_dev": str(sample_path("en.dev.txt")), "teacher": str(tmp_path),
           "targets": [{"lang": "de", "unlabeled": str(sample_path("de.dev.txt"))}],
           "student": {"lr": 1e-3}, **extra}
    path = tmp_path / "rikd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# --- flags ----------------------------------------------------------------------------------

def test_abbreviated_and_unknown_flags_are_refused_with_the_nearest(capsys):
    code, _, err = run(capsys, "train-teacher", "--train", "a", "--epoch", "2")
    assert code == 2
    assert "unknown flag --epoch; did you mean --epochs?" in one_line(err)
    code, _, err = run(capsys, "sql", "--sto", "x", "SELECT 1")
    assert code == 2 and "unknown flag --sto; did you mean --store?" in one_line(err)
    code, _, err = run(capsys, "rikd", "--config", "x", "--dry")
    assert code == 2 and "did you mean --dry-run?" in one_line(err)
    with pytest.raises(SystemExit) as exc:
        sqlshell.main_sql(["--sto", "x", "SELECT 1"])
    assert exc.value.code == 2


def test_help_shows_defaults_and_job_keys(capsys):
    code, out, _ = run(capsys, "train-teacher", "--help")
    assert code == 0 and "(default: 3)" in out  # epochs
    code, out, _ = run(capsys, "rikd", "--help")
    assert code == 0 and "rounds (int, default: 3)" in out and "reinforce (bool" in out
    code, out, _ = run(capsys, "evaluate", "--help")
    assert "(default: 32)" in out


# --- configs --------------------------------------------------------------------------------

def test_set_values_are_typed_and_dry_run_resolves_everything(tmp_path, capsys):
    config = _rikd_config(tmp_path)
    code, out, err = run(capsys, "rikd", "--config", config, "--set", "reinforce=False",
                         "--set", "rounds=2", "--set", "student.epochs=1", "--dry-run")
    assert code == 0, err
    data = json.loads(out[: out.rindex("}") + 1])
    assert data["reinforce"] is False and data["rounds"] == 2
    assert data["student"]["epochs"] == 1 and data["student"]["freeze_layers"] == 3
    assert "path check: ok" in out


@pytest.mark.parametrize("item,message", [
    ("rounds=2.5", "rounds: invalid value '2.5' (expected int)"),
    ("rounds=abc", "rounds: invalid value 'abc' (expected int)"),
    ("reinforce=maybe", "reinforce: invalid value 'maybe' (expected bool"),
    ("student.lr=fast", "student.lr: invalid value 'fast' (expected float)"),
    ("nope=1", "unknown RikdConfig keys ['nope']"),
])
def test_bad_config_values_are_one_line_exit_2(tmp_path, capsys, item, message):
    code, out, err = run(capsys, "rikd", "--config", _rikd_config(tmp_path), "--set", item)
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("xner rikd: error: ") and message in line


def test_missing_config_file_and_bad_yaml(tmp_path, capsys):
    code, _, err = run(capsys, "rikd", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml does not exist" in one_line(err)
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_id: [unclosed\n")
    code, _, err = run(capsys, "rikd", "--config", str(bad))
    assert code == 2 and "not valid YAML" in one_line(err)


# --- paths ----------------------------------------------------------------------------------

def test_missing_model_and_inputs(tmp_path, capsys):
    code, out, err = run(capsys, "rikd", "--config", _rikd_config(
        tmp_path, teacher=str(tmp_path / "no" / "teacher")), "--dry-run")
    assert code == 2 and "teacher: model folder" in out and "does not exist" in out
    code, _, err = run(capsys, "rikd", "--config", _rikd_config(
        tmp_path, teacher=str(tmp_path / "no" / "teacher")))
    assert code == 2 and "does not exist" in one_line(err)
    code, _, err = run(capsys, "evaluate", "--model", str(tmp_path / "missing-model"),
                       "--data", str(sample_path("de.dev.txt")))
    assert code == 2 and "missing-model does not exist" in one_line(err)
    code, _, err = run(capsys, "evaluate", "--model", "builtin:me5-small",
                       "--data", str(tmp_path / "*.conll"))
    assert code == 2 and "no input files match" in one_line(err)
    code, _, err = run(capsys, "train-teacher", "--train", str(tmp_path / "t.txt"),
                       "--dev", str(sample_path("en.dev.txt")), "--out", str(tmp_path / "o"))
    assert code == 2 and "train: input" in one_line(err)


def test_model_names_and_uris_are_not_paths():
    from xner_ray.jobs import check_input, check_model

    assert check_model("builtin:me5-small") is None
    assert check_model("s3://bucket/model") is None
    assert check_model("xlm-roberta-base") is None  # a hub name
    assert "does not exist" in check_model("./outputs/teacher")
    assert check_input("s3://bucket/*.txt") is None


def test_empty_input_is_an_error_unless_allowed(tmp_path, capsys):
    empty = tmp_path / "de.txt"
    empty.write_text("\n\n")
    argv = ["label", "--model", str(tmp_path), "--store", str(tmp_path / "store"),
            "--input", str(empty), "--lang", "de"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "is empty; pass --allow-empty" in one_line(err)
    gz = tmp_path / "nl.txt.gz"
    gz.write_bytes(gzip.compress(b""))
    code, _, err = run(capsys, *argv[:-4], "--input", str(gz), "--lang", "nl")
    assert code == 2 and "nl.txt.gz is empty" in one_line(err)
    code, out, err = run(capsys, *argv, "--allow-empty", "--dry-run")
    assert code == 0 and "path check: ok" in out


def test_truncated_gzip_names_the_file(tmp_path, tiny_teacher_dir, capsys):
    data = gzip.compress(sample_path("de.dev.txt").read_bytes())
    bad = tmp_path / "de.dev.txt.gz"
    bad.write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, "evaluate", "--model", str(tiny_teacher_dir), "--data", str(bad))
    line = one_line(err)
    assert code == 1 and f"{bad}: truncated or corrupt gzip file" in line
    assert "--debug for the traceback" in line
    code, _, err = run(capsys, "--debug", "evaluate", "--model", str(tiny_teacher_dir),
                       "--data", str(bad))
    assert code == 1 and "Traceback" in err and str(bad) in err.strip().splitlines()[-1]


# --- stores and SQL -------------------------------------------------------------------------

def test_store_that_does_not_exist_is_an_error(tmp_path, capsys):
    code, out, err = run(capsys, "sql", "--store", str(tmp_path / "nope"), "SELECT 1")
    assert code == 2 and out == "" and "store" in one_line(err) and "does not exist" in err
    code, _, err = run(capsys, "report", "--store", str(tmp_path / "nope"),
                       "--out", str(tmp_path / "r.html"))
    assert code == 2 and "does not exist" in one_line(err)
    assert not (tmp_path / "r.html").exists()
    assert sqlshell.main_sql(["--store", str(tmp_path / "nope"), "SELECT 1"]) == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "store").mkdir()
    (tmp_path / "other" / "results.json").write_text("{}")
    code, _, err = run(capsys, "sql", "--store", str(tmp_path / "other"), "SELECT 1")
    assert code == 2 and "is not a store" in err and "did you mean" in err
    sqlshell.check_store("s3://bucket/store")  # object stores are read as they are
    sqlshell.check_store(tmp_path / "other" / "store")  # an empty folder: an empty store


def test_multi_statement_scripts_with_selects(tmp_path):
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": list(range(200_000))}), tmp_path / "p.parquet")
    con = duckdb.connect()
    con.register("_a", ds.dataset(str(tmp_path)))
    con.execute("CREATE VIEW v AS SELECT * FROM _a")
    table = sqlshell._run_script(con, "SELECT * FROM v; SET VARIABLE k = 3; "
                                      "SELECT a FROM v LIMIT 5; SELECT count(*) + getvariable('k') "
                                      "AS n FROM v")
    assert table.to_pylist() == [{"n": 200_003}]


# --- the error line -------------------------------------------------------------------------

def test_error_line_unwraps_ray_wrappers():
    class TaskError(Exception):  # as ray.exceptions.RayTaskError: the original in .cause
        def __init__(self, cause):
            super().__init__("ray.exceptions.RayTaskError(EOFError): long\ntraceback\n...")
            self.cause = cause

    class WorkerGroupError(Exception):
        def __init__(self, failures):
            super().__init__("Training failed")
            self.worker_failures = failures

    inner = EOFError("Compressed file ended before the end-of-stream marker was reached")
    assert cli.error_line(TaskError(inner)) == f"EOFError: {inner}"
    assert cli.error_line(WorkerGroupError({0: TaskError(ValueError("bad dev file x.txt"))})) \
        == "bad dev file x.txt"
    assert cli.error_line(KeyError("k")) == "KeyError: 'k'"


@pytest.mark.slow
def test_job_script_is_the_xner_command(tmp_path):
    """``python jobs/rikd.py`` runs ``xner rikd`` (same flags, same errors)."""
    config = _rikd_config(tmp_path)
    run_ = subprocess.run([sys.executable, "jobs/rikd.py", "--config", config, "--dry-run",
                           "--set", "rounds=1"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert run_.returncode == 0, run_.stderr
    assert '"rounds": 1' in run_.stdout
    run_ = subprocess.run([sys.executable, "jobs/rikd.py", "--config", config, "--set",
                           "rounds=x"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run_.returncode == 2
    assert run_.stderr.strip().splitlines() == [
        "xner rikd: error: rounds: invalid value 'x' (expected int)"]
