"""One optimisation step per batch, for each kind of training the shared loop runs.

``CEStep`` is teacher fine-tuning (cross-entropy on gold tags), ``KDStep`` plain distillation
(KD to the teacher's soft labels). Methods define their own steps next to their code
(``methods/rikd/step.py``, ``methods/projection/steps.py``) on the same contract --
``step(batch) -> loss``, ``epoch_metrics()``, ``finish(out_dir)`` -- and hand the class to
``loop.fit(step=...)``: this module names no method. Optional hooks a step class may define:
``module(model, **step_args)`` (a static method: the module the loop DDP-wraps instead of the
token classifier, with ``ddp_kwargs``), ``predict_dev(tokens)`` (its own source-dev tags) and
``save(folder, epoch)`` (its own checkpoint files) -- TLADV's step uses all three.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    total_steps: int = 1  # optimisation steps of the whole run (a step's own schedules)

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
    from xner_ray.train.inputs import encode

    enc = encode(ctx, batch, [list(t) for t in batch["tags"]])
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
        from xner_ray.train.inputs import encode
        from xner_ray.train.losses import teacher_tensor

        enc = encode(ctx, batch)
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
    """Forward, loss, backward, clip, step: teacher fine-tuning ("ce") or plain KD ("kd").

    Its batches arrive pre-tokenized (``pretokenized``: ``fit`` adds the tokenizing stage) and
    it returns the loss detached, not as a Python float: no host sync per step."""

    pretokenized = True

    def __init__(self, ctx: StepContext, loss: str, **_: Any):
        self.ctx, self.loss_fn = ctx, {"ce": ce_loss, "kd": kd_loss}[loss]

    def __call__(self, batch) -> torch.Tensor:
        with self.ctx.autocast():
            loss = self.loss_fn(self.ctx, batch)
        self.ctx.update(loss)
        return loss.detach()

    def epoch_metrics(self) -> dict:
        return {}

    def finish(self, out_dir: Optional[str]) -> None:
        pass


class KDStep(SupervisedStep):
    """Plain distillation: KD to the teacher's soft labels (TSL Eq. 3, RIKD Eq. 1)."""

    def __init__(self, ctx: StepContext, **_: Any):
        super().__init__(ctx, loss="kd")


class CEStep(SupervisedStep):
    """Teacher fine-tuning: cross-entropy on gold tags."""

    def __init__(self, ctx: StepContext, **_: Any):
        super().__init__(ctx, loss="ce")
