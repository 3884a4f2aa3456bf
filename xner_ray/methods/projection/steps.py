"""Training steps of the projection method for the shared loop: the re-weighted loss of the
target model (Li et al. Sec. 4.3) and the entity alignment model (Sec. 3.1)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from xner_ray.train.steps import StepContext, SupervisedStep, _words


class ReverseFocalStep(SupervisedStep):
    """Cross-entropy on (projected) tags re-weighted by ``(1 + p_t)^gamma`` (Li et al. Sec. 4.3,
    paper gamma 4; gamma 0 is plain cross-entropy), the weight a detached per-token constant
    (``losses.reverse_focal_loss``): ``fit(step=ReverseFocalStep, step_args={"gamma": g})``."""

    def __init__(self, ctx: StepContext, gamma: float = 4.0, **_: Any):
        self.ctx, self.gamma = ctx, float(gamma)
        self.loss_fn = self._loss

    def _loss(self, ctx: StepContext, batch) -> torch.Tensor:
        from xner_ray.train.inputs import encode
        from xner_ray.train.losses import reverse_focal_loss

        enc = encode(ctx, batch, [list(t) for t in batch["tags"]])
        logits = ctx.model(input_ids=enc.input_ids.to(ctx.device),
                           attention_mask=enc.attention_mask.to(ctx.device)).logits
        return reverse_focal_loss(logits, enc.labels.to(ctx.device), self.gamma)


class AlignStep(SupervisedStep):
    """The entity alignment model (Li et al. Sec. 3.1): cross-entropy on the target words of
    ``query [SEP] target`` rows (columns ``query``, ``tokens``, ``tags``): ``fit(step=AlignStep)``.
    ``step_args={"dev_queries": [...]}`` pairs each dev row's words with its query. Its rows
    are sentence pairs, tokenized in the step (no pre-tokenizing stage)."""

    pretokenized = False

    def __init__(self, ctx: StepContext, dev_queries: Optional[list] = None, **_: Any):
        self.ctx, self.dev_queries = ctx, dev_queries or []
        self.loss_fn = self._loss

    def _loss(self, ctx: StepContext, batch) -> torch.Tensor:
        from xner_ray.methods.projection.model import encode_pairs

        enc = encode_pairs(ctx.tokenizer, [list(q) for q in batch["query"]], _words(batch),
                           [list(t) for t in batch["tags"]], ctx.label2id,
                           max_length=ctx.max_length)
        inputs = {k: v.to(ctx.device) for k, v in enc.inputs.items()}
        return ctx.model(**inputs, labels=enc.labels.to(ctx.device)).loss

    def predict_dev(self, tokens: list) -> list[list[str]]:
        from xner_ray.methods.projection.model import predict_alignment

        if len(tokens) != len(self.dev_queries):
            raise ValueError(f"{len(tokens)} dev rows but {len(self.dev_queries)} dev queries")
        tags, _ = predict_alignment(self.ctx.bare, self.ctx.tokenizer, self.dev_queries, tokens,
                                    max_length=self.ctx.max_length, device=self.ctx.device)
        return tags
