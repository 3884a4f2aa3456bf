"""RIKD: reinforced iterative knowledge distillation (Liang et al. 2021, Algorithm 1).

For each target language, K rounds: the round's teacher (the source teacher in round 0, the
previous round's student after that) labels the target text through the labeling pipeline
(round 0 reads the text and stores its sentences; later rounds label those stored sentences); a
fresh student -- initialised from the pre-trained encoder, not from the teacher -- learns the
soft labels with warm-up steps on everything and then reinforced instance selection (Algorithm 2,
``methods.rikd.step.RikdStep``); the policy's decisions fill ``policy_p``/``selected`` of the round's
pseudo-labels; then the round commits and the student becomes the next teacher.

A round is committed only after its student is trained, so a job killed in round k and
submitted again resumes at round k, reusing rounds 0..k-1 unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional

from xner_ray.io import uri
from xner_ray.methods.common import (JobConfig, TargetSpec, absolute, ensure_teacher, read_json,
                                     run_recorded, student_config, target_input, target_scores,
                                     write_json)

SELECTOR_ID = "rikd_policy.v1"
logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RikdConfig(JobConfig):
    """RIKD job settings (YAML/JSON keys); students land in ``out/<lang>/round<k>``, a local
    folder or a URI (``out: s3://bucket/run``): each round's teacher is then read back from
    there through every node's model cache."""

    REMOTE_OUT: ClassVar[bool] = True

    teacher: Optional[str] = field(default=None, metadata={"help": "trained source teacher"})
    train_teacher: Optional[dict] = field(default=None,
                                          metadata={"help": "TeacherConfig keys: train it first"})
    rounds: int = field(default=3, metadata={"help": "K, distillation rounds (paper: 3)"})
    reinforce: bool = field(default=True,
                            metadata={"help": "RL instance selection (false: iterative KD only)"})
    warmup_steps: int = field(default=100, metadata={"help": "J_w: steps on all data first"})
    policy_lr: float = field(default=0.01, metadata={"help": "policy SGD learning rate (Eq. 4)"})
    reward_scale: float = field(default=1.0, metadata={"help": "multiplies r in Eq. 4"})
    selection: str = field(default="policy", metadata={
        "help": "who selects after the warm-up: policy (RIKD) | confidence (Eq. 5) | agreement "
                "(Eq. 6) -- the last two are RIKD's Table 7 baselines: each batch keeps its "
                "top instances and discards `discard_ratio` of them"})
    discard_ratio: Optional[float] = field(default=None, metadata={
        "help": "per-batch discard share of selection: confidence | agreement (the paper "
                "matches RIKD's average discard ratio of round 1, its Table 6)"})
    keep_target: Optional[float] = field(default=None, metadata={
        "help": "not in the paper, opt-in: hold the policy's expected keep rate at this share "
                "(a logit offset moved by dual ascent; REINFORCE still picks which). Without it "
                "a policy that learns drifts towards discarding most of each batch "
                "(benchmarks/results/rikd_policy_toy.md); RIKD Table 6 reports 38.8% "
                "discarded for es, i.e. keep_target 0.612"})
    drop_features: list = field(default_factory=list, metadata={
        "help": "state features the policy does not see (RIKD Table 8 ablations): any of "
                "f_entities, f_conf, f_agree, f_semantic, f_length"})
    selector: str = field(default="keep_all", metadata={
        "help": "labeling selector applied before the policy: the student (and the policy) see "
                "only its rows, e.g. 'lang_score:0.8' (AdvPicker selection, needs lang_scorers)"})
    lang_scorers: Optional[list] = field(default=None, metadata={
        "help": "TLADV teacher folders whose discriminators fill lang_score (AdvPicker Eq. 5-6)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from xner_ray.methods.calibrenet.pipeline import calibration_run

        calibration_run(self.calibrator or "<calibrator>", self.calibration)  # bad keys: now
        if self.calibrated_rho is not None and self.selector != "keep_all":
            raise ValueError(f"calibrated_rho needs selector: keep_all (got {self.selector!r}): "
                             "two whole-set selections would compete for the same rows")
        from xner_ray.labeling.pipeline import check_selector

        check_selector(self.selector, self.lang_scorers)
        self._check_selection()
        if self.rounds < 1 or self.warmup_steps < 0 or self.policy_lr <= 0:
            raise ValueError("rounds >= 1, warmup_steps >= 0 and policy_lr > 0 are required")
        if not self.teacher and not self.train_teacher:
            raise ValueError("give `teacher` (a trained model folder) or `train_teacher`")
        self.teacher = absolute(self.teacher, only_existing=True)
        self.lang_scorers = [absolute(s, only_existing=True) for s in self.lang_scorers or []] \
            or None
        if self.train_teacher:
            self.train_teacher = {k: (absolute(v) if k in ("train", "dev", "out") else v)
                                  for k, v in self.train_teacher.items()}

    def _check_selection(self) -> None:
        from xner_ray.methods.rikd.policy import FEATURES
        from xner_ray.methods.rikd.step import RikdStep

        if self.selection not in ("policy", *RikdStep.RULES):
            raise ValueError(f"selection must be one of {('policy', *RikdStep.RULES)}, got "
                             f"{self.selection!r}")
        if self.selection != "policy" and not self.reinforce:
            raise ValueError(f"selection: {self.selection} selects after the warm-up; it needs "
                             "reinforce: true (reinforce: false trains on everything)")
        rule = self.selection != "policy"
        if rule != (self.discard_ratio is not None):
            raise ValueError("discard_ratio goes with selection: confidence | agreement, and "
                             "only there")
        if rule and not 0.0 <= self.discard_ratio < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {self.discard_ratio}")
        if self.keep_target is not None and (rule or not self.reinforce
                                             or not 0.0 < self.keep_target < 1.0):
            raise ValueError(f"keep_target must be in (0, 1), with the policy only (got "
                             f"{self.keep_target}, selection {self.selection}, reinforce "
                             f"{self.reinforce})")
        unknown = sorted(set(self.drop_features) - set(FEATURES))
        if unknown or (self.drop_features and (rule or not self.reinforce)):
            raise ValueError(f"drop_features: names from {list(FEATURES)}, with the policy only "
                             f"(got {self.drop_features}, selection {self.selection})")


# called after each round of a language has committed (or was found committed on a resume)
# with the language and the round's summary: a caller records progress before the job ends
OnRound = Callable[[str, dict], None]


def run_rikd(cfg: RikdConfig, on_round: Optional[OnRound] = None) -> dict:
    """Run (or resume) the job; returns {lang: [per-round summary]}. ``on_round(lang,
    summary)`` after every round."""
    from xner_ray.train.loop import read_labeled

    def body(store) -> dict:
        teacher = ensure_teacher(cfg.teacher, cfg.train_teacher)
        dev, _ = read_labeled(cfg.source_dev, "source dev")
        plan = RoundPlan(selector=cfg.selector, lang_scorers=cfg.lang_scorers)
        return {t.lang: run_language(cfg, store, t, [teacher], dev, plan, on_round)
                for t in cfg.targets}

    return run_recorded(cfg, "rikd" if cfg.reinforce else "ikd", body)


def _student_dir(cfg: RikdConfig, lang: str, k: int) -> str:
    """``out/<lang>/round<k>``: a local folder or a URI (``out: s3://...``)."""
    return uri.join(cfg.out, lang, f"round{k}")


@dataclass(frozen=True)
class RoundPlan:
    """How every round labels: the labeling selector applied before the policy, the TLADV
    discriminators it reads, and round 0's source weights (TSL Eq. 6; None: one teacher, or the
    labeling default, uniform)."""

    selector: str = "keep_all"
    lang_scorers: Optional[list] = None
    weights: Optional[list] = None


def run_language(cfg: RikdConfig, store, target: TargetSpec, teachers: list[str], dev,
                 plan: RoundPlan, on_round: Optional[OnRound] = None) -> list[dict]:
    """The K rounds of one target: round 0 is labeled by ``teachers`` (one source teacher, or
    several mixed with ``plan.weights``), round k+1 by round k's student; ``on_round(lang,
    summary)`` after each."""
    summaries = []
    for k in range(cfg.rounds):
        student = _student_dir(cfg, target.lang, k)
        if store.is_complete(cfg.run_id, target.lang, k):
            if not uri.exists(uri.join(student, "train_summary.json")):
                raise RuntimeError(f"round {k} of {cfg.run_id}/{target.lang} is committed but its "
                                   f"student {student} is missing; restore it or use a new run id")
            logger.info("%s round %d: complete, resumed from it", target.lang, k)
            summary = read_json(uri.join(student, "round_summary.json"))
            # a kill between the commit and update_run lost the round's metrics: write them
            store.update_run(cfg.run_id, round=k, metrics={target.lang: summary})
            summaries.append(summary)
        else:
            summaries.append(_run_round(cfg, store, target, teachers, k, dev, plan))
        if on_round is not None:
            on_round(target.lang, summaries[-1])
        teachers, plan = [student], dataclasses.replace(plan, weights=None)
    return summaries


def _run_round(cfg: RikdConfig, store, target: TargetSpec, teachers: list[str], k: int, dev,
               plan: RoundPlan) -> dict:
    """Label with ``teachers``, train the round's student, add the policy's decisions,
    commit."""
    from xner_ray.labeling.pipeline import LabelConfig, label_rounds
    from xner_ray.methods.calibrenet.pipeline import (calibrate_rounds, calibration_run,
                                                      select_calibrated)
    from xner_ray.methods.rikd.step import RikdStep
    from xner_ray.train.distill import round_selector, training_dataset
    from xner_ray.train.loop import fit
    from xner_ray.train.steps import KDStep

    t0 = time.monotonic()
    student = _student_dir(cfg, target.lang, k)
    label_cfg = LabelConfig(teachers=list(teachers), weights=plan.weights, store=cfg.store,
                            run_id=cfg.run_id, round=k,
                            inputs=[target_input(target, cfg.gold_eval)],
                            selector=plan.selector,
                            lang_scorers=plan.lang_scorers,
                            # every round labels the same text: the sentences round 0 stored
                            sentences_from=0 if k else None, **cfg.label)
    with label_rounds(label_cfg, store) as rounds:
        r = rounds[target.lang]
        n = r.counts["selected"]  # keep_all selects every row with weight 1
        if n == 0:
            raise ValueError(f"{target.lang} round {k}: no selected pseudo-labels to learn from")
        if cfg.calibrator:  # the round's spans calibrated; they commit with the round
            calibrate_rounds(calibration_run(cfg.calibrator, cfg.calibration,
                                             local=label_cfg.local), store, rounds)
            if cfg.calibrated_rho is not None:
                select_calibrated(store, rounds, cfg.calibrated_rho, local=label_cfg.local)
                n = r.counts["selected"]
                if n == 0:
                    raise ValueError(f"{target.lang} round {k}: calibrated_rho "
                                     f"{cfg.calibrated_rho} keeps no pseudo-label")
        # decisions go under this attempt's prefix: a resumed round never sees an older attempt's
        artifacts = store.to_uri(f"{r.prefix}/rikd") if cfg.reinforce else None
        train_cfg = student_config(student, cfg.student)
        fit(train_cfg, step=RikdStep if cfg.reinforce else KDStep,
            labels=r.labels, dataset=training_dataset(
                store, r.pairs(), selector=r.selector, labels=r.labels,
                calibrations=r.files.get("calibrations", []) if cfg.calibrator else None,
                calib_selector=(round_selector(r.meta, "calib_selector")
                                if cfg.calibrated_rho is not None else None)),
            n_train=n, dev=dev, name=f"{cfg.run_id}-{target.lang}-round{k}",
            # each round builds a fresh policy; its seed differs per round, else every round
            # would draw the same keep/drop stream over the same batch positions
            step_args=dict(warmup_steps=cfg.warmup_steps, policy_lr=cfg.policy_lr,
                           reward_scale=cfg.reward_scale, seed=train_cfg.seed + k,
                           selector_id=_selector_id(plan.selector, cfg),
                           **({"rule": cfg.selection, "discard_ratio": cfg.discard_ratio}
                              if cfg.selection != "policy" else {}),
                           drop_features=tuple(cfg.drop_features),
                           keep_target=cfg.keep_target),
            artifacts_dir=artifacts)
        policy = _add_decisions(store, r) if cfg.reinforce else {}
        summary = {"round": k, "teacher": "+".join(teachers), "student": student,
                   **({"weights": plan.weights} if plan.weights else {}),
                   "sentences": r.counts["sentences"], "n_train": n,
                   "kept_share": round(n / r.counts["sentences"], 4),
                   "calibrated": r.counts.get("calibrated"),
                   **policy, "target_dev": target_scores(student, target),
                   "source_dev_f1": read_json(uri.join(student, "train_summary.json"))
                   ["best"]["dev_f1"],
                   # wall time of this round (labeling, training, evaluation) when it ran; a
                   # resumed round keeps it, so callers can total a run's time across resumes
                   "seconds": round(time.monotonic() - t0, 1)}
        r.meta["rikd"] = summary
        write_json(uri.join(student, "round_summary.json"), summary)
    store.update_run(cfg.run_id, round=k, metrics={target.lang: summary})
    dev_f1 = (summary["target_dev"] or {}).get("f1")
    logger.info("%s round %d: source dev F1 %.4f%s", target.lang, k, summary["source_dev_f1"],
                f", target dev F1 {dev_f1:.4f} (report only)" if dev_f1 is not None else "")
    return summary


def _selector_id(spec: str, cfg: Optional[RikdConfig] = None) -> str:
    """``rikd_policy.v1`` (or a Table 7 rule's id; a Table 8 ablation and ``keep_target`` in
    brackets), prefixed by the labeling selector when one narrowed the rows."""
    from xner_ray.selectors import KeepAll, make_selector

    own = SELECTOR_ID
    if cfg is not None and cfg.selection != "policy":
        own = f"rikd_{cfg.selection}_batch.v1(discard={cfg.discard_ratio:g})"
    elif cfg is not None:
        opts = ([f"drop={'+'.join(sorted(cfg.drop_features))}"] if cfg.drop_features else []) \
            + ([f"keep={cfg.keep_target:g}"] if cfg.keep_target is not None else [])
        own = f"{SELECTOR_ID}({','.join(opts)})" if opts else SELECTOR_ID
    pre = make_selector(spec)
    return own if isinstance(pre, KeepAll) else f"{pre.id}+{own}"


def _add_decisions(store, r) -> dict:
    """Add the decision files the training ranks wrote under this attempt's prefix to the
    round's ``decisions`` table (counts from their footers); the per-step history (small) goes
    to the manifest. Returns the discard ratio and mean reward over the reinforced steps."""
    import pyarrow.fs as pafs

    from xner_ray.store.sink import file_stats

    base = f"{r.prefix}/rikd"
    infos = (store.fs.get_file_info(pafs.FileSelector(base))
             if store.fs.get_file_info(base).type == pafs.FileType.Directory else [])
    decided, history = 0, []
    for info in sorted(infos, key=lambda i: i.path):
        if info.base_name.startswith("decisions-rank"):
            stats = file_stats(store.fs, info.path)
            r.add({"table": "decisions", "lang": r.lang, "path": info.path, **stats})
            decided += stats["rows"]
        elif info.base_name.startswith("history-rank"):
            with store.fs.open_input_stream(info.path) as f:
                history += json.loads(f.read().decode())
    r.meta["rikd_steps"] = history  # discard ratio and reward per step, in the manifest
    return {"rl_steps": len(history),
            "discard_ratio": (sum(h["discard_ratio"] for h in history) / len(history)
                              if history else None),
            "mean_reward": _mean([h["reward"] for h in history if h["reward"] is not None]),
            "decided_instances": decided}


def _mean(values: list) -> Optional[float]:
    return sum(values) / len(values) if values else None
