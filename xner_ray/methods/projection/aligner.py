"""A training-free word aligner over a multilingual encoder's contextual embeddings, SimAlign-style
(Jalili Sabet et al. 2020), usable as an entity projector and as a source of alignment training
examples (Li et al. Sec. 4.2 builds its examples with a translation service; we have none).

Each side is encoded alone; sub-word vectors come from one layer (SimAlign: layer 8 of a
12-layer mBERT/XLM-R; the model is loaded cut to that layer, so deeper layers cost nothing).
Similarity is ``(cos + 1) / 2`` between every source and target sub-word. ``argmax`` aligns the
mutual best pairs (row and column maximum); ``itermax`` repeats argmax on the words still
unaligned, discounting pairs with one side aligned by ``alpha`` (SimAlign: 2 iterations,
alpha 0.9). Sub-word alignments become word alignments: two words align if any of their
sub-words do (SimAlign's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from xner_ray.methods.projection.filters import MappedEntity, TargetSpan

METHODS = ("argmax", "itermax")


def argmax_align(sim: np.ndarray) -> np.ndarray:
    """Bool ``[m, n]``: ``(i, j)`` where ``j`` is row ``i``'s maximum and ``i`` column ``j``'s."""
    m, n = sim.shape
    out = np.zeros((m, n), dtype=bool)
    if not m or not n:
        return out
    fwd = np.zeros((m, n), dtype=bool)
    fwd[np.arange(m), sim.argmax(axis=1)] = True
    bwd = np.zeros((m, n), dtype=bool)
    bwd[sim.argmax(axis=0), np.arange(n)] = True
    return fwd & bwd


def itermax_align(sim: np.ndarray, max_iter: int = 2, alpha: float = 0.9) -> np.ndarray:
    """SimAlign IterMax on a non-negative similarity matrix: argmax, then up to ``max_iter - 1``
    more argmax rounds over the pairs with at least one side still unaligned, whose similarity
    is scaled by ``min(1, alpha * [row free] + alpha * [column free])``."""
    align = argmax_align(sim)
    if min(sim.shape) <= 2:
        return align
    for _ in range(max_iter - 1):
        row_free, col_free = ~align.any(axis=1), ~align.any(axis=0)
        if not row_free.any() or not col_free.any():
            break
        weight = np.clip(alpha * row_free[:, None] + alpha * col_free[None, :], 0.0, 1.0)
        new = argmax_align(sim * weight) & (row_free[:, None] | col_free[None, :])
        if not (new & ~align).any():
            break
        align |= new
    return align


@dataclass
class WordAlignment:
    """Word-level alignment of one pair: aligned ``(src, tgt)`` word pairs and the word
    similarity matrix (max over the sub-word pairs of two words; 0 for truncated words)."""

    pairs: set
    sim: np.ndarray  # [n_src_words, n_tgt_words]

    def targets_of(self, src_words: range) -> list[int]:
        return sorted({j for i, j in self.pairs if i in src_words})


def _is_word(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


def spans_from_words(words: Sequence[int], tgt_tokens: Sequence[str], max_gap: int = 1
                     ) -> list[tuple[int, int]]:
    """Aligned target word indices -> spans: punctuation-only words left out (no entity starts
    or ends with a comma), then runs of indices merged over gaps of at most ``max_gap``."""
    spans: list[list[int]] = []
    for j in sorted(set(words)):
        if not _is_word(tgt_tokens[j]):
            continue
        if spans and j - spans[-1][1] <= max_gap:
            spans[-1][1] = j + 1
        else:
            spans.append([j, j + 1])
    return [(a, b) for a, b in spans]


def project_entities(alignment: WordAlignment, entities: Sequence[MappedEntity],
                     tgt_tokens: Sequence[str], max_gap: int = 1) -> None:
    """Fill ``entity.spans`` from the word alignment: per source mention, the spans of its
    aligned target words; a span's score is the mean over its words of their best similarity
    to the mention's words."""
    for e in entities:
        spans = []
        for start, end in e.mentions:
            words = alignment.targets_of(range(start, end))
            for a, b in spans_from_words(words, tgt_tokens, max_gap):
                score = float(alignment.sim[start:end, a:b].max(axis=0).mean())
                spans.append(TargetSpan(a, b, score))
        e.spans = spans


