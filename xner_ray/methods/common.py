"""Pieces the distillation jobs (TSL, RIKD) share: target specs, teachers, students, scores."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

from xner_ray.io import uri

logger = logging.getLogger(__name__)

# Student settings of the papers (TSL 4.1 / RIKD 4.2): AdamW lr 1e-4 for students, batch 32,
# 3 epochs, embeddings and the bottom 3 layers frozen. A config's `student:` overrides these.
STUDENT_DEFAULTS = dict(model="builtin:me5-small", lr=1e-4, batch_size=32, epochs=3,
                        freeze_embeddings=True, freeze_layers=3)


@dataclass(frozen=True)
class TargetSpec:
    """A target language: its unlabeled text, and optionally a labeled dev file used ONLY to
    report scores (never for training, selection or model choice: the zero-shot rule)."""

    lang: str
    unlabeled: str
    dev: Optional[str] = None
    fmt: str = "auto"

    @classmethod
    def parse(cls, value: Any) -> "TargetSpec":
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"a target must be a mapping with lang/unlabeled[/dev], got {value!r}")
        from xner_ray import config as config_mod

        return config_mod.build(cls, value, what="target")


def target_input(target: TargetSpec, gold: bool = False) -> dict:
    """The labeling input of ``target``'s unlabeled text; ``gold``: its tags are kept as
    ``sentences.gold_tags`` (a CoNLL file; evaluation only)."""
    return {"path": target.unlabeled, "lang": target.lang, "fmt": target.fmt, "gold": gold}


def parse_targets(values: list) -> list[TargetSpec]:
    targets = [TargetSpec.parse(v) for v in values or []]
    if not targets:
        raise ValueError("at least one target language is required")
    langs = [t.lang for t in targets]
    if len(set(langs)) != len(langs):
        raise ValueError(f"target languages repeat: {langs}")
    return targets


LABEL_KNOBS = ("batch_size", "block_rows", "max_length", "max_words", "num_actors", "threads",
               "use_gpu", "rows_per_file", "allow_empty")


def check_label_knobs(label: dict) -> None:
    """A job's `label:` block may tune the labeling pipeline, not redefine its inputs."""
    unknown = sorted(set(label or {}) - set(LABEL_KNOBS))
    if unknown:
        raise ValueError(f"unknown label keys {unknown}; valid: {sorted(LABEL_KNOBS)}")


@dataclass(kw_only=True)
class JobConfig:
    """Keys every distillation job shares (YAML/JSON keys)."""

    REMOTE_OUT: ClassVar[bool] = False  # True: ``out`` may be a URI (models published there)

    run_id: str = field(metadata={"help": "run id in the store (the resume key)"})
    store: str = field(metadata={"help": "store root"})
    out: str = field(metadata={"help": "output folder: students, results.json"})
    source_dev: str = field(metadata={"help": "SOURCE-language dev CoNLL file: model selection"})
    targets: list = field(metadata={"help": "list of {lang, unlabeled, dev?, fmt?}"})
    student: dict = field(default_factory=dict,
                          metadata={"help": "student TrainConfig keys over the papers' defaults"})
    label: dict = field(default_factory=dict,
                        metadata={"help": f"labeling knobs: {', '.join(LABEL_KNOBS)}"})
    calibrator: Optional[str] = field(default=None, metadata={
        "help": "trained CalibreNet folder (jobs/calibrenet.py): every round's pseudo-labels "
                "are calibrated before the student learns them; the round's `calibrations` "
                "table keeps both"})
    calibration: dict = field(default_factory=dict, metadata={
        "help": "calibration knobs: batch_size, block_rows, max_length, num_actors, use_gpu, "
                "threads"})
    calibrated_rho: Optional[float] = field(default=None, metadata={
        "help": "with a calibrator: the student learns only the top rho of each round by "
                "calibration score (calibrations.calib_score); needs the keep_all selector"})
    gold_eval: bool = field(default=False, metadata={
        "help": "keep the target files' tags as sentences.gold_tags to measure pseudo-label "
                "quality in SQL (sql/pseudo_label_prf.sql, sql/policy_auc.sql); evaluation "
                "only, never used for training, selection or model choice"})

    def __post_init__(self) -> None:
        self.targets = [dataclasses.replace(t, unlabeled=absolute(t.unlabeled),
                                            dev=absolute(t.dev))
                        for t in parse_targets(self.targets)]
        check_label_knobs(self.label)
        # The one place relative paths become absolute: a worker (another process, another
        # node, another working directory) must read the same path the config meant.
        self.store, self.out, self.source_dev = (absolute(self.store), absolute(self.out),
                                                 absolute(self.source_dev))
        if not self.REMOTE_OUT:
            refuse_uri_out(self.out)
        self.calibrator = absolute(self.calibrator, only_existing=True)
        if self.calibration and not self.calibrator:
            raise ValueError("calibration: knobs given without a `calibrator`")
        if self.calibrated_rho is not None:
            if not self.calibrator:
                raise ValueError("calibrated_rho needs a `calibrator`")
            if not 0.0 < self.calibrated_rho <= 1.0:
                raise ValueError(f"calibrated_rho must be in (0, 1], got {self.calibrated_rho}")
        student_config(self.out, self.student)  # validate now, not in round 2


