"""Building, saving and loading a CalibreNet folder.

A folder holds the encoder as a normal Hugging Face model (``save_pretrained``, safetensors)
with its tokenizer, so any HF user can load the encoder alone, plus ``calibrenet.safetensors``
(index embedding, pointer/type/span heads, MLM head if any) and ``calibrenet.json`` (head
config, version, provenance). Weights are read as safetensors only, without remote code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from xner_ray.methods.calibrenet.model import CalibreNet, HeadConfig

HEADS_WEIGHTS = "calibrenet.safetensors"
HEADS_CONFIG = "calibrenet.json"
VERSION = "calibrenet.v1"


def load_encoder(name_or_path: str, *, layers: Optional[int] = None):
    """A bare encoder (``AutoModel``, no pooler where the class allows) cut to its bottom
    ``layers`` layers, and its tokenizer; ``builtin:me5-small`` resolves to the local copy."""
    from transformers import AutoConfig, AutoModel

    from xner_ray.models.classifier import load_tokenizer, quiet_transformers, resolve

    quiet_transformers()
    path = resolve(name_or_path)
    total = AutoConfig.from_pretrained(path, trust_remote_code=False).num_hidden_layers
    if layers is not None and not 1 <= layers <= total:
        raise ValueError(f"layers must be in 1..{total} for {name_or_path}, got {layers}")
    kwargs: dict[str, Any] = dict(use_safetensors=True, trust_remote_code=False,
                                  num_hidden_layers=layers or total)
    try:  # BERT/XLM-R: a pooler is unused here and random in the embedded model
        model = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
    except TypeError:
        model = AutoModel.from_pretrained(path, **kwargs)
    return model, load_tokenizer(name_or_path)


def build_calibrenet(encoder: str, types: Sequence[str], *, layers: Optional[int] = None,
                     with_mlm: bool = False, **head_kwargs: Any):
    """A fresh CalibreNet over ``encoder`` (HF name, path, or a saved CalibreNet folder, whose
    heads are then loaded too -- PBR pre-training followed by fine-tuning) and its tokenizer."""
    if is_calibrenet(encoder):
        model, tok = load_calibrenet(encoder, with_mlm=with_mlm)
        if list(model.cfg.types) != sorted(types):
            model.cfg.types = sorted(types)  # a new label set: the type head starts afresh
            model.type_head = torch.nn.Linear(model.type_head.in_features, len(types))
        for k, v in head_kwargs.items():
            setattr(model.cfg, k, v)
        return model, tok
    enc, tok = load_encoder(encoder, layers=layers)
    return CalibreNet(enc, HeadConfig(types=sorted(types), **head_kwargs), with_mlm=with_mlm), tok


def is_calibrenet(path: str | Path) -> bool:
    p = Path(str(path))
    return (p / HEADS_WEIGHTS).is_file() and (p / HEADS_CONFIG).is_file()


def save_calibrenet(model: CalibreNet, tokenizer, folder: str | Path, **meta: Any) -> Path:
    """Write the folder (see the module doc); ``meta`` lands in ``calibrenet.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not k.startswith("encoder.")}
    save_file(state, str(folder / HEADS_WEIGHTS))
    (folder / HEADS_CONFIG).write_text(json.dumps({
        "version": VERSION, "heads": dataclasses.asdict(model.cfg),
        "with_mlm": model.mlm_head is not None, **meta}, indent=2, default=str))
    return folder


def load_calibrenet(path: str | Path, *, with_mlm: Optional[bool] = None,
                    device: Optional[str | torch.device] = None):
    """``(model, tokenizer)`` from a folder written by :func:`save_calibrenet`, in eval mode.
    ``with_mlm=False`` drops a saved MLM head (fine-tuning and inference do not need it)."""
    from safetensors.torch import load_file

    folder = Path(str(path))
    if not is_calibrenet(folder):
        raise ValueError(f"{folder} is not a CalibreNet folder ({HEADS_WEIGHTS} + {HEADS_CONFIG} "
                         f"missing): train one with train_calibrenet")
    meta = json.loads((folder / HEADS_CONFIG).read_text())
    if meta.get("version") != VERSION:
        raise ValueError(f"{folder}/{HEADS_CONFIG}: version {meta.get('version')!r}, "
                         f"expected {VERSION!r}")
    saved_mlm = bool(meta.get("with_mlm"))
    mlm = saved_mlm if with_mlm is None else with_mlm
    encoder, tok = load_encoder(str(folder))
    model = CalibreNet(encoder, HeadConfig(**meta["heads"]), with_mlm=mlm)
    state = load_file(str(folder / HEADS_WEIGHTS))
    if not mlm:
        state = {k: v for k, v in state.items() if not k.startswith("mlm_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    fresh = ("encoder.",) if saved_mlm else ("encoder.", "mlm_head.")  # a new MLM head is ok
    missing = [k for k in missing if not k.startswith(fresh)]
    if missing or unexpected:
        raise ValueError(f"{folder}/{HEADS_WEIGHTS}: missing {missing}, unexpected {unexpected}")
    return model.to(device or "cpu").eval(), tok
