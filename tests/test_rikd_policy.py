"""RIKD selector: state features, policy, REINFORCE (Eq. 4), delayed reward (Eq. 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xner_ray.methods.rikd.policy import (Cached, Policy, RLSelector, StateEncoder, StateInputs,
                                          delayed_reward, log_prob, reinforce_update,
                                          sample_actions, subbatch_kd_loss)
from xner_ray.scores import agreement, f_conf
from xner_ray.train.losses import kd_mse_loss

LABELS = ["O", "B-PER", "I-PER"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: extra intra-op threads only wait on each other on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hand_batch(hidden: int = 4) -> StateInputs:
    """2 sentences: 3 words, and 2 words + 1 padding word (tag -100, junk values)."""
    teacher = torch.tensor([[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]],
                            [[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.3, 0.3, 0.4]]])
    student = torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]],
                            [[0.8, 0.2, 0.0], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])
    tags = torch.tensor([[0, 1, 2], [0, 1, -100]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    hidden_states = torch.randn(2, 3, hidden, generator=torch.Generator().manual_seed(0))
    return StateInputs(teacher, tags, student, hidden_states, mask)


def test_raw_state_features_match_hand_computation():
    x = hand_batch()
    raw = StateEncoder(LABELS, hidden_size=4).raw_features(x)
    assert raw["f_entities"].tolist() == [2.0, 1.0]          # non-O words; padding not counted
    assert raw["f_length"].tolist() == [3.0, 2.0]
    conf = [-(math.log(0.8) + math.log(0.7) + math.log(0.6)) / 3, math.log(2) / 2]
    np.testing.assert_allclose(raw["f_conf"].numpy(), conf, rtol=1e-6)
    # sentence 1: word 1 MSE (.3^2 + .15^2 + .15^2) / 3 = .045, others 0 -> .015
    # sentence 2: word 1 MSE (.2^2 + .2^2 + 0) / 3, word 2: 0 -> .04 / 3
    np.testing.assert_allclose(raw["f_agree"].numpy(), [0.015, 0.04 / 3], rtol=1e-5)
    # same definitions as the store's scores (numpy) on the unpadded sentences
    t, s = x.teacher_probs.numpy(), x.student_probs.numpy()
    assert raw["f_conf"][1].item() == pytest.approx(f_conf(t[1, :2], ["O", "B-PER"], LABELS))
    assert raw["f_agree"][1].item() == pytest.approx(-agreement(t[1, :2], s[1, :2]), rel=1e-5)
    # and f_agree is the per-sentence term of the KD loss (RIKD Eq. 1)
    kd = kd_mse_loss(x.student_probs[:1].log(), x.teacher_probs[:1], x.mask[:1], torch.ones(1))
    assert raw["f_agree"][0].item() == pytest.approx(kd.item(), rel=1e-5)


def test_state_layout_scaling_and_padding_invariance():
    torch.manual_seed(0)
    enc = StateEncoder(LABELS, hidden_size=4)
    x = hand_batch()
    s = enc(x)
    assert s.shape == (2, 256 + 4) and enc.state_dim == 260
    assert enc.semantic(x).shape == (2, 256)
    # [f_entities, f_conf, f_agree, f_semantic (256), f_length], scaled as documented
    assert s[0, 0].item() == pytest.approx(math.log1p(2.0))
    assert s[1, 1].item() == pytest.approx(math.log1p(math.log(2) / 2), rel=1e-6)
    assert s[0, 2].item() == pytest.approx(math.sqrt(3 * 0.015), rel=1e-5)
    assert s[:, -1].tolist() == pytest.approx([math.log1p(3.0), math.log1p(2.0)])
    # other padding content -> the same state
    y = hand_batch()
    y.student_hidden[1, 2] = 1e3
    y.teacher_tags[1, 2] = 2
    y.teacher_probs[1, 2] = torch.tensor([0.0, 0.0, 1.0])
    y.student_probs[1, 2] = torch.tensor([0.0, 1.0, 0.0])
    assert torch.equal(enc(y), s)


def test_state_inputs_shape_and_tag_checks():
    x = hand_batch()
    with pytest.raises(ValueError, match="share"):
        StateInputs(x.teacher_probs, x.teacher_tags, x.student_probs, x.student_hidden[:, :2],
                    x.mask)
    x.teacher_tags[0, 0] = 7
    with pytest.raises(ValueError, match="outside"):
        StateEncoder(LABELS, 4).raw_features(x)
    with pytest.raises(ValueError, match="no 'O'"):
        StateEncoder(["B-PER", "I-PER"], 4)


def test_delayed_reward_sign():
    assert delayed_reward(0.5, 0.3) == pytest.approx(0.2)   # the kept sub-batch got easier
    assert delayed_reward(0.3, 0.5) == pytest.approx(-0.2)
    assert delayed_reward(0.4, 0.4) == 0.0
    with pytest.raises(ValueError):
        delayed_reward(float("nan"), 0.1)


def test_single_update_matches_hand_computation():
    pol = Policy(state_dim=1, hidden=1)
    w1, b1, w2, b2 = 0.5, 0.1, 0.8, -0.2
    with torch.no_grad():
        pol.fc1.weight.fill_(w1), pol.fc1.bias.fill_(b1)
        pol.fc2.weight.fill_(w2), pol.fc2.bias.fill_(b2)
    s, a, r, lr = [1.0, 2.0], [1, 0], 0.7, 0.01
    # grad log pi(a|s) wrt z is (a - p); dz/d(w1, b1, w2, b2) = (w2 s, w2, h, 1) with relu active
    grads = np.zeros(4)
    for si, ai in zip(s, a):
        h = max(w1 * si + b1, 0.0)
        p = 1 / (1 + math.exp(-(w2 * h + b2)))
        grads += (ai - p) * np.array([w2 * si, w2, h, 1.0]) / len(s)  # Eq. 4: 1/|S| sum_i
    expected = np.array([w1, b1, w2, b2]) + lr * r * grads
    opt = torch.optim.SGD(pol.parameters(), lr=lr)
    states, actions = torch.tensor(s).unsqueeze(1), torch.tensor(a, dtype=torch.bool)
    reinforce_update(opt, log_prob(pol.logits(states), actions), r)
    got = [pol.fc1.weight.item(), pol.fc1.bias.item(), pol.fc2.weight.item(), pol.fc2.bias.item()]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_reinforce_learns_to_keep_good_and_drop_bad_instances():
    torch.manual_seed(0)
    states = torch.zeros(16, 4)
    states[:8, :2], states[8:, :2] = torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 1.0])
    sel = RLSelector(nn.Identity(), Policy(4), lr=0.01, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(sel.policy(states), torch.full((16,), 0.5))  # neutral start
    for _ in range(200):
        keep, _, cached = sel.act(states)
        r = float(keep[:8].sum() - keep[8:].sum())  # each kept A instance +1, each kept B -1
        sel.learn(cached, r)
    p = sel.policy(states).detach()
    assert p[:8].min() > 0.8 and p[8:].max() < 0.2
    assert len(sel.history) == 200 and [h["step"] for h in sel.history[:2]] == [1, 2]


def test_policy_update_leaves_the_student_alone():
    torch.manual_seed(0)
    student, head = nn.Linear(5, 4), nn.Linear(4, 3)             # stand-ins for encoder + NER head
    hidden = student(torch.randn(2, 3, 5))                       # [B, T, H] with a graph
    x = hand_batch()
    # passed in undetached on purpose: the selector must cut the graph itself
    x = StateInputs(x.teacher_probs, x.teacher_tags, torch.softmax(head(hidden), -1), hidden,
                    x.mask)
    sel = RLSelector.build(LABELS, hidden_size=4, seed=0)
    proj0 = sel.encoder.proj.weight.detach().clone()
    for r in (0.5, -0.3):                                        # W2 starts at 0: 2 steps reach W_u
        _, _, cached = sel.act(x)
        sel.learn(cached, r)
    assert student.weight.grad is None and head.weight.grad is None
    assert not torch.equal(sel.encoder.proj.weight, proj0)       # the selector's own parts learn
    assert set(sel.history[-1]) >= {"step", "discard_ratio", "reward", "mean_p"}


def test_all_discard_batch_and_batch_of_one():
    x = hand_batch()
    sel = RLSelector.build(LABELS, hidden_size=4, init_keep=0.01, seed=0)
    keep, _, cached = sel.act(x)
    assert not keep.any() and cached.n_kept == 0
    assert subbatch_kd_loss(x.student_probs.log(), x.teacher_probs, x.mask, keep).item() == 0.0
    before = [q.detach().clone() for q in sel.parameters()]
    rec = sel.learn(cached, None)                                 # student update skipped
    assert rec["empty"] and rec["discard_ratio"] == 1.0 and rec["reward"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, sel.parameters()))  # r = 0: no change
    assert sel.summary()["empty_steps"] == 1
    # a negative empty_reward pushes the policy towards keeping
    sel.empty_reward = -1.0
    z0 = sel.policy.logits(sel.encoder(x)).detach()
    sel.learn(cached, None)
    assert (sel.policy.logits(sel.encoder(x)) > z0).all()
    with pytest.raises(ValueError, match="reward is required"):
        sel.learn(Cached(cached.inputs, torch.ones(2, dtype=torch.bool), cached.p, 9), None)
    one = StateInputs(x.teacher_probs[:1, :1], x.teacher_tags[:1, :1], x.student_probs[:1, :1],
                      x.student_hidden[:1, :1], x.mask[:1, :1])
    keep1, p1, _ = RLSelector.build(LABELS, hidden_size=4, seed=0).act(one)
    assert keep1.shape == (1,) and p1.shape == (1,)


def test_from_student_matches_manual_inputs():
    x = hand_batch()
    logits = x.student_probs.clamp(min=1e-9).log()
    y = StateInputs.from_student(logits, x.student_hidden, x.teacher_probs, x.mask)
    assert torch.allclose(y.student_probs, x.student_probs, atol=1e-6)
    assert torch.equal(y.teacher_tags, x.teacher_probs.argmax(-1))  # default: teacher argmax


def test_sample_actions_frequency():
    a = sample_actions(torch.full((4000,), 0.3), torch.Generator().manual_seed(0))
    assert a.dtype == torch.bool and abs(a.float().mean().item() - 0.3) < 0.03


def test_subbatch_loss_follows_kd_loss():
    """RIKD Eq. 2-3 with ``kd_loss: kl``: the kept sub-batch's loss is the KL, over kept rows."""
    from xner_ray.train.losses import kd_kl_loss

    x = hand_batch()
    logits = x.student_probs.log()
    keep = torch.tensor([True, False])
    got = subbatch_kd_loss(logits, x.teacher_probs, x.mask, keep, loss="kl")
    want = kd_kl_loss(logits[:1], x.teacher_probs[:1], x.mask[:1], torch.ones(1))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert got.item() != pytest.approx(
        subbatch_kd_loss(logits, x.teacher_probs, x.mask, keep).item(), rel=1e-3)


