"""The CalibreNet job: a calibration module trained over a base tagger, then applied to target
text as a stage of the labeling pipeline.

    (a) base tagger: ``teacher`` (any token classifier folder: direct transfer, a TSL / RIKD /
        AdvPicker student, a projection-trained model), or trained first (``train_teacher``)
    (b) p(op, n_op) from the base tagger's own boundary errors on English dev (Sec. 3.2.2;
        ``op_dist: table1`` = the paper's Table 1 shares)
    (c) optional PBR pre-training (Sec. 3.2): continual stages over the labeled corpora given
    (d) fine-tuning on English train: base predictions + garbled gold copies (Sec. 3.1.2, 4),
        the checkpoint chosen on English dev only (the zero-shot rule)
    (e) per target language, one round (round 0): the base tagger labels the target text on
        Ray Data, the calibration stage re-reads every predicted span of the round's files, and
        the ``calibrations`` table is committed WITH the round (same manifest)
    (f) results.json: English dev F1 before/after, target dev F1 before/after (report only)

Where it runs: (a) on Ray Train (``ensure_teacher``); (b)-(d) in the job's own process
(``train_calibrenet`` is a plain torch loop: on a cluster, submit the job to a node with a GPU,
or give a trained ``calibrator``); (e) on the Ray cluster through ``xner_ray.engine``. A rerun
reuses the trained calibrator (its folder holds ``train_summary.json``) and skips committed
rounds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from xner_ray.methods.common import (TargetSpec, check_label_knobs, ensure_teacher,
                                     parse_targets, run_recorded, target_input, write_json)

logger = logging.getLogger(__name__)
OP_DISTS = ("estimate", "table1")


def _f(default, help_: str):
    return field(default=default, metadata={"help": help_})


def _req(help_: str):
    return field(metadata={"help": help_})


def _new(factory, help_: str):
    return field(default_factory=factory, metadata={"help": help_})


@dataclass
class PbrSpec:
    """PBR pre-training (CalibreNet Sec. 3.2) over labeled corpora: their entity spans are the
    anchors (there is no Wikipedia here; WikiANN sentences are independent, so its "passages"
    are not documents)."""

    corpora: list = _new(list, "list of {path, lang}: labeled CoNLL files, one stage language each")
    order: Optional[list] = _f(None, "stage order of the languages (default: as in corpora)")
    strategy: str = _f("continual", "continual | sequential | mixed (Sec. 3.2.3, Table 7)")
    replay: float = _f(0.2, "continual: share of each earlier stage replayed (not given; ours)")
    max_sentences: Optional[int] = _f(None, "cap on sentences read per corpus (not the paper)")
    passages: dict = _new(dict, "PassageRules keys: min_words 50, max_words 250, "
                        "max_anchor_words 8, min_anchors 2 (Sec. 3.2.1)")
    train: dict = _new(dict, "CalibreNetConfig keys over pbr_config (Sec. 4.3: wd 0.005, max "
                     "length 384, 3 epochs a stage, MLM on)")
    seed: int = _f(0, "passage cuts, garbles and stage sampling")

    def __post_init__(self) -> None:
        from xner_ray.methods.calibrenet.pbr import STRATEGIES, PassageRules

        if not self.corpora or not all(isinstance(c, dict) and {"path", "lang"} <= set(c)
                                       for c in self.corpora):
            raise ValueError(f"pretrain.corpora: a list of {{path, lang}}, got {self.corpora!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"pretrain.strategy {self.strategy!r}; valid: {STRATEGIES}")
        langs = list(dict.fromkeys(c["lang"] for c in self.corpora))
        self.order = list(self.order or langs)
        if sorted(self.order) != sorted(langs):
            raise ValueError(f"pretrain.order {self.order} must list the corpora's languages "
                             f"{langs} once each")
        PassageRules(**self.passages)
        _check_train_keys(self.train, "pretrain.train")


def _check_train_keys(values: dict, where: str) -> None:
    from xner_ray.methods.calibrenet.train import CalibreNetConfig

    valid = {f.name for f in dataclasses.fields(CalibreNetConfig)} - {"out"}
    unknown = sorted(set(values or {}) - valid)
    if unknown:
        raise ValueError(f"unknown {where} keys {unknown}; valid: {sorted(valid)}")


@dataclass(kw_only=True)
class CalibrenetConfig:
    """CalibreNet job settings (YAML/JSON keys). The calibrator lands in ``out/calibrenet``
    (PBR stages in ``out/pbr``); ``finetune``/``pretrain.train`` take
    :class:`~xner_ray.methods.calibrenet.train.CalibreNetConfig` keys."""

    run_id: str = _req("run id in the store (the resume key)")
    store: str = _req("store root")
    out: str = _req("output folder: calibrator, results.json")
    source_train: str = _req("SOURCE-language train CoNLL file: fine-tuning data (Sec. 4)")
    source_dev: str = _req("SOURCE-language dev CoNLL file: p(op, n_op) and model selection")
    targets: list = _req("list of {lang, unlabeled, dev?, fmt?}; dev: report only")
    teacher: Optional[str] = _f(None, "the base tagger: any token classifier folder")
    train_teacher: Optional[dict] = _f(None, "TeacherConfig keys: train the base tagger first")
    calibrator: Optional[str] = _f(None, "a trained CalibreNet folder: skip steps (b)-(d)")
    op_dist: str = _f("estimate", "p(op, n_op): estimate (the base tagger's boundary errors "
                      "on source_dev, Sec. 3.2.2) | table1 (the paper's Table 1 shares)")
    max_n: int = _f(4, "n_op is clipped to this (garble.MAX_N)")
    garble_copies: int = _f(1, "garbled copies of each gold span in fine-tuning (Sec. 3.1.2; "
                            "the paper does not give the number)")
    pretrain: Optional[dict] = _f(None, "PBR pre-training (PbrSpec keys); none: skip (c)")
    finetune: dict = _new(dict, "CalibreNetConfig keys over the paper's fine-tuning defaults "
                        "(Sec. 4.3: AdamW 3e-5, batch 64, 4 epochs, wd 0.0075, length 192)")
    calibration: dict = _new(dict, "calibration stage knobs (CalibrationRun keys but calibrator)")
    label: dict = _new(dict, "labeling knobs (batch_size, block_rows, num_actors, ...)")
    gold_eval: bool = _f(False, "keep the target files' tags as sentences.gold_tags to measure "
                         "the calibration in SQL (evaluation only, never training)")
    seed: int = _f(0, "garbling seed")

    def __post_init__(self) -> None:
        try:
            self._check()
        except ValueError as exc:  # the command line reports a bad config in one line, exit 2
            from xner_ray import config

            error = getattr(config, "ConfigError", ValueError)
            if isinstance(exc, error):
                raise
            raise error(str(exc)) from exc

    def _check(self) -> None:
        from xner_ray.methods.common import refuse_uri_out

        refuse_uri_out(self.out)
        self.targets = parse_targets(self.targets)
        check_label_knobs(self.label)
        if not self.teacher and not self.train_teacher:
            raise ValueError("give `teacher` (a trained base tagger) or `train_teacher`")
        if self.op_dist not in OP_DISTS:
            raise ValueError(f"op_dist {self.op_dist!r}; valid: {OP_DISTS}")
        if self.max_n < 1 or self.garble_copies < 0:
            raise ValueError("max_n >= 1 and garble_copies >= 0 are required")
        _check_train_keys(self.finetune, "finetune")
        if self.pretrain is not None:
            valid = {f.name for f in dataclasses.fields(PbrSpec)}
            unknown = sorted(set(self.pretrain) - valid)
            if unknown:
                raise ValueError(f"unknown pretrain keys {unknown}; valid: {sorted(valid)}")
            PbrSpec(**self.pretrain)
        self.calibration_run()  # bad knobs fail now, not after training

    def calibration_run(self, calibrator: str = "<trained>"):
        from xner_ray.methods.calibrenet.pipeline import CalibrationRun

        valid = {f.name for f in dataclasses.fields(CalibrationRun)} - {"calibrator"}
        unknown = sorted(set(self.calibration) - valid)
        if unknown:
            raise ValueError(f"unknown calibration keys {unknown}; valid: {sorted(valid)}")
        return CalibrationRun(calibrator=calibrator, **self.calibration)

    @property
    def calib_dir(self) -> Path:
        return Path(self.out) / "calibrenet"


def run_calibrenet(cfg: CalibrenetConfig) -> dict:
    """Run (or resume) the job; returns (and writes to ``out/results.json``) its summary."""

    def body(store) -> dict:
        t0 = time.monotonic()
        teacher = ensure_teacher(cfg.teacher, cfg.train_teacher)
        calibrator, training = build_calibrator(cfg, teacher)
        langs = label_and_calibrate(cfg, store, teacher, calibrator)
        return {"teacher": teacher, "calibrator": calibrator, "training": training,
                "targets": {t.lang: {**langs.get(t.lang, {}),
                                     "target_dev": dev_before_after(teacher, calibrator, t)}
                            for t in cfg.targets},
                "seconds": round(time.monotonic() - t0, 1)}

    return run_recorded(cfg, "calibrenet", body)


# -- (b)-(d): the calibrator ---------------------------------------------------------------------
def build_calibrator(cfg: CalibrenetConfig, teacher: str) -> tuple[str, dict]:
    """The calibrator's folder and a summary of how it was made (reused when trained)."""
    if cfg.calibrator:
        return cfg.calibrator, {"given": cfg.calibrator}
    done = cfg.calib_dir / "job_summary.json"
    if done.exists():
        logger.warning("calibrator %s: trained already, reused", cfg.calib_dir)
        return str(cfg.calib_dir), json.loads(done.read_text())
    from xner_ray.labels import tags_to_spans
    from xner_ray.methods.calibrenet.data import DevSet, base_predictions, finetune_instances
    from xner_ray.methods.calibrenet.train import CalibreNetConfig, train_calibrenet
    from xner_ray.models.classifier import model_labels
    from xner_ray.train.loop import read_labeled

    t0 = time.monotonic()
    train, _ = read_labeled(cfg.source_train, "source train")
    dev, _ = read_labeled(cfg.source_dev, "source dev")
    types = sorted({l[2:] for l in model_labels(teacher) if l != "O"})
    _say(f"base tagger {teacher}: predicting {len(dev)} dev + {len(train)} train sentences")
    dev_pred = base_predictions(teacher, [s.tokens for s in dev])
    dist, counts = op_distribution(cfg, [tags_to_spans(p) for p in dev_pred],
                                   [tags_to_spans(s.tags) for s in dev])
    model = cfg.finetune.get("model") or CalibreNetConfig(out="").model
    pbr = pretrain(cfg, dist, model) if cfg.pretrain else None
    train_pred = base_predictions(teacher, [s.tokens for s in train])
    items, stats = finetune_instances([s.tokens for s in train], train_pred,
                                      [s.tags for s in train], dist, copies=cfg.garble_copies,
                                      seed=cfg.seed)
    _say(f"fine-tuning the calibrator on {len(items)} instances ({dict(stats)})")
    ft = CalibreNetConfig(**{**cfg.finetune, "out": str(cfg.calib_dir),
                             **({"model": pbr["folder"]} if pbr else {})})
    summary = train_calibrenet(ft, items, DevSet([s.tokens for s in dev], dev_pred,
                                                 [s.tags for s in dev]), types=types)
    out = {"op_dist": {"source": cfg.op_dist, "counts": _op_rows(counts),
                       "p": dist.to_json()},
           "pretrain": pbr, "finetune_instances": dict(stats), "train_instances": len(items),
           "steps": summary["steps"], "source_dev": summary["best"],
           "seconds": round(time.monotonic() - t0, 1)}
    best = summary["best"] or {}
    if best and best["f1"] < best["base_f1"]:
        logger.warning("the calibrator's best English dev F1 %.4f is below the base tagger's "
                       "%.4f: its calibrated tags are worse than the base tags (train longer)",
                       best["f1"], best["base_f1"])
    write_json(done, out)
    return str(cfg.calib_dir), out


