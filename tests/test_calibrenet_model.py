"""CalibreNet's heads and losses (Eq. 5-13) on hand-computed tensors; encoding (Eq. 4, 10),
decoding and the save/load round trip on the tiny real model."""

from __future__ import annotations

import math

import pytest
import torch

from xner_ray.methods.calibrenet.encode import CalibInstance, decode, encode_instances, pair_scores
from xner_ray.methods.calibrenet.model import (
    HeadConfig, joint_loss, masked_log_softmax, pointer_loss, span_candidates, span_logits,
    span_loss, type_logits,
)

torch.set_num_threads(1)
T, F = True, False


def test_pointer_loss_by_hand():
    """p_start over the 3 allowed positions = softmax(0, ln 2, 0) = (1/4, 1/2, 1/4); the huge
    logit at the masked 4th position must not count. p_end uniform 1/3. Eq. 7 with y_start = 1,
    y_end = 0: -1/2 (log 1/2 + log 1/3) = 1/2 log 6."""
    start = torch.tensor([[0.0, math.log(2), 0.0, 100.0]])
    end = torch.zeros(1, 4)
    mask = torch.tensor([[T, T, T, F]])
    got = pointer_loss(start, end, mask, torch.tensor([1]), torch.tensor([0]))
    assert float(got) == pytest.approx(0.5 * math.log(6), abs=1e-6)
    all_masked = masked_log_softmax(torch.zeros(1, 3), torch.tensor([[F, F, F]]))
    assert torch.isfinite(all_masked).all()


