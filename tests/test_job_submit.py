"""`ray job submit` against a real cluster started with `ray start --head`: the RIKD demo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests._headnode import head_node, ray_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_rikd_demo_config_through_ray_job_submit(tmp_path):
    out = tmp_path / "rikd"
    with head_node() as address:
        run = subprocess.run(
            ["ray", "job", "submit", "--working-dir", str(REPO), "--",
             "python", "jobs/rikd.py", "--config", "configs/rikd_demo.yaml",
             "--set", f"out={out}", "--set", f"store={out}/store",
             "--set", f"train_teacher.out={out}/teacher-en"],
            env=ray_env(RAY_ADDRESS=address), capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "succeeded" in run.stdout + run.stderr

    from xner_ray.store import Store

    store = Store(out / "store")
    for lang in ("de", "nl"):
        assert store.complete_rounds("rikd-demo", lang) == [0, 1]
        assert store.manifest("rikd-demo", lang, 1)["meta"]["rikd"]["rl_steps"] > 0
    results = json.loads((out / "results.json").read_text())
    assert {l: len(r) for l, r in results.items()} == {"de": 2, "nl": 2}

    # the final student of a language is a plain HF folder that `xner evaluate` reads
    ev = subprocess.run(["xner", "evaluate", "--model", str(out / "de" / "round1"), "--data",
                         str(REPO / "xner_ray/resources/sample/de.dev.txt"), "--lang", "de"],
                        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-2000:]
    scores = json.loads(ev.stdout.strip().splitlines()[-1])
    assert scores["n_sentences"] == 300 and 0.0 <= scores["f1"] <= 1.0
    assert scores["f1"] == pytest.approx(results["de"][1]["target_dev"]["f1"], abs=1e-6)
