"""RIKD's training step for the shared Ray Train loop (Algorithm 2)."""

from __future__ import annotations

import json
import math
from typing import Any, Optional

import torch

from xner_ray.train.steps import KDBatch, StepContext, kd_loss


class RikdStep:
    """RIKD Algorithm 2 for one worker: ``warmup_steps`` KD steps on all instances (J_w), then
    reinforced steps (J_r): sample keep/drop per instance from the policy on the state built
    with the current student, update the student on the kept sub-batch (Eq. 2), reward from
    the KD loss of the kept sub-batch (Eq. 3; ``reward``: ``"consecutive"`` -- previous step's
    loss minus this step's, the paper's Algorithm 2 line 11 -- or ``"same_batch"``, before minus
    after this step's update), REINFORCE (Eq. 4) with a running reward baseline, normalised
    rewards and standardised states (``policy.RLSelector``).

    Losses for the reward are taken in eval mode (no dropout noise in the reward). With
    several workers each trains its own policy on its shard, and every rank always runs the
    backward pass (discarded instances get weight 0) so DDP's collectives stay in step.

    RIKD's baselines (Table 7, section 4.5.3): ``rule="confidence"`` (Eq. 5, the teacher's mean
    max label probability) or ``rule="agreement"`` (Eq. 6, minus the mean MSE between the
    teacher's and the current student's distributions) replaces the policy after the same
    warm-up: each batch keeps its highest-scoring instances and discards ``discard_ratio`` of
    them (on average over the batches, at least one kept each: :class:`ShareCarry`) -- the
    paper matches RIKD's average discard ratio.
    ``drop_features`` removes state features from the policy's input (Table 8).
    """

    RULES = ("confidence", "agreement")

    pretokenized = True  # KDBatch.build reads fit()'s pre-tokenized columns

    def __init__(self, ctx: StepContext, warmup_steps: int = 100, policy_lr: float = 0.01,
                 reward_scale: float = 1.0, seed: int = 0, d_u: int = 50, d_z: int = 256,
                 d_s: int = 256, reward: str = "consecutive",
                 selector_id: str = "rikd_policy.v1", rule: Optional[str] = None,
                 discard_ratio: float = 0.0, drop_features: tuple = (),
                 keep_target: Optional[float] = None, **_: Any):
        from xner_ray.methods.rikd.policy import DelayedReward, RLSelector

        if rule is not None and (rule not in self.RULES or not 0.0 <= discard_ratio < 1.0):
            raise ValueError(f"rule must be one of {self.RULES} with 0 <= discard_ratio < 1, "
                             f"got {rule!r}, {discard_ratio}")
        self.ctx, self.warmup, self.n = ctx, warmup_steps, 0
        self.rule, self.discard_ratio = rule, discard_ratio
        self.kept = ShareCarry(1.0 - discard_ratio)  # per batch, averaging to the ratio
        self.selector = None if rule else RLSelector.build(
            ctx.labels, ctx.bare.config.hidden_size, d_u=d_u, d_z=d_z, d_s=d_s,
            seed=seed + ctx.rank, lr=policy_lr, reward_scale=reward_scale,
            drop_features=tuple(drop_features), keep_target=keep_target).to(ctx.device)
        self.history: list[dict] = []  # the rule's steps (the policy keeps its own)
        self.reward = DelayedReward(reward)
        self.decisions: dict[str, tuple[Optional[float], bool]] = {}  # sent_id -> (p, kept)
        self.selector_id = selector_id  # the ``selector`` of the decisions rows
        self._epoch: list[dict] = []

    def __call__(self, batch):
        self.n += 1
        if self.n <= self.warmup:
            for sid in batch["sent_id"]:  # J_w: no decision (policy_p null, not selected)
                self.decisions.setdefault(str(sid), (None, False))
            with self.ctx.autocast():
                loss = kd_loss(self.ctx, batch)
            self.ctx.update(loss)
            if self.n == self.warmup:  # Eq. 3: the first cached loss is the last warm-up's
                self.reward.start(loss.item())
            return loss.detach()  # no host sync per warm-up step (the policy steps need them)
        return self._by_rule(batch) if self.rule else self._reinforced(batch)

    def _by_rule(self, batch):
        """Table 7's baselines: keep each batch's top instances by Eq. 5 or Eq. 6."""
        from xner_ray.train.losses import KD_LOSSES

        ctx = self.ctx
        kb = KDBatch.build(ctx, batch)
        m = kb.mask.float()
        if self.rule == "confidence":  # Eq. 5: mean over words of the max label probability
            word = kb.teacher.max(-1).values
        else:  # Eq. 6: minus the mean over words of the MSE, teacher vs the current student
            ctx.bare.eval()
            with torch.no_grad(), ctx.autocast():
                student = kb.word_outputs(ctx.bare, ctx).float().softmax(-1)
            word = -((kb.teacher - student) ** 2).mean(-1)
        score = (word * m).sum(1) / m.sum(1).clamp(min=1)
        keep = top_k(score, self.kept(score.numel()))
        for sid, k in zip(batch["sent_id"], keep.tolist()):
            self.decisions[str(sid)] = (None, bool(k))
        ctx.model.train()
        with ctx.autocast():
            loss = KD_LOSSES[ctx.kd_loss](kb.word_outputs(ctx.model, ctx), kb.teacher, kb.mask,
                                          kb.weights * keep.float())
        ctx.update(loss)
        n_kept = int(keep.sum())
        rec = {"step": self.n, "discard_ratio": 1.0 - n_kept / len(keep), "reward": None,
               "n_kept": n_kept}
        self.history.append(rec)
        self._epoch.append(rec)
        return loss.detach()

    def _reinforced(self, batch) -> float:
        from xner_ray.methods.rikd.policy import StateInputs, subbatch_kd_loss
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
        if not kept:
            self._epoch.append(self.selector.learn(cached, None))
        else:
            after = None
            if self.reward.needs_after:
                ctx.bare.eval()
                with torch.no_grad(), ctx.autocast():
                    after = subbatch_kd_loss(kb.word_outputs(ctx.bare, ctx).float(), kb.teacher,
                                             kb.mask, keep, loss=ctx.kd_loss).item()
            r = self.reward(before, after)
            self._epoch.append(self.selector.skip(cached) if r is None
                               else self.selector.learn(cached, r))
        ctx.model.train()
        return loss.item()

    def epoch_metrics(self) -> dict:
        recs, self._epoch = self._epoch, []
        if not recs:
            return {"rl_steps": 0}
        rewards = [r["reward"] for r in recs if r["reward"] is not None]
        return {"rl_steps": len(recs),
                "discard_ratio": sum(r["discard_ratio"] for r in recs) / len(recs),
                **({"reward": sum(rewards) / len(rewards)} if rewards else {})}

    def finish(self, out_dir: Optional[str]) -> None:
        """Write this rank's per-instance decisions (rows of the store's ``decisions`` table)
        and per-step history under ``out_dir``: a path or URI every node sees (the round's
        attempt prefix in the store), so nothing travels through the driver."""
        from xner_ray.store.sink import write_decisions, write_text

        if not out_dir:
            return
        ids = list(self.decisions)
        write_decisions(f"{out_dir}/decisions-rank{self.ctx.rank}.parquet", ids,
                        [self.decisions[i][0] for i in ids], [self.decisions[i][1] for i in ids],
                        self.selector_id)
        write_text(f"{out_dir}/history-rank{self.ctx.rank}.json",
                   json.dumps(self.selector.history if self.selector else self.history))


class ShareCarry:
    """How many instances each batch keeps so that the kept share over the batches is
    ``share`` (the paper matches RIKD's *average* discard ratio): floor of the exact count
    plus what earlier batches kept too few or too many (at least one per batch). Rounding
    each batch alone is off by up to half an instance per batch: 21.3% of 16 rounds to 3,
    a discard ratio of 0.8125 for a target of 0.787."""

    def __init__(self, share: float):
        self.share, self.carry = share, 0.0

    def __call__(self, n: int) -> int:
        exact = self.share * n + self.carry
        k = min(n, max(1, math.floor(exact + 1e-9)))
        self.carry = exact - k
        return k


def top_k(score: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` highest scores of a batch (at least one; ties to the earlier
    instance): the per-batch selection of RIKD's Table 7 baselines."""
    n = score.numel()
    k = min(n, max(1, k))
    # a stable sort keeps the earlier of equal scores first
    order = torch.sort(score.float(), descending=True, stable=True).indices[:k]
    keep = torch.zeros(n, dtype=torch.bool, device=score.device)
    keep[order] = True
    return keep
