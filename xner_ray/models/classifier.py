"""Token classifier: any Hugging Face encoder + a linear head, labels on first sub-words.

Follows transformers' ``run_ner`` conventions: ``label2id``/``id2label`` in the model config,
``-100`` on special tokens and on every sub-word but the first of a word. Weights are loaded as
safetensors only (never by unpickling a file a user did not make) and without remote code.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # ignored by torch's cross-entropy; run_ner's convention


def resolve(name_or_path: str) -> str:
    """A local folder for a model name: ``builtin:me5-small`` -> its converted folder; a URI
    (``s3://...``) -> this node's cached copy (``models.cache``); anything else unchanged."""
    s = str(name_or_path)
    if s.startswith("builtin:"):
        from xner_ray.models.builtin import resolve_model

        return resolve_model(s)
    from xner_ray.io.uri import is_uri, local_path

    if is_uri(s):
        from xner_ray.models.cache import fetch_model

        return str(fetch_model(s))
    return local_path(s)


def quiet_transformers() -> None:
    """Silence per-load reports and progress bars: a new head is always 'missing' here."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@functools.lru_cache(maxsize=4)
def shared_tokenizer(name_or_path: str):
    """One tokenizer per process for the stages fused into one actor (``engine.fuse``):
    loading the 250k-piece vocabulary costs ~2 s of CPU, on the cores the model needs. Shared:
    callers must not change it."""
    return load_tokenizer(name_or_path)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(name_or_path), trust_remote_code=False)
    if not getattr(tok, "is_fast", False):
        # word_ids() -- our sub-word to word alignment -- exists only on fast tokenizers.
        raise ValueError(f"{name_or_path}: a fast (Rust) tokenizer is required for word alignment")
    return tok


def load_token_classifier(
    name_or_path: str,
    labels: Optional[Sequence[str]] = None,
    *,
    layers: Optional[int] = None,
    freeze_embeddings: bool = False,
    freeze_layers: int = 0,
):
    """Load an encoder with a token-classification head.

    ``labels`` (run_ner order) is required when the checkpoint has no head yet; for a trained
    NER checkpoint it defaults to the label set stored in its config and, if given, must match.
    ``layers`` keeps only the bottom N transformer layers (fast CPU runs). The papers freeze the
    embeddings and the bottom 3 layers (``freeze_embeddings=True, freeze_layers=3``).
    """
    from transformers import AutoConfig, AutoModelForTokenClassification

    quiet_transformers()
    path = resolve(name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    stored = _stored_labels(config)
    if labels is None:
        if stored is None:
            raise ValueError(f"{name_or_path} has no NER head: pass the label list to train one")
        labels = stored
    labels = list(labels)
    if stored is not None and stored != labels:
        raise ValueError(f"{name_or_path} was trained on labels {stored}, not {labels}")
    kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                  label2id={l: i for i, l in enumerate(labels)})
    if layers is not None:
        total = config.num_hidden_layers
        if not 1 <= layers <= total:
            raise ValueError(f"layers must be in 1..{total} for {name_or_path}, got {layers}")
        kwargs["num_hidden_layers"] = layers
    model = AutoModelForTokenClassification.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False, **kwargs)
    freeze(model, embeddings=freeze_embeddings, bottom_layers=freeze_layers)
    return model


def model_labels(name_or_path: str) -> list[str]:
    """The label set of a trained NER checkpoint, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    labels = _stored_labels(AutoConfig.from_pretrained(resolve(name_or_path),
                                                       trust_remote_code=False))
    if labels is None:
        raise ValueError(f"{name_or_path} has no NER head (no label set in its config)")
    return labels


def _stored_labels(config) -> Optional[list[str]]:
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)]
    # A config without a trained head carries transformers' placeholder names LABEL_0..
    if not names or all(str(n).startswith("LABEL_") for n in names):
        return None
    return names


def freeze(model, *, embeddings: bool, bottom_layers: int) -> None:
    base = model.base_model
    if embeddings:
        for p in base.embeddings.parameters():
            p.requires_grad_(False)
    if bottom_layers:
        layer_list = base.encoder.layer
        if bottom_layers > len(layer_list):
            raise ValueError(f"cannot freeze {bottom_layers} of {len(layer_list)} layers")
        for layer in layer_list[:bottom_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)


def max_tokens(tokenizer, requested: int) -> int:
    """The sub-word cap actually usable: a model with 128 positions cannot take 512."""
    limit = getattr(tokenizer, "model_max_length", None) or requested
    return min(requested, int(limit)) if limit < 1_000_000 else requested


