"""Language-similarity teacher weights (TSL Eq. 7-11): toy clouds with a known answer, the Eq. 10
loss by hand, the low-rank operator, the tau guard, and [CLS] embeddings of a tiny real BERT."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from xner_ray.methods.tsl.langsim import (
    LanguageSimilarity,
    SentenceEncoder,
    fit_language_similarity,
    language_id_accuracy,
    sentence_embeddings,
    similarity_weights,
    teacher_weights,
    uniform_weights,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: a second thread only contends with whatever else runs on the machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- toy: two Gaussian clouds in R^16 ---------------------------------------------------------

M_DIM, SEP = 16, 6.0


@pytest.fixture(scope="module")
def clouds(one_thread):
    """Centres 6 apart (unit noise), a shared offset so neither centre sits at the origin."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=M_DIM)
    direction /= np.linalg.norm(direction)
    base = rng.normal(size=M_DIM)
    centres = {"A": base + SEP / 2 * direction, "B": base - SEP / 2 * direction}

    def draw(lang: str, n: int) -> np.ndarray:
        return (centres[lang] + rng.normal(size=(n, M_DIM))).astype(np.float32)

    sources = {"A": draw("A", 200), "B": draw("B", 200)}
    torch.manual_seed(0)
    model = fit_language_similarity(sources, seed=0)  # defaults: d=64 -> 16, gamma 0.01, Adam
    return model, sources, draw


def test_toy_language_id_learns(clouds):
    model, sources, _ = clouds
    assert model.langs == ["A", "B"] and model.rank == M_DIM
    assert language_id_accuracy(model, sources) > 0.95


@pytest.mark.parametrize("lang,other", [("A", "B"), ("B", "A")])
def test_toy_target_like_one_source_weights_that_teacher(clouds, lang, other):
    model, _, draw = clouds
    w = teacher_weights(model, draw(lang, 100))
    assert math.isclose(sum(w.values()), 1.0, abs_tol=1e-9)
    assert w[lang] > 0.6 and w[other] < 0.4, w


def test_toy_even_mix_weights_both_evenly(clouds):
    model, _, draw = clouds
    w = teacher_weights(model, np.concatenate([draw("A", 50), draw("B", 50)]))
    assert math.isclose(sum(w.values()), 1.0, abs_tol=1e-9)
    assert all(abs(a - 0.5) < 0.1 for a in w.values()), w


# --- Eq. 10 by hand ---------------------------------------------------------------------------

def fixed_2x2(gamma: float) -> LanguageSimilarity:
    """U = [[1,0],[0,2]], V = [[1,1],[0,1]] -> M = U^T V = [[1,1],[0,2]];
    P = [[1,0],[0.5,1]] (mu_a = (1, 0.5), mu_b = (0, 1))."""
    model = LanguageSimilarity(["a", "b"], np.array([[1.0, 0.5], [0.0, 1.0]]), d=2, gamma=gamma)
    with torch.no_grad():
        model.U.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        model.V.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    return model


def test_eq10_loss_matches_hand_computation():
    model = fixed_2x2(gamma=0.01)
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([0, 1])
    # g1 M = (1, 1) -> scores (1.5, 1), label a;  g2 M = (0, 2) -> scores (1, 2), label b
    assert torch.allclose(model.scores(g), torch.tensor([[1.5, 1.0], [1.0, 2.0]]))
    ce = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(-1.0))) / 2
    # P P^T - I = [[0, 0.5], [0.5, 0.25]] -> squared Frobenius 0.25 + 0.25 + 0.0625
    frob = 0.5625
    with torch.no_grad():
        assert model.orthogonality().item() == pytest.approx(frob, abs=1e-6)
        assert model.loss(g, k).item() == pytest.approx(ce + 0.01 * frob, abs=1e-6)
        assert fixed_2x2(gamma=0.0).loss(g, k).item() == pytest.approx(ce, abs=1e-6)


# --- low rank ---------------------------------------------------------------------------------

def test_bilinear_operator_has_rank_at_most_d():
    rng = np.random.default_rng(1)
    sources = {l: rng.normal(loc=i, size=(40, 8)).astype(np.float32) for i, l in enumerate("xyz")}
    model = fit_language_similarity(sources, d=2, epochs=2)
    assert model.U.shape == model.V.shape == (2, 8) and model.P.shape == (8, 3)
    assert int(torch.linalg.matrix_rank(model.M.detach())) <= 2
    assert LanguageSimilarity(["x", "y"], np.zeros((2, 8)), d=64).rank == 8  # clipped to m


# --- tau guard, Eq. 7 -------------------------------------------------------------------------

