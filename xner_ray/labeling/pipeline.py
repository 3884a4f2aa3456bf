"""Wires the labeling stages into Ray Data and streams the results into the store.

    read (one task per file) -> SubwordStage (CPU actors) -> TeacherStage (GPU or fractional-CPU
    actors, model loaded once per actor) -> driver: selector -> RoundWriter per language

Resources come from the cluster (``cluster.derive_workers``), never from constants. The
driver consumes the stream batch by batch, so memory is bounded by Ray Data's backpressure
and the writer's file rotation, not by the corpus. Each (run, language, round) is committed
atomically; a complete one is skipped on rerun, an interrupted one is redone cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc

from xner_ray.labeling.source import InputSpec

logger = logging.getLogger(__name__)


@dataclass
class LabelConfig:
    """Labeling run settings (YAML/JSON keys and ``xner label`` flags)."""

    teachers: list = field(metadata={"help": "teacher model folder(s) (an ensemble if several)"})
    inputs: list = field(metadata={"help": "list of {path, lang, fmt?, gold?} inputs"})
    store: str = field(metadata={"help": "store root folder"})
    weights: Optional[list] = field(default=None,
                                    metadata={"help": "teacher weights alpha_k (TSL Eq. 6)"})
    student: Optional[str] = field(default=None,
                                   metadata={"help": "student model: fills `agreement`"})
    combine: str = field(default="mean", metadata={
        "help": "teacher ensemble: mean (weighted average, TSL Eq. 6) | best_confidence (per "
                "sentence the teacher with the highest summed label confidence, AdvPicker 4.1)"})
    lang_scorers: Optional[list] = field(default=None, metadata={
        "help": "TLADV teacher folders whose discriminators fill `lang_score` "
                "(AdvPicker Eq. 5-6); needed by the lang_score selector"})
    run_id: Optional[str] = field(default=None,
                                  metadata={"help": "default: a hash of teachers + inputs"})
    round: int = field(default=0, metadata={"help": "round number of this labeling"})
    selector: str = field(default="keep_all", metadata={"help": "selector spec, e.g. "
                                                          "'confidence:0.9', 'top_rho:confidence:0.8'"})
    batch_size: int = field(default=32, metadata={"help": "sentences per forward pass"})
    block_rows: int = field(default=256, metadata={"help": "sentences per actor call"})
    max_length: int = field(default=512, metadata={"help": "sub-word cap per sentence"})
    max_words: int = field(default=2048, metadata={"help": "longer sentences are rejected"})
    num_actors: Optional[int] = field(default=None, metadata={"help": "teacher actors"})
    threads: Optional[int] = field(default=None,
                                   metadata={"help": "torch threads per teacher actor "
                                                     "(default: its whole CPUs)"})
    use_gpu: Optional[bool] = field(default=None, metadata={"help": "default: if GPUs exist"})
    rows_per_file: int = field(default=100_000, metadata={"help": "Parquet rotation"})

    def __post_init__(self) -> None:
        if isinstance(self.teachers, str):
            self.teachers = [self.teachers]
        if not self.teachers:
            raise ValueError("at least one teacher model is required")
        self.inputs = [i if isinstance(i, InputSpec) else InputSpec(**i) for i in self.inputs]
        if not self.inputs:
            raise ValueError("at least one input is required")
        if self.weights is not None and len(self.weights) != len(self.teachers):
            raise ValueError(f"{len(self.weights)} weights for {len(self.teachers)} teachers")
        if isinstance(self.lang_scorers, str):
            self.lang_scorers = [self.lang_scorers]
        from xner_ray.labeling.stages import COMBINE

        if self.combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {self.combine!r}")
        if self.combine != "mean" and self.weights is not None:
            raise ValueError("teacher weights apply to combine: mean only")
        if self.round < 0 or self.batch_size < 1 or self.block_rows < 1:
            raise ValueError("round >= 0, batch_size >= 1 and block_rows >= 1 are required")
        check_selector(self.selector, self.lang_scorers)  # fail now, not inside the run
        if self.run_id is None:
            key = json.dumps([self.teachers, [dataclasses.asdict(i) for i in self.inputs]])
            self.run_id = "label-" + hashlib.blake2b(key.encode(), digest_size=5).hexdigest()

    def run_config(self) -> dict:
        """What identifies the run (round excluded: rounds of a run share one config)."""
        d = dataclasses.asdict(self)
        d.pop("round")
        return d


def check_selector(spec, lang_scorers: Optional[list] = None):
    """Build the selector (a bad spec raises with the valid names); one that reads the
    discriminators' scores needs ``lang_scorers``."""
    from xner_ray.selectors import make_selector

    selector = make_selector(spec)
    if {"lang_score", "lang_scores"} & set(selector.columns) and not lang_scorers:
        raise ValueError(f"selector {selector.id} reads lang_score: give `lang_scorers` "
                         "(TLADV teacher folders with a discriminator)")
    return selector