@dataclass
class EncodedBatch:
    """Tensors for the encoder plus, per sentence, the sub-word index of each word."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: Optional[torch.Tensor]
    first_subword: list[np.ndarray]  # per sentence: [n_words] positions, -1 where truncated


def encode_words(tokenizer, words: Sequence[Sequence[str]], tags=None, label2id=None,
                 max_length: int = 512) -> EncodedBatch:
    """Tokenize pre-split words; label the first sub-word of each word, -100 elsewhere.

    Words that fall past ``max_length`` sub-words get position -1 (callers predict ``O`` there
    and count them), so an over-long sentence never crashes a batch.
    """
    enc = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=True,
                    max_length=max_tokens(tokenizer, max_length), padding=True,
                    return_tensors="pt")
    labels, firsts = first_subwords(enc, words, tags, label2id)
    return EncodedBatch(enc["input_ids"], enc["attention_mask"], labels, firsts)


@functools.lru_cache(maxsize=16)
def special_counts(tokenizer) -> tuple[int, int]:
    """(special tokens before a sentence, special tokens after it) of a fast tokenizer (cached
    per tokenizer object: training steps ask on every batch)."""
    word_ids = tokenizer([["a"]], is_split_into_words=True).word_ids(0)
    last = max(i for i, w in enumerate(word_ids) if w is not None)
    return word_ids.index(0), len(word_ids) - 1 - last


def subword_ids(tokenizer, words: Sequence[Sequence[str]]
                ) -> tuple[list[list[int]], list[np.ndarray], list[int]]:
    """Whole sentences (never cut) as sub-word ids, specials included: ``(ids, word_pos,
    n_without)`` per sentence -- each word's first sub-word position (-1 for a word the
    tokenizer maps to nothing) and how many such words. The labeling ``SubwordStage`` and the
    training inputs (``train.inputs``) both take their columns from here."""
    # verbose=False: no "longer than the specified maximum" warning -- callers window or cap
    enc = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=False,
                    verbose=False)
    ids, firsts, n_without = [], [], []
    for i, sent in enumerate(words):
        w = np.array([-1 if x is None else x for x in enc.word_ids(i)], dtype=np.int64)
        first = np.flatnonzero((w >= 0) & (w != np.concatenate([[-1], w[:-1]])))
        pos = np.full(len(sent), -1, dtype=np.int32)
        pos[w[first]] = first
        ids.append(enc["input_ids"][i])
        firsts.append(pos)
        n_without.append(int((pos < 0).sum()))
    return ids, firsts, n_without


def first_subwords(enc, words: Sequence[Sequence[str]], tags=None, label2id=None,
                   sequence: Optional[int] = None):
    """``(labels, firsts)`` of a tokenizer batch: each word's first sub-word position (-1 when
    truncated away) and, with ``tags``, a label tensor holding its tag id there (-100
    elsewhere). ``sequence``: read only that sequence of a pair encoding (1: the second)."""
    n_rows, width = enc["input_ids"].shape
    labels = torch.full((n_rows, width), IGNORE_INDEX, dtype=torch.long) if tags is not None else None
    firsts = []
    for i in range(n_rows):
        pos = np.full(len(words[i]), -1, dtype=np.int64)
        seqs = enc.sequence_ids(i) if sequence is not None else [None] * width
        prev = None
        for j, (w, seq) in enumerate(zip(enc.word_ids(i), seqs)):
            if seq != sequence:
                prev = None
                continue
            if w is not None and w != prev:
                pos[w] = j
                if labels is not None:
                    labels[i, j] = label2id[tags[i][w]]
            prev = w
        firsts.append(pos)
    return labels, firsts


def word_log_probs(logits: torch.Tensor, batch: EncodedBatch, o_index: int = 0) -> list[np.ndarray]:
    """Per sentence, [n_words, n_labels] log-probabilities read at each word's first sub-word.

    Words cut off by truncation get a one-hot ``O`` row (``o_index``).
    """
    logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
    out = []
    for i, pos in enumerate(batch.first_subword):
        rows = np.full((len(pos), logp.shape[-1]), -math.inf, dtype=np.float32)
        rows[:, o_index] = 0.0
        ok = pos >= 0
        rows[ok] = logp[i, pos[ok]]
        out.append(rows)
    return out


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so padding stays small."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def predict_log_probs(model, tokenizer, words: Sequence[Sequence[str]], *, batch_size: int = 32,
                      max_length: int = 512, device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Word-level log-probabilities for every sentence, in input order."""
    model.eval()
    o_index = model.config.label2id.get("O", 0)
    out: list[Optional[np.ndarray]] = [None] * len(words)
    use_bf16 = torch.device(device).type == "cuda"
    for idx in length_buckets([len(w) for w in words], batch_size):
        batch = encode_words(tokenizer, [words[i] for i in idx], max_length=max_length)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(input_ids=batch.input_ids.to(device),
                           attention_mask=batch.attention_mask.to(device)).logits
        for i, lp in zip(idx, word_log_probs(logits, batch, o_index)):
            out[i] = lp
    return out  # type: ignore[return-value]


def position_limit(config, tokenizer=None) -> int:
    """The most sub-words one forward pass of this encoder can take: its position table, less
    the RoBERTa-style offset (positions start after the padding index), and the tokenizer's
    ``model_max_length`` when that is smaller."""
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    if "roberta" in str(getattr(config, "model_type", "")) or getattr(
            config, "model_type", "") == "camembert":
        limit -= int(config.pad_token_id or 0) + 1
    tok_limit = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if tok_limit and tok_limit < 1_000_000:
        limit = min(limit, int(tok_limit))
    return limit


def inference_model(name_or_path: str, device: str | torch.device, *, bf16: Optional[bool] = None,
                    sdpa: bool = True, compile: bool = False):
    """A trained token classifier ready for labeling on ``device``: eval mode, bf16 weights on
    CUDA (``bf16=None``: on CUDA only), PyTorch SDPA attention where the model supports it, and
    optionally ``torch.compile`` (shapes vary: dynamic)."""
    device = torch.device(device)
    model = load_token_classifier(name_or_path).eval()
    if sdpa and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("sdpa")
        except (ValueError, ImportError) as exc:  # the architecture has no SDPA path
            logger.info("%s: keeping attention %s (%s)", name_or_path,
                        getattr(model.config, "_attn_implementation", "?"), exc)
    if bf16 is None:
        bf16 = device.type == "cuda"
    model = model.to(device=device, dtype=torch.bfloat16 if bf16 else None)
    if compile:
        model = torch.compile(model, dynamic=True)
    return model
