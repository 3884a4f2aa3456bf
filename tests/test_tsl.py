"""The TSL job: multi-source weights into the labeling stage, student from the store."""

from __future__ import annotations

import json

import pytest
import yaml

from xner_ray.demo import sample_path


@pytest.mark.slow
def test_tsl_multi_source_similarity_job(ray_cluster, tiny_teacher_dir, tiny_model_dir, tmp_path,
                                         capsys):
    import torch

    from xner_ray.jobs import run_job
    from xner_ray.methods.tsl import TslConfig, run_tsl
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer
    from xner_ray.sqlshell import connect

    # a second source teacher ("nl") with other weights
    torch.manual_seed(7)
    nl_teacher = tmp_path / "teacher-nl"
    load_token_classifier(str(tiny_model_dir), ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER",
                                                "I-PER"]).save_pretrained(nl_teacher)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(nl_teacher)
    cfg = {
        "run_id": "t", "store": str(tmp_path / "store"), "out": str(tmp_path / "out"),
        "source_dev": str(sample_path("en.dev.txt")),
        "teachers": [{"lang": "en", "model": str(tiny_teacher_dir),
                      "unlabeled": str(sample_path("en.dev.txt"))},
                     {"lang": "nl", "model": str(nl_teacher),
                      "unlabeled": str(sample_path("nl.dev.txt"))}],
        "targets": [{"lang": "de", "unlabeled": str(sample_path("de.dev.txt")),
                     "dev": str(sample_path("de.dev.txt"))}],
        "weighting": "similarity", "encoder": str(tiny_model_dir), "pooling": "mean",
        "max_similarity_sentences": 200,
        "student": {"model": str(tiny_model_dir), "epochs": 1, "batch_size": 32,
                    "freeze_layers": 0}}
    path = tmp_path / "tsl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert run_job("tsl", TslConfig, run_tsl, ["--config", str(path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]["de"]
    w = result["weights"]
    assert set(w) == {"en", "nl"} and sum(w.values()) == pytest.approx(1.0)
    assert result["weighting"]["weighting"] == "similarity" and result["weighting"]["tau"] > 0
    con = connect(tmp_path / "store")
    assert con.execute("SELECT count(*), min(teacher) FROM pseudo_labels").fetchone() == (
        300, f"{tiny_teacher_dir}+{nl_teacher}@round0")
    assert (tmp_path / "out" / "de" / "model.safetensors").exists()
    # rerun: reused, not relabeled or retrained
    assert run_job("tsl", TslConfig, run_tsl, ["--config", str(path)]) == 0
    assert "[tsl] de: complete, reused" in capsys.readouterr().out


def test_similarity_needs_unlabeled_source_text():
    from xner_ray.methods.tsl import TslConfig

    with pytest.raises(ValueError, match=r"missing for \['nl'\]"):
        TslConfig(run_id="t", store="s", out="o", source_dev="d", weighting="similarity",
                  teachers=[{"lang": "en", "model": "a", "unlabeled": "u"},
                            {"lang": "nl", "model": "b"}],
                  targets=[{"lang": "de", "unlabeled": "x"}])


def test_paper_setting_config_resolves_with_the_papers_values(capsys):
    """``configs/tsl_benchmark.yaml`` resolves (``--dry-run``) and holds TSL 4.1's training
    values: batch 32, 3 epochs, embeddings + bottom 3 layers frozen, AdamW 5e-5 (teachers) and
    1e-4 (students), MSE soft-label loss, d = 64 and gamma = 0.01 for Eq. 10."""
    from pathlib import Path

    from xner_ray.cli import main

    path = Path(__file__).resolve().parents[1] / "configs" / "tsl_benchmark.yaml"
    assert main(["tsl", "--config", str(path), "--dry-run"]) == 0
    resolved, _ = json.JSONDecoder().raw_decode(capsys.readouterr().out)
    teacher, student = resolved["teachers"][0]["train"], resolved["student"]
    for cfg, lr in ((teacher, 5e-5), (student, 1e-4)):
        assert (cfg["epochs"], cfg["batch_size"], cfg["lr"]) == (3, 32, lr)
        assert cfg["freeze_embeddings"] is True and cfg["freeze_layers"] == 3
    assert student["kd_loss"] == "mse" and resolved["similarity"] == {"d": 64, "gamma": 0.01}
    assert [t["lang"] for t in resolved["targets"]] == ["es", "nl"]
