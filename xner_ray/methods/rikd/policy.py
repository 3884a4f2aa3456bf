"""RIKD's reinforced instance selector (Liang et al. 2021, section 3.3), pure torch, no Ray.

Per training batch (RIKD Algorithm 2, lines 6-12), inside a worker:

1. ``StateEncoder`` builds s = [f_entities, f_conf, f_agree, f_semantic, f_length] (3.3.1)
   from the teacher's soft labels and tags and the *current* student's word distributions and
   last hidden states (word-level, as ``losses.gather_words`` returns them).
2. ``Policy`` gives pi(s) = sigmoid(W2 relu(W1 s + b1) + b2), the keep probability (3.3.2);
   ``sample_actions`` draws a ~ Bernoulli(pi(s)).
3. The student is updated on the kept sub-batch (Eq. 2; ``subbatch_kd_loss`` = ``kd_mse_loss``
   with 0/1 weights; ``kd_kl_loss`` with ``kd_loss: kl``). ``delayed_reward`` turns two losses
   into r (Eq. 3).
4. ``reinforce_update`` minimises Eq. 4 with the states and actions cached at sampling time.

``RLSelector`` holds the pieces, one SGD optimizer (lr 0.01, section 4.2) and per-step metrics.

What makes it learn (the paper's REINFORCE, Eq. 4, with the textbook variance controls the paper
does not spell out; without them the delayed rewards are ~1e-4, the policy never leaves its
start and keeps a random half of each batch):

- **Standardised state** (``RunningNorm``): every state dimension is centred and scaled by
  running statistics of the states seen (not trained, no gradient), so f_agree (~1e-3) and
  f_length (~3) enter W1 on the same footing and a fixed step size means the same everywhere.
- **Reward baseline and normalisation** (``RewardNormalizer``): Eq. 4 is applied with the
  advantage (r - b) / sigma instead of r, b the running mean of the previous rewards and sigma
  their running standard deviation. Subtracting a baseline that does not depend on the current
  actions leaves the REINFORCE gradient unbiased and removes most of its variance; dividing by
  sigma makes the step size independent of the loss scale (1e-4 or 1), so the paper's SGD lr
  0.01 moves the policy.

Trainable by REINFORCE: the policy MLP and the encoder's label embeddings U and W_u, b_u (3.3.1:
"the parameters introduced to learn the state features are part of the policy network"). Every
input is detached inside the encoder, so the student never gets a gradient from Eq. 4.

Scalar features are rescaled before standardisation (raw values: ``StateEncoder.raw_features``):
f_entities -> log1p, f_conf -> log1p (mean NLL; the 1e-12 floor of ``scores.EPS`` caps it at 27.6),
f_agree -> sqrt(c * f_agree), the RMS Euclidean distance of the two distributions, in [0, sqrt 2]
(f_agree is an MSE averaged over the c labels, so at most 2 / c), f_length -> log1p. All are
monotone, so the policy sees the same order as the paper's raw features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

from xner_ray.scores import EPS, OUTSIDE
from xner_ray.train.losses import KD_LOSSES

SCALARS = ("f_entities", "f_conf", "f_agree", "f_length")
FEATURES = ("f_entities", "f_conf", "f_agree", "f_semantic", "f_length")  # RIKD 3.3.1, Table 8


def _fp32(device: torch.device):
    """Selector math stays fp32 even when called inside the trainer's bf16 autocast region."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@dataclasses.dataclass
