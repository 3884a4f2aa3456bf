"""benchmarks/gpu.py in its CPU smoke mode: runs, exits 0, one JSON object on its last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_cpu_tiny_mode(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu.py"), "--device", "cpu",
                           "--tiny", "--results", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**__import__("os").environ,
                                                      "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["device"] == "cpu" and last["tiny"] is True
    row = last["rows"][0]
    for key in ("stage_tokens_per_s", "plain_tokens_per_s", "hf_tokens_per_s",
                "distill_tokens_per_s"):
        assert row[key] > 0
    assert 0 < row["stage_mfu"] < 1 and 0 < row["distill_mfu"] < 1
    saved = json.loads((tmp_path / "gpu_cpu_tiny.json").read_text())
    assert saved["rows"][0]["model"] == "tiny-bert" and (tmp_path / "gpu_cpu_tiny.md").is_file()
