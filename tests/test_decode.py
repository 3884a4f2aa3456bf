"""The vectorised post-processing (xner_ray.labeling.decode) against the per-sentence code it
replaced: identical Viterbi tags, identical scores, on hand-made, random and real dev data."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from xner_ray import scores as old_scores
from xner_ray.labeling import decode
from xner_ray.labels import is_valid_iob2, viterbi_batch

torch.set_num_threads(1)
LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _both(log_probs, labels=LABELS):
    """Tags of the compiled CPU decoder and of the dense torch one (the accelerator's)."""
    return ([list(t) for t in decode.viterbi_tags(log_probs, labels)],
            [list(t) for t in decode.viterbi_tags(log_probs, labels, dense=True)])


def _log(p):
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(p, dtype=np.float64))


def test_hand_made_cases_equal_the_numpy_decoder():
    u = np.full((4, 9), 1 / 9)  # all ties: first index everywhere
    only_i = np.zeros((3, 9))
    only_i[:, 2] = 1.0  # only I-LOC has mass: B-LOC must open it
    bad_argmax = np.full((3, 9), 0.01)
    bad_argmax[0, 0], bad_argmax[1, 4], bad_argmax[2, 3] = 0.9, 0.9, 0.9  # O I-MISC B-MISC
    peaked = np.full((5, 9), 0.01)
    for t, lab in enumerate([1, 2, 0, 7, 8]):
        peaked[t, lab] = 0.92
    one_hot_o = np.eye(9)[[0, 0]]
    cases = [u, only_i, bad_argmax, peaked, one_hot_o, np.zeros((0, 9)), u[:1], only_i[:1]]
    want = viterbi_batch([_log(c) for c in cases], LABELS)
    got, dense = _both([_log(c) for c in cases])
    assert got == want and dense == want
    assert want[1] == ["B-LOC", "I-LOC", "I-LOC"] and want[3] == ["B-LOC", "I-LOC", "O",
                                                                  "B-PER", "I-PER"]
    # one at a time, too (a block of one sentence, and a block of only empty sentences)
    for c in cases:
        assert _both([_log(c)]) == ([viterbi_batch([_log(c)], LABELS)[0]],) * 2
    assert decode.viterbi_tags([np.zeros((0, 9))] * 3, LABELS) == [[]] * 3
    assert decode.viterbi_tags([], LABELS) == []


