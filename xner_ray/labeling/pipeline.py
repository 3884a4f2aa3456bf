"""Labeling as an engine plan: the workers read, label, select and write; the driver commits.

    read (one task per file; it writes its rejects) -> SubwordStage (CPU actors)
      -> TeacherStage (GPU or fractional-CPU actors, model loaded once per actor)
      -> SelectStage (row selectors) -> write tasks: Parquet into each language's attempt prefix

The driver gets back file names, row counts and sums, never rows. A whole-set selector
(top-rho) is decided after the pass: exact cut-offs from a distributed sort
(``engine.exact_cutoffs``), then a second pass over the written ``pseudo_labels`` files (only
their score columns) writes the round's ``decisions``. Each (run, language, round) commits
on its own (``Store.commit_round``: files moved into place, the manifest written last); a
complete one is skipped on rerun, an interrupted one is redone from a fresh attempt prefix.
Resources come from the cluster (``cluster.derive_workers``), never from constants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

import pyarrow as pa

from xner_ray.labeling.source import InputSpec

if TYPE_CHECKING:
    from xner_ray import engine

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
    max_length: int = field(default=512, metadata={
        "help": "sub-words per forward; a longer sentence is labeled in overlapping windows "
                "(their count is stored in pseudo_labels.n_windows), never cut"})
    max_words: int = field(default=2048, metadata={"help": "longer sentences are rejected"})
    num_actors: Optional[int] = field(default=None, metadata={"help": "teacher actors"})
    threads: Optional[int] = field(default=None,
                                   metadata={"help": "torch threads per teacher actor (default "
                                                     "from the cluster: 1 on <= 4 CPUs, 2 on "
                                                     "<= 16, else 4; cluster.inference_layout)"})
    use_gpu: Optional[bool] = field(default=None, metadata={"help": "default: if GPUs exist"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile each teacher (dynamic shapes; each actor compiles once at its "
                "first forward; on CPU it needs a C++ compiler)"})
    rows_per_file: int = field(default=65_536, metadata={"help": "rows a write task gathers "
                                                                  "into one Parquet file"})
    sentences_from: Optional[int] = field(default=None, metadata={
        "help": "label the sentences that committed round of the same run stored, instead of "
                "reading `inputs` again (later rounds of RIKD): no sentences or rejects are "
                "written, the store keeps one sentences table per run and language"})
    allow_empty: bool = field(default=False, metadata={
        "help": "commit a language's round even when its inputs hold no usable sentence "
                "(default: that is an error naming the inputs and their rejects)"})
    local: bool = field(default=False, metadata={
        "help": "run the stages in this process instead of on Ray (tests, baselines)"})

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
        if self.sentences_from is not None and not 0 <= self.sentences_from < self.round:
            raise ValueError(f"sentences_from must be an earlier round than round {self.round}, "
                             f"got {self.sentences_from}")
        check_selector(self.selector, self.lang_scorers)  # fail now, not inside the run
        if self.run_id is None:
            key = json.dumps([self.teachers, [dataclasses.asdict(i) for i in self.inputs]])
            self.run_id = "label-" + hashlib.blake2b(key.encode(), digest_size=5).hexdigest()

    def run_config(self) -> dict:
        """What identifies the run (round excluded: rounds of a run share one config)."""
        d = dataclasses.asdict(self)
        d.pop("round"), d.pop("sentences_from")
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
    from xner_ray.cluster import inference_layout

    res = inference_layout(cfg.num_actors, cfg.use_gpu, cfg.threads)
    return dict(concurrency=res.num_workers, min_actors=res.min_workers,
                num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker,
                threads=res.torch_threads)


class SelectStage:
    """Applies a row selector to each batch; a whole-set one marks rows undecided (selected
    false, weight 0, its id) until its ``decisions`` are written after the pass."""

    def __init__(self, spec: str):
        from xner_ray.selectors import make_selector

        self.selector = make_selector(spec)

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.selector.scope == "row":
            return self.selector(table)
        n = table.num_rows
        for name, arr in (("selected", pa.array([False] * n)),
                          ("selector", pa.array([self.selector.id] * n, pa.string())),
                          ("weight", pa.array(np.zeros(n, dtype=np.float32)))):
            table = (table.set_column(table.schema.get_field_index(name), name, arr)
                     if name in table.column_names else table.append_column(name, arr))
        return table


class DecideStage:
    """Whole-set decisions from a fitted selector's cut-offs: rows of the ``decisions`` table."""

    def __init__(self, selector, lang: str):
        self.selector, self.lang = selector, lang

    def __call__(self, table: pa.Table) -> pa.Table:
        out = self.selector(table.select(list(dict.fromkeys(
            ["sent_id", *self.selector.rank_columns]))))
        n = out.num_rows
        return pa.table({"sent_id": out.column("sent_id"), "lang": [self.lang] * n,
                         "policy_p": pa.nulls(n, pa.float32()),
                         "selected": out.column("selected"), "selector": out.column("selector"),
                         "weight": out.column("weight"), "stage": pa.array([0] * n, pa.int32())})


