"""The CalibreNet calibration module (Sec. 3.1.2) over any Hugging Face encoder.

Input ``[CLS] initial answer [SEP] passage [SEP]`` (Eq. 4) plus the initial-index embedding
(Eq. 10) added to the word embeddings through ``inputs_embeds``; a start and an end pointer
over the passage's first sub-words (Eq. 5-7), an entity-type head over the mean of the hidden
states at the most probable start and end (Eq. 8-9), start-end span matching (Eq. 11-12), and
the joint loss (Eq. 13). The losses are plain functions of tensors so that tests can check
them against hand-computed values. The MLM head for PBR pre-training (Sec. 3.2) is tied to the
input embeddings; the embedded model has none of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e4  # masked logit: finite, so an all-masked row gives a uniform softmax, not nan


@dataclass
class HeadConfig:
    """What the heads need besides the encoder (saved as ``calibrenet.json``)."""

    types: list[str]  # entity types of the type head, sorted (W_cls, Eq. 8)
    alpha: float = 0.3  # CalibreNet Sec. 4.3: alpha = beta = 0.3, gamma = 0.4 (Eq. 13)
    beta: float = 0.3
    gamma: float = 0.4
    use_index: bool = True  # Eq. 10; False = the paper's "- Index" ablation (Table 8)
    use_span: bool = True  # Eq. 11-12; False = "- Matching"
    max_answer_words: int = 10  # decoding cap on a calibrated span's length (our choice)
    extra: dict = field(default_factory=dict)


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax over the allowed positions only (Eq. 5-6 over the passage's words)."""
    return torch.log_softmax(logits.float().masked_fill(~mask, NEG), dim=-1)


def pointer_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, mask: torch.Tensor,
                 start_pos: torch.Tensor, end_pos: torch.Tensor) -> torch.Tensor:
    """CalibreNet Eq. 7: -1/2 (log p_start[y_start] + log p_end[y_end]), batch mean."""
    ls = masked_log_softmax(start_logits, mask).gather(1, start_pos[:, None]).squeeze(1)
    le = masked_log_softmax(end_logits, mask).gather(1, end_pos[:, None]).squeeze(1)
    return (-0.5 * (ls + le)).mean()


