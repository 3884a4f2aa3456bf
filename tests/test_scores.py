"""Pseudo-label scores (RIKD Eq. 5, f_conf, f_entities, Eq. 6) on hand-computed values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from xner_ray import scores

LABELS = ["O", "B-PER", "I-PER"]
P = np.array([[0.7, 0.2, 0.1],
              [0.1, 0.6, 0.3],
              [0.2, 0.3, 0.5]])


def test_confidence_is_mean_top_probability():
    assert scores.confidence(P) == pytest.approx((0.7 + 0.6 + 0.5) / 3)  # RIKD Eq. 5
    got = scores.batch_confidence([P, P[:1], np.zeros((0, 3)), []])
    assert got[:2] == pytest.approx([0.6, 0.7]) and np.isnan(got[2:]).all()


def test_f_conf_uses_the_predicted_tags_not_the_argmax():
    tags = ["O", "B-PER", "B-PER"]  # the last word's argmax is I-PER (e.g. Viterbi changed it)
    want = -(math.log(0.7) + math.log(0.6) + math.log(0.3)) / 3
    assert scores.f_conf(P, tags, LABELS) == pytest.approx(want)
    zero = np.array([[1.0, 0.0, 0.0]])
    assert scores.f_conf(zero, ["B-PER"], LABELS) == pytest.approx(-math.log(scores.EPS))
    with pytest.raises(ValueError, match="not in the label set"):
        scores.f_conf(P, ["O", "B-LOC", "O"], LABELS)
    with pytest.raises(ValueError, match="2 tags for 3 words"):
        scores.batch_f_conf([P], [["O", "O"]], LABELS)


def test_entity_counts():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-LOC", "I-ORG"]
    assert scores.batch_f_entities([tags]).tolist() == [6]  # RIKD f_entities: non-O words
    assert scores.n_entities(tags) == 3  # strict IOB2 spans: the orphan I- tags start none


def test_n_entities_matches_seqeval_strict():
    from seqeval.scheme import IOB2, Entities

    rng = random.Random(1)
    seqs = [[rng.choice(["O", "B-A", "I-A", "B-B", "I-B"]) for _ in range(rng.randint(0, 8))]
            for _ in range(200)]
    want = [len(e) for e in Entities(seqs, IOB2, suffix=False).entities]
    assert scores.batch_n_entities(seqs).tolist() == want


def test_agreement_is_negative_mean_mse():
    teacher = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    student = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    # word 1: MSE = (1 + 1 + 0) / 3; word 2: 0 -> agree = -(2/3 + 0) / 2 (RIKD Eq. 6)
    assert scores.agreement(teacher, student) == pytest.approx(-1 / 3)
    assert scores.agreement(P, P) == 0.0
    got = scores.batch_agreement([teacher, P], [student, P])
    assert got.tolist() == pytest.approx([-1 / 3, 0.0])
    with pytest.raises(ValueError, match="differ in shape"):
        scores.agreement(P, P[:2])


def test_tag_agreement():
    assert scores.tag_agreement(["O", "B-PER", "I-PER"], ["O", "B-PER", "O"]) == pytest.approx(
        2 / 3)
    assert math.isnan(scores.tag_agreement([], []))
    with pytest.raises(ValueError):
        scores.tag_agreement(["O"], [])


def test_score_batch_matches_single_sentence_functions():
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(3), size=n) for n in (4, 1, 7)]
    tags = [[LABELS[i] for i in p.argmax(1)] for p in probs]
    out = scores.score_batch(probs, tags, LABELS)
    assert out["confidence"].dtype == np.float32 and out["n_entities"].dtype == np.int32
    assert out["length"].tolist() == [4, 1, 7]
    for i, (p, t) in enumerate(zip(probs, tags)):
        assert out["confidence"][i] == pytest.approx(scores.confidence(p), rel=1e-6)
        assert out["f_conf"][i] == pytest.approx(scores.f_conf(p, t, LABELS), rel=1e-6)
        assert out["n_entities"][i] == scores.n_entities(t)
