"""Smoke runs of benchmark scripts: they start, measure both sides and write their results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_driver_path_quick(tmp_path):
    """``benchmarks/driver_path.py --quick``: both paths with both selectors, and the driver of
    today's path (worker writes) receives a small fraction of the old driver path's bytes."""
    # ~1-1.5 min on 2 quiet cores (8 short driver processes); the limit leaves room for a
    # machine shared with other test runs
    proc = subprocess.run([sys.executable, "benchmarks/driver_path.py", "--quick", "--results",
                           str(tmp_path), "--tmp", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "driver_path_cpu.json").read_text())
    assert (tmp_path / "driver_path_cpu.md").read_text().startswith("# Driver data path")
    n = r["budget"]["sentences"]
    for sel in ("keep_all", "top_rho:confidence:0.8"):
        paths = r["labeling"][sel]
        assert set(paths) >= {"driver", "workers"}
        old = paths["driver"]["driver_bytes"]["min"]
        new = paths["workers"]["driver_bytes"]["max"]
        # the old path received every labeled row (soft labels included: far over 100 B each);
        # today's driver gets records and, for top-rho, one block of sorted keys
        assert old > 100 * n
        assert new * 20 < old, (sel, old, new)
        for side in ("driver", "workers"):
            assert paths[side]["driver_cpu_s"]["min"] >= 0
            assert paths[side]["sentences_per_s"]["min"] > 0
    # top-rho keeps floor(0.8 n) on both paths (the same cut-off)
    assert r["labeling"]["top_rho:confidence:0.8"]["driver"]["selected"] == [int(0.8 * n)]
    assert r["labeling"]["top_rho:confidence:0.8"]["workers"]["selected"] == [int(0.8 * n)]
    assert r["labeling"]["keep_all"]["workers"]["selected"] == [n]
    for size, check in r["selection"].items():
        if size != "growth":
            assert check["exact_cutoffs"]["cutoffs"] == check["driver_fit"]["cutoffs"]


def test_fair_budget_gives_students_the_teachers_steps_and_reports_seeds(tmp_path):
    """``benchmarks/fair_budget.py``: a student's steps are its teacher's (in enough epochs to
    reach them), and the table is mean +- std over the seeds run, with the gap to direct
    transfer and an explicit mark where fewer than 3 seeds ran."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fair_budget as fb

    teacher = tmp_path / "t"
    teacher.mkdir()
    (teacher / "train_summary.json").write_text(json.dumps({
        "config": {"epochs": 2, "max_steps": None}, "best": {"epoch": 2, "step": 1762}}))
    assert fb.teacher_steps(teacher) == 1762
    (teacher / "train_summary.json").write_text(json.dumps({  # best epoch 1 of 2
        "config": {"epochs": 2, "max_steps": None}, "best": {"epoch": 1, "step": 881}}))
    assert fb.teacher_steps(teacher) == 1762
    es = fb.student_budget(1762, 8323, seed=43)  # 521 steps an epoch: 4 epochs, capped
    nl = fb.student_budget(1762, 15806, seed=43)  # 988 an epoch: 2 epochs
    assert (es["epochs"], es["max_steps"], nl["epochs"], es["seed"]) == (4, 1762, 2, 43)
    # --train-threads: the workers' torch threads, outside the budget (same steps and data)
    assert "threads" not in es
    assert fb.student_budget(1762, 8323, seed=43, threads=2) == {**es, "threads": 2}
    rows = {"direct": {"es": {"42": {"f1": 0.60}, "43": {"f1": 0.70}}},
            "tsl": {"es": {"42": {"f1": 0.64, "source_dev_f1": 0.9, "per_type": {"PER": 0.8}},
                           "43": {"f1": 0.72, "source_dev_f1": 0.9}}}}
    md = fb.markdown({"teacher_budget": {}, "student": {}, "rounds": 3, "warmup_steps": 500,
                      "rows": rows, "runs": {}})
    assert "| TSL single-source | 0.6800 +- 0.0566 (n=2) | +3.0 +- 1.4 (n=2) |" in md
    assert "| Direct transfer (English teacher) | 0.6500 +- 0.0707 (n=2) | - |" in md
    assert "PER 0.800" in md and "**Incomplete: fewer than 3 seeds" in md
    rows["adv"] = {"es": {"42": {"f1": 0.66, "source_dev_f1": 0.8, "kept_share": 0.8,
                                 "ensemble_f1": 0.69}}}
    md = fb.markdown({"teacher_budget": {}, "student": {}, "rounds": 3, "warmup_steps": 500,
                      "rows": rows, "runs": {}})
    assert "| AdvPicker (top 80% by l_score, KD) | es | 42 | 0.6600 | 0.8000 | " \
           "; selector kept 80.0%; TLADV ensemble F1 0.6900 |" in md