def build_plan(cfg: LabelConfig, inputs: list, sink, rejects,
               stored: Optional["StoredSentences"] = None) -> engine.Plan:
    """The labeling plan for ``inputs`` ((file, InputSpec) pairs), or for the ``stored``
    sentences of an earlier round."""
    from functools import partial

    from xner_ray import engine
    from xner_ray.labeling.source import SENTENCE_COLUMNS, STORED_COLUMNS, read_stored
    from xner_ray.labeling.stages import SubwordStage, TeacherStage

    from xner_ray.cluster import LIGHT_CPUS

    res = _teacher_resources(cfg) if not cfg.local else dict(
        concurrency=1, min_actors=1, num_cpus=1, num_gpus=0, threads=cfg.threads)
    teacher = dict(weights=cfg.weights, student=cfg.student, batch_size=cfg.batch_size,
                   max_length=cfg.max_length, compile=cfg.compile,
                   threads=res["threads"], teacher_id=_teacher_id(cfg), combine=cfg.combine,
                   lang_scorers=cfg.lang_scorers)
    teacher_stage = engine.Stage(TeacherStage, (cfg.teachers,), teacher,
                                 batch_size=cfg.block_rows, num_cpus=res["num_cpus"],
                                 num_gpus=res["num_gpus"], min_actors=res["min_actors"],
                                 max_actors=res["concurrency"], threads=res["threads"] or 0)
    stages = [
        # tokenizing is cheap next to the model: one light actor, more when teachers wait
        engine.Stage(SubwordStage, (cfg.teachers[0], cfg.max_length), batch_size=cfg.block_rows,
                     num_cpus=LIGHT_CPUS / res["concurrency"], max_actors=res["concurrency"]),
        teacher_stage,
        engine.Stage(SelectStage, (cfg.selector,), batch_size=cfg.block_rows,
                     num_cpus=LIGHT_CPUS),
    ]
    if not res["num_gpus"] and not cfg.local:
        # CPU teachers: tokenize, label and select inside each teacher actor (engine.fuse;
        # measured in benchmarks/labeling_throughput.py)
        stages = [engine.fuse(stages, like=teacher_stage)]
    if stored is not None:  # later rounds: (lang, sentences file URI) items
        read, schema = partial(read_stored, rows=cfg.block_rows), STORED_COLUMNS
        items, total = stored.items, stored.total
        langs = ",".join(sorted({lang for lang, _ in stored.items}))
    else:
        read = partial(_read_item, max_words=cfg.max_words, rows=cfg.block_rows,
                       rejects=rejects)
        items, schema, total = inputs, SENTENCE_COLUMNS, expected_sentences(inputs)
        langs = ",".join(sorted({spec.lang for _, spec in inputs}))
    return engine.Plan(items=items, read=read, stages=stages, sink=sink,
                       schema=schema, rows_per_write=cfg.rows_per_file, name="label",
                       read_cpus=LIGHT_CPUS, progress=f"[label] {langs} round {cfg.round}",
                       unit="sentences", total=total)


