"""Distillation benchmark (TSL / RIKD issue): en -> es and en -> nl on CoNLL, target dev F1 of

  * direct transfer  -- the English teacher applied zero-shot,
  * TSL single-source -- one student distilled from the teacher (TSL Eq. 3, `jobs/tsl.py`),
  * iterative KD, rounds 1-3 -- RIKD without the RL selector (`reinforce: false`),
  * RIKD, rounds 1-3 -- reinforced instance selection (RIKD Algorithm 1 + 2),

all students with the same budget (architecture, steps, data). The unlabeled target text is a
seeded random sample of the target `train.txt` with its labels dropped (the reader ignores CoNLL
tags of unlabeled input); target dev labels are used for the scores below only, never for
training or model selection (students are chosen on English dev).

    python benchmarks/distillation.py --budget cpu --teacher outputs/direct_transfer/cpu
    python benchmarks/distillation.py --budget cpu --kd-loss   # after it: MSE vs KL students

The jobs run through the product's code paths (`run_tsl`, `run_rikd`) on one local Ray cluster
and keep their stores under --out, so an interrupted benchmark resumes from the last complete
round. Writes benchmarks/results/distillation_<budget>.{json,md}; a run of some languages
(`--langs nl`) keeps the other languages' figures of an earlier run with the same settings,
each with its own revision and date (`--fresh` drops them).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import check_f1, footer, per_type_f1, provenance  # noqa: E402
from xner_ray.train.loop import KD_LOSS_NAMES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LANGS = ("es", "nl")
BUDGETS = {
    # 2-core CPU budget: students shaped like the CPU teacher (bottom 6 of 12 layers, frozen
    # embeddings), 2 epochs over a 2,000-sentence sample of the target train text, batch 16
    # (250 steps a round); RIKD: 100 warm-up steps (J_w), then reinforced steps; selection on
    # 1,000 English dev sentences. The learning rate and frozen layers (lr 3e-4, bottom 3
    # frozen as in the papers) were chosen by the English dev F1 of a TSL es student after these
    # 250 steps (the source-language criterion only) among CALIBRATION, by `--calibrate`
    # (benchmarks/results/distillation_calibration_cpu.md).
    "cpu": dict(n_unlabeled=2000, rounds=3, warmup_steps=100,
                student=dict(layers=6, epochs=2, batch_size=16, lr=3e-4, freeze_embeddings=True,
                             freeze_layers=3, max_length=128, dev_limit=1000, seed=42)),
    # The papers' setting (RIKD 4.2), for a GPU machine: all of the target train text.
    "full": dict(n_unlabeled=None, rounds=3, warmup_steps=500,
                 student=dict(epochs=5, batch_size=64, lr=5e-5, weight_decay=0.005,
                              freeze_embeddings=True, freeze_layers=3, max_length=256, seed=42)),
}


def sample_conll(src: Path, dest: Path, n: int | None, seed: int) -> int:
    """Write a seeded random sample of ``n`` sentences of ``src`` (all when None) to ``dest``
    in CoNLL form; the tags travel along but unlabeled readers drop them."""
    from xner_ray.io.conll import read_conll

    sents = list(read_conll(str(src)))
    if n is not None and n < len(sents):
        keep = sorted(random.Random(seed).sample(range(len(sents)), n))
        sents = [sents[i] for i in keep]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for s in sents:
            f.write("".join(f"{w} {t}\n" for w, t in zip(s.tokens, s.tags)) + "\n")
    tmp.replace(dest)
    return len(sents)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--teacher", help="English teacher (default outputs/direct_transfer/<budget>)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "outputs" / "distillation"))
    p.add_argument("--langs", nargs="+", default=list(LANGS), choices=LANGS)
    p.add_argument("--seed", type=int, default=0, help="seed of the unlabeled sample")
    p.add_argument("--render", metavar="JSON", help="only rewrite the .md from a results .json")
    p.add_argument("--calibrate", action="store_true",
                   help="instead of the table: TSL students of the first --langs language for "
                        "each CALIBRATION setting, ranked by English dev F1")
    p.add_argument("--kd-loss", action="store_true",
                   help="instead of the table: the distillation loss, MSE (the papers') vs KL, "
                        "on the TSL pseudo-labels a table run left in its store, per --langs")
    p.add_argument("--fresh", action="store_true",
                   help="do not keep the figures of languages not run now from the results file")
    p.add_argument("--per-type", action="store_true",
                   help="only add the per-entity-type breakdown (direct transfer vs the "
                        "student of each language chosen by English dev F1) to the results "
                        "file of --budget, from the "
                        "models its run left under --out (a full run adds it at its end)")
    args = p.parse_args(argv)
    if args.render:
        path = Path(args.render)
        r = json.loads(path.read_text())
        render = {"distillation_calibration": _calibration_markdown,
                  "distillation_kd_loss": _kd_loss_markdown}.get(r["benchmark"], _markdown)
        path.with_suffix(".md").write_text(render(r))
        return 0
    meta = provenance()  # the revision and state the run starts from
    budget = BUDGETS[args.budget]
    teacher = Path(args.teacher or REPO / "outputs" / "direct_transfer" / args.budget)
    if not (teacher / "train_summary.json").exists():
        p.error(f"no trained teacher in {teacher}; run benchmarks/direct_transfer.py "
                f"--budget {args.budget} first")
    data, out = Path(args.data_dir), Path(args.out) / args.budget
    dest = REPO / "benchmarks" / "results" / f"distillation_{args.budget}"
    if args.per_type:
        result = json.loads(dest.with_suffix(".json").read_text())
        add_per_type(result, out, data, meta)
        dest.with_suffix(".json").write_text(json.dumps(result, indent=2))
        dest.with_suffix(".md").write_text(_markdown(result))
        print(f"wrote the per-type breakdown into {dest}.json and .md", flush=True)
        return 0

    from xner_ray.cluster import init_ray
    from xner_ray.evaluate import evaluate_model
    from xner_ray.methods.rikd import RikdConfig, run_rikd
    from xner_ray.methods.tsl import TslConfig, run_tsl

    targets, n_unlabeled = [], {}
    for lang in args.langs:
        sample = out / "data" / f"{lang}.unlabeled.conll"
        n_unlabeled[lang] = sample_conll(data / f"conll2002-{lang}/train.txt", sample,
                                         budget["n_unlabeled"], args.seed)
        targets.append({"lang": lang, "unlabeled": str(sample), "fmt": "conll",
                        "dev": str(data / f"conll2002-{lang}/dev.txt")})
    init_ray()
    if args.calibrate:
        return calibrate(args.budget, teacher, targets[0] | {
            "source_dev": data / "conll2003-en/dev.txt"}, out, meta)
    if args.kd_loss:
        return kd_loss_ablation(args.budget, teacher, targets, out, data, meta)
    rows, seconds = {}, {}
    result = {"benchmark": "distillation", "budget": args.budget, "teacher": str(teacher),
              "teacher_config": json.loads((teacher / "train_summary.json").read_text())["config"],
              "budget_settings": budget, "n_unlabeled": n_unlabeled, "sample_seed": args.seed,
              "rows": rows, "seconds": seconds, **meta}
    result["runs"] = {lang: {k: meta[k] for k in RUN_KEYS} for lang in args.langs}
    if not args.fresh:
        _carry_over(dest.with_suffix(".json"), result, args.langs)

    def save() -> None:  # after every group: an interrupted run still leaves its figures
        result["complete"] = all(lang in rows.get(k, {}) for k in ROW_NAMES
                                 for lang in result["runs"])
        dest.with_suffix(".json").write_text(json.dumps(result, indent=2))
        dest.with_suffix(".md").write_text(_markdown(result))

    # One language at a time (all rows of es, then nl), so a cut-short run has whole columns.
    for t in targets:
        lang = t["lang"]
        common = dict(store=str(out / "store"), source_dev=str(data / "conll2003-en/dev.txt"),
                      targets=[t], student=budget["student"])
        t0 = time.time()
        r = evaluate_model(str(teacher), t["dev"], lang=lang)
        rows.setdefault("direct", {})[lang] = {k: round(float(r[k]), 6)
                                               for k in ("precision", "recall", "f1")}
        seconds[f"direct/{lang}"] = round(time.time() - t0, 1)
        print(f"[bench] {lang} direct transfer: {rows['direct'][lang]}", flush=True)
        save()
        for name, reinforce in (("ikd", False), ("rikd", True)):
            # one run id per method and language: a run id's results come from one config
            res = run_rikd(RikdConfig(run_id=f"{name}-{lang}", out=str(out / name),
                                      teacher=str(teacher),
                                      rounds=budget["rounds"], reinforce=reinforce,
                                      warmup_steps=budget["warmup_steps"], **common))
            seconds[f"{name}/{lang}"] = _total_seconds(res[lang])
            for s in res[lang]:
                extra = {k: s.get(k) for k in ("discard_ratio", "mean_reward", "rl_steps")
                         if s.get(k) is not None}
                rows.setdefault(f"{name}_r{s['round'] + 1}", {})[lang] = (
                    s["target_dev"] | {"source_dev_f1": s["source_dev_f1"]} | extra)
            save()
        tsl = run_tsl(TslConfig(run_id=f"tsl-{lang}", out=str(out / "tsl"),
                                teachers=[{"lang": "en", "model": str(teacher)}], **common))
        seconds[f"tsl/{lang}"] = _total_seconds([tsl[lang]])
        rows.setdefault("tsl", {})[lang] = tsl[lang]["target_dev"] | {
            "source_dev_f1": tsl[lang]["source_dev_f1"]}
        save()
    if all(lang in rows.get(k, {}) for k in ROW_NAMES for lang in result["runs"]):
        add_per_type(result, out, data, meta)
        save()
    print(f"wrote {dest}.json and .md", flush=True)
    return 0


def _model_dir(out: Path, teacher: str, key: str, lang: str) -> Path:
    """Where a row's model is: the teacher, the TSL student, or round k's student of a run."""
    if key == "direct":
        return Path(teacher)
    if key == "tsl":
        return out / "tsl" / lang
    name, k = key.split("_r")
    return out / name / lang / f"round{int(k) - 1}"


def chosen_student(rows: dict, lang: str):
    """The distilled student of ``lang`` chosen by English (source) dev F1 -- the zero-shot
    rule: target labels never choose a model. None when no row has an English dev F1."""
    got = {k: v[lang]["source_dev_f1"] for k, v in rows.items()
           if k != "direct" and lang in v and v[lang].get("source_dev_f1") is not None}
    return max(got, key=got.get) if got else None


def add_per_type(result: dict, out: Path, data: Path, meta: dict) -> None:
    """Per entity type F1 on the target dev set, for direct transfer and the distilled student
    of each language chosen by English dev F1 (``chosen_student``): where the students gain or
    lose. Each model is evaluated again and must reproduce the table's overall F1, so the
    breakdown is of the measured model."""
    from xner_ray.evaluate import evaluate_model

    rows, per_type, choice = result["rows"], {}, {}
    for lang in rows["direct"]:
        key = chosen_student(rows, lang)
        if key is None:
            continue
        per_type[lang] = {}
        choice[lang] = {"row": key, "by": "source_dev_f1",
                        "source_dev_f1": rows[key][lang]["source_dev_f1"]}
        for k in ("direct", key):
            model = _model_dir(out, result["teacher"], k, lang)
            r = evaluate_model(str(model), str(data / f"conll2002-{lang}/dev.txt"), lang=lang)
            check_f1(f"{model} ({k}) on {lang} dev", r["f1"], rows[k][lang]["f1"])
            per_type[lang][k] = per_type_f1(r)
            print(f"[bench] {lang} {k} per type: {per_type[lang][k]}", flush=True)
    result["per_type"] = per_type
    result["per_type_choice"] = choice
    result["per_type_run"] = {k: meta[k] for k in RUN_KEYS}


def _total_seconds(summaries: list[dict]):
    """Wall time of a row group, summed over the rounds' own timings, so a group resumed from
    its store still reports the time its rounds took; None when a round predates the timing."""
    times = [s.get("seconds") for s in summaries]
    return None if None in times else round(sum(times), 1)


UNTIMED = "not timed (resumed from rounds that ran before rounds kept their wall time)"
RUN_KEYS = ("command", "git_revision", "date")
# Student settings tried for the cpu budget (--calibrate): the papers' freezing (bottom 3 layers)
# at TSL's student lr (1e-4) and higher, and no freezing at higher lrs, since 250 steps is far
# fewer than the papers' students get.
CALIBRATION = (dict(lr=1e-4, freeze_layers=3), dict(lr=3e-4, freeze_layers=3),
               dict(lr=3e-4, freeze_layers=0), dict(lr=1e-3, freeze_layers=0))


def calibrate(budget_name: str, teacher: Path, target: dict, out: Path, meta: dict) -> int:
    """TSL single-source students of one target language, one per CALIBRATION setting, the
    rest of the budget fixed; ranked by English dev F1 (target dev F1 is shown, never used)."""
    from xner_ray.methods.tsl import TslConfig, run_tsl

    budget, rows = BUDGETS[budget_name], []
    dest = REPO / "benchmarks" / "results" / f"distillation_calibration_{budget_name}"
    for setting in CALIBRATION:
        student = budget["student"] | setting
        name = f"calib-{target['lang']}-lr{setting['lr']:g}-f{setting['freeze_layers']}"
        t0 = time.time()
        res = run_tsl(TslConfig(run_id=name, out=str(out / "calibration" / name),
                                store=str(out / "calibration" / "store"),
                                source_dev=str(target["source_dev"]),
                                teachers=[{"lang": "en", "model": str(teacher)}],
                                targets=[{k: v for k, v in target.items() if k != "source_dev"}],
                                student=student))[target["lang"]]
        rows.append(setting | {"source_dev_f1": res["source_dev_f1"],
                               "target_dev_f1": res["target_dev"]["f1"],
                               "seconds": round(time.time() - t0, 1)})
        print(f"[calibrate] {rows[-1]}", flush=True)
    best = max(rows, key=lambda r: r["source_dev_f1"])
    result = {"benchmark": "distillation_calibration", "budget": budget_name,
              "teacher": str(teacher), "lang": target["lang"], "student": budget["student"],
              "rows": rows, "chosen": {k: best[k] for k in ("lr", "freeze_layers")}, **meta}
    dest.with_suffix(".json").write_text(json.dumps(result, indent=2))
    dest.with_suffix(".md").write_text(_calibration_markdown(result))
    print(f"wrote {dest}.json and .md", flush=True)
    return 0


def _calibration_markdown(r: dict) -> str:
    best = next(row for row in r["rows"] if all(row[k] == v for k, v in r["chosen"].items()))
    lines = [f"# Distillation student calibration ({r['budget']} budget)", "",
             f"TSL single-source {r['lang']} students from `{r['teacher']}`, every setting of the "
             f"budget but lr and frozen layers as in the {r['budget']} budget "
             f"({r['student']}). Compared by English dev F1 (model selection uses the source "
             "language only): the best one is chosen by it; target dev F1 is shown for "
             "reading, never used.", "",
             "| lr | frozen layers | English dev F1 | target dev F1 | seconds |",
             "|---|---|---|---|---|"]
    lines += [f"| {row['lr']:g} | {row['freeze_layers']} | {row['source_dev_f1']:.4f} | "
              f"{row['target_dev_f1']:.4f} | {row['seconds']} |" for row in r["rows"]]
    lines += ["", f"Chosen by English dev F1: lr {best['lr']:g}, {best['freeze_layers']} frozen "
              "layers (the budget in the script uses lr "
              f"{r['student']['lr']:g}, {r['student']['freeze_layers']} frozen).", "",
              *footer(r)]
    return "\n".join(lines)


def kd_loss_ablation(budget_name: str, teacher: Path, targets: list[dict], out: Path,
                     data: Path, meta: dict) -> int:
    """Students of each language trained on the same pseudo-labels -- round 0 of the table
    run's TSL single-source job (``tsl-<lang>`` in ``out/store``) -- with the budget's settings
    and each distillation loss of KD_LOSS_NAMES; English dev F1 (the selection criterion), target
    dev F1 and per-type F1. The MSE student repeats the table's TSL row (a check on the rest)."""
    import dataclasses

    from xner_ray.evaluate import evaluate_model
    from xner_ray.methods.common import student_config
    from xner_ray.train.distill import DistillConfig, distill

    budget, rows = BUDGETS[budget_name], []
    dest = REPO / "benchmarks" / "results" / f"distillation_kd_loss_{budget_name}"
    table = REPO / "benchmarks" / "results" / f"distillation_{budget_name}.json"
    table_rows = json.loads(table.read_text())["rows"] if table.exists() else {}
    for t in targets:
        lang = t["lang"]
        for loss in KD_LOSS_NAMES:
            folder = out / "kd_loss" / f"{lang}-{loss}"
            t0 = time.time()
            base = dataclasses.asdict(student_config(folder, budget["student"] | {
                "kd_loss": loss}))
            distill(DistillConfig(**base, store=str(out / "store"), run_id=f"tsl-{lang}",
                                  lang=lang, round=0, dev=str(data / "conll2003-en/dev.txt")))
            summary = json.loads((folder / "train_summary.json").read_text())
            r = evaluate_model(str(folder), t["dev"], lang=lang)
            rows.append({"lang": lang, "kd_loss": loss,
                         "source_dev_f1": summary["best"]["dev_f1"],
                         "target_dev_f1": round(float(r["f1"]), 6),
                         "table_tsl_f1": table_rows.get("tsl", {}).get(lang, {}).get("f1"),
                         "table_direct_f1": table_rows.get("direct", {}).get(lang, {}).get("f1"),
                         "per_type": {k: round(v["f1"], 6) for k, v in sorted(
                             r["per_type"].items())},
                         "support": {k: v["support"] for k, v in sorted(r["per_type"].items())},
                         "n_train": summary["n_train"], "seconds": round(time.time() - t0, 1)})
            print(f"[kd-loss] {rows[-1]}", flush=True)
    result = {"benchmark": "distillation_kd_loss", "budget": budget_name,
              "teacher": str(teacher), "student": budget["student"], "rows": rows, **meta}
    dest.with_suffix(".json").write_text(json.dumps(result, indent=2))
    dest.with_suffix(".md").write_text(_kd_loss_markdown(result))
    print(f"wrote {dest}.json and .md", flush=True)
    return 0