def test_fair_budget_trains_tladv_teachers_once_per_seed_for_both_languages(tmp_path,
                                                                           monkeypatch):
    """AdvPicker's TLADV teachers at the fair budget: shaped like the CPU teacher, the CPU
    adversarial rates, es + nl train as adversarial text, K distinct seeds; trained ones are
    reused."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fair_budget as fb

    from xner_ray.methods.advpicker import tladv

    data = REPO.parent / "shared" / "data"
    if not (data / "conll2002-nl/train.txt").exists():
        pytest.skip("needs ../shared/data")
    trained = []

    def fake_train(cfg):
        trained.append(cfg)
        folder = Path(cfg.out)
        folder.mkdir(parents=True)
        (folder / "train_summary.json").write_text("{}")

    monkeypatch.setattr(tladv, "train_tladv", fake_train)
    monkeypatch.setattr(tladv, "has_discriminator", lambda f: (Path(f) / "train_summary.json")
                        .exists())
    folders = fb.tladv_teachers(43, tmp_path, data)
    assert [Path(f).name for f in folders] == ["seed43", "seed1043"]
    assert [c.seed for c in trained] == [43, 1043]
    c = trained[0]
    assert (c.layers, c.epochs, c.batch_size, c.lr, c.freeze_embeddings, c.max_length) == (
        6, 2, 16, 1e-4, True, 128)
    assert (c.lr_encoder, c.lr_discriminator, c.adv_batch_size) == (6e-7, 5e-3, 8)
    assert sorted(u.lang for u in c.unlabeled) == ["es", "nl"]
    assert fb.tladv_teachers(43, tmp_path, data) == folders and len(trained) == 2  # reused

    # the combined row's job config: accepted by CombinedConfig's checks, with the projection
    # of the Bible's first verses, the TLADV teachers' selection and RIKD's rounds
    student = fb.student_budget(1762, 6658, seed=43)
    cfg = fb.combined_config("comb-es-s43", "es", tmp_path / "teacher", tmp_path, data, folders,
                             dict(store=str(tmp_path / "store"),
                                  source_dev=str(data / "conll2003-en/dev.txt"),
                                  targets=[{"lang": "es", "fmt": "conll",
                                            "unlabeled": str(data / "conll2002-es/train.txt")}],
                                  student=student))
    assert (cfg.rho, cfg.rounds, cfg.warmup_steps, cfg.reinforce) == (0.8, 3, 500, True)
    assert cfg.lang_scorers == [str(Path(f).resolve()) for f in folders]
    assert cfg.project["corpora"][0]["limit"] == fb.PROJECT_PAIRS
    assert (cfg.student["max_steps"], cfg.student["epochs"]) == (1762, 5)


def test_fair_budget_scores_pseudo_labels_and_the_policy_against_kept_gold(tmp_path):
    """``fair_budget.label_quality``: per round of one run (others in the store ignored), the
    pseudo-labels' entity F1 against the gold the run kept for evaluation, and the policy's
    AUC -- read from the store's SQL questions -- and the per-seed table shows them."""
    import numpy as np

    sys.path.insert(0, str(REPO / "benchmarks"))
    import fair_budget as fb

    from tests.test_sql import LABELS, POLICY, _sentences, pseudo_batch
    from xner_ray.store import Store

    store = Store(tmp_path / "store")
    for run_id, lang in (("rikd-es-s42", "es"), ("other", "es"), ("rikd-es-s42", "nl")):
        store.record_run(run_id, "rikd", {})
        with store.round_writer(run_id, lang, 0, labels=LABELS) as w:
            w.write_sentences(_sentences({k: v[:2] for k, v in POLICY.items()}))
            # all conf 0.8: every row selected; "other" gets wrong tags everywhere
            batch = pseudo_batch({k: (v[1] if run_id == "other" and v[1] else v[2], 0.8)
                                  for k, v in POLICY.items()}, "t@0")
            batch["policy_p"] = np.array([POLICY[k][3] for k in batch["sent_id"]], dtype=object)
            w.write_pseudo_labels(batch)
    got = fb.label_quality(store.root, "rikd-es-s42", "es")
    # gold spans: c1 PER, c2 LOC, w1 ORG, w2 PER, w3 LOC, n0 PER (6); predicted: c1 PER and
    # c2 LOC (right), w1 LOC, w2 PER (wrong span) (4): F1 = 2 * 2 / (6 + 4); g0 has no gold
    assert got == {0: {"pl_f1_all": 0.4, "pl_f1_selected": 0.4, "policy_auc": 0.8889}}
    rows = {"rikd": {"es": {"42": {"f1": 0.7, "source_dev_f1": 0.9, "rounds": [
        {"round": 0, "f1": 0.6, "source_dev_f1": 0.8, "discard_ratio": 0.25, **got[0]},
        {"round": 1, "f1": 0.7, "source_dev_f1": 0.9}]}}}}
    md = fb.markdown({"teacher_budget": {}, "student": {}, "rounds": 2, "warmup_steps": 500,
                      "rows": rows, "runs": {}})
    assert ("| RIKD, round 1 | es | 42 | 0.6000 | 0.8000 | discard ratio 0.250; pseudo-label "
            "F1 0.4000; on kept 0.4000; policy AUC 0.889 |") in md