@dataclass(frozen=True)
class StoredSentences:
    """What a later round labels (``LabelConfig.sentences_from``): the sentences files an
    earlier committed round of the run stored, per language, and their row total."""

    round: int
    files: dict  # {lang: [store path]}
    items: list  # [(lang, URI)]: one read task per file
    total: int

    @classmethod
    def of(cls, store, run_id: str, langs: list, round: int) -> "StoredSentences":
        files, items, total = {}, [], 0
        for lang in langs:
            manifest = store.manifest(run_id, lang, round)
            if manifest is None:
                raise ValueError(f"sentences_from: {round}, but round {round} of "
                                 f"{run_id}/{lang} is not committed in {store.uri}")
            table = manifest["tables"].get("sentences") or {}
            if not table.get("files"):
                raise ValueError(f"sentences_from: {round}, but round {round} of "
                                 f"{run_id}/{lang} stored no sentences")
            files[lang] = [store.path(f) for f in table["files"]]
            items += [(lang, store.to_uri(p)) for p in files[lang]]
            total += int(table.get("rows") or 0)
        return cls(round, files, items, total)


# Inputs up to this size are counted before labeling, for the progress bar's total and ETA.
COUNT_LIMIT_BYTES = 1 << 30


def expected_sentences(inputs: list) -> Optional[int]:
    """Sentences in the local input files (a fast count; rejects included), or None when an
    input is on object storage or the inputs are over ``COUNT_LIMIT_BYTES`` together: the
    progress then shows count and rate without an ETA."""
    import os

    from xner_ray.io.text import count_records
    from xner_ray.io.uri import is_uri

    if any(is_uri(p) for p, _ in inputs):
        return None
    if sum(os.path.getsize(p) for p, _ in inputs) > COUNT_LIMIT_BYTES:
        return None
    return sum(count_records(p, spec.fmt) for p, spec in inputs)


def _read_item(item, *, max_words: int, rows: int, rejects):
    from xner_ray.labeling.source import read_file

    path, spec = item
    return read_file(path, spec, max_words, rows, rejects)


def check_same_tokenizer(models: list[str]) -> None:
    """One sub-word stage feeds every teacher of an ensemble: they must share a tokenizer."""
    if len(models) < 2:
        return
    first = _tokenizer_identity(models[0])
    for m in models[1:]:
        if _tokenizer_identity(m) != first:
            raise ValueError(f"teachers {models[0]} and {m} use different tokenizers; an "
                             "ensemble needs one (label with each separately instead)")


