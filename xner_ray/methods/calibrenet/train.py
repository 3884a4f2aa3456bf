"""Training CalibreNet: one plain per-process torch loop for PBR stages and fine-tuning.

``train_calibrenet(cfg, train, dev)`` builds (or continues) a CalibreNet, trains it with
AdamW and a cosine schedule with hard restarts (CalibreNet Sec. 4.3), evaluates on English dev
every ``eval_every`` steps and after the last step, and keeps the best checkpoint in ``cfg.out``
(the paper saves every 200 steps and selects on English dev). A Ray Train worker can call it
with its ``rank``/``world_size`` and a ``wrap_model`` (e.g. ``ray.train.torch.prepare_model``):
the wrapped module's forward returns the loss, so DDP sees every forward.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from xner_ray.logs import log_progress
from xner_ray.methods.calibrenet.data import DevSet, calibrated_scores
from xner_ray.methods.calibrenet.encode import CalibInstance, encode_instances
from xner_ray.methods.calibrenet.pbr import mask_tokens

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 60.0  # a progress line at most this often while training


def _f(default, help_: str):
    return field(default=default, metadata={"help": help_})


@dataclass(kw_only=True)
class CalibreNetConfig:
    """Fine-tuning defaults are the paper's XGLUE-NER settings (Sec. 4.3); ``pbr_config``
    gives the PBR pre-training ones."""

    out: str = field(metadata={"help": "output folder of the best CalibreNet checkpoint"})
    model: str = _f("builtin:me5-small", "encoder (HF name/path, builtin:me5-small) or a "
                    "CalibreNet folder to continue from; Sec. 3.1.2: same family as the base")
    layers: Optional[int] = _f(None, "keep the bottom N encoder layers (CPU runs; not the paper)")
    lr: float = _f(3e-5, "AdamW learning rate (Sec. 4.3: 3e-5)")
    batch_size: int = _f(64, "instances per step (Sec. 4.3: 64)")
    epochs: int = _f(4, "passes over the data (Sec. 4.3: 4 fine-tuning, 3 per PBR stage)")
    max_steps: Optional[int] = _f(None, "cap on optimizer steps (not the paper)")
    weight_decay: float = _f(0.0075, "AdamW weight decay (Sec. 4.3: 0.0075 XGLUE-NER, "
                             "0.005 PBR)")
    warmup_ratio: float = _f(0.1, "warm-up share of the steps (Sec. 4.3: 0.1)")
    num_cycles: Optional[int] = _f(None, "hard restarts of the cosine schedule (Sec. 4.3 names "
                                   "the schedule, not its cycles; default: one per epoch)")
    max_length: int = _f(192, "sub-word cap of [CLS] answer [SEP] passage [SEP] (Sec. 4.3: "
                         "192 XGLUE-NER, 384 PBR)")
    alpha: float = _f(0.3, "weight of L_start,end (Eq. 13; Sec. 4.3: 0.3)")
    beta: float = _f(0.3, "weight of L_cls (Eq. 13; Sec. 4.3: 0.3; PBR has no type loss)")
    gamma: float = _f(0.4, "weight of L_span (Eq. 13; Sec. 4.3: 0.4)")
    use_index: bool = _f(True, "initial-index embedding (Eq. 10; Table 8 '- Index' = False)")
    use_span: bool = _f(True, "span matching (Eq. 11-12; Table 8 '- Matching' = False)")
    max_answer_words: int = _f(10, "longest calibrated span at decoding (our choice)")
    mlm: bool = _f(False, "add the MLM task (Sec. 3.2: PBR pre-training only)")
    mlm_weight: float = _f(1.0, "weight of the MLM loss next to Eq. 13 (not given; ours)")
    mlm_prob: float = _f(0.15, "share of tokens masked for MLM (BERT, the paper's [7])")
    eval_every: int = _f(200, "steps between dev evaluations (Sec. 4.3: checkpoint every 200)")
    max_grad_norm: float = _f(1.0, "gradient clipping (BertForQuestionAnswering's run_squad)")
    dev_batch_size: int = _f(64, "instances per inference batch on dev")
    seed: int = _f(42, "random seed")

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.eval_every < 1:
            raise ValueError("lr > 0, batch_size >= 1, epochs >= 1, eval_every >= 1 required")
        if not 0 <= self.warmup_ratio < 1 or not 0 < self.mlm_prob < 1:
            raise ValueError("0 <= warmup_ratio < 1 and 0 < mlm_prob < 1 are required")
        if min(self.alpha, self.beta, self.gamma) < 0 or max(self.alpha, self.beta,
                                                             self.gamma) > 1:
            raise ValueError("alpha, beta, gamma must lie in [0, 1] (CalibreNet Eq. 13)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")


def pbr_config(**values) -> CalibreNetConfig:
    """PBR pre-training settings (Sec. 4.3): weight decay 0.005, max length 384, 3 epochs
    per stage, MLM on, and no type loss (the paper leaves types to future work, Sec. 6)."""
    base = dict(weight_decay=0.005, max_length=384, epochs=3, mlm=True, beta=0.0)
    return CalibreNetConfig(**{**base, **values})


class _LossModule(nn.Module):
    """Forward = Eq. 13 (+ MLM): what a DDP wrapper needs to see."""

    def __init__(self, model, cfg: CalibreNetConfig, mask_id: Optional[int], maskable_ids):
        super().__init__()
        self.model, self.cfg, self.mask_id, self.special = model, cfg, mask_id, maskable_ids

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None):
        loss, parts = self.model.loss(batch)
        if self.cfg.mlm:
            ids = batch["input_ids"]
            maskable = batch["attention_mask"].bool() & ~torch.isin(ids, self.special.to(ids.device))
            vocab = self.model.encoder.get_input_embeddings().weight.shape[0]
            masked, labels = mask_tokens(ids.cpu(), maskable.cpu(), self.mask_id, vocab,
                                         prob=self.cfg.mlm_prob, generator=generator)
            mlm = self.model.mlm_loss(masked.to(ids.device), batch["attention_mask"],
                                      labels.to(ids.device), batch.get("index_ids"),
                                      batch.get("token_type_ids"))
            loss = loss + self.cfg.mlm_weight * mlm
            parts["mlm"] = float(mlm.detach())
        return loss, parts


def _optimizer(model: nn.Module, cfg: CalibreNetConfig, total_steps: int):
    """AdamW without decay on biases and norms (transformers' convention), cosine with hard
    restarts after a linear warm-up (CalibreNet Sec. 4.3)."""
    from transformers import get_cosine_with_hard_restarts_schedule_with_warmup

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_cosine_with_hard_restarts_schedule_with_warmup(
        opt, int(cfg.warmup_ratio * total_steps), total_steps,
        num_cycles=cfg.num_cycles or cfg.epochs)
    return opt, sched


def _batches(items: Sequence[CalibInstance], cfg: CalibreNetConfig, epoch: int, rank: int,
             world_size: int) -> list[list[CalibInstance]]:
    order = list(range(len(items)))
    random.Random(cfg.seed + epoch).shuffle(order)
    mine = order[rank::world_size]
    return [[items[i] for i in mine[k:k + cfg.batch_size]]
            for k in range(0, len(mine), cfg.batch_size)]


def train_calibrenet(cfg: CalibreNetConfig, train: Sequence[CalibInstance],
                     dev: Optional[DevSet] = None, *, types: Optional[Sequence[str]] = None,
                     device: Optional[str | torch.device] = None, rank: int = 0,
                     world_size: int = 1, wrap_model: Optional[Callable] = None) -> dict:
    """Train and save the best checkpoint to ``cfg.out`` (the last one without ``dev``).

    ``types``: the type head's entity types (default: those of the gold spans). Returns a
    summary (also ``train_summary.json`` in ``cfg.out``): steps, losses, dev scores, best step.
    """
    from xner_ray.methods.calibrenet.checkpoint import build_calibrenet, save_calibrenet

    if not train:
        raise ValueError("no CalibreNet training instances")
    torch.manual_seed(cfg.seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    types = sorted(types or {inst.gold[2] for inst in train if inst.gold is not None})
    model, tok = build_calibrenet(cfg.model, types, layers=cfg.layers, with_mlm=cfg.mlm,
                                  alpha=cfg.alpha, beta=cfg.beta, gamma=cfg.gamma,
                                  use_index=cfg.use_index, use_span=cfg.use_span,
                                  max_answer_words=cfg.max_answer_words)
    model.to(device)
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    step_module = _LossModule(model, cfg, tok.mask_token_id, special)
    if cfg.mlm and tok.mask_token_id is None:
        raise ValueError(f"{cfg.model}: the tokenizer has no mask token for the MLM task")
    runner = wrap_model(step_module) if wrap_model else step_module
    per_epoch = math.ceil(math.ceil(len(train) / world_size) / cfg.batch_size)
    total = min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)
    opt, sched = _optimizer(model, cfg, total)
    gen = torch.Generator().manual_seed(cfg.seed + rank)
    state = {"step": 0, "losses": [], "evals": [], "best": None, "skipped": 0, "t0": time.time(),
             "logged": time.time()}
    for epoch in range(cfg.epochs):
        for chunk in _batches(train, cfg, epoch, rank, world_size):
            if state["step"] >= total:
                break
            _train_step(runner, opt, sched, tok, chunk, model, cfg, device, gen, state)
            if rank == 0 and time.time() - state["logged"] >= PROGRESS_EVERY_S:
                state["logged"] = time.time()
                recent = [x["loss"] for x in state["losses"][-50:]]
                log_progress(logger, f"[calibrenet] {cfg.out}", state["step"], total,
                             unit="steps", rate=state["step"] / (time.time() - state["t0"]),
                             loss=sum(recent) / max(1, len(recent)))
            if dev is not None and state["step"] % cfg.eval_every == 0:
                _evaluate(model, tok, dev, cfg, device, rank, state)
    if dev is not None and (not state["evals"] or state["evals"][-1]["step"] != state["step"]):
        _evaluate(model, tok, dev, cfg, device, rank, state)  # the last steps count too
    if dev is None and rank == 0:
        save_calibrenet(model, tok, cfg.out, step=state["step"], config=dataclasses.asdict(cfg))
    return _summary(cfg, state, len(train), rank)


def _train_step(runner, opt, sched, tok, chunk, model, cfg, device, gen, state) -> None:
    enc = encode_instances(tok, chunk, model.cfg.types, cfg.max_length)
    keep = enc.valid
    state["skipped"] += int((~keep).sum())
    if not keep.any():
        return
    batch = {k: v[keep].to(device) for k, v in enc.tensors.items()}
    model.train()
    loss, parts = runner(batch, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    sched.step()
    state["step"] += 1
    state["losses"].append({"step": state["step"], "loss": float(loss.detach()), **parts})


def _evaluate(model, tok, dev: DevSet, cfg, device, rank: int, state: dict) -> None:
    from xner_ray.methods.calibrenet.checkpoint import save_calibrenet

    scores = {"step": state["step"], **calibrated_scores(
        model, tok, dev, batch_size=cfg.dev_batch_size, max_length=cfg.max_length,
        device=device)}
    state["evals"].append(scores)
    if state["best"] is None or scores["f1"] > state["best"]["f1"]:
        state["best"] = scores
        if rank == 0:
            save_calibrenet(model, tok, cfg.out, step=state["step"], dev=scores,
                            config=dataclasses.asdict(cfg))
    logger.warning("calibrenet step %d: dev F1 %.4f (base %.4f)", state["step"], scores["f1"],
                   scores["base_f1"])


def _summary(cfg: CalibreNetConfig, state: dict, n_train: int, rank: int) -> dict:
    summary = {"out": cfg.out, "steps": state["step"], "train_instances": n_train,
               "skipped_truncated": state["skipped"], "best": state["best"],
               "evals": state["evals"], "losses": state["losses"],
               "seconds": round(time.time() - state["t0"], 1)}
    if rank == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def pretrain_pbr(cfg: CalibreNetConfig, stages: Sequence, **kwargs) -> list[dict]:
    """PBR pre-training over ``pretraining_stages`` (Sec. 3.2.3): stage k starts from stage
    k-1's folder ``{out}/stage-{k-1}``; the last stage's folder is the pre-trained model."""
    summaries, model = [], cfg.model
    for k, stage in enumerate(stages):
        stage_cfg = dataclasses.replace(cfg, model=model, out=f"{cfg.out}/stage-{k}")
        summary = train_calibrenet(stage_cfg, stage.items, None, **kwargs)
        summaries.append({"stage": stage.name, **summary})
        model = stage_cfg.out
    return summaries