def test_tsl_multisource_table_compares_weightings_with_the_best_single_source():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import tsl_multisource as tm

    r = {"corpus": "conll", "teacher_budget": {}, "direct": {"es": {"en": 0.67, "nl": 0.61}},
         "rows": {"es": {"uniform": {"42": {"f1": 0.70}, "43": {"f1": 0.72}},
                         "similarity": {"42": {"f1": 0.69, "weights": {"en": 0.4, "nl": 0.6}}}}},
         "runs": {}}
    md = tm.markdown(r)
    assert ("| es | en 0.6700 | 0.7100 +- 0.0141 (n=2) | 0.6900 (n=1) | en 0.400, nl 0.600 |"
            in md)
    assert "es: en 0.6700, nl 0.6100" in md


def test_fair_budget_keeps_the_rounds_of_a_run_that_stops_early():
    """``partial_recorder``: each finished round of a multi-round row goes to the results'
    ``partial`` at once (a session ending in round 2 keeps rounds 0-1); fewer rounds never
    replace more; the table lists them apart, in no mean."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fair_budget as fb

    meta = {"command": "python benchmarks/fair_budget.py --methods ikd", "git_revision": "a" * 40,
            "date": "2026-12-03T21:00:00+00:00", "machine": {"cpus": 2},
            "versions": {"torch": "x"}}
    result, saves = {"teacher_budget": {}, "student": {}, "rounds": 3, "warmup_steps": 500,
                     "rows": {}, "runs": {}}, []
    record = fb.partial_recorder(result, "ikd/es/42", meta, lambda: saves.append(1))
    r0 = {"round": 0, "f1": 0.69, "source_dev_f1": 0.8, "per_type": {"LOC": 0.7},
          "pl_f1_all": 0.648}
    r1 = {"round": 1, "f1": 0.67, "source_dev_f1": 0.76}
    record([r0])
    record([r0, r1])
    made = {"git_revision": "a" * 40, "date": "2026-12-03T21:00:00+00:00"}
    assert result["partial"]["ikd/es/42"]["rounds"] == [{**r0, "made_by": made},
                                                        {**r1, "made_by": made}]
    assert len(saves) == 2
    # the versions are the partial run's own: the footer's belong to the last finished row
    assert result["partial"]["ikd/es/42"]["versions"] == {"torch": "x"}
    assert "versions" not in result
    fb.partial_recorder(result, "ikd/es/42", meta, lambda: saves.append(1))([r0])  # a rerun
    assert [r["f1"] for r in result["partial"]["ikd/es/42"]["rounds"]] == [0.69, 0.67]
    assert len(saves) == 2
    assert result["partial"]["ikd/es/42"]["of"] == 3
    fb.partial_recorder(result, "conf/es/42", meta, lambda: None)([r0])  # Table 7: 1 round
    assert result["partial"]["conf/es/42"]["of"] == 1
    md = fb.markdown(result)
    assert ("| Iterative KD (RIKD w/o RL) | es | 42 | 1 of 3 | 0.6900 | 0.8000 | LOC 0.700; "
            "pseudo-label F1 0.6480 | aaaaaaaaaa, 2026-12-03 |") in md
    assert "| 2 of 3 | 0.6700 | 0.7600 |" in md
    assert "| Iterative KD (RIKD w/o RL) | 0." not in md  # no mean row from a partial run


def test_fair_budget_table7_rows_match_rikds_first_round():
    """The Table 7 rows need RIKD's round-1 discard ratio only: from its finished row, else
    from a run that stopped after round 1; without either they say what to run."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fair_budget as fb

    part = {"rikd/es/42": {"rounds": [{"round": 0, "discard_ratio": 0.61}], "of": 3}}
    assert fb.rikd_round1_discard({}, part, "es", 42) == 0.61
    rows = {"rikd": {"es": {"42": {"rounds": [{"discard_ratio": 0.55}, {"discard_ratio": 0.7}]}}}}
    assert fb.rikd_round1_discard(rows, part, "es", 42) == 0.55  # the finished row first
    assert fb.rikd_round1_discard(rows, part, "nl", 42) is None
    with pytest.raises(SystemExit, match="--methods rikd --langs nl --seeds 43 first"):
        fb.run_one("conf", "nl", 43, Path("t"), Path("o"), Path("d"), rows, partial=part)


