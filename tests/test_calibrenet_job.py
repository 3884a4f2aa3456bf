"""The CalibreNet job and its calibration pass: the stage on a real local Ray cluster (tiny
model) against the in-process run, the job end to end with its resume path, config checks, and
the report section on a hand-made store."""

from __future__ import annotations

import json

import pytest
import yaml

from xner_ray.demo import sample_path
from xner_ray.labels import is_valid_iob2


def _job_main(argv):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "calibrenet_job", Path(__file__).resolve().parents[1] / "jobs" / "calibrenet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from xner_ray.jobs import run_job

    return run_job("calibrenet", mod.CalibrenetConfig, mod.run_calibrenet, argv)


def _base(tmp_path, teacher, **extra) -> dict:
    return {"run_id": "c1", "store": str(tmp_path / "store"), "out": str(tmp_path / "out"),
            "source_train": str(sample_path("en.dev.txt")),
            "source_dev": str(sample_path("en.dev.txt")), "teacher": str(teacher),
            "targets": [{"lang": "de", "unlabeled": str(sample_path("de.dev.txt")),
                         "dev": str(sample_path("de.dev.txt"))}], **extra}


def _write(tmp_path, cfg: dict) -> str:
    path = tmp_path / "calibrenet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# -- config checks: before any work --------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    ({"op_dist": "paper"}, "op_dist 'paper'"),
    ({"pretrain": {"corpora": [{"path": "x", "lang": "en"}], "strategy": "random"}},
     "pretrain.strategy 'random'"),
    ({"pretrain": {"corpora": [{"path": "x"}]}}, "pretrain.corpora"),
    ({"pretrain": {"corpora": [{"path": "x", "lang": "en"}], "epochs": 2}},
     "unknown pretrain keys ['epochs']"),
    ({"finetune": {"learning_rate": 1e-3}}, "unknown finetune keys ['learning_rate']"),
    ({"calibration": {"calibrator": "x"}}, "unknown calibration keys ['calibrator']"),
    ({"calibration": {"batch_size": 0}}, "batch_size >= 1"),
    ({"teacher": None}, "give `teacher`"),
])
def test_bad_config_fails_before_any_work(tmp_path, extra, message):
    from xner_ray.methods.calibrenet import CalibrenetConfig

    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        CalibrenetConfig(**{**_base(tmp_path, "t"), **extra})


def test_bad_config_exits_2_from_the_entry_point(tmp_path, capsys):
    path = _write(tmp_path, _base(tmp_path, "t", op_dist="paper"))
    assert _job_main(["--config", path]) == 2
    assert "op_dist" in capsys.readouterr().err


def test_pbr_order_must_list_the_corpora_languages(tmp_path):
    from xner_ray.methods.calibrenet.job import PbrSpec

    corpora = [{"path": "a", "lang": "en"}, {"path": "b", "lang": "de"}]
    assert PbrSpec(corpora=corpora).order == ["en", "de"]
    with pytest.raises(ValueError, match="must list"):
        PbrSpec(corpora=corpora, order=["en"])


# -- the stage on a real Ray cluster -------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrator(tiny_model_dir, tmp_path_factory):
    """A tiny CalibreNet trained a few steps on garbled English sample spans."""
    from xner_ray.io import read_conll
    from xner_ray.methods.calibrenet import (CalibreNetConfig, default_op_dist,
                                             finetune_instances, train_calibrenet)

    sents = list(read_conll(str(sample_path("en.dev.txt"))))[:60]
    words, gold = [s.tokens for s in sents], [s.tags for s in sents]
    items, _ = finetune_instances(words, gold, gold, default_op_dist(), seed=0)
    out = tmp_path_factory.mktemp("calibrator") / "calib"
    cfg = CalibreNetConfig(out=str(out), model=str(tiny_model_dir), lr=1e-3, batch_size=16,
                           epochs=1, max_steps=3, eval_every=10_000, max_length=128)
    train_calibrenet(cfg, items, types=["LOC", "ORG", "PER"])
    return str(out)


def _labeled_and_calibrated(tmp_path, teacher, calibrator, *, local: bool):
    from xner_ray.labeling.pipeline import LabelConfig, label_rounds
    from xner_ray.methods.calibrenet.pipeline import CalibrationRun, calibrate_rounds
    from xner_ray.store import Store

    store = Store(tmp_path / "store")
    cfg = LabelConfig(teachers=[str(teacher)], store=store.root, run_id="c1",
                      inputs=[{"path": str(sample_path("de.dev.txt")), "lang": "de", "gold": True},
                              {"path": str(sample_path("nl.dev.txt")), "lang": "nl"}],
                      block_rows=64, rows_per_file=200, local=local)
    with label_rounds(cfg, store) as rounds:
        written = calibrate_rounds(CalibrationRun(calibrator, block_rows=50, max_length=128,
                                                  local=local, num_actors=1), store, rounds)
    return store, written


