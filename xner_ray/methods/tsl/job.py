"""TSL: single- and multi-source teacher-student learning (Wu et al. 2020).

Per target language: the source teachers' distributions are combined with weights alpha_k (TSL
Eq. 6) -- uniform (Eq. 7), or from the language-identification bilinear model trained on
unlabeled source text (Eq. 8-11) -- the combined soft labels are written to the store by the
labeling pipeline, and a student initialised from the pre-trained encoder learns them with the
token-level MSE (Eq. 3-4), selected on source-language dev.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from xner_ray.methods.common import (JobConfig, TargetSpec, ensure_teacher, run_recorded,
                                     student_config, target_input, target_scores, write_json)

WEIGHTINGS = ("uniform", "similarity")


@dataclass(kw_only=True)
class TslConfig(JobConfig):
    """TSL job settings (YAML/JSON keys); one student per target in ``out/<lang>``."""

    teachers: list = field(metadata={"help": "list of {lang, model? | train?, unlabeled?}"})
    weighting: str = field(default="uniform", metadata={"help": "uniform (Eq. 7) | similarity "
                                                                "(Eq. 8-11)"})
    encoder: str = field(default="builtin:me5-small",
                         metadata={"help": "g(.) of Eq. 8: sentence encoder for similarity"})
    pooling: str = field(default="cls", metadata={"help": "sentence vector: cls (paper) | mean"})
    similarity: dict = field(default_factory=dict,
                             metadata={"help": "fit options: d (64), gamma (0.01), epochs, lr"})
    max_similarity_sentences: int = field(default=2000,
                                          metadata={"help": "sentences per language for Eq. 10-11"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from xner_ray.methods.calibrenet.pipeline import calibration_run

        calibration_run(self.calibrator or "<calibrator>", self.calibration)  # bad keys: now
        if not self.teachers:
            raise ValueError("at least one teacher is required")
        for t in self.teachers:
            if not isinstance(t, dict) or "lang" not in t or not ({"model", "train"} & set(t)):
                raise ValueError(f"a teacher needs lang and model (or train settings): {t!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.weighting == "similarity":
            missing = [t["lang"] for t in self.teachers if not t.get("unlabeled")]
            if len(self.teachers) < 2 or missing:
                raise ValueError("similarity weighting needs >= 2 teachers, each with unlabeled "
                                 f"source text (`unlabeled`); missing for {missing}")


def run_tsl(cfg: TslConfig) -> dict:
    """Run (or resume) the job; returns {lang: summary}."""

    def body(store) -> dict:
        teachers = {t["lang"]: ensure_teacher(t.get("model"), t.get("train"))
                    for t in cfg.teachers}
        return {t.lang: _run_target(cfg, store, teachers, t) for t in cfg.targets}

    return run_recorded(cfg, "tsl", body)


def _sample(spec: str, lang: str, n: int, fmt: str = "auto", seed: int = 0) -> list[list[str]]:
    """A seeded random sample of the corpus (not its head): the input of TSL Eq. 10-11."""
    from xner_ray.methods.tsl.langsim import sample_sentences

    return sample_sentences(spec, lang, n, seed=seed, fmt=fmt)


def teacher_weights_for(cfg: TslConfig, target: TargetSpec) -> tuple[dict, dict]:
    """alpha_k per teacher language for one target (Eq. 7, or Eq. 8-11)."""
    from xner_ray.methods.tsl.langsim import SentenceEncoder, similarity_weights, uniform_weights

    langs = [t["lang"] for t in cfg.teachers]
    if cfg.weighting == "uniform" or len(langs) == 1:
        return uniform_weights(langs), {"weighting": "uniform"}
    n = cfg.max_similarity_sentences
    sources = {t["lang"]: _sample(t["unlabeled"], t["lang"], n) for t in cfg.teachers}
    weights, diag = similarity_weights(SentenceEncoder(cfg.encoder, pooling=cfg.pooling), sources,
                                       _sample(target.unlabeled, target.lang, n, target.fmt),
                                       **cfg.similarity)
    return weights, {"weighting": "similarity", **diag}


def _run_target(cfg: TslConfig, store, teachers: dict, target: TargetSpec) -> dict:
    from xner_ray.labeling.pipeline import LabelConfig
    from xner_ray.methods.calibrenet.pipeline import label_calibrated
    from xner_ray.train.distill import DistillConfig, distill

    student = Path(cfg.out) / target.lang
    done = student / "target_summary.json"
    if done.exists() and store.is_complete(cfg.run_id, target.lang, 0):
        print(f"[tsl] {target.lang}: complete, reused", flush=True)
        return json.loads(done.read_text())
    t0 = time.monotonic()
    weights, diag = teacher_weights_for(cfg, target)
    langs = list(teachers)
    label_calibrated(
        LabelConfig(teachers=[teachers[l] for l in langs], weights=[weights[l] for l in langs],
                    store=cfg.store, run_id=cfg.run_id, round=0,
                    inputs=[target_input(target, cfg.gold_eval)],
                    **cfg.label), store, cfg.calibrator, cfg.calibration, cfg.calibrated_rho)
    base = dataclasses.asdict(student_config(student, cfg.student))
    distill(DistillConfig(**base, store=cfg.store, run_id=cfg.run_id, lang=target.lang, round=0,
                          dev=cfg.source_dev, calibrated=bool(cfg.calibrator)))
    summary = {"weights": weights, "weighting": diag, "student": str(student),
               "calibrator": cfg.calibrator,
               "source_dev_f1": json.loads((student / "train_summary.json").read_text())
               ["best"]["dev_f1"], "target_dev": target_scores(student, target),
               "seconds": round(time.monotonic() - t0, 1)}  # kept on reuse, like RIKD rounds
    store.update_run(cfg.run_id, round=0, metrics={target.lang: summary})
    write_json(done, summary)
    dev_f1 = (summary["target_dev"] or {}).get("f1")
    print(f"[tsl] {target.lang}: weights {weights}"
          + (f", target dev F1 {dev_f1:.4f} (report only)" if dev_f1 is not None else ""),
          flush=True)
    return summary
