"""RIKD's training step for the shared Ray Train loop (Algorithm 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from xner_ray.train.steps import KDBatch, StepContext, kd_loss


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
        from xner_ray.methods.rikd.policy import RLSelector

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
        from xner_ray.methods.rikd.policy import StateInputs, delayed_reward, subbatch_kd_loss
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