def _say(text: str) -> None:
    print(f"[calibrenet] {text}", flush=True)  # progress of the driver-side steps


def _op_rows(counts) -> list[dict]:
    return [{"op": op, "n_op": n, "spans": c} for (op, n), c in sorted(counts.items())]


def op_distribution(cfg: CalibrenetConfig, pred_spans: list, gold_spans: list):
    """p(op, n_op) and the raw counts of the base tagger's boundary ops on English dev."""
    import collections

    from xner_ray.methods.calibrenet.garble import default_op_dist, estimate_op_dist

    dist, counts = estimate_op_dist(pred_spans, gold_spans, max_n=cfg.max_n)
    if cfg.op_dist == "table1":
        return default_op_dist(cfg.max_n), counts
    if not counts:
        logger.warning("the base tagger matched no gold span on %s: p(op, n_op) is uniform",
                       cfg.source_dev)
    return dist, collections.Counter(counts)


def pretrain(cfg: CalibrenetConfig, dist, model: str) -> dict:
    """PBR pre-training stages (Sec. 3.2.3); returns the last stage's folder and summaries."""
    import collections
    import itertools

    from xner_ray.io import read_conll
    from xner_ray.methods.calibrenet.pbr import (PassageRules, build_passages, pbr_instances,
                                                 pretraining_stages)
    from xner_ray.methods.calibrenet.train import pbr_config, pretrain_pbr

    spec = PbrSpec(**cfg.pretrain)
    root = Path(cfg.out) / "pbr"
    last = root / f"stage-{len(spec.order) - 1 if spec.strategy != 'mixed' else 0}"
    if (last / "train_summary.json").exists():
        return {"folder": str(last), "reused": True}
    by_lang: dict[str, list] = {}
    stats: collections.Counter = collections.Counter()
    for k, c in enumerate(spec.corpora):
        sents = itertools.islice(read_conll(c["path"], lang=c["lang"]), spec.max_sentences)
        passages = build_passages(sents, PassageRules(**spec.passages), seed=spec.seed + k,
                                  stats=stats)
        by_lang.setdefault(c["lang"], []).extend(pbr_instances(passages, dist,
                                                               seed=spec.seed + k))
    stages = pretraining_stages(by_lang, spec.order, strategy=spec.strategy,
                                replay=spec.replay, seed=spec.seed)
    layers = cfg.finetune.get("layers")
    pcfg = pbr_config(**{"model": model, "layers": layers, **spec.train, "out": str(root)})
    _say(f"PBR pre-training: {[(s.name, len(s.items)) for s in stages]} ({dict(stats)})")
    summaries = pretrain_pbr(pcfg, stages)
    return {"folder": str(root / f"stage-{len(stages) - 1}"), "passages": dict(stats),
            "stages": [{"stage": s["stage"], "instances": s["train_instances"],
                        "steps": s["steps"], "seconds": s["seconds"]} for s in summaries]}


