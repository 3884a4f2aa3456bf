"""The shared Ray Train machinery: one worker loop and one driver for every trainer.

Teacher fine-tuning (cross-entropy on gold tags) and student distillation (MSE to teacher
distributions) differ only in the batch -> loss function; model loading, freezing, the
optimizer and schedule, bf16 autocast on GPUs, per-epoch model selection on the
source-language dev set (the zero-shot rule: no target labels), checkpoints and the copy of
the best one into ``out`` are here, once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

KD_LOSS_NAMES = ("mse", "kl")  # the keys of losses.KD_LOSSES (no torch import for a config)
PROGRESS_EVERY_S = 60.0  # a progress line from rank 0 at most this often within an epoch


@dataclass(kw_only=True)
class TrainConfig:
    """Settings every trainer shares (each is a CLI flag / config key)."""

    out: str = field(metadata={"help": "output folder for the best Hugging Face checkpoint"})
    model: str = field(default="builtin:me5-small",
                       metadata={"help": "HF name, local path or builtin:me5-small"})
    epochs: int = field(default=3, metadata={"help": "passes over the training data"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "cap on optimizer steps"})
    layers: Optional[int] = field(default=None, metadata={"help": "keep the bottom N layers"})
    batch_size: int = field(default=16, metadata={"help": "sentences per step per worker"})
    lr: float = field(default=5e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "linear warm-up share of steps"})
    freeze_embeddings: bool = field(default=False, metadata={"help": "freeze the embeddings"})
    freeze_layers: int = field(default=0, metadata={"help": "freeze the bottom N layers"})
    max_length: int = field(default=256, metadata={"help": "sub-word cap per sentence"})
    dev_limit: Optional[int] = field(default=None,
                                     metadata={"help": "score only the first N dev sentences"})
    num_workers: Optional[int] = field(default=None, metadata={"help": "default: from cluster"})
    use_gpu: Optional[bool] = field(default=None, metadata={"help": "default: if GPUs exist"})
    threads: Optional[int] = field(default=None, metadata={
        "help": "torch intra-op threads of each training worker; default its whole logical "
                "CPUs (1 on a 2-CPU machine, where the other CPU is kept for the data "
                "pipeline). More threads than logical CPUs share cores with Ray's other "
                "tasks: measure it (benchmarks/train_threads.py)"})
    kd_loss: str = field(default="mse",
                         metadata={"help": "distillation loss of students: mse (TSL Eq. 3, RIKD "
                                           "Eq. 1) | kl (KL(teacher||student); not the papers')"})
    keep_checkpoints: int = field(default=2, metadata={"help": "best epoch checkpoints kept"})
    checkpoints: Optional[str] = field(default=None, metadata={
        "help": "Ray Train's storage for epoch checkpoints: a path or URI every node sees "
                "(s3://...); default <out's folder>/_checkpoints. Kept outside the model folder, "
                "which stays a clean Hugging Face folder; the run's checkpoints are removed "
                "once the best one is copied out"})
    length_group: int = field(default=1, metadata={
        "help": "batches read at a time whose rows are sorted by sub-word length before they "
                "are cut into batches (less padding, same sentences and steps per epoch; e.g. "
                "50); 1: batches as read (the default until a seeded comparison shows grouping "
                "does not cost target F1, see docs/DECISIONS.md)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the training forward and backward (dynamic shapes: one compile "
                "at the first step; on CPU it needs a C++ compiler); checkpoints and dev scores "
                "use the uncompiled module"})
    seed: int = field(default=42, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 1 or self.lr <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("batch_size >= 1, lr > 0 and 0 <= warmup_ratio < 1 are required")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.freeze_layers < 0 or (self.layers is not None and self.layers < 1):
            raise ValueError("freeze_layers must be >= 0 and layers >= 1")
        if self.kd_loss not in KD_LOSS_NAMES:
            raise ValueError(f"kd_loss must be one of {list(KD_LOSS_NAMES)}, got {self.kd_loss!r}")


def read_labeled(spec: str, what: str, label_map=None):
    """Sentences with gold tags, rejects counted; no usable sentence at all is an error."""
    from xner_ray.io import read_conll
    from xner_ray.records import RejectSink

    rejects = RejectSink()
    sents = list(read_conll(spec, rejects=rejects))
    if not sents:
        raise ValueError(f"{what} data {spec!r}: no usable sentences ({rejects.summary()})")
    if label_map is not None:
        for s in sents:
            s.tags = label_map.apply(s.tags)
    logger.info("%s: %d sentences from %s, %s", what, len(sents), spec, rejects.summary())
    return sents, rejects


def write_rejects(path: str | Path, rejects) -> None:
    """The rejected training lines as JSONL (a local path or a URI); nothing when none."""
    if not rejects:
        return
    from xner_ray.io.uri import write_text

    write_text(path, "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n"
                             for r in rejects))


def fit(cfg: TrainConfig, *, step: type, labels: list[str], dataset, n_train: int,
        dev, name: str, extra_summary: Optional[dict] = None,
        step_args: Optional[dict] = None, artifacts_dir: Optional[str] = None,
        extra_datasets: Optional[dict] = None) -> Path | str:
    """Run ``TorchTrainer`` with the shared loop; copy the best checkpoint to ``cfg.out``.

    ``cfg.out`` is a local folder (returned as a ``Path``) or a URI (``s3://...``, returned as
    given): workers on any node then load it through their node's model cache.

    ``step``: the step class the loop builds on each worker as ``step(ctx, **step_args)``
    (``steps.CEStep`` on gold ``tags``, ``steps.KDStep`` on teacher ``probs`` + ``weight``, or a
    method's own: RIKD's ``RikdStep``, projection's ``ReverseFocalStep`` / ``AlignStep``,
    TLADV's ``TladvStep``); the loop knows none of them by name.
    ``dev``: source-language sentences with gold tags, scored by rank 0 after every epoch.
    ``artifacts_dir``: where steps write per-rank side outputs (RIKD decisions); it must be on
    storage every worker can reach, like Ray Train's own ``storage_path``.
    ``extra_datasets``: more Ray datasets for the step, by name (sharded like ``train``; a
    step reads its shard with ``ray.train.get_dataset_shard``).
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from xner_ray.cluster import derive_workers
    from xner_ray.models.classifier import resolve

    if not ray.is_initialized():
        raise RuntimeError("connect to Ray first (xner_ray.cluster.init_ray)")
    if cfg.dev_limit:
        dev = dev[: cfg.dev_limit]
    from xner_ray.io import uri as U

    remote = U.is_uri(cfg.out)
    # a URI ``out``: the folder is assembled locally, then uploaded (model files first, the
    # summary last: a folder with ``train_summary.json`` is complete)
    out = Path(tempfile.mkdtemp(prefix="xner-publish-")) if remote else Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    default_ckpt = (posixpath.join(posixpath.dirname(cfg.out.rstrip("/")), "_checkpoints")
                    if remote else str(out.parent / "_checkpoints"))
    resolve(cfg.model)  # convert a builtin model once here, not in every worker
    res = derive_workers(cfg.num_workers, cfg.use_gpu)
    if cfg.threads:  # recorded as used (the summary's ``workers``)
        res = dataclasses.replace(res, torch_threads=cfg.threads)
    # Per-epoch lines from rank 0 are the progress of a training run; Ray Data's ingest bars
    # (one per epoch, re-drawn every second) would drown them.
    dataset.context.enable_progress_bars = False
    extra_datasets = dict(extra_datasets or {})
    if getattr(step, "pretokenized", False):  # every dataset of the step arrives tokenized
        dataset = pretokenize(dataset, cfg.model)
        extra_datasets = {k: pretokenize(v, cfg.model) for k, v in extra_datasets.items()}
    loop_cfg = dict(cfg=dataclasses.asdict(cfg), step=step, labels=labels,
                    threads=res.torch_threads, n_train=n_train, step_args=step_args or {},
                    artifacts_dir=artifacts_dir,
                    dev_tokens=[s.tokens for s in dev], dev_tags=[s.tags for s in dev])
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.use_gpu,
            resources_per_worker={"CPU": res.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=cfg.checkpoints or default_ckpt,
            # worker-group set-up and checkpoint bookkeeping stay in Ray's log files
            **_train_logging(),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute="dev_f1",
                checkpoint_score_order="max")),
        datasets={"train": dataset, **extra_datasets},
    )
    started = time.time()
    result = trainer.fit()
    best_ckpt, best = max(result.best_checkpoints, key=lambda cm: cm[1]["dev_f1"])
    with best_ckpt.as_directory() as d:
        for item in Path(d).iterdir():
            if item.is_dir():
                shutil.copytree(item, out / item.name, dirs_exist_ok=True)
            else:
                shutil.copy2(item, out / item.name)
    _drop_run_checkpoints(result)
    summary = dict(config=dataclasses.asdict(cfg), labels=labels, best=best,
                   workers=dataclasses.asdict(res), seconds=round(time.time() - started, 1),
                   n_train=n_train, n_dev=len(dev), **(extra_summary or {}))
    (out / "README.md").write_text(model_card(name, summary, step))
    if remote:
        U.upload_dir(out, cfg.out)
        U.write_text(U.join(cfg.out, "train_summary.json"),
                     json.dumps(summary, indent=2, default=str))
        shutil.rmtree(out, ignore_errors=True)
    else:
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    logger.info("%s: best epoch %s dev F1 %.4f -> %s", name, best.get("epoch"),
                best["dev_f1"], cfg.out if remote else out)
    return cfg.out if remote else out