class StateInputs:
    """Word-level inputs of one batch: [B, T, ...] tensors and the [B, T] word mask."""

    teacher_probs: torch.Tensor   # [B, T, c] teacher soft labels (``losses.teacher_tensor``)
    teacher_tags: torch.Tensor    # [B, T] long, teacher's predicted label ids; padding: any value
    student_probs: torch.Tensor   # [B, T, c] current student's distributions
    student_hidden: torch.Tensor  # [B, T, H] student's last hidden states at first sub-words
    mask: torch.Tensor            # [B, T] bool, False on padding and truncated words

    def __post_init__(self) -> None:
        b, t = self.mask.shape
        shapes = {"teacher_probs": self.teacher_probs.shape[:2],
                  "teacher_tags": self.teacher_tags.shape,
                  "student_probs": self.student_probs.shape[:2],
                  "student_hidden": self.student_hidden.shape[:2]}
        bad = {k: tuple(v) for k, v in shapes.items() if tuple(v) != (b, t)}
        if bad or self.teacher_probs.shape != self.student_probs.shape:
            raise ValueError(
                f"state inputs must share [B, T] = {(b, t)} with the mask and the teacher/student "
                f"probs must match; got {bad}, {tuple(self.teacher_probs.shape)} vs "
                f"{tuple(self.student_probs.shape)}")

    @classmethod
    def from_student(cls, word_logits: torch.Tensor, word_hidden: torch.Tensor,
                     teacher_probs: torch.Tensor, mask: torch.Tensor,
                     teacher_tags: Optional[torch.Tensor] = None) -> "StateInputs":
        """From ``gather_words`` outputs; teacher tags default to the argmax of its soft labels."""
        tags = teacher_probs.argmax(-1) if teacher_tags is None else teacher_tags
        return cls(teacher_probs, tags, torch.softmax(word_logits.detach().float(), -1),
                   word_hidden, mask).detached()

    def detached(self) -> "StateInputs":
        """fp32 copies cut from any graph (cached for the delayed update; no student gradient)."""
        return StateInputs(self.teacher_probs.detach().float(),
                           self.teacher_tags.detach().long(),
                           self.student_probs.detach().float(),
                           self.student_hidden.detach().float(), self.mask.detach().bool())


class StateEncoder(nn.Module):
    """RIKD 3.3.1 state s = [f_entities, f_conf, f_agree, f_semantic, f_length], d_z + 4 wide.

    ``drop``: features removed from the state (RIKD Table 8's ablations): their entries are
    zero, so the policy cannot read them (the width stays, and so do the paper's sizes)."""

    def __init__(self, labels: Sequence[str], hidden_size: int, d_u: int = 50, d_z: int = 256,
                 drop: Sequence[str] = ()):
        super().__init__()
        if OUTSIDE not in labels:
            raise ValueError(f"label set {list(labels)} has no {OUTSIDE!r} tag (f_entities)")
        unknown = sorted(set(drop) - set(FEATURES))
        if unknown:
            raise ValueError(f"unknown state features {unknown}; valid: {list(FEATURES)}")
        self.drop = tuple(drop)
        self.n_labels, self.outside_id, self.d_z = len(labels), list(labels).index(OUTSIDE), d_z
        self.label_emb = nn.Embedding(len(labels), d_u)       # U in R^{c x d_u}
        self.proj = nn.Linear(hidden_size + d_u, d_z)         # W_u, b_u
        self.state_dim = d_z + len(SCALARS)

    @staticmethod
    def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        return (values * m).sum(1) / m.sum(1).clamp(min=1)  # a 0-word sentence gives 0

    def raw_features(self, x: StateInputs) -> dict[str, torch.Tensor]:
        """Unscaled scalar features, each [B], over unmasked words only."""
        x = x.detached()
        ok = ((x.teacher_tags >= 0) & (x.teacher_tags < self.n_labels)) | ~x.mask
        if not bool(ok.all()):
            raise ValueError(f"teacher tag ids outside [0, {self.n_labels}) on unmasked words")
        tags = torch.where(x.mask, x.teacher_tags, torch.zeros_like(x.teacher_tags))
        picked = x.teacher_probs.gather(-1, tags.unsqueeze(-1)).squeeze(-1)
        nll = -picked.clamp(min=EPS).log()
        # per-sentence term of kd_mse_loss (RIKD Eq. 1), with the current student
        mse = ((x.teacher_probs - x.student_probs) ** 2).mean(-1)
        return {"f_entities": ((tags != self.outside_id) & x.mask).sum(1).float(),
                "f_conf": self._masked_mean(nll, x.mask),
                "f_agree": self._masked_mean(mse, x.mask),
                "f_length": x.mask.sum(1).float()}

    def scaled_features(self, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, 4] in SCALARS order; the scaling is described in the module docstring."""
        return torch.stack([raw["f_entities"].log1p(), raw["f_conf"].log1p(),
                            (raw["f_agree"] * self.n_labels).clamp(min=0).sqrt(),
                            raw["f_length"].log1p()], dim=1)

    def semantic(self, x: StateInputs) -> torch.Tensor:
        """f_semantic = MaxPool_i(W_u [h_i; u_i] + b_u) over unmasked words, [B, d_z]."""
        x = x.detached()
        tags = torch.where(x.mask, x.teacher_tags, torch.zeros_like(x.teacher_tags))
        z = self.proj(torch.cat([x.student_hidden, self.label_emb(tags)], dim=-1))
        if z.shape[1] == 0:
            return z.new_zeros(z.shape[0], self.d_z)
        pooled = z.masked_fill(~x.mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        return torch.where(x.mask.any(1, keepdim=True), pooled, torch.zeros_like(pooled))

    def forward(self, x: StateInputs) -> torch.Tensor:
        with _fp32(x.mask.device):
            scal = self.scaled_features(self.raw_features(x))
            sem = self.semantic(x)
            if self.drop:
                keep = torch.tensor([f not in self.drop for f in SCALARS], device=scal.device)
                scal = scal * keep
                if "f_semantic" in self.drop:
                    sem = torch.zeros_like(sem)
            return torch.cat([scal[:, :3], sem, scal[:, 3:]], dim=1)


class Policy(nn.Module):
    """RIKD 3.3.2: pi(s) = sigmoid(W2 relu(W1 s + b1) + b2), the probability to keep (a = 1).

    W2 starts at zero and b2 at logit(init_keep): every state gets p = init_keep at first (a
    neutral policy), and W1 starts learning once W2 has moved.
    """

    def __init__(self, state_dim: int, hidden: int = 256, init_keep: float = 0.5):
        super().__init__()
        if not 0 < init_keep < 1:
            raise ValueError(f"init_keep must be in (0, 1), got {init_keep}")
        self.fc1, self.fc2 = nn.Linear(state_dim, hidden), nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, math.log(init_keep / (1 - init_keep)))

    def logits(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(s))).squeeze(-1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(s))


def sample_actions(p: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """a_i ~ Bernoulli(p_i) as bool [B] (True = keep); ``generator`` may live on another device."""
    u = torch.rand(p.shape, generator=generator,
                   device=generator.device if generator is not None else p.device)
    return u.to(p.device) < p.detach()


def log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log[(1 - a) (1 - pi) + a pi] of RIKD Eq. 4, via logsigmoid (finite when pi saturates)."""
    a = actions.float()
    return a * nn.functional.logsigmoid(logits) + (1 - a) * nn.functional.logsigmoid(-logits)


