"""One optimisation step per batch, for each kind of training the shared loop runs.

``SupervisedStep`` covers teacher fine-tuning (cross-entropy on gold tags) and plain
distillation (KD MSE to the teacher's soft labels). ``RikdStep`` adds RIKD's reinforced instance
selection (Algorithm 2): warm-up steps on all instances, then per batch the policy keeps or
drops each instance, the student learns from the kept ones, and the policy learns from the
delayed reward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch


@dataclass
class StepContext:
    """What a step needs from the worker loop."""

    model: Any            # possibly DDP-wrapped: train-mode forwards go through it
    bare: Any             # the unwrapped model: eval forwards, saving
    tokenizer: Any
    params: list
    optim: Any
    sched: Any
    device: torch.device
    labels: list[str]
    max_length: int
    world: int
    rank: int
    kd_loss: str = "mse"  # TrainConfig.kd_loss: a key of losses.KD_LOSSES

    @property
    def label2id(self) -> dict[str, int]:
        return {l: i for i, l in enumerate(self.labels)}

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def update(self, loss: torch.Tensor, *, apply: bool = True) -> None:
        loss.backward()
        if apply:
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optim.step()
            self.sched.step()
        self.optim.zero_grad(set_to_none=True)


def _words(batch) -> list[list[str]]:
    return [list(t) for t in batch["tokens"]]


def ce_loss(ctx: StepContext, batch) -> torch.Tensor:
    from xner_ray.models.classifier import encode_words

    enc = encode_words(ctx.tokenizer, _words(batch), [list(t) for t in batch["tags"]],
                       ctx.label2id, max_length=ctx.max_length)
    return ctx.model(input_ids=enc.input_ids.to(ctx.device),
                     attention_mask=enc.attention_mask.to(ctx.device),
                     labels=enc.labels.to(ctx.device)).loss


@dataclass
class KDBatch:
    """A distillation batch on the device: word-level teacher probs, mask, weights."""

    enc: Any
    teacher: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor

    @classmethod
    def build(cls, ctx: StepContext, batch) -> "KDBatch":
        from xner_ray.models.classifier import encode_words
        from xner_ray.train.losses import teacher_tensor

        enc = encode_words(ctx.tokenizer, _words(batch), max_length=ctx.max_length)
        n_words = max(len(p) for p in enc.first_subword)
        mask = torch.zeros((len(enc.first_subword), n_words), dtype=torch.bool)
        for i, pos in enumerate(enc.first_subword):
            mask[i, : len(pos)] = torch.as_tensor(pos >= 0)
        teacher = teacher_tensor(batch["probs"], (len(mask), n_words, len(ctx.labels)))
        # a copy: Ray Data hands out read-only arrays, which torch warns about sharing
        weights = torch.tensor(np.asarray(batch["weight"], dtype=np.float32))
        return cls(enc, teacher.to(ctx.device), mask.to(ctx.device), weights.to(ctx.device))

    def word_outputs(self, model, ctx: StepContext, hidden: bool = False):
        """Word-level logits (and last hidden states) at first sub-words."""
        from xner_ray.train.losses import gather_words

        out = model(input_ids=self.enc.input_ids.to(ctx.device),
                    attention_mask=self.enc.attention_mask.to(ctx.device),
                    output_hidden_states=hidden)
        logits, _ = gather_words(out.logits, self.enc.first_subword)
        if not hidden:
            return logits
        states, _ = gather_words(out.hidden_states[-1], self.enc.first_subword)
        return logits, states


def kd_loss(ctx: StepContext, batch) -> torch.Tensor:
    """Student vs teacher distributions on first sub-words (TSL Eq. 3-4, RIKD Eq. 1; or the KL
    when ``ctx.kd_loss`` says so)."""
    from xner_ray.train.losses import KD_LOSSES

    kb = KDBatch.build(ctx, batch)
    return KD_LOSSES[ctx.kd_loss](kb.word_outputs(ctx.model, ctx), kb.teacher, kb.mask,
                                  kb.weights)


class SupervisedStep:
    """Forward, loss, backward, clip, step: teacher fine-tuning ("ce") or plain KD ("kd")."""

    def __init__(self, ctx: StepContext, loss: str, **_: Any):
        self.ctx, self.loss_fn = ctx, {"ce": ce_loss, "kd": kd_loss}[loss]

    def __call__(self, batch) -> float:
        with self.ctx.autocast():
            loss = self.loss_fn(self.ctx, batch)
        self.ctx.update(loss)
        return loss.item()

    def epoch_metrics(self) -> dict:
        return {}

    def finish(self, out_dir: Optional[str]) -> None:
        pass


class RikdStep:
    """RIKD Algorithm 2 for one worker: ``warmup_steps`` KD steps on all instances (J_w), then
    reinforced steps (J_r): sample keep/drop per instance from the policy on the state built
    with the current student, update the student on the kept sub-batch (Eq. 2), reward = KD loss
    on that sub-batch before minus after the update (Eq. 3), REINFORCE (Eq. 4).

    Loss "before" and "after" are both taken in eval mode (no dropout noise in the reward). With
    several workers each trains its own policy on its shard, and every rank always runs the
    backward pass (discarded instances get weight 0) so DDP's collectives stay in step.
    """

    def __init__(self, ctx: StepContext, warmup_steps: int = 100, policy_lr: float = 0.01,
                 reward_scale: float = 1.0, seed: int = 0, d_u: int = 50, d_z: int = 256,
                 d_s: int = 256, **_: Any):
        from xner_ray.methods.rikd_policy import RLSelector

        self.ctx, self.warmup, self.n = ctx, warmup_steps, 0
        self.selector = RLSelector.build(ctx.labels, ctx.bare.config.hidden_size, d_u=d_u,
                                         d_z=d_z, d_s=d_s, seed=seed + ctx.rank, lr=policy_lr,
                                         reward_scale=reward_scale).to(ctx.device)
        self.decisions: dict[str, tuple[float, bool]] = {}  # sent_id -> last (p, kept)
        self._epoch: list[dict] = []

    def __call__(self, batch) -> float:
        self.n += 1
        if self.n <= self.warmup:
            with self.ctx.autocast():
                loss = kd_loss(self.ctx, batch)
            self.ctx.update(loss)
            return loss.item()
        return self._reinforced(batch)

    def _reinforced(self, batch) -> float:
        from xner_ray.methods.rikd_policy import StateInputs, delayed_reward, subbatch_kd_loss
        from xner_ray.train.losses import KD_LOSSES

        ctx = self.ctx
        kb = KDBatch.build(ctx, batch)
        ctx.bare.eval()
        with torch.no_grad(), ctx.autocast():
            logits, hidden = kb.word_outputs(ctx.bare, ctx, hidden=True)
        keep, p, cached = self.selector.act(
            StateInputs.from_student(logits, hidden, kb.teacher, kb.mask))
        for sid, pi, k in zip(batch["sent_id"], p.tolist(), keep.tolist()):
            self.decisions[str(sid)] = (pi, bool(k))
        kept = bool(keep.any())
        # Eq. 2-3 with the loss the student learns (Eq. 1's MSE unless kd_loss says otherwise)
        before = (subbatch_kd_loss(logits.float(), kb.teacher, kb.mask, keep,
                                   loss=ctx.kd_loss).item() if kept else 0.0)
        ctx.model.train()
        with ctx.autocast():
            loss = KD_LOSSES[ctx.kd_loss](kb.word_outputs(ctx.model, ctx), kb.teacher, kb.mask,
                                          kb.weights * keep.float())
        # nothing kept on a single worker: no update at all (the paper skips the step)
        ctx.update(loss, apply=kept or ctx.world > 1)
        reward = None
        if kept:
            ctx.bare.eval()
            with torch.no_grad(), ctx.autocast():
                after = subbatch_kd_loss(kb.word_outputs(ctx.bare, ctx).float(), kb.teacher,
                                         kb.mask, keep, loss=ctx.kd_loss).item()
            reward = delayed_reward(before, after)
        self._epoch.append(self.selector.learn(cached, reward))
        ctx.model.train()
        return loss.item()

    def epoch_metrics(self) -> dict:
        recs, self._epoch = self._epoch, []
        if not recs:
            return {"rl_steps": 0}
        return {"rl_steps": len(recs),
                "discard_ratio": sum(r["discard_ratio"] for r in recs) / len(recs),
                "reward": sum(r["reward"] for r in recs) / len(recs)}

    def finish(self, out_dir: Optional[str]) -> None:
        """Write this rank's per-instance decisions and per-step history under ``out_dir``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not out_dir:
            return
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        ids = list(self.decisions)
        pq.write_table(pa.table({
            "sent_id": pa.array(ids, pa.string()),
            "policy_p": pa.array([self.decisions[i][0] for i in ids], pa.float32()),
            "selected": pa.array([self.decisions[i][1] for i in ids], pa.bool_())}),
            d / f"decisions-rank{self.ctx.rank}.parquet")
        (d / f"history-rank{self.ctx.rank}.json").write_text(json.dumps(self.selector.history))


