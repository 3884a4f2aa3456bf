"""AdvPicker (Chen et al. 2021): adversarial teachers, discriminator-picked pseudo-labels, KD.

1. K TLADV teachers, one per seed (AdvPicker 3.1, Algorithm 1; ``train.adversarial``), trained
   on the labeled source text and the unlabeled text of all targets together -- or given.
2. Each target's unlabeled text streams through the labeling pipeline with the K teachers as a
   seed ensemble: per sentence the soft labels of the teacher with the highest summed label
   confidence are kept (4.1), every teacher's discriminator gives l_score (Eq. 5-6), and the
   ``lang_score`` selector keeps exactly the top rho (0.8) of the sentences, ranked by the kept
   seed's l_score (``combine: chosen``, the paper's rule: AdvPicker 3.2, Table 5's counts are
   floor(0.8 n)); ``combine: union`` (any seed's own top rho) is an option that keeps more.
   ``lang_score``/``selected`` land in the store; the summary says what share was kept.
3. A student per target, initialised from the pre-trained encoder, learns the selected soft
   labels with the token-level MSE (Eq. 8, the existing distillation) and is selected on
   source dev; predictions are Viterbi-decoded (BIO-valid).

Resumable: trained teachers are reused, a committed labeling round is skipped, a target whose
student is done is reused. Target dev files are scored for the report only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from xner_ray.methods.common import (JobConfig, TargetSpec, run_recorded, student_config,
                                     target_input, target_scores, write_json)

COMBINE = ("chosen", "union")
JOB_SET_KEYS = ("seed", "unlabeled")  # the job fills these in `train_tladv`


@dataclass(kw_only=True)
class AdvPickerConfig(JobConfig):
    """AdvPicker job settings (YAML/JSON keys); one student per target in ``out/<lang>``."""

    teachers: Optional[list] = field(default=None, metadata={
        "help": "trained TLADV teacher folders (with discriminator.safetensors), one per seed; "
                "instead of train_tladv"})
    train_tladv: Optional[dict] = field(default=None, metadata={
        "help": "TladvConfig keys (train, dev, model, lr_encoder, ...): trained once per seed "
                "into <out>/seed<seed> (`out`: default <job out>/teachers); the targets' "
                "unlabeled text is the adversarial target data"})
    seeds: list = field(default_factory=lambda: [320, 550, 631, 691, 985], metadata={
        "help": "one TLADV teacher per seed (paper: 5 seeds)"})
    rho: float = field(default=0.8, metadata={"help": "share of target sentences kept by "
                                                      "l_score (AdvPicker 3.2, paper 0.8)"})
    combine: str = field(default="chosen", metadata={
        "help": "chosen (paper, AdvPicker 3.2/4.1): exactly floor(rho * n) sentences, ranked "
                "by the l_score of the seed whose soft labels are kept | union: a sentence is "
                "kept when any seed's discriminator ranks it in its own top rho (keeps more "
                "than rho)"})
    report_ensemble: bool = field(default=True, metadata={
        "help": "also score the teacher ensemble without KD on target dev (report only)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from xner_ray.methods.calibrenet.pipeline import calibration_run

        calibration_run(self.calibrator or "<calibrator>", self.calibration)  # bad keys: now
        if self.calibrated_rho is not None:
            raise ValueError("calibrated_rho: AdvPicker selects by l_score already; a second "
                             "whole-set selection would compete with it")
        if bool(self.teachers) == bool(self.train_tladv):
            raise ValueError("give either `teachers` (trained TLADV folders) or `train_tladv`")
        if self.train_tladv is not None:
            check_train_tladv(self)
        if isinstance(self.teachers, str):
            self.teachers = [self.teachers]
        if not 0.0 < self.rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")


def check_train_tladv(cfg) -> None:
    """``train_tladv`` and ``seeds`` of a job config, checked before any work."""
    if not isinstance(cfg.train_tladv, dict):
        raise ValueError("train_tladv must be a mapping of TladvConfig keys")
    fixed = sorted(set(cfg.train_tladv) & set(JOB_SET_KEYS))
    if fixed:
        raise ValueError(f"train_tladv must not set {fixed}: the job sets them (seeds from "
                         "`seeds`, unlabeled text from `targets`)")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or not all(
            isinstance(s, int) for s in cfg.seeds):
        raise ValueError(f"seeds must be distinct integers, got {cfg.seeds!r}")
    tladv_config(cfg, cfg.seeds[0])  # validate the TLADV keys now


def tladv_config(cfg, seed: int):
    """The TladvConfig of one seed's teacher (``cfg``: a job config with ``train_tladv``,
    ``out``, ``source_dev`` and ``targets``: AdvPicker's, or the combined job's)."""
    from xner_ray import config as config_mod
    from xner_ray.methods.advpicker.tladv import TladvConfig

    values = dict(cfg.train_tladv or {})
    base = Path(values.pop("out", None) or Path(cfg.out) / "teachers")
    values.setdefault("dev", cfg.source_dev)
    values.update(out=str(base / f"seed{seed}"), seed=seed,
                  unlabeled=[{"path": t.unlabeled, "lang": t.lang, "fmt": t.fmt}
                             for t in cfg.targets])
    return config_mod.build(TladvConfig, values)


def ensure_tladv_teachers(cfg, given: Optional[list]) -> list[str]:
    """The K teacher folders: ``given`` ones (checked), or trained now from ``cfg``'s
    ``train_tladv`` and ``seeds`` (see :func:`tladv_config`) -- a seed whose folder already
    holds a finished teacher (train_summary.json + discriminator) is reused."""
    from xner_ray.methods.advpicker.tladv import has_discriminator, train_tladv

    if given:
        missing = [t for t in given if not has_discriminator(t)]
        if missing:
            raise ValueError(f"TLADV teachers without a language discriminator: {missing} "
                             "(train them with `train_tladv`)")
        return [str(t) for t in given]
    out = []
    for seed in cfg.seeds:
        tcfg = tladv_config(cfg, seed)
        folder = Path(tcfg.out)
        if (folder / "train_summary.json").exists() and has_discriminator(folder):
            print(f"[advpicker] TLADV teacher seed {seed}: trained already, reused", flush=True)
        else:
            train_tladv(tcfg)
        out.append(str(folder))
    return out


def run_advpicker(cfg: AdvPickerConfig) -> dict:
    """Run (or resume) the job; returns {lang: summary}."""

    def body(store) -> dict:
        teachers = ensure_tladv_teachers(cfg, cfg.teachers)
        label_targets(cfg, store, teachers)
        return {t.lang: _distill_target(cfg, store, teachers, t) for t in cfg.targets}

    return run_recorded(cfg, "advpicker", body)


def label_config(cfg: AdvPickerConfig, teachers: list[str], targets: Sequence[TargetSpec]):
    from xner_ray.labeling.pipeline import LabelConfig

    return LabelConfig(
        teachers=teachers, lang_scorers=teachers, combine="best_confidence",
        selector={"name": "lang_score", "rho": cfg.rho, "combine": cfg.combine},
        store=cfg.store, run_id=cfg.run_id, round=0,
        inputs=[target_input(t, cfg.gold_eval) for t in targets], **cfg.label)


def label_targets(cfg: AdvPickerConfig, store, teachers: list[str]) -> None:
    """All targets in one Ray Data run (languages committed already are skipped)."""
    from xner_ray.methods.calibrenet.pipeline import label_calibrated

    todo = [t for t in cfg.targets if not store.is_complete(cfg.run_id, t.lang, 0)]
    if todo:
        label_calibrated(label_config(cfg, teachers, todo), store, cfg.calibrator,
                         cfg.calibration)  # (calibrated_rho: refused, AdvPicker selects)


def _distill_target(cfg: AdvPickerConfig, store, teachers: list[str], target: TargetSpec) -> dict:
    from xner_ray.train.distill import DistillConfig, distill

    student = Path(cfg.out) / target.lang
    done = student / "target_summary.json"
    if done.exists():
        print(f"[advpicker] {target.lang}: complete, reused", flush=True)
        return json.loads(done.read_text())
    counts = store.manifest(cfg.run_id, target.lang, 0)["meta"]["counts"]
    base = dataclasses.asdict(student_config(student, cfg.student))
    distill(DistillConfig(**base, store=cfg.store, run_id=cfg.run_id, lang=target.lang, round=0,
                          dev=cfg.source_dev, selected_only=True,
                          calibrated=bool(cfg.calibrator)))
    summary = {"teachers": teachers, "rho": cfg.rho, "combine": cfg.combine,
               "calibrator": cfg.calibrator, "calibrated": counts.get("calibrated"),
               "sentences": counts["sentences"], "selected": counts["selected"],
               "kept_share": kept_share(counts),
               "student": str(student),
               "source_dev_f1": json.loads((student / "train_summary.json").read_text())
               ["best"]["dev_f1"],
               "target_dev": target_scores(student, target),
               "target_dev_ensemble": (ensemble_scores(teachers, target)
                                       if cfg.report_ensemble else None)}
    store.update_run(cfg.run_id, round=0, metrics={target.lang: summary})
    write_json(done, summary)
    dev_f1 = (summary["target_dev"] or {}).get("f1")
    print(f"[advpicker] {target.lang}: {counts['selected']}/{counts['sentences']} selected "
          f"({summary['kept_share']:.1%} kept, rho {cfg.rho}, {cfg.combine})"
          + (f", target dev F1 {dev_f1:.4f} (report only)" if dev_f1 is not None else ""),
          flush=True)
    return summary


def kept_share(counts: dict) -> float:
    """selected / sentences of a labeling round (0 for an empty round), rounded to 4 places."""
    return round(counts["selected"] / counts["sentences"], 4) if counts["sentences"] else 0.0


def ensemble_predict(teachers: Sequence[str], words: Sequence[Sequence[str]], *,
                     batch_size: int = 32, device: Optional[str] = None) -> list[list[str]]:
    """"AdvPicker w/o KD" (Table 6): per sentence the soft labels of the most confident seed
    (4.1), Viterbi-decoded."""
    import numpy as np
    import torch

    from xner_ray.labels import viterbi_decode
    from xner_ray.models.classifier import (load_token_classifier, load_tokenizer,
                                            predict_log_probs)
    from xner_ray.scores import most_confident

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    per_model, labels = [], None
    for t in teachers:
        model = load_token_classifier(t).to(device)
        got = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if labels is not None and got != labels:
            raise ValueError(f"teacher {t} has labels {got}, expected {labels}")
        labels = got
        per_model.append(predict_log_probs(model, load_tokenizer(t), words,
                                           batch_size=batch_size, device=device))
        del model
    chosen = most_confident([[np.exp(lp) for lp in m] for m in per_model])
    return [viterbi_decode(per_model[k][i], labels) for i, k in enumerate(chosen)]


def ensemble_scores(teachers: Sequence[str], target: TargetSpec) -> Optional[dict]:
    """Entity P/R/F1 of the ensemble without KD on the target dev file (report only)."""
    if not target.dev:
        return None
    from xner_ray.evaluate import score_tags
    from xner_ray.io import read_conll

    sents = list(read_conll(target.dev, lang=target.lang))
    r = score_tags([s.tags for s in sents], ensemble_predict(teachers, [s.tokens for s in sents]))
    return {k: round(float(r[k]), 6) for k in ("precision", "recall", "f1")} | {
        "n_sentences": r["n_sentences"]}
