"""Teacher weights from learned language similarities (TSL section 3.2.2, Eq. 7-11).

With K source-language teachers and no source labels, TSL weights the teachers by how much the
unlabeled target sentences look like each source language:

1. ``g(.)``: a sentence embedding from the multilingual encoder -- the final hidden vector of the
   first token ([CLS] / <s>), as in the paper (``SentenceEncoder``, ``sentence_embeddings``).
2. A language-identification task on unlabeled source sentences: a bilinear score
   ``s(u, mu_k) = g(u)^T M mu_k`` (Eq. 8), softmax over languages (Eq. 9), trained with
   cross-entropy plus ``gamma * ||P P^T - I||_F^2`` (Eq. 10). ``M = U^T V`` is low rank
   (d = 64) and the language embeddings ``mu_k`` start at each language's mean embedding
   (``LanguageSimilarity``, ``fit_language_similarity``).
3. ``alpha_k`` = the target-set average of softmax(s / tau) (Eq. 11), tau = the variance of all
   target scores (``teacher_weights``); without source data, ``alpha_k = 1/K`` (Eq. 7).

Decisions the paper leaves open (documented where they are made): Adam (lr 1e-3, 3 epochs,
batch 32) for Eq. 10; population variance for tau; embeddings used as the encoder gives them
(no centring or scaling), as the paper describes.

Known property of tau = variance: s / var(s) shrinks as the scores grow, so the longer Eq. 10
trains (the more confident the language-ID model), the closer the weights get to uniform.
``teacher_weights(..., tau=...)`` takes a fixed temperature for ablations.
"""

from __future__ import annotations

import inspect
import logging
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from xner_ray.models.classifier import (
    length_buckets,
    load_tokenizer,
    max_tokens,
    resolve,
)

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")


# ---------------------------------------------------------------------------------------------
# g(.) of TSL Eq. 8: sentence embeddings from the multilingual encoder
# ---------------------------------------------------------------------------------------------