def test_fair_budget_resumed_rounds_keep_the_revision_that_trained_them():
    """A run resumed from the store reports the rounds it found again: those keep the earlier
    run's revision and date (``made_by``), a round trained anew (other F1) gets the new run's,
    and the finished row lists the earlier rounds in its ``runs`` record."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fair_budget as fb

    def meta(rev: str, date: str) -> dict:
        return {"command": "c", "git_revision": rev * 40, "date": date, "machine": {},
                "versions": {}}

    result = {"teacher_budget": {}, "student": {}, "rounds": 3, "warmup_steps": 500,
              "rows": {}, "runs": {}}
    r0 = {"round": 0, "f1": 0.69, "source_dev_f1": 0.8}
    r1 = {"round": 1, "f1": 0.70, "source_dev_f1": 0.8}
    fb.partial_recorder(result, "ikd/es/42", meta("a", "2026-12-03"), lambda: None)([r0, r1])
    second = meta("b", "2026-12-04")
    saves: list = []
    record = fb.partial_recorder(result, "ikd/es/42", second, lambda: saves.append(1))
    record([r0, r1])  # the resumed run reports the rounds it found: the record stays as is
    assert result["partial"]["ikd/es/42"]["git_revision"] == "a" * 40 and not saves
    r1b, r2 = {**r1, "f1": 0.71}, {"round": 2, "f1": 0.72, "source_dev_f1": 0.8}
    record([r0, r1b])   # round 1 trained again: a different model
    record([r0, r1b, r2])
    rounds = result["partial"]["ikd/es/42"]["rounds"]
    assert [r["made_by"]["git_revision"][0] for r in rounds] == ["a", "b", "b"]
    assert "| 1 of 3 | 0.6900 |" in fb.markdown(result)
    assert "aaaaaaaaaa, 2026-12-03 |" in fb.markdown(result)
    here = {"git_revision": "b" * 40, "date": "2026-12-04"}
    assert fb.resumed_rounds(result["partial"]["ikd/es/42"], here) == [
        {"round": 0, "git_revision": "a" * 40, "date": "2026-12-03"}]
    assert fb.resumed_rounds(None, here) == []


def test_rikd_policy_toy_records_the_trajectory(tmp_path):
    """``benchmarks/rikd_policy_toy.py``: checkpoints every --every reinforced steps, per reward
    reading and seed, summarised over the seeds; the discard ratio is the window's."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import rikd_policy_toy as rt

    assert rt.main(["--steps", "40", "--every", "20", "--seeds", "0", "1",
                    "--variants", "consecutive", "--results", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "rikd_policy_toy.json").read_text())
    runs = r["runs"]["consecutive"]
    assert sorted(runs) == ["0", "1"] and [p["step"] for p in runs["0"]] == [20, 40]
    for point in runs["0"] + runs["1"]:
        assert 0.0 <= point["auc"] <= 1.0 and 0.0 <= point["discard_ratio"] <= 1.0
    lo, mean, hi = r["summary"]["consecutive"][1]["auc"]
    assert lo <= mean <= hi
    assert mean == pytest.approx((runs["0"][1]["auc"] + runs["1"][1]["auc"]) / 2)
    md = (tmp_path / "rikd_policy_toy.md").read_text()
    assert "Reward reading `consecutive`" in md and "| 40 | " in md


