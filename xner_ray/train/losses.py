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
