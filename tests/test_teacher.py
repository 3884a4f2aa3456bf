"""Teacher training through Ray Train on a real local cluster, then `xner evaluate`."""

from __future__ import annotations

import json

import pytest

from xner_ray.demo import sample_path


def _slice(src, dst, n):
    blocks = src.read_text(encoding="utf-8").split("\n\n")[:n]
    dst.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    return dst


@pytest.mark.slow
def test_train_teacher_with_ray_train_then_evaluate(ray_cluster, tiny_model_dir, tmp_path, capsys):
    from xner_ray.cli import main
    from xner_ray.evaluate import evaluate_model
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    train = _slice(sample_path("en.train.txt"), tmp_path / "train.txt", 96)
    dev = _slice(sample_path("en.dev.txt"), tmp_path / "dev.txt", 40)
    # one broken line: the sentence is rejected and written out, training goes on
    dev.write_text(dev.read_text() + "en:Broken\n\n", encoding="utf-8")
    out = tmp_path / "teacher"
    # length_group 4: batches cut from 64-row groups sorted by length, still 6 steps an epoch
    cfg = TeacherConfig(train=str(train), dev=str(dev), out=str(out), model=str(tiny_model_dir),
                        epochs=2, batch_size=16, lr=1e-3, length_group=4, threads=2)
    assert train_teacher(cfg) == out

    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    conf = json.loads((out / "config.json").read_text())
    assert conf["label2id"] == {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-ORG": 3, "I-ORG": 4,
                                "B-PER": 5, "I-PER": 6}
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["n_train"] == 96 and summary["n_dev"] == 40
    assert summary["rejects"]["dev"] == {"malformed_line": 1}
    assert summary["best"]["epoch"] in (1, 2) and summary["best"]["step"] in (6, 12)
    # threads: 2 over the cluster's derived 1 (a 1-CPU worker), as used in the worker
    assert summary["best"]["threads"] == 2 and summary["workers"]["torch_threads"] == 2
    rejected = [json.loads(l) for l in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["reason"], r["raw"]) for r in rejected] == [
        ("malformed_line", "en:Broken")]
    # a clean Hugging Face folder with a model card; epoch checkpoints lived outside it and
    # are gone once the best one was copied in
    assert not (out / "_checkpoints").exists()
    assert not list((tmp_path / "_checkpoints").rglob("checkpoint_*"))
    card = (out / "README.md").read_text()
    assert "AutoModelForTokenClassification" in card and str(tiny_model_dir) in card
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    hf = pipeline("token-classification", model=AutoModelForTokenClassification.from_pretrained(
        out), tokenizer=AutoTokenizer.from_pretrained(out))
    assert isinstance(hf("Anna lives in Berlin"), list)

    # the dev F1 reported during training is the one `xner evaluate` computes on the same file
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--data", str(dev), "--lang", "en"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"precision", "recall", "f1", "n_sentences"} <= set(last)
    assert last["n_sentences"] == 40 and 0.0 <= last["f1"] <= 1.0
    assert last["f1"] == pytest.approx(summary["best"]["dev_f1"], abs=1e-9)
    assert last == {**evaluate_model(str(out), str(dev), lang="en"), "per_type": last["per_type"]}


def test_bad_teacher_input_is_a_clear_error(ray_cluster, tiny_model_dir, tmp_path):
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no usable sentences"):
        train_teacher(TeacherConfig(train=str(empty), dev=str(empty), out=str(tmp_path / "o"),
                                    model=str(tiny_model_dir)))
    train = _slice(sample_path("en.train.txt"), tmp_path / "train.txt", 20)
    dev = tmp_path / "dev.txt"
    dev.write_text("Lagos B-DATE\n\n")
    with pytest.raises(ValueError, match=r"dev tags \['B-DATE'\] never occur in train"):
        train_teacher(TeacherConfig(train=str(train), dev=str(dev), out=str(tmp_path / "o"),
                                    model=str(tiny_model_dir)))


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(ray_cluster, tiny_model_dir,
                                                                tmp_path):
    """``compile: true`` trains through torch.compile (graphs compiled in the worker), gives
    the eager run's loss (two eager runs already differ by ~0.1%: Ray Data's batch order), and
    saves a checkpoint with the plain parameter names (it loads as a normal Hugging Face
    model)."""
    import torch
    from safetensors.torch import load_file

    from xner_ray.train.teacher import TeacherConfig, train_teacher

    train = _slice(sample_path("en.train.txt"), tmp_path / "train.txt", 64)
    dev = _slice(sample_path("en.dev.txt"), tmp_path / "dev.txt", 16)
    runs = {}
    for compiled in (False, True):
        out = tmp_path / f"compiled-{compiled}"
        train_teacher(TeacherConfig(train=str(train), dev=str(dev), out=str(out),
                                    model=str(tiny_model_dir), epochs=1, batch_size=16, lr=1e-3,
                                    compile=compiled, num_workers=1))
        runs[compiled] = (json.loads((out / "train_summary.json").read_text())["best"],
                          load_file(str(out / "model.safetensors")))
    (eager, w_eager), (comp, w_comp) = runs[False], runs[True]
    assert comp["compiled_graphs"] >= 1 and "compiled_graphs" not in eager
    assert comp["train_loss"] == pytest.approx(eager["train_loss"], rel=2e-2)
    assert set(w_comp) == set(w_eager) and not any("_orig_mod" in k for k in w_comp)
    assert all(torch.isfinite(v).all() for v in w_comp.values())
    from transformers import AutoModelForTokenClassification

    assert AutoModelForTokenClassification.from_pretrained(tmp_path / "compiled-True")