# -- (e): label and calibrate the target text ----------------------------------------------------
def label_and_calibrate(cfg: CalibrenetConfig, store, teacher: str, calibrator: str) -> dict:
    """Round 0 of every target language: labeled by the base tagger, calibrated, committed
    together. Returns {lang: round counts} (committed rounds: from their manifests)."""
    from xner_ray.labeling.pipeline import LabelConfig, label_rounds
    from xner_ray.methods.calibrenet.pipeline import calibrate_rounds

    label_cfg = LabelConfig(teachers=[teacher], store=cfg.store, run_id=cfg.run_id, round=0,
                            inputs=[target_input(t, cfg.gold_eval) for t in cfg.targets],
                            **cfg.label)
    with label_rounds(label_cfg, store) as rounds:
        calibrate_rounds(cfg.calibration_run(calibrator), store, rounds)
    out = {}
    for t in cfg.targets:
        manifest = store.manifest(cfg.run_id, t.lang, 0) or {}
        out[t.lang] = {"round": 0, "counts": manifest.get("meta", {}).get("counts"),
                       "rows": {k: v["rows"] for k, v in manifest.get("tables", {}).items()}}
        store.update_run(cfg.run_id, round=0, metrics={t.lang: out[t.lang]})
    return out


# -- (f): target dev, report only -----------------------------------------------------------------
def dev_before_after(teacher: str, calibrator: str, target: TargetSpec) -> Optional[dict]:
    """Entity F1 of the base tagger and of its calibrated tags on the target dev file: for
    the report only (no choice is made on it: the zero-shot rule)."""
    if not target.dev:
        return None
    from xner_ray.methods.calibrenet.checkpoint import load_calibrenet
    from xner_ray.methods.calibrenet.data import DevSet, base_predictions, calibrated_scores
    from xner_ray.train.loop import read_labeled

    sents, _ = read_labeled(target.dev, f"{target.lang} dev")
    words = [s.tokens for s in sents]
    model, tok = load_calibrenet(calibrator, with_mlm=False)
    scores = calibrated_scores(model, tok, DevSet(words, base_predictions(teacher, words),
                                                  [s.tags for s in sents]))
    return {"n_sentences": len(sents), "base_f1": round(scores["base_f1"], 6),
            "calibrated_f1": round(scores["f1"], 6),
            "calibrated_precision": round(scores["precision"], 6),
            "calibrated_recall": round(scores["recall"], 6)}

