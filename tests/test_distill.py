"""Distillation through Ray Train from a real store's pseudo-labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xner_ray.demo import sample_path


def _mse_to_teacher(student_dir, store, run_id) -> float:
    """Mean RIKD-Eq.6-style MSE between a model's and the stored teacher distributions."""
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer, predict_log_probs
    from xner_ray.sqlshell import connect

    rows = connect(store).execute(
        "SELECT s.tokens, p.probs FROM pseudo_labels p JOIN sentences s USING (run_id, lang, round,"
        " sent_id) WHERE p.run_id = ? ORDER BY p.sent_id LIMIT 60", [run_id]).fetchall()
    model = load_token_classifier(str(student_dir))
    lps = predict_log_probs(model, load_tokenizer(str(student_dir)), [r[0] for r in rows])
    return float(np.mean([((np.exp(lp) - np.array(p)) ** 2).mean() for lp, (_, p) in zip(lps, rows)]))


@pytest.mark.slow
@pytest.mark.parametrize("kd_loss", ["mse", "kl"])
def test_student_learns_the_teacher_distribution(ray_cluster, tiny_teacher_dir, tiny_model_dir,
                                                 tmp_path, kd_loss):
    import torch

    from xner_ray.labeling.pipeline import LabelConfig, label
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer
    from xner_ray.train.distill import DistillConfig, distill

    store = str(tmp_path / "store")
    label(LabelConfig(teachers=[str(tiny_teacher_dir)], store=store, run_id="kd",
                      inputs=[{"path": str(sample_path("de.train.txt")), "lang": "de"}],
                      selector="top_rho:confidence:0.5"))
    # the untrained student, for a before/after comparison
    torch.manual_seed(42)
    init = tmp_path / "init"
    load_token_classifier(str(tiny_model_dir), ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER",
                                                "I-PER"]).save_pretrained(init)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(init)
    before = _mse_to_teacher(init, store, "kd")

    out = distill(DistillConfig(store=store, run_id="kd", lang="de", round=0,
                                dev=str(sample_path("en.dev.txt")), out=str(tmp_path / "student"),
                                model=str(tiny_model_dir), epochs=3, batch_size=16, lr=3e-3,
                                kd_loss=kd_loss))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["config"]["kd_loss"] == kd_loss
    assert summary["n_train"] == 250  # top-rho 0.5 of 500 sentences: selected rows only
    assert summary["best"]["step"] in (16, 32, 48)  # ceil(250 / 16) = 16 steps per epoch
    assert not (out / "train_set.parquet").exists()
    after = _mse_to_teacher(out, store, "kd")
    assert after < 0.5 * before, (before, after)


def test_missing_round_is_a_clear_error(tmp_path):
    from xner_ray.train.distill import committed_round

    with pytest.raises(ValueError, match=r"no complete round 2 for run 'x', language 'es'"):
        committed_round(str(tmp_path), "x", "es", 2)