def reinforce_update(optimizer: torch.optim.Optimizer, log_probs: torch.Tensor, reward: float,
                     reduction: str = "mean") -> float:
    """One step on RIKD Eq. 4, L = 1/|S| sum_i (-r) log pi(a_i | s_i); returns L.

    With SGD this is theta <- theta + lr * r * (1/|S|) sum_i grad log pi(a_i | s_i). The paper
    averages over the batch (``"mean"``); ``"sum"`` drops the 1/|S|.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    terms = -float(reward) * log_probs
    loss = terms.mean() if reduction == "mean" else terms.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def delayed_reward(loss_before: float, loss_after: float) -> float:
    """RIKD Eq. 3: r = L(D_b'; Theta^{j-1}) - L(D_b'; Theta^j); > 0 when the step helped.

    Here both are the KD loss (Eq. 2) on the *same kept sub-batch* D_b': ``loss_before`` with the
    student before this step's update (the training loss of the step), ``loss_after`` with the
    updated student (one extra no-grad forward). The paper's Algorithm 2 line 11 ("the training
    loss of the current step and the previous step", the first one initialised from the last
    warm-up step) suggests the authors' code used consecutive training losses instead; that
    variant is this function called with (previous step's loss, this step's loss). Take both
    losses in the same mode: dropout noise in a train-mode loss can be as large as the delta.
    """
    before, after = float(loss_before), float(loss_after)
    if not (math.isfinite(before) and math.isfinite(after)):
        raise ValueError(f"non-finite loss for the reward: before={before}, after={after}")
    return before - after


REWARDS = ("consecutive", "same_batch")


class DelayedReward:
    """RIKD Eq. 3, r = L(D_b'; Theta^{j-1}) - L(D_b'; Theta^j), in one of two readings.

    ``"consecutive"`` (default): the training loss of the previous step minus that of the
    current step -- Algorithm 2 line 11 ("the training loss of the current step and the
    previous step") and the text under Eq. 3 (the first term "is cached beforehand, and
    initialized by the training loss of the last warm-up training step", which only makes sense
    for a loss of an *earlier* batch): ``start(last_warmup_loss)``, then ``r = self(loss_j)``
    with loss_j the kept sub-batch's KD loss at step j before its update. A step that kept
    instances the student disagrees with (likely wrong pseudo-labels) has a higher loss and a
    lower reward, so the policy learns to drop them. Costs no extra forward.

    ``"same_batch"``: the kept sub-batch's loss before minus after this step's update (one more
    forward). On the toy task of tests/test_rikd_policy.py (30% of the pseudo-labels
    corrupted, 3 seeds, 300 steps) it separated them worse (AUC 0.53-0.77 against 0.80-0.87
    over 8 seeds) and drove the policy to discard ~92% of each batch: in one step the loss of a
    wrong label drops about as much as a right one's.
    """

    def __init__(self, mode: str = "consecutive"):
        if mode not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {mode!r}")
        self.mode, self.prev = mode, None

    @property
    def needs_after(self) -> bool:
        return self.mode == "same_batch"

    def start(self, loss: float) -> None:
        """The last warm-up step's training loss (Eq. 3: the first cached term)."""
        self.prev = float(loss)

    def __call__(self, before: float, after: Optional[float] = None) -> Optional[float]:
        """r for this step; ``None`` for a first consecutive step without a cached loss."""
        if self.mode == "same_batch":
            if after is None:
                raise ValueError("same_batch reward needs the loss after the update")
            return delayed_reward(before, after)
        prev, self.prev = self.prev, float(before)
        return None if prev is None else delayed_reward(prev, before)


