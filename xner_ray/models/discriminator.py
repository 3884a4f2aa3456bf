"""The language discriminator of AdvPicker (Eq. 3) and its files next to a teacher.

Two linear layers with a ReLU between them and one sigmoid output, P(source | h_i), over an
encoder's token vectors. It lives with the models (not with the TLADV trainer) because the
labeling pipeline reads it to fill ``lang_score`` (Eq. 5-6) without importing a trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

DISCRIMINATOR_WEIGHTS = "discriminator.safetensors"
DISCRIMINATOR_CONFIG = "discriminator.json"
DISCRIMINATOR_VERSION = "tladv_discriminator.v1"
SOURCE, TARGET = 1.0, 0.0  # y^DIS: the discriminator's sigmoid is P(source) (Eq. 3)


class LanguageDiscriminator(nn.Module):
    """AdvPicker Eq. 3: P(source | h_i) = sigmoid(W_DIS1 ReLU(W_DIS2 h_i)) for every token.

    ``forward`` returns the pre-sigmoid logits [B, S]; losses use the logits with a fused
    log-sigmoid (the same BCE, numerically stable), probabilities are ``sigmoid(logits)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int = 500):
        super().__init__()
        if input_dim < 1 or hidden_dim < 1:
            raise ValueError(f"input_dim and hidden_dim must be >= 1, got {input_dim}, {hidden_dim}")
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.hidden = nn.Linear(input_dim, hidden_dim)  # W_DIS2
        self.out = nn.Linear(hidden_dim, 1)  # W_DIS1, d_l = 1: one sigmoid output

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(h))).squeeze(-1)


def sentence_source_prob(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """AdvPicker Eq. 5 per sentence: the mean over its tokens of P(source | h_i) [B]."""
    m = mask.to(torch.float32)
    return (torch.sigmoid(logits.float()) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def has_discriminator(folder: str | Path) -> bool:
    return (Path(folder) / DISCRIMINATOR_WEIGHTS).is_file() and (
        Path(folder) / DISCRIMINATOR_CONFIG).is_file()


def save_discriminator(disc: LanguageDiscriminator, folder: str | Path, **meta: Any) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in disc.state_dict().items()}
    save_file(state, str(folder / DISCRIMINATOR_WEIGHTS))
    (folder / DISCRIMINATOR_CONFIG).write_text(json.dumps({
        "version": DISCRIMINATOR_VERSION, "input_dim": disc.input_dim,
        "hidden_dim": disc.hidden_dim, "output": "sigmoid = P(source language) per token",
        **meta}, indent=2))


def load_discriminator(folder: str | Path) -> LanguageDiscriminator:
    """The discriminator saved next to a TLADV teacher (safetensors only)."""
    from safetensors.torch import load_file

    from xner_ray.models.classifier import resolve

    folder = Path(resolve(str(folder)))  # a URI: this node's cached copy
    if not has_discriminator(folder):
        raise ValueError(f"{folder} holds no language discriminator ({DISCRIMINATOR_WEIGHTS} + "
                         f"{DISCRIMINATOR_CONFIG}): train it with TLADV (jobs/advpicker.py)")
    meta = json.loads((folder / DISCRIMINATOR_CONFIG).read_text())
    if meta.get("version") != DISCRIMINATOR_VERSION:
        raise ValueError(f"{folder}/{DISCRIMINATOR_CONFIG}: version {meta.get('version')!r}, "
                         f"expected {DISCRIMINATOR_VERSION!r}")
    disc = LanguageDiscriminator(int(meta["input_dim"]), int(meta["hidden_dim"]))
    disc.load_state_dict(load_file(str(folder / DISCRIMINATOR_WEIGHTS)))
    return disc.eval()