def load_encoder(name_or_path: str, layer: Optional[int]):
    """(model, tokenizer) with the model cut to its bottom ``layer`` layers (its last hidden
    state is then that layer's output). Safetensors only, no remote code."""
    from transformers import AutoConfig, AutoModel

    from xner_ray.models.classifier import load_tokenizer, quiet_transformers, resolve

    quiet_transformers()
    path = resolve(name_or_path)
    total = AutoConfig.from_pretrained(path, trust_remote_code=False).num_hidden_layers
    if layer is not None and not 1 <= layer <= total:
        raise ValueError(f"layer must be in 1..{total} for {name_or_path}, got {layer}")
    kwargs = dict(use_safetensors=True, trust_remote_code=False,
                  num_hidden_layers=layer or total)
    try:  # BERT/XLM-R: no pooler (the embedded model has none; a random one would be noise)
        model = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
    except TypeError:
        model = AutoModel.from_pretrained(path, **kwargs)
    return model.eval(), load_tokenizer(name_or_path)


class SimilarityAligner:
    """Word aligner from one encoder layer (see the module doc); loads its model once."""

    def __init__(self, model: str = "builtin:me5-small", *, layer: Optional[int] = 8,
                 method: str = "argmax", max_gap: int = 1, batch_size: int = 32,
                 max_length: int = 256, device: Optional[str] = None,
                 threads: Optional[int] = None):
        import torch

        from xner_ray.models.classifier import max_tokens

        if method not in METHODS:
            raise ValueError(f"unknown alignment method {method!r}; valid: {METHODS}")
        if threads:
            torch.set_num_threads(threads)
        self.method, self.max_gap, self.batch_size = method, max_gap, batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tokenizer = load_encoder(model, layer)
        self.model.to(self.device)
        self.max_length = max_tokens(self.tokenizer, max_length)
        self.id = alignment_id(model, layer, method)

    def embed(self, sentences: Sequence[Sequence[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per sentence: unit-length sub-word vectors ``[S, d]`` and each one's word index."""
        import torch

        from xner_ray.models.classifier import length_buckets

        out: list = [None] * len(sentences)
        for idx in length_buckets([len(s) for s in sentences], self.batch_size):
            enc = self.tokenizer([list(sentences[i]) for i in idx], is_split_into_words=True,
                                 truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(input_ids=enc["input_ids"].to(self.device),
                                    attention_mask=enc["attention_mask"].to(self.device)
                                    ).last_hidden_state.float()
            hidden = torch.nn.functional.normalize(hidden, dim=-1).cpu().numpy()
            for row, i in enumerate(idx):
                wid = np.array([-1 if w is None else w for w in enc.word_ids(row)])
                keep = wid >= 0
                out[i] = (hidden[row][keep], wid[keep])
        return out

    def align(self, src: Sequence[Sequence[str]], tgt: Sequence[Sequence[str]],
              method: Optional[str] = None) -> list[WordAlignment]:
        """Word alignments of the pairs ``(src[i], tgt[i])``."""
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} source but {len(tgt)} target sentences")
        method = method or self.method
        if method not in METHODS:
            raise ValueError(f"unknown alignment method {method!r}; valid: {METHODS}")
        s_emb, t_emb = self.embed(src), self.embed(tgt)
        return [word_alignment(s, t, len(a), len(b), method)
                for s, t, a, b in zip(s_emb, t_emb, src, tgt)]

    def project(self, src: Sequence[Sequence[str]], tgt: Sequence[Sequence[str]],
                entities: Sequence[Sequence[MappedEntity]]) -> None:
        """Fill the target spans of every pair's entities (pairs without entities skipped)."""
        todo = [i for i, e in enumerate(entities) if e]
        if not todo:
            return
        aligned = self.align([src[i] for i in todo], [tgt[i] for i in todo])
        for i, alignment in zip(todo, aligned):
            project_entities(alignment, entities[i], tgt[i], self.max_gap)


def word_alignment(src: tuple[np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray],
                   n_src: int, n_tgt: int, method: str = "argmax") -> WordAlignment:
    """Align sub-words (``(vectors, word_ids)`` per side), then lift to words."""
    (sv, sw), (tv, tw) = src, tgt
    sim = (sv @ tv.T + 1.0) / 2.0  # SimAlign: cosine rescaled to [0, 1]
    sub = argmax_align(sim) if method == "argmax" else itermax_align(sim)
    words = np.zeros((n_src, n_tgt), dtype=np.float32)
    if sim.size:
        # word similarity = the best sub-word pair (np.maximum.at handles repeated indices)
        np.maximum.at(words, (sw[:, None], tw[None, :]), sim.astype(np.float32))
    rows, cols = np.nonzero(sub)
    pairs = {(int(sw[r]), int(tw[c])) for r, c in zip(rows, cols)}
    return WordAlignment(pairs, words)


def alignment_id(model: str, layer: Optional[int], method: str) -> str:
    """The versioned id recorded with projections made by this aligner."""
    return f"simalign.v1({model}, layer={layer if layer is not None else 'last'}, {method})"
