"""The calibration pass on the Ray pipeline: every predicted span of a labeled round is refined.

    read (one task per (sentences, pseudo_labels) file pair of the round)
      -> RoundCalibrationStage (CalibreNet actors: GPU, or fractional CPUs)
      -> write tasks: ``calibrations`` Parquet files under each language's attempt prefix

It runs inside :func:`xner_ray.labeling.pipeline.label_rounds`, after the labeling pass and
before the commit: the ``calibrations`` files join the round's other tables and become visible
with them, in one manifest (a round is labeled *and* calibrated, or neither). Rows of
``calibrations`` join ``pseudo_labels`` by (run_id, lang, round, sent_id). The driver sees
file names and row counts only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Iterator, Optional

import pyarrow as pa

from xner_ray.methods.calibrenet.stage import CalibrationStage

logger = logging.getLogger(__name__)

CALIB_TABLES = ("calibrations",)
SENTENCE_COLS = ["sent_id", "tokens"]
LABEL_COLS = ["sent_id", "teacher", "tags", "probs", "labels"]


@dataclass
class CalibrationRun:
    """Resources of the calibration actors (``xner_ray.cluster.derive_workers`` fills the
    unset ones from the connected cluster)."""

    calibrator: str = field(metadata={"help": "trained CalibreNet folder"})
    batch_size: int = field(default=32, metadata={"help": "initial answers per forward pass"})
    block_rows: int = field(default=256, metadata={"help": "sentences per actor call"})
    max_length: int = field(default=192, metadata={
        "help": "sub-word cap of [CLS] answer [SEP] passage [SEP] (CalibreNet 4.3: 192)"})
    num_actors: Optional[int] = field(default=None, metadata={"help": "calibration actors"})
    use_gpu: Optional[bool] = field(default=None, metadata={"help": "default: if GPUs exist"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch threads per actor"})
    local: bool = field(default=False, metadata={"help": "run in this process (tests)"})

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.block_rows < 1 or self.max_length < 8:
            raise ValueError("batch_size >= 1, block_rows >= 1 and max_length >= 8 required")


class RoundCalibrationStage(CalibrationStage):
    """:class:`CalibrationStage` returning the ``calibrations`` columns (plus ``lang`` for
    the sink): the base tags become ``orig_tags``, the calibrator's id ``calibrator``."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = super().__call__(batch)
        n = out.num_rows
        return pa.table({
            "sent_id": out.column("sent_id"), "lang": out.column("lang"),
            "teacher": out.column("teacher"),
            "calibrator": pa.array([self.id] * n, pa.string()),
            "orig_tags": out.column(self.tags_column), "calib_tags": out.column("calib_tags"),
            "orig_spans": out.column("orig_spans"), "calib_spans": out.column("calib_spans"),
            "calib_score": out.column("calib_score"), "n_changed": out.column("n_changed")})


def read_pair(item: tuple[str, str, str], *, rows: int = 256) -> Iterator[pa.Table]:
    """One read task: a round's (sentences, pseudo_labels) file pair (``store.sink.pair_files``:
    written together, or the stored sentences a later round labeled) as blocks of tokens + base
    tags + soft labels."""
    import pyarrow.parquet as pq

    from xner_ray.store.sink import split_uri
    from xner_ray.train.distill import tokens_of

    lang, se_uri, pl_uri = item
    (fs, se_path), (_, pl_path) = split_uri(se_uri), split_uri(pl_uri)
    se = pq.read_table(se_path, filesystem=fs, columns=SENTENCE_COLS)
    pl = pq.read_table(pl_path, filesystem=fs, columns=LABEL_COLS)
    tokens = tokens_of(se, pl, f"{pl_uri} (sentences {se_uri})")
    table = pl.append_column("tokens", tokens).append_column(
        "lang", pa.array([lang] * pl.num_rows, pa.string()))
    for start in range(0, table.num_rows, rows):
        yield table.slice(start, rows)


def _resources(run: CalibrationRun) -> dict:
    if run.local:
        return dict(concurrency=1, num_cpus=1, num_gpus=0, threads=run.threads)
    from xner_ray.cluster import derive_workers

    res = derive_workers(run.num_actors, run.use_gpu)
    return dict(concurrency=res.num_workers, num_cpus=res.cpus_per_worker,
                num_gpus=1 if res.use_gpu else 0, threads=run.threads or res.torch_threads)


def build_plan(run: CalibrationRun, items: list[tuple[str, str, str]], sink):
    """The calibration plan over ``items`` ((lang, sentences URI, pseudo_labels URI))."""
    from xner_ray import engine

    res = _resources(run)
    stage = engine.Stage(RoundCalibrationStage, (run.calibrator,),
                         dict(batch_size=run.batch_size, max_length=run.max_length,
                              threads=res["threads"],
                              device=None if res["num_gpus"] else "cpu"),
                         batch_size=run.block_rows, num_cpus=res["num_cpus"],
                         num_gpus=res["num_gpus"], min_actors=res["concurrency"],
                         max_actors=res["concurrency"])
    return engine.Plan(items=items, read=partial(read_pair, rows=run.block_rows),
                       stages=[stage], sink=sink, name="calibrate", progress="[calibrate]",
                       unit="sentences")