def test_fair_budget_pairs_each_row_with_the_teacher_it_learned_from(tmp_path, monkeypatch):
    """A seed's teacher trained again (teachers are not in git) starts a new record, the old
    one kept under ``replaced``; its target F1 is evaluated once; a row carrying
    ``teacher_f1`` is paired with it, an older row with its seed's direct row."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fair_budget as fb

    import xner_ray.evaluate as ev

    def teacher(name: str, dev_f1: float) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train_summary.json").write_text(json.dumps(
            {"config": {"epochs": 2}, "best": {"epoch": 2, "step": 1756, "dev_f1": dev_f1},
             "seconds": 10.0}))
        return folder

    result = {"teachers": {"42": {"dir": "/old/teacher", "steps": 1762}}}
    rec = fb.teacher_record(result, 42, teacher("t42", 0.9266))
    assert (rec["dir"], rec["steps"], rec["en_dev_f1"]) == (str(tmp_path / "t42"), 1756, 0.9266)
    assert rec["replaced"] == {"dir": "/old/teacher", "steps": 1762}
    calls = []
    monkeypatch.setattr(ev, "evaluate_model", lambda model, dev, lang: calls.append(lang)
                        or {"f1": 0.68})
    assert fb.teacher_f1(rec, "es", tmp_path) == 0.68 and fb.teacher_f1(rec, "es", tmp_path) == 0.68
    assert calls == ["es"]
    again = fb.teacher_record(result, 42, tmp_path / "t42")  # the same teacher: scores kept
    assert again["target_f1"] == {"es": 0.68} and again["replaced"]["steps"] == 1762

    cell = {"42": {"f1": 0.70, "teacher_f1": 0.68}, "43": {"f1": 0.71}}
    assert fb.paired_delta(cell, {"42": {"f1": 0.6717}, "43": {"f1": 0.70}}) == "+1.5 +- 0.7 (n=2)"
    md = fb.markdown({"teacher_budget": {}, "student": {}, "rounds": 3, "warmup_steps": 500,
                      "rows": {}, "runs": {}, "teachers": result["teachers"]})
    assert "Seed 42's teacher was trained again" in md and "1762 steps" in md


def test_fair_budget_rikd_kt_holds_table6s_keep_rate(tmp_path, monkeypatch):
    """The ``rikd_kt`` row is RIKD (3 rounds, the policy) with ``keep_target`` = 1 - Table 6's
    discard ratio of its language (es 38.8%, nl 56.7%); ``rikd`` keeps the paper's policy."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fair_budget as fb

    import xner_ray.methods.rikd as rikd

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "train_summary.json").write_text(json.dumps(
        {"config": {"epochs": 2}, "best": {"epoch": 2, "step": 1756, "dev_f1": 0.9}}))
    seen = []

    def fake_run(cfg, on_round=None):
        seen.append(cfg)
        return {cfg.targets[0].lang: [{"round": 0, "target_dev": {"f1": 0.7},
                                       "source_dev_f1": 0.8}]}

    monkeypatch.setattr(rikd, "run_rikd", fake_run)
    monkeypatch.setattr(fb, "label_quality", lambda *a: {})
    monkeypatch.setattr(fb, "count_sentences", lambda path, lang: 8323)
    data = REPO.parent / "shared" / "data"
    for method, lang in (("rikd_kt", "es"), ("rikd_kt", "nl"), ("rikd", "es")):
        fb.run_one(method, lang, 42, teacher, tmp_path, data, {})
    assert [(c.keep_target, c.rounds, c.reinforce) for c in seen] == [
        (0.612, 3, True), (0.433, 3, True), (None, 3, True)]