def pretokenize(dataset, model: str):
    """The training rows with their sub-word ids, computed by light Ray Data tasks beside the
    trainer (``train.inputs.tokenize_stage``), so steps never tokenize. ``model`` as the
    config gives it: each task resolves it on its own node (a URI through the node's cache)."""
    from xner_ray.cluster import LIGHT_CPUS
    from xner_ray.train.inputs import tokenize_stage

    return dataset.map_batches(tokenize_stage, fn_kwargs={"tokenizer_path": str(model)},
                               batch_format="pyarrow", batch_size=1024, num_cpus=LIGHT_CPUS)


def _train_logging() -> dict:
    import ray.train

    cls = getattr(ray.train, "LoggingConfig", None)
    return {"logging_config": cls(log_level="WARNING")} if cls is not None else {}


def model_card(name: str, summary: dict, step) -> str:
    """A short Hugging Face model card: what was trained, on what, how it scored, how to load."""
    cfg, best = summary["config"], summary["best"]
    method = getattr(step, "__name__", "custom loop")
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(cfg.items()) if v is not None)
    return f"""---
library_name: transformers
pipeline_tag: token-classification
tags: [ner, xner_ray]
---
# {name}

Token classifier (NER, IOB2 over {", ".join(summary["labels"])}) trained by xner_ray.

- base model: `{cfg["model"]}`{f" (bottom {cfg['layers']} layers)" if cfg.get("layers") else ""}
- method: `{method}` on {summary["n_train"]} training sentences
- model selection: source-language dev set ({summary["n_dev"]} sentences), best epoch
  {best.get("epoch")}: entity F1 {best.get("dev_f1", 0.0):.4f}

## Load it (no xner_ray needed)

```python
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline
tagger = pipeline("token-classification", aggregation_strategy="first",
                  model=AutoModelForTokenClassification.from_pretrained("PATH"),
                  tokenizer=AutoTokenizer.from_pretrained("PATH"))
```

Labels sit on the first sub-word of each word (`aggregation_strategy="first"`).

## Training configuration

| key | value |
|---|---|
{rows}
"""