def subbatch_kd_loss(word_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor,
                     keep: torch.Tensor, loss: str = "mse") -> torch.Tensor:
    """RIKD Eq. 2: the KD loss (Eq. 1, ``kd_mse_loss``; ``loss="kl"``: ``kd_kl_loss``) averaged
    over the kept instances only."""
    return KD_LOSSES[loss](word_logits, teacher_probs, mask, keep.float())


@dataclasses.dataclass
class Cached:
    """What ``act`` keeps for the delayed update: detached encoder inputs, actions, p."""

    inputs: Any
    actions: torch.Tensor
    p: torch.Tensor
    step: int
    bias: float = 0.0  # the keep-rate offset the actions were sampled with (``keep_target``)

    @property
    def n_kept(self) -> int:
        return int(self.actions.sum())


class RunningNorm(nn.Module):
    """Standardises state vectors, (s - mean) / sqrt(var + eps) per dimension, with running
    statistics (buffers, no gradient): the mean over the batches seen for the first
    ``1 / momentum`` updates, then an exponential moving average -- the student, and so the
    states, drift during training. ``update`` is called on the states of each sampled batch
    (``RLSelector.act``); the cached states of the delayed update are normalised with the same
    statistics (``learn`` follows its ``act`` directly)."""

    def __init__(self, dim: int, momentum: float = 0.01, eps: float = 1e-8):
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, s: torch.Tensor) -> None:
        s = s.detach().float()
        if s.shape[0] == 0:
            return
        self.count += 1
        m = max(1.0 / float(self.count), self.momentum)
        mean = s.mean(0)
        var = s.var(0, unbiased=False) + (mean - self.mean) ** 2 * (1 - m)
        self.mean.mul_(1 - m).add_(m * mean)
        self.var.copy_(var if int(self.count) == 1 else (1 - m) * self.var + m * var)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        # clipped: a dimension (nearly) constant so far must not blow up a later state
        return ((s - self.mean) / (self.var + self.eps).sqrt()).clamp(-10.0, 10.0)


