"""Long sentences are labeled in overlapping windows and stitched: nothing is cut."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xner_ray.labeling.windows import multi_arange, token_batches, window_starts

torch.set_num_threads(1)


def test_plans():
    assert multi_arange(np.array([5, 0, 9]), np.array([2, 0, 3])).tolist() == [5, 6, 9, 10, 11]
    assert window_starts(10, 20, 5).tolist() == [0]
    st = window_starts(100, 30, 10)
    assert st[0] == 0 and st[-1] == 70 and (np.diff(st) <= 20).all()
    lengths = np.random.default_rng(0).integers(3, 120, size=300)
    batches = token_batches(lengths, 1024, 8)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(300))
    for b in batches:
        width = -(-lengths[b].max() // 8) * 8
        assert len(b) == 1 or len(b) * width <= 1024


def _label(model_dir, words, **kw):
    from xner_ray.labeling.stages import SubwordStage, TeacherStage

    stage = TeacherStage([str(model_dir)], device="cpu", **kw)
    batch = SubwordStage(str(model_dir), kw.get("max_length") or 512)(
        {"sent_id": [str(i) for i in range(len(words))], "tokens": words})
    return stage, stage(batch), batch


def test_a_737_word_sentence_keeps_every_word(tiny_teacher_dir):
    from xner_ray.demo import sample_path
    from xner_ray.labels import is_valid_iob2

    vocab = [line.split("\t")[0].split(":", 1)[-1]
             for line in sample_path("de.dev.txt").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    long = (vocab * 3)[:737]
    short = [vocab[:5], vocab[10:30]]
    stage, out, batch = _label(tiny_teacher_dir, [long] + short, max_length=64)
    assert stage.limit == 64
    n_win = out.column("n_windows").to_pylist()
    assert n_win[0] > 737 // 62 and n_win[1:] == [1, 1]
    probs = np.array(out.column("probs")[0].as_py())
    tags = out.column("tags")[0].as_py()
    assert probs.shape == (737, len(stage.labels)) and len(tags) == 737 and is_valid_iob2(tags)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs.max(1) < 1 - 1e-6).all()  # no word forced to a certain O
    # each word's row is its window's own forward at its position
    pieces, batches = stage.plan(*_flat(batch))
    ids = np.array(batch.column("input_ids")[0].as_py())
    for w in (0, 100, 368, 736):
        p = pieces.word_piece[w]
        src = pieces.src[pieces.offsets[p]:pieces.offsets[p + 1]]
        assert len(src) <= 64
        with torch.inference_mode():
            lg = stage.models[0](input_ids=torch.as_tensor(ids[src - pieces.src[0]])[None]).logits
        np.testing.assert_allclose(torch.softmax(lg[0, pieces.word_col[w]], -1).numpy(),
                                   probs[w], atol=1e-5)
        col = pieces.word_col[w]
        assert 0 < col < len(src) - 1
    # sentences that fit are labeled as without windows (the model's own limit, 128)
    _, alone, _ = _label(tiny_teacher_dir, short)
    for a, b in zip(out.column("probs").to_pylist()[1:], alone.column("probs").to_pylist()):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)
    assert out.column("tags").to_pylist()[1:] == alone.column("tags").to_pylist()


def _flat(batch):
    from xner_ray.labeling.stages import flat_list

    ids, ids_off = flat_list(batch.column("input_ids"))
    pos, pos_off = flat_list(batch.column("word_pos"))
    return ids, ids_off, pos, pos_off


def test_windowed_words_read_from_their_most_central_window(tiny_teacher_dir):
    from xner_ray.labeling.windows import plan_pieces

    pos = np.arange(1, 201)  # 200 one-piece words after [CLS]
    pieces = plan_pieces(np.array([0, 202]), pos, np.array([0, 200]), limit=50, prefix=1,
                         suffix=1, overlap=12)
    size = 48
    st = window_starts(200, size, 12)
    assert pieces.n_windows.tolist() == [len(st)]
    for w in range(200):
        k = pieces.word_piece[w]
        q = w  # content coordinate
        margins = [min(q - s, s + size - 1 - q) if s <= q < s + size else -1 for s in st]
        assert k == int(np.argmax(margins))
        assert pieces.word_col[w] == q - st[k] + 1
    with pytest.raises(ValueError, match="no room"):
        plan_pieces(np.array([0, 5]), pos[:3], np.array([0, 3]), limit=2, prefix=1, suffix=1,
                    overlap=0)