def _tokenizer_identity(model: str) -> dict:
    """What makes two tokenizers the same: vocabulary, normalizer, pre-tokenizer, model and
    post-processor -- not the truncation and padding a training run left switched on in the
    saved file (a trained student's differs from its encoder's in those only)."""
    import json

    from xner_ray.models.classifier import load_tokenizer

    spec = json.loads(load_tokenizer(model).backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return spec


def _teacher_id(cfg: LabelConfig) -> str:
    return "+".join(str(t) for t in cfg.teachers) + f"@round{cfg.round}"


LABEL_TABLES = ("sentences", "pseudo_labels")


@dataclass
class LabeledRound:
    """One language's round of a labeling pass, written but not committed yet: its files
    (under the attempt prefix), row counts and sums -- what the commit needs, no rows."""

    run_id: str
    lang: str
    round: int
    prefix: str
    labels: list
    meta: dict
    started_at: object
    files: dict = field(default_factory=lambda: {})
    rows: dict = field(default_factory=lambda: {})
    counts: dict = field(default_factory=lambda: {"sentences": 0, "entities": 0, "selected": 0,
                                                  "rejects": 0})
    rejects_by_reason: dict = field(default_factory=dict)
    selector: object = None  # the fitted whole-set selector, when the round has one
    # a round that labeled an earlier round's stored sentences (sentences_from): those files
    sentence_files: Optional[list] = None

    def add(self, rec: dict) -> None:
        t = rec["table"]
        self.files.setdefault(t, []).append(rec["path"])
        self.rows[t] = self.rows.get(t, 0) + rec["rows"]
        if t == "pseudo_labels":
            self.counts["sentences"] += rec["rows"]
            self.counts["entities"] += rec.get("entities", 0)
            self.counts["selected"] += rec.get("selected", 0)

    def pairs(self) -> list[tuple[str, str]]:
        """(sentences file, pseudo_labels file) pairs (``store.sink.pair_files``): written
        together, or the stored sentences file a later round's rows came from."""
        from xner_ray.store.sink import pair_files

        sentences = (self.sentence_files if self.sentence_files is not None
                     else self.files.get("sentences", []))
        return pair_files(sentences, self.files.get("pseudo_labels", []))

    def commit(self, store) -> dict:
        self.meta["counts"] = dict(self.counts)
        return store.commit_round(self.run_id, self.lang, self.round, self.files,
                                  labels=self.labels, meta=self.meta,
                                  started_at=self.started_at, rows=self.rows,
                                  rejects_by_reason=self.rejects_by_reason)


def label(cfg: LabelConfig, *, own_run: bool = True) -> dict:
    """Run the labeling job; returns per-language counts. Needs a connected Ray cluster
    (unless ``cfg.local``).

    ``own_run=False`` when a larger job (TSL, RIKD) owns the run id: that job records the run
    and its status; the labeling only adds its rounds.
    """
    from xner_ray.store import Store

    store = Store(cfg.store)
    if own_run:
        store.record_run(cfg.run_id, "label", cfg.run_config())
    try:
        with label_rounds(cfg, store) as rounds:
            summary = {l: r.counts for l, r in rounds.items()}
        if summary:
            store.update_run(cfg.run_id, round=cfg.round, metrics=summary)
        if own_run:  # a round committed just before a kill: its counts, on the resume
            store.backfill_metrics(cfg.run_id, "counts")
    except BaseException:
        if own_run:
            store.update_run(cfg.run_id, status="failed")
        raise
    if own_run:
        store.update_run(cfg.run_id, status="succeeded")
    return summary


@contextlib.contextmanager
def label_rounds(cfg: LabelConfig, store) -> Iterator[dict]:
    """Label every language of ``cfg`` whose round is not complete yet and yield
    {lang: LabeledRound}; leaving the block commits each round, an exception commits none.

    Inside the block a caller may read the round's files (``r.files``, ``r.pairs()``), train
    on them and add tables under ``r.prefix`` (RIKD's decisions) with ``r.add``. Languages
    complete already are skipped (and absent from the dict).
    """
    from xner_ray import engine
    from xner_ray.labeling.source import resolve_inputs
    from xner_ray.models.classifier import model_labels
    from xner_ray.selectors import make_selector
    from xner_ray.store.sink import RejectFiles, RoundSink
    from xner_ray.store.store import utcnow

    langs = sorted({i.lang for i in cfg.inputs})
    todo = sorted(l for l in langs if not store.is_complete(cfg.run_id, l, cfg.round))
    for l in sorted(set(langs) - set(todo)):
        logger.info("%s %s round %d: complete already, skipped", cfg.run_id, l, cfg.round)
    if not todo:
        yield {}
        return
    selector = make_selector(cfg.selector)
    check_same_tokenizer(list(dict.fromkeys([*cfg.teachers, *(cfg.lang_scorers or [])])))
    stored = None
    if cfg.sentences_from is not None:  # the run's stored sentences, not the inputs again
        stored = StoredSentences.of(store, cfg.run_id, todo, cfg.sentences_from)
        inputs = []  # they only name the languages
    else:
        inputs = resolve_inputs([i for i in cfg.inputs if i.lang in todo])
    labels = model_labels(cfg.teachers[0])
    meta = {"teachers": cfg.teachers, "weights": cfg.weights, "selector": selector.id,
            "combine": cfg.combine, "lang_scorers": cfg.lang_scorers,
            **({"sentences_round": stored.round} if stored else {})}
    started, t0 = utcnow(), time.time()
    prefixes: dict = {}
    try:  # every language's lease and attempt are given back when anything fails
        for l in todo:
            prefixes[l] = store.attempt_prefix(cfg.run_id, l, cfg.round)
        rounds = {l: LabeledRound(cfg.run_id, l, cfg.round, prefixes[l], labels, dict(meta),
                                  started, sentence_files=stored.files[l] if stored else None)
                  for l in todo}
        sink = RoundSink(store.uri, prefixes, ("pseudo_labels",) if stored else LABEL_TABLES,
                         labels=labels)
        records = engine.run(build_plan(cfg, inputs, sink, RejectFiles(store.uri, prefixes),
                                        stored), local=cfg.local)
        for rec in records:
            rounds[rec["lang"]].add(rec)
        for r in rounds.values():
            _add_rejects(store, r)
            if not r.rows.get("pseudo_labels") and not cfg.allow_empty:
                paths = (stored.files[r.lang] if stored else
                         sorted({p for p, spec in inputs if spec.lang == r.lang}))
                raise ValueError(f"no usable sentence for {r.lang} in {', '.join(paths)} "
                                 f"(rejects: {r.rejects_by_reason or 'none'}); nothing committed "
                                 "(allow_empty: true commits an empty round)")
            if selector.scope == "set":
                _decide_set(cfg, store, r, make_selector(cfg.selector))  # one per language
            r.counts["seconds"] = round(time.time() - t0, 1)
            logger.info("%s round %d: %d sentences, %d entities, %d selected, %d rejects",
                        r.lang, cfg.round, r.counts["sentences"], r.counts["entities"],
                        r.counts["selected"], r.counts["rejects"])
        yield rounds
    except BaseException:
        for l in prefixes:
            store.abort_round(cfg.run_id, l, cfg.round)
        raise
    for r in rounds.values():
        r.commit(store)


def _add_rejects(store, r: LabeledRound) -> None:
    """The rejects files the read tasks wrote under the round's prefix, counted from footers."""
    import pyarrow.fs as pafs

    from xner_ray.store.sink import reject_counts

    base = f"{r.prefix}/rejects"
    if store.fs.get_file_info(base).type != pafs.FileType.Directory:
        return
    for info in store.fs.get_file_info(pafs.FileSelector(base)):
        counts = reject_counts(store.fs, info.path)
        r.files.setdefault("rejects", []).append(info.path)
        r.rows["rejects"] = r.rows.get("rejects", 0) + _file_rows(store.fs, info.path)
        for reason, n in counts.items():
            r.rejects_by_reason[reason] = r.rejects_by_reason.get(reason, 0) + n
    r.counts["rejects"] = sum(r.rejects_by_reason.values())
    r.meta["rejects_seen"] = dict(r.rejects_by_reason)


def _file_rows(fs, path: str) -> int:
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _decide_set(cfg: LabelConfig, store, r: LabeledRound, selector) -> None:
    """Whole-set selection of one language's round, without the rows on the driver: exact
    cut-offs from a distributed sort, then a pass that writes the ``decisions`` table."""
    from xner_ray import engine
    from xner_ray.store.sink import RoundSink

    files = r.files.get("pseudo_labels", [])
    n = r.rows.get("pseudo_labels", 0)
    cutoffs = engine.exact_cutoffs(files, store.fs, selector, n, local=cfg.local)
    selector.set_cutoffs(cutoffs)
    r.selector = selector
    r.meta.update(selector_spec=cfg.selector, selector_cutoffs=[list(c) for c in cutoffs])
    sink = RoundSink(store.uri, {r.lang: r.prefix}, ("decisions",))
    cols = list(dict.fromkeys(["sent_id", *selector.rank_columns]))
    records = engine.map_files(files, store.fs, [engine.Stage(DecideStage, (selector, r.lang))],
                               sink, columns=cols, local=cfg.local)
    r.counts["selected"] = 0
    for rec in records:
        r.add(rec)
        r.counts["selected"] += rec.get("selected", 0)
