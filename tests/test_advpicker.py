"""AdvPicker: the alternating TLADV updates, l_score and top-rho, the seed-ensemble rule, the
lang_score columns in the store, and the job end to end (tiny model, real local Ray)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from tests.conftest import TAGS
from xner_ray.demo import sample_path
from xner_ray.scores import batch_lang_score, most_confident
from xner_ray.selectors import LangScoreTopRho, make_selector

SRC = [["Angela", "Merkel", "visited", "Paris", "."], ["The", "Bank", "of", "England"]]
SRC_TAGS = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["O", "B-ORG", "I-ORG", "I-ORG"]]
TGT = [["De", "Nederlandsche", "Bank", "in", "Den", "Haag"], ["Amsterdam", "is", "mooi"],
       ["Berlin"]]


def _tladv_folder(path, tiny_model_dir, seed: int, hidden: int = 16):
    """A tiny token classifier + a seeded random discriminator, saved like a TLADV teacher."""
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer
    from xner_ray.methods.advpicker.tladv import LanguageDiscriminator, save_discriminator

    torch.manual_seed(seed)
    model = load_token_classifier(str(tiny_model_dir), TAGS)
    model.save_pretrained(path, safe_serialization=True)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(path)
    save_discriminator(LanguageDiscriminator(model.config.hidden_size, hidden), path, seed=seed)
    return path


def _updates(tiny_model_dir, **lrs):
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer
    from xner_ray.methods.advpicker.tladv import (AlternatingUpdates, Batch, LanguageDiscriminator,
                                            TladvModel)

    torch.manual_seed(0)
    ner = load_token_classifier(str(tiny_model_dir), TAGS, freeze_embeddings=True)
    module = TladvModel(ner, LanguageDiscriminator(ner.config.hidden_size, 16))
    upd = AlternatingUpdates(module, module, total_steps=10,
                             **({"lr": 1e-2, "lr_encoder": 1e-2, "lr_discriminator": 1e-2} | lrs))
    tok = load_tokenizer(str(tiny_model_dir))
    label2id = {t: i for i, t in enumerate(TAGS)}
    batches = dict(ner=Batch.encode(tok, SRC, "cpu", 64, SRC_TAGS, label2id),
                   src=Batch.encode(tok, SRC, "cpu", 64), tgt=Batch.encode(tok, TGT, "cpu", 64))
    return module, upd, batches


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _moved(module, before) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}


def test_each_alternating_update_moves_only_its_parameters(tiny_model_dir):
    """Algorithm 1: L^NER -> encoder + NER head, L^E -> encoder, L^DIS -> discriminator."""
    module, upd, b = _updates(tiny_model_dir)
    names = {n for n, _ in module.named_parameters()}
    disc = {n for n in names if n.startswith("disc.")}
    head = {n for n in names if n.startswith("ner.classifier.")}
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    encoder = names - disc - head - frozen
    assert disc and head and encoder and frozen  # embeddings frozen, layers trainable
    assert all(n.startswith("ner.bert.embeddings.") for n in frozen)
    module.train()

    before = _snapshot(module)
    upd.ner(b["ner"])
    assert _moved(module, before) == encoder | head

    before = _snapshot(module)
    upd.encoder(b["src"], b["tgt"])
    assert _moved(module, before) == encoder

    before = _snapshot(module)
    upd.discriminator(b["src"], b["tgt"])
    assert _moved(module, before) == disc
    assert all(p.grad is None for p in module.parameters())  # nothing left for the next update


def test_encoder_loss_flips_language_labels_and_discriminator_loss_does_not(tiny_model_dir):
    """Eq. 4: L^E scores source tokens as target and target tokens as source; L^DIS the truth."""
    from xner_ray.methods.advpicker.tladv import SOURCE, TARGET, language_bce

    module, upd, b = _updates(tiny_model_dir)
    module.eval()  # no dropout: the update's forward equals the one below

    def expected(src_label: float, tgt_label: float) -> float:
        with torch.no_grad():
            src = module.disc(module.encode(b["src"].input_ids, b["src"].attention_mask))
            tgt = module.disc(module.encode(b["tgt"].input_ids, b["tgt"].attention_mask))
        return float(language_bce(src, b["src"].attention_mask, src_label)
                     + language_bce(tgt, b["tgt"].attention_mask, tgt_label))

    want = expected(TARGET, SOURCE)
    assert float(upd.encoder(b["src"], b["tgt"])) == pytest.approx(want, rel=1e-5)
    want, flipped = expected(SOURCE, TARGET), expected(TARGET, SOURCE)
    loss, acc = map(float, upd.discriminator(b["src"], b["tgt"]))
    assert loss == pytest.approx(want, rel=1e-5) and loss != pytest.approx(flipped, rel=1e-3)
    assert 0.0 <= acc <= 1.0


def test_language_bce_and_sentence_probability_ignore_padding():
    from xner_ray.methods.advpicker.tladv import language_bce, sentence_source_prob

    logits = torch.tensor([[0.0, math.log(3.0), 50.0], [math.log(1 / 3), 0.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # Eq. 5: the mean of P(source) = sigmoid(logit) over each sentence's unpadded tokens
    assert sentence_source_prob(logits, mask).tolist() == pytest.approx([0.625, 0.25])
    want = -(math.log(0.5) + math.log(0.75) + math.log(0.25)) / 3
    assert float(language_bce(logits, mask, 1.0)) == pytest.approx(want, rel=1e-6)


def test_l_score_and_top_rho_on_known_probabilities():
    p = np.array([0.5, 0.9, 0.1, 0.6, 0.45, 0.0, 1.0])
    l_score = batch_lang_score(p)  # Eq. 6
    np.testing.assert_allclose(l_score, [1.0, 0.6, 0.6, 0.9, 0.95, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        batch_lang_score(np.array([1.2]))
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    table = pa.table({"sent_id": ids, "lang_score": pa.array(l_score, pa.float32()),
                      "lang_scores": [[float(x)] for x in l_score]})
    # top rho = 3/7 of 7 sentences: floor(3) = the three with P closest to 0.5
    for combine in ("chosen", "union"):
        out = LangScoreTopRho(3 / 7, combine).select(table)
        kept = [i for i, k in zip(ids, out.column("selected").to_pylist()) if k]
        assert kept == ["a", "d", "e"]
        assert out.column("weight").to_pylist() == [float(i in kept) for i in ids]
        assert set(out.column("selector").to_pylist()) == {
            f"lang_score.v1(rho={3 / 7},combine={combine})"}
    # rho 0.8 of 7 -> 5 rows; b and c tie at 0.6 (both kept), f and g tie at 0.5 (dropped)
    out = LangScoreTopRho(0.8, "chosen").select(table)
    assert out.column("selected").to_pylist() == [True] * 5 + [False] * 2


def test_union_of_seed_selections_and_the_default_keeps_exactly_rho():
    ids = ["a", "b", "c", "d", "e"]
    per_seed = [[1.0, 0.6], [0.9, 0.7], [0.8, 0.8], [0.7, 0.9], [0.6, 1.0]]
    table = pa.table({"sent_id": ids, "lang_scores": per_seed,
                      "lang_score": [0.6, 0.9, 0.8, 0.7, 1.0]})
    # rho 0.4 of 5 -> 2 per seed: {a, b} by seed 0, {e, d} by seed 1; c is in neither
    sel = LangScoreTopRho(0.4, "union").fit(table)
    assert sel(table).column("selected").to_pylist() == [True, True, False, True, True]
    assert sel.cutoffs == [("at", -0.9, "b"), ("at", -0.9, "d")]
    # no per-row memory: deciding needs the per-seed scores themselves (never stored)
    with pytest.raises(ValueError, match="needs column 'lang_scores'"):
        sel(pa.table({"sent_id": ["e", "c"]}))
    # the default (AdvPicker 3.2 / Table 5): one ranking of the stored score, exactly
    # floor(rho * n) -- and it decides the round's stored files (lang_score, sent_id) alone
    default = LangScoreTopRho(0.4)
    assert default.combine == "chosen" and default.rank_columns == ("lang_score",)
    chosen = default.select(table)
    assert chosen.column("selected").to_pylist() == [False, True, False, False, True]
    files = pa.table({"sent_id": ["e", "c"], "lang_score": [1.0, 0.8]})
    assert default(files).column("selected").to_pylist() == [True, False]
    with pytest.raises(RuntimeError, match="call fit"):
        LangScoreTopRho(0.4)(files)


@pytest.mark.parametrize("n, k", [(1000, 3), (12167, 5), (8405, 5), (15836, 5)])
def test_default_keeps_exactly_floor_rho_n_where_union_keeps_more(n, k):
    """AdvPicker Table 5's counts are floor(0.8 n) (de 9,733 / 12,167; es 6,724 / 8,405;
    nl 12,668 / 15,836); with K independent-ish seed scores the union keeps far more."""
    rng = np.random.default_rng(n)
    scores = rng.uniform(0.5, 1.0, size=(n, k))
    ids = [f"{i:06d}" for i in range(n)]
    table = pa.table({"sent_id": ids, "lang_scores": scores.tolist(),
                      "lang_score": scores[np.arange(n), rng.integers(0, k, n)]})
    kept = sum(LangScoreTopRho(0.8).select(table).column("selected").to_pylist())
    assert kept == math.floor(0.8 * n)
    union = sum(LangScoreTopRho(0.8, "union").select(table).column("selected").to_pylist())
    assert union > 0.9 * n


def test_lang_score_selector_specs_and_config_checks():
    from xner_ray.labeling.pipeline import LabelConfig

    assert make_selector("lang_score") == LangScoreTopRho(0.8, "chosen")
    assert make_selector("lang_score:0.8:union") == LangScoreTopRho(0.8, "union")
    assert make_selector("lang_score:0.5:chosen") == LangScoreTopRho(0.5, "chosen")
    assert make_selector({"name": "lang_score.v1", "rho": "0.7"}) == LangScoreTopRho(0.7)
    with pytest.raises(ValueError, match="combine must be one of"):
        make_selector("lang_score:0.8:sum")
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\]"):
        make_selector("lang_score:1.5")
    inputs = [{"path": "x.txt", "lang": "de"}]
    with pytest.raises(ValueError, match="give `lang_scorers`"):
        LabelConfig(teachers=["t"], inputs=inputs, store="s", selector="lang_score")
    with pytest.raises(ValueError, match="give `lang_scorers`"):
        LabelConfig(teachers=["t"], inputs=inputs, store="s", selector="top_rho:lang_score:0.8")
    with pytest.raises(ValueError, match="combine must be one of"):
        LabelConfig(teachers=["t"], inputs=inputs, store="s", combine="vote")
    with pytest.raises(ValueError, match="weights apply to combine: mean"):
        LabelConfig(teachers=["t", "u"], inputs=inputs, store="s", weights=[1, 2],
                    combine="best_confidence")


def test_seed_ensemble_keeps_the_most_confident_sequence():
    """AdvPicker 4.1: per sentence, the sequence with the highest sum of predicted-label
    probabilities; ties go to the first seed."""
    a = [np.array([[0.6, 0.4], [0.9, 0.1]]), np.array([[0.5, 0.5]]), np.array([[0.7, 0.3]])]
    b = [np.array([[0.8, 0.2], [0.65, 0.35]]), np.array([[0.3, 0.7]]), np.array([[0.3, 0.7]])]
    # sums: s0 a=1.5 > b=1.45; s1 a=0.5 < b=0.7; s2 a=0.7 == b=0.7
    assert most_confident([a, b]).tolist() == [0, 1, 0]
    assert most_confident([b, a]).tolist() == [1, 0, 0]  # the tie still goes to the first
    with pytest.raises(ValueError, match="different numbers"):
        most_confident([a, b[:2]])


def test_teacher_stage_picks_sequences_and_scores_languages(tiny_model_dir, tmp_path):
    from xner_ray.labeling.stages import SubwordStage, TeacherStage
    from xner_ray.methods.advpicker.tladv import load_discriminator, sentence_source_prob

    seeds = [str(_tladv_folder(tmp_path / f"s{k}", tiny_model_dir, k)) for k in (1, 2)]
    words = TGT + SRC
    batch = SubwordStage(seeds[0])({"sent_id": [str(i) for i in range(len(words))],
                                    "tokens": words})
    alone = [TeacherStage([s], lang_scorers=[s], batch_size=2)(batch) for s in seeds]
    both = TeacherStage(seeds, lang_scorers=seeds, combine="best_confidence", batch_size=2)(batch)
    per_seed = [[np.array(p) for p in t.column("probs").to_pylist()] for t in alone]
    chosen = most_confident(per_seed)
    assert 0 < chosen.sum() < len(words)  # both seeds win somewhere on this batch
    scores = np.array(both.column("lang_scores").to_pylist())
    for i, k in enumerate(chosen):
        np.testing.assert_allclose(np.array(both.column("probs")[i].as_py()), per_seed[k][i],
                                   atol=1e-6)
        for j in range(2):  # every seed's own l_score, as when it labels alone
            assert scores[i, j] == pytest.approx(alone[j].column("lang_score")[i].as_py(),
                                                 abs=1e-6)
        assert both.column("lang_score")[i].as_py() == pytest.approx(scores[i, k], abs=1e-6)
    # Eq. 5-6 by hand for seed 0, sentence 0: mean sigmoid over its sub-words, then 1 - |P - .5|
    from xner_ray.models.classifier import load_token_classifier

    model, disc = load_token_classifier(seeds[0]).eval(), load_discriminator(seeds[0])
    ids = torch.tensor([batch.column("input_ids")[0].as_py()])
    with torch.no_grad():
        h = model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        p = float(sentence_source_prob(disc(h), torch.ones_like(ids))[0])
    assert scores[0, 0] == pytest.approx(1 - abs(p - 0.5), abs=1e-6)
    # without scorers the columns exist and are null (TSL/RIKD labeling unchanged)
    plain = TeacherStage([seeds[0]])(batch)
    assert plain.column("lang_score").null_count == len(words)
    assert plain.column("lang_scores").null_count == len(words)


@pytest.mark.slow
def test_lang_score_and_selection_in_the_store(ray_cluster, tiny_model_dir, tmp_path):
    from xner_ray.io.text import read_unlabeled
    from xner_ray.labeling.pipeline import LabelConfig, label
    from xner_ray.labeling.stages import SubwordStage, TeacherStage
    from xner_ray.sqlshell import connect
    from xner_ray.store import Store

    seeds = [str(_tladv_folder(tmp_path / f"s{k}", tiny_model_dir, k)) for k in (3, 4)]
    data = str(sample_path("de.dev.txt"))
    cfg = LabelConfig(teachers=seeds, lang_scorers=seeds, combine="best_confidence",
                      selector="lang_score:0.8:union", store=str(tmp_path / "store"), run_id="adv",
                      inputs=[{"path": data, "lang": "de", "gold": True}])
    counts = label(cfg)["de"]
    # the expected decisions, Ray-free: each seed's top 80% by its own l_score, united
    sents = list(read_unlabeled(data, lang="de"))
    batch = SubwordStage(seeds[0])({"sent_id": [s.sent_id for s in sents],
                                    "tokens": [s.tokens for s in sents]})
    ref = TeacherStage(seeds, lang_scorers=seeds, combine="best_confidence")(batch)
    per_seed = np.array(ref.column("lang_scores").to_pylist())
    ids = np.array([s.sent_id for s in sents])
    k = math.floor(0.8 * len(ids))
    keep = {i for j in range(2) for i in ids[np.lexsort((ids, -per_seed[:, j]))[:k]]}
    assert 0.8 * len(ids) < len(keep) < len(ids)  # the union is larger than one seed's share

    con = connect(tmp_path / "store")
    rows = con.execute("SELECT sent_id, lang_score, selected, weight, selector FROM pseudo_labels"
                       ).fetchall()
    assert len(rows) == len(sents) == 300 and counts["selected"] == sum(r[2] for r in rows)
    assert {r[0] for r in rows if r[2]} == keep
    stored = dict(zip(ref.column("sent_id").to_pylist(), ref.column("lang_score").to_pylist()))
    for sid, score, selected, weight, selector in rows:
        assert 0.5 <= score <= 1.0 and score == pytest.approx(stored[sid], abs=1e-5)
        assert weight == float(selected) and selector == "lang_score.v1(rho=0.8,combine=union)"
    manifest = Store(tmp_path / "store").manifest("adv", "de", 0)
    assert manifest["meta"]["combine"] == "best_confidence"
    assert manifest["meta"]["counts"]["selected"] == len(keep)
    prf = con.execute("SELECT count(*) FROM pseudo_labels p JOIN sentences s USING (run_id, lang, "
                      "round, sent_id) WHERE s.gold_tags IS NOT NULL").fetchone()
    assert prf == (300,)


def _job_config(tmp_path, tiny_model_dir, **extra) -> str:
    cfg = {
        "run_id": "adv", "store": str(tmp_path / "store"), "out": str(tmp_path / "out"),
        "source_dev": str(sample_path("en.dev.txt")),
        "train_tladv": {"train": str(sample_path("en.train.txt")), "model": str(tiny_model_dir),
                        "epochs": 1, "max_steps": 6, "batch_size": 16, "adv_batch_size": 8,
                        "lr": 3e-3, "lr_encoder": 1e-4, "lr_discriminator": 1e-3,
                        "disc_hidden": 32, "dev_limit": 100},
        "seeds": [11],
        "targets": [{"lang": "de", "unlabeled": str(sample_path("de.dev.txt")),
                     "dev": str(sample_path("de.dev.txt"))}],
        "rho": 0.8, "gold_eval": True,
        "student": {"model": str(tiny_model_dir), "epochs": 1, "batch_size": 32, "lr": 3e-3,
                    "freeze_layers": 0, "freeze_embeddings": False, "dev_limit": 100},
        **extra}
    path = tmp_path / "advpicker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _advpicker_main(argv) -> int:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "advpicker_job", Path(__file__).resolve().parents[1] / "jobs" / "advpicker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from xner_ray.jobs import run_job

    return run_job("advpicker", mod.AdvPickerConfig, mod.run_advpicker, argv)


@pytest.mark.slow
def test_advpicker_job_end_to_end_and_resume(ray_cluster, tiny_model_dir, tmp_path, capsys):
    from xner_ray.evaluate import evaluate_model
    from xner_ray.sqlshell import connect, run_sql
    from xner_ray.methods.advpicker.tladv import load_discriminator

    config = _job_config(tmp_path, tiny_model_dir)
    assert _advpicker_main(["--config", config]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]["de"]
    # one seed keeps this under ~90 s on 2 CPUs; the seed ensemble itself is tested above,
    # and test_label_config_of_the_job checks how the job wires its seeds into the labeling
    teachers = [tmp_path / "out" / "teachers" / "seed11"]
    assert result["teachers"] == [str(t) for t in teachers]
    for t in teachers:  # a normal HF folder plus the discriminator (safetensors + JSON)
        assert (t / "model.safetensors").exists() and not list(t.glob("*.bin"))
        assert load_discriminator(t).hidden_dim == 32
        summary = json.loads((t / "train_summary.json").read_text())
        assert summary["best"]["step"] <= 6 and summary["n_target"] == {"de": 300}
        assert {"dis_acc", "enc_loss", "dis_loss"} <= set(summary["best"])
        assert evaluate_model(str(t), str(sample_path("de.dev.txt")))["n_sentences"] == 300
    # exactly the top rho = 0.8 (AdvPicker 3.2): floor(0.8 * 300)
    assert (result["sentences"], result["selected"], result["kept_share"]) == (300, 240, 0.8)
    assert result["combine"] == "chosen"
    assert result["target_dev"]["n_sentences"] == 300
    assert result["target_dev_ensemble"]["n_sentences"] == 300
    assert (tmp_path / "out" / "de" / "model.safetensors").exists()
    con = connect(tmp_path / "store")
    assert con.execute("SELECT count(lang_score), sum(selected::INT), count(*) FROM pseudo_labels"
                       ).fetchone() == (300, result["selected"], 300)
    assert con.execute("SELECT status FROM runs").fetchone() == ("succeeded",)
    prf = {r["bucket"]: r["sentences"] for r in
           run_sql(tmp_path / "store", "pseudo_label_prf", output="arrow").to_pylist()}
    assert prf == {"selected": result["selected"], "other": 300 - result["selected"], "all": 300}
    # rerun: teachers, labels and student are reused, not trained again
    assert _advpicker_main(["--config", config]) == 0
    out = capsys.readouterr().out
    assert "seed 11: trained already, reused" in out and "[advpicker] de: complete, reused" in out


def test_label_config_of_the_job(tmp_path):
    """The job labels all targets with every seed as teacher AND discriminator, keeping the most
    confident seed's soft labels, and selects with the lang_score selector."""
    from xner_ray.methods.advpicker import AdvPickerConfig, label_config, tladv_config

    cfg = AdvPickerConfig(run_id="a", store="s", out=str(tmp_path), source_dev="en.dev",
                          train_tladv={"train": "en.train", "epochs": 2}, seeds=[5, 6],
                          rho=0.7, combine="chosen", gold_eval=True, label={"batch_size": 8},
                          targets=[{"lang": "de", "unlabeled": "de.txt"},
                                   {"lang": "nl", "unlabeled": "nl.txt", "fmt": "conll"}])
    import os

    t6 = tladv_config(cfg, 6)
    # a job's paths are made absolute once, when its config is loaded
    assert (t6.out, t6.seed, t6.dev, t6.epochs) == (str(tmp_path / "teachers" / "seed6"), 6,
                                                    os.path.abspath("en.dev"), 2)
    assert [(u.path, u.lang, u.fmt) for u in t6.unlabeled] == [
        (os.path.abspath("de.txt"), "de", "auto"), (os.path.abspath("nl.txt"), "nl", "conll")]
    lc = label_config(cfg, ["t5", "t6"], cfg.targets[1:])
    assert lc.teachers == lc.lang_scorers == ["t5", "t6"] and lc.combine == "best_confidence"
    assert make_selector(lc.selector) == LangScoreTopRho(0.7, "chosen")
    assert [(i.path, i.lang, i.fmt, i.gold) for i in lc.inputs] == [
        (os.path.abspath("nl.txt"), "nl", "conll", True)]
    assert (lc.run_id, lc.round, lc.batch_size) == ("a", 0, 8)
    # by default the job keeps exactly the top rho (the paper's rule), not the union
    default = AdvPickerConfig(run_id="a", store="s", out=str(tmp_path), source_dev="en.dev",
                              teachers=["t5"], targets=[{"lang": "de", "unlabeled": "de.txt"}])
    assert default.combine == "chosen" and default.rho == 0.8
    assert make_selector(label_config(default, ["t5", "t6"], default.targets).selector) == \
        LangScoreTopRho(0.8, "chosen")