def test_span_logits_equal_the_concatenation_of_eq_11():
    head = torch.nn.Linear(4, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        head.bias.fill_(0.5)
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # W . (H_i || H_j) + b: (0,0) 1+3+.5, (0,1) 1+4+.5, (1,0) 2+3+.5, (1,1) 2+4+.5
    assert span_logits(head, h).tolist() == [[[4.5, 5.5], [5.5, 6.5]]]
    torch.manual_seed(0)
    head, h = torch.nn.Linear(6, 1), torch.randn(2, 5, 3)
    explicit = torch.stack([torch.stack([torch.stack([head(torch.cat([h[b, i], h[b, j]]))[0]
                                                      for j in range(5)]) for i in range(5)])
                            for b in range(2)])
    assert torch.allclose(span_logits(head, h), explicit, atol=1e-6)


def test_span_candidates_and_loss_by_hand():
    """Gold (1, 2), predicted (2, 3), position 0 not allowed: starts {1, 2} x ends {2, 3} with
    start <= end = 4 pairs. Logits 0 except ln 3 at the gold pair (p = 3/4): BCE mean =
    (-log 3/4 + 3 log 2) / 4."""
    mask = torch.tensor([[F, T, T, T]])
    cands = span_candidates(mask, torch.tensor([1]), torch.tensor([2]), torch.tensor([2]),
                            torch.tensor([3]))
    assert sorted(map(tuple, cands[0].nonzero().tolist())) == [(1, 2), (1, 3), (2, 2), (2, 3)]
    logits = torch.zeros(1, 4, 4)
    logits[0, 1, 2] = math.log(3)
    got = span_loss(logits, cands, torch.tensor([1]), torch.tensor([2]))
    assert float(got) == pytest.approx((-math.log(0.75) + 3 * math.log(2)) / 4, abs=1e-6)


def test_type_head_reads_the_mean_of_start_and_end_states():
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    h = torch.tensor([[[2.0, 0.0], [9.0, 9.0], [0.0, 4.0]]])
    assert type_logits(head, h, torch.tensor([0]), torch.tensor([2])).tolist() == [[1.0, 2.0]]


def test_joint_loss_weights_of_eq_13():
    cfg = HeadConfig(types=["PER"])
    one, two, three = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    assert float(joint_loss(one, two, three, cfg)) == pytest.approx(0.3 + 0.6 + 1.2)
    assert float(joint_loss(one, two, None, cfg)) == pytest.approx(0.9)


def test_pair_scores_respect_order_and_length():
    """Start argmax at word 2, end argmax at word 0: the best pair must still have start <= end
    and span at most max_words words."""
    start = torch.tensor([[-9.0, 0.0, 1.0, 3.0]])  # position 0 is [CLS], not allowed
    end = torch.tensor([[-9.0, 3.0, 1.0, 0.0]])
    mask = torch.tensor([[F, T, T, T]])
    words = torch.tensor([[-1, 0, 1, 2]])
    score, terms = pair_scores(start, end, None, mask, words, max_words=2)
    assert terms == 2
    allowed = {tuple(x) for x in torch.isfinite(score[0]).nonzero().tolist()}
    assert allowed == {(1, 1), (1, 2), (2, 2), (2, 3), (3, 3)}


@pytest.fixture(scope="module")
def built(tiny_model_dir):
    from xner_ray.methods.calibrenet.checkpoint import build_calibrenet

    torch.manual_seed(0)
    return build_calibrenet(str(tiny_model_dir), ["PER", "LOC"], with_mlm=True)


INSTANCES = [CalibInstance("Angela Merkel visited Paris yesterday".split(), (1, 2), (0, 2, "PER")),
             CalibInstance("He went to Berlin".split(), (2, 4), (3, 4, "LOC"))]


def test_encoding_marks_the_initial_answer_in_the_passage(built):
    model, tok = built
    enc = encode_instances(tok, INSTANCES, model.cfg.types)
    t = enc.tensors
    for r, inst in enumerate(INSTANCES):
        pos = enc.word_pos[r]
        assert t["cand_mask"][r].sum() == len(inst.words)
        assert t["cand_mask"][r, pos].all()
        marked = t["index_ids"][r].nonzero().flatten().tolist()
        # Eq. 10: 1 exactly on the sub-words of the answer's words in the passage
        first, after = pos[inst.answer[0]], pos[inst.answer[1]] if inst.answer[1] < len(pos) \
            else int(t["attention_mask"][r].sum()) - 1
        assert marked == list(range(first, after))
        assert t["start_pos"][r] == pos[inst.gold[0]] and t["end_pos"][r] == pos[inst.gold[1] - 1]
    assert t["type_ids"].tolist() == [model.cfg.types.index("PER"), model.cfg.types.index("LOC")]
    assert enc.valid.all()
    long = CalibInstance(["w"] * 300, (290, 291), (290, 291, "PER"))
    assert not encode_instances(tok, [long], model.cfg.types, max_length=64).valid.any()


def test_loss_backpropagates_into_index_embedding_and_mlm(built):
    model, tok = built
    batch = encode_instances(tok, INSTANCES, model.cfg.types).tensors
    model.train()
    loss, parts = model.loss(batch)
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 5] = batch["input_ids"][:, 5]
    (loss + model.mlm_loss(batch["input_ids"], batch["attention_mask"], labels)).backward()
    assert set(parts) == {"pointer", "cls", "span"} and all(v > 0 for v in parts.values())
    assert model.index_embedding.weight.grad.abs().sum() > 0
    assert model.mlm_head.dense.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_save_load_round_trip(built, tmp_path):
    from xner_ray.methods.calibrenet.checkpoint import load_calibrenet, save_calibrenet

    model, tok = built
    model.eval()
    save_calibrenet(model, tok, tmp_path / "c", note="test")
    loaded, tok2 = load_calibrenet(tmp_path / "c")
    assert loaded.mlm_head is not None and loaded.cfg == model.cfg
    batch = encode_instances(tok2, INSTANCES, loaded.cfg.types).tensors
    with torch.no_grad():
        assert decode(loaded, batch, loaded.cfg.types) == decode(model, batch, model.cfg.types)
        a = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "cand_mask",
                                           "index_ids")})
        b = loaded(**{k: batch[k] for k in ("input_ids", "attention_mask", "cand_mask",
                                            "index_ids")})
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[3], b[3])
    no_mlm, _ = load_calibrenet(tmp_path / "c", with_mlm=False)
    assert no_mlm.mlm_head is None
    with pytest.raises(ValueError, match="not a CalibreNet folder"):
        load_calibrenet(tmp_path)
