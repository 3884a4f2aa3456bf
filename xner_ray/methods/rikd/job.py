"""RIKD: reinforced iterative knowledge distillation (Liang et al. 2021, Algorithm 1).

For each target language, K rounds: the round's teacher (the source teacher in round 0, the
previous round's student after that) labels the target text through the labeling pipeline; a
fresh student -- initialised from the pre-trained encoder, not from the teacher -- learns the
soft labels with warm-up steps on everything and then reinforced instance selection (Algorithm 2,
``methods.rikd.step.RikdStep``); the policy's decisions fill ``policy_p``/``selected`` of the round's
pseudo-labels; then the round commits and the student becomes the next teacher.

A round is committed only after its student is trained, so a job killed in round k and
submitted again resumes at round k, reusing rounds 0..k-1 unchanged.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from xner_ray.methods.common import (JobConfig, TargetSpec, ensure_teacher, run_recorded,
                                     student_config, target_scores, write_json)

SELECTOR_ID = "rikd_policy.v1"


@dataclass(kw_only=True)
class RikdConfig(JobConfig):
    """RIKD job settings (YAML/JSON keys); students land in ``out/<lang>/round<k>``."""

    teacher: Optional[str] = field(default=None, metadata={"help": "trained source teacher"})
    train_teacher: Optional[dict] = field(default=None,
                                          metadata={"help": "TeacherConfig keys: train it first"})
    rounds: int = field(default=3, metadata={"help": "K, distillation rounds (paper: 3)"})
    reinforce: bool = field(default=True,
                            metadata={"help": "RL instance selection (false: iterative KD only)"})
    warmup_steps: int = field(default=100, metadata={"help": "J_w: steps on all data first"})
    policy_lr: float = field(default=0.01, metadata={"help": "policy SGD learning rate (Eq. 4)"})
    reward_scale: float = field(default=1.0, metadata={"help": "multiplies r in Eq. 4"})
    selector: str = field(default="keep_all", metadata={
        "help": "labeling selector applied before the policy: the student (and the policy) see "
                "only its rows, e.g. 'lang_score:0.8' (AdvPicker selection, needs lang_scorers)"})
    lang_scorers: Optional[list] = field(default=None, metadata={
        "help": "TLADV teacher folders whose discriminators fill lang_score (AdvPicker Eq. 5-6)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from xner_ray.labeling.pipeline import check_selector

        check_selector(self.selector, self.lang_scorers)
        if self.rounds < 1 or self.warmup_steps < 0 or self.policy_lr <= 0:
            raise ValueError("rounds >= 1, warmup_steps >= 0 and policy_lr > 0 are required")
        if not self.teacher and not self.train_teacher:
            raise ValueError("give `teacher` (a trained model folder) or `train_teacher`")


def run_rikd(cfg: RikdConfig) -> dict:
    """Run (or resume) the job; returns {lang: [per-round summary]}."""
    from xner_ray.train.loop import read_labeled

    def body(store) -> dict:
        teacher = ensure_teacher(cfg.teacher, cfg.train_teacher)
        dev, _ = read_labeled(cfg.source_dev, "source dev")
        return {t.lang: _run_language(cfg, store, t, teacher, dev) for t in cfg.targets}

    return run_recorded(cfg, "rikd" if cfg.reinforce else "ikd", body)


def _student_dir(cfg: RikdConfig, lang: str, k: int) -> Path:
    return Path(cfg.out) / lang / f"round{k}"


def _run_language(cfg: RikdConfig, store, target: TargetSpec, teacher: str, dev) -> list[dict]:
    summaries = []
    for k in range(cfg.rounds):
        student = _student_dir(cfg, target.lang, k)
        if store.is_complete(cfg.run_id, target.lang, k):
            if not (student / "train_summary.json").exists():
                raise RuntimeError(f"round {k} of {cfg.run_id}/{target.lang} is committed but its "
                                   f"student {student} is missing; restore it or use a new run id")
            print(f"[rikd] {target.lang} round {k}: complete, resumed from it", flush=True)
            summaries.append(json.loads((student / "round_summary.json").read_text()))
        else:
            summaries.append(_run_round(cfg, store, target, teacher, k, dev))
        teacher = str(student)
    return summaries


def _run_round(cfg: RikdConfig, store, target: TargetSpec, teacher: str, k: int, dev) -> dict:
    """Label with ``teacher``, train the round's student, fill the policy columns, commit."""
    import ray

    from xner_ray.labeling.pipeline import LabelConfig, open_rounds
    from xner_ray.train.distill import export_training_set
    from xner_ray.methods.rikd.step import RikdStep
    from xner_ray.train.loop import fit
    from xner_ray.train.steps import KDStep

    t0 = time.monotonic()
    student = _student_dir(cfg, target.lang, k)
    label_cfg = LabelConfig(teachers=[teacher], store=cfg.store, run_id=cfg.run_id, round=k,
                            inputs=[{"path": target.unlabeled, "lang": target.lang,
                                     "fmt": target.fmt}], selector=cfg.selector,
                            lang_scorers=cfg.lang_scorers, **cfg.label)
    with open_rounds(label_cfg, store) as writers:
        writer = writers[target.lang]
        files = {t: writer.files(t) for t in ("sentences", "pseudo_labels")}
        data = student.parent / f"train-round{k}.parquet"
        student.parent.mkdir(parents=True, exist_ok=True)
        # keep_all selects every row with weight 1: the same set as before a selector existed
        n = export_training_set(files, data, selected_only=True)
        artifacts = student / "_policy"
        train_cfg = student_config(student, cfg.student)
        fit(train_cfg, step=RikdStep if cfg.reinforce else KDStep,
            labels=writer.labels, dataset=ray.data.read_parquet(str(data), num_cpus=0.25),
            n_train=n, dev=dev, name=f"{cfg.run_id}-{target.lang}-round{k}",
            # each round builds a fresh policy; its seed differs per round, else every round
            # would draw the same keep/drop stream over the same batch positions
            step_args=dict(warmup_steps=cfg.warmup_steps, policy_lr=cfg.policy_lr,
                           reward_scale=cfg.reward_scale, seed=train_cfg.seed + k),
            artifacts_dir=str(artifacts) if cfg.reinforce else None)
        data.unlink(missing_ok=True)
        policy = (_apply_decisions(writer, artifacts, _selector_id(cfg.selector))
                  if cfg.reinforce else {})
        summary = {"round": k, "teacher": teacher, "student": str(student), "n_train": n,
                   **policy, "target_dev": target_scores(student, target),
                   "source_dev_f1": json.loads((student / "train_summary.json").read_text())
                   ["best"]["dev_f1"],
                   # wall time of this round (labeling, training, evaluation) when it ran; a
                   # resumed round keeps it, so callers can total a run's time across resumes
                   "seconds": round(time.monotonic() - t0, 1)}
        writer.meta["rikd"] = summary
        write_json(student / "round_summary.json", summary)
    store.update_run(cfg.run_id, round=k, metrics={target.lang: summary})
    dev_f1 = (summary["target_dev"] or {}).get("f1")
    print(f"[rikd] {target.lang} round {k}: source dev F1 {summary['source_dev_f1']:.4f}"
          + (f", target dev F1 {dev_f1:.4f} (report only)" if dev_f1 is not None else ""),
          flush=True)
    return summary