def load_encoder(name_or_path: str):
    """The bare encoder of a checkpoint, safetensors only, no remote code.

    A folder saved from a token classifier loads too: ``AutoModel`` keeps the encoder weights
    (``bert.*`` / ``roberta.*``) and drops the NER head. Where the architecture has an optional
    pooler we leave it out -- we never read ``pooler_output``, and a checkpoint without one (the
    builtin me5-small, our token classifiers) would otherwise get a randomly initialised one.
    """
    from transformers import AutoConfig, AutoModel

    path = resolve(name_or_path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    kwargs = {}
    model_cls = AutoModel._model_mapping.get(type(config), None)
    if model_cls is not None and "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    model = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False, **kwargs)
    return model.eval()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, S, H] token states -> [B, H] sentence vectors.

    ``cls``: the first token's state (TSL "Network Configurations"). ``mean``: the mean over
    the attended positions (sub-words and the special tokens, as E5 pools), so padding never
    enters the vector.
    """
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class SentenceEncoder:
    """Loads the encoder once; maps pre-split sentences to an [N, H] float32 array.

    A stage class in the repo's sense: load in ``__init__``, then call it on batches, so one
    model serves the source sets and the target set alike.
    """

    def __init__(self, model_name_or_dir: str, *, pooling: str = "cls", max_length: int = 256,
                 device: Optional[str | torch.device] = None) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; available: {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = load_tokenizer(model_name_or_dir)
        self.max_length = max_tokens(self.tokenizer, max_length)
        self.model = load_encoder(model_name_or_dir).to(self.device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def __call__(self, sentences: Sequence[Sequence[str]], *, batch_size: int = 32) -> np.ndarray:
        out = np.zeros((len(sentences), self.dim), dtype=np.float32)
        # Length-sorted batches keep padding (wasted compute) small; rows go back in input order.
        for idx in length_buckets([len(s) for s in sentences], batch_size):
            out[idx] = self._embed_batch([list(sentences[i]) for i in idx])
        return out

    def _embed_batch(self, words: list[list[str]]) -> np.ndarray:
        enc = self.tokenizer(words, is_split_into_words=True, truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="pt")
        mask = enc["attention_mask"].to(self.device)
        use_bf16 = self.device.type == "cuda"  # as predict_log_probs: bf16 on GPU, fp32 on CPU
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            hidden = self.model(input_ids=enc["input_ids"].to(self.device),
                                attention_mask=mask).last_hidden_state
        return pool(hidden.float(), mask, self.pooling).cpu().numpy()


def sentence_embeddings(model_name_or_dir: str, sentences: Sequence[Sequence[str]], *,
                        batch_size: int = 32, pooling: str = "cls", max_length: int = 256,
                        device: Optional[str | torch.device] = None) -> np.ndarray:
    """g(.) of TSL Eq. 8 for each pre-split sentence: [N, hidden] float32, input order."""
    encoder = SentenceEncoder(model_name_or_dir, pooling=pooling, max_length=max_length,
                              device=device)
    return encoder(sentences, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# Language identification with a low-rank bilinear operator (TSL Eq. 8-10)
# ---------------------------------------------------------------------------------------------

class LanguageSimilarity(nn.Module):
    """Scores ``s(u, mu_k) = g(u)^T M mu_k`` for K source languages (TSL Eq. 8).

    ``M = U^T V`` with ``U, V`` in R^{d x m} (the paper's low-rank approximation, d = 64; d is
    clipped to m when the embeddings are smaller). ``P`` in R^{m x K} holds the language
    embeddings ``mu_k`` column by column, initialised with each language's mean sentence
    embedding (TSL "Network Configurations").
    """

    def __init__(self, langs: Sequence[str], means: np.ndarray | torch.Tensor, *, d: int = 64,
                 gamma: float = 0.01, init_std: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        means = torch.as_tensor(np.asarray(means), dtype=torch.float32)
        if means.ndim != 2 or means.shape[0] != len(langs) or len(langs) < 1:
            raise ValueError(f"means must be [K={len(langs)}, m], got {tuple(means.shape)}")
        if len(set(langs)) != len(langs):
            raise ValueError(f"duplicate languages in {list(langs)}")
        if d < 1 or gamma < 0:
            raise ValueError(f"need d >= 1 and gamma >= 0, got d={d}, gamma={gamma}")
        m = means.shape[1]
        self.langs = list(langs)
        self.gamma = float(gamma)
        self.rank = min(int(d), m)
        gen = torch.Generator().manual_seed(seed)
        self.U = nn.Parameter(init_std * torch.randn(self.rank, m, generator=gen))
        self.V = nn.Parameter(init_std * torch.randn(self.rank, m, generator=gen))
        self.P = nn.Parameter(means.T.clone().contiguous())  # [m, K]: column k is mu_k

    @property
    def M(self) -> torch.Tensor:
        """The bilinear operator M = U^T V, [m, m], rank <= d."""
        return self.U.T @ self.V

    def scores(self, g: torch.Tensor) -> torch.Tensor:
        """[N, m] embeddings -> [N, K] scores g^T M P: TSL Eq. 8 for every k at once.

        Evaluated as ((g U^T) V) P so the m x m matrix is never formed (O(N m d), not O(N m^2)).
        """
        return ((g @ self.U.T) @ self.V) @ self.P

    def orthogonality(self) -> torch.Tensor:
        """||P P^T - I||_F^2, the regulariser of TSL Eq. 10 (I is m x m, as written)."""
        gram = self.P @ self.P.T
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        return ((gram - eye) ** 2).sum()

    def loss(self, g: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """TSL Eq. 10: mean cross-entropy of softmax(g^T M P) (Eq. 9) against the language index,
        plus gamma * ||P P^T - I||_F^2.

        The paper prints "-1/Z sum CE(q, k)"; CE already carries the minus sign (maximising
        CE would un-learn the language-ID task), so the first term is the usual mean CE.
        """
        ce = nn.functional.cross_entropy(self.scores(g), k)
        return ce + self.gamma * self.orthogonality()


def _stack_sources(embeddings_by_lang: Mapping[str, np.ndarray]
                   ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The union D_src of Eq. 10 as (langs, X [Z, m], y [Z]) with y the language index."""
    if len(embeddings_by_lang) < 2:
        raise ValueError(f"need at least 2 source languages, got {list(embeddings_by_lang)}")
    langs = list(embeddings_by_lang)
    arrays = [np.asarray(embeddings_by_lang[l], dtype=np.float32) for l in langs]
    for lang, a in zip(langs, arrays):
        if a.ndim != 2 or len(a) == 0:
            raise ValueError(f"{lang}: need a non-empty [N, m] array, got shape {a.shape}")
    if len({a.shape[1] for a in arrays}) != 1:
        raise ValueError(f"embedding sizes differ: { {l: a.shape[1] for l, a in zip(langs, arrays)} }")
    x = torch.from_numpy(np.concatenate(arrays))
    y = torch.cat([torch.full((len(a),), k, dtype=torch.long) for k, a in enumerate(arrays)])
    return langs, x, y