class RewardNormalizer:
    """Advantage (r - b) / sigma for Eq. 4: b the running mean of the *previous* rewards, sigma
    the running RMS of their deviations from it (both: the plain mean for the first
    ``1 / momentum`` rewards, then an exponential moving average). The first reward has no
    history: its advantage is its sign. Clipped to +-``clip``. ``state_dict`` keeps it
    resumable with the policy."""

    def __init__(self, momentum: float = 0.05, clip: float = 5.0, eps: float = 1e-12):
        if not 0 < momentum <= 1 or clip <= 0:
            raise ValueError(f"need momentum in (0, 1] and clip > 0, got {momentum}, {clip}")
        self.momentum, self.clip, self.eps = momentum, clip, eps
        self.n, self.mean, self.var = 0, 0.0, 0.0

    def __call__(self, r: float) -> float:
        """The advantage of ``r``; then ``r`` joins the statistics."""
        r = float(r)
        if self.n == 0:
            adv = math.copysign(1.0, r) if r != 0 else 0.0
        else:
            adv = (r - self.mean) / math.sqrt(self.var + self.eps)
        self.n += 1
        m = max(1.0 / self.n, self.momentum)
        dev = r - self.mean
        self.mean += m * dev
        self.var = dev * dev if self.n == 1 else (1 - m) * (self.var + m * dev * dev)
        return max(-self.clip, min(self.clip, adv))

    @property
    def baseline(self) -> float:
        return self.mean

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "var": self.var}