def test_equal_scores_give_uniform_weights_and_a_warning(caplog):
    model = LanguageSimilarity(["de", "es", "nl"], np.eye(3, 4), d=2)
    with caplog.at_level(logging.WARNING, logger="xner_ray.methods.tsl.langsim"):
        w = teacher_weights(model, np.zeros((5, 4), dtype=np.float32))  # every score is 0
    assert w == uniform_weights(["de", "es", "nl"]) == {"de": 1 / 3, "es": 1 / 3, "nl": 1 / 3}
    assert "all 15 target scores are equal" in caplog.text
    with pytest.raises(ValueError, match="tau must be > 0"):
        teacher_weights(model, np.ones((5, 4), dtype=np.float32), tau=0.0)


# --- g(.): sentence embeddings from a tiny real encoder ---------------------------------------

SENTS = [["Wiesbaden", "is", "nice"],
         ["Peter", "Schmidt", "works", "for", "Siemens", "in", "Berlin", "since", "2010", "."],
         ["Amsterdam", "ligt", "in", "Nederland", "en", "Jan", "woont", "er", "."]]


def test_sentence_embeddings_shape_padding_and_pooling(tiny_model_dir):
    enc = SentenceEncoder(str(tiny_model_dir), device="cpu")
    batch = enc(SENTS)
    assert batch.shape == (3, enc.dim) == (3, 32) and batch.dtype == np.float32
    alone = enc(SENTS[:1])
    # the short sentence is padded next to the long ones: the mask keeps padding out
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    mean = sentence_embeddings(str(tiny_model_dir), SENTS, pooling="mean", device="cpu")
    np.testing.assert_allclose(mean[0], sentence_embeddings(str(tiny_model_dir), SENTS[:1],
                                                            pooling="mean", device="cpu")[0],
                               atol=1e-5)
    assert not np.allclose(mean, batch, atol=1e-3)
    with pytest.raises(ValueError, match="available: cls, mean"):
        SentenceEncoder(str(tiny_model_dir), pooling="max")


def test_encoder_loads_from_a_saved_token_classifier(tiny_model_dir, tiny_teacher_dir):
    """A teacher folder (encoder + NER head) gives the same g(.) as the bare encoder."""
    base = sentence_embeddings(str(tiny_model_dir), SENTS, device="cpu")
    teacher = sentence_embeddings(str(tiny_teacher_dir), SENTS, device="cpu")
    np.testing.assert_allclose(teacher, base, atol=1e-6)


def test_similarity_weights_end_to_end(tiny_model_dir):
    enc = SentenceEncoder(str(tiny_model_dir), device="cpu")
    sources = {"en": [SENTS[0], SENTS[1]] * 4, "nl": [SENTS[2]] * 8}
    weights, diag = similarity_weights(enc, sources, [SENTS[2], SENTS[0]], epochs=2)
    assert list(weights) == ["en", "nl"] and math.isclose(sum(weights.values()), 1.0, rel_tol=1e-9)
    assert diag["tau"] > 0 and 0.0 <= diag["train_accuracy"] <= 1.0
    assert diag["n_source"] == {"en": 8, "nl": 8} and diag["n_target"] == 2 and diag["rank"] == 32


# -- the similarity input: a seeded random sample of each corpus --------------------------------

def test_sample_sentences_is_a_seeded_uniform_sample_not_the_head(tmp_path):
    from xner_ray.methods.tsl.langsim import sample_sentences

    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"w{i} x\n" for i in range(1000)), encoding="utf-8")
    index = lambda sents: [int(s[0][1:]) for s in sents]  # noqa: E731
    a = sample_sentences(str(path), "xx", 100, seed=1)
    assert len(a) == 100 and a == sample_sentences(str(path), "xx", 100, seed=1)  # seeded
    assert index(a) == sorted(set(index(a)))             # distinct, in corpus order
    assert index(a) != list(range(100))                  # not the first 100 lines
    assert max(index(a)) > 900 and 350 < np.mean(index(a)) < 650   # spread over the file
    assert index(sample_sentences(str(path), "xx", 100, seed=2)) != index(a)
    # uniform: over many seeds every line is drawn about n / N = 10% of the time
    small = tmp_path / "small.txt"
    small.write_text("".join(f"w{i}\n" for i in range(20)), encoding="utf-8")
    counts = np.zeros(20)
    for seed in range(2000):
        counts[index(sample_sentences(str(small), "xx", 5, seed=seed))] += 1
    np.testing.assert_allclose(counts / 2000, 0.25, atol=0.04)
    # a corpus no larger than n comes back whole, in order
    assert index(sample_sentences(str(small), "xx", 50, seed=0)) == list(range(20))
    with pytest.raises(ValueError, match="n >= 1"):
        sample_sentences(str(small), "xx", 0)
