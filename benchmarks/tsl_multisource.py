"""TSL multi-source on real data (issue 16 item 5): leave-one-out, uniform against
language-similarity teacher weights (TSL Eq. 7 against Eq. 8-11).

- ``--corpus conll``: en + nl -> es and en + es -> nl (CoNLL-2003 en, CoNLL-2002 es/nl);
- ``--corpus wikiann``: four of en/de/nl/fr/pt -> the fifth (WikiANN, PER/LOC/ORG).

Per source language one teacher, trained on that language's train split with the CPU teacher
budget of ``direct_transfer.py`` (seed 42; the CoNLL English one reuses
``outputs/direct_transfer/cpu``). Per target: the target train split without its labels is the
unlabeled text; students get the fair budget of ``fair_budget.py`` (the largest source
teacher's number of optimisation steps, student seed per ``--seeds``) and are chosen on the dev
set of the first source language (English where it is a source); the target dev split scores
them only. The similarity weights read a seeded random sample of each corpus (``TslConfig.
max_similarity_sentences``), not its first lines. A single-source row per source teacher (its
direct transfer, i.e. the teacher on the target dev) is the baseline.

    python benchmarks/tsl_multisource.py --corpus conll --seeds 42
    python benchmarks/tsl_multisource.py --corpus wikiann --targets de --seeds 42

Cost on 2 CPUs: a teacher ~15-40 min (CoNLL es 8k .. WikiANN 20k sentences), a student ~25-40
min. Rows already in the results file are skipped (resume). Writes
``benchmarks/results/tsl_multisource_<corpus>_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import last_run_footer, provenance  # noqa: E402
from fair_budget import (DIRECT, TEACHER, mean_std, committed_teacher, count_sentences,  # noqa: E402
                         student_budget, teacher_steps)

REPO = Path(__file__).resolve().parents[1]
CORPORA = {
    "conll": {"en": "conll2003-en", "es": "conll2002-es", "nl": "conll2002-nl"},
    "wikiann": {l: f"wikiann-{l}" for l in ("en", "de", "nl", "fr", "pt")},
}
WEIGHTINGS = ("uniform", "similarity")


def source_teacher(corpus: str, lang: str, data: Path, out: Path,
                   direct: Path = DIRECT) -> Path:
    """The teacher of one source language (trained here once, seed 42); CoNLL English reuses
    ``direct`` (``direct_transfer.py``'s CPU teacher) when its budget and seed match."""
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    shared = committed_teacher(42, direct) if (corpus, lang) == ("conll", "en") else None
    if shared is not None:
        return shared
    dest = out / f"teacher-{lang}"
    if not (dest / "train_summary.json").exists():
        folder = data / CORPORA[corpus][lang]
        train_teacher(TeacherConfig(train=str(folder / "train.txt"), dev=str(folder / "dev.txt"),
                                    out=str(dest), model="builtin:me5-small", seed=42, **TEACHER))
    return dest


def run_target(corpus: str, target: str, weighting: str, seed: int, teachers: dict,
               data: Path, out: Path) -> dict:
    from xner_ray.methods.tsl import TslConfig, run_tsl

    folder = data / CORPORA[corpus][target]
    sources = sorted(teachers, key=lambda l: (l != "en", l))  # English first when a source
    steps = max(teacher_steps(teachers[l]) for l in sources)
    student = student_budget(steps, count_sentences(folder / "train.txt", target), seed)
    run_id = f"{corpus}-{target}-{weighting}-s{seed}"
    s = run_tsl(TslConfig(
        run_id=run_id, store=str(out / "store"), out=str(out / run_id),
        source_dev=str(data / CORPORA[corpus][sources[0]] / "dev.txt"), weighting=weighting,
        teachers=[{"lang": l, "model": str(teachers[l]),
                   "unlabeled": str(data / CORPORA[corpus][l] / "train.txt")} for l in sources],
        targets=[{"lang": target, "unlabeled": str(folder / "train.txt"), "fmt": "conll",
                  "dev": str(folder / "dev.txt")}], student=student))[target]
    return {**s["target_dev"], "source_dev_f1": s["source_dev_f1"], "weights": s["weights"],
            "selected_on": f"{sources[0]} dev", "student": student}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", choices=sorted(CORPORA), default="conll")
    p.add_argument("--targets", nargs="+", help="target languages (default: every language "
                                                "but English for conll, all five for wikiann)")
    p.add_argument("--weightings", nargs="+", choices=WEIGHTINGS, default=list(WEIGHTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "outputs" / "tsl_multisource"))
    p.add_argument("--direct-transfer", default=str(DIRECT), metavar="DIR",
                   help="direct_transfer.py's CPU teacher, reused as the CoNLL English source "
                        "when its budget and seed (42) match (else one is trained under --out)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = p.parse_args(argv)
    langs = list(CORPORA[args.corpus])
    targets = args.targets or [l for l in langs if args.corpus == "wikiann" or l != "en"]
    unknown = sorted(set(targets) - set(langs))
    if unknown:
        p.error(f"targets {unknown} are not in {args.corpus} ({langs})")
    dest = Path(args.results) / f"tsl_multisource_{args.corpus}_cpu"
    result = (json.loads(dest.with_suffix(".json").read_text())
              if dest.with_suffix(".json").exists() else
              {"benchmark": "tsl_multisource", "corpus": args.corpus, "teacher_budget": TEACHER,
               "rows": {}, "direct": {}, "runs": {}})
    if args.render:
        dest.with_suffix(".md").write_text(markdown(result))
        return 0
    meta = provenance()
    data, out = Path(args.data_dir), Path(args.out) / args.corpus
    out.mkdir(parents=True, exist_ok=True)
    from xner_ray.cluster import init_ray
    from xner_ray.evaluate import evaluate_model

    init_ray()

    def save() -> None:
        result["versions"] = meta["versions"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.with_suffix(".json").write_text(json.dumps(result, indent=2))
        dest.with_suffix(".md").write_text(markdown(result))

    for target in targets:
        teachers = {l: source_teacher(args.corpus, l, data, out, Path(args.direct_transfer))
                    for l in langs if l != target}
        dev = data / CORPORA[args.corpus][target] / "dev.txt"
        direct = result["direct"].setdefault(target, {})
        for l, t in teachers.items():  # single-source direct transfer, the baseline
            if l not in direct:
                r = evaluate_model(str(t), str(dev), lang=target)
                direct[l] = round(float(r["f1"]), 6)
                save()
        for weighting in args.weightings:
            cell = result["rows"].setdefault(target, {}).setdefault(weighting, {})
            for seed in args.seeds:
                if str(seed) in cell:
                    continue
                t0 = time.time()
                cell[str(seed)] = run_target(args.corpus, target, weighting, seed, teachers,
                                             data, out)
                result["runs"][f"{target}/{weighting}/{seed}"] = {
                    **{k: meta[k] for k in ("command", "git_revision", "date", "machine")},
                    "seconds": round(time.time() - t0, 1)}
                print(f"[bench] {target} {weighting} seed {seed}: F1 "
                      f"{cell[str(seed)]['f1']:.4f}", flush=True)
                save()
    save()
    print(f"wrote {dest}.json and .md")
    return 0


def markdown(r: dict) -> str:
    lines = [f"# TSL multi-source, leave-one-out ({r['corpus']}, cpu)", "",
             "Target dev F1 (seqeval, entity level), mean +- sample std over student seeds (n). "
             "Sources: every other language of the corpus, one teacher each (CPU teacher budget "
             f"{r['teacher_budget']}, seed 42). Students: the whole target train split without "
             "labels, the largest source teacher's number of steps, chosen on the first source "
             "language's dev set. Direct transfer: each source teacher alone on the target dev.",
             "", "| target | best single source (direct) | uniform (Eq. 7) | similarity (Eq. 8-11) "
             "| similarity weights (first seed) |", "|---|---|---|---|---|"]
    for target, by_w in sorted(r["rows"].items()):
        direct = r["direct"].get(target, {})
        best = max(direct, key=direct.get) if direct else None
        cells = [mean_std([v["f1"] for v in by_w.get(w, {}).values()]) for w in WEIGHTINGS]
        sim = next(iter(by_w.get("similarity", {}).values()), {}).get("weights")
        lines.append(f"| {target} | " + (f"{best} {direct[best]:.4f}" if best else "-") + " | "
                     + " | ".join(cells) + " | "
                     + (", ".join(f"{l} {w:.3f}" for l, w in sim.items()) if sim else "-") + " |")
    lines += ["", "Direct transfer of every source teacher: "
              + "; ".join(f"{t}: " + ", ".join(f"{l} {f:.4f}" for l, f in d.items())
                          for t, d in sorted(r["direct"].items())), ""]
    return "\n".join(lines + last_run_footer(r)) + "\n"


if __name__ == "__main__":
    sys.exit(main())
