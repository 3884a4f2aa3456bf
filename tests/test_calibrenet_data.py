"""CalibreNet data builders on tiny slices of the real corpora: PBR passages (Sec. 3.2.1),
PBR instances, continual stages (Sec. 3.2.3), fine-tuning instances (Sec. 3.1.2, 4)."""

from __future__ import annotations

import collections
import itertools
import random

import pytest
import torch

from xner_ray.io import read_conll
from xner_ray.labels import spans_to_tags, tags_to_spans
from xner_ray.methods.calibrenet.data import DevSet, finetune_instances
from xner_ray.methods.calibrenet.garble import (
    apply_op, classify_op, default_op_dist, dist_from_counts, feasible, support,
)
from xner_ray.methods.calibrenet.pbr import (
    PassageRules, build_passages, mask_tokens, pbr_instances, pretraining_stages,
)


def _slice(path, n=300):
    return list(itertools.islice(read_conll(str(path)), n))


@pytest.mark.parametrize("corpus", ["conll2003-en/dev.txt", "wikiann-de/dev.txt",
                                    "masakhaner2/yor/dev.txt"])
def test_passages_follow_the_rules_and_keep_entity_offsets(shared_data, corpus):
    sents = _slice(shared_data / corpus)
    entities = collections.Counter(tuple(s.tokens[a:b]) for s in sents
                                   for a, b, _ in tags_to_spans(s.tags) if b - a <= 8)
    stats: collections.Counter = collections.Counter()
    rules = PassageRules()
    passages = list(build_passages(sents, rules, seed=3, stats=stats))
    assert passages and stats["passages"] == len(passages)
    found = collections.Counter()
    for p in passages:
        assert rules.min_words <= len(p.words) <= rules.max_words
        assert len(p.anchors) >= 2 and all(e - s <= 8 for s, e, _ in p.anchors)
        found.update(tuple(p.words[s:e]) for s, e, _ in p.anchors)
        assert p.lang == sents[0].lang
    assert not found - entities  # every anchor is a real entity string of the slice
    assert sum(len(p.words) for p in passages) <= sum(len(s.tokens) for s in sents)


def test_passages_drop_too_few_anchors():
    class S:
        def __init__(self, n, tags=None):
            self.tokens, self.tags = ["w"] * n, tags or ["O"] * n
            self.lang, self.source, self.line = "xx", "f", 1

    stats: collections.Counter = collections.Counter()
    one = S(60, ["B-PER"] + ["O"] * 59)
    two = S(60, ["B-PER", "O", "B-LOC", "I-LOC"] + ["O"] * 56)
    out = list(build_passages([one, two], PassageRules(min_words=50, max_words=60), stats=stats))
    assert len(out) == 1 and out[0].anchors == [(0, 1, "PER"), (2, 4, "LOC")]
    assert stats["dropped_few_anchors"] == 1


def test_pbr_instances_garble_each_anchor(shared_data):
    passages = list(build_passages(_slice(shared_data / "wikiann-de/dev.txt", 400), seed=1))
    ops: collections.Counter = collections.Counter()
    dist = dist_from_counts({}, smoothing=1.0)
    insts = pbr_instances(passages, dist, seed=0, ops=ops)
    assert len(insts) == sum(len(p.anchors) for p in passages) == sum(ops.values())
    for inst in insts:
        assert classify_op(inst.answer, inst.gold[:2]) in set(support())
        assert inst.origin.startswith("pbr:") and inst.lang == "de"
    assert len({op for op, _ in ops}) == 4  # every operation shows up


def test_continual_sequential_and_mixed_stages():
    data = {"en": list(range(100)), "de": list(range(100, 150)), "yo": list(range(150, 160))}
    cont = pretraining_stages(data, ["en", "de", "yo"], strategy="continual", replay=0.2, seed=0)
    assert [len(s.items) for s in cont] == [100, 50 + 20, 10 + 20 + 10]
    assert set(cont[2].items) >= set(data["yo"]) and len(set(cont[2].items)) == 40
    seq = pretraining_stages(data, ["en", "de", "yo"], strategy="sequential")
    assert [sorted(s.items) for s in seq] == [data["en"], data["de"], data["yo"]]
    mixed = pretraining_stages(data, ["en", "de", "yo"], strategy="mixed")
    assert len(mixed) == 1 and sorted(mixed[0].items) == list(range(160))
    with pytest.raises(ValueError, match="valid"):
        pretraining_stages(data, ["en"], strategy="shuffled")
    with pytest.raises(ValueError, match="no PBR data"):
        pretraining_stages(data, ["fr"])


def test_mask_tokens_rates():
    g = torch.Generator().manual_seed(0)
    ids = torch.full((200, 100), 7)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    masked, labels = mask_tokens(ids, maskable, mask_id=3, vocab_size=50, generator=g)
    chosen = labels != -100
    assert not chosen[:, 0].any()
    assert chosen.float().mean() == pytest.approx(0.15 * 99 / 100, abs=0.01)
    assert (masked[chosen] == 3).float().mean() == pytest.approx(0.8, abs=0.03)
    assert (labels[chosen] == 7).all() and (masked[~chosen] == 7).all()


def test_finetune_instances_from_predictions_and_garbles(shared_data):
    sents = _slice(shared_data / "conll2003-en/dev.txt", 200)
    rng = random.Random(0)
    preds = []
    for s in sents:  # a fake base tagger: one garbled span per sentence
        spans = tags_to_spans(s.tags)
        if spans:
            a, b, t = spans[0]
            op = rng.choice([o for o in support(2) if feasible((a, b), len(s.tokens), o)])
            spans[0] = (*apply_op((a, b), len(s.tokens), op, rng), t)
        try:
            preds.append(spans_to_tags(spans, len(s.tokens)))
        except ValueError:  # the garble ran into the next entity
            preds.append(list(s.tags))
    words, gold = [s.tokens for s in sents], [s.tags for s in sents]
    insts, stats = finetune_instances(words, preds, gold, default_op_dist(), copies=1)
    n_gold = sum(len(tags_to_spans(g)) for g in gold)
    n_pred = sum(len(tags_to_spans(p)) for p in preds)
    assert stats["pred"] + stats["spurious_skipped"] == n_pred
    assert sum(v for k, v in stats.items() if k.startswith("garble:")) == n_gold
    assert "garble:noop" not in stats
    assert len(insts) == stats["pred"] + n_gold
    for inst in insts:
        assert inst.gold in [tuple(x) for x in tags_to_spans(gold[words.index(inst.words)])]
    DevSet(words, preds, gold)
    with pytest.raises(ValueError):
        DevSet(words, preds[:-1], gold)