def refuse_uri_out(out: Optional[str]) -> None:
    """A job that writes ``out`` as local files refuses a URI there (rather than writing to a
    local folder named ``s3:``)."""
    if out and uri.is_uri(out):
        raise ValueError(f"out: {out} is a URI; this job writes its outputs to a local or "
                         "shared (NFS) folder -- only the RIKD job publishes students to object "
                         "storage so far (the store can be a URI for every job)")


def absolute(path: Optional[str], *, only_existing: bool = False) -> Optional[str]:
    """A local path made absolute against the current directory; URIs (``s3://``), model
    names (``builtin:me5-small``, a hub id: ``only_existing``) and None unchanged."""
    if path is None or "://" in str(path) or str(path).startswith("builtin:"):
        return path
    p = Path(str(path)).expanduser()
    if only_existing and not p.exists():
        return str(path)
    return str(p.resolve()) if not any(c in str(path) for c in "*?[") else os.path.abspath(p)


def ensure_teacher(model: Optional[str], train: Optional[dict]) -> str:
    """The teacher's folder: ``model`` as given, or trained first from ``train`` (TeacherConfig
    keys) unless its ``out`` already holds a trained model (a rerun reuses it)."""
    from xner_ray import config as config_mod
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    if train:
        cfg = config_mod.build(TeacherConfig, train)
        if uri.exists(uri.join(cfg.out, "train_summary.json")):
            print(f"[job] teacher {cfg.out}: trained already, reused", flush=True)
            return str(cfg.out)
        return str(train_teacher(cfg))
    if not model:
        raise ValueError("give a trained teacher (`teacher:` path) or `train_teacher:` settings")
    return model


def student_config(out: Path | str, student: dict):
    """A TrainConfig for one student from the job's `student:` block over the papers' defaults."""
    from xner_ray import config as config_mod
    from xner_ray.train.loop import TrainConfig

    return config_mod.build(TrainConfig, {**STUDENT_DEFAULTS, **(student or {}), "out": str(out)})


def target_scores(model_dir: Path | str, target: TargetSpec) -> Optional[dict]:
    """Entity P/R/F1 on the target dev file, for the report only."""
    if not target.dev:
        return None
    from xner_ray.evaluate import evaluate_model

    r = evaluate_model(str(model_dir), target.dev, lang=target.lang)
    return {k: round(float(r[k]), 6) for k in ("precision", "recall", "f1")} | {
        "n_sentences": r["n_sentences"],
        "per_type": {t: round(v["f1"], 6) for t, v in sorted(r["per_type"].items())}}


def write_json(path: Path | str, data: Any) -> None:
    """A JSON file written atomically, at a local path or a URI."""
    uri.write_text(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path | str) -> Any:
    return json.loads(uri.read_text(path))


def run_recorded(cfg: JobConfig, job: str, body: Callable[[Any], dict]) -> dict:
    """Record the job's run in the store, run ``body(store)``, write ``out/results.json`` and
    mark the run succeeded -- or failed, whatever the exception (a kill included)."""
    from xner_ray.store import Store

    store = Store(cfg.store)
    store.record_run(cfg.run_id, job, dataclasses.asdict(cfg))
    try:
        results = body(store)
    except BaseException:
        store.update_run(cfg.run_id, status="failed")
        raise
    write_json(uri.join(cfg.out, "results.json"), results)
    store.update_run(cfg.run_id, status="succeeded")
    return results