def _kd_loss_markdown(r: dict) -> str:
    types = sorted({t for row in r["rows"] for t in row["per_type"]})
    lines = [f"# Distillation loss: MSE (TSL Eq. 3, RIKD Eq. 1) vs KL ({r['budget']} budget)", "",
             f"TSL single-source students of each language on the same pseudo-labels (round 0 of "
             f"the table run's `tsl-<lang>` job), the {r['budget']} budget's student "
             f"({r['student']}), only `kd_loss` changed. English dev F1 is the selection "
             "criterion (zero-shot rule); target dev F1 and its per-type F1 are for reading. "
             "'table TSL' is the TSL row of distillation_" + r["budget"] + ".md, which the MSE "
             "student should repeat (checked below); 'direct' is its direct-transfer row.", "",
             "| lang | loss | English dev F1 | target dev F1 | table TSL | direct | "
             + " | ".join(f"{t} F1" for t in types) + " | seconds |",
             "|---|---|---|---|---|---|" + "---|" * len(types) + "---|"]
    for row in r["rows"]:
        table, direct = (f"{row[k]:.4f}" if row.get(k) is not None else "-"
                         for k in ("table_tsl_f1", "table_direct_f1"))
        lines.append(f"| {row['lang']} | {row['kd_loss']} | {row['source_dev_f1']:.4f} | "
                     f"{row['target_dev_f1']:.4f} | {table} | {direct} | "
                     + " | ".join(f"{row['per_type'].get(t, 0.0):.4f}" for t in types)
                     + f" | {row['seconds']} |")
    lines += ["", *_kd_loss_reading(r), "", *footer(r)]
    return "\n".join(lines)