class ReverseFocalStep(SupervisedStep):
    """Cross-entropy on (projected) tags re-weighted by ``(1 + p_t)^gamma`` (Li et al. Sec. 4.3,
    paper gamma 4; gamma 0 is plain cross-entropy): loss ``"rw"``, ``step_args={"gamma": g}``."""

    def __init__(self, ctx: StepContext, loss: str, gamma: float = 4.0, **_: Any):
        self.ctx, self.gamma = ctx, float(gamma)
        self.loss_fn = self._loss

    def _loss(self, ctx: StepContext, batch) -> torch.Tensor:
        from xner_ray.models.classifier import encode_words
        from xner_ray.train.losses import reverse_focal_loss

        enc = encode_words(ctx.tokenizer, _words(batch), [list(t) for t in batch["tags"]],
                           ctx.label2id, max_length=ctx.max_length)
        logits = ctx.model(input_ids=enc.input_ids.to(ctx.device),
                           attention_mask=enc.attention_mask.to(ctx.device)).logits
        return reverse_focal_loss(logits, enc.labels.to(ctx.device), self.gamma)


class AlignStep(SupervisedStep):
    """The entity alignment model (Li et al. Sec. 3.1): cross-entropy on the target words of
    ``query [SEP] target`` rows (columns ``query``, ``tokens``, ``tags``): loss ``"align"``.
    ``step_args={"dev_queries": [...]}`` pairs each dev row's words with its query."""

    def __init__(self, ctx: StepContext, loss: str, dev_queries: Optional[list] = None, **_: Any):
        self.ctx, self.dev_queries = ctx, dev_queries or []
        self.loss_fn = self._loss

    def _loss(self, ctx: StepContext, batch) -> torch.Tensor:
        from xner_ray.projection.model import encode_pairs

        enc = encode_pairs(ctx.tokenizer, [list(q) for q in batch["query"]], _words(batch),
                           [list(t) for t in batch["tags"]], ctx.label2id,
                           max_length=ctx.max_length)
        inputs = {k: v.to(ctx.device) for k, v in enc.inputs.items()}
        return ctx.model(**inputs, labels=enc.labels.to(ctx.device)).loss

    def predict_dev(self, tokens: list) -> list[list[str]]:
        from xner_ray.projection.model import predict_alignment

        if len(tokens) != len(self.dev_queries):
            raise ValueError(f"{len(tokens)} dev rows but {len(self.dev_queries)} dev queries")
        tags, _ = predict_alignment(self.ctx.bare, self.ctx.tokenizer, self.dev_queries, tokens,
                                    max_length=self.ctx.max_length, device=self.ctx.device)
        return tags


STEPS = {"ce": SupervisedStep, "kd": SupervisedStep, "rikd": RikdStep, "rw": ReverseFocalStep,
         "align": AlignStep}