# -- a policy that learns: baseline, normalised rewards, standardised states -------------------

def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties count 1/2."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _corrupted_task(seed: int, n: int = 400, words: int = 6, hidden: int = 16, share: float = 0.3):
    """Synthetic word features whose true tag is a fixed linear function of them; the teacher's
    soft labels are confident (0.9) everywhere, but for ``share`` of the sentences on a wrong
    tag at every word (the corrupted pseudo-labels)."""
    g = torch.Generator().manual_seed(seed)
    c = len(POLICY_LABELS)
    feats = torch.randn(n, words, hidden, generator=g)
    true = (feats @ (2 * torch.randn(hidden, c, generator=g))).argmax(-1)
    corrupt = torch.rand(n, generator=g) < share
    wrong = (true + torch.randint(1, c, (n, words), generator=g)) % c
    teacher = torch.full((n, words, c), 0.1 / (c - 1))
    teacher.scatter_(-1, torch.where(corrupt[:, None], wrong, true).unsqueeze(-1), 0.9)
    return feats, teacher, torch.ones(n, words, dtype=torch.bool), corrupt, g


POLICY_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _train_rikd(seed: int, *, warmup: int = 50, steps: int = 300, batch: int = 32,
                reward: str = "consecutive", probe=None, **selector_kwargs):
    """RIKD Algorithm 2 on the toy task with a linear student (RikdStep's order of calls:
    warm-up KD on all, then act -> KD on the kept sub-batch -> delayed reward -> learn).
    ``probe(step, keep_prob, corrupt, selector)`` after every reinforced step: ``keep_prob()``
    gives every toy sentence's keep probability under the current policy and student (it
    changes nothing)."""
    from xner_ray.methods.rikd.policy import DelayedReward

    torch.manual_seed(seed)
    feats, teacher, mask, corrupt, g = _corrupted_task(seed)
    student = nn.Linear(feats.shape[-1], len(POLICY_LABELS))
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    sel = RLSelector.build(POLICY_LABELS, feats.shape[-1], seed=seed, **selector_kwargs)
    rew = DelayedReward(reward)
    for step in range(warmup + steps):
        idx = torch.randint(0, len(feats), (batch,), generator=g)
        x, t, m = feats[idx], teacher[idx], mask[idx]
        logits = student(x)
        if step < warmup:
            loss = kd_mse_loss(logits, t, m, torch.ones(batch))
            opt.zero_grad(), loss.backward(), opt.step()
            rew.start(loss.item())
            continue
        keep, _, cached = sel.act(StateInputs.from_student(logits.detach(), x, t, m))
        if not keep.any():
            sel.learn(cached, None)
        else:
            loss = subbatch_kd_loss(logits, t, m, keep)
            opt.zero_grad(), loss.backward(), opt.step()
            after = None
            if rew.needs_after:
                with torch.no_grad():
                    after = subbatch_kd_loss(student(x), t, m, keep).item()
            r = rew(loss.item(), after)
            sel.skip(cached) if r is None else sel.learn(cached, r)
        if probe is not None:  # also after a step that kept nothing
            probe(step - warmup + 1, lambda: _keep_prob(sel, student, feats, teacher, mask),
                  corrupt.numpy(), sel)
    return _keep_prob(sel, student, feats, teacher, mask), corrupt.numpy(), sel