def calibrate_rounds(run: CalibrationRun, store, rounds: dict) -> dict[str, int]:
    """Calibrate every :class:`~xner_ray.labeling.pipeline.LabeledRound` in ``rounds`` (one
    pass over all their languages) and add the written ``calibrations`` files to each round,
    so they commit with it. Returns rows written per language."""
    from xner_ray import engine
    from xner_ray.store.sink import RoundSink

    items = [(lang, store.to_uri(se), store.to_uri(pl))
             for lang, r in sorted(rounds.items()) for se, pl in r.pairs()]
    if not items:
        return {}
    sink = RoundSink(store.uri, {lang: r.prefix for lang, r in rounds.items()}, CALIB_TABLES)
    written = {lang: 0 for lang in rounds}
    for rec in engine.run(build_plan(run, items, sink), local=run.local):
        rounds[rec["lang"]].add(rec)
        written[rec["lang"]] += rec["rows"]
    for lang, r in rounds.items():
        r.meta["calibrator"] = run.calibrator
        r.counts["calibrated"] = written[lang]
        logger.info("%s round %d: %d sentences calibrated", lang, r.round, written[lang])
    return written


# the knobs a distillation job's ``calibration:`` block may set (CalibrationRun's fields but
# the calibrator itself and the test-only ``local``)
CALIBRATION_KNOBS = ("batch_size", "block_rows", "max_length", "num_actors", "use_gpu",
                     "threads")


def calibration_run(calibrator: str, knobs: Optional[dict] = None, *,
                    local: bool = False) -> CalibrationRun:
    unknown = sorted(set(knobs or {}) - set(CALIBRATION_KNOBS))
    if unknown:
        raise ValueError(f"unknown calibration keys {unknown}; valid: {list(CALIBRATION_KNOBS)}")
    return CalibrationRun(calibrator=calibrator, local=local, **(knobs or {}))


def label_calibrated(label_cfg, store, calibrator: Optional[str],
                     knobs: Optional[dict] = None, rho: Optional[float] = None) -> dict:
    """``labeling.pipeline.label(label_cfg, own_run=False)``, with -- when ``calibrator`` is
    given -- the calibration pass inside each round, before its commit: the round's
    ``calibrations`` commit with its pseudo-labels; with ``rho``, only the top ``rho`` by
    calibration score stay selected (:func:`select_calibrated`). Returns per-language counts."""
    from xner_ray.labeling.pipeline import label, label_rounds

    if not calibrator:
        return label(label_cfg, own_run=False)
    with label_rounds(label_cfg, store) as rounds:
        calibrate_rounds(calibration_run(calibrator, knobs, local=label_cfg.local), store,
                         rounds)
        if rho is not None:
            select_calibrated(store, rounds, rho, local=label_cfg.local)
        summary = {lang: dict(r.counts) for lang, r in rounds.items()}
    if summary:
        store.update_run(label_cfg.run_id, round=label_cfg.round, metrics=summary)
    return summary


def calib_selector_spec(rho: float) -> str:
    """Keep the top ``rho`` of a round by ``calibrations.calib_score`` (a null score -- a
    sentence without spans -- ranks last): ``top_rho`` over the calibration's own confidence."""
    return f"top_rho:calib_score:{rho}"


def select_calibrated(store, rounds: dict, rho: float, *, local: bool = False) -> dict[str, int]:
    """Whole-set selection of each calibrated round by its calibration score, off the driver
    (exact cut-offs from a distributed sort, then a pass writing ``decisions``, as the labeling
    pipeline's top-rho). The fitted selector goes to the round's meta (``calib_selector_spec``,
    ``calib_selector_cutoffs``): training re-applies it (``train.distill``). Needs rounds
    labeled with ``keep_all``: another selector's decisions would compete for the same rows.
    Returns the selected count per language."""
    from xner_ray import engine
    from xner_ray.labeling.pipeline import DecideStage
    from xner_ray.selectors import make_selector
    from xner_ray.store.sink import RoundSink

    selected = {}
    for lang, r in rounds.items():
        if r.meta.get("selector") != "keep_all.v1":
            raise ValueError(f"{lang} round {r.round}: selection by calibration score needs "
                             f"the keep_all labeling selector, the round has "
                             f"{r.meta.get('selector')}")
        files = r.files.get("calibrations", [])
        selector = make_selector(calib_selector_spec(rho))
        cutoffs = engine.exact_cutoffs(files, store.fs, selector, r.rows.get("calibrations", 0),
                                       local=local)
        selector.set_cutoffs(cutoffs)
        r.meta.update(calib_selector_spec=calib_selector_spec(rho),
                      calib_selector_cutoffs=[list(c) for c in cutoffs])
        sink = RoundSink(store.uri, {lang: r.prefix}, ("decisions",))
        records = engine.map_files(files, store.fs, [engine.Stage(DecideStage, (selector, lang))],
                                   sink, columns=["sent_id", "calib_score"], local=local)
        r.counts["selected"] = 0
        for rec in records:
            r.add(rec)
            r.counts["selected"] += rec.get("selected", 0)
        selected[lang] = r.counts["selected"]
        logger.info("%s round %d: %d of %d sentences kept by calibration score (top %.0f%%)",
                    lang, r.round, selected[lang], r.rows.get("calibrations", 0), 100 * rho)
    return selected