def _drop_run_checkpoints(result) -> None:
    """Remove this run's epoch checkpoints (the best one is in ``out`` now): a 4-layer model
    is ~400 MB a checkpoint, and nothing reads them again."""
    import pyarrow.fs as pafs

    try:
        fs = result.filesystem or pafs.LocalFileSystem()
        if fs.get_file_info(result.path).type == pafs.FileType.Directory:
            fs.delete_dir(result.path)
    except OSError as exc:  # a leftover is disk, not a wrong result: say so and go on
        logger.warning("could not remove checkpoints %s: %s", result.path, exc)


def train_loop(config: dict) -> None:
    """Per-worker loop (Ray Train). Heavy imports live here, inside the worker."""
    import numpy as np
    import torch
    import ray.train
    import ray.train.torch
    from transformers import get_linear_schedule_with_warmup

    from xner_ray.evaluate import predict_tags, score_tags
    from xner_ray.logs import log_progress
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer
    from xner_ray.train.inputs import group_rows, length_grouped, mean_loss
    from xner_ray.train.steps import StepContext

    cfg = TrainConfig(**{f.name: config["cfg"][f.name] for f in dataclasses.fields(TrainConfig)})
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = load_token_classifier(cfg.model, config["labels"], layers=cfg.layers,
                                  freeze_embeddings=cfg.freeze_embeddings,
                                  freeze_layers=cfg.freeze_layers)
    step_cls, step_args = config["step"], config.get("step_args", {})
    # a step may train a larger module around the classifier (TLADV: + the discriminator)
    module = step_cls.module(model, **step_args) if hasattr(step_cls, "module") else model
    model = ray.train.torch.prepare_model(
        module, parallel_strategy_kwargs=getattr(step_cls, "ddp_kwargs", None))
    bare = model.module if hasattr(model, "module") else model
    device = ray.train.torch.get_device()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-config["n_train"] // (cfg.batch_size * world)))
    total = min(steps_per_epoch * cfg.epochs, cfg.max_steps or 1 << 62)
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup_ratio * total), total)
    # compiled: the steps call the compiled wrapper (same parameters); saving and the dev
    # predictions below use ``bare``, so checkpoints keep their plain parameter names
    forward = torch.compile(model, dynamic=True) if cfg.compile else model
    step_ctx = StepContext(forward, bare, tokenizer, params, optim, sched, device,
                           config["labels"], cfg.max_length, world, rank, cfg.kd_loss, total)
    run_step = step_cls(step_ctx, **step_args)
    shard = ray.train.get_dataset_shard("train")
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        losses, t0 = [], time.time()
        last_log = t0
        group = max(1, cfg.length_group)
        batches = shard.iter_batches(batch_size=group_rows(cfg.batch_size, group),
                                     batch_format="numpy",
                                     local_shuffle_buffer_size=max(4, group) * cfg.batch_size,
                                     local_shuffle_seed=cfg.seed + epoch)
        if group > 1:
            batches = length_grouped(batches, cfg.batch_size,
                                     np.random.default_rng([cfg.seed, epoch, rank]))
        for batch in batches:
            losses.append(run_step(batch))
            step += 1
            if rank == 0 and time.time() - last_log >= PROGRESS_EVERY_S:
                last_log = time.time()
                log_progress(logger, f"[train] epoch {epoch + 1}", step, total, unit="steps",
                             rate=len(losses) / (last_log - t0),
                             loss=mean_loss(losses[-50:]))
            if cfg.max_steps and step >= cfg.max_steps:
                break
        metrics = {"epoch": epoch + 1, "step": step, "train_loss": mean_loss(losses),
                   "epoch_seconds": round(time.time() - t0, 1), "dev_f1": 0.0,
                   "threads": torch.get_num_threads(),
                   **run_step.epoch_metrics()}
        if cfg.compile:  # graphs Dynamo has compiled in this worker so far
            from torch._dynamo.utils import counters

            metrics["compiled_graphs"] = int(counters["stats"]["unique_graphs"])
        if rank == 0:
            # a step whose inputs are more than words (the aligner's query) predicts its own dev
            predict = getattr(run_step, "predict_dev", None)
            pred = (predict(config["dev_tokens"]) if predict is not None
                    else predict_tags(bare, tokenizer, config["dev_tokens"], device=device))
            dev = score_tags(config["dev_tags"], pred)
            metrics.update(dev_f1=dev["f1"], dev_precision=dev["precision"],
                           dev_recall=dev["recall"])
            log_progress(logger, f"[train] epoch {epoch + 1} done", step, total, unit="steps",
                         loss=metrics["train_loss"], dev_f1=dev["f1"],
                         seconds=metrics["epoch_seconds"])
            with tempfile.TemporaryDirectory() as tmp:
                if hasattr(run_step, "save"):
                    run_step.save(tmp, epoch + 1)
                else:
                    bare.save_pretrained(tmp, safe_serialization=True)
                    tokenizer.save_pretrained(tmp)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)  # every rank reports: it is a barrier in Ray Train
        if cfg.max_steps and step >= cfg.max_steps:
            break
    run_step.finish(config.get("artifacts_dir"))
