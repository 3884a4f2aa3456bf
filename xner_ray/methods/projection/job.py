"""Entity projection on parallel corpora (Li et al. 2021), for one or many target languages.

The pipeline of the paper's Fig. 2: (1) an English NER teacher (given, or trained first);
(2) it tags the English side of each parallel corpus; (3) an entity aligner finds each English
entity in the target sentence -- the paper's alignment model (``query [SEP] target`` token
classification, trained here on examples built from the corpus itself, Sec. 4.2) or the
training-free similarity aligner (SimAlign-style baseline) -- and the Sec. 4.3 filters drop
pairs with unmapped, overlapping or inconsistent entities; (4) a target model is fine-tuned
from the English teacher on the kept projections, lower ``freeze_layers`` layers frozen, with
the re-weighted loss CE x (1 + p_t)^gamma (Sec. 4.3); (5) target dev F1 is reported (never used
for any choice) next to the teacher's direct transfer.

Every projection lands in the store's ``projections`` table (status and reason per pair), so
``xner sql --store DIR --file sql/projection_status.sql`` shows the yield per filter. Resumable:
a trained teacher / aligner is reused, complete projection rounds are skipped, a target model
with its summary written is reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa

from xner_ray.methods.common import ensure_teacher, run_recorded, write_json
from xner_ray.methods.projection.corpus import parse_corpora

ALIGNERS = ("similarity", "model")
SIMILARITY_KEYS = ("model", "layer", "method", "max_gap")
SIMILARITY_DEFAULTS = dict(model="builtin:me5-small", layer=8, method="argmax", max_gap=1)
# Sec. 4.2: 3 epochs, lr 5e-5 (batch 64 on two V100s; 16 per step here).
ALIGNER_DEFAULTS = dict(model="builtin:me5-small", epochs=3, batch_size=16, lr=5e-5,
                        freeze_embeddings=True, max_length=256)
# Sec. 4.3: fine-tune the English model 1 epoch on the pseudo-labeled target data.
TARGET_DEFAULTS = dict(epochs=1, batch_size=16, lr=5e-5, freeze_embeddings=True, max_length=256)
TARGET_FIXED = ("model", "out", "freeze_layers")  # set by the job: the teacher, out/<lang>, top-level


@dataclass(kw_only=True)
class ProjectConfig:
    """Projection job settings (YAML/JSON keys). Outputs: ``out/aligner`` (a trained alignment
    model), ``out/<lang>`` (the target models), ``out/results.json``; projections in ``store``."""

    run_id: str = field(metadata={"help": "run id in the store (the resume key)"})
    store: str = field(metadata={"help": "store root"})
    out: str = field(metadata={"help": "output folder: aligner, target models, results.json"})
    source_dev: str = field(metadata={"help": "SOURCE-language dev CoNLL file: model selection"})
    corpora: list = field(metadata={"help": "parallel corpora, one per target language: "
                                            "{lang, path, src_lang?, fmt?, links?, dev?, limit?}"})
    teacher: Optional[str] = field(default=None, metadata={"help": "trained English NER model"})
    train_teacher: Optional[dict] = field(default=None,
                                          metadata={"help": "TeacherConfig keys: train it first"})
    aligner: str = field(default="model", metadata={"help": "model (Li et al. alignment model) | "
                                                            "similarity (SimAlign-style baseline)"})
    similarity: dict = field(default_factory=dict,
                             metadata={"help": "similarity aligner: model, layer (SimAlign: 8), "
                                               "method (argmax|itermax), max_gap"})
    alignment_model: Optional[str] = field(default=None,
                                           metadata={"help": "a trained alignment model folder"})
    train_aligner: Optional[dict] = field(
        default=None, metadata={"help": "train the alignment model: TrainConfig keys (out "
                                        "default out/aligner) + examples: {sources, "
                                        "negative_ratio, max_per_pair, max_pairs, max_examples}"})
    min_span_score: float = field(default=0.0,
                                  metadata={"help": "alignment-model spans scoring lower are "
                                                    "ignored (the entity may become unmapped)"})
    train_target: bool = field(default=True, metadata={"help": "train the target models"})
    gamma: float = field(default=4.0, metadata={"help": "re-weighted loss (1 + p_t)^gamma "
                                                        "(Sec. 4.3: 4; 0 = cross-entropy)"})
    freeze_layers: int = field(default=3, metadata={"help": "lower layers frozen in target "
                                                            "training (Sec. 4.3: 0, 3, 6)"})
    max_empty_share: Optional[float] = field(
        default=None, metadata={"help": "cap on the share of entity-less pairs in target "
                                        "training (default: as projected)"})
    target: dict = field(default_factory=dict,
                         metadata={"help": "target TrainConfig keys (not model/out/"
                                           "freeze_layers) over epochs 1, lr 5e-5, batch 16"})
    projection: dict = field(default_factory=dict,
                             metadata={"help": "pipeline knobs: batch_size, block_rows, "
                                               "max_length, max_words, types, num_actors, "
                                               "threads, use_gpu, rows_per_file"})

    def __post_init__(self) -> None:
        from xner_ray.methods.projection.aligner import METHODS
        from xner_ray.methods.projection.pipeline import KNOBS

        from xner_ray.methods.common import refuse_uri_out

        refuse_uri_out(self.out)
        self.corpora = parse_corpora(self.corpora)
        if self.aligner not in ALIGNERS:
            raise ValueError(f"aligner must be one of {ALIGNERS}, got {self.aligner!r}")
        if not self.teacher and not self.train_teacher:
            raise ValueError("give `teacher` (a trained model folder) or `train_teacher`")
        if self.aligner == "model" and not (self.alignment_model or self.train_aligner is not None):
            raise ValueError("aligner: model needs `alignment_model` (a trained folder) or "
                             "`train_aligner` settings ({} for the defaults)")
        bad = sorted(set(self.similarity) - set(SIMILARITY_KEYS))
        if bad:
            raise ValueError(f"unknown similarity keys {bad}; valid: {list(SIMILARITY_KEYS)}")
        if self.similarity.get("method", "argmax") not in METHODS:
            raise ValueError(f"similarity.method must be one of {METHODS}")
        bad = sorted(set(self.projection) - set(KNOBS))
        if bad:
            raise ValueError(f"unknown projection keys {bad}; valid: {list(KNOBS)}")
        bad = sorted(set(self.target) & set(TARGET_FIXED))
        if bad:
            raise ValueError(f"target keys {bad} are set by the job (model = the teacher, out = "
                             "out/<lang>, freeze_layers at the top level)")
        if self.gamma < 0 or self.freeze_layers < 0:
            raise ValueError("gamma >= 0 and freeze_layers >= 0 are required")
        if self.max_empty_share is not None and not 0.0 <= self.max_empty_share < 1.0:
            raise ValueError(f"max_empty_share must be in [0, 1), got {self.max_empty_share}")
        target_config(self, Path(self.out) / "x", "teacher")  # validate now, not after projection
        if self.train_aligner is not None:
            aligner_configs(self)

    @property
    def similarity_spec(self) -> dict:
        return {**SIMILARITY_DEFAULTS, **self.similarity}


def local_abs(name_or_path: str) -> str:
    """An existing local path made absolute (Ray Train workers run in another directory);
    hub names and ``builtin:`` models unchanged."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.exists() else name_or_path