def fit_language_similarity(embeddings_by_lang: Mapping[str, np.ndarray], *, d: int = 64,
                            gamma: float = 0.01, epochs: int = 3, lr: float = 1e-3,
                            batch_size: int = 32, seed: int = 0) -> LanguageSimilarity:
    """Train M = U^T V and P on the language-ID task (TSL Eq. 10); returns the model in eval mode.

    The paper gives no optimiser for Eq. 10. We use Adam (lr 1e-3): its per-parameter step
    size does not depend on the scale of the encoder's embeddings (mBERT [CLS] norms are ~10,
    toy data ~1), and it leaves the saddle at the small random init of U, V quickly. Batches
    of 32 and 3 epochs as the paper's other training: more epochs only grow the scores, which
    (with tau = variance in Eq. 11) pulls the weights towards uniform. Shuffling is seeded,
    so a fit is reproducible.
    """
    langs, x, y = _stack_sources(embeddings_by_lang)
    means = np.stack([x[y == k].mean(0).numpy() for k in range(len(langs))])
    model = LanguageSimilarity(langs, means, d=d, gamma=gamma, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            model.loss(x[idx], y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def language_id_accuracy(model: LanguageSimilarity,
                         embeddings_by_lang: Mapping[str, np.ndarray]) -> float:
    """Share of sentences whose highest score is their own language: did Eq. 10 learn?"""
    by_model_order = {l: embeddings_by_lang[l] for l in model.langs}
    _, x, y = _stack_sources(by_model_order)
    return float((model.scores(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------------------------------------
# Teacher weights (TSL Eq. 7 and 11)
# ---------------------------------------------------------------------------------------------

def uniform_weights(langs: Sequence[str]) -> dict[str, float]:
    """TSL Eq. 7: alpha_k = 1/K, the weights when no source-language data is available."""
    if not langs:
        raise ValueError("no source languages")
    return {l: 1.0 / len(langs) for l in langs}


@torch.no_grad()
def target_scores(model: LanguageSimilarity, target_embeddings: np.ndarray) -> np.ndarray:
    """[N_tgt, K] scores s(x', mu_k) of Eq. 8 for the target sentences, float64."""
    g = torch.as_tensor(np.asarray(target_embeddings), dtype=torch.float32)
    if g.ndim != 2 or len(g) == 0:
        raise ValueError(f"need a non-empty [N, m] array of target embeddings, got {tuple(g.shape)}")
    return model.scores(g).double().numpy()


def temperature(scores: np.ndarray) -> float:
    """tau of Eq. 11: the (population) variance of all s(x', mu_k) over target sentences and k."""
    return float(np.var(scores))


def teacher_weights(model: LanguageSimilarity, target_embeddings: np.ndarray, *,
                    tau: Optional[float] = None) -> dict[str, float]:
    """TSL Eq. 11: alpha_k = mean over target sentences of softmax_k(s(x', mu_k) / tau).

    ``tau=None`` is the paper's choice, the variance of all target scores. tau = 0 means
    every score is the same, so no language is closer than another: the weights are then
    uniform (Eq. 7) and we say so, instead of dividing by zero.
    """
    return _weights_from_scores(model.langs, target_scores(model, target_embeddings), tau)


def _weights_from_scores(langs: Sequence[str], scores: np.ndarray,
                         tau: Optional[float] = None) -> dict[str, float]:
    if not np.isfinite(scores).all():
        raise ValueError("language similarity: non-finite target scores (diverged fit?)")
    if tau is not None and not tau > 0:
        raise ValueError(f"tau must be > 0 (or None for the variance of the scores), got {tau}")
    tau = temperature(scores) if tau is None else float(tau)
    if tau <= 1e-12 * max(1.0, float(np.mean(scores ** 2))):  # zero up to rounding
        logger.warning("language similarity: all %d target scores are equal (tau=%g); "
                       "using uniform teacher weights (TSL Eq. 7)", scores.size, tau)
        return uniform_weights(langs)
    alpha = _softmax(scores / tau).mean(axis=0)
    return {l: float(a) for l, a in zip(langs, alpha / alpha.sum())}


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so exp never overflows."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sample_sentences(path_spec, lang: str, n: int, *, seed: int = 0,
                     fmt: str = "auto") -> list[list[str]]:
    """A seeded uniform random sample of ``n`` sentences of a corpus, read once with bounded
    memory (reservoir sampling, Algorithm R), returned in corpus order; the whole corpus when
    it has at most ``n``. The input of Eq. 10 (source) and Eq. 11 (target): TSL fits the
    language-ID model on the source corpora and averages over the target set; the head of a
    file is not a sample of it (a corpus sorted by document or topic would bias the weights).
    """
    import random

    from xner_ray.io.text import read_unlabeled

    if n < 1:
        raise ValueError(f"need n >= 1 sentences, got {n}")
    rng = random.Random(seed)
    reservoir: list[tuple[int, list[str]]] = []
    for i, sent in enumerate(read_unlabeled(path_spec, lang=lang, fmt=fmt)):
        if i < n:
            reservoir.append((i, sent.tokens))
        else:
            j = rng.randrange(i + 1)
            if j < n:
                reservoir[j] = (i, sent.tokens)
    return [tokens for _, tokens in sorted(reservoir, key=lambda x: x[0])]


def similarity_weights(encoder: str | SentenceEncoder,
                       source_sentences_by_lang: Mapping[str, Sequence[Sequence[str]]],
                       target_sentences: Sequence[Sequence[str]], *, batch_size: int = 32,
                       **fit_kwargs) -> tuple[dict[str, float], dict]:
    """Embed, fit Eq. 10 on the sources, weight the teachers by Eq. 11 on the target.

    ``encoder``: a model name/folder (loaded once, [CLS] pooling) or a ready ``SentenceEncoder``.
    Returns ``(weights, diagnostics)``; diagnostics hold tau, the language-ID accuracy on the
    source sentences (a fit near chance means the weights carry no signal) and the counts.
    """
    enc = encoder if isinstance(encoder, SentenceEncoder) else SentenceEncoder(encoder)
    sources = {l: enc(s, batch_size=batch_size) for l, s in source_sentences_by_lang.items()}
    target = enc(target_sentences, batch_size=batch_size)
    model = fit_language_similarity(sources, **fit_kwargs)
    scores = target_scores(model, target)
    weights = _weights_from_scores(model.langs, scores)
    diagnostics = {"tau": temperature(scores),
                   "train_accuracy": language_id_accuracy(model, sources),
                   "n_source": {l: len(a) for l, a in sources.items()},
                   "n_target": len(target), "rank": model.rank}
    logger.warning("language similarity: weights %s, tau %.4g, language-ID accuracy %.3f",
                   {l: round(w, 3) for l, w in weights.items()}, diagnostics["tau"],
                   diagnostics["train_accuracy"])
    return weights, diagnostics