def type_logits(head: nn.Linear, hidden: torch.Tensor, start_idx: torch.Tensor,
                end_idx: torch.Tensor) -> torch.Tensor:
    """CalibreNet Eq. 8 (before the softmax): W_cls . 1/2 (H[start] + H[end]) + b_cls."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(0.5 * (hidden[rows, start_idx] + hidden[rows, end_idx]))


def span_logits(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """CalibreNet Eq. 11 before the sigmoid, for every (i, j) at once: [B, L, L].

    W_idx . (H_i || H_j) + b = w1 . H_i + w2 . H_j + b, so the L x L matrix is a sum of two
    vectors -- the same numbers as concatenating every pair, in O(L d) instead of O(L^2 d).
    """
    d = hidden.shape[-1]
    u = hidden @ head.weight[0, :d]
    v = hidden @ head.weight[0, d:]
    return u[:, :, None] + v[:, None, :] + head.bias[0]


def span_candidates(mask: torch.Tensor, start_pos: torch.Tensor, end_pos: torch.Tensor,
                    start_guess: torch.Tensor, end_guess: torch.Tensor) -> torch.Tensor:
    """Pairs scored by Eq. 12, as in Li et al. 2020 ([18]): starts in {gold, predicted} x ends
    in {gold, predicted}, start <= end, both allowed positions. [B, L, L] bool."""
    b, length = mask.shape
    rows = torch.arange(b, device=mask.device)
    starts = torch.zeros_like(mask)
    ends = torch.zeros_like(mask)
    starts[rows, start_pos] = True
    starts[rows, start_guess] = True
    ends[rows, end_pos] = True
    ends[rows, end_guess] = True
    upper = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu()
    return (starts & mask)[:, :, None] & (ends & mask)[:, None, :] & upper


def span_loss(logits: torch.Tensor, candidates: torch.Tensor, start_pos: torch.Tensor,
              end_pos: torch.Tensor) -> torch.Tensor:
    """CalibreNet Eq. 12 as binary cross-entropy over the candidate pairs (the gold pair is the
    positive), averaged over all candidate pairs of the batch."""
    target = torch.zeros_like(logits, dtype=torch.float32)
    target[torch.arange(logits.shape[0], device=logits.device), start_pos, end_pos] = 1.0
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    m = candidates.float()
    return (bce * m).sum() / m.sum().clamp(min=1.0)


def joint_loss(l_pointer: torch.Tensor, l_cls: torch.Tensor, l_span: Optional[torch.Tensor],
               cfg: HeadConfig) -> torch.Tensor:
    """CalibreNet Eq. 13: alpha L_start,end + beta L_cls + gamma L_span."""
    total = cfg.alpha * l_pointer + cfg.beta * l_cls
    return total if l_span is None else total + cfg.gamma * l_span


class MlmHead(nn.Module):
    """BERT-style LM head whose decoder is the encoder's word-embedding matrix (tied), for the
    MLM task of PBR pre-training (CalibreNet Sec. 3.2); only dense, norm and bias are its own."""

    def __init__(self, hidden: int, vocab: int, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(h))), word_embeddings, self.bias)


class CalibreNet(nn.Module):
    """Encoder + initial-index embedding + pointer, type and span-matching heads."""

    def __init__(self, encoder: nn.Module, cfg: HeadConfig, *, with_mlm: bool = False):
        super().__init__()
        if not cfg.types:
            raise ValueError("CalibreNet needs at least one entity type for its type head")
        self.encoder, self.cfg = encoder, cfg
        d = encoder.config.hidden_size
        std = getattr(encoder.config, "initializer_range", 0.02)
        self.index_embedding = nn.Embedding(2, d)  # E_I of Eq. 10
        nn.init.normal_(self.index_embedding.weight, std=std)  # as token-type embeddings
        self.start_head = nn.Linear(d, 1)  # W_start, b_start (Eq. 5)
        self.end_head = nn.Linear(d, 1)  # W_end, b_end (Eq. 6)
        self.type_head = nn.Linear(d, len(cfg.types))  # W_cls, b_cls (Eq. 8)
        self.span_head = nn.Linear(2 * d, 1)  # W_idx, b_idx (Eq. 11)
        vocab = encoder.get_input_embeddings().weight.shape[0]
        eps = getattr(encoder.config, "layer_norm_eps", 1e-12)
        self.mlm_head = MlmHead(d, vocab, eps) if with_mlm else None

    def encode(self, input_ids, attention_mask, index_ids=None, token_type_ids=None):
        """H~ = E_C(X~) (Sec. 3.1.2) with E_I(I) added to the word embeddings (Eq. 10); the
        encoder adds its positional embeddings E_P itself."""
        embeds = self.encoder.get_input_embeddings()(input_ids)
        if self.cfg.use_index and index_ids is not None:
            embeds = embeds + self.index_embedding(index_ids)
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.encoder(inputs_embeds=embeds, attention_mask=attention_mask,
                            **kwargs).last_hidden_state

    def forward(self, input_ids, attention_mask, cand_mask, index_ids=None, token_type_ids=None):
        """Pointer logits [B, L] (masked to ``cand_mask``), hidden states, span-logit matrix."""
        h = self.encode(input_ids, attention_mask, index_ids, token_type_ids)
        start = self.start_head(h).squeeze(-1).float().masked_fill(~cand_mask, NEG)
        end = self.end_head(h).squeeze(-1).float().masked_fill(~cand_mask, NEG)
        spans = span_logits(self.span_head, h) if self.cfg.use_span else None
        return start, end, h, spans

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Eq. 13 on an encoded batch (see ``encode.encode_instances``) and its parts."""
        mask = batch["cand_mask"]
        start, end, h, spans = self(batch["input_ids"], batch["attention_mask"], mask,
                                    batch.get("index_ids"), batch.get("token_type_ids"))
        sp, ep = batch["start_pos"], batch["end_pos"]
        l_pointer = pointer_loss(start, end, mask, sp, ep)
        # Eq. 8: the type head reads the most probable start and end (not the gold ones)
        s_hat, e_hat = start.argmax(-1), end.argmax(-1)
        l_cls = F.cross_entropy(type_logits(self.type_head, h, s_hat, e_hat).float(),
                                batch["type_ids"])
        l_span = None
        if spans is not None:
            cands = span_candidates(mask, sp, ep, s_hat, e_hat)
            l_span = span_loss(spans, cands, sp, ep)
        total = joint_loss(l_pointer, l_cls, l_span, self.cfg)
        parts = {"pointer": float(l_pointer.detach()), "cls": float(l_cls.detach()),
                 "span": float(l_span.detach()) if l_span is not None else 0.0}
        return total, parts

    def mlm_loss(self, input_ids, attention_mask, labels, index_ids=None, token_type_ids=None):
        """Masked-LM cross-entropy at the masked positions only (labels -100 elsewhere)."""
        if self.mlm_head is None:
            raise ValueError("this CalibreNet has no MLM head: build it with with_mlm=True")
        h = self.encode(input_ids, attention_mask, index_ids, token_type_ids)
        at = labels != -100
        if not at.any():
            return h.sum() * 0.0
        weight = self.encoder.get_input_embeddings().weight
        logits = self.mlm_head(h[at], weight)
        return F.cross_entropy(logits.float(), labels[at])
