"""Tag utilities: hand-written cases with exact tags, and Viterbi checked against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from xner_ray.labels import (
    LabelMap, allowed_starts, allowed_transitions, entity_type, iob1_to_iob2, is_valid_iob2,
    is_valid_tag, label_list, repair_bio, spans_to_tags, tags_to_spans, viterbi_batch,
    viterbi_decode,
)

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.mark.parametrize("tag,ok", [
    ("O", True), ("B-PER", True), ("I-MISC", True), ("B-DATE_TIME", True),
    ("B-", False), ("E-PER", False), ("S-PER", False), ("PER", False), ("o", False),
    ("B-P ER", False), ("", False), ("BPER", False), ("I_PER", False),
])
def test_is_valid_tag(tag, ok):
    assert is_valid_tag(tag) is ok


def test_entity_type():
    assert entity_type("O") is None
    assert entity_type("B-PER") == "PER"
    assert entity_type("I-LOC") == "LOC"
    with pytest.raises(ValueError, match="'E-PER'"):
        entity_type("E-PER")


@pytest.mark.parametrize("tags,fixed,n", [
    (["B-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"], 0),
    (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"], 1),  # I- at the start
    (["O", "I-LOC", "I-LOC"], ["O", "B-LOC", "I-LOC"], 1),  # I- after O
    (["B-PER", "I-LOC", "I-LOC"], ["B-PER", "B-LOC", "I-LOC"], 1),  # I- after another type
    (["I-PER", "O", "I-PER", "B-PER", "I-ORG"], ["B-PER", "O", "B-PER", "B-PER", "B-ORG"], 3),
    ([], [], 0),
])
def test_repair_bio(tags, fixed, n):
    assert repair_bio(tags) == (fixed, n)
    assert is_valid_iob2(fixed)
    assert is_valid_iob2(tags) is (n == 0)


def test_repair_bio_rejects_invalid_tags():
    with pytest.raises(ValueError, match="'E-PER'"):
        repair_bio(["B-PER", "E-PER"])


def test_iob1_to_iob2():
    # IOB1: B- only where an entity directly follows one of the same type.
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]
    assert iob1_to_iob2(iob1) == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"]


def test_tags_to_spans():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG"]
    assert tags_to_spans(tags) == [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "LOC"), (5, 7, "ORG")]
    assert tags_to_spans(["O", "O"]) == []
    assert tags_to_spans([]) == []
    assert tags_to_spans(["I-PER"]) == [(0, 1, "PER")]


def test_spans_to_tags():
    spans = [(3, 4, "LOC"), (0, 2, "PER"), (4, 5, "LOC")]
    assert spans_to_tags(spans, 6) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "O"]
    assert spans_to_tags([], 2) == ["O", "O"]


@pytest.mark.parametrize("spans,match", [
    ([(0, 2, "PER"), (1, 3, "LOC")], "overlaps"),
    ([(2, 2, "PER")], "empty or outside"),
    ([(3, 5, "PER")], "empty or outside"),
    ([(-1, 1, "PER")], "empty or outside"),
    ([(0, 1, "")], "invalid entity type"),
])
def test_spans_to_tags_errors(spans, match):
    with pytest.raises(ValueError, match=match):
        spans_to_tags(spans, 4)


def test_span_tag_round_trip_random():
    rng = np.random.default_rng(0)
    for _ in range(300):
        tags = list(rng.choice(LABELS, size=int(rng.integers(0, 12))))
        fixed, _ = repair_bio(tags)
        assert spans_to_tags(tags_to_spans(tags), len(tags)) == fixed
        assert tags_to_spans(spans_to_tags(tags_to_spans(tags), len(tags))) == tags_to_spans(tags)


def test_label_list():
    assert label_list(["PER", "LOC", "B-ORG", "I-ORG", "O"]) == [
        "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert label_list([]) == ["O"]


def test_label_map_apply_and_counts():
    lm = LabelMap({"PERSON": "PER", "GPE": "LOC", "DATE": None, "MISC": "O", "LOC": "LOC"})
    tags = ["B-PERSON", "I-PERSON", "O", "B-GPE", "B-DATE", "I-DATE", "B-MISC", "B-EVENT",
            "I-LOC"]
    assert lm.apply(tags) == ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "O", "O", "B-LOC"]
    assert lm.mapped == {"PERSON": 1, "GPE": 1, "LOC": 1}
    assert lm.dropped == {"DATE": 1, "MISC": 1}
    assert lm.unknown == {"EVENT": 1}
    assert "unknown={'EVENT': 1}" in lm.summary()


def test_label_map_keep_unknown():
    lm = LabelMap({"MISC": None}, keep_unknown=True)
    assert lm.apply(["B-PER", "B-MISC", "I-MISC", "I-LOC"]) == ["B-PER", "O", "O", "B-LOC"]
    assert lm.unknown == {"PER": 1, "LOC": 1} and lm.dropped == {"MISC": 1}


def test_label_map_validation():
    with pytest.raises(ValueError, match=r"valid: \['LOC', 'PER'\]"):
        LabelMap({"PERSON": "PERS"}, target_types=["PER", "LOC"])
    with pytest.raises(ValueError, match="looks like a tag"):
        LabelMap({"B-PER": "PER"})
    with pytest.raises(ValueError, match="invalid source entity type"):
        LabelMap({"": "PER"})
    with pytest.raises(ValueError, match="invalid target entity type"):
        LabelMap({"PERSON": "P ER"})
    assert LabelMap({"PERSON": "PER"}, target_types=["B-PER", "O"]).mapping == {"PERSON": "PER"}


def test_label_map_from_spec():
    lm = LabelMap.from_spec(" PERSON=PER, GPE=LOC ,LOC,drop:MISC,DATE=O")
    assert lm.mapping == {"PERSON": "PER", "GPE": "LOC", "LOC": "LOC", "MISC": None,
                          "DATE": None}
    assert not lm.keep_unknown
    assert LabelMap.from_spec("drop:MISC,*").keep_unknown
    assert LabelMap.from_spec("drop:MISC,*").apply(["B-PER", "B-MISC"]) == ["B-PER", "O"]
    with pytest.raises(ValueError, match="SRC=DST"):
        LabelMap.from_spec("PER,,LOC")
    with pytest.raises(ValueError, match="valid"):
        LabelMap.from_spec("PERSON=PERS", target_types=["PER"])


def test_allowed_transitions():
    allowed = allowed_transitions(LABELS)
    expected = np.array([
        # to: O  B-PER  I-PER  B-LOC  I-LOC
        [1, 1, 0, 1, 0],  # from O
        [1, 1, 1, 1, 0],  # from B-PER
        [1, 1, 1, 1, 0],  # from I-PER
        [1, 1, 0, 1, 1],  # from B-LOC
        [1, 1, 0, 1, 1],  # from I-LOC
    ], dtype=bool)
    assert (allowed == expected).all()
    assert allowed_starts(LABELS).tolist() == [True, True, False, True, False]
    with pytest.raises(ValueError, match="'X'"):
        allowed_transitions(["O", "X"])


def _valid(seq: list[str]) -> bool:
    prev = "O"
    for tag in seq:
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


def _brute_force(log_probs: np.ndarray, labels: list[str]) -> tuple[list[str], float]:
    best, best_score = None, -np.inf
    for idx in itertools.product(range(len(labels)), repeat=len(log_probs)):
        seq = [labels[i] for i in idx]
        score = float(sum(log_probs[t, i] for t, i in enumerate(idx)))
        if _valid(seq) and score > best_score:
            best, best_score = seq, score
    return best, best_score


def _score(log_probs: np.ndarray, labels: list[str], seq: list[str]) -> float:
    return float(sum(log_probs[t, labels.index(tag)] for t, tag in enumerate(seq)))


def test_viterbi_fixes_invalid_greedy_sequence():
    labels = ["O", "B-PER", "I-PER"]
    probs = np.array([[0.5, 0.2, 0.3], [0.1, 0.2, 0.7], [0.1, 0.1, 0.8]])
    greedy = [labels[i] for i in probs.argmax(1)]
    assert greedy == ["O", "I-PER", "I-PER"]  # invalid: an entity starting with I-
    # B I I = .2*.7*.8 = .112 beats O B I = .08 and every other valid path.
    assert viterbi_decode(np.log(probs), labels) == ["B-PER", "I-PER", "I-PER"]


def test_viterbi_type_switch_and_valid_argmax():
    labels = LABELS
    lp = np.log(np.array([
        [0.1, 0.8, 0.05, 0.03, 0.02],
        [0.1, 0.05, 0.1, 0.05, 0.7],  # argmax I-LOC after B-PER: invalid
    ]))
    assert viterbi_decode(lp, labels) == _brute_force(lp, labels)[0]
    valid = np.log(np.array([[0.1, 0.8, 0.05, 0.03, 0.02], [0.1, 0.05, 0.7, 0.05, 0.1]]))
    assert viterbi_decode(valid, labels) == ["B-PER", "I-PER"]  # valid argmax is kept


def test_viterbi_matches_brute_force_on_random_inputs():
    rng = np.random.default_rng(1)
    for _ in range(60):
        n_steps = int(rng.integers(1, 6))
        logits = rng.normal(scale=3.0, size=(n_steps, len(LABELS)))
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        best, best_score = _brute_force(lp, LABELS)
        got = viterbi_decode(lp, LABELS)
        assert _valid(got)
        assert _score(lp, LABELS, got) == pytest.approx(best_score)
        assert got == best


def test_viterbi_banned_labels_and_edge_cases():
    lp = np.array([[-np.inf, -np.inf, 0.0], [-np.inf, -np.inf, 0.0]])  # only I-PER has mass
    # Every valid path has one banned label; the least bad one opens the entity with B-.
    assert viterbi_decode(lp, ["O", "B-PER", "I-PER"]) == ["B-PER", "I-PER"]
    assert viterbi_decode(np.zeros((0, 3)), ["O", "B-PER", "I-PER"]) == []
    with pytest.raises(ValueError, match="shape"):
        viterbi_decode(np.zeros((2, 4)), ["O", "B-PER", "I-PER"])
    with pytest.raises(ValueError, match="NaN"):
        viterbi_decode(np.full((2, 3), np.nan), ["O", "B-PER", "I-PER"])


def test_viterbi_batch_equals_single_decodes():
    rng = np.random.default_rng(2)
    arrays = [rng.normal(size=(n, len(LABELS))) for n in (5, 1, 0, 9, 3)]
    assert viterbi_batch(arrays, LABELS) == [viterbi_decode(a, LABELS) for a in arrays]
    for arr, got in zip(arrays, viterbi_batch(arrays, LABELS)):
        assert len(got) == len(arr)
        if 0 < len(arr) <= 5:
            assert got == _brute_force(arr, LABELS)[0]
    assert viterbi_batch([], LABELS) == []
