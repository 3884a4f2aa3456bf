"""Phrase Boundary Recovery pre-training data (CalibreNet Sec. 3.2).

The paper cuts 50-250-token passages from Wikipedia and takes anchor texts as gold phrases.
There is no Wikipedia here: passages are runs of consecutive labeled sentences of one file
(CoNLL, WikiANN, MasakhaNER, or pseudo-labeled text from the store) and anchors are their
entity spans. Sec. 3.2.1's rules are kept: passages with fewer than two anchors are dropped
and only anchors of at most eight words are used. WikiANN sentences are independent
Wikipedia sentences, so its "passages" are not real documents -- say so next to results.

Also here: the MLM masking of PBR's second task and the continual multilingual stages
(Sec. 3.2.3; "sequential" and "mixed" are the Table 7 alternatives).
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional, Sequence, TypeVar

import torch

from xner_ray.labels import tags_to_spans
from xner_ray.methods.calibrenet.encode import CalibInstance, GoldSpan
from xner_ray.methods.calibrenet.garble import OpDist, garble

T = TypeVar("T")
STRATEGIES = ("continual", "sequential", "mixed")  # CalibreNet Table 7


@dataclass
class Passage:
    words: list[str]
    anchors: list[GoldSpan]  # word offsets into ``words``
    lang: str = ""
    source: str = ""


@dataclass
class PassageRules:
    """CalibreNet Sec. 3.2.1: 50-250 tokens, >= 2 anchors, anchors of <= 8 tokens (words)."""

    min_words: int = 50
    max_words: int = 250
    max_anchor_words: int = 8
    min_anchors: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words or self.min_anchors < 1:
            raise ValueError(f"need 1 <= min_words <= max_words and min_anchors >= 1: {self}")


def build_passages(sentences: Iterable, rules: PassageRules = PassageRules(), *,
                   seed: int = 0, stats: Optional[collections.Counter] = None
                   ) -> Iterator[Passage]:
    """Join consecutive sentences (objects with ``tokens``, ``tags``, ``lang``, ``source``)
    into passages whose length is drawn uniformly in [min_words, max_words] ("randomly
    extract passages", Sec. 3.2.1). A file or language change ends a passage. ``stats``
    counts passages, dropped_few_anchors, dropped_short and skipped_long_sentence."""
    rng = random.Random(seed)
    stats = stats if stats is not None else collections.Counter()
    buf: list = []
    target = rng.randint(rules.min_words, rules.max_words)
    for sent in sentences:
        if sent.tags is None:
            raise ValueError(f"{sent.source}:{sent.line}: PBR passages need labeled sentences")
        if buf and (sent.source, sent.lang) != (buf[0].source, buf[0].lang):
            yield from _flush(buf, rules, stats)
            buf, target = [], rng.randint(rules.min_words, rules.max_words)
        if len(sent.tokens) > rules.max_words:
            stats["skipped_long_sentence"] += 1
            continue
        if sum(len(s.tokens) for s in buf) + len(sent.tokens) > rules.max_words:
            yield from _flush(buf, rules, stats)
            buf, target = [], rng.randint(rules.min_words, rules.max_words)
        buf.append(sent)
        if sum(len(s.tokens) for s in buf) >= target:
            yield from _flush(buf, rules, stats)
            buf, target = [], rng.randint(rules.min_words, rules.max_words)
    yield from _flush(buf, rules, stats)


def _flush(buf: list, rules: PassageRules, stats: collections.Counter) -> Iterator[Passage]:
    if not buf:
        return
    words: list[str] = []
    anchors: list[GoldSpan] = []
    for sent in buf:
        anchors += [(s + len(words), e + len(words), t) for s, e, t in tags_to_spans(sent.tags)
                    if e - s <= rules.max_anchor_words]
        words += list(sent.tokens)
    if len(words) < rules.min_words:
        stats["dropped_short"] += 1
    elif len(anchors) < rules.min_anchors:
        stats["dropped_few_anchors"] += 1
    else:
        stats["passages"] += 1
        yield Passage(words, anchors, buf[0].lang, buf[0].source)


def pbr_instances(passages: Iterable[Passage], dist: OpDist, *, seed: int = 0,
                  ops: Optional[collections.Counter] = None) -> list[CalibInstance]:
    """One instance per anchor: its initial answer garbled by (op, n_op) ~ p (Sec. 3.2.2)."""
    rng = random.Random(seed)
    out = []
    for p in passages:
        for s, e, t in p.anchors:
            answer, (op, n) = garble((s, e), len(p.words), dist, rng)
            if ops is not None:
                ops[(op, n)] += 1
            out.append(CalibInstance(p.words, answer, (s, e, t), f"pbr:{op}", p.lang))
    return out


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, mask_id: int, vocab_size: int,
                *, prob: float = 0.15, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's MLM corruption (Devlin et al., the paper's [7]): ``prob`` of the maskable tokens
    are chosen; of those 80% -> mask, 10% -> a random token, 10% unchanged. Returns the
    corrupted ids and labels (-100 where not chosen)."""
    def rand() -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator)

    chosen = (rand() < prob) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    ids = input_ids.clone()
    roll = rand()
    ids[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    ids[swap] = torch.randint(vocab_size, input_ids.shape, generator=generator)[swap]
    return ids, labels


@dataclass
class Stage:
    name: str
    items: list


def pretraining_stages(by_lang: Mapping[str, Sequence[T]], order: Sequence[str], *,
                       strategy: str = "continual", replay: float = 0.2, seed: int = 0
                       ) -> list[Stage]:
    """The stages of PBR pre-training (CalibreNet Sec. 3.2.3, Table 7).

    continual: stage k = language k + a random ``replay`` share of each earlier language's
    data (the paper does not give the share; 0.2 is our default); sequential: stage k =
    language k only; mixed: one stage with every language. Items are shuffled per stage.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown PBR strategy {strategy!r}; valid: {STRATEGIES}")
    missing = [l for l in order if l not in by_lang]
    if missing or not order:
        raise ValueError(f"no PBR data for languages {missing or 'at all'}; have {sorted(by_lang)}")
    if not 0 <= replay <= 1:
        raise ValueError(f"replay must be in [0, 1], got {replay}")
    rng = random.Random(seed)
    if strategy == "mixed":
        items = [x for l in order for x in by_lang[l]]
        rng.shuffle(items)
        return [Stage("mixed:" + "+".join(order), items)]
    stages = []
    for k, lang in enumerate(order):
        items = list(by_lang[lang])
        if strategy == "continual":
            for earlier in order[:k]:
                pool = list(by_lang[earlier])
                items += rng.sample(pool, round(replay * len(pool)))
        rng.shuffle(items)
        stages.append(Stage(f"{strategy}:{k}:{lang}", items))
    return stages
