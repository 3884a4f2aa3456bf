"""Distillation losses on word-level (first sub-word) distributions."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def gather_words(logits: torch.Tensor, first_subword: Sequence[np.ndarray]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, S, L] sub-word logits -> ([B, T, L] word logits, [B, T] bool mask).

    T is the longest sentence in words; words cut by truncation (position -1) and padding are
    masked out, so they never enter a loss.
    """
    n_words = max((len(p) for p in first_subword), default=0)
    index = torch.zeros((len(first_subword), n_words), dtype=torch.long)
    mask = torch.zeros((len(first_subword), n_words), dtype=torch.bool)
    for i, pos in enumerate(first_subword):
        pos_t = torch.as_tensor(pos, dtype=torch.long)
        ok = pos_t >= 0
        index[i, : len(pos)] = torch.where(ok, pos_t, torch.zeros_like(pos_t))
        mask[i, : len(pos)] = ok
    index = index.to(logits.device)
    gathered = torch.gather(logits, 1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return gathered, mask


def teacher_tensor(probs, shape: torch.Size) -> torch.Tensor:
    """Ragged per-sentence [T_i, L] soft labels -> one zero-padded [B, T, L] float tensor."""
    out = torch.zeros(shape, dtype=torch.float32)
    for i, p in enumerate(probs):
        arr = np.asarray([np.asarray(row, dtype=np.float32) for row in p], dtype=np.float32)
        if arr.size:
            t = min(len(arr), shape[1])
            out[i, :t] = torch.from_numpy(arr[:t])
    return out


def kd_mse_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
    """Token-level MSE between student and teacher label distributions.

    Per sentence x': (1/L) sum_i MSE(p_student(x'_i), p_teacher(x'_i)) over its L unmasked words
    (TSL Eq. 3; RIKD Eq. 1), MSE averaged over the label dimension as torch's MSELoss does.
    The batch loss is the weight-weighted mean over sentences (TSL Eq. 4 with instance weights:
    a discarded instance has weight 0). Sentences without any unmasked word contribute nothing.
    """
    student = torch.softmax(student_logits.float(), dim=-1)
    per_word = ((student - teacher_probs.float()) ** 2).mean(dim=-1)  # [B, T]
    m = mask.float()
    n_words = m.sum(dim=1)
    per_sent = (per_word * m).sum(dim=1) / n_words.clamp(min=1)
    w = weights.float() * (n_words > 0).float()
    return (per_sent * w).sum() / w.sum().clamp(min=1e-12)


def kd_kl_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor,
               weights: torch.Tensor) -> torch.Tensor:
    """Token-level KL(teacher || student), masked and weighted exactly as ``kd_mse_loss``.

    Not the papers' loss (TSL Eq. 3 and RIKD Eq. 1 are the MSE): an option for students that
    lose rare labels. The MSE's gradient on a logit goes through the softmax Jacobian, so a word
    the student already gives ~0 to a label (a rare type at the start) barely moves; the KL's
    gradient is ``p_student - p_teacher`` and does not vanish there. Per word
    ``sum_k q_k (log q_k - log p_k)`` (0 where the teacher gives 0), per sentence the mean over
    its unmasked words, per batch the weight-weighted mean over sentences.
    """
    log_p = torch.log_softmax(student_logits.float(), dim=-1)
    q = teacher_probs.float()
    per_word = torch.where(q > 0, q * (q.clamp(min=1e-12).log() - log_p), 0.0).sum(dim=-1)
    # selected, not multiplied: a masked word or a weight-0 sentence may hold an infinite KL
    # (padding junk, a student probability of exactly 0), and inf * 0 is nan
    per_word = torch.where(mask, per_word, 0.0)
    n_words = mask.float().sum(dim=1)
    per_sent = per_word.sum(dim=1) / n_words.clamp(min=1)
    w = weights.float() * (n_words > 0).float()
    return torch.where(w > 0, per_sent * w, 0.0).sum() / w.sum().clamp(min=1e-12)


KD_LOSSES = {"mse": kd_mse_loss, "kl": kd_kl_loss}


def reverse_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float,
                       ignore_index: int = -100) -> torch.Tensor:
    """Li et al. Sec. 4.3 re-weighted loss (RW): cross-entropy times ``(1 + p_t)^gamma``.

    The focal loss (Lin et al.) weights a token by ``(1 - p_t)^gamma`` to stress hard examples;
    on noisy pseudo-labels the hard ones are likely wrong, so the weight goes the other way and
    confident tokens count more (paper: gamma in 1..5, 4 works best). ``p_t`` is the model's
    probability of the label. The paper adds the weight "on top of the regular cross entropy
    loss" (Sec. 4.3): a per-token constant, so it is detached. Differentiated through, the
    weight's own gradient outweighs the cross-entropy's for p_t in about (0.16, 0.44) at
    gamma 4, and training would push exactly those labels *down*; detached, every token's
    gradient raises its p_t, low-p_t tokens just less. Mean over the tokens whose label is not
    ``ignore_index``, like torch's cross-entropy, so ``gamma = 0`` is exactly the
    cross-entropy (value and gradient).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    logp = torch.log_softmax(logits.float(), dim=-1)
    keep = labels != ignore_index
    logp_t = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep]
    if not logp_t.numel():
        return logits.sum() * 0.0  # no labelled token: zero, still attached to the graph
    weight = ((1.0 + logp_t.exp()) ** gamma).detach()  # a constant per token (Li et al. 4.3)
    return -(weight * logp_t).mean()