def target_config(cfg: ProjectConfig, out: Path, teacher: str):
    from xner_ray import config as config_mod
    from xner_ray.train.loop import TrainConfig

    return config_mod.build(TrainConfig, {**TARGET_DEFAULTS, **cfg.target,
                                          "model": local_abs(teacher), "out": str(out),
                                          "freeze_layers": cfg.freeze_layers})


def aligner_configs(cfg: ProjectConfig):
    """(TrainConfig of the alignment model, ExampleConfig of its examples)."""
    from xner_ray import config as config_mod
    from xner_ray.methods.projection.pipeline import ExampleConfig
    from xner_ray.train.loop import TrainConfig

    values = {**ALIGNER_DEFAULTS, "out": str(Path(cfg.out) / "aligner"),
              **(cfg.train_aligner or {})}
    examples = values.pop("examples", None) or {}
    values["model"] = local_abs(values["model"])
    return config_mod.build(TrainConfig, values), config_mod.build(ExampleConfig, examples)


def run_project(cfg: ProjectConfig) -> dict:
    """Run (or resume) the job; returns {"aligner": ..., "languages": {lang: summary}}."""

    def body(store) -> dict:
        from xner_ray.methods.projection.pipeline import ProjectionConfig, project

        teacher = local_abs(ensure_teacher(cfg.teacher, cfg.train_teacher))
        aligner, aligner_info = _aligner(cfg)
        counts = project(ProjectionConfig(corpora=cfg.corpora, teacher=teacher, aligner=aligner,
                                          store=cfg.store, run_id=cfg.run_id, round=0,
                                          **cfg.projection), store)
        langs = {c.lang: _target(cfg, store, c, teacher, counts.get(c.lang)) for c in cfg.corpora}
        return {"teacher": teacher, "aligner": aligner_info, "languages": langs}

    return run_recorded(cfg, "project", body)


