"""Methods at a fair budget, over seeds (issue 16 item 4): direct transfer against TSL,
iterative KD (RIKD without RL), RIKD and AdvPicker students, and the combined job (projection
+ English teachers -> AdvPicker's selection -> RIKD rounds; es only: the one parallel corpus
here is en-es), en -> es and en -> nl on CoNLL.

RIKD's Table 7 baselines (confidence and agreement selection per batch, iteration 1, at RIKD's
own round-1 discard ratio) are rows too, and RIKD with its policy's keep rate held at the
paper's Table 6 discard ratio (``rikd_kt``; ``keep_target``, not in the paper). Fair, unlike
``distillation.py --budget cpu`` (2,000 sampled sentences, 250 student steps):

- the unlabeled target text is the whole target train split, labels dropped (es 8,323,
  nl 15,806 sentences);
- every student takes as many optimisation steps as its teacher did (the teacher's
  ``train_summary.json``: 1,762 steps of 16 sentences at the CPU budget), in as many epochs as
  that needs, with a dev score after each epoch and at the last step;
- every row is run for each ``--seeds`` seed: seed s trains its own English teacher
  (``direct_transfer.py``'s CPU budget; seed 42 reuses ``outputs/direct_transfer/cpu`` when it
  was trained with that budget and seed) and its students (student seed s, RIKD policy seeds
  from it); the table gives mean +- sample std over the seeds run so far, and says how many.

Students are chosen by English dev F1 only (the best epoch of each; a method's final row is
its last round); target dev labels score the rows and choose nothing.

    python benchmarks/fair_budget.py --methods direct tsl --langs es nl --seeds 42 43 44
    python benchmarks/fair_budget.py --methods ikd rikd rikd_kt --seeds 42   # 3 rounds each
    python benchmarks/fair_budget.py --methods conf agree --seeds 42    # after rikd's round 1
    python benchmarks/fair_budget.py --methods adv --seeds 42           # AdvPicker
    python benchmarks/fair_budget.py --methods comb --langs es --seeds 42  # combined (after adv)
    python benchmarks/fair_budget.py --render                           # rewrite the .md

Cost on 2 CPUs: a teacher or a student ~25-40 min (1,762 steps; seed 42's teacher took 37 min
on 2026-12-03, a RIKD es round with its labeling and scoring 44 min on 2026-12-04), labeling
es ~2-5 min and nl ~4-9 min; TSL ~0.5 h per language and seed, iterative KD and RIKD ~1.5-2.2 h
(3 rounds); ``--train-threads 2`` gives the training workers both cores
(``benchmarks/results/train_threads_cpu*.md``);
AdvPicker ~2 h per seed for its two TLADV teachers (shared by es and nl) + ~0.5 h per language;
the combined job reuses those teachers and adds the projection (aligner, 4,000 projected verses,
target model) and 3 RIKD rounds, ~2.5 h. Runs
resume: a (method, language, seed) already in the results file is skipped, a RIKD run resumes at
its last complete round. Writes ``benchmarks/results/fair_budget_cpu.{json,md}``
(``fair_budget_gpu`` where torch sees a GPU: the same budget, its rows kept apart).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import last_run_footer, provenance  # noqa: E402
from direct_transfer import BUDGETS as TEACHER_BUDGETS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LANGS = ("es", "nl")
METHODS = ("direct", "tsl", "ikd", "rikd", "rikd_kt", "conf", "agree", "adv", "comb")
NAMES = {"direct": "Direct transfer (English teacher)", "tsl": "TSL single-source",
         "ikd": "Iterative KD (RIKD w/o RL)", "rikd": "RIKD",
         "rikd_kt": "RIKD, keep rate held at Table 6's (keep_target; not in the paper)",
         "conf": "Confidence selection, round 1 (RIKD Table 7)",
         "agree": "Agreement selection, round 1 (RIKD Table 7)",
         "adv": "AdvPicker (top 80% by l_score, KD)",
         "comb": "Combined: projection + English -> AdvPicker selection -> RIKD"}
ONLY = {"comb": ("es",)}  # the one parallel corpus here is en-es (opus-bible-en-es)
# RIKD Table 7: iteration 1 only, each batch discarding RIKD's average discard ratio of round 1
# (Table 6) of the same language and seed -- so these rows need that RIKD row first.
RULES = {"conf": "confidence", "agree": "agreement"}
# RIKD Table 6: the average discard ratio of its policy in iteration 1 (es 38.8%, nl 56.7%).
# The rikd_kt row holds the policy's keep rate at 1 - that (RikdConfig.keep_target): the
# paper's policy, once it learns, discards far more (benchmarks/results/rikd_policy_toy.md)
TABLE6_DISCARD = {"es": 0.388, "nl": 0.567}
TEACHER = TEACHER_BUDGETS["cpu"]
# Students: shaped like the CPU teacher (bottom 6 layers), the papers' freezing (embeddings +
# bottom 3 layers), batch 16 like the teacher; lr 3e-4 as chosen on English dev for the CPU
# budget (benchmarks/results/distillation_calibration_cpu.md). Steps: the teacher's (above).
STUDENT = dict(layers=6, batch_size=16, lr=3e-4, freeze_embeddings=True, freeze_layers=3,
               max_length=128, dev_limit=1000)
ROUNDS = 3  # RIKD 4.2: K = 3
WARMUP_STEPS = 500  # RIKD 4.2's J_w (of 1,762 steps here)
# AdvPicker: K TLADV teachers per seed, each shaped like the CPU teacher (its layers, epochs,
# batch, lr, freezing) with benchmarks/advpicker.py's CPU adversarial rates; their adversarial
# target text is the whole es + nl train splits, so one seed's teachers serve both languages.
# The seeds keep exactly the top rho = 0.8 by the kept seed's l_score (AdvPicker 3.2).
ADV = dict(teachers=2, rho=0.8)
# The combined job's projection (Li et al. 2021) as benchmarks/projection.py's CPU budget: the
# alignment model cut like the teacher, trained on 6,000 examples from 3,000 verses; the first
# 4,000 verses projected; the target model fine-tuned from the seed's teacher with gamma 4 and
# the bottom 3 layers frozen (Sec. 4.3), 1 epoch at 5e-5. Round 0 mixes it with the English
# teacher uniformly (TSL Eq. 7); every round keeps the top 0.8 by l_score of the seed's TLADV
# teachers (the adv row's); then RIKD's rounds, as the rikd row.
PROJECT = dict(
    aligner="model", gamma=4.0, freeze_layers=3,
    train_aligner=dict(model="builtin:me5-small", layers=6, epochs=2, batch_size=16, lr=1e-4,
                       freeze_embeddings=True, max_length=128,
                       examples=dict(sources=["simalign", "identical", "gold_links"],
                                     negative_ratio=0.25, max_per_pair=4, max_pairs=3000,
                                     max_examples=6000)),
    target=dict(epochs=1, batch_size=16, lr=5e-5, freeze_embeddings=True, max_length=128))
PROJECT_PAIRS = 4000


DIRECT = REPO / "outputs" / "direct_transfer" / "cpu"  # direct_transfer.py --budget cpu


def committed_teacher(seed: int, shared: Path = DIRECT):
    """``shared`` (``direct_transfer.py``'s CPU teacher) when it was trained with this budget
    and ``seed``."""
    if (shared / "train_summary.json").exists():
        cfg = json.loads((shared / "train_summary.json").read_text())["config"]
        if cfg.get("seed") == seed and all(cfg.get(k) == v for k, v in TEACHER.items()):
            return shared
    return None


def teacher_dir(seed: int, out: Path, data: Path, direct: Path = DIRECT,
                threads: Optional[int] = None) -> Path:
    """The English teacher of ``seed``: the direct-transfer CPU teacher ``direct`` for its own
    seed when its config is this budget, else one trained here (once) on ``data``."""
    from xner_ray.cluster import init_ray
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    shared = committed_teacher(seed, direct)
    if shared is not None:
        return shared
    dest = out / f"teacher-s{seed}"
    if not (dest / "train_summary.json").exists():
        init_ray()
        train_teacher(TeacherConfig(train=str(data / "conll2003-en/train.txt"),
                                    dev=str(data / "conll2003-en/dev.txt"), out=str(dest),
                                    model="builtin:me5-small", seed=seed, threads=threads,
                                    **TEACHER))
    return dest


def tladv_teachers(seed: int, out: Path, data: Path, threads: Optional[int] = None
                   ) -> list[str]:
    """AdvPicker's K TLADV teachers of ``seed`` (seeds ``seed``, ``seed + 1000``, ...), trained
    once into ``out/tladv-s<seed>`` and reused by every language and rerun."""
    from advpicker import BUDGETS as ADV_BUDGETS  # benchmarks/advpicker.py
    from advpicker import SHAPE_KEYS

    from xner_ray.methods.advpicker.tladv import TladvConfig, has_discriminator, train_tladv

    base = {"model": "builtin:me5-small", **{k: TEACHER[k] for k in SHAPE_KEYS if k in TEACHER},
            **ADV_BUDGETS["cpu"]["adversarial"]}
    folders = []
    for k in range(ADV["teachers"]):
        folder = out / f"tladv-s{seed}" / f"seed{seed + 1000 * k}"
        if not ((folder / "train_summary.json").exists() and has_discriminator(folder)):
            train_tladv(TladvConfig(
                train=str(data / "conll2003-en/train.txt"), dev=str(data / "conll2003-en/dev.txt"),
                out=str(folder), seed=seed + 1000 * k, threads=threads, **base,
                unlabeled=[{"path": str(data / f"conll2002-{l}/train.txt"), "lang": l,
                            "fmt": "conll"} for l in LANGS]))
        folders.append(str(folder))
    return folders


def teacher_record(result: dict, seed: int, teacher: Path) -> dict:
    """``result["teachers"][seed]``: the seed's teacher (folder, steps, English dev F1) and its
    target dev F1 per language (``target_f1``, filled by ``teacher_f1``). A teacher trained
    again (a new machine: teachers are not in git) starts a new record; the old one moves to
    ``replaced`` so that rows learned from it stay explained."""
    summary = json.loads((teacher / "train_summary.json").read_text())
    now = {"dir": str(teacher), "steps": teacher_steps(teacher),
           "en_dev_f1": round(float(summary["best"]["dev_f1"]), 6),
           "seconds": summary.get("seconds")}
    teachers = result.setdefault("teachers", {})
    old = teachers.get(str(seed))
    if old is not None and all(old.get(k) == now[k] for k in ("dir", "steps", "en_dev_f1")
                               if old.get(k) is not None):  # the same teacher: keep its scores
        now.update(target_f1=old.get("target_f1", {}), replaced=old.get("replaced"))
    elif old is not None:
        now["replaced"] = old
    teachers[str(seed)] = {k: v for k, v in now.items() if v is not None}
    return teachers[str(seed)]


def teacher_f1(record: dict, lang: str, data: Path) -> float:
    """The teacher's target dev F1 (direct transfer), evaluated once per teacher and language:
    every row keeps its own teacher's, so its gain is paired with the teacher it learned from
    even where a seed's teacher was trained again."""
    from xner_ray.evaluate import evaluate_model

    scores = record.setdefault("target_f1", {})
    if lang not in scores:
        r = evaluate_model(record["dir"], str(data / f"conll2002-{lang}/dev.txt"), lang=lang)
        scores[lang] = round(float(r["f1"]), 6)
    return scores[lang]


def teacher_steps(teacher: Path) -> int:
    """Optimisation steps the teacher took: its best epoch's step count when that was the last
    epoch, else that count scaled to all its epochs (the summary keeps the best epoch only)."""
    summary = json.loads((teacher / "train_summary.json").read_text())
    best, epochs = summary["best"], summary["config"]["epochs"]
    steps = round(best["step"] / best["epoch"] * epochs)
    return min(steps, summary["config"].get("max_steps") or steps)


def student_budget(steps: int, n_sentences: int, seed: int,
                   threads: Optional[int] = None) -> dict:
    """``threads``: torch threads of the training worker (``--train-threads``; not part of the
    budget: the same steps and data, in a different arithmetic order)."""
    per_epoch = math.ceil(n_sentences / STUDENT["batch_size"])
    return {**STUDENT, "epochs": math.ceil(steps / per_epoch), "max_steps": steps, "seed": seed,
            **({"threads": threads} if threads else {})}


def count_sentences(path: Path, lang: str) -> int:
    from xner_ray.io.text import read_unlabeled

    return sum(1 for _ in read_unlabeled(str(path), lang=lang, fmt="conll"))


def run_one(method: str, lang: str, seed: int, teacher: Path, out: Path, data: Path,
            rows: dict, on_round=None, threads: Optional[int] = None,
            partial: Optional[dict] = None) -> dict:
    """One (method, language, seed) row: target dev scores (+ English dev F1 of students).
    ``on_round(rounds)``: a multi-round job's rounds so far (``rounds_of`` rows), after each.
    ``rows``/``partial``: the results file's rows and unfinished runs (the Table 7 rows read
    RIKD's round-1 discard ratio there)."""
    from xner_ray.evaluate import evaluate_model

    dev = data / f"conll2002-{lang}/dev.txt"
    if method == "direct":
        r = evaluate_model(str(teacher), str(dev), lang=lang)
        return {"f1": round(float(r["f1"]), 6), "precision": round(float(r["precision"]), 6),
                "recall": round(float(r["recall"]), 6),
                "per_type": {t: round(v["f1"], 6) for t, v in sorted(r["per_type"].items())}}
    ratio = rikd_round1_discard(rows, partial or {}, lang, seed)
    if method in RULES and ratio is None:
        raise SystemExit(f"{method}/{lang}/{seed} matches RIKD's round-1 discard ratio: run "
                         f"--methods rikd --langs {lang} --seeds {seed} first (its first "
                         "round is enough)")
    from xner_ray.methods.advpicker import AdvPickerConfig, run_advpicker
    from xner_ray.methods.rikd import RikdConfig, run_rikd
    from xner_ray.methods.tsl import TslConfig, run_tsl
    from xner_ray.selectors import n_kept

    unlabeled = data / f"conll2002-{lang}/train.txt"  # whole split; the reader drops its tags
    steps = teacher_steps(teacher)
    n_sentences = count_sentences(unlabeled, lang)
    # AdvPicker's student sees the kept top rho only: its epochs are counted over those
    student = student_budget(steps, n_kept(ADV["rho"], n_sentences)
                             if method in ("adv", "comb") else n_sentences, seed, threads)
    target = {"lang": lang, "unlabeled": str(unlabeled), "fmt": "conll", "dev": str(dev)}
    # gold_eval: the train split's tags go to sentences.gold_tags to score the pseudo-labels
    # and the policy in SQL (label_quality); they train, select and choose nothing
    common = dict(store=str(out / "store"), source_dev=str(data / "conll2003-en/dev.txt"),
                  targets=[target], student=student, gold_eval=True)
    run_id = f"{method}-{lang}-s{seed}"
    if method == "tsl":
        s = run_tsl(TslConfig(run_id=run_id, out=str(out / run_id),
                              teachers=[{"lang": "en", "model": str(teacher)}], **common))[lang]
        return {**s["target_dev"], "source_dev_f1": s["source_dev_f1"], "student": student,
                "seconds": s.get("seconds")}
    if method == "adv":
        s = run_advpicker(AdvPickerConfig(
            run_id=run_id, out=str(out / run_id), teachers=tladv_teachers(seed, out, data, threads),
            rho=ADV["rho"], combine="chosen", **common))[lang]
        ensemble = s.get("target_dev_ensemble") or {}
        return {**s["target_dev"], "source_dev_f1": s["source_dev_f1"], "student": student,
                "kept_share": s["kept_share"], "teachers": s["teachers"],
                "ensemble_f1": ensemble.get("f1"),
                **label_quality(out / "store", run_id, lang).get(0, {})}
    if method == "comb":
        from xner_ray.methods.combined import run_combined

        rounds = rounds_of(run_combined(combined_config(
            run_id, lang, teacher, out, data, tladv_teachers(seed, out, data, threads), common),
            round_hook(on_round, out, run_id, lang))[lang],
            label_quality(out / "store", run_id, lang))
        return {**rounds[-1], "rounds": rounds, "student": student}
    extra = {}  # the Table 7 rule, or rikd_kt's keep target
    if method in RULES:
        extra = dict(selection=RULES[method], discard_ratio=ratio)
    if method == "rikd_kt":
        extra = dict(keep_target=round(1.0 - TABLE6_DISCARD[lang], 3))
    res = run_rikd(RikdConfig(run_id=run_id, out=str(out / run_id), teacher=str(teacher),
                              rounds=1 if method in RULES else ROUNDS,
                              reinforce=method != "ikd",
                              warmup_steps=WARMUP_STEPS, **extra, **common),
                   round_hook(on_round, out, run_id, lang))[lang]
    rounds = rounds_of(res, label_quality(out / "store", run_id, lang))
    return {**rounds[-1], "rounds": rounds, "student": student}


def rikd_round1_discard(rows: dict, partial: dict, lang: str, seed: int) -> Optional[float]:
    """RIKD's average discard ratio in round 1 (what its Table 7 baselines match): from the
    finished ``rikd`` row of (lang, seed), else from the record of a run that finished round 1
    only (``partial``)."""
    rikd = rows.get("rikd", {}).get(lang, {}).get(str(seed)) or \
        partial.get(f"rikd/{lang}/{seed}")
    return rikd["rounds"][0]["discard_ratio"] if rikd and rikd.get("rounds") else None


def round_hook(on_round, out: Path, run_id: str, lang: str):
    """The jobs' ``on_round(lang, summary)`` as ``on_round(rounds so far)``, each round with
    its ``label_quality`` (the round has committed when the job calls it)."""
    if on_round is None:
        return None
    done: list[dict] = []

    def hook(lang_: str, summary: dict) -> None:
        done.append(summary)
        on_round(rounds_of(done, label_quality(out / "store", run_id, lang)))

    return hook


def combined_config(run_id: str, lang: str, teacher: Path, out: Path, data: Path,
                    scorers: list[str], common: dict):
    """The combined job of one language and seed: the projection of the first
    ``PROJECT_PAIRS`` Bible verses from ``teacher``, ``scorers``' selection, RIKD's rounds."""
    from xner_ray.methods.combined import CombinedConfig

    bible = data / "opus-bible-en-es"
    corpus = {"lang": lang, "path": str(bible), "src_lang": "en", "fmt": "moses",
              "links": str(bible / "links.jsonl"), "limit": PROJECT_PAIRS}
    return CombinedConfig(run_id=run_id, out=str(out / run_id), teacher=str(teacher),
                          project={**PROJECT, "corpora": [corpus]}, lang_scorers=scorers,
                          rho=ADV["rho"], rounds=ROUNDS, reinforce=True,
                          warmup_steps=WARMUP_STEPS, **common)


def rounds_of(res: list, quality: Optional[dict] = None) -> list[dict]:
    """Per-round rows of a RIKD-shaped job's summary (RIKD, iterative KD, combined), with
    each round's ``label_quality`` where given."""
    return [{**s["target_dev"], "source_dev_f1": s["source_dev_f1"], "round": s["round"],
             **{k: s[k] for k in ("discard_ratio", "mean_reward", "kept_share", "seconds")
                if s.get(k) is not None}, **(quality or {}).get(s["round"], {})} for s in res]


def label_quality(store: Path, run_id: str, lang: str) -> dict:
    """{round: scores} of one run's pseudo-labels against the gold tags the run kept for
    evaluation (``gold_eval``), from the store's SQL questions:

    - ``pl_f1_all`` / ``pl_f1_selected`` / ``pl_f1_other``: entity F1 of all pseudo-labels, of
      the ones the student learned from and of the rest (``sql/pseudo_label_prf.sql``;
      AdvPicker Table 4's comparison);
    - ``policy_auc``: RIKD's keep probability against sentence-level correctness
      (``sql/policy_auc.sql``; 0.5 = chance), where the policy decided.
    """
    from xner_ray.sqlshell import connect, run_sql

    con, out = connect(store), {}

    def rows(question: str):  # the questions' run_id / lang parameters: only this run's rows
        return run_sql(con, question, {"run_id": run_id, "lang": lang},
                       output="arrow").to_pylist()

    for r in rows("pseudo_label_prf"):
        out.setdefault(r["round"], {})[f"pl_f1_{r['bucket']}"] = round(float(r["f1"]), 6)
    for r in rows("policy_auc"):
        if r["auc"] is not None:
            out.setdefault(r["round"], {})["policy_auc"] = round(float(r["auc"]), 4)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--langs", nargs="+", default=list(LANGS), choices=LANGS)
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "outputs" / "fair_budget" / "cpu"))
    p.add_argument("--direct-transfer", default=str(DIRECT), metavar="DIR",
                   help="direct_transfer.py's CPU teacher: seed 42's teacher when its budget "
                        "matches (else one is trained under --out)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--train-threads", type=int, metavar="N",
                   help="torch threads of every training worker (TrainConfig.threads; default "
                        "as derived from the cluster: 1 on 2 CPUs); see "
                        "benchmarks/results/train_threads_cpu.md. It is part of a run's "
                        "student config: resume a run with the value it started with")
    p.add_argument("--redo", action="store_true", help="run rows already in the results again")
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = p.parse_args(argv)
    # the CPU budget on either machine kind, each in its own file: a GPU's steps (bf16
    # autocast) are not the CPU's (fp32) and their rows do not share a mean
    kind = machine_kind()
    dest = Path(args.results) / f"fair_budget_{kind}"
    result = (json.loads(dest.with_suffix(".json").read_text())
              if dest.with_suffix(".json").exists() else
              {"benchmark": "fair_budget", "machine_kind": kind, "teacher_budget": TEACHER,
               "student": STUDENT, "rounds": ROUNDS, "warmup_steps": WARMUP_STEPS, "rows": {},
               "runs": {}})
    if args.render:
        dest.with_suffix(".md").write_text(markdown(result))
        return 0
    if args.train_threads is not None and args.train_threads < 1:
        p.error("--train-threads must be >= 1")
    if (result["teacher_budget"], result["student"]) != (TEACHER, STUDENT):
        p.error(f"{dest}.json was written with another budget; move it away first")
    meta = provenance()
    data, out = Path(args.data_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from xner_ray.cluster import init_ray

    init_ray()

    def save() -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.with_suffix(".json").write_text(json.dumps(result, indent=2))
        dest.with_suffix(".md").write_text(markdown(result))

    for seed in args.seeds:
        teacher = teacher_dir(seed, out, data, Path(args.direct_transfer), args.train_threads)
        record = teacher_record(result, seed, teacher)
        for lang in args.langs:
            for method in args.methods:
                if lang not in ONLY.get(method, LANGS):
                    print(f"[bench] {method}/{lang}: not run (only {', '.join(ONLY[method])})",
                          flush=True)
                    continue
                cell = result["rows"].setdefault(method, {}).setdefault(lang, {})
                if str(seed) in cell and not args.redo:
                    continue
                t0 = time.time()
                key = f"{method}/{lang}/{seed}"
                if method == "direct":  # the teacher's own evaluation: no second one
                    row = run_one(method, lang, seed, teacher, out, data, result["rows"])
                    base = record.setdefault("target_f1", {})[lang] = row["f1"]
                else:
                    base = teacher_f1(record, lang, data)
                    row = run_one(method, lang, seed, teacher, out, data, result["rows"],
                                  partial_recorder(result, key, meta, save, base),
                                  args.train_threads, result.get("partial"))
                cell[str(seed)] = {**row, "teacher_f1": base}
                part = result.get("partial", {}).pop(key, None)  # the row supersedes them
                earlier = resumed_rounds(part, {k: meta[k] for k in ("git_revision", "date")})
                result["runs"][key] = {**{k: meta[k] for k in ("command", "git_revision",
                                                                 "date", "machine")},
                                       "seconds": round(time.time() - t0, 1),
                                       **({"train_threads": args.train_threads}
                                          if args.train_threads else {}),
                                       **({"resumed_rounds": earlier} if earlier else {})}
                result["versions"] = meta["versions"]  # the last row's (the .md footer)
                print(f"[bench] {key}: F1 {cell[str(seed)]['f1']:.4f}", flush=True)
                save()
    print(f"wrote {dest}.json and .md")
    return 0


def partial_recorder(result: dict, key: str, meta: dict, save,
                     base: Optional[float] = None):
    """``on_round`` for ``run_one``: the rounds a multi-round row has finished, in the results
    file's ``partial`` (not in any mean) -- a session that ends before the last round keeps
    them. A record with more rounds is not replaced by one with fewer (a rerun on a machine
    without the earlier store starts at round 0 again), nor by a resumed run's report of the
    rounds it found in the store (nothing trained by this run: the record keeps the command,
    revision and date of the run that wrote it)."""

    here = {k: meta[k] for k in ("git_revision", "date")}

    def record(rounds: list[dict]) -> None:
        old = result.get("partial", {}).get(key)
        if old is not None and len(old["rounds"]) > len(rounds):
            return
        rows = made_by(rounds, old, here)
        if old is not None and all(r["made_by"] != here for r in rows):
            return
        result.setdefault("partial", {})[key] = {
            "rounds": rows, "of": ROUNDS if not key.startswith(tuple(RULES)) else 1,
            **({"teacher_f1": base} if base is not None else {}),
            **{k: meta[k] for k in ("command", "git_revision", "date", "machine",
                                    "versions")}}
        save()

    return record


def made_by(rounds: list[dict], old: Optional[dict], here: dict) -> list[dict]:
    """``rounds`` with the revision and date of the run that trained each (``made_by``): a
    resumed run reports the rounds it found in the store again, and those keep the earlier
    run's provenance when they are the same rounds (same F1), not the resuming run's."""
    def earlier(r: dict) -> Optional[dict]:
        prev = {p["round"]: p for p in (old or {}).get("rounds", [])}.get(r["round"])
        if prev is None or prev.get("f1") != r.get("f1"):
            return None
        return prev.get("made_by") or {k: old[k] for k in here}

    return [{**r, "made_by": earlier(r) or here} for r in rounds]


def resumed_rounds(partial: Optional[dict], here: dict) -> list[dict]:
    """The rounds of a finished row that an earlier run trained (from its partial record)."""
    return [{"round": r["round"], **r["made_by"]} for r in (partial or {}).get("rounds", [])
            if r.get("made_by") and r["made_by"] != here]


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return f"{mean:.4f}" + (f" +- {std:.4f}" if std is not None else "") + f" (n={len(values)})"


def paired_delta(cell: dict, base: dict) -> str:
    """Mean +- std over seeds of (row F1 - its teacher's F1), in points: a student against the
    teacher it learned from (the row's ``teacher_f1``; rows without one: the direct row of the
    same seed), not a mean over different seed sets."""
    pairs = {s: v["teacher_f1"] if v.get("teacher_f1") is not None else base[s]["f1"]
             for s, v in cell.items() if v.get("teacher_f1") is not None or s in base}
    seeds = sorted(pairs)
    if not seeds:
        return "-"
    d = [100 * (cell[s]["f1"] - pairs[s]) for s in seeds]
    std = f" +- {statistics.stdev(d):.1f}" if len(d) > 1 else ""
    return f"{statistics.mean(d):+.1f}{std} (n={len(d)})"


# kept_share: what the labeling selector kept (AdvPicker's top rho; 100% for keep_all, before
# RIKD's policy, whose own share shows as its discard ratio)
NOTES = (("kept_share", "selector kept", ".1%"), ("ensemble_f1", "TLADV ensemble F1", ".4f"),
         ("discard_ratio", "discard ratio", ".3f"), ("pl_f1_all", "pseudo-label F1", ".4f"),
         ("pl_f1_selected", "on kept", ".4f"), ("pl_f1_other", "on rest", ".4f"),
         ("policy_auc", "policy AUC", ".3f"), ("teacher_f1", "its teacher", ".4f"))


def notes(v: dict) -> str:
    """"; name value" for each of a row's (or round's) ``NOTES`` keys it has."""
    return "".join(f"; {name} {v[k]:{fmt}}" for k, name, fmt in NOTES if v.get(k) is not None)


def machine_kind() -> str:
    """``gpu`` where torch sees CUDA (Ray Train's workers then take the GPU), else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def markdown(r: dict) -> str:
    rows = r["rows"]
    langs = [l for l in LANGS if any(l in rows.get(m, {}) for m in METHODS)]
    direct = {l: rows.get("direct", {}).get(l, {}) for l in langs}
    lines = [f"# Methods at a fair budget, over seeds ({r.get('machine_kind', 'cpu')})", "",
             "Target dev F1 (seqeval, entity level, strict IOB2, full CoNLL-2002 dev files): "
             "mean +- sample std over the seeds run (n). Unlabeled target text: the whole "
             "target train split, labels dropped. Every student takes its teacher's number of "
             "optimisation steps and is chosen by English dev F1 (its best epoch); a "
             "multi-round method's row is its last round. Target labels choose nothing.", "",
             f"Teacher budget (each seed its own teacher): {r['teacher_budget']}. Students: "
             f"{r['student']}, steps = the teacher's; RIKD: {r['rounds']} rounds, J_w = "
             f"{r['warmup_steps']} warm-up steps. AdvPicker: {ADV['teachers']} TLADV teachers "
             f"per seed shaped like the teacher, exactly the top {ADV['rho']} by l_score kept "
             "(the per-seed table gives the kept share and the TLADV ensemble's own F1).", "",
             "| method | " + " | ".join(f"{l} F1" for l in langs) + " | "
             + " | ".join(f"{l} minus direct, same seeds (points)" for l in langs) + " |",
             "|---|" + "---|" * (2 * len(langs))]
    for m in METHODS:
        if m not in rows:
            continue
        f1 = {l: [v["f1"] for v in rows[m].get(l, {}).values()] for l in langs}
        delta = ["-" if m == "direct" else paired_delta(rows[m].get(l, {}), direct[l])
                 for l in langs]
        lines.append(f"| {NAMES[m]} | " + " | ".join(mean_std(f1[l]) for l in langs) + " | "
                     + " | ".join(delta) + " |")
    lines += ["", "Per seed (target dev F1, the English dev F1 that chose the student, target dev "
              "F1 per entity type; where the run kept the train split's tags for evaluation: "
              "the entity F1 of the round's pseudo-labels against them -- all, the ones the "
              "student learned from (kept), the rest -- and the AUC of RIKD's keep probability "
              "against sentence-level correctness, 0.5 = chance):", "",
              "| method | lang | seed | F1 | en dev F1 | per type (F1) |", "|---|---|---|---|---|---|"]
    for m in METHODS:
        for l in langs:
            for seed, v in sorted(rows.get(m, {}).get(l, {}).items()):
                types = ", ".join(f"{t} {f:.3f}" for t, f in sorted(v.get("per_type", {}).items()))
                src = v.get("source_dev_f1")
                lines.append(f"| {NAMES[m]} | {l} | {seed} | {v['f1']:.4f} | "
                             f"{f'{src:.4f}' if src is not None else '-'} | {types}{notes(v)} |")
                for rd in v.get("rounds", [])[:-1]:
                    lines.append(f"| {NAMES[m]}, round {rd['round'] + 1} | {l} | {seed} | "
                                 f"{rd['f1']:.4f} | {rd['source_dev_f1']:.4f} | {notes(rd)[2:]} |")
    missing = [f"{m}/{l}" for m in METHODS for l in ONLY.get(m, LANGS)
               if len(rows.get(m, {}).get(l, {})) < 3]
    if missing:
        lines += ["", "**Incomplete: fewer than 3 seeds (or none) for " + ", ".join(missing)
                  + ".** A difference under a point or two is not a finding on one seed."]
    for seed, t in sorted((r.get("teachers") or {}).items()):
        old = t.get("replaced")
        if old:
            lines += ["", f"Seed {seed}'s teacher was trained again ({t['dir']}: {t['steps']} "
                      f"steps, English dev F1 {t.get('en_dev_f1', float('nan')):.4f}; before: "
                      f"{old['dir']}, {old['steps']} steps"
                      + (f", English dev F1 {old['en_dev_f1']:.4f}" if old.get("en_dev_f1")
                         else "") + "). Rows learned from the new one carry its target F1 "
                      "(\"its teacher\") and are paired with it; older rows with the direct "
                      "row of their seed."]
    partial = r.get("partial") or {}
    if partial:
        lines += ["", "Runs that stopped before their last round (the rounds they finished; in "
                  "no mean or difference above):", "",
                  "| method | lang | seed | round | F1 | en dev F1 | per type (F1) | revision, "
                  "date |", "|---|---|---|---|---|---|---|---|"]
        for key, v in sorted(partial.items()):
            m, l, seed = key.split("/")
            for rd in v["rounds"]:
                made = rd.get("made_by") or v
                types = ", ".join(f"{t} {f:.3f}" for t, f in sorted(rd.get("per_type", {})
                                                                        .items()))
                teacher = (f"; its teacher {v['teacher_f1']:.4f}" if v.get("teacher_f1")
                           is not None else "")
                lines.append(f"| {NAMES[m]} | {l} | {seed} | {rd['round'] + 1} of {v['of']} | "
                             f"{rd['f1']:.4f} | {rd['source_dev_f1']:.4f} | {types}{notes(rd)}"
                             f"{teacher} | {made['git_revision'][:10]}, {made['date'][:10]} |")
    lines += ["", "The combined job runs on es only: its projection needs a parallel corpus, and "
              "the one here is en-es (the Bible).",
              "", "Runs (command, revision, date, seconds) per row: the .json `runs`; a row that "
              "resumed an earlier run's rounds names their revisions (`resumed_rounds`).", ""]
    return "\n".join(lines + last_run_footer(r)) + "\n"


if __name__ == "__main__":
    sys.exit(main())
