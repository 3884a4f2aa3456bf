"""The projection pipelines as engine plans: the workers read, tag, align, filter and write;
the driver commits.

    read (one task per corpus; it writes its rejects) -> SourceNerStage (actors: the English
        teacher) -> AlignStage (actors: similarity aligner or alignment model, then the
        Sec. 4.3 filters) -> write tasks: ``projections`` Parquet into each target language's
        attempt prefix -> driver: ``Store.commit_round`` per language from the records

and, to train the alignment model, read -> ExampleStage (actors) -> write tasks: Parquet parts
of alignment examples under a folder or URI (:func:`build_example_file`).

Ray is wired in ``xner_ray.engine`` only; here are plans of plain callables. Resources come
from the cluster (``cluster.inference_layout``): the two model pools share the planned actors'
CPU / GPU budget (an actor asking for a whole CPU would starve the reads on a small machine,
PLATFORM.md). Each (run, target language, round) commits on its own: a complete one is skipped
on rerun, an interrupted one is redone from a fresh attempt prefix. No row reaches the driver.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Optional

import pyarrow.compute as pc

from xner_ray.methods.projection.corpus import ParallelSpec, parse_corpora

if TYPE_CHECKING:
    from xner_ray import engine

logger = logging.getLogger(__name__)

PROJECTION_FIELDS = ("pair_id", "src_tokens", "tgt_tokens", "src_entities", "tgt_spans",
                     "alignment_score", "status", "reason", "tgt_tags", "ref", "aligner")
KNOBS = ("batch_size", "block_rows", "max_length", "max_words", "types", "num_actors",
         "threads", "use_gpu", "rows_per_file", "local")


@dataclass
class ProjectionConfig:
    """One projection run over one or more parallel corpora (one target language each)."""

    corpora: list = field(metadata={"help": f"parallel corpora: {ParallelSpec.HELP}"})
    teacher: str = field(metadata={"help": "source-language NER model folder"})
    aligner: dict = field(metadata={"help": "aligner spec: {kind: similarity, model, layer, "
                                            "method, max_gap} or {kind: model, path, min_score}"})
    store: str = field(metadata={"help": "store root folder"})
    run_id: str = field(metadata={"help": "run id in the store"})
    round: int = field(default=0, metadata={"help": "round the projections are written to"})
    batch_size: int = field(default=32, metadata={"help": "rows per forward pass"})
    block_rows: int = field(default=64, metadata={"help": "pairs per actor call"})
    max_length: int = field(default=256, metadata={"help": "sub-word cap per model input"})
    max_words: int = field(default=2048, metadata={"help": "longer sides are rejected"})
    types: Optional[list] = field(default=None,
                                  metadata={"help": "entity types to project (default: all)"})
    num_actors: Optional[int] = field(default=None, metadata={"help": "actors per model pool"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch threads per actor"})
    use_gpu: Optional[bool] = field(default=None, metadata={"help": "default: if GPUs exist"})
    rows_per_file: int = field(default=100_000, metadata={"help": "rows a write task gathers "
                                                                   "into one Parquet file"})
    local: bool = field(default=False, metadata={
        "help": "run the stages in this process instead of on Ray (tests, baselines)"})

    def __post_init__(self) -> None:
        from xner_ray.methods.projection.stages import ALIGNERS

        self.corpora = parse_corpora(self.corpora)
        if self.aligner.get("kind") not in ALIGNERS:
            raise ValueError(f"aligner kind must be one of {ALIGNERS}, got {self.aligner!r}")
        if self.round < 0 or self.batch_size < 1 or self.block_rows < 1 or self.max_length < 8:
            raise ValueError("round >= 0, batch_size >= 1, block_rows >= 1 and max_length >= 8 "
                             "are required")
        if self.types is not None and (not self.types or not all(isinstance(t, str)
                                                                 for t in self.types)):
            raise ValueError(f"types must be a non-empty list of entity types, got {self.types!r}")


def stage_resources(num_actors: Optional[int], use_gpu: Optional[bool], threads: Optional[int],
                    pools: int, *, local: bool = False) -> dict:
    """Actor layout when ``pools`` model pools share the actors ``cluster.inference_layout``
    plans (each pool gets the planned actors, each actor 1/``pools`` of their CPUs and GPU
    share). ``local``: one in-process instance per stage."""
    if local:
        return dict(concurrency=1, min_actors=1, num_cpus=1, num_gpus=0, threads=threads)
    from xner_ray.cluster import inference_layout

    res = inference_layout(num_actors, use_gpu, threads)
    return dict(concurrency=res.num_workers, min_actors=res.min_workers,
                num_cpus=math.floor(100 * res.cpus_per_worker / pools) / 100,
                num_gpus=res.gpus_per_worker / pools, threads=res.torch_threads)


def build_plan(cfg: ProjectionConfig, corpora: list[ParallelSpec], sink, rejects) -> "engine.Plan":
    """The projection plan: one read task per corpus (it writes its rejects through
    ``rejects``) -> source NER -> align + filter -> ``sink``."""
    from functools import partial

    from xner_ray import engine
    from xner_ray.cluster import LIGHT_CPUS
    from xner_ray.methods.projection.corpus import PAIR_COLUMNS, check_corpus, read_corpus
    from xner_ray.methods.projection.stages import AlignStage, SourceNerStage

    for spec in corpora:
        check_corpus(spec)
    res = stage_resources(cfg.num_actors, cfg.use_gpu, cfg.threads, pools=2, local=cfg.local)
    pool = dict(batch_size=cfg.block_rows, num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
                min_actors=res["min_actors"], max_actors=res["concurrency"])
    aligner = {**cfg.aligner, "batch_size": cfg.batch_size, "max_length": cfg.max_length}
    stages = [
        engine.Stage(SourceNerStage, (cfg.teacher,),
                     dict(batch_size=cfg.batch_size, max_length=cfg.max_length, types=cfg.types,
                          threads=res["threads"]), **pool),
        engine.Stage(AlignStage, (aligner,), dict(threads=res["threads"]), **pool),
    ]
    read = partial(read_corpus, max_words=cfg.max_words, rows_per_block=cfg.block_rows,
                   with_links=False, rejects=rejects)
    return engine.Plan(items=list(corpora), read=read, stages=stages, sink=sink,
                       schema=PAIR_COLUMNS, rows_per_write=cfg.rows_per_file, name="project",
                       read_cpus=LIGHT_CPUS, progress="[project] " + ",".join(
                           sorted({c.lang for c in corpora})),
                       unit="pairs")


@dataclass
class ProjectionSink:
    """A ``store.sink.RoundSink`` writing ``projections`` whose records also carry, per
    language, the status counts and the number of source entities of the rows written (what
    the round's counts need; still no rows back to the driver)."""

    rounds: Any  # store.sink.RoundSink

    def write(self, blocks) -> list[dict]:
        import pyarrow as pa

        blocks = [b for b in blocks if b.num_rows]
        records = self.rounds.write(blocks)
        if not records:
            return records
        table = pa.concat_tables([b.select(["lang", "status", "src_entities"]) for b in blocks])
        for rec in records:
            part = table.filter(pc.equal(table.column("lang"), rec["lang"]))
            rec["status"] = dict(collections.Counter(part.column("status").to_pylist()))
            rec["src_entities"] = int(pc.sum(pc.list_value_length(part.column("src_entities")))
                                      .as_py() or 0)
        return records


def project(cfg: ProjectionConfig, store) -> dict:
    """Project every corpus whose round is not complete yet; returns {lang: counts} (counts of
    the committed rounds for languages done before). Needs a connected Ray cluster (unless
    ``cfg.local``).

    The workers read, tag, align, filter and write each language's ``projections`` and
    rejects into the round's attempt prefix; the driver gets file names and counts back and
    commits each language's round on its own (``Store.commit_round``)."""
    from xner_ray import engine
    from xner_ray.models.classifier import model_labels
    from xner_ray.store.sink import RejectFiles, RoundSink
    from xner_ray.store.store import utcnow

    todo = [c for c in cfg.corpora if not store.is_complete(cfg.run_id, c.lang, cfg.round)]
    done = {c.lang: (store.manifest(cfg.run_id, c.lang, cfg.round)["meta"].get("counts"))
            for c in cfg.corpora if c not in todo}
    for lang in done:
        print(f"[project] {cfg.run_id} {lang} round {cfg.round}: complete already, skipped",
              flush=True)
    if not todo:
        return done
    meta = {"teacher": cfg.teacher, "teacher_labels": model_labels(cfg.teacher),
            "aligner": cfg.aligner, "types": cfg.types}
    started, t0 = utcnow(), time.time()
    prefixes: dict[str, str] = {}
    committed: set[str] = set()
    try:
        for c in todo:
            prefixes[c.lang] = store.attempt_prefix(cfg.run_id, c.lang, cfg.round)
        sink = ProjectionSink(RoundSink(store.uri, prefixes, ("projections",)))
        records = engine.run(build_plan(cfg, todo, sink, RejectFiles(store.uri, prefixes)),
                             local=cfg.local)
        rounds = {c.lang: _ProjectedRound(c) for c in todo}
        for rec in records:
            rounds[rec["lang"]].add(rec)
        out = {}
        for c in todo:
            r = rounds[c.lang]
            r.add_rejects(store, prefixes[c.lang])
            r.counts["seconds"] = round(time.time() - t0, 1)
            round_meta = {**meta, "corpus": dataclasses.asdict(c), "counts": r.counts}
            if r.rejects_by_reason:
                round_meta["rejects_seen"] = dict(r.rejects_by_reason)
            store.commit_round(cfg.run_id, c.lang, cfg.round, r.files, labels=None,
                               meta=round_meta, started_at=started, rows=r.rows,
                               rejects_by_reason=r.rejects_by_reason)
            committed.add(c.lang)
            s = r.counts
            print(f"[project] {c.lang}: {s['pairs']} pairs, kept {s['status'].get('ok', 0)}, "
                  f"dropped {json.dumps({k: v for k, v in s['status'].items() if k != 'ok'})}, "
                  f"{s['rejects']} rejects -> {cfg.run_id} round {cfg.round}", flush=True)
            out[c.lang] = r.counts
    except BaseException:
        for lang in set(prefixes) - committed:  # nothing of the attempt becomes visible
            try:
                store.abort_round(cfg.run_id, lang, cfg.round)
            except Exception:  # noqa: BLE001 - the original exception matters more
                logger.exception("aborting %s %s round %d", cfg.run_id, lang, cfg.round)
        raise
    return {**done, **out}


@dataclass
class _ProjectedRound:
    """One language's round as the records describe it: files, row counts, counts."""

    corpus: ParallelSpec
    files: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    counts: dict = field(default_factory=lambda: {"pairs": 0, "status": {}, "src_entities": 0,
                                                  "rejects": 0})
    rejects_by_reason: dict = field(default_factory=dict)

    def add(self, rec: dict) -> None:
        t = rec["table"]
        self.files.setdefault(t, []).append(rec["path"])
        self.rows[t] = self.rows.get(t, 0) + rec["rows"]
        self.counts["pairs"] += rec["rows"]
        self.counts["src_entities"] += rec.get("src_entities", 0)
        for status, n in rec.get("status", {}).items():
            self.counts["status"][status] = self.counts["status"].get(status, 0) + n

    def add_rejects(self, store, prefix: str) -> None:
        """The rejects files the read task wrote under the round's prefix, counted from their
        footers (exact counts per reason, even beyond the rejects kept as rows)."""
        import pyarrow.fs as pafs

        from xner_ray.store.sink import file_stats, reject_counts

        base = f"{prefix}/rejects"
        if store.fs.get_file_info(base).type != pafs.FileType.Directory:
            return
        for info in store.fs.get_file_info(pafs.FileSelector(base)):
            self.files.setdefault("rejects", []).append(info.path)
            self.rows["rejects"] = (self.rows.get("rejects", 0)
                                    + file_stats(store.fs, info.path)["rows"])
            for reason, n in reject_counts(store.fs, info.path).items():
                self.rejects_by_reason[reason] = self.rejects_by_reason.get(reason, 0) + n
        self.counts["rejects"] = sum(self.rejects_by_reason.values())


@dataclass
class ExampleConfig:
    """Alignment-example building (Li et al. Sec. 4.2, sources of ``projection.examples``)."""

    sources: list = field(default_factory=lambda: ["simalign", "identical", "gold_links"],
                          metadata={"help": "simalign | identical | gold_links (any subset)"})
    negative_ratio: float = field(default=0.25, metadata={"help": "share of negatives (paper 25%)"})
    max_per_pair: int = field(default=4, metadata={"help": "positives per pair (names first)"})
    max_pairs: Optional[int] = field(default=None,
                                     metadata={"help": "pairs read per corpus (default: all)"})
    max_examples: int = field(default=30_000, metadata={"help": "stop after N (paper: 30K)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def __post_init__(self) -> None:
        from xner_ray.methods.projection.examples import check_options

        check_options(self.sources, self.negative_ratio, self.max_per_pair)
        if self.max_examples < 1 or (self.max_pairs is not None and self.max_pairs < 1):
            raise ValueError("max_examples and max_pairs must be >= 1")


def _min_limit(a: Optional[int], b: Optional[int]) -> Optional[int]:
    limits = [x for x in (a, b) if x is not None]
    return min(limits) if limits else None


EXAMPLE_ROWS_PER_FILE = 65_536
PARTS_FILE = "parts.json"


@dataclass
class ExampleSink:
    """Write tasks write alignment examples as plain Parquet parts (``stages.EXAMPLE_COLUMNS``)
    under ``root`` (a folder or a pyarrow URI) and return one record per part: its path, rows
    and counts per ``positive|negative:source:kind``."""

    root: str

    def write(self, blocks) -> list[dict]:
        import uuid

        import pyarrow as pa
        import pyarrow.parquet as pq

        from xner_ray.methods.projection.stages import EXAMPLE_COLUMNS
        from xner_ray.store.sink import open_fs

        blocks = [b for b in blocks if b.num_rows]
        if not blocks:
            return []
        table = pa.concat_tables([b.select(EXAMPLE_COLUMNS.names).cast(EXAMPLE_COLUMNS)
                                  for b in blocks])
        fs, base = open_fs(self.root)
        path = f"{base}/part-{uuid.uuid4().hex[:16]}.parquet"
        fs.create_dir(base, recursive=True)
        pq.write_table(table, path, filesystem=fs, compression="zstd")
        counts = collections.Counter(
            f"{'negative' if neg else 'positive'}:{s}:{kind}" for s, kind, neg in
            zip(*(table.column(c).to_pylist() for c in ("source", "kind", "negative"))))
        return [{"path": path, "rows": table.num_rows, "counts": dict(counts)}]


def build_example_file(corpora: list[ParallelSpec], ex: ExampleConfig, dest, *,
                       similarity: dict, knobs: Optional[dict] = None) -> dict:
    """Build alignment examples into ``dest``, a folder (local path or URI): write tasks write
    Parquet parts (``stages.EXAMPLE_COLUMNS``) there, the read tasks the corpora's rejects under
    ``dest/_rejects/<lang>``, and the driver lists the parts in ``dest/parts.json`` (what
    :func:`example_parts` reads back). At most ``ex.max_examples`` examples: the pipeline stops
    once it has them. Returns counts per source / kind / negative, the read rejects per language
    and the parts. Needs a connected Ray cluster."""
    import pyarrow.fs as pafs

    from xner_ray import engine
    from xner_ray.cluster import LIGHT_CPUS
    from xner_ray.methods.projection.corpus import PAIR_COLUMNS, check_corpus, read_corpus
    from xner_ray.methods.projection.stages import ExampleStage
    from xner_ray.store.sink import RejectFiles, open_fs, reject_counts, write_text

    k: dict[str, Any] = {"block_rows": 64, "max_words": 2048, "batch_size": 32,
                         "max_length": 256, **(knobs or {})}
    corpora = [dataclasses.replace(c, limit=_min_limit(c.limit, ex.max_pairs)) for c in corpora]
    for spec in corpora:
        check_corpus(spec)
    dest = str(dest)
    fs, base = open_fs(dest)
    if fs.get_file_info(base).type == pafs.FileType.File:
        fs.delete_file(base)  # an examples file of an earlier version
    fs.create_dir(base, recursive=True)
    fs.delete_dir_contents(base, missing_dir_ok=True)  # parts of an earlier, killed build
    reject_dirs = {c.lang: f"{base}/_rejects/{c.lang}" for c in corpora}
    res = stage_resources(k.get("num_actors"), k.get("use_gpu"), k.get("threads"), pools=1)
    stage = engine.Stage(ExampleStage, kwargs=dict(
        sources=ex.sources, negative_ratio=ex.negative_ratio, max_per_pair=ex.max_per_pair,
        seed=ex.seed, threads=res["threads"],
        similarity={**similarity, "batch_size": k["batch_size"], "max_length": k["max_length"]}),
        batch_size=k["block_rows"], num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
        min_actors=res["min_actors"], max_actors=res["concurrency"])
    read = partial(read_corpus, max_words=k["max_words"], rows_per_block=k["block_rows"],
                   with_links=True, rejects=RejectFiles(dest, reject_dirs))
    plan = engine.Plan(items=corpora, read=read, stages=[stage], sink=ExampleSink(dest),
                       schema=PAIR_COLUMNS, rows_per_write=EXAMPLE_ROWS_PER_FILE,
                       name="examples", read_cpus=LIGHT_CPUS)
    records = _run_limited(plan, ex.max_examples)
    parts = sorted(r["path"] for r in records)
    _remove_unreported(fs, base, set(parts))
    counts: collections.Counter = collections.Counter()
    for r in records:
        counts["examples"] += r["rows"]
        counts.update(r["counts"])
    rejects: dict[str, dict] = {}
    for lang, folder in reject_dirs.items():
        if fs.get_file_info(f"{folder}/rejects").type != pafs.FileType.Directory:
            continue
        for info in fs.get_file_info(pafs.FileSelector(f"{folder}/rejects")):
            got = rejects.setdefault(lang, {})
            for reason, n in reject_counts(fs, info.path).items():
                got[reason] = got.get(reason, 0) + n
    if not counts["examples"]:
        raise ValueError(f"no alignment examples from {[c.path for c in corpora]} with sources "
                         f"{ex.sources} (rejects: {rejects})")
    write_text(_join(dest, PARTS_FILE), json.dumps(
        {"parts": [p.rsplit("/", 1)[-1] for p in parts], "rows": counts["examples"]}))
    return {"counts": dict(sorted(counts.items())), "rejects": rejects,
            "parts": [_join(dest, p.rsplit("/", 1)[-1]) for p in parts]}


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _run_limited(plan, limit: Optional[int]) -> list[dict]:
    """``engine.run(plan)`` with at most ``limit`` rows reaching the sink (Ray Data's limit:
    upstream tasks stop once the limit is reached)."""
    from xner_ray import engine

    if limit is None:
        return engine.run(plan)
    ds = engine.dataset(plan.items, plan.read, schema=plan.schema, read_cpus=plan.read_cpus)
    ds = engine._apply_stages(ds, plan.stages).limit(limit)
    return engine.write(ds, plan.sink, rows_per_write=plan.rows_per_write)


def _remove_unreported(fs, base: str, parts: set) -> None:
    """Parts a failed (then retried) write task left behind: not the build's."""
    import pyarrow.fs as pafs

    for info in fs.get_file_info(pafs.FileSelector(base)):
        if (info.type == pafs.FileType.File and info.base_name.startswith("part-")
                and info.path not in parts):
            fs.delete_file(info.path)


def example_parts(examples) -> tuple[object, list[str]]:
    """(filesystem, part paths) of alignment examples built by :func:`build_example_file`:
    ``examples`` is its folder (local path or URI; its ``parts.json`` lists the parts) or a
    list of part paths / URIs."""
    from xner_ray.store.sink import open_fs, read_text

    if isinstance(examples, (list, tuple)):
        if not examples:
            raise ValueError("no alignment example parts given")
        fs = open_fs(str(examples[0]))[0]
        return fs, [open_fs(str(p))[1] for p in examples]
    folder = str(examples)
    fs, base = open_fs(folder)
    try:
        listed = json.loads(read_text(_join(folder, PARTS_FILE)))["parts"]
    except FileNotFoundError:
        raise ValueError(f"{folder}: no {PARTS_FILE}; build the alignment examples there first "
                         "(build_example_file)") from None
    return fs, [f"{base}/{name}" for name in listed]
