"""The demo on the bundled sample: a teacher trained with Ray Train on English WikiANN with the
embedded model, then scored on English, German and Dutch dev slices (zero-shot transfer).

Sized to finish in a few minutes on 2 CPUs: the model is cut to its bottom 4 layers and trained
for 1 epoch with frozen embeddings. Its scores only show that the pipeline works.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)


def sample_path(name: str = "") -> Path:
    """Path of a bundled sample file (or the sample folder)."""
    return Path(str(resources.files("xner_ray") / "resources" / "sample")) / name


def run_demo(out: str, *, address: Optional[str] = None) -> dict:
    from xner_ray.cluster import init_ray
    from xner_ray.evaluate import evaluate_model
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    init_ray(address)
    cfg = TeacherConfig(train=str(sample_path("en.train.txt")), dev=str(sample_path("en.dev.txt")),
                        out=str(Path(out) / "teacher"), model="builtin:me5-small", layers=4,
                        epochs=1, batch_size=16, lr=1e-4, freeze_embeddings=True)
    teacher = train_teacher(cfg)
    scores = {}
    for lang in ("en", "de", "nl"):
        r = evaluate_model(str(teacher), str(sample_path(f"{lang}.dev.txt")), lang=lang)
        scores[lang] = {k: round(r[k], 4) for k in ("precision", "recall", "f1")}
        logger.info("%s dev: P %.4f R %.4f F1 %.4f (%d sentences)", lang, r["precision"],
                    r["recall"], r["f1"], r["n_sentences"])
    (Path(out) / "demo_scores.json").write_text(json.dumps(scores, indent=2))
    print(json.dumps({"teacher": str(teacher), "scores": scores}))
    return scores