@pytest.mark.slow
def test_train_threads_measures_each_thread_count_in_the_worker(ray_cluster, tiny_model_dir,
                                                                 tmp_path):
    """``benchmarks/train_threads.py``: every thread count trains the given steps through Ray
    Train with that many torch threads in the worker, and the table compares them."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_threads

    from xner_ray.demo import sample_path

    data = tmp_path / "data" / "conll2003-en"
    data.mkdir(parents=True)
    for name in ("train", "dev"):
        blocks = sample_path(f"en.{name}.txt").read_text(encoding="utf-8").split("\n\n")[:48]
        (data / f"{name}.txt").write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    assert train_threads.main(["--model", str(tiny_model_dir), "--layers", "2", "--steps", "2",
                               "--reps", "1", "--data-dir", str(tmp_path / "data"),
                               "--dev-limit", "10", "--results", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "train_threads_cpu.json").read_text())
    assert [(run["threads"], run["threads_in_worker"], run["steps"]) for run in r["runs"]] == [
        (1, 1, 2), (2, 2, 2)]
    assert [row["threads"] for row in r["rows"]] == [1, 2] and r["rows"][0]["speedup"] == 1.0
    assert all(row["s_per_step_median"] > 0 for row in r["rows"])
    assert not list(tmp_path.glob("xner-train-threads-*"))  # model folders deleted
    assert "| 2 | " in (tmp_path / "train_threads_cpu.md").read_text()


def test_worker_startup_times_each_cold_step_and_the_warm_rebuild(tmp_path):
    """``benchmarks/worker_startup.py`` on the tests' tiny model: every step timed in a fresh
    process, and rebuilding both stages in that process costs less than the cold start."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import worker_startup as ws

    assert ws.main(["--model", "tiny", "--reps", "1", "--work", str(tmp_path / "work"),
                    "--results", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "worker_startup_cpu.json").read_text())
    assert list(r["steps"]) == list(ws.STEPS)
    assert all(v["cpu_s"] >= 0 and v["wall_s"] > 0 for v in r["steps"].values())
    assert r["warm_cpu_s"] < r["cold_cpu_s"]


@pytest.mark.slow
def test_streaming_memory_samples_a_small_run(ray_cluster, tmp_path):
    """``benchmarks/streaming_memory.py`` on a few thousand sentences, on the tests' cluster
    (its ``init_ray`` joins the one that is up): every sentence reaches the store and the
    samples follow the run to 100%."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import streaming_memory as sm

    assert sm.main(["--sentences", "3000", "--interval", "0.2", "--rows-per-file", "1000",
                    "--tmp", str(tmp_path), "--results", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "streaming_memory.json").read_text())
    assert r["corpus"]["sentences"] == 3000 and r["run"]["sentences"] == 3000
    assert set(r["at_progress"]) >= {"25%", "100%"} and r["samples"]
    assert "streaming" in (tmp_path / "streaming_memory.md").read_text().lower()
