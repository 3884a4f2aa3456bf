"""Labeling: the Ray-free stages on literal batches, then the Ray Data pipeline into a store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xner_ray.demo import sample_path
from xner_ray.labels import is_valid_iob2
from xner_ray.labeling.stages import SubwordStage, TeacherStage

WORDS = [["Angela", "Merkel", "besuchte", "Paris", "."], ["Amsterdam"],
         ["De", "Nederlandsche", "Bank", "in", "Den", "Haag", "opende", "gisteren"]]


def _subworded(model_dir, words=WORDS, max_length=512):
    return SubwordStage(str(model_dir), max_length)({"sent_id": [str(i) for i in range(len(words))],
                                                     "tokens": words})


def test_subword_stage_marks_first_pieces_and_never_truncates(tiny_teacher_dir):
    out = _subworded(tiny_teacher_dir, max_length=6)
    pos = out.column("word_pos").to_pylist()
    ids = out.column("input_ids").to_pylist()
    assert [len(p) for p in pos] == [5, 1, 8] and pos[1] == [1]
    assert len(ids[2]) > 6  # over max_length: kept whole, TeacherStage windows it
    for p, x in zip(pos, ids):
        assert p == sorted(p) and -1 not in p and p[0] == 1 and p[-1] < len(x) - 1
    assert out.column("n_truncated").to_pylist() == [0, 0, 0]


def test_teacher_stage_outputs_and_scores(tiny_teacher_dir):
    stage = TeacherStage([str(tiny_teacher_dir)], batch_size=2)
    out = stage(_subworded(tiny_teacher_dir))
    assert "input_ids" not in out.column_names
    tags = out.column("tags").to_pylist()
    probs = [np.array(p) for p in out.column("probs").to_pylist()]
    assert [len(t) for t in tags] == [5, 1, 8] and all(is_valid_iob2(t) for t in tags)
    for p, t, conf, f_conf, n_ent in zip(probs, tags, out.column("confidence").to_pylist(),
                                         out.column("f_conf").to_pylist(),
                                         out.column("n_entities").to_pylist()):
        assert p.shape == (len(t), len(stage.labels))
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
        assert conf == pytest.approx(p.max(1).mean(), abs=1e-6)  # RIKD Eq. 5
        chosen = p[np.arange(len(t)), [stage.labels.index(x) for x in t]]
        assert f_conf == pytest.approx(-np.log(chosen).mean(), abs=1e-5)  # RIKD 3.3.1
        assert n_ent == sum(x.startswith("B-") for x in t)
    assert out.column("agreement").null_count == 3
    # same sentences alone or in another batch order give the same soft labels
    alone = stage(_subworded(tiny_teacher_dir, [WORDS[2]]))
    np.testing.assert_allclose(np.array(alone.column("probs")[0].as_py()), probs[2], atol=1e-5)


@pytest.mark.slow
def test_compiled_teacher_gives_the_eager_labels(tiny_teacher_dir, tmp_path):
    """``compile: true`` reaches the teacher stage, which then runs through torch.compile
    (dynamic shapes: windows and batches of several widths) with the eager stage's tags and
    soft labels."""
    from torch._dynamo.utils import counters

    from xner_ray.labeling.pipeline import LabelConfig, build_plan

    cfg = LabelConfig(teachers=[str(tiny_teacher_dir)], inputs=[{"path": "x", "lang": "en"}],
                      store=str(tmp_path), compile=True, local=True)
    plan = build_plan(cfg, [], sink=None, rejects=None)
    assert [s.kwargs.get("compile") for s in plan.stages if s.cls is TeacherStage] == [True]

    words = WORDS + [["Berlin"] * 40]  # windowed at max_length 16
    eager = TeacherStage([str(tiny_teacher_dir)], batch_size=2, max_length=16)(
        _subworded(tiny_teacher_dir, words))
    before = counters["stats"]["unique_graphs"]
    compiled = TeacherStage([str(tiny_teacher_dir)], batch_size=2, max_length=16, compile=True)(
        _subworded(tiny_teacher_dir, words))
    assert counters["stats"]["unique_graphs"] > before
    assert compiled.column("tags").to_pylist() == eager.column("tags").to_pylist()
    assert compiled.column("n_windows").to_pylist()[-1] > 1
    for a, b in zip(compiled.column("probs").to_pylist(), eager.column("probs").to_pylist()):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)


def test_ensemble_weights_and_agreement(tiny_teacher_dir, tiny_model_dir, tmp_path):
    import torch

    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    torch.manual_seed(1)
    other = tmp_path / "other"
    load_token_classifier(str(tiny_model_dir), TeacherStage([str(tiny_teacher_dir)]).labels
                          ).save_pretrained(other)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(other)
    batch = _subworded(tiny_teacher_dir)
    pa_ = [np.array(p) for p in TeacherStage([str(tiny_teacher_dir)])(batch).column("probs").to_pylist()]
    pb = [np.array(p) for p in TeacherStage([str(other)])(batch).column("probs").to_pylist()]
    mixed = TeacherStage([str(tiny_teacher_dir), str(other)], weights=[3, 1],
                         student=str(other))(batch)
    for m, a, b in zip(mixed.column("probs").to_pylist(), pa_, pb):
        np.testing.assert_allclose(np.array(m), 0.75 * a + 0.25 * b, atol=1e-5)  # TSL Eq. 6
    for agree, m, b in zip(mixed.column("agreement").to_pylist(), mixed.column("probs").to_pylist(), pb):
        assert agree == pytest.approx(-((np.array(m) - b) ** 2).mean(), abs=1e-6)  # RIKD Eq. 6
    with pytest.raises(ValueError, match="weights must be 2 non-negative"):
        TeacherStage([str(tiny_teacher_dir), str(other)], weights=[1, -1])


@pytest.mark.slow
def test_label_pipeline_into_store(ray_cluster, tiny_teacher_dir, tmp_path, capsys, caplog):
    from xner_ray.cli import main
    from xner_ray.sqlshell import connect

    bad = tmp_path / "es.txt"
    bad.write_bytes("Hola Madrid .\n\n".encode() + b"caf\xe9 roto\n" + ("x " * 3000).encode()
                    + b"\nBuenos dias Barcelona\n")
    store = tmp_path / "store"
    argv = ["label", "--model", str(tiny_teacher_dir), "--store", str(store), "--run-id", "t1",
            "--input", str(sample_path("de.dev.txt")), "--lang", "de", "--gold"]
    assert main(argv) == 0
    assert main(["label", "--model", str(tiny_teacher_dir), "--store", str(store),
                 "--run-id", "t2", "--input", str(sample_path("nl.dev.txt")), "--input", str(bad),
                 "--lang", "nl", "--lang", "es", "--selector", "top_rho:confidence:0.5"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["languages"]["es"] == {"sentences": 2, "entities": pytest.approx(
        summary["languages"]["es"]["entities"]), "selected": 1, "rejects": 2,
        "seconds": pytest.approx(summary["languages"]["es"]["seconds"])}
    assert "nl round 0: 300 sentences" in caplog.text

    con = connect(store)
    rows = con.execute("SELECT run_id, lang, count(*), count(gold_tags) FROM sentences "
                       "GROUP BY ALL ORDER BY 1, 2").fetchall()
    assert rows == [("t1", "de", 300, 300), ("t2", "es", 2, 0), ("t2", "nl", 300, 0)]
    sel = con.execute("SELECT lang, sum(selected::INT), count(*) FROM pseudo_labels "
                      "WHERE run_id = 't2' GROUP BY 1 ORDER BY 1").fetchall()
    assert sel == [("es", 1, 2), ("nl", 150, 300)]
    rejects = con.execute("SELECT line, reason FROM rejects ORDER BY line").fetchall()
    assert rejects == [(3, "invalid_utf8"), (4, "too_long")]
    # every pseudo-label row joins its sentence, with one tag and one prob row per word
    assert con.execute("SELECT count(*) FROM pseudo_labels p ANTI JOIN sentences s USING (run_id, "
                       "lang, round, sent_id)").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM pseudo_labels p JOIN sentences s USING (run_id, lang,"
                       " round, sent_id) WHERE len(p.tags) != len(s.tokens) OR "
                       "len(p.probs) != len(s.tokens)").fetchone() == (0,)

    # a rerun of a complete round is skipped and changes nothing
    caplog.clear()
    assert main(argv) == 0
    assert "complete already, skipped" in caplog.text
    assert connect(store).execute("SELECT count(*) FROM sentences WHERE run_id='t1'").fetchone() == (300,)


@pytest.mark.slow
def test_killed_run_leaves_no_visible_round_and_resumes(ray_cluster, tiny_teacher_dir, tmp_path,
                                                        monkeypatch):
    from xner_ray.labeling import pipeline
    from xner_ray.labeling.pipeline import LabelConfig, label
    from xner_ray.sqlshell import connect
    from xner_ray.store import Store

    cfg = LabelConfig(teachers=[str(tiny_teacher_dir)], store=str(tmp_path / "s"), run_id="k",
                      inputs=[{"path": str(sample_path("de.dev.txt")), "lang": "de"}],
                      block_rows=64, rows_per_file=64)
    real_commit = pipeline.LabeledRound.commit

    def dying_commit(self, store):
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(pipeline.LabeledRound, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        label(cfg)
    store = Store(cfg.store)
    assert not store.is_complete("k", "de", 0)
    assert store.get_run("k")["status"] == "failed"
    assert connect(cfg.store).execute("SELECT count(*) FROM pseudo_labels").fetchone() == (0,)
    monkeypatch.setattr(pipeline.LabeledRound, "commit", real_commit)
    assert label(cfg)["de"]["sentences"] == 300
    con = connect(cfg.store)
    assert con.execute("SELECT count(*), count(DISTINCT sent_id) FROM pseudo_labels"
                       ).fetchone() == (300, 300)
    assert len(store.manifest("k", "de", 0)["tables"]["pseudo_labels"]["files"]) > 1
    assert not store.exists(store.path("_tmp", store.round_key("k", "de", 0)))


@pytest.mark.slow
def test_a_later_round_labels_the_stored_sentences_and_stores_none(ray_cluster, tiny_teacher_dir,
                                                                    tmp_path):
    """Issue 14: the sentences table is written once per run and language. Round 1 labels the
    sentences round 0 stored (no input read again, no sentences or rejects written); its files
    name the stored file their rows came from, so training and SQL find every token."""
    import collections

    import pyarrow as pa

    from xner_ray.labeling.pipeline import LabelConfig, label
    from xner_ray.sqlshell import connect, run_sql
    from xner_ray.store import Store
    from xner_ray.store.sink import file_stem
    from xner_ray.train.distill import read_training_pair, round_pairs

    base = dict(teachers=[str(tiny_teacher_dir)], store=str(tmp_path / "s"), run_id="r",
                inputs=[{"path": str(sample_path("de.dev.txt")), "lang": "de", "gold": True}],
                block_rows=64)
    label(LabelConfig(**base, rows_per_file=64))  # several stored sentences files
    with pytest.raises(ValueError, match="sentences_from must be an earlier round"):
        LabelConfig(**base, round=1, sentences_from=1)
    with pytest.raises(ValueError, match="round 0 of other/de is not committed"):
        label(LabelConfig(**{**base, "run_id": "other"}, round=1, sentences_from=0))
    # a write gathers rows of several stored files: one file per source file (own_run=False,
    # as in RIKD: the job owns the run, so round 1 may write other file sizes)
    assert label(LabelConfig(**base, round=1, sentences_from=0, rows_per_file=150),
                 own_run=False)["de"]["sentences"] == 300

    store = Store(base["store"])
    m0, m1 = store.manifest("r", "de", 0), store.manifest("r", "de", 1)
    assert m1["tables"]["sentences"]["rows"] == m1["tables"]["rejects"]["rows"] == 0
    assert m1["meta"]["sentences_round"] == 0
    stored = {file_stem(f) for f in m0["tables"]["sentences"]["files"]}
    assert len(stored) > 1
    assert {file_stem(f) for f in m1["tables"]["pseudo_labels"]["files"]} <= stored
    con = connect(base["store"])
    ids = dict(con.execute("SELECT round, list(sent_id ORDER BY sent_id) FROM pseudo_labels "
                           "GROUP BY 1").fetchall())
    assert collections.Counter(ids[1]) == collections.Counter(ids[0])
    # SQL joins on run, language and sent_id (any round): every round-1 row finds its sentence
    assert con.execute("SELECT count(*), count_if(len(p.probs) = len(s.tokens)) FROM "
                       "pseudo_labels p JOIN (SELECT DISTINCT run_id, lang, sent_id, tokens "
                       "FROM sentences) s USING (run_id, lang, sent_id) WHERE p.round = 1"
                       ).fetchall() == [(300, 300)]
    per_round = [(r["round"], r["sentences"], r["input_sentences"]) for r in
                 run_sql(con, "sentences_entities", output="arrow").to_pylist()]
    assert per_round == [(0, 300, 300), (1, 300, 0)]
    # the training read of round 1 pairs each file with the stored sentences it came from
    table = pa.concat_tables(t for pair in round_pairs(store, m1)
                             for t in read_training_pair(pair, selected_only=False))
    tokens = dict(con.execute("SELECT sent_id, any_value(tokens) FROM sentences GROUP BY 1"
                              ).fetchall())
    assert table.num_rows == 300
    assert all(tokens[i] == t for i, t in zip(table.column("sent_id").to_pylist(),
                                              table.column("tokens").to_pylist()))


def test_inputs_are_checked_on_the_driver(tmp_path):
    from xner_ray.labeling.source import InputSpec, resolve_inputs

    text = tmp_path / "raw.txt"
    text.write_text("Hola Madrid .\nBuenos dias .\n")
    with pytest.raises(ValueError, match=r"raw.txt: gold=True needs a CoNLL file .* reads as 'text'"):
        resolve_inputs([InputSpec(str(text), "es", gold=True)])
    with pytest.raises(FileNotFoundError, match="nothing.txt"):
        resolve_inputs([InputSpec(str(tmp_path / "nothing.txt"), "es")])
    # a tagged CoNLL file whose first sentence is longer than the sniffed window still counts
    long_first = tmp_path / "nl.txt"
    long_first.write_text("".join(f"w{i} O\n" for i in range(40)) + "\nAmsterdam B-LOC\n")
    assert resolve_inputs([InputSpec(str(long_first), "nl", gold=True)]) == [
        (str(long_first), InputSpec(str(long_first), "nl", gold=True))]


def test_nested_probs_matches_python_lists():
    import pyarrow as pa

    from xner_ray.labeling.stages import nested_probs

    rng = np.random.default_rng(0)
    probs = [rng.random((3, 4)), np.zeros((0, 4)), rng.random((1, 4))]
    expected = pa.array([p.astype(np.float32).tolist() for p in probs],
                        pa.list_(pa.list_(pa.float32())))
    assert nested_probs(probs, 4).equals(expected)
    assert len(nested_probs([], 4)) == 0


def test_same_tokenizer_ignores_saved_truncation_and_padding(tiny_model_dir, tmp_path):
    """A trained student's tokenizer.json keeps the truncation/padding its training switched
    on; it still tokenizes like its encoder (RIKD round 1 with discriminators from another
    folder). A different vocabulary is still refused."""
    from xner_ray.labeling.pipeline import check_same_tokenizer
    from xner_ray.models.classifier import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    tok.backend_tokenizer.enable_truncation(max_length=128)
    tok.backend_tokenizer.enable_padding()
    tok.save_pretrained(tmp_path / "student")
    check_same_tokenizer([str(tiny_model_dir), str(tmp_path / "student")])
    other = load_tokenizer(str(tiny_model_dir))
    other.add_tokens(["xnerraynewword"])
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="different tokenizers"):
        check_same_tokenizer([str(tiny_model_dir), str(tmp_path / "other")])