@pytest.mark.slow
def test_calibration_stage_on_ray_commits_with_the_round(ray_cluster, tiny_teacher_dir,
                                                        calibrator, tmp_path, capsys):
    from xner_ray.sqlshell import connect, main_sql, run_sql

    store, written = _labeled_and_calibrated(tmp_path / "ray", tiny_teacher_dir, calibrator,
                                             local=False)
    assert written == {"de": 300, "nl": 300}
    for lang in ("de", "nl"):
        m = store.manifest("c1", lang, 0)
        assert m["tables"]["calibrations"]["rows"] == m["tables"]["pseudo_labels"]["rows"] == 300
        assert m["meta"]["counts"]["calibrated"] == 300 and m["meta"]["calibrator"] == calibrator
        assert not store.exists(store.path("_tmp", store.round_key("c1", lang, 0)))  # attempt gone
    con = connect(store.root)
    # one calibrations row per pseudo_labels row, its orig_tags the round's tags
    assert con.execute(
        "SELECT count(*), count(p.sent_id), bool_and(c.orig_tags = p.tags), "
        "bool_and(len(c.calib_tags) = len(p.tags)), bool_and(c.teacher = p.teacher) "
        "FROM calibrations c LEFT JOIN (SELECT DISTINCT ON (lang, sent_id) * FROM pseudo_labels)"
        " p USING (run_id, lang, round, sent_id)").fetchone() == (600, 600, True, True, True)
    rows = con.execute("SELECT calib_tags, calib_spans, orig_spans, n_changed, calibrator "
                       "FROM calibrations").fetchall()
    assert all(is_valid_iob2(r[0]) and r[3] <= len(r[2]) for r in rows)
    assert all(s["score"] is not None for r in rows for s in r[2])  # scored from soft labels
    assert {r[4] for r in rows} == {f"calibrenet.v1({calibrator})"}
    assert sum(len(r[2]) for r in rows) > 0  # the tiny teacher predicts some spans
    # the acceptance query, through the command
    assert main_sql(["--store", store.root, "--format", "csv",
                     "SELECT count(*) AS n FROM calibrations"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "600"]
    summary = {r["lang"]: r for r in run_sql(con, "calibration_summary", output="arrow")
               .to_pylist()}
    assert summary["de"]["gold_sentences"] == 300 and summary["nl"]["f1_before"] is None

    # the same plan in process gives the same calibrations
    local, _ = _labeled_and_calibrated(tmp_path / "local", tiny_teacher_dir, calibrator,
                                       local=True)
    q = ("SELECT lang, sent_id, calib_tags, n_changed FROM calibrations "
         "ORDER BY lang, sent_id, n_changed")
    assert connect(local.root).execute(q).fetchall() == con.execute(q).fetchall()


# -- the job end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_job_end_to_end_and_resume(ray_cluster, tiny_teacher_dir, tiny_model_dir, tmp_path,
                                   monkeypatch):
    from xner_ray.methods.calibrenet import job as job_mod
    from xner_ray.sqlshell import connect
    from xner_ray.store import Store

    cfg = _base(tmp_path, tiny_teacher_dir, gold_eval=True,
                pretrain={"corpora": [{"path": str(sample_path("en.dev.txt")), "lang": "en"}],
                          "max_sentences": 120,
                          "train": {"model": str(tiny_model_dir), "batch_size": 8,
                                    "max_steps": 1, "max_length": 128, "lr": 1e-3}},
                finetune={"model": str(tiny_model_dir), "batch_size": 16, "max_steps": 4,
                          "eval_every": 2, "lr": 1e-3, "max_length": 128},
                calibration={"block_rows": 100, "max_length": 128, "num_actors": 1},
                label={"block_rows": 100})
    path = _write(tmp_path, cfg)
    real = job_mod.label_and_calibrate

    def dying(*a, **kw):
        raise KeyboardInterrupt("killed after training")

    monkeypatch.setattr(job_mod, "label_and_calibrate", dying)
    with pytest.raises(KeyboardInterrupt):
        _job_main(["--config", path])
    store = Store(tmp_path / "store")
    assert store.get_run("c1")["status"] == "failed" and store.complete_rounds("c1", "de") == []
    made = json.loads((tmp_path / "out" / "calibrenet" / "job_summary.json").read_text())
    monkeypatch.setattr(job_mod, "label_and_calibrate", real)
    assert _job_main(["--config", path]) == 0

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["training"] == made  # the calibrator was reused, not trained again
    assert results["calibrator"] == str(tmp_path / "out" / "calibrenet")
    t = made
    assert t["op_dist"]["source"] == "estimate" and t["steps"] == 4
    assert abs(sum(r["p"] for r in t["op_dist"]["p"]) - 1) < 1e-6
    assert t["pretrain"]["folder"].endswith("pbr/stage-0")
    assert t["pretrain"]["stages"][0]["steps"] == 1
    assert t["source_dev"]["f1"] >= 0 and "base_f1" in t["source_dev"]
    de = results["targets"]["de"]
    assert de["rows"]["calibrations"] == de["rows"]["pseudo_labels"] == 300
    assert de["target_dev"]["n_sentences"] == 300 and 0 <= de["target_dev"]["calibrated_f1"] <= 1
    assert store.get_run("c1")["status"] == "succeeded"
    assert connect(store.root).execute("SELECT count(*) FROM calibrations").fetchone()[0] == 300
    first = store.manifest("c1", "de", 0)
    assert _job_main(["--config", path]) == 0  # a rerun skips the committed round
    assert store.manifest("c1", "de", 0) == first