def _aligner(cfg: ProjectConfig) -> tuple[dict, dict]:
    """The aligner spec for the pipeline, training the alignment model first if asked."""
    if cfg.aligner == "similarity":
        return {"kind": "similarity", **cfg.similarity_spec}, {"kind": "similarity",
                                                               **cfg.similarity_spec}
    path = local_abs(cfg.alignment_model) if cfg.alignment_model else None
    info = {"kind": "model", "path": path}
    if not path:
        path, info = _train_aligner(cfg)
    return {"kind": "model", "path": path, "min_score": cfg.min_span_score}, info


def _train_aligner(cfg: ProjectConfig) -> tuple[str, dict]:
    from xner_ray.methods.projection.model import train_aligner
    from xner_ray.methods.projection.pipeline import build_example_file

    train_cfg, ex = aligner_configs(cfg)
    out = Path(train_cfg.out)
    summary = out / "aligner_summary.json"
    if summary.exists() and (out / "train_summary.json").exists():
        print(f"[project] alignment model {out}: trained already, reused", flush=True)
        return str(out), json.loads(summary.read_text())
    examples = out / "examples"
    knobs = {k: v for k, v in cfg.projection.items() if k in ("block_rows", "max_words",
                                                              "batch_size", "max_length",
                                                              "num_actors", "threads",
                                                              "use_gpu")}
    built = build_example_file(cfg.corpora, ex, examples, similarity=cfg.similarity_spec,
                               knobs=knobs)
    print(f"[project] alignment examples: {json.dumps(built['counts'])}", flush=True)
    train_aligner(train_cfg, examples, name=f"{cfg.run_id}-aligner")
    best = json.loads((out / "train_summary.json").read_text())["best"]
    info = {"kind": "model", "path": str(out), "examples": str(examples),
            "example_counts": built["counts"], "example_rejects": built["rejects"],
            "example_config": dataclasses.asdict(ex), "dev_span_f1": best["dev_f1"]}
    write_json(summary, info)
    return str(out), info


