"""Training inputs tokenized once, ahead of the trainer, and batches grouped by length.

Issue 14 item 5. Before, every optimisation step tokenized its own 16 sentences on the training
worker (the accelerator waited for it) and padded them to the longest of 16 random sentences.

- :func:`tokenize_stage` is a Ray Data stage that :func:`xner_ray.train.loop.fit` puts in front
  of the trainer for steps that declare ``pretokenized = True``: each sentence's sub-word ids
  and each word's first sub-word position (the labeling ``SubwordStage``'s columns, computed by
  the same function, ``models.classifier.subword_ids``), in tasks that run beside the trainer,
  not inside its step.
- :func:`encode_pretokenized` builds the step's tensors from those columns with numpy: the same
  ``input_ids`` / ``attention_mask`` / labels / first sub-words as
  :func:`xner_ray.models.classifier.encode_words` (truncated at the same sub-word cap, the
  closing special tokens kept, words past the cap at position -1; tested equal on real data),
  padded to a multiple of ``pad_multiple`` (8: tensor-core friendly widths).
- :func:`length_grouped` is the loop's batching when ``TrainConfig.length_group`` > 1 (opt-in,
  see docs/DECISIONS.md): it reads ``group`` batches' worth of rows,
  sorts them by sub-word length, cuts them into batches of the configured size and shuffles
  the batches' order (Hugging Face ``group_by_length``): the same sentences per step, the same
  steps per epoch (rows left over from a group join the next one), less padding.
"""

from __future__ import annotations

import functools
import itertools
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import torch

from xner_ray.models.classifier import IGNORE_INDEX, EncodedBatch

PRETOKENIZED = ("input_ids", "word_pos")


@functools.lru_cache(maxsize=4)
def _tokenizer(tokenizer_path: str):
    from xner_ray.models.classifier import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    tok.model_max_length = int(1e30)  # whole sentences here; the step applies the cap
    return tok


def tokenize_stage(batch: pa.Table, tokenizer_path: str) -> pa.Table:
    """Ray Data ``map_batches`` function: adds ``input_ids`` and ``word_pos`` (whole sentences,
    never cut here; the step applies the training cap). The tokenizer is loaded once per worker
    process."""
    from xner_ray.models.classifier import subword_ids

    ids, firsts, _ = subword_ids(_tokenizer(tokenizer_path), batch.column("tokens").to_pylist())
    return (batch.append_column("input_ids", pa.array(ids, pa.list_(pa.int32())))
            .append_column("word_pos", pa.array(firsts, pa.list_(pa.int32()))))


def encode_pretokenized(tokenizer, batch, tags=None, label2id=None, max_length: int = 512,
                        pad_multiple: int = 8) -> EncodedBatch:
    """:func:`~xner_ray.models.classifier.encode_words`'s batch from pre-tokenized columns
    (``input_ids``, ``word_pos``: one sequence per sentence, specials included)."""
    from xner_ray.models.classifier import max_tokens, special_counts

    cap = max_tokens(tokenizer, max_length)
    _, suffix = special_counts(tokenizer)
    ids_in, pos_in = batch["input_ids"], batch["word_pos"]
    n = len(ids_in)
    seqs, firsts = [], []
    for ids, pos in zip(ids_in, pos_in):
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.asarray(pos, dtype=np.int64).copy()
        if len(ids) > cap:  # as the tokenizer's truncation: the closing specials are kept
            ids = np.concatenate([ids[:cap - suffix], ids[len(ids) - suffix:]])
            pos[pos >= cap - suffix] = -1
        seqs.append(ids)
        firsts.append(pos)
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=n)
    longest = int(lengths.max()) if n else 0
    width = -(-longest // pad_multiple) * pad_multiple if pad_multiple > 1 else longest
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    if n:
        input_ids[mask] = np.concatenate(seqs)
    labels = None
    if tags is not None:
        labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
        for i, (pos, sent_tags) in enumerate(zip(firsts, tags)):
            ok = pos >= 0
            labels[i, pos[ok]] = [label2id[t] for t, k in zip(sent_tags, ok) if k]
        labels = torch.from_numpy(labels)
    return EncodedBatch(torch.from_numpy(input_ids), torch.from_numpy(mask.astype(np.int64)),
                        labels, firsts)


def encode(ctx, batch, tags=None) -> EncodedBatch:
    """A step's encoder inputs: from the pre-tokenized columns when the batch has them (the
    shared loop's path), else tokenized here (a step called on raw words, e.g. in tests)."""
    from xner_ray.models.classifier import encode_words

    label2id = ctx.label2id if tags is not None else None
    if all(c in batch for c in PRETOKENIZED):
        return encode_pretokenized(ctx.tokenizer, batch, tags, label2id,
                                   max_length=ctx.max_length)
    return encode_words(ctx.tokenizer, [list(t) for t in batch["tokens"]], tags, label2id,
                        max_length=ctx.max_length)


def _sizes(batch: dict) -> np.ndarray:
    col = batch["input_ids"] if "input_ids" in batch else batch["tokens"]
    return np.fromiter((len(x) for x in col), dtype=np.int64, count=len(col))


def _take(batch: dict, idx: np.ndarray) -> dict:
    return {k: v[idx] for k, v in batch.items()}


def length_grouped(batches: Iterable[dict], batch_size: int,
                   rng: Optional[np.random.Generator] = None) -> Iterator[dict]:
    """Batches of ``batch_size`` rows (only the epoch's last may be smaller) cut from each
    large numpy batch of ``batches`` after sorting its rows by length; the cut batches of a
    group come in a shuffled order (``rng``) so an epoch does not run from short to long, and
    rows left over from a group (Ray Data's batches are not always whole groups) join the next
    one, so an epoch has exactly ceil(rows / batch_size) steps."""
    rng = rng if rng is not None else np.random.default_rng(0)
    carry: Optional[dict] = None
    for big in batches:
        if carry is not None:
            big = {k: _concat(carry[k], v) for k, v in big.items()}
        n = len(next(iter(big.values()))) if big else 0
        if n == 0:
            continue
        order = np.argsort(_sizes(big), kind="stable")
        full = n - n % batch_size
        carry = _take(big, order[full:]) if full < n else None
        cuts = [order[i:i + batch_size] for i in range(0, full, batch_size)]
        for j in rng.permutation(len(cuts)):
            yield _take(big, cuts[j])
    if carry is not None:
        yield carry


def _concat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two numpy columns end to end; ragged (object) and fixed-shape ones mix as object rows."""
    if a.dtype != object and b.dtype != object and a.shape[1:] == b.shape[1:]:
        return np.concatenate([a, b])
    out = np.empty(len(a) + len(b), dtype=object)
    for i, row in enumerate(itertools.chain(a, b)):
        out[i] = row
    return out


def group_rows(batch_size: int, group: int) -> int:
    """Rows read at a time by :func:`length_grouped`: ``group`` batches."""
    return batch_size * max(1, group)


def mean_loss(losses: Sequence) -> float:
    """Mean of step losses given as floats or 0-d tensors: one host sync for all the tensors
    (a step returns its loss detached, not ``.item()``-ed, so steps never wait for the device)."""
    if not len(losses):
        return 0.0
    tensors = [x.detach().float().reshape(()) for x in losses if isinstance(x, torch.Tensor)]
    total = sum(float(x) for x in losses if not isinstance(x, torch.Tensor))
    if tensors:
        total += float(torch.stack(tensors).sum())
    return total / len(losses)
