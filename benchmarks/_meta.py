"""Provenance written next to every benchmark figure: command, revision, machine, versions."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict:
    versions = {}
    for pkg in ("torch", "ray", "transformers", "tokenizers", "pyarrow", "duckdb", "seqeval"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    # a benchmark rewrites its own results files as it goes (and a resumed one finds them
    # changed): those are its outputs, not a difference in the code that made them
    # "XY path" lines; split, not slice: _git strips the output, and with it the first line's
    # leading blank when X is empty (" M path")
    changed = [path for path in (line.split(maxsplit=1)[1] for line in
                                 _git("status", "--porcelain", "--untracked-files=no").splitlines()
                                 if line.strip())
               if not path.startswith("benchmarks/results/")]
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "git_revision": _git("rev-parse", "HEAD") + (" (dirty)" if changed else ""),
        "changed_files": changed,  # what "dirty" means: tracked files differing from HEAD
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": gpu,
                    "python": platform.python_version()},
        "versions": versions,
    }


def footer(r: dict) -> list[str]:
    """The provenance lines that end every results .md (from provenance()'s keys in ``r``)."""
    return [f"Command: `{r['command']}`  ", f"Revision: {r['git_revision']}  ",
            f"Machine: {r['machine']}  ", f"Versions: {r['versions']}  ", f"Date: {r['date']}", ""]


def last_run_footer(r: dict) -> list[str]:
    """The footer of a results file whose rows come from several runs (``r["runs"]``: one
    provenance per row, in the order they ran): the last one's, so named."""
    runs = list(r.get("runs", {}).values())
    if not runs:
        return []
    return ["The last row run:", "", *footer({**runs[-1], "versions": r.get("versions", {})})]


def per_type_f1(r: dict) -> dict:
    """{type: {f1, support}} from an ``evaluate_model`` / ``score_tags`` result."""
    return {t: {"f1": round(v["f1"], 6), "support": v["support"]}
            for t, v in sorted(r["per_type"].items())}


def check_f1(what: str, got: float, table: float) -> None:
    """A model evaluated again must repeat its table F1, or the breakdown is not of it."""
    if abs(got - table) > 1e-4:
        raise RuntimeError(f"{what} scores F1 {got:.6f}, but the table has {table:.6f}: it is "
                           "not the measured model (was --out changed, or the run redone?)")