def _keep_prob(sel, student, feats, teacher, mask) -> np.ndarray:
    with torch.no_grad():
        return sel.keep_prob(StateInputs.from_student(student(feats), feats, teacher,
                                                      mask)).numpy()


def test_policy_separates_corrupted_from_clean_pseudo_labels():
    """30% of the sentences carry confident wrong pseudo-labels. After 50 warm-up and 300
    reinforced steps at the paper's SGD lr 0.01, the keep probability ranks clean above
    corrupted (AUC >= 0.8) and keeps clean ones measurably more often. The policy before the
    baseline/normalisation/standardisation (commit bda254a, same-batch reward) stayed at
    p = 0.5000 +- 1e-3 on this task: AUC 0.38-0.69 over 4 seeds and a gap of 0.000."""
    p, corrupt, sel = _train_rikd(0)
    clean = ~corrupt
    assert 0.2 < corrupt.mean() < 0.4
    assert _auc(p, clean) >= 0.8
    assert p[clean].mean() - p[corrupt].mean() >= 0.04
    assert len(sel.history) == 300 and {"advantage", "reward"} <= set(sel.history[-1])
    assert abs(sel.rewards.baseline) < 1.0  # the running mean of r, raw units


def test_reward_normalizer_baseline_and_scale():
    from xner_ray.methods.rikd.policy import RewardNormalizer

    norm = RewardNormalizer(momentum=0.5, clip=5.0)
    assert norm(1e-4) == 1.0              # first reward: only its sign
    assert norm.baseline == pytest.approx(1e-4)
    # second: (r - b) / sigma with b = 1e-4, sigma = |1e-4| (the first deviation from 0)
    assert norm(3e-4) == pytest.approx(2.0, rel=1e-3)
    # scale-free: the same rewards times 1e4 give the same advantages
    big, small = RewardNormalizer(), RewardNormalizer()
    rs = np.random.default_rng(0).normal(1e-4, 3e-4, 50)
    np.testing.assert_allclose([big(r * 1e4) for r in rs], [small(r) for r in rs], rtol=1e-3)
    assert RewardNormalizer(clip=2.0)(-5.0) == -1.0 and norm(1e6) == 5.0   # clipped


