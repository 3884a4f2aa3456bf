"""The combined job: its config checks, and projection + English sources -> l_score selection ->
RIKD rounds end to end on a real local Ray cluster (tiny models)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import TAGS
from xner_ray.demo import sample_path


def _model_folder(path, tiny_model_dir, seed: int, *, discriminator: bool = False):
    """The tiny encoder with a seeded random NER head (a stand-in for a trained projection
    model), optionally with a seeded discriminator (a TLADV teacher)."""
    from xner_ray.methods.advpicker.tladv import LanguageDiscriminator, save_discriminator
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    torch.manual_seed(seed)
    model = load_token_classifier(str(tiny_model_dir), TAGS)
    model.save_pretrained(path, safe_serialization=True)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(path)
    if discriminator:
        save_discriminator(LanguageDiscriminator(model.config.hidden_size, 16), path, seed=seed)
    return str(path)


def _values(tmp_path, teacher, student_model, **extra) -> dict:
    return {
        "run_id": "c1", "store": str(tmp_path / "store"), "out": str(tmp_path / "out"),
        "source_dev": str(sample_path("en.dev.txt")), "teacher": str(teacher),
        "targets": [{"lang": "de", "unlabeled": str(sample_path("de.dev.txt")),
                     "dev": str(sample_path("de.dev.txt"))}],
        "rounds": 2, "warmup_steps": 2, "rho": 0.8,
        "student": {"model": str(student_model), "epochs": 1, "batch_size": 32, "lr": 3e-3,
                    "freeze_layers": 0, "freeze_embeddings": False, "dev_limit": 100},
        **extra}


def _main(argv) -> int:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "combined_job", Path(__file__).resolve().parents[1] / "jobs" / "combined.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from xner_ray.jobs import run_job

    return run_job("combined", mod.CombinedConfig, mod.run_combined, argv)


def test_config_checks_and_the_projection_config(tmp_path):
    from xner_ray.methods.combined import CombinedConfig, project_config

    base = _values(tmp_path, "teacher-en", "student", lang_scorers=["tladv"])
    corpus = {"lang": "de", "path": str(tmp_path / "corpus"), "fmt": "tsv"}
    (tmp_path / "corpus").write_text("Paris\tParis\n")
    cfg = CombinedConfig(**base, project={"corpora": [corpus], "aligner": "similarity"})
    p = project_config(cfg, "/models/teacher-en")  # the job's defaults under the given keys
    assert (p.run_id, p.store, p.out, p.source_dev, p.teacher) == (
        "c1-project", cfg.store, str(tmp_path / "out" / "project"), cfg.source_dev,
        "/models/teacher-en")
    assert [c.lang for c in p.corpora] == ["de"]
    assert CombinedConfig(**base, projected={"de": "m"}).source_weights is None  # uniform later
    bad = [
        (dict(projected={"de": "m"}, project={"corpora": [corpus]}), "either `projected`"),
        (dict(), "either `projected`"),
        (dict(projected={"es": "m"}), "one projected source per target language"),
        (dict(project={"corpora": [corpus], "aligner": "similarity", "teacher": "x"}),
         "must not set ['teacher']"),
        (dict(project={"corpora": [corpus], "aligner": "similarity", "train_target": False}),
         "leaves no projected model"),
        (dict(projected={"de": "m"}, source_weights=[1.0]), "two non-negative numbers"),
        (dict(projected={"de": "m"}, source_weights=[0, 0]), "positive sum"),
        (dict(projected={"de": "m"}, selector="confidence:0.9"), "selects by l_score"),
        (dict(projected={"de": "m"}, rho=1.5), "rho must be in (0, 1]"),
        (dict(projected={"de": "m"}, train_tladv={"train": "t"}), "either `lang_scorers`"),
    ]
    for extra, message in bad:
        with pytest.raises(ValueError) as e:
            CombinedConfig(**{**base, **extra})
        assert message in str(e.value), (extra, str(e.value))
    no_scorers = {k: v for k, v in base.items() if k != "lang_scorers"}
    with pytest.raises(ValueError, match="must not set"):
        CombinedConfig(**no_scorers, projected={"de": "m"},
                       train_tladv={"train": "t", "seed": 3})


@pytest.mark.slow
def test_combined_job_two_sources_top_rho_every_round_and_resume(
        ray_cluster, tiny_teacher_dir, tiny_model_dir, tmp_path, capsys):
    from xner_ray.sqlshell import connect

    projected = _model_folder(tmp_path / "projected-de", tiny_model_dir, seed=7)
    tladv = _model_folder(tmp_path / "tladv", tiny_model_dir, seed=5, discriminator=True)
    config = tmp_path / "combined.yaml"
    config.write_text(yaml.safe_dump(_values(
        tmp_path, tiny_teacher_dir, tiny_model_dir, projected={"de": projected},
        lang_scorers=[tladv], source_weights=[0.25, 0.75])))
    assert _main(["--config", str(config)]) == 0
    rounds = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]["de"]
    assert [r["round"] for r in rounds] == [0, 1]
    # round 0: both sources with their weights; round 1: round 0's student alone
    assert rounds[0]["teacher"] == f"{projected}+{tiny_teacher_dir}"
    assert rounds[0]["weights"] == [0.25, 0.75] and "weights" not in rounds[1]
    assert rounds[1]["teacher"] == rounds[0]["student"]
    for r in rounds:  # exactly the top rho of the 300 sentences, every round (AdvPicker 3.2)
        assert (r["sentences"], r["n_train"], r["kept_share"]) == (300, 240, 0.8)
        assert r["rl_steps"] > 0 and r["target_dev"]["n_sentences"] == 300
    con = connect(tmp_path / "store")
    assert con.execute("SELECT round, count(*), count(lang_score), min(teacher) FROM "
                       "pseudo_labels GROUP BY 1 ORDER BY 1").fetchall() == [
        (0, 300, 300, f"{projected}+{tiny_teacher_dir}@round0"),
        (1, 300, 300, f"{rounds[0]['student']}@round1")]
    # stage 0: the l_score selection keeps 240 of 300; stage 1: the policy decides on those
    # 240 only (the view's `selected` is the latest decision: the policy's)
    assert con.execute("SELECT round, stage, count(*), sum(selected::INT) FILTER (WHERE stage "
                       "= 0) FROM decisions GROUP BY 1, 2 ORDER BY 1, 2").fetchall() == [
        (0, 0, 300, 240), (0, 1, 240, None), (1, 0, 300, 240), (1, 1, 240, None)]
    for k in (0, 1):  # the kept rows are the best by l_score: none dropped scores above them
        kept_min, dropped_max = con.execute(
            "SELECT min(p.lang_score) FILTER (WHERE d.selected), max(p.lang_score) FILTER "
            "(WHERE NOT d.selected) FROM pseudo_labels p JOIN decisions d USING (sent_id, "
            f"round) WHERE d.stage = 0 AND p.round = {k}").fetchone()
        assert kept_min >= dropped_max
    assert con.execute("SELECT job, status FROM runs").fetchall() == [("combined", "succeeded")]
    # a rerun resumes every committed round
    assert _main(["--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]["de"] == rounds
