"""Wires the projection stages into Ray Data and streams the results into the store.

    read (one task per corpus) -> SourceNerStage (actor pool: the English teacher)
        -> AlignStage (actor pool: similarity aligner or alignment model, then the Sec. 4.3
           filters) -> driver: one RoundWriter per target language -> ``projections``

and, to train the alignment model, read -> ExampleStage (actor pool) -> one Parquet file.

Resources come from the cluster (``cluster.derive_workers``): the two model pools share each
worker's CPU budget (on 2 CPUs, 0.5 CPU per actor and 0.25 per read task -- an actor asking for
a whole CPU would starve the reads, PLATFORM.md). Each (run, target language, round) commits
atomically: a complete one is skipped on rerun, an interrupted one is redone cleanly.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pyarrow.compute as pc

from xner_ray.methods.projection.corpus import ParallelSpec, parse_corpora

logger = logging.getLogger(__name__)

PROJECTION_FIELDS = ("pair_id", "src_tokens", "tgt_tokens", "src_entities", "tgt_spans",
                     "alignment_score", "status", "reason", "tgt_tags", "ref", "aligner")
KNOBS = ("batch_size", "block_rows", "max_length", "max_words", "types", "num_actors",
         "threads", "use_gpu", "rows_per_file")


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
    rows_per_file: int = field(default=100_000, metadata={"help": "Parquet rotation"})

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
                    pools: int) -> dict:
    """Actor layout when ``pools`` model pools share the workers ``derive_workers`` sizes."""
    from xner_ray.cluster import derive_workers

    res = derive_workers(num_actors, use_gpu)
    cpus = res.cpus_per_worker / pools
    return dict(concurrency=res.num_workers, num_cpus=cpus,
                num_gpus=(1.0 / pools) if res.use_gpu else 0,
                threads=threads or max(1, int(cpus)))


def build_dataset(cfg: ProjectionConfig, collector, corpora: list[ParallelSpec]):
    """The lazy Ray Data pipeline of the projection (read -> source NER -> align + filter)."""
    import ray
    from ray.data import ActorPoolStrategy

    from xner_ray.methods.projection.corpus import make_datasource
    from xner_ray.methods.projection.stages import AlignStage, SourceNerStage

    res = stage_resources(cfg.num_actors, cfg.use_gpu, cfg.threads, pools=2)

    def pool() -> dict:
        return dict(batch_size=cfg.block_rows, batch_format="pyarrow",
                    compute=ActorPoolStrategy(size=res["concurrency"]), num_cpus=res["num_cpus"],
                    num_gpus=res["num_gpus"])

    ds = ray.data.read_datasource(make_datasource(corpora, collector=collector,
                                                  max_words=cfg.max_words,
                                                  rows_per_block=cfg.block_rows), num_cpus=0.25)
    ds = ds.map_batches(SourceNerStage, fn_constructor_args=(cfg.teacher,),
                        fn_constructor_kwargs=dict(batch_size=cfg.batch_size,
                                                   max_length=cfg.max_length, types=cfg.types,
                                                   threads=res["threads"]), **pool())
    aligner = {**cfg.aligner, "batch_size": cfg.batch_size, "max_length": cfg.max_length}
    return ds.map_batches(AlignStage, fn_constructor_args=(aligner,),
                          fn_constructor_kwargs=dict(threads=res["threads"]), **pool())


def project(cfg: ProjectionConfig, store) -> dict:
    """Project every corpus whose round is not complete yet; returns {lang: counts} (counts of
    the committed rounds for languages done before). Needs a connected Ray cluster."""
    import ray

    from xner_ray.labeling.source import RejectCollector
    from xner_ray.models.classifier import model_labels

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
    started = time.time()
    with contextlib.ExitStack() as stack:
        writers = {c.lang: stack.enter_context(store.round_writer(
            cfg.run_id, c.lang, cfg.round, meta={**meta, "corpus": dataclasses.asdict(c)},
            rows_per_file=cfg.rows_per_file)) for c in todo}
        collector = ray.remote(num_cpus=0)(RejectCollector).remote()
        _stream(build_dataset(cfg, collector, todo), writers, collector)
        for lang, w in writers.items():
            c = w.meta["counts"]
            c["seconds"] = round(time.time() - started, 1)
            print(f"[project] {lang}: {c['pairs']} pairs, kept {c['status'].get('ok', 0)}, "
                  f"dropped {json.dumps({k: v for k, v in c['status'].items() if k != 'ok'})}, "
                  f"{c['rejects']} rejects -> {cfg.run_id} round {cfg.round}", flush=True)
    return {**done, **{lang: w.meta["counts"] for lang, w in writers.items()}}


def _stream(ds, writers: dict, collector) -> None:
    import ray

    for w in writers.values():
        w.meta["counts"] = {"pairs": 0, "status": {}, "src_entities": 0, "rejects": 0}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for lang, writer in writers.items():
            part = batch.filter(pc.equal(batch.column("lang"), lang))
            if not part.num_rows:
                continue
            writer.write_projections(part.select(list(PROJECTION_FIELDS)))
            c = writer.meta["counts"]
            c["pairs"] += part.num_rows
            c["src_entities"] += int(pc.sum(pc.list_value_length(part.column("src_entities")))
                                     .as_py() or 0)
            for status, n in collections.Counter(part.column("status").to_pylist()).items():
                c["status"][status] = c["status"].get(status, 0) + n
    for lang, sink in ray.get(collector.drain.remote()).items():
        if lang in writers:
            writers[lang].write_rejects(sink)
            writers[lang].meta["counts"]["rejects"] = sink.total


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


def build_example_file(corpora: list[ParallelSpec], ex: ExampleConfig, dest: Path, *,
                       similarity: dict, knobs: Optional[dict] = None) -> dict:
    """Stream alignment examples into ``dest`` (Parquet, ``stages.EXAMPLE_COLUMNS``); returns
    counts per source / kind / negative and the read rejects. Needs a connected Ray cluster."""
    import pyarrow.parquet as pq
    import ray
    from ray.data import ActorPoolStrategy

    from xner_ray.labeling.source import RejectCollector
    from xner_ray.methods.projection.corpus import make_datasource
    from xner_ray.methods.projection.stages import EXAMPLE_COLUMNS, ExampleStage

    k: dict[str, Any] = {"block_rows": 64, "max_words": 2048, "batch_size": 32,
                         "max_length": 256, **(knobs or {})}
    corpora = [dataclasses.replace(c, limit=_min_limit(c.limit, ex.max_pairs)) for c in corpora]
    res = stage_resources(k.get("num_actors"), k.get("use_gpu"), k.get("threads"), pools=1)
    collector = ray.remote(num_cpus=0)(RejectCollector).remote()
    ds = ray.data.read_datasource(make_datasource(corpora, collector=collector,
                                                  max_words=k["max_words"],
                                                  rows_per_block=k["block_rows"],
                                                  with_links=True), num_cpus=0.25)
    ds = ds.map_batches(ExampleStage, fn_constructor_kwargs=dict(
        sources=ex.sources, negative_ratio=ex.negative_ratio, max_per_pair=ex.max_per_pair,
        seed=ex.seed, threads=res["threads"],
        similarity={**similarity, "batch_size": k["batch_size"], "max_length": k["max_length"]}),
        batch_size=k["block_rows"], batch_format="pyarrow",
        compute=ActorPoolStrategy(size=res["concurrency"]), num_cpus=res["num_cpus"],
        num_gpus=res["num_gpus"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    counts: collections.Counter = collections.Counter()
    with pq.ParquetWriter(dest, EXAMPLE_COLUMNS, compression="zstd") as out:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch = batch.slice(0, ex.max_examples - counts["examples"])
            out.write_table(batch.select(EXAMPLE_COLUMNS.names).cast(EXAMPLE_COLUMNS))
            counts["examples"] += batch.num_rows
            for s, kind, neg in zip(*(batch.column(c).to_pylist()
                                      for c in ("source", "kind", "negative"))):
                counts[f"{'negative' if neg else 'positive'}:{s}:{kind}"] += 1
            if counts["examples"] >= ex.max_examples:
                break
    rejects = {lang: dict(sink.counts) for lang, sink in
               ray.get(collector.drain.remote()).items()}
    if not counts["examples"]:
        raise ValueError(f"no alignment examples from {[c.path for c in corpora]} with sources "
                         f"{ex.sources} (rejects: {rejects})")
    return {"counts": dict(sorted(counts.items())), "rejects": rejects}