def _kd_loss_reading(r: dict) -> list[str]:
    """What the figures say, from the figures: the loss English dev F1 would choose, per language,
    and whether that choice also wins on the target."""
    out = []
    for lang in dict.fromkeys(row["lang"] for row in r["rows"]):
        by = {row["kd_loss"]: row for row in r["rows"] if row["lang"] == lang}
        if set(by) != set(KD_LOSS_NAMES):
            continue
        chosen = max(by, key=lambda k: by[k]["source_dev_f1"])
        other = next(k for k in by if k != chosen)
        gain = 100 * (by[chosen]["target_dev_f1"] - by[other]["target_dev_f1"])
        misc = {k: by[k]["per_type"].get("MISC") for k in by}
        out.append(f"- {lang}: English dev F1 chooses {chosen} ({by[chosen]['source_dev_f1']:.4f} "
                   f"vs {by[other]['source_dev_f1']:.4f}); on target dev it is {gain:+.1f} F1 "
                   f"against {other}. MISC F1: " + ", ".join(
                       f"{k} {v:.4f}" for k, v in misc.items() if v is not None) + ".")
        direct = by[chosen].get("table_direct_f1")
        if direct is not None:
            out.append(f"  - The chosen student against direct transfer: "
                       f"{100 * (by[chosen]['target_dev_f1'] - direct):+.1f} F1.")
        mse = by["mse"]
        if mse.get("table_tsl_f1") is not None and abs(
                mse["target_dev_f1"] - mse["table_tsl_f1"]) > 1e-4:
            out.append(f"  - The MSE student does not repeat the table's TSL row "
                       f"({mse['target_dev_f1']:.4f} vs {mse['table_tsl_f1']:.4f}): the two "
                       "were not trained identically; read the comparison with that in mind.")
        elif mse.get("table_tsl_f1") is not None:
            out.append("  - The MSE student repeats the table's TSL row "
                       f"({mse['target_dev_f1']:.4f}).")
    return out