def test_training_pairs_are_read_side_by_side_and_filtered(tmp_path):
    """A read task zips a sentences file with the pseudo_labels file written with it (same rows,
    same order); selected_only keeps selected rows with their weights, else every row with
    weight 1; duplicates stay; a whole-set selector is re-applied from its cut-offs; files that
    differ are joined by sent_id (a later round's file against the stored sentences it labeled); a
    pseudo-label without its sentence is an error, and so is an unpaired file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xner_ray.selectors import TopRho
    from xner_ray.store.sink import pair_files
    from xner_ray.train.distill import read_training_pair

    ids = ["d", "b", "a", "c", "b"]  # "b" twice: a repeated sentence
    pq.write_table(pa.table({"sent_id": ids, "tokens": [[i.upper()] for i in ids]}),
                   tmp_path / "s.parquet")
    pq.write_table(pa.table({"sent_id": ids, "probs": [[[1.0, 0.0]]] * 5,
                             "selected": [True, False, True, True, True],
                             "weight": [1.0, 0.0, 0.5, 1.0, 1.0],
                             "confidence": [0.9, 0.8, 0.7, 0.6, 0.8]}), tmp_path / "p.parquet")
    pair = (str(tmp_path / "s.parquet"), str(tmp_path / "p.parquet"))
    sel = pa.concat_tables(read_training_pair(pair)).to_pydict()
    assert sel["sent_id"] == ["d", "a", "c", "b"] and sel["weight"] == [1.0, 0.5, 1.0, 1.0]
    assert sel["tokens"] == [["D"], ["A"], ["C"], ["B"]]
    every = pa.concat_tables(read_training_pair(pair, selected_only=False)).to_pydict()
    assert every["sent_id"] == ids and every["weight"] == [1.0] * 5
    top = TopRho("confidence", 0.4).set_cutoffs([("at", -0.8, "b")])  # the top 2 of 5
    kept = pa.concat_tables(read_training_pair(pair, selector=top)).to_pydict()
    assert kept["sent_id"] == ["d", "b", "b"]  # both copies of a kept duplicate
    # a later round's file against the stored sentences it labeled: another order, a superset
    # with one id once -- joined by sent_id
    pq.write_table(pa.table({"sent_id": ["z", "c", "b", "a", "d"],
                             "tokens": [["Z"], ["C"], ["B"], ["A"], ["D"]]}),
                   tmp_path / "s2.parquet")
    joined = pa.concat_tables(read_training_pair((str(tmp_path / "s2.parquet"), pair[1])))
    assert joined.to_pydict()["tokens"] == sel["tokens"]
    pq.write_table(pa.table({"sent_id": ["d", "b", "a"], "tokens": [["D"], ["B"], ["A"]]}),
                   tmp_path / "s3.parquet")
    with pytest.raises(ValueError, match="1 pseudo-labels have no sentence of their sent_id"):
        list(read_training_pair((str(tmp_path / "s3.parquet"), pair[1])))
    with pytest.raises(ValueError, match="has no sentences file it was labeled from"):
        pair_files(["a/part-1.parquet"], ["b/part-2.parquet"])
    # a round's own file pairs by name, a later round's files by the stem of the stored one
    assert pair_files(["s/part-1.parquet", "s/part-2.parquet"],
                      ["p/part-2.ab.parquet", "p/part-1.parquet", "p/part-2.cd.parquet"]) == [
        ("s/part-1.parquet", "p/part-1.parquet"), ("s/part-2.parquet", "p/part-2.ab.parquet"),
        ("s/part-2.parquet", "p/part-2.cd.parquet")]


def test_calibrated_probs_one_hot_where_the_calibration_changed_the_tag():
    from xner_ray.train.distill import calibrated_probs

    labels = ["O", "B-PER", "I-PER"]
    probs = [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.1, 0.4]]
    # word 0 unchanged (O is its argmax), word 1 unchanged, word 2 extended into the span
    out = calibrated_probs(probs, ["O", "B-PER", "I-PER"], labels)
    assert out == [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.0, 0.0, 1.0]]
    # a span the calibration dropped: both words become O, one-hot
    assert calibrated_probs(probs[1:], ["O", "O"], labels) == [[1.0, 0.0, 0.0], [0.5, 0.1, 0.4]]
    with pytest.raises(ValueError, match="not in the round's labels"):
        calibrated_probs(probs, ["O", "B-LOC", "O"], labels)
    with pytest.raises(ValueError, match="2 calibrated tags for 3 words"):
        calibrated_probs(probs, ["O", "O"], labels)


def test_training_rows_take_the_calibrated_tags_of_changed_sentences(tmp_path):
    """A read task with the round's calibrations: sentences the calibration changed learn the
    calibrated tags; unchanged ones (and rows of other files) keep the teacher's labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xner_ray.train.distill import read_training_pair

    labels = ["O", "B-PER", "I-PER"]
    pq.write_table(pa.table({"sent_id": ["a", "b"], "tokens": [["Ann", "Lee"], ["hi"]]}),
                   tmp_path / "se.parquet")
    probs = [[[0.2, 0.7, 0.1], [0.6, 0.1, 0.3]], [[0.9, 0.05, 0.05]]]
    pq.write_table(pa.table({"sent_id": ["a", "b"],
                             "probs": pa.array(probs, pa.list_(pa.list_(pa.float16()))),
                             "selected": [True, True], "weight": [1.0, 1.0]}),
                   tmp_path / "pl.parquet")
    calib = pa.table({"sent_id": ["a", "b", "zz"],
                      "calib_tags": [["B-PER", "I-PER"], ["O"], ["O"]],
                      "n_changed": pa.array([1, 0, 1], pa.int32())})
    pq.write_table(calib.slice(0, 2), tmp_path / "c1.parquet")
    pq.write_table(calib.slice(2), tmp_path / "c2.parquet")
    item = (str(tmp_path / "se.parquet"), str(tmp_path / "pl.parquet"))
    plain = pa.concat_tables(read_training_pair(item))
    got = pa.concat_tables(read_training_pair(
        item, calibrations=[str(tmp_path / "c1.parquet"), str(tmp_path / "c2.parquet")],
        labels=labels))
    assert got.column("sent_id").to_pylist() == ["a", "b"]
    a, b = got.column("probs").to_pylist()
    assert a[0] == pytest.approx([0.2, 0.7, 0.1], abs=1e-3) and a[1] == [0.0, 0.0, 1.0]
    assert b == plain.column("probs").to_pylist()[1]  # n_changed 0: the teacher's labels
    assert got.column("probs").type == pa.list_(pa.list_(pa.float32()))


def test_training_rows_keep_the_calibration_selectors_choice(tmp_path):
    """``calib_selector`` (top rho by calib_score, fitted on the round) re-applied in a read
    task: only the rows it keeps are trained on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from xner_ray.selectors import make_selector
    from xner_ray.train.distill import read_training_pair

    ids = ["a", "b", "c", "d"]
    pq.write_table(pa.table({"sent_id": ids, "tokens": [["w"]] * 4}), tmp_path / "se.parquet")
    pq.write_table(pa.table({"sent_id": ids,
                             "probs": pa.array([[[0.9, 0.1]]] * 4, pa.list_(pa.list_(pa.float16()))),
                             "selected": [True] * 4, "weight": [1.0] * 4}), tmp_path / "pl.parquet")
    calib = pa.table({"sent_id": ids, "calib_tags": [["O"]] * 4,
                      "n_changed": pa.array([0] * 4, pa.int32()),
                      "calib_score": pa.array([0.2, 0.9, None, 0.7], pa.float32())})
    pq.write_table(calib, tmp_path / "c.parquet")
    selector = make_selector("top_rho:calib_score:0.5").fit(calib)
    got = pa.concat_tables(read_training_pair(
        (str(tmp_path / "se.parquet"), str(tmp_path / "pl.parquet")),
        calibrations=[str(tmp_path / "c.parquet")], labels=["O", "B-PER"],
        calib_selector=selector))
    assert got.column("sent_id").to_pylist() == ["b", "d"]
