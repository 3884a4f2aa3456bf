"""What a fresh labeling worker spends before its first batch, and what a warm one spends.

Each repetition starts a new Python process (as Ray starts a new worker) that times, in
order: ``import torch``, ``import transformers``, building the CPU teacher chain's
``SubwordStage`` (the tokenizer) and ``TeacherStage`` (the model; its first load also imports
transformers' model modules), then building both stages again in the same process -- what a
warm worker pays for a new run (``engine._warm_call``). CPU seconds (``process_time``) and
wall seconds, per step. The model is ``labeling_throughput.py``'s (me5-small, bottom 4 layers,
seeded random head), built once under ``--work``.

    python benchmarks/worker_startup.py --reps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import footer, provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = ("import torch", "import transformers", "SubwordStage (tokenizer)",
         "TeacherStage (model)", "warm rebuild: both stages again")

CHILD = r"""
import json, sys, time
model = sys.argv[1]
out = []
def step(name, fn):
    c, w = time.process_time(), time.perf_counter()
    fn()
    out.append({"step": name, "cpu_s": time.process_time() - c,
                "wall_s": time.perf_counter() - w})
step("import torch", lambda: __import__("torch"))
step("import transformers", lambda: __import__("transformers"))
from xner_ray.labeling.stages import SubwordStage, TeacherStage
step("SubwordStage (tokenizer)", lambda: SubwordStage(model, 512))
step("TeacherStage (model)", lambda: TeacherStage([model], threads=1))
step("warm rebuild: both stages again",
     lambda: (SubwordStage(model, 512), TeacherStage([model], threads=1)))
print(json.dumps(out))
"""


def one_process(model: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(model)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=3, help="fresh processes, one after another")
    p.add_argument("--model", default="builtin:me5-small")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--work", default=str(REPO / "outputs" / "bench_labeling"),
                   help="where the built model is cached (shared with labeling_throughput.py)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error("--reps must be >= 1")
    meta = provenance()
    from labeling_throughput import prepare_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = prepare_model(args.model, args.layers, 0, work)
    t0 = time.perf_counter()
    runs = [one_process(model) for _ in range(args.reps)]
    steps = {}
    for name in STEPS:
        vals = [next(s for s in run if s["step"] == name) for run in runs]
        steps[name] = {k: round(statistics.median(v[k] for v in vals), 3)
                       for k in ("cpu_s", "wall_s")}
    cold = [s for s in STEPS if not s.startswith("warm")]
    result = {"benchmark": "worker_startup", "model": args.model, "layers": args.layers,
              "reps": args.reps, "steps": steps,
              "cold_cpu_s": round(sum(steps[s]["cpu_s"] for s in cold), 3),
              "warm_cpu_s": steps[STEPS[-1]]["cpu_s"], "runs": runs,
              "measure_seconds": round(time.perf_counter() - t0, 1), **meta}
    out = Path(args.results) / "worker_startup_cpu"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict) -> str:
    lines = ["# Labeling worker start-up (cpu)", "",
             f"A fresh Python process per repetition ({r['reps']}, medians), model "
             f"`{r['model']}` (bottom {r['layers']} layers, seeded random head), 1 torch "
             "thread. The Ray worker's own start (the process, `import ray`) comes on top and "
             "is not timed here. The warm rebuild is what a warm worker pays at a new run "
             "(`xner_ray/engine.py`'s warm workers).", "",
             "| step | CPU s | wall s |", "|---|---|---|"]
    for name, v in r["steps"].items():
        lines.append(f"| {name} | {v['cpu_s']} | {v['wall_s']} |")
    lines += ["", f"Cold (the first four steps): {r['cold_cpu_s']} CPU s; warm rebuild: "
                  f"{r['warm_cpu_s']} CPU s.", "", *footer(r)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