def test_running_norm_standardises_states():
    from xner_ray.methods.rikd.policy import RunningNorm

    norm = RunningNorm(3, momentum=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        norm.update(torch.randn(64, 3, generator=g) * torch.tensor([1e-3, 1.0, 30.0])
                    + torch.tensor([5.0, 0.0, -2.0]))
    z = norm(torch.randn(4000, 3, generator=g) * torch.tensor([1e-3, 1.0, 30.0])
             + torch.tensor([5.0, 0.0, -2.0]))
    assert z.mean(0).abs().max() < 0.15 and (z.std(0) - 1).abs().max() < 0.15
    assert not any(b.requires_grad for b in norm.buffers())


def test_delayed_reward_readings():
    from xner_ray.methods.rikd.policy import DelayedReward

    cons = DelayedReward()
    assert cons.mode == "consecutive" and not cons.needs_after
    assert cons(0.5) is None                      # no cached loss yet
    cons.start(0.4)                               # Eq. 3: the last warm-up step's loss
    assert cons(0.3) == pytest.approx(0.1) and cons(0.35) == pytest.approx(-0.05)
    same = DelayedReward("same_batch")
    assert same.needs_after and same(0.5, 0.3) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="needs the loss after"):
        same(0.5)
    with pytest.raises(ValueError, match="reward must be one of"):
        DelayedReward("sum")


