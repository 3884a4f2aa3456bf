"""CalibreNet training (a few steps on the tiny model), PBR stages, and the labeling stage on
literal dicts."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest
import torch

from xner_ray.labels import is_valid_iob2, tags_to_spans
from xner_ray.methods.calibrenet.data import DevSet
from xner_ray.methods.calibrenet.encode import CalibInstance
from xner_ray.methods.calibrenet.garble import dist_from_counts
from xner_ray.methods.calibrenet.stage import CalibrationStage, resolve_overlaps
from xner_ray.methods.calibrenet.train import CalibreNetConfig, pbr_config, pretrain_pbr, \
    train_calibrenet

torch.set_num_threads(1)

SENTS = [("Angela Merkel visited Paris on Monday .", "B-PER I-PER O B-LOC O O O"),
         ("The United Nations met in New York City .", "O B-ORG I-ORG O O B-LOC I-LOC I-LOC O"),
         ("John Smith works for Acme Corp in Berlin", "B-PER I-PER O O B-ORG I-ORG O B-LOC"),
         ("Madrid is the capital of Spain", "B-LOC O O O O B-LOC")]


def _instances(n_copies: int, seed: int = 0) -> list[CalibInstance]:
    rng, dist = random.Random(seed), dist_from_counts({}, max_n=2)
    from xner_ray.methods.calibrenet.garble import garble

    out = []
    for _ in range(n_copies):
        for text, tags in SENTS:
            words = text.split()
            for s, e, t in tags_to_spans(tags.split()):
                answer, op = garble((s, e), len(words), dist, rng)
                out.append(CalibInstance(words, answer, (s, e, t), f"garble:{op[0]}"))
    return out


def _cfg(tmp_path, **kw) -> CalibreNetConfig:
    base = dict(out=str(tmp_path / "calib"), lr=2e-3, batch_size=16, epochs=25, eval_every=10_000,
                warmup_ratio=0.1, seed=0)
    return CalibreNetConfig(**{**base, **kw})


def test_config_defaults_are_the_papers():
    cfg = CalibreNetConfig(out="x")
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.weight_decay, cfg.warmup_ratio,
            cfg.max_length) == (3e-5, 64, 4, 0.0075, 0.1, 192)
    assert (cfg.alpha, cfg.beta, cfg.gamma, cfg.eval_every) == (0.3, 0.3, 0.4, 200)
    pbr = pbr_config(out="x")
    assert (pbr.weight_decay, pbr.max_length, pbr.epochs, pbr.mlm, pbr.beta) == (
        0.005, 384, 3, True, 0.0)
    with pytest.raises(ValueError):
        CalibreNetConfig(out="x", gamma=1.5)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calib-train")
    words = [t.split() for t, _ in SENTS]
    gold = [g.split() for _, g in SENTS]
    pred = [["O", "B-PER", "O", "B-LOC", "I-LOC", "O", "O"], gold[1], gold[2], gold[3]]
    dev = DevSet(words, pred, gold)
    cfg = _cfg(tmp, model=str(tiny_model_dir), eval_every=20)
    return cfg, train_calibrenet(cfg, _instances(1), dev)


def test_training_reduces_the_loss_and_keeps_the_best_dev_checkpoint(trained):
    cfg, summary = trained
    losses = [x["loss"] for x in summary["losses"]]
    assert summary["steps"] == 25 and len(losses) == 25  # 16 instances = one batch per epoch
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert [e["step"] for e in summary["evals"]] == [20, 25]
    best = max(summary["evals"], key=lambda e: e["f1"])
    saved = json.loads((cfg.out and open(f"{cfg.out}/calibrenet.json").read()))
    assert saved["step"] == best["step"] and saved["dev"]["f1"] == best["f1"]
    assert json.load(open(f"{cfg.out}/train_summary.json"))["steps"] == 25


def test_stage_on_a_literal_dict(trained):
    cfg, _ = trained
    stage = CalibrationStage(cfg.out, batch_size=4, device="cpu")
    batch = {"sent_id": ["a", "b", "c"],
             "tokens": [t.split() for t, _ in SENTS[:2]] + [["nothing", "here"]],
             "tags": [["O", "B-PER", "O", "B-LOC", "I-LOC", "O", "O"],
                      "O B-ORG I-ORG O O B-LOC I-LOC I-LOC O".split(), ["O", "O"]]}
    out = stage(batch)
    assert out.column_names[:3] == ["sent_id", "tokens", "tags"]
    assert out.schema.field("calib_spans").type == pa.list_(pa.struct(
        [("start", pa.int32()), ("end", pa.int32()), ("type", pa.string()),
         ("score", pa.float32())]))
    rows = out.to_pylist()
    for row in rows:
        assert len(row["calib_tags"]) == len(row["tokens"]) and is_valid_iob2(row["calib_tags"])
        assert [(s["start"], s["end"], s["type"]) for s in row["calib_spans"]] == \
            tags_to_spans(row["calib_tags"])
        assert [(s["start"], s["end"], s["type"]) for s in row["orig_spans"]] == \
            tags_to_spans(row["tags"])
        assert all(s["score"] is None for s in row["orig_spans"])  # no soft labels given
        assert len(row["calib_spans"]) <= len(row["orig_spans"])
    assert rows[2]["calib_spans"] == [] and rows[2]["calib_score"] is None
    assert rows[2]["n_changed"] == 0
    assert 0 < rows[0]["calib_score"] <= 1
    assert pa.table(batch).num_rows == stage(pa.table(batch)).num_rows


def test_n_changed_and_overlap_resolution_by_hand():
    orig = [[{"start": 0, "end": 2, "type": "PER", "score": None},
             {"start": 3, "end": 4, "type": "LOC", "score": None}]]
    spans = [{"start": 1, "end": 3, "type": "PER", "score": 0.6},
             {"start": 2, "end": 4, "type": "LOC", "score": 0.9},
             {"start": 0, "end": 1, "type": "ORG", "score": 0.6}]
    calib = [resolve_overlaps(spans)]
    assert [(s["start"], s["end"]) for s in calib[0]] == [(0, 1), (2, 4)]
    out = CalibrationStage.add_columns(pa.table({"x": [1]}), [["a", "b", "c", "d"]], orig, calib)
    row = out.to_pylist()[0]
    assert row["calib_tags"] == ["B-ORG", "O", "B-LOC", "I-LOC"]
    assert row["n_changed"] == 2 and row["calib_score"] == pytest.approx(0.75)
    tie = [{"start": 0, "end": 2, "type": "PER", "score": 0.5},
           {"start": 1, "end": 2, "type": "PER", "score": 0.5}]
    assert resolve_overlaps(tie) == resolve_overlaps(tie[::-1]) == [tie[0]]


def test_pbr_stages_then_finetuning_with_new_types(tiny_model_dir, tmp_path):
    from xner_ray.methods.calibrenet.checkpoint import load_calibrenet
    from xner_ray.methods.calibrenet.pbr import Stage

    items = _instances(1)
    stages = [Stage("continual:0:en", items[:8]), Stage("continual:1:de", items[8:])]
    cfg = pbr_config(out=str(tmp_path / "pbr"), model=str(tiny_model_dir), batch_size=8,
                     epochs=1, lr=1e-3)
    summaries = pretrain_pbr(cfg, stages)
    assert [s["steps"] for s in summaries] == [1, 1]
    assert all("mlm" in s["losses"][0] and s["losses"][0]["cls"] >= 0 for s in summaries)
    model, _ = load_calibrenet(tmp_path / "pbr" / "stage-1")
    assert model.mlm_head is not None
    ft = _cfg(tmp_path, model=str(tmp_path / "pbr" / "stage-1"), epochs=1,
              out=str(tmp_path / "ft"))
    train_calibrenet(ft, items[:4], types=["ORG", "PER", "LOC", "MISC"])
    tuned, _ = load_calibrenet(tmp_path / "ft")
    assert tuned.cfg.types == ["LOC", "MISC", "ORG", "PER"] and tuned.mlm_head is None
    assert tuned.type_head.out_features == 4


def test_original_span_scores_from_soft_labels():
    from xner_ray.methods.calibrenet.stage import span_scores

    labels = ["O", "B-PER", "I-PER"]
    probs = [[0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]
    assert span_scores(["B-PER", "I-PER", "O"], probs, labels) == [
        {"start": 0, "end": 2, "type": "PER", "score": pytest.approx(0.7)}]