def test_kept_share_of_a_round():
    from xner_ray.methods.advpicker.job import kept_share

    assert kept_share({"sentences": 300, "selected": 240}) == 0.8
    assert kept_share({"sentences": 7, "selected": 5}) == 0.7143
    assert kept_share({"sentences": 0, "selected": 0}) == 0.0


def test_bad_advpicker_configs_fail_before_any_work(tmp_path, capsys):
    from xner_ray.methods.advpicker import AdvPickerConfig

    base = dict(run_id="a", store="s", out="o", source_dev="d",
                targets=[{"lang": "de", "unlabeled": "u"}])
    with pytest.raises(ValueError, match="either `teachers`"):
        AdvPickerConfig(**base)
    with pytest.raises(ValueError, match="must not set"):
        AdvPickerConfig(**base, train_tladv={"train": "t", "seed": 3})
    with pytest.raises(ValueError, match="missing required keys"):
        AdvPickerConfig(**base, train_tladv={"model": "m"})
    with pytest.raises(ValueError, match="distinct integers"):
        AdvPickerConfig(**base, train_tladv={"train": "t"}, seeds=[1, 1])
    with pytest.raises(ValueError, match="lr_encoder"):
        AdvPickerConfig(**base, train_tladv={"train": "t", "lr_encoder": 0})
    with pytest.raises(ValueError, match=r"rho must be in \(0, 1\]"):
        AdvPickerConfig(**base, teachers=["t"], rho=0)
    with pytest.raises(ValueError, match="combine must be one of"):
        AdvPickerConfig(**base, teachers=["t"], combine="best")
    config = tmp_path / "bad.yaml"
    config.write_text("run_id: x\nstore: s\nout: o\nsource_dev: d\nteachers: [t]\n"
                      "targets: [{lang: de, unlabeled: u}]\nrhoo: 0.5\n")
    assert _advpicker_main(["--config", str(config)]) == 2
    assert "unknown AdvPickerConfig keys ['rhoo']" in capsys.readouterr().err