def _teacher_resources(cfg: LabelConfig) -> dict:
    from xner_ray.cluster import derive_workers

    res = derive_workers(cfg.num_actors, cfg.use_gpu)
    return dict(concurrency=res.num_workers, num_cpus=res.cpus_per_worker,
                num_gpus=1 if res.use_gpu else 0, threads=cfg.threads or res.torch_threads)


def build_dataset(cfg: LabelConfig, collector, *, langs: set[str]):
    """The lazy Ray Data pipeline for the inputs of ``langs``."""
    import ray
    from ray.data import ActorPoolStrategy

    from xner_ray.labeling.source import make_datasource
    from xner_ray.labeling.stages import SubwordStage, TeacherStage

    inputs = [i for i in cfg.inputs if i.lang in langs]
    res = _teacher_resources(cfg)
    ds = ray.data.read_datasource(make_datasource(inputs, collector=collector,
                                                  max_words=cfg.max_words,
                                                  rows_per_block=cfg.block_rows),
                                  num_cpus=0.25)
    # Tokenizing is cheap next to the model: one light actor, more when many teachers wait.
    ds = ds.map_batches(SubwordStage, fn_constructor_args=(cfg.teachers[0], cfg.max_length),
                        batch_size=cfg.block_rows, batch_format="pyarrow",
                        compute=ActorPoolStrategy(min_size=1, max_size=res["concurrency"]),
                        num_cpus=0.25)
    return ds.map_batches(
        TeacherStage, fn_constructor_args=(cfg.teachers,),
        fn_constructor_kwargs=dict(weights=cfg.weights, student=cfg.student,
                                   batch_size=cfg.batch_size, threads=res["threads"],
                                   teacher_id=_teacher_id(cfg), combine=cfg.combine,
                                   lang_scorers=cfg.lang_scorers),
        batch_size=cfg.block_rows, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=res["concurrency"]), num_cpus=res["num_cpus"],
        num_gpus=res["num_gpus"])


def check_same_tokenizer(models: list[str]) -> None:
    """One sub-word stage feeds every teacher of an ensemble: they must share a tokenizer."""
    if len(models) < 2:
        return
    from xner_ray.models.classifier import load_tokenizer

    first = load_tokenizer(models[0]).backend_tokenizer.to_str()
    for m in models[1:]:
        if load_tokenizer(m).backend_tokenizer.to_str() != first:
            raise ValueError(f"teachers {models[0]} and {m} use different tokenizers; an "
                             "ensemble needs one (label with each separately instead)")


def _teacher_id(cfg: LabelConfig) -> str:
    return "+".join(str(t) for t in cfg.teachers) + f"@round{cfg.round}"


SENTENCE_FIELDS = ("sent_id", "source", "tokens", "gold_tags", "text")
LABEL_FIELDS = ("sent_id", "teacher", "tags", "probs", "confidence", "f_conf", "n_entities",
                "length", "agreement", "lang_score")


def label(cfg: LabelConfig, *, own_run: bool = True) -> dict:
    """Run the labeling job; returns per-language counts. Needs a connected Ray cluster.

    ``own_run=False`` when a larger job (TSL, RIKD) owns the run id: that job records the run
    and its status; the labeling only adds its rounds.
    """
    from xner_ray.store import Store

    store = Store(cfg.store)
    if own_run:
        store.record_run(cfg.run_id, "label", cfg.run_config())
    with open_rounds(cfg, store) as rounds:
        summary = {l: w.meta["counts"] for l, w in rounds.items()}
    if summary:
        store.update_run(cfg.run_id, round=cfg.round, metrics=summary)
    if own_run:
        store.update_run(cfg.run_id, status="succeeded")
    return summary