class RLSelector(nn.Module):
    """State encoder + state standardisation + policy, one SGD optimizer over the trainable
    parts, the reward normaliser and the per-step history.

    ``act(inputs) -> (keep, p, cached)``; the trainer updates the student on ``keep`` (or skips
    the update when nothing is kept) and then calls ``learn(cached, reward)`` with the raw
    delayed reward r (Eq. 3); Eq. 4 is applied with the advantage ``reward_scale * (r - b) /
    sigma`` (module docstring). ``normalize=False`` and ``standardize=False`` give the paper's
    literal update (r itself; raw states), which at KD-loss deltas of ~1e-4 does not move.

    ``keep_target`` (opt-in; not in the paper): hold the expected keep rate at this share. Both
    readings of Eq. 3 reward a kept set with a low mean KD loss, so a policy that learns drifts
    towards discarding nearly everything (``benchmarks/results/rikd_policy_toy.md``). With a
    target, one scalar offset ``keep_bias`` is added to every logit and moved after each
    ``act`` by ``keep_rate_lr * (keep_target - mean pi)`` -- dual ascent on the constraint
    E[pi] = keep_target. REINFORCE still shapes *which* instances are kept; the offset decides
    how many. It is a buffer (saved with the policy) and takes no gradient.

    All-discard batch: Eq. 3 is undefined on an empty sub-batch, so the trainer skips the
    student update and calls ``learn(cached, None)``: no reward enters the statistics, and the
    policy steps with advantage ``empty_reward`` (default 0: no change). A negative
    ``empty_reward`` pushes a collapsing policy back towards keeping instances, but weakly:
    grad log(1 - pi) wrt the logit is -pi, so a saturated policy (pi -> 0) barely moves.
    """

    def __init__(self, encoder: nn.Module, policy: Policy, lr: float = 0.01, *,
                 reward_scale: float = 1.0, empty_reward: float = 0.0, reduction: str = "mean",
                 normalize: bool = True, standardize: bool = True, state_dim: Optional[int] = None,
                 generator: Optional[torch.Generator] = None,
                 keep_target: Optional[float] = None, keep_rate_lr: float = 0.2):
        super().__init__()
        if reduction not in ("mean", "sum") or lr <= 0:
            raise ValueError(f"need lr > 0 and reduction in ('mean', 'sum'), got {lr}, "
                             f"{reduction!r}")
        if keep_target is not None and not (0 < keep_target < 1 and keep_rate_lr > 0):
            raise ValueError(f"keep_target must be in (0, 1) with keep_rate_lr > 0, got "
                             f"{keep_target}, {keep_rate_lr}")
        self.keep_target, self.keep_rate_lr = keep_target, keep_rate_lr
        self.register_buffer("keep_bias", torch.zeros(()))
        self.encoder, self.policy = encoder, policy
        dim = state_dim or policy.fc1.in_features
        self.norm = RunningNorm(dim) if standardize else None
        self.optimizer = torch.optim.SGD(self.parameters(), lr=lr)
        self.reward_scale, self.empty_reward, self.reduction = reward_scale, empty_reward, reduction
        self.rewards = RewardNormalizer() if normalize else None
        self.generator = generator
        self.n_acts = 0
        self.history: list[dict] = []

    @classmethod
    def build(cls, labels: Sequence[str], hidden_size: int, *, d_u: int = 50, d_z: int = 256,
              d_s: int = 256, init_keep: float = 0.5, seed: Optional[int] = None,
              drop_features: Sequence[str] = (), **kwargs) -> "RLSelector":
        """The paper's sizes (section 4.2): d_u = 50, d_z = d_s = 256, SGD lr 0.01;
        ``drop_features``: a Table 8 ablation (``StateEncoder``'s ``drop``)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            enc = StateEncoder(labels, hidden_size, d_u=d_u, d_z=d_z, drop=drop_features)
            pol = Policy(enc.state_dim, d_s, init_keep=init_keep)
        return cls(enc, pol, generator=gen, **kwargs)

    @staticmethod
    def _detach(inputs: Any) -> Any:
        return inputs.detached() if hasattr(inputs, "detached") else inputs.detach()

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _logits(self, inputs: Any, update_norm: bool = False,
                bias: Optional[float] = None) -> torch.Tensor:
        """The policy's logits plus the keep-rate offset (the current one, or ``bias``)."""
        s = self.encoder(inputs)
        if self.norm is not None:
            if update_norm:
                self.norm.update(s)
            s = self.norm(s)
        return self.policy.logits(s) + (float(self.keep_bias) if bias is None else bias)

    def keep_prob(self, inputs: Any) -> torch.Tensor:
        """pi(s) for a batch with the current statistics, changing nothing (for inspection)."""
        with torch.no_grad(), _fp32(self._device()):
            return torch.sigmoid(self._logits(self._detach(inputs)))

    def act(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor, Cached]:
        """Sample keep/drop for a batch (Algorithm 2, lines 7-9); only the running state
        statistics change."""
        inputs = self._detach(inputs)
        bias = float(self.keep_bias)
        with torch.no_grad(), _fp32(self._device()):
            p = torch.sigmoid(self._logits(inputs, update_norm=True, bias=bias))
        if p.numel() == 0:
            raise ValueError("act() needs a batch with at least one instance")
        keep = sample_actions(p, self.generator)
        self.n_acts += 1
        if self.keep_target is not None:  # dual ascent on E[pi] = keep_target (class doc)
            self.keep_bias += self.keep_rate_lr * (self.keep_target - float(p.mean()))
        return keep, p, Cached(inputs, keep, p, self.n_acts, bias)

    def advantage(self, reward: float) -> float:
        """What multiplies log pi in Eq. 4 for a measured reward r."""
        adv = self.rewards(reward) if self.rewards is not None else float(reward)
        return self.reward_scale * adv

    def learn(self, cached: Cached, reward: Optional[float]) -> dict:
        """Eq. 4 on the cached states and actions (Algorithm 2, line 12)."""
        empty = cached.n_kept == 0
        if reward is None and not empty:
            raise ValueError(f"a reward is required: {cached.n_kept} instances were kept")
        if reward is None:
            r, adv = 0.0, float(self.empty_reward)
        else:
            r = float(reward)
            adv = self.advantage(r)
        if adv != 0.0:
            with _fp32(self._device()):
                lp = log_prob(self._logits(cached.inputs, bias=cached.bias), cached.actions)
                reinforce_update(self.optimizer, lp, adv, self.reduction)
        n = cached.actions.numel()
        rec = {"step": cached.step, "discard_ratio": 1.0 - cached.n_kept / n, "reward": r,
               "advantage": adv, "mean_p": float(cached.p.mean()), "n_kept": cached.n_kept,
               "empty": empty, "keep_bias": cached.bias}
        self.history.append(rec)
        return rec

    def skip(self, cached: Cached) -> dict:
        """Record a step whose reward could not be measured (the first consecutive step with no
        cached loss): no policy update."""
        rec = {"step": cached.step, "discard_ratio": 1.0 - cached.n_kept / cached.actions.numel(),
               "reward": 0.0, "advantage": 0.0, "mean_p": float(cached.p.mean()),
               "n_kept": cached.n_kept, "empty": cached.n_kept == 0, "keep_bias": cached.bias}
        self.history.append(rec)
        return rec

    def summary(self) -> dict:
        """Totals for one log line per worker."""
        h = self.history
        out = {k: sum(x[k] for x in h) / len(h) if h else float("nan")
               for k in ("discard_ratio", "reward", "mean_p")}
        return {"steps": len(h), "empty_steps": sum(x["empty"] for x in h), **out}