@pytest.mark.slow
def test_lang_score_selection_inside_a_rikd_round(ray_cluster, tiny_model_dir, tmp_path):
    """RIKD with AdvPicker's selection first: the student and its policy see only the top rho
    by l_score; the policy's decisions fill the columns of those rows only."""
    from xner_ray.methods.rikd import RikdConfig, run_rikd
    from xner_ray.sqlshell import connect

    tladv = str(_tladv_folder(tmp_path / "tladv", tiny_model_dir, 5))
    res = run_rikd(RikdConfig(
        run_id="r", store=str(tmp_path / "store"), out=str(tmp_path / "out"),
        source_dev=str(sample_path("en.dev.txt")), teacher=tladv, lang_scorers=[tladv],
        selector="lang_score:0.5", rounds=1, warmup_steps=2,
        targets=[{"lang": "de", "unlabeled": str(sample_path("de.dev.txt"))}],
        student={"model": str(tiny_model_dir), "epochs": 1, "batch_size": 32, "lr": 3e-3,
                 "freeze_layers": 0, "freeze_embeddings": False, "dev_limit": 50}))["de"][0]
    assert res["n_train"] == 150  # 50% of the 300 German sentences
    con = connect(tmp_path / "store")
    rows = con.execute("SELECT sent_id, lang_score, policy_p, selected, selector "
                       "FROM pseudo_labels").fetchall()
    ranked = sorted(rows, key=lambda r: (-r[1], r[0]))
    top = {r[0] for r in ranked[:150]}
    reached = {r[0] for r in rows if r[2] is not None}
    # every training row has a policy decision (the warm-up rows: undecided, not selected)
    assert reached and reached <= top and len(reached) <= res["decided_instances"] == 150
    assert {r[0] for r in rows if r[3]} <= reached
    # the policy's decisions win over the labeling-time selection they were drawn from
    assert {r[4] for r in rows if r[0] in top} == {
        "lang_score.v1(rho=0.5,combine=chosen)+rikd_policy.v1"}
    assert {r[4] for r in rows if r[0] not in top} == {"lang_score.v1(rho=0.5,combine=chosen)"}
    with pytest.raises(ValueError, match="give `lang_scorers`"):
        RikdConfig(run_id="r", store="s", out="o", source_dev="d", teacher="t",
                   selector="lang_score", targets=[{"lang": "de", "unlabeled": "u"}])


@pytest.mark.parametrize("name", ["advpicker_demo.yaml", "advpicker_benchmark.yaml"])
def test_shipped_configs_resolve(name, capsys):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / name
    assert _advpicker_main(["--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    resolved, end = json.JSONDecoder().raw_decode(out)  # the resolved config, then the path check
    assert "path check" in out[end:]
    assert resolved["rho"] == 0.8 and resolved["train_tladv"]["disc_hidden"] == 500