@contextlib.contextmanager
def open_rounds(cfg: LabelConfig, store) -> Iterator[dict]:
    """Label every language of ``cfg`` whose round is not complete yet, into one uncommitted
    ``RoundWriter`` per language, and yield them ({lang: writer}).

    Inside the block the caller may read the round's files (``writer.files(...)``), train on
    them and ``rewrite`` them (RIKD fills ``policy_p``/``selected`` after training); leaving the
    block commits every round atomically, an exception commits none. Languages complete
    already are skipped (and absent from the dict). Counts are in ``writer.meta["counts"]``.
    """
    import ray

    from xner_ray.labeling.source import RejectCollector
    from xner_ray.models.classifier import model_labels
    from xner_ray.selectors import make_selector

    langs = sorted({i.lang for i in cfg.inputs})
    todo = sorted(l for l in langs if not store.is_complete(cfg.run_id, l, cfg.round))
    for l in sorted(set(langs) - set(todo)):
        print(f"[label] {cfg.run_id} {l} round {cfg.round}: complete already, skipped", flush=True)
    if not todo:
        yield {}
        return
    selector = make_selector(cfg.selector)
    check_same_tokenizer(list(dict.fromkeys([*cfg.teachers, *(cfg.lang_scorers or [])])))
    meta = {"teachers": cfg.teachers, "weights": cfg.weights, "selector": selector.id,
            "combine": cfg.combine, "lang_scorers": cfg.lang_scorers}
    with contextlib.ExitStack() as stack:
        writers = {l: stack.enter_context(store.round_writer(
            cfg.run_id, l, cfg.round, labels=model_labels(cfg.teachers[0]), meta=dict(meta),
            rows_per_file=cfg.rows_per_file)) for l in todo}
        collector = ray.remote(num_cpus=0)(RejectCollector).remote()
        started = time.time()
        _stream(build_dataset(cfg, collector, langs=set(todo)), writers, selector, collector)
        for l, w in writers.items():
            c = w.meta["counts"]
            c["seconds"] = round(time.time() - started, 1)
            print(f"[label] {l}: {c['sentences']} sentences, {c['entities']} entities, "
                  f"{c['selected']} selected, {c['rejects']} rejects -> round {cfg.round}",
                  flush=True)
        yield writers


def _stream(ds, writers: dict, selector, collector) -> None:
    """Consume the dataset on the driver into the language's writers, counting as it goes."""
    import ray

    for w in writers.values():
        w.meta["counts"] = {"sentences": 0, "entities": 0, "selected": 0, "rejects": 0}
    set_scores = {l: [] for l in writers}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for l, writer in writers.items():
            part = batch.filter(pc.equal(batch.column("lang"), l))
            if not part.num_rows:
                continue
            if selector.scope == "set":
                set_scores[l].append(part.select(list(dict.fromkeys(selector.columns))))
                part = _keep_all(part)  # decided after the whole set is seen
            else:
                part = selector(part)
            _write(writer, part)
            c = writer.meta["counts"]
            c["sentences"] += part.num_rows
            c["entities"] += int(pc.sum(part.column("n_entities")).as_py() or 0)
            c["selected"] += int(pc.sum(part.column("selected").cast(pa.int64())).as_py() or 0)
    for l, sink in ray.get(collector.drain.remote()).items():
        if l in writers:
            writers[l].write_rejects(sink)
            writers[l].meta["counts"]["rejects"] = sink.total
    if selector.scope == "set":
        for l, writer in writers.items():
            writer.meta["counts"]["selected"] = _apply_set_selector(writer, selector,
                                                                    set_scores[l])


def _keep_all(part: pa.Table) -> pa.Table:
    from xner_ray.selectors import KeepAll

    return KeepAll()(part)


def _write(writer, part: pa.Table) -> None:
    writer.write_sentences(part.select(list(SENTENCE_FIELDS)))
    writer.write_pseudo_labels(part.select([*LABEL_FIELDS, "selected", "selector", "weight"]))


def _apply_set_selector(writer, selector, scored: list) -> int:
    """Fit a whole-set selector (e.g. top-rho) on the scores seen, then re-decide the round's
    pseudo-label files one by one before commit (memory: one file at a time)."""
    if not scored:
        return 0
    selector.fit(pa.concat_tables(scored))
    kept = 0

    def decide(table: pa.Table) -> pa.Table:
        nonlocal kept
        table = selector(table)
        kept += int(pc.sum(table.column("selected").cast(pa.int64())).as_py() or 0)
        return table

    writer.rewrite("pseudo_labels", decide)
    return kept