def test_literal_update_is_still_available():
    """normalize=False, standardize=False: Eq. 4 with r itself on raw states (the paper's
    literal update), as test_single_update_matches_hand_computation checks by hand."""
    sel = RLSelector(nn.Identity(), Policy(2), normalize=False, standardize=False)
    assert sel.norm is None and sel.rewards is None and sel.advantage(1e-4) == 1e-4


def test_table8_ablation_zeroes_the_dropped_features_only():
    """RIKD Table 8: a dropped feature reads 0 in every state, the others are unchanged."""
    torch.manual_seed(0)
    full = StateEncoder(LABELS, hidden_size=4)
    torch.manual_seed(0)
    no_agree = StateEncoder(LABELS, hidden_size=4, drop=("f_agree", "f_semantic"))
    x = hand_batch()
    a, b = full(x), no_agree(x)
    assert torch.all(b[:, 2] == 0) and torch.all(b[:, 3:-1] == 0)
    assert torch.equal(a[:, :2], b[:, :2]) and torch.equal(a[:, -1], b[:, -1])
    with pytest.raises(ValueError, match=r"unknown state features \['f_conff'\]"):
        StateEncoder(LABELS, hidden_size=4, drop=("f_conff",))


def test_table7_rules_keep_each_batchs_top_share():
    """RIKD Table 7's baselines keep the top scores of a batch (at least one; ties go to the
    earlier instance), as many per batch as make the kept share over the batches the target:
    the paper matches RIKD's average discard ratio, which rounding each batch alone misses
    (21.3% of 16 rounds to 3 every time: 18.75% kept)."""
    from xner_ray.methods.rikd.step import ShareCarry, top_k

    score = torch.tensor([0.2, 0.9, 0.5, 0.9, 0.1])
    assert top_k(score, 3).tolist() == [False, True, True, True, False]
    assert top_k(score, 1).tolist() == [False, True, False, False, False]  # tie: earlier
    assert top_k(score, 0).sum() == 1 and top_k(score, 9).all()
    for share, n in ((1 - 0.7870, 16), (0.612, 16), (0.5, 7), (0.02, 16)):
        kept = ShareCarry(share)
        ks = [kept(n) for _ in range(1000)]
        assert all(1 <= k <= n for k in ks)
        assert abs(sum(ks) / (1000 * n) - max(share, 1 / n)) < 1 / 1000 + 1e-9, (share, n)
    assert len({ShareCarry(0.213)(16) for _ in range(3)}) == 1  # deterministic


def test_keep_target_holds_the_keep_rate_and_still_separates():
    """``keep_target`` (opt-in, not in the paper): the offset on every logit holds the share kept
    near the target while REINFORCE still ranks clean above corrupted; the offset is saved with
    the policy and the actions' log-probabilities use the offset they were sampled with."""
    p, corrupt, sel = _train_rikd(0, steps=1000, keep_target=0.7)
    recent = [h["discard_ratio"] for h in sel.history[-300:]]
    assert abs(sum(recent) / len(recent) - 0.3) < 0.07
    assert _auc(p, ~corrupt) >= 0.8
    assert p[~corrupt].mean() - p[corrupt].mean() >= 0.2
    assert float(sel.state_dict()["keep_bias"]) == float(sel.keep_bias) != 0.0
    with pytest.raises(ValueError, match="keep_target"):
        RLSelector.build(POLICY_LABELS, 16, keep_target=1.0)


def test_keep_bias_moves_by_dual_ascent_after_each_act():
    sel = RLSelector.build(POLICY_LABELS, 16, seed=0, keep_target=0.8, keep_rate_lr=0.5)
    feats, teacher, mask, _, _ = _corrupted_task(0, n=8)
    inputs = StateInputs.from_student(torch.zeros(8, 6, len(POLICY_LABELS)), feats, teacher, mask)
    _, p, cached = sel.act(inputs)  # a fresh policy: p = 0.5 everywhere
    assert torch.allclose(p, torch.full_like(p, 0.5)) and cached.bias == 0.0
    assert float(sel.keep_bias) == pytest.approx(0.5 * (0.8 - 0.5))
    _, p2, cached2 = sel.act(inputs)
    assert cached2.bias == pytest.approx(0.15) and torch.all(p2 > 0.5)
    plain = RLSelector.build(POLICY_LABELS, 16, seed=0)
    plain.act(inputs)
    assert float(plain.keep_bias) == 0.0  # no target: the paper's policy, no offset