def _selector_id(spec: str) -> str:
    """``rikd_policy.v1``, prefixed by the labeling selector when one narrowed the rows."""
    from xner_ray.selectors import KeepAll, make_selector

    pre = make_selector(spec)
    return SELECTOR_ID if isinstance(pre, KeepAll) else f"{pre.id}+{SELECTOR_ID}"


def _apply_decisions(writer, artifacts: Path, selector_id: str = SELECTOR_ID) -> dict:
    """Fill ``policy_p``/``selected``/``weight`` of the round's pseudo-labels from the policy's
    last decision per instance; instances the reinforced phase never reached: policy_p null,
    selected false. Returns the discard ratio and mean reward over the reinforced steps."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = sorted(artifacts.glob("decisions-rank*.parquet"))
    decisions = (pa.concat_tables([pq.read_table(p) for p in parts]) if parts
                 else pa.table({"sent_id": pa.array([], pa.string()),
                                "policy_p": pa.array([], pa.float32()),
                                "selected": pa.array([], pa.bool_())}))
    by_id = {s: (p, k) for s, p, k in zip(decisions.column("sent_id").to_pylist(),
                                          decisions.column("policy_p").to_pylist(),
                                          decisions.column("selected").to_pylist())}

    def fill(table: pa.Table) -> pa.Table:
        got = [by_id.get(s) for s in table.column("sent_id").to_pylist()]
        p = pa.array([g[0] if g else None for g in got], pa.float32())
        sel = pa.array([bool(g and g[1]) for g in got], pa.bool_())
        cols = {"policy_p": p, "selected": sel, "weight": pc.cast(sel, pa.float32()),
                "selector": pa.array([selector_id] * table.num_rows, pa.string())}
        for name, arr in cols.items():
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        return table

    writer.rewrite("pseudo_labels", fill)
    history = [r for p in sorted(artifacts.glob("history-rank*.json"))
               for r in json.loads(p.read_text())]
    writer.meta["rikd_steps"] = history  # discard ratio and reward per step, in the manifest
    return {"rl_steps": len(history),
            "discard_ratio": (sum(r["discard_ratio"] for r in history) / len(history)
                              if history else None),
            "mean_reward": sum(r["reward"] for r in history) / len(history) if history else None,
            "decided_instances": len(by_id)}