@pytest.mark.parametrize("seed", range(4))
def test_random_cases_equal_the_numpy_decoder(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        lengths = rng.integers(0, 40, size=int(rng.integers(1, 50)))
        if rng.random() < 0.2:
            lengths[0] = int(rng.integers(100, 300))  # one long sentence in the block
        arrays = []
        for n in lengths:
            p = rng.dirichlet(np.full(9, rng.choice([0.05, 0.3, 1.0, 10.0])), size=int(n))
            if rng.random() < 0.3:
                p = np.round(p, 1)  # exact ties and exact zeros
            if rng.random() < 0.3:
                p[:, [2, 4, 6, 8]] *= 1e-3  # mostly valid argmax (a trained teacher's case)
            arrays.append(_log(p))
        want = viterbi_batch(arrays, LABELS)
        got, dense = _both(arrays)
        assert got == want and dense == want


def test_other_label_orders_equal_the_numpy_decoder():
    """I-X before its B-X, O in the middle, a type without I-: the compiled decoder's
    tie-breaking (lower index of the pair) still matches ``argmax``'s first index."""
    rng = np.random.default_rng(11)
    for labels in (["B-LOC", "I-LOC", "O", "I-PER", "B-PER", "B-ORG", "I-ORG"],
                   ["I-MISC", "B-MISC", "O", "B-X"]):
        for _ in range(40):
            lengths = rng.integers(0, 30, size=int(rng.integers(1, 30)))
            arrays = [_log(np.round(rng.dirichlet(np.full(len(labels), 0.5), size=int(n)), 1))
                      for n in lengths]
            want = viterbi_batch(arrays, labels)
            got, dense = _both(arrays, labels)
            assert got == want and dense == want


def _random_block(rng, n_sent=40):
    lengths = rng.integers(0, 30, size=n_sent)
    flat = rng.dirichlet(np.ones(9), size=int(lengths.sum()))
    return lengths, flat


def test_scores_equal_the_old_functions():
    rng = np.random.default_rng(7)
    ls = decode.LabelSet(LABELS)
    for _ in range(20):
        lengths, flat = _random_block(rng)
        student = rng.dirichlet(np.ones(9), size=len(flat))
        split = lambda a: np.split(a, np.cumsum(lengths)[:-1])  # noqa: E731
        tags = viterbi_batch([_log(p) for p in split(flat)], LABELS)
        tag_ids = torch.as_tensor(np.array([LABELS.index(t) for s in tags for t in s],
                                           dtype=np.int64))
        new = decode.scores(torch.as_tensor(flat), tag_ids, lengths, ls,
                            student=torch.as_tensor(student))
        old = old_scores.score_batch(split(flat), tags, LABELS)
        for k in ("confidence", "f_conf", "n_entities", "length"):
            np.testing.assert_array_equal(new[k].numpy().astype(old[k].dtype), old[k], err_msg=k)
        # float64 sums of 9 squares may differ in the last bit (numpy's reduction order);
        # the stored float32 values are equal
        old_agree = old_scores.batch_agreement(split(flat), split(student))
        np.testing.assert_allclose(new["agreement"].numpy(), old_agree, rtol=1e-14)
        np.testing.assert_array_equal(new["agreement"].numpy().astype(np.float32),
                                      old_agree.astype(np.float32))


def test_mix_equals_the_old_loops():
    rng = np.random.default_rng(3)
    lengths, _ = _random_block(rng)
    per_model = [rng.dirichlet(np.ones(9), size=int(lengths.sum())).astype(np.float32)
                 for _ in range(3)]
    seg = decode.segment_ids(lengths, "cpu")
    split = lambda a: np.split(a.astype(np.float64), np.cumsum(lengths)[:-1])  # noqa: E731
    w = np.array([0.5, 0.3, 0.2])
    mixed, _ = decode.mix([torch.as_tensor(p) for p in per_model], w, "mean", seg, len(lengths))
    want = [sum(wk * split(pm)[i] for wk, pm in zip(w, per_model)) for i in range(len(lengths))]
    np.testing.assert_array_equal(mixed.numpy(), np.concatenate(want))
    best, chosen = decode.mix([torch.as_tensor(p) for p in per_model], w, "best_confidence", seg,
                              len(lengths))
    np.testing.assert_array_equal(chosen.numpy(),
                                  old_scores.most_confident([split(p) for p in per_model]))
    np.testing.assert_array_equal(best.numpy(), np.concatenate(
        [split(per_model[k])[i] for i, k in enumerate(chosen.numpy())]))


@functools.lru_cache(maxsize=4)
def _dev_probs(shared_data, tiny_teacher_dir, lang, float16=False):
    """The tiny teacher's stage output on a whole real dev file (words only)."""
    from xner_ray.io.conll import read_conll
    from xner_ray.labeling.stages import SubwordStage, TeacherStage

    sents = list(read_conll(str(shared_data / f"conll2002-{lang}" / "dev.txt")))
    words = [s.tokens for s in sents]
    sub = SubwordStage(str(tiny_teacher_dir))
    stage = TeacherStage([str(tiny_teacher_dir)], device="cpu",
                         probs_dtype="float16" if float16 else "float32")
    outs = [stage(sub({"sent_id": [str(i) for i in range(k, k + len(words[k:k + 256]))],
                       "tokens": words[k:k + 256]})) for k in range(0, len(words), 256)]
    return stage, outs


@pytest.mark.parametrize("lang", ["es", "nl"])
def test_real_dev_files_decode_and_score_as_before(shared_data, tiny_teacher_dir, lang):
    """Old decoder and scores vs new on the same probabilities of a whole dev file, both from
    the tiny teacher's own (near-uniform) soft labels and from peaked, teacher-like ones."""
    from xner_ray.io.conll import read_conll

    stage, outs = _dev_probs(shared_data, tiny_teacher_dir, lang)
    gold = [t for s in read_conll(str(shared_data / f"conll2002-{lang}" / "dev.txt"))
            for t in s.tags]
    rng = np.random.default_rng(0)
    for out in outs:
        probs = [np.array(p, dtype=np.float64) for p in out.column("probs").to_pylist()]
        assert out.column("tags").to_pylist() == viterbi_batch([_log(p) for p in probs],
                                                               stage.labels)
    n_checked = 0
    for out in outs:
        lengths = np.array([len(t) for t in out.column("tags").to_pylist()])
        flat = np.concatenate([np.array(p, dtype=np.float64)
                               for p in out.column("probs").to_pylist()])
        # peaked: the teacher's probs pushed towards the gold tag, a few towards a wrong one
        g = np.array([stage.labels.index(t) if t in stage.labels else 0
                      for t in gold[n_checked:n_checked + len(flat)]])
        g = np.where(rng.random(len(g)) < 0.05, rng.integers(0, len(stage.labels), len(g)), g)
        peaked = flat * 0.2
        peaked[np.arange(len(g)), g] += 0.8
        n_checked += len(flat)
        for probs in (flat, peaked):
            split = np.split(probs, np.cumsum(lengths)[:-1])
            want = viterbi_batch([_log(p) for p in split], stage.labels)
            table = out.drop_columns([c for c in out.column_names if c != "sent_id"])
            res = stage.finish(table, torch.as_tensor(probs)[None].float(), lengths,
                               np.ones(len(lengths)))
            assert res.column("tags").to_pylist() == want
            assert [list(t) for t in decode.viterbi_tags([_log(p) for p in split], stage.labels,
                                                         dense=True)] == want
            sc = old_scores.score_batch([p.astype(np.float32).astype(np.float64)
                                         for p in split], want, stage.labels)
            for k in ("confidence", "f_conf", "n_entities", "length"):
                np.testing.assert_array_equal(res.column(k).to_numpy(), sc[k], err_msg=k)
    assert n_checked == len(gold)


def _path_score(lp, tags, labels):
    return float(lp[np.arange(len(tags)), [labels.index(t) for t in tags]].sum())


@pytest.mark.parametrize("lang", ["es", "nl"])
def test_float16_probs_within_1e3_and_same_tags(shared_data, tiny_teacher_dir, lang):
    """float16 soft labels: within 1e-3 of float32; the stored tags are the same (decoded in
    float64 before the cast); decoding the float16 rows again gives the same tags for peaked,
    teacher-like rows. The tiny random teacher's rows are near-uniform (mean top probability
    ~0.16): there a few near-tied paths swap (~4% of sentences), and only near-tied ones --
    so a reader must take the stored tags, not decode stored float16 rows again."""
    import pyarrow as pa

    from xner_ray.io.conll import read_conll

    _, full = _dev_probs(shared_data, tiny_teacher_dir, lang)
    stage, half = _dev_probs(shared_data, tiny_teacher_dir, lang, float16=True)
    gold = [s.tags for s in read_conll(str(shared_data / f"conll2002-{lang}" / "dev.txt"))]
    k = 0
    for a, b in zip(full, half):
        assert b.schema.field("probs").type == pa.list_(pa.list_(pa.float16()))
        p32 = [np.array(p, dtype=np.float64) for p in a.column("probs").to_pylist()]
        p16 = [np.array(p, dtype=np.float64) for p in b.column("probs").to_pylist()]
        assert max(np.abs(x - y).max() for x, y in zip(p32, p16) if len(x)) <= 1e-3
        assert b.column("tags").to_pylist() == a.column("tags").to_pylist()
        again = viterbi_batch([_log(p) for p in p16], stage.labels)
        for x32, x16, t32, t16 in zip(p32, p16, a.column("tags").to_pylist(), again):
            if t32 != t16:  # a swap among paths closer than float16 rounding can tell apart
                l32, l16 = _log(x32), _log(x16)
                bound = 2 * np.abs(l32 - l16).max(axis=1).sum()
                assert abs(_path_score(l32, t32, stage.labels)
                           - _path_score(l32, t16, stage.labels)) <= bound
        assert sum(x != y for x, y in zip(again, a.column("tags").to_pylist())) <= 0.1 * len(p32)
        # peaked rows (the teacher's pushed 80% towards gold)
        peaked = []
        for x in p32:
            g = np.array([stage.labels.index(t) if t in stage.labels else 0 for t in gold[k]])
            y = 0.2 * x
            y[np.arange(len(g)), g] += 0.8
            peaked.append(y)
            k += 1
        assert (viterbi_batch([_log(p.astype(np.float16).astype(np.float64)) for p in peaked],
                              stage.labels)
                == viterbi_batch([_log(p.astype(np.float32).astype(np.float64)) for p in peaked],
                                 stage.labels))
        assert all(is_valid_iob2(t) for t in b.column("tags").to_pylist())
