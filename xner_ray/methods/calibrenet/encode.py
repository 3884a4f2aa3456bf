"""Calibration instances, their tensors (CalibreNet Eq. 4 and 10) and span decoding.

An instance is one initial answer in one passage (one per predicted entity, Sec. 3.1.2).
Pointers live at word level: the allowed start/end positions are the first sub-words of the
passage's words, so a calibrated span always has word boundaries, like the tags it replaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from xner_ray.models.classifier import first_subwords, max_tokens

GoldSpan = tuple[int, int, str]  # (start, end_exclusive, type), word offsets


@dataclass
class CalibInstance:
    """One initial answer ``words[answer[0]:answer[1]]`` to calibrate against ``gold``."""

    words: list[str]
    answer: tuple[int, int]
    gold: Optional[GoldSpan] = None  # None at inference
    origin: str = ""  # "pred" (base tagger), "garble:<op>" (Sec. 3.2.2), ...
    lang: str = ""

    def __post_init__(self) -> None:
        s, e = self.answer
        if not 0 <= s < e <= len(self.words):
            raise ValueError(f"initial answer {self.answer} outside a {len(self.words)}-word passage")
        if self.gold is not None and not 0 <= self.gold[0] < self.gold[1] <= len(self.words):
            raise ValueError(f"gold span {self.gold} outside a {len(self.words)}-word passage")


@dataclass
class Encoded:
    """Tensors for :class:`~.model.CalibreNet` plus per-row bookkeeping."""

    tensors: dict[str, torch.Tensor]
    word_pos: list[np.ndarray]  # per row: first sub-word of each passage word, -1 if cut
    valid: torch.Tensor  # [B] bool: answer (and gold, when given) survived truncation

    def to(self, device) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.tensors.items()}


def _index_ids(enc, row: int, answer: tuple[int, int]) -> list[int]:
    """CalibreNet Eq. 10: 0 on [CLS], the answer segment and separators; in the passage,
    1 on every sub-word of the initial answer's words."""
    out = []
    for w, seq in zip(enc.word_ids(row), enc.sequence_ids(row)):
        out.append(int(seq == 1 and w is not None and answer[0] <= w < answer[1]))
    return out


def encode_instances(tokenizer, instances: Sequence[CalibInstance], types: Sequence[str],
                     max_length: int = 192) -> Encoded:
    """``[CLS] answer [SEP] passage [SEP]`` (Eq. 4); truncation cuts the passage only.

    Rows whose answer words (or gold span) fall past ``max_length`` are marked invalid: callers
    skip them in training and keep the original span at inference.
    """
    answers = [inst.words[inst.answer[0]:inst.answer[1]] for inst in instances]
    words = [inst.words for inst in instances]
    enc = tokenizer(answers, words, is_split_into_words=True, truncation="only_second",
                    max_length=max_tokens(tokenizer, max_length), padding=True,
                    return_tensors="pt")
    _, firsts = first_subwords(enc, words, sequence=1)
    n, width = enc["input_ids"].shape
    cand = torch.zeros(n, width, dtype=torch.bool)
    word_index = torch.full((n, width), -1, dtype=torch.long)
    start, end = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    type_ids, valid = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.bool)
    type_index = {t: i for i, t in enumerate(types)}
    for i, (inst, pos) in enumerate(zip(instances, firsts)):
        ok = pos >= 0
        cand[i, pos[ok]] = True
        word_index[i, pos[ok]] = torch.from_numpy(np.flatnonzero(ok))
        valid[i] = bool(pos[inst.answer[1] - 1] >= 0)
        if inst.gold is not None:
            gs, ge, gt = inst.gold
            valid[i] &= bool(pos[ge - 1] >= 0) and gt in type_index
            start[i], end[i] = max(int(pos[gs]), 0), max(int(pos[ge - 1]), 0)
            type_ids[i] = type_index.get(gt, 0)
    tensors = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
               "index_ids": torch.tensor([_index_ids(enc, i, inst.answer)
                                          for i, inst in enumerate(instances)]),
               "cand_mask": cand, "word_index": word_index, "start_pos": start,
               "end_pos": end, "type_ids": type_ids}
    if "token_type_ids" in enc:
        tensors["token_type_ids"] = enc["token_type_ids"]
    return Encoded(tensors, firsts, valid)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The subset of an encoded batch that :meth:`CalibreNet.forward` takes."""
    keys = ("input_ids", "attention_mask", "cand_mask", "index_ids", "token_type_ids")
    return {k: batch[k] for k in keys if k in batch}


@dataclass
class Decoded:
    """A calibrated span in word offsets with its probabilities."""

    start: int
    end: int  # exclusive
    type: str
    score: float  # geometric mean of p_start, p_end, (p_idx,) p_type
    p_type: float


def pair_scores(start_logits, end_logits, span_logits, cand_mask, word_index,
                max_words: int) -> tuple[torch.Tensor, int]:
    """log p_start[i] + log p_end[j] (+ log sigmoid of Eq. 11) for every allowed (i, j):
    both passage words, start <= end, at most ``max_words`` words; -inf elsewhere."""
    ls = torch.log_softmax(start_logits.float(), -1)
    le = torch.log_softmax(end_logits.float(), -1)
    score = ls[:, :, None] + le[:, None, :]
    terms = 2
    if span_logits is not None:
        score = score + torch.nn.functional.logsigmoid(span_logits.float())
        terms = 3
    gap = word_index[:, None, :] - word_index[:, :, None]
    ok = cand_mask[:, :, None] & cand_mask[:, None, :] & (gap >= 0) & (gap < max_words)
    return score.masked_fill(~ok, -torch.inf), terms


@torch.no_grad()
def decode(model, batch: dict[str, torch.Tensor], types: Sequence[str]) -> list[Optional[Decoded]]:
    """The best span per row (Sec. 4.4: calibrated answers, later merged per sentence);
    None for rows without any allowed position."""
    from xner_ray.methods.calibrenet.model import type_logits

    start, end, h, spans = model(**model_inputs(batch))
    score, terms = pair_scores(start, end, spans, batch["cand_mask"], batch["word_index"],
                               model.cfg.max_answer_words)
    flat = score.flatten(1)
    best = flat.argmax(-1)
    width = score.shape[-1]
    i_idx, j_idx = best // width, best % width
    p_type = torch.softmax(type_logits(model.type_head, h, i_idx, j_idx).float(), -1)
    out: list[Optional[Decoded]] = []
    for r in range(len(best)):
        top = float(flat[r, best[r]])
        if not np.isfinite(top):
            out.append(None)
            continue
        t = int(p_type[r].argmax())
        pt = float(p_type[r, t])
        geo = float(np.exp((top + np.log(max(pt, 1e-12))) / (terms + 1)))
        out.append(Decoded(int(batch["word_index"][r, i_idx[r]]),
                           int(batch["word_index"][r, j_idx[r]]) + 1, types[t], geo, pt))
    return out
