"""Torch threads of a training worker on a small CPU cluster (``TrainConfig.threads``).

On 2 CPUs the trainer's one worker asks for 1 CPU and runs 1 torch thread (its logical CPUs);
the other CPU is kept for Ray Data's ingest and the driver, which need little of it while a
model trains. This measures seconds per optimisation step of the fair-budget teacher
(``direct_transfer.py``'s CPU budget: me5-small cut to 6 layers, embeddings frozen, batch 16,
128 sub-words) through the real Ray Train loop, for each ``--threads`` value, interleaved over
``--reps`` repetitions in one process and one cluster. The figure is the training epoch's own
time (``epoch_seconds`` of the summary: steps and their data ingest, no start-up, no dev
scoring) over its steps; whole-run wall time is given beside it.

    python benchmarks/train_threads.py --steps 150 --threads 1 2 --reps 2
    python benchmarks/train_threads.py --shape student --corpus conll2002-es \
        --name train_threads_cpu_student_es

``--shape student``: the fair-budget students' shape instead (``fair_budget.STUDENT``: also
the bottom 3 layers frozen, lr 3e-4), trained here on gold tags (the same forward and backward
as distillation's; only the loss differs). Writes ``benchmarks/results/<--name>.{json,md}``
(default ``train_threads_cpu``). Each run's model folder (~430 MB) is deleted once read.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import footer, provenance  # noqa: E402
from direct_transfer import BUDGETS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_once(threads: int, budget: dict, corpus: Path, work: Path, seed: int, dev_limit: int,
             model: str) -> dict:
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    out, steps = work / f"t{threads}", budget["max_steps"]
    t0 = time.perf_counter()
    train_teacher(TeacherConfig(train=str(corpus / "train.txt"),
                                dev=str(corpus / "dev.txt"), out=str(out),
                                model=model, seed=seed, dev_limit=dev_limit, threads=threads,
                                **budget))
    wall = time.perf_counter() - t0
    summary = json.loads((out / "train_summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    best = summary["best"]
    if best["step"] != steps:
        raise RuntimeError(f"the run stopped at step {best['step']}, not {steps}")
    return {"threads": threads, "threads_in_worker": best.get("threads"), "steps": steps,
            "epoch_seconds": best["epoch_seconds"],
            "s_per_step": round(best["epoch_seconds"] / steps, 4), "wall_s": round(wall, 1)}


def summarize(runs: list[dict], threads: list[int]) -> list[dict]:
    base = statistics.median(r["s_per_step"] for r in runs if r["threads"] == threads[0])
    rows = []
    for t in threads:
        mine = [r for r in runs if r["threads"] == t]
        per = statistics.median(r["s_per_step"] for r in mine)
        rows.append({"threads": t, "reps": len(mine), "s_per_step_median": round(per, 4),
                     "s_per_step_all": [r["s_per_step"] for r in mine],
                     "wall_s_median": round(statistics.median(r["wall_s"] for r in mine), 1),
                     "speedup": round(base / per, 3)})
    return rows


def markdown(r: dict) -> str:
    lines = ["# Training worker threads (cpu)", "",
             f"Fair-budget {r.get('shape', 'teacher')} shape of "
             f"`{r['model']}` on {r.get('corpus', 'conll2003-en')} train: {r['budget']}; "
             f"{r['steps']} steps of the real Ray Train loop per run; cluster "
             f"{r['cluster']}; the worker's CPU request as derived from the cluster "
             f"({r['workers']}), only its torch threads set. Runs interleaved, "
             f"{r['reps']} repetition(s); measuring took {r['seconds']} s.", "",
             "| torch threads | s/step (median) | s/step (each run) | whole run, s (median) | "
             f"speed-up over {r['rows'][0]['threads']} |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['threads']} | {row['s_per_step_median']:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in row['s_per_step_all'])} | "
                     f"{row['wall_s_median']} | {row['speedup']:.2f}x |")
    lines += ["", "s/step: the epoch's own time (steps and their data ingest; no start-up, no "
              "dev scoring) over its steps. Whole run: `train_teacher` from call to return "
              "(cluster start-up excluded). Threads above the worker's logical CPUs share "
              "cores with Ray's other work: read it as this machine's figure.", ""]
    return "\n".join(lines + footer(r))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dev-limit", type=int, default=200)
    p.add_argument("--model", default="builtin:me5-small")
    p.add_argument("--shape", choices=["teacher", "student"], default="teacher")
    p.add_argument("--layers", type=int, default=BUDGETS["cpu"]["layers"],
                   help="bottom encoder layers kept (the CPU budget's 6; tests use a tiny model)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--corpus", default="conll2003-en",
                   help="folder under --data-dir with train.txt and dev.txt (gold tags); "
                        "conll2002-es: the students' sentence lengths (twice CoNLL-2003's)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--name", default="train_threads_cpu")
    args = p.parse_args(argv)
    if args.steps < 1 or args.reps < 1 or min(args.threads) < 1:
        p.error("--steps, --reps and every --threads must be >= 1")
    meta = provenance()
    from xner_ray.cluster import cluster_cpus_gpus, derive_workers, init_ray

    init_ray()
    shape = BUDGETS["cpu"]
    if args.shape == "student":
        from fair_budget import STUDENT

        shape = {**shape, **{k: v for k, v in STUDENT.items() if k != "dev_limit"}}
    budget = {**shape, "max_steps": args.steps, "layers": args.layers}
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="xner-train-threads-") as tmp:
        for rep in range(args.reps):
            for t in args.threads:
                run = run_once(t, budget, Path(args.data_dir) / args.corpus, Path(tmp), args.seed,
                               args.dev_limit, args.model)
                runs.append({**run, "rep": rep})
                print(f"[bench] rep {rep} threads {t}: {run['s_per_step']:.3f} s/step "
                      f"(worker had {run['threads_in_worker']}), {run['wall_s']} s", flush=True)
    res = derive_workers()
    result = {**meta, "benchmark": "train_threads", "steps": args.steps, "reps": args.reps,
              "model": args.model, "shape": args.shape, "corpus": args.corpus, "budget": budget,
              "cluster": dict(zip(("CPU", "GPU"), cluster_cpus_gpus())),
              "workers": {"num_workers": res.num_workers, "cpus_per_worker": res.cpus_per_worker,
                          "derived_threads": res.torch_threads},
              "seconds": round(time.perf_counter() - t0, 1), "runs": runs,
              "rows": summarize(runs, args.threads)}
    dest = Path(args.results) / args.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_suffix(".json").write_text(json.dumps(result, indent=2))
    dest.with_suffix(".md").write_text(markdown(result))
    print(json.dumps({"rows": result["rows"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
