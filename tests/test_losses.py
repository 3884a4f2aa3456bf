"""KD loss: masks, weights and hand-computed values (TSL Eq. 3-4, RIKD Eq. 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xner_ray.train.losses import gather_words, kd_mse_loss, teacher_tensor


def test_kd_mse_matches_hand_computation():
    # 2 sentences, up to 2 words, 2 labels; student logits chosen so softmax is easy to write
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]],
                                     [[0.2, 0.8], [0.3, 0.7]]]))
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 0.0]],
                            [[0.0, 1.0], [0.5, 0.5]]])
    mask = torch.tensor([[True, True], [True, False]])  # 2nd word of sentence 2 is padding
    w = torch.tensor([1.0, 3.0])
    # sentence 1: word MSEs ((.5^2+.5^2)/2, (.1^2+.1^2)/2) = (.25, .01) -> mean .13
    # sentence 2: word 1 only: (.2^2 + .2^2)/2 = .04
    expected = (1.0 * 0.13 + 3.0 * 0.04) / 4.0
    assert kd_mse_loss(logits, teacher, mask, w).item() == pytest.approx(expected, rel=1e-5)


def test_masked_words_and_zero_weights_get_no_gradient():
    logits = torch.randn(3, 4, 5, requires_grad=True)
    teacher = torch.softmax(torch.randn(3, 4, 5), -1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    loss = kd_mse_loss(logits, teacher, mask, torch.tensor([1.0, 0.0, 2.0]))
    loss.backward()
    g = logits.grad.abs().sum(-1)
    assert (g[0, :2] > 0).all() and (g[0, 2:] == 0).all()
    assert (g[1] == 0).all()  # weight 0: a discarded instance teaches nothing
    assert (g[2, 0] > 0) and (g[2, 1:] == 0).all()


def test_all_weights_zero_is_zero_not_nan():
    loss = kd_mse_loss(torch.randn(2, 3, 4), torch.rand(2, 3, 4), torch.ones(2, 3, dtype=torch.bool),
                       torch.zeros(2))
    assert loss.item() == 0.0


def test_gather_words_and_teacher_tensor():
    logits = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    words, mask = gather_words(logits, [np.array([1, 3]), np.array([1, -1, -1])])
    assert words.shape == (2, 3, 2)
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    assert words[0, 0].tolist() == logits[0, 1].tolist() and words[0, 1].tolist() == logits[0, 3].tolist()
    t = teacher_tensor([[[0.1, 0.9], [0.5, 0.5]], [[1.0, 0.0]]], words.shape)
    np.testing.assert_allclose(t[0, :2].numpy(), [[0.1, 0.9], [0.5, 0.5]], rtol=1e-6)
    assert t[1].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]


def test_kd_kl_matches_hand_computation_and_masks_like_mse():
    from xner_ray.train.losses import kd_kl_loss

    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]],
                                     [[0.2, 0.8], [0.3, 0.7]]]))
    teacher = torch.tensor([[[1.0, 0.0], [1.0, 0.0]],
                            [[0.0, 1.0], [0.5, 0.5]]])
    mask = torch.tensor([[True, True], [True, False]])
    w = torch.tensor([1.0, 3.0])
    # KL(q||p) per word: -log .5, -log .9 (teacher zeros add 0); sentence 2: -log .8
    s1 = (-np.log(0.5) - np.log(0.9)) / 2
    s2 = -np.log(0.8)
    expected = (1.0 * s1 + 3.0 * s2) / 4.0
    assert kd_kl_loss(logits, teacher, mask, w).item() == pytest.approx(expected, rel=1e-5)
    # student == teacher: zero
    same = torch.log(torch.tensor([[[0.3, 0.7]]]))
    assert kd_kl_loss(same, torch.tensor([[[0.3, 0.7]]]), torch.ones(1, 1, dtype=torch.bool),
                      torch.ones(1)).item() == pytest.approx(0.0, abs=1e-6)
    # masked words and zero weights: no gradient, as for the MSE
    x = torch.randn(2, 3, 4, requires_grad=True)
    kd_kl_loss(x, torch.softmax(torch.randn(2, 3, 4), -1),
               torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool),
               torch.tensor([1.0, 0.0])).backward()
    g = x.grad.abs().sum(-1)
    assert g[0, 0] > 0 and (g[0, 1:] == 0).all() and (g[1] == 0).all()


def test_kl_keeps_pulling_a_label_the_student_has_dropped():
    """The reason the option exists: a student that gives a rare label ~0 gets almost no MSE
    gradient towards it (softmax saturation), but a full-size KL gradient."""
    from xner_ray.train.losses import kd_kl_loss

    teacher = torch.tensor([[[0.2, 0.8, 0.0]]])  # teacher: mostly label 1 (say B-MISC)
    mask, w = torch.ones(1, 1, dtype=torch.bool), torch.ones(1)
    grads = {}
    for name, fn in (("mse", kd_mse_loss), ("kl", kd_kl_loss)):
        logits = torch.tensor([[[8.0, -4.0, 0.0]]], requires_grad=True)  # student: p(1) ~ 6e-6
        fn(logits, teacher, mask, w).backward()
        grads[name] = -logits.grad[0, 0, 1].item()  # descent direction on label 1's logit
    assert grads["kl"] > 0 and grads["mse"] > 0  # both push label 1 up ...
    assert grads["kl"] > 1000 * grads["mse"]  # ... the MSE about 10^5 times more weakly


def test_kd_loss_config_is_checked():
    from xner_ray.train.loop import KD_LOSS_NAMES, TrainConfig
    from xner_ray.train.losses import KD_LOSSES

    assert set(KD_LOSS_NAMES) == set(KD_LOSSES)
    assert TrainConfig(out="x", kd_loss="kl").kd_loss == "kl"
    with pytest.raises(ValueError, match="kd_loss"):
        TrainConfig(out="x", kd_loss="ce")


# -- the re-weighted loss of the projection paper (Li et al. Sec. 4.3) -------------------------

@pytest.mark.parametrize("gamma", [0.0, 1.0, 4.0])
def test_reweighted_loss_gradient_raises_the_label_for_every_p_t(gamma):
    """(1 + p_t)^gamma is a constant weight on top of cross-entropy: dLoss/dlogit_t < 0 for the
    true class at every p_t in (0, 1), so a step always raises p_t (differentiated through the
    weight, gamma 4 pushes p_t down for p_t in about (0.16, 0.44))."""
    from xner_ray.train.losses import reverse_focal_loss

    p_t = torch.linspace(0.005, 0.995, 199)
    # 3 classes: the label gets p_t, the two others share the rest
    probs = torch.stack([p_t, (1 - p_t) / 2, (1 - p_t) / 2], dim=-1)
    logits = probs.log().unsqueeze(0).clone().requires_grad_(True)  # [1, 199, 3]
    labels = torch.zeros(1, len(p_t), dtype=torch.long)
    reverse_focal_loss(logits, labels, gamma).backward()
    g = logits.grad[0]
    assert (g[:, 0] < 0).all(), p_t[g[:, 0] >= 0]
    # per token: weight * (p_t - 1) / N, the cross-entropy gradient times the constant weight
    want = (1 + p_t) ** gamma * (p_t - 1) / len(p_t)
    torch.testing.assert_close(g[:, 0], want, rtol=1e-4, atol=1e-7)


def test_reweighted_loss_weight_is_detached_but_value_unchanged():
    from xner_ray.train.losses import reverse_focal_loss

    logits = torch.log(torch.tensor([[[0.3, 0.7]]])).requires_grad_(True)
    loss = reverse_focal_loss(logits, torch.tensor([[0]]), 4.0)
    assert loss.item() == pytest.approx(-(1.3 ** 4) * np.log(0.3), rel=1e-5)
    loss.backward()
    # differentiated through the weight the gradient would be positive at p_t = 0.3
    assert logits.grad[0, 0, 0].item() == pytest.approx(1.3 ** 4 * (0.3 - 1), rel=1e-5)