# -- the report section ---------------------------------------------------------------------------
def test_report_calibration_section(tmp_path):
    from tests.test_sql import add_calibrations, build_store
    from xner_ray import report

    page = report.build_report(add_calibrations(build_store(tmp_path / "store")))
    assert "<h2>Calibration (CalibreNet: base tags vs calibrated tags)</h2>" in page
    assert "<figcaption>errors before / after calibration: es round 0 (c1)" in page
    assert "before / after calibration: nl" not in page  # no gold for nl
    assert "super after: 0" in page and "super before: 1" in page
    empty = report.build_report(build_store(tmp_path / "plain"))
    assert "no calibrations in the store" in empty


# -- students on calibrated pseudo-labels (RIKD / TSL / AdvPicker `calibrator:`) ------------------
@pytest.mark.slow
def test_rikd_round_learns_calibrated_pseudo_labels(ray_cluster, tiny_teacher_dir, tiny_model_dir,
                                                    calibrator, tmp_path):
    """A RIKD round with a calibrator: the round is labeled, calibrated (committed together)
    and its student trained on the calibrated tags -- a combination no paper has."""
    from tests.test_rikd import _config, _rikd_main
    from xner_ray.sqlshell import connect
    from xner_ray.store import Store

    config = _config(tmp_path, tiny_teacher_dir, tiny_model_dir, rounds=1, reinforce=False,
                     calibrator=calibrator, calibration={"block_rows": 100, "max_length": 128},
                     calibrated_rho=0.5)
    assert _rikd_main(["--config", config]) == 0
    m = Store(tmp_path / "store").manifest("r1", "de", 0)
    assert m["tables"]["calibrations"]["rows"] == 300 and m["meta"]["calibrator"] == calibrator
    assert m["meta"]["calib_selector_spec"] == "top_rho:calib_score:0.5"
    con = connect(tmp_path / "store")
    # the top half by calibration score is selected (decisions overlay the pseudo-labels)
    kept, best_dropped, worst_kept = con.execute(
        "SELECT sum(p.selected::INT), max(c.calib_score) FILTER (WHERE NOT p.selected), "
        "min(c.calib_score) FILTER (WHERE p.selected) FROM pseudo_labels p "
        "JOIN calibrations c USING (run_id, lang, round, sent_id)").fetchone()
    assert kept == 150 and (best_dropped is None or worst_kept >= best_dropped)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["de"][0]["calibrated"] == 300 and results["de"][0]["n_train"] == 150
    assert (tmp_path / "out" / "de" / "round0" / "model.safetensors").exists()


@pytest.mark.parametrize("extra, message", [
    ({"calibration": {"block_rows": 10}}, "without a `calibrator`"),
    ({"calibrator": "/x", "calibration": {"rows": 10}}, "unknown calibration keys"),
    ({"calibrated_rho": 0.8}, "needs a `calibrator`"),
    ({"calibrator": "/x", "calibrated_rho": 1.5}, "must be in"),
    ({"calibrator": "/x", "calibrated_rho": 0.8, "selector": "confidence:0.9"},
     "needs selector: keep_all"),
])
def test_calibrated_students_config_checks(tmp_path, extra, message):
    from tests.test_rikd import _config
    from xner_ray import config as config_mod
    from xner_ray.methods.rikd.job import RikdConfig

    cfg = yaml.safe_load(open(_config(tmp_path, "/t", "/m", **extra)))
    with pytest.raises(ValueError, match=message):
        config_mod.build(RikdConfig, cfg)