def _pair_hash(pair_ids: list) -> np.ndarray:
    """A deterministic 63-bit hash per pair id (the order of the entity-less pick)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(p).encode(), digest_size=8).digest(),
                                    "big") >> 1 for p in pair_ids], dtype=np.int64)


def read_projection_keys(uri: str, *, entity: bool) -> Iterator[pa.Table]:
    """One read task over a ``projections`` file: one row per kept pair (status ok) with a
    projected entity (``entity=True``), or the pair-id hash ``h`` of each kept entity-less
    pair (``entity=False``)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from xner_ray.store.sink import split_uri

    fs, path = split_uri(uri)
    t = pq.read_table(path, filesystem=fs, columns=["pair_id", "status", "tgt_spans"])
    t = t.filter(pc.equal(t.column("status"), "ok"))
    has = pc.greater(pc.list_value_length(t.column("tgt_spans")), 0)
    if entity:
        yield pa.table({"entity": pa.array(np.ones(int(pc.sum(has).as_py() or 0), np.int8))})
    else:
        yield pa.table({"h": _pair_hash(t.filter(pc.invert(has)).column("pair_id").to_pylist())})


def read_projected(uri: str, *, max_empty_key: Optional[int]) -> Iterator[pa.Table]:
    """One read task: the training rows (``tokens``, ``tags``) of a ``projections`` file --
    its kept pairs with an entity, and its kept entity-less pairs whose hash is at most
    ``max_empty_key`` (None: all of them)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from xner_ray.store.sink import split_uri

    fs, path = split_uri(uri)
    t = pq.read_table(path, filesystem=fs,
                      columns=["pair_id", "status", "tgt_spans", "tgt_tokens", "tgt_tags"])
    t = t.filter(pc.equal(t.column("status"), "ok"))
    if max_empty_key is not None:
        entity = pc.greater(pc.list_value_length(t.column("tgt_spans")), 0).to_numpy(
            zero_copy_only=False)
        keep = entity | (_pair_hash(t.column("pair_id").to_pylist()) <= max_empty_key)
        t = t.filter(pa.array(keep))
    yield pa.table({"tokens": t.column("tgt_tokens"), "tags": t.column("tgt_tags")})


def plan_training_set(uris: list[str], max_empty_share: Optional[float], *,
                      local: bool = False) -> dict:
    """How many kept projections the target model trains on: ``with_entities`` (every kept
    pair with a projected entity), ``empty`` (entity-less pairs, capped at ``max_empty_share``
    of the rows: those with the smallest pair-id hashes, a deterministic pick), and
    ``empty_dropped``; ``max_empty_key`` is the hash cut-off :func:`read_projected` applies.

    Ray: read tasks emit a row per kept pair (entity-less ones: their hash); counts come from
    block metadata and, when the cap cuts, Ray Data sorts the hashes; only the cut-off comes
    back. ``local``: the same in this process."""
    if not uris:
        raise ValueError("the projection round has no rows")
    if local:
        n_ent = sum(t.num_rows for u in uris for t in read_projection_keys(u, entity=True))
        empty = pa.concat_tables([t for u in uris for t in read_projection_keys(u, entity=False)])
        n_empty = empty.num_rows
    else:  # counts from block metadata; no aggregation actors
        from xner_ray import engine

        n_ent = engine.dataset(list(uris),
                               partial(read_projection_keys, entity=True)).materialize().count()
        empty = engine.dataset(list(uris),
                               partial(read_projection_keys, entity=False)).materialize()
        n_empty = empty.count()
    if n_ent == 0:
        raise ValueError(f"no kept pair has a projected entity ({n_empty} entity-less pairs "
                         "kept): nothing to train a tagger on (see sql/projection_status.sql "
                         "for why pairs were dropped)")
    keep_empty = n_empty
    if max_empty_share is not None:
        keep_empty = min(n_empty, int(n_ent * max_empty_share / (1.0 - max_empty_share)))
    cutoff = None
    if keep_empty == 0:
        cutoff = -1
    elif keep_empty < n_empty:
        if local:
            cutoff = int(np.sort(empty.column("h").to_numpy())[keep_empty - 1])
        else:  # the keep_empty-th smallest hash: one row back to the driver
            smallest = empty.sort("h").limit(keep_empty)
            cutoff = int(smallest.sort("h", descending=True).take(1)[0]["h"])
    return {"with_entities": n_ent, "empty": keep_empty, "empty_dropped": n_empty - keep_empty,
            "max_empty_key": cutoff}


def projected_training_set(uris: list[str], max_empty_share: Optional[float]):
    """(Ray dataset of (tokens, tags), counts) of the kept projections in ``uris`` (the
    round's committed ``projections`` files, paths or URIs): read by Ray Data tasks straight
    from the store, never exported to the driver's disk."""
    from xner_ray import engine

    plan = plan_training_set(uris, max_empty_share)
    ds = engine.dataset(list(uris), partial(read_projected, max_empty_key=plan["max_empty_key"]))
    return ds, {k: plan[k] for k in ("with_entities", "empty", "empty_dropped")}


def _target(cfg: ProjectConfig, store, corpus, teacher: str, counts: Optional[dict]) -> dict:
    """Train (or reuse) the target model of one language; scores on its dev file, report only."""
    out = Path(cfg.out) / corpus.lang
    done = out / "target_summary.json"
    if done.exists():
        print(f"[project] {corpus.lang}: target model complete, reused", flush=True)
        return json.loads(done.read_text())
    summary = {"projection": counts, "direct_transfer": _dev_scores(teacher, corpus)}
    if cfg.train_target:
        summary.update(train_target(cfg, store, corpus, teacher, out))
    store.update_run(cfg.run_id, round=0, metrics={corpus.lang: summary})
    write_json(done, summary)
    f1 = {k: (summary.get(k) or {}).get("f1") for k in ("direct_transfer", "target_dev")}
    print(f"[project] {corpus.lang}: target dev F1 {f1['target_dev']} vs direct transfer "
          f"{f1['direct_transfer']} (report only)", flush=True)
    return summary


def train_target(cfg: ProjectConfig, store, corpus, teacher: str, out: Path) -> dict:
    """Fine-tune ``teacher`` on the kept projections of ``corpus.lang`` (round 0 of
    ``cfg.run_id``) with the re-weighted loss (``cfg.gamma``) and the lower
    ``cfg.freeze_layers`` layers frozen (Sec. 4.3), selected on the source dev set; returns
    its summary with the target dev scores (report only)."""
    from xner_ray.models.classifier import model_labels
    from xner_ray.methods.projection.steps import ReverseFocalStep
    from xner_ray.train.loop import fit, read_labeled

    manifest = store.manifest(cfg.run_id, corpus.lang, 0)
    uris = [store.to_uri(store.path(f)) for f in manifest["tables"]["projections"]["files"]]
    dataset, kept = projected_training_set(uris, cfg.max_empty_share)
    dev, _ = read_labeled(cfg.source_dev, "source dev")
    train_cfg = target_config(cfg, out, teacher)
    fit(train_cfg, step=ReverseFocalStep, labels=model_labels(teacher),
        n_train=kept["with_entities"] + kept["empty"], dataset=dataset,
        dev=dev, name=f"{cfg.run_id}-{corpus.lang}", step_args={"gamma": cfg.gamma},
        extra_summary={"gamma": cfg.gamma, "projections": kept})
    best = json.loads((out / "train_summary.json").read_text())["best"]
    return {"model": str(out), "train_pairs": kept, "gamma": cfg.gamma,
            "freeze_layers": cfg.freeze_layers, "source_dev_f1": best["dev_f1"],
            "target_dev": _dev_scores(str(out), corpus)}


def _dev_scores(model: str, corpus) -> Optional[dict]:
    if not corpus.dev:
        return None
    from xner_ray.evaluate import evaluate_model

    r = evaluate_model(model, corpus.dev, lang=corpus.lang)
    return {k: round(float(r[k]), 6) for k in ("precision", "recall", "f1")} | {
        "n_sentences": r["n_sentences"]}