def _carry_over(path: Path, result: dict, langs: list[str]) -> None:
    """Keep, from an earlier results file with the same settings, the figures of the languages
    not run now (each language keeps the provenance of the run that measured it)."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    same = ("budget", "teacher_config", "budget_settings", "sample_seed")
    if any(old.get(k) != result[k] for k in same):
        print(f"[bench] {path} was written with other settings; its figures are not kept "
              "(it will be overwritten)", flush=True)
        return
    # files written before per-language provenance: one run measured every language in it
    runs = old.get("runs") or {lang: {k: old[k] for k in RUN_KEYS}
                               for lang in old["rows"].get("direct", {})}
    for lang, run in runs.items():
        if lang in langs:
            continue
        result["runs"][lang] = run
        result["n_unlabeled"][lang] = old["n_unlabeled"][lang]
        for key, per_lang in old["rows"].items():
            if lang in per_lang:
                result["rows"].setdefault(key, {})[lang] = per_lang[lang]
        result["seconds"].update({k: v for k, v in old["seconds"].items()
                                  if k.endswith(f"/{lang}")})
        print(f"[bench] keeping the {lang} figures of {run['git_revision']} ({run['date']})",
              flush=True)


ROW_NAMES = {"direct": "Direct transfer (English teacher)", "tsl": "TSL single-source",
             "ikd_r1": "Iterative KD (RIKD w/o RL), round 1",
             "ikd_r2": "Iterative KD (RIKD w/o RL), round 2",
             "ikd_r3": "Iterative KD (RIKD w/o RL), round 3",
             "rikd_r1": "RIKD round 1", "rikd_r2": "RIKD round 2", "rikd_r3": "RIKD round 3"}


def _markdown(r: dict) -> str:
    langs = list(r["rows"]["direct"])
    b, tc = r["budget_settings"], r["teacher_config"]
    st = b["student"]
    lines = [
        f"# Distillation: direct transfer vs TSL vs RIKD ({r['budget']} budget)", "",
        "Target dev F1 (seqeval, entity level, strict IOB2, full CoNLL-2002 dev files); target "
        "labels are used for these scores only. Students are selected on English dev "
        f"({st.get('dev_limit') or 'all'} sentences); 'src F1' is that English dev score.", "",
        f"Teacher: `{r['teacher']}` (layers={tc['layers'] or 'all'}, epochs={tc['epochs']}, "
        f"lr={tc['lr']}, trained on CoNLL-2003 en train). Unlabeled target text: "
        + ", ".join(f"{lang} {n} sentences" for lang, n in r["n_unlabeled"].items())
        + f" sampled from the target train.txt (seed {r['sample_seed']}), labels dropped.",
        f"Every student: layers={st.get('layers') or 'all'}, epochs={st['epochs']}, "
        f"batch={st['batch_size']}, lr={st['lr']}, frozen: "
        + ("embeddings" if st.get("freeze_embeddings") else "nothing")
        + (f" + bottom {st['freeze_layers']} layers" if st.get("freeze_layers") else "")
        + f", max_length={st['max_length']}, seed {st['seed']}, "
        "initialised from the pre-trained encoder (how the learning rate was chosen: the "
        "BUDGETS comment in the script); RIKD: "
        f"J_w={b['warmup_steps']} warm-up steps, policy lr 0.01. One seed per row.", "",
        "| method | " + " | ".join(f"{lang} F1 | {lang} src F1" for lang in langs) + " |",
        "|---|" + "---|---|" * len(langs),
    ]
    if not r.get("complete", True):
        lines.insert(2, "**Incomplete run: rows or languages missing below were not run.**\n")
    for key, name in ROW_NAMES.items():
        if key not in r["rows"]:
            continue
        cells = []
        for lang in langs:
            m = r["rows"][key].get(lang, {})
            src = m.get("source_dev_f1")
            cells += [f"{m['f1']:.4f}" if "f1" in m else "-",
                      f"{src:.4f}" if src is not None else "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    direct = r["rows"]["direct"]
    lines += ["", "Change over direct transfer (F1 points):", "",
              "| method | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for key, name in ROW_NAMES.items():
        if key == "direct" or key not in r["rows"]:
            continue
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * (r['rows'][key][lang]['f1'] - direct[lang]['f1']):+.1f}"
            if lang in r["rows"][key] else "-" for lang in langs) + " |")
    rl = [(k, lang, m) for k, v in r["rows"].items() if k.startswith("rikd")
          for lang, m in v.items()]
    if rl:
        lines += ["", "RIKD policy per round: mean discard ratio and mean delayed reward over the "
                  "reinforced steps (RIKD Eq. 3).", "",
                  "| round | lang | RL steps | discard ratio | mean reward |", "|---|---|---|---|---|"]
        for k, lang, m in rl:
            dr, rw = m.get("discard_ratio"), m.get("mean_reward")
            lines.append(f"| {k[-1]} | {lang} | {m.get('rl_steps', '-')} | "
                         f"{dr:.3f} | {rw:.2e} |" if dr is not None else
                         f"| {k[-1]} | {lang} | - | - | - |")
    lines += _per_type_markdown(r)
    lines += ["", "Reading the table:", ""] + _reading(r) + [
        "", "Wall time per row group (s): " + ", ".join(
            f"{k} {v if v is not None else UNTIMED}" for k, v in r["seconds"].items()), ""]
    runs = r.get("runs") or {lang: {k: r[k] for k in RUN_KEYS} for lang in langs}
    for lang, run in runs.items():
        lines += [f"{lang}: command `{run['command']}`, revision {run['git_revision']}, "
                  f"date {run['date']}  "]
    lines += [f"Machine: {r['machine']}  ", f"Versions: {r['versions']}", ""]
    return "\n".join(lines) + "\n"


def _per_type_markdown(r: dict) -> list[str]:
    if not r.get("per_type"):
        return []
    run = r["per_type_run"]
    by_source = "per_type_choice" in r
    how = ("the distilled student chosen by English (source) dev F1, the zero-shot rule"
           if by_source else
           "the distilled student with the highest TARGET dev F1 -- an oracle choice the "
           "zero-shot rule forbids (this breakdown predates choosing by English dev F1; run "
           "`--per-type` again to replace it)")
    col = "student (English dev choice)" if by_source else "student (target-F1 oracle)"
    lines = ["", f"Per entity type, target dev F1: direct transfer against {how} "
             f"(evaluated again by `{run['command']}`, revision {run['git_revision']}, date "
             f"{run['date']}; each model reproduced its overall F1 above).", "",
             f"| lang | type | gold entities | direct transfer | {col} | student row | change |",
             "|---|---|---|---|---|---|---|"]
    for lang, models in r["per_type"].items():
        direct = models["direct"]
        key = next(k for k in models if k != "direct")
        for t, m in direct.items():
            s = models[key][t]["f1"]
            lines.append(f"| {lang} | {t} | {m['support']} | {m['f1']:.4f} | {s:.4f} | "
                         f"{ROW_NAMES[key]} | {100 * (s - m['f1']):+.1f} |")
    return lines


ORDERED_EXPORT = "fd49b69"  # the training-set export got its ORDER BY here
PER_ROUND_SEED = "9a7ad85"  # RIKD's policy got a seed per round here


def _has_ordered_export(revision: str):
    """True/False: ``revision`` contains ORDERED_EXPORT; None when git cannot tell."""
    import subprocess

    rev = revision.split()[0]
    try:
        rc = subprocess.run(["git", "merge-base", "--is-ancestor", ORDERED_EXPORT, rev],
                            cwd=REPO, capture_output=True).returncode
    except OSError:
        return None
    return {0: True, 1: False}.get(rc)


def _reading(r: dict) -> list[str]:
    """What the figures say, computed from them (no number here is typed by hand)."""
    rows, out = r["rows"], []
    for lang, d in rows["direct"].items():
        got = {k: v[lang]["f1"] for k, v in rows.items() if k != "direct" and lang in v}
        if not got:
            continue
        best = max(got, key=got.get)
        chosen = chosen_student(rows, lang)
        if chosen is not None:
            out.append(f"- {lang}: chosen by English dev F1, the student is {ROW_NAMES[chosen]}"
                       f": target dev {got[chosen]:.4f}, {100 * (got[chosen] - d['f1']):+.1f} "
                       f"points against direct transfer ({d['f1']:.4f}).")
        out.append(f"- {lang}: the highest target dev F1 of a student (read only, not a "
                   f"choice: target labels choose nothing) is {ROW_NAMES[best]} at "
                   f"{got[best]:.4f}, {100 * (got[best] - d['f1']):+.1f} points against direct "
                   f"transfer.")
        if "tsl" in got and "ikd_r1" in got:
            gap = f"{100 * abs(got['tsl'] - got['ikd_r1']):.1f}"
            fixed = _has_ordered_export((r.get("runs") or {}).get(lang, r)["git_revision"])
            out.append(f"- {lang}: TSL single-source and iterative-KD round 1 are the same "
                       "computation (one teacher, MSE on all rows, same student budget and "
                       f"seed) through two code paths; they differ by {gap} points. "
                       + ("This run predates the fixed order of training rows (revision "
                          f"{ORDERED_EXPORT}), so the gap is the run-to-run spread of one seed "
                          "at this budget." if fixed is False else
                          ("They agree, as they should with the order of training rows fixed "
                           "at this revision." if gap == "0.0" else
                           "The order of training rows is fixed at this revision, so what is "
                           "left is thread-level nondeterminism of CPU kernels.") if fixed else
                          "Whether this run had the fixed order of training rows (revision "
                          f"{ORDERED_EXPORT}) is unknown."))
    for lang, models in (r.get("per_type") or {}).items():
        key = next(k for k in models if k != "direct")
        lost = [t for t, m in models["direct"].items()
                if m["f1"] >= 0.2 and models[key][t]["f1"] < 0.05]
        if lost:
            out.append(f"- {lang}: the best student ({ROW_NAMES[key]}) scores almost nothing on "
                       f"{', '.join(lost)} ({', '.join(str(models['direct'][t]['support']) for t in lost)} "
                       f"of {sum(m['support'] for m in models['direct'].values())} gold entities), "
                       "which the teacher finds (per-type table above).")
    dr = [m["discard_ratio"] for k, v in rows.items() if k.startswith("rikd")
          for m in v.values() if m.get("discard_ratio") is not None]
    if dr:
        span = f"{min(dr):.2f}" if f"{min(dr):.2f}" == f"{max(dr):.2f}" else \
            f"{min(dr):.2f}-{max(dr):.2f}"
        if all(abs(d - 0.5) < 0.05 for d in dr):
            out.append(f"- RIKD: the policy discards {span} of the instances per reinforced "
                       "step, about what a policy at its initial keep probability of 0.5 does: "
                       "with the paper's policy lr (0.01) and delayed rewards of the size above "
                       "it has not learned a selection in this many steps, and keeping about "
                       "half of each reinforced batch costs the student training signal.")
        else:
            out.append(f"- RIKD: the policy discards {span} of the instances per reinforced "
                       "step; its initial keep probability is 0.5, so some rounds moved away "
                       "from it.")
        by_round = {k: {m.get("discard_ratio") for m in v.values()}
                    for k, v in rows.items() if k.startswith("rikd") and len(v) > 1}
        if len(set(dr)) > 1 and by_round and all(len(d) == 1 for d in by_round.values()):
            out.append("- RIKD: in each round the discard ratio is the same to the last digit in "
                       "every language: each round's policy seed depends on the round, not the "
                       "language, and with keep probabilities this close to 0.5 the same seed "
                       "draws the same keep/drop stream over the same number of batches.")
        if len(dr) > 1 and len(set(dr)) == 1:
            out.append("- RIKD: the discard ratio is the same to the last digit in every round "
                       "and language: with keep probabilities this close to 0.5, rounds seeded "
                       f"alike draw the same keep/drop stream (each round's policy has had its "
                       f"own seed since revision {PER_ROUND_SEED}).")
    return out


if __name__ == "__main__":
    sys.exit(main())
