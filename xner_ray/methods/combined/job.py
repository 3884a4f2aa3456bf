"""The combined job: projection + English teachers -> AdvPicker selection -> RIKD rounds
(-> CalibreNet). No single paper does this; each step is one of theirs.

Per target language:

1. **Two sources.** The projection paper's target model (Li et al. 2021: the English teacher
   fine-tuned on entities projected through a parallel corpus) -- trained first by the
   projection job from ``project:``, or given as ``projected:`` -- and the English teacher
   itself. Round 0 mixes their soft labels with weights alpha (TSL Eq. 6; uniform, Eq. 7, by
   default).
2. **Adversarial selection.** TLADV teachers' language discriminators (AdvPicker 3.1; trained
   here from ``train_tladv:`` or given as ``lang_scorers:``) score every target sentence
   (l_score, AdvPicker Eq. 5-6); every round keeps exactly the top rho by l_score (3.2). With
   teachers that are not the discriminators' own, the stored l_score of a sentence is the
   highest of the seeds' (``labeling.stages``), one ranking for the whole language.
3. **RIKD rounds** (Liang et al. 2021, Algorithm 1) on the kept pseudo-labels: each round's
   student learns them with reinforced instance selection and labels the next round alone.
4. **Calibration** (optional, ``calibrator:``, CalibreNet): every round's spans are calibrated
   before the student learns them.

It is the RIKD job with round 0's teachers, weights and selector set by steps 1-2, so every
RIKD key means the same here and the store, resume and results are RIKD's: a committed round
is reused, trained projection models and TLADV teachers are reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from xner_ray.io import uri
from xner_ray.methods.advpicker.job import check_train_tladv, ensure_tladv_teachers
from xner_ray.methods.common import absolute, ensure_teacher, run_recorded
from xner_ray.methods.rikd.job import OnRound, RikdConfig, RoundPlan, run_language

PROJECT_SET_KEYS = ("teacher", "train_teacher")  # the job's English teacher is the projection's


@dataclass(kw_only=True)
class CombinedConfig(RikdConfig):
    """Combined job settings (YAML/JSON keys): RIKD's (``rounds``, ``student``, ``policy_lr``,
    ``calibrator`` ...) plus the sources and the selection. Students land in
    ``out/<lang>/round<k>``, projection outputs in ``out/project``, TLADV teachers in
    ``out/teachers/seed<k>``."""

    REMOTE_OUT: ClassVar[bool] = False  # projection and TLADV write local folders

    projected: Optional[dict] = field(default=None, metadata={
        "help": "{lang: folder}: a trained projection target model per target language "
                "(jobs/project.py's out/<lang>); instead of `project`"})
    project: Optional[dict] = field(default=None, metadata={
        "help": "ProjectConfig keys (corpora, aligner, train_aligner, target, ...): the "
                "projection job runs first, with the job's English teacher, run id "
                "<run_id>-project, the job's store and out/project (each overridable); one "
                "corpus per target language"})
    source_weights: Optional[list] = field(default=None, metadata={
        "help": "round 0's alpha for [projected model, English teacher] (TSL Eq. 6); default "
                "uniform (Eq. 7)"})
    train_tladv: Optional[dict] = field(default=None, metadata={
        "help": "TladvConfig keys: the TLADV teachers whose discriminators score the target "
                "text are trained once per seed into out/teachers/seed<seed>; instead of "
                "`lang_scorers`"})
    seeds: list = field(default_factory=lambda: [320, 550, 631, 691, 985], metadata={
        "help": "one TLADV teacher per seed with train_tladv (AdvPicker: 5 seeds)"})
    rho: float = field(default=0.8, metadata={
        "help": "share of each round's target sentences kept by l_score (AdvPicker 3.2: 0.8)"})

    def __post_init__(self) -> None:
        if self.selector != "keep_all":
            raise ValueError(f"selector: the combined job selects by l_score (`rho`); got "
                             f"{self.selector!r}")
        given_scorers = self.lang_scorers
        self.lang_scorers = None  # RIKD's checks run on its keep_all selector first
        super().__post_init__()
        self.lang_scorers = [absolute(s, only_existing=True) for s in given_scorers or []] \
            or None
        if self.calibrated_rho is not None:
            raise ValueError("calibrated_rho: the combined job selects by l_score already; a "
                             "second whole-set selection would compete with it")
        if bool(self.lang_scorers) == bool(self.train_tladv):
            raise ValueError("give either `lang_scorers` (trained TLADV folders) or "
                             "`train_tladv`")
        if self.train_tladv is not None:
            check_train_tladv(self)
        if not 0.0 < self.rho <= 1.0:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if self.source_weights is not None:
            w = self.source_weights
            if (not isinstance(w, list) or len(w) != 2
                    or not all(isinstance(x, (int, float)) and x >= 0 for x in w) or sum(w) <= 0):
                raise ValueError("source_weights must be two non-negative numbers [projected, "
                                 f"English] with a positive sum, got {w!r}")
            self.source_weights = [float(x) for x in w]
        self._check_sources()

    def _check_sources(self) -> None:
        langs = {t.lang for t in self.targets}
        if bool(self.projected) == bool(self.project):
            raise ValueError("give either `projected` ({lang: trained projection target "
                             "model}) or `project` (projection job keys)")
        if self.projected:
            if not isinstance(self.projected, dict):
                raise ValueError("projected must be a mapping {lang: model folder}")
            have = set(self.projected)
            self.projected = {k: absolute(v, only_existing=True)
                              for k, v in self.projected.items()}
        else:
            if not isinstance(self.project, dict):
                raise ValueError("project must be a mapping of projection job keys")
            fixed = sorted(set(self.project) & set(PROJECT_SET_KEYS))
            if fixed:
                raise ValueError(f"project must not set {fixed}: the projection starts from "
                                 "the job's English teacher (`teacher` / `train_teacher`)")
            if self.project.get("train_target") is False:
                raise ValueError("project.train_target: false leaves no projected model to "
                                 "label with")
            placeholder = self.teacher or (self.train_teacher or {}).get("out", "teacher")
            have = {c.lang for c in project_config(self, placeholder).corpora}
        if have != langs:
            raise ValueError(f"one projected source per target language: targets "
                             f"{sorted(langs)}, projected {sorted(have)}")


def project_config(cfg: CombinedConfig, teacher: str):
    """The projection job's config: ``cfg.project`` over the job's run id, store, source dev
    and ``out/project``, starting from the English ``teacher``."""
    from xner_ray import config as config_mod
    from xner_ray.methods.projection.job import ProjectConfig

    values = {"run_id": f"{cfg.run_id}-project", "store": cfg.store,
              "out": str(Path(cfg.out) / "project"), "source_dev": cfg.source_dev,
              **cfg.project, "teacher": teacher}
    return config_mod.build(ProjectConfig, values, what="project")


def ensure_projected(cfg: CombinedConfig, teacher: str) -> dict[str, str]:
    """{lang: projection target model}: the given folders, or the projection job's (run or
    resumed now: its trained aligner, projections and target models are reused)."""
    if cfg.projected:
        return dict(cfg.projected)
    from xner_ray.methods.projection.job import run_project

    pcfg = project_config(cfg, teacher)
    run_project(pcfg)
    out = {c.lang: str(Path(pcfg.out) / c.lang) for c in pcfg.corpora}
    missing = [m for m in out.values() if not uri.exists(uri.join(m, "train_summary.json"))]
    if missing:
        raise RuntimeError(f"the projection job left no trained target model in {missing}")
    return out


def run_combined(cfg: CombinedConfig, on_round: Optional[OnRound] = None) -> dict:
    """Run (or resume) the job; returns {lang: [per-round summary]} (RIKD's, round 0 naming
    both sources and their weights); ``on_round(lang, summary)`` after every round."""
    from xner_ray.train.loop import read_labeled

    def body(store) -> dict:
        teacher = ensure_teacher(cfg.teacher, cfg.train_teacher)
        projected = ensure_projected(cfg, teacher)
        scorers = ensure_tladv_teachers(cfg, cfg.lang_scorers)
        dev, _ = read_labeled(cfg.source_dev, "source dev")
        plan = RoundPlan(selector=f"lang_score:{cfg.rho}", lang_scorers=scorers,
                         weights=cfg.source_weights or [0.5, 0.5])
        return {t.lang: run_language(cfg, store, t, [projected[t.lang], teacher], dev, plan,
                                     on_round) for t in cfg.targets}

    return run_recorded(cfg, "combined", body)

