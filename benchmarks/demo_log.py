"""How much of the README demo's console output is the project's own (issue 17's 70% goal).

    python benchmarks/demo_log.py                  # run the README's demo, classify its log
    python benchmarks/demo_log.py --log FILE       # classify a log captured before

Runs ``python jobs/rikd.py --config configs/rikd_demo.yaml`` exactly as the README does, with
``out``/``store``/``train_teacher.out`` moved to a temporary folder (so an earlier demo's outputs
are not reused), stdout and stderr merged as a terminal shows them. Each non-blank line is the
project's own when it is one of its log lines (``HH:MM:SS LEVEL <module>: ...``, also behind
Ray's ``(RayTrainWorker pid=N)`` forwarding prefix) or one of its printed summaries
(``xner_ray.logs.is_own_line``). Reported: lines, own lines, their share, the Ray Train State-API
warnings (must be 0), and the most frequent other lines.

Writes ``<results>/demo_log_cpu.{json,md}`` and the log itself (``demo_log_cpu.txt``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _meta import footer, provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOAL = 0.70


def run_demo(tmp: Path, timeout: float) -> tuple[str, float, int]:
    argv = [sys.executable, "jobs/rikd.py", "--config", "configs/rikd_demo.yaml",
            "--set", f"out={tmp}/out", "--set", f"store={tmp}/out/store",
            "--set", f"train_teacher.out={tmp}/out/teacher-en"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    return proc.stdout, time.perf_counter() - t0, proc.returncode


def markdown(r: dict) -> str:
    s = r["log"]
    verdict = "meets" if s["share"] is not None and s["share"] >= GOAL else "does NOT meet"
    rows = [f"| {n} | `{line}` |" for line, n in s["top_other"]]
    how = (f"exit code {r['exit_code']}, {r['seconds']} s" if r.get("source_log") is None else
           f"classified from a log captured before: `{r['source_log']}`")
    return "\n".join([
        "# The demo's console: the project's own lines", "",
        f"The README demo (`python jobs/rikd.py --config configs/rikd_demo.yaml`, outputs in a "
        f"temporary folder), stdout and stderr merged; {how}.", "",
        f"- {s['lines']} non-blank lines, {s['own']} of them the project's: **share "
        f"{s['share']:.1%}**, which {verdict} the goal of {GOAL:.0%}",
        f"- without the {s['progress_lines']} progress lines (ours, but repetitive: labeling "
        f"and training count, rate and ETA): share {s['share_without_progress']:.1%}",
        f"- Ray Train State-API warnings: {s['state_api_warnings']}", "",
        "The most frequent other lines (digits shown as N):", "",
        "| count | line |", "|---|---|", *rows, "",
        "The log itself: `demo_log_cpu.txt`.", "", *footer(r)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--log", default=None, help="classify this log instead of running the demo")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args(argv)
    meta = provenance()
    from xner_ray.logs import log_share

    if args.log:
        text, seconds, rc = Path(args.log).read_text(errors="replace"), None, None
    else:
        with tempfile.TemporaryDirectory(prefix="xner-demo-log-") as tmp:
            text, seconds, rc = run_demo(Path(tmp), args.timeout)
    r = {**meta, "exit_code": rc, "seconds": round(seconds, 1) if seconds else None,
         "source_log": args.log,
         "goal": GOAL, "log": log_share(text)}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_log_cpu.txt").write_text(text)
    (out / "demo_log_cpu.json").write_text(json.dumps(r, indent=2))
    (out / "demo_log_cpu.md").write_text(markdown(r))
    print(json.dumps({k: r["log"][k] for k in ("lines", "own", "share", "progress_lines",
                                               "share_without_progress",
                                               "state_api_warnings")}))
    return 0 if rc in (0, None) else 1


if __name__ == "__main__":
    sys.exit(main())
