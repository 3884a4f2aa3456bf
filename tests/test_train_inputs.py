"""Training inputs (issue 14 item 5): pre-tokenized batches equal the tokenizer's, length
grouping keeps every row once, step losses are averaged without per-step syncs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from xner_ray.models.classifier import encode_words, load_tokenizer
from xner_ray.train.inputs import (encode_pretokenized, length_grouped, mean_loss,
                                   tokenize_stage)

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
L2I = {l: i for i, l in enumerate(LABELS)}


def _numpy_batch(table: pa.Table) -> dict:
    """The table as the shared loop sees it (Ray Data's numpy format: ragged -> object)."""
    out = {}
    for name in table.column_names:
        col = table.column(name).to_pylist()
        arr = np.empty(len(col), dtype=object)
        arr[:] = [np.asarray(v) if isinstance(v, list) else v for v in col]
        out[name] = arr
    return out


@pytest.fixture(scope="module")
def dev_rows(shared_data):
    from xner_ray.io.conll import read_conll

    sents = list(read_conll(str(shared_data / "conll2002-es" / "dev.txt")))[:120]
    words = [s.tokens for s in sents]
    tags = [s.tags for s in sents]
    # one sentence far past the cap, one empty of entities, and one of a single word
    words += [sents[0].tokens * 40, ["Madrid"]]
    tags += [sents[0].tags * 40, ["B-LOC"]]
    return words, tags


@pytest.mark.parametrize("max_length", [24, 512])
def test_pretokenized_batches_equal_the_tokenizers(tiny_model_dir, dev_rows, max_length):
    words, tags = dev_rows
    tok = load_tokenizer(str(tiny_model_dir))
    table = tokenize_stage(pa.table({"tokens": words}), str(tiny_model_dir))
    batch = _numpy_batch(table)
    for lo in range(0, len(words), 16):
        sl = slice(lo, lo + 16)
        want = encode_words(tok, words[sl], tags[sl], L2I, max_length=max_length)
        part = {k: v[sl] for k, v in batch.items()}
        got = encode_pretokenized(tok, part, tags[sl], L2I, max_length=max_length,
                                  pad_multiple=1)
        assert torch.equal(got.input_ids, want.input_ids)
        assert torch.equal(got.attention_mask, want.attention_mask)
        assert torch.equal(got.labels, want.labels)
        for a, b in zip(got.first_subword, want.first_subword):
            np.testing.assert_array_equal(a, b)
        # padded to a multiple of 8: the same values, then padding
        got8 = encode_pretokenized(tok, part, tags[sl], L2I, max_length=max_length)
        w = want.input_ids.shape[1]
        assert got8.input_ids.shape[1] % 8 == 0 and got8.input_ids.shape[1] - w < 8
        assert torch.equal(got8.input_ids[:, :w], want.input_ids)
        assert int(got8.attention_mask[:, w:].sum()) == 0
    # the long sentence really was cut at the cap (and its later words marked -1)
    cut = encode_pretokenized(tok, {k: v[-2:-1] for k, v in batch.items()},
                              max_length=max_length, pad_multiple=1)
    if max_length == 24:
        assert cut.input_ids.shape[1] == 24 and (cut.first_subword[0] < 0).any()


def test_length_grouped_keeps_every_row_once():
    rng = np.random.default_rng(0)
    n, bs = 203, 16
    lengths = rng.integers(1, 60, size=n)
    ids = np.empty(n, dtype=object)
    ids[:] = [np.arange(k) for k in lengths]
    big = [{"sent_id": np.arange(i, min(i + 75, n)), "input_ids": ids[i:i + 75]}
           for i in range(0, n, 75)]
    out = list(length_grouped(big, bs, np.random.default_rng(1)))
    seen = np.concatenate([b["sent_id"] for b in out])
    assert sorted(seen.tolist()) == list(range(n))
    # whole batches but the last: exactly ceil(n / bs) steps (the 75-row groups are not whole
    # 16-row batches; their left-over rows join the next group)
    assert len(out) == -(-n // bs)
    assert all(len(b["sent_id"]) == bs for b in out[:-1]) and len(out[-1]["sent_id"]) <= bs
    # padding: each batch spans a narrow length range, so far less padding than as read
    pad = lambda bs_: sum(len(b) * max(map(len, b)) - sum(map(len, b))  # noqa: E731
                          for b in bs_)
    as_read = [ids[i:i + bs] for i in range(0, n, bs)]
    assert pad([b["input_ids"] for b in out]) < 0.5 * pad(as_read)
    # not sorted from short to long over the epoch
    firsts = [len(b["input_ids"][0]) for b in out]
    assert firsts != sorted(firsts)


def test_mean_loss_of_tensors_and_floats():
    assert mean_loss([]) == 0.0
    assert mean_loss([1.0, 2.0]) == pytest.approx(1.5)
    assert mean_loss([torch.tensor(1.0), torch.tensor(3.0), 2.0]) == pytest.approx(2.0)


def test_length_grouped_joins_ragged_and_fixed_shape_columns():
    """Ray Data hands a column of equal-length lists as a 2-D array and a ragged one as
    objects; left-over rows of one join the next."""
    fixed = {"input_ids": np.arange(10).reshape(5, 2), "sent_id": np.arange(5)}
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.arange(1), np.arange(3), np.arange(2)]
    out = list(length_grouped([fixed, {"input_ids": ragged, "sent_id": np.arange(5, 8)}], 4))
    assert [len(b["sent_id"]) for b in out] == [4, 4]
    assert sorted(np.concatenate([b["sent_id"] for b in out]).tolist()) == list(range(8))
