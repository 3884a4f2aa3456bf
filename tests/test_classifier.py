"""Token classifier: sub-word alignment, freezing, truncation, save/load, overfitting a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xner_ray.models.classifier import (IGNORE_INDEX, encode_words, length_buckets,
                                        load_token_classifier, load_tokenizer, predict_log_probs)

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
L2I = {l: i for i, l in enumerate(LABELS)}


def test_labels_only_on_first_subword(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    words = [["Wiesbaden", "is", "nice"], ["Amsterdam"]]
    enc = encode_words(tok, words, [["B-LOC", "O", "O"], ["B-LOC"]], L2I)
    for i, sent in enumerate(words):
        pieces = tok.convert_ids_to_tokens(enc.input_ids[i])
        labelled = [(pieces[j], int(enc.labels[i, j])) for j in range(len(pieces))
                    if enc.labels[i, j] != IGNORE_INDEX]
        # exactly one label per word, on the piece that starts the word
        assert [p.lstrip("#") for p, _ in labelled] == [tok.tokenize(w)[0] for w in sent]
        assert len(labelled) == len(sent)
        assert enc.first_subword[i].tolist() == [j for j in range(len(pieces))
                                                 if enc.labels[i, j] != IGNORE_INDEX]
    assert int(enc.labels[0, 1]) == L2I["B-LOC"]
    assert (enc.labels[1, enc.attention_mask[1] == 0] == IGNORE_INDEX).all()


def test_truncated_words_are_marked_and_predicted_O(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_token_classifier(str(tiny_model_dir), LABELS)
    words = [["Berlin"] * 40]
    enc = encode_words(tok, words, max_length=12)
    cut = enc.first_subword[0] < 0
    per_word = len(tok.tokenize("Berlin"))
    kept = -(-10 // per_word)  # 12 positions minus [CLS]/[SEP]; a word's first piece counts
    assert cut.sum() == 40 - kept and not cut[:kept].any()
    lp = predict_log_probs(model, tok, words, max_length=12)[0]
    assert lp.shape == (40, len(LABELS))
    assert np.all(lp[cut, 0] == 0.0) and np.all(np.isneginf(lp[cut, 1:]))


def test_freeze_and_truncate(tiny_model_dir):
    model = load_token_classifier(str(tiny_model_dir), LABELS, layers=1, freeze_embeddings=True)
    assert model.config.num_hidden_layers == 1 and len(model.base_model.encoder.layer) == 1
    assert not any(p.requires_grad for p in model.base_model.embeddings.parameters())
    assert all(p.requires_grad for p in model.base_model.encoder.layer[0].parameters())
    model = load_token_classifier(str(tiny_model_dir), LABELS, freeze_layers=1)
    assert not any(p.requires_grad for p in model.base_model.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in model.base_model.encoder.layer[1].parameters())
    with pytest.raises(ValueError, match="layers must be in 1..2"):
        load_token_classifier(str(tiny_model_dir), LABELS, layers=3)
    with pytest.raises(ValueError, match="no NER head"):
        load_token_classifier(str(tiny_model_dir))


def test_length_buckets_group_similar_lengths():
    batches = length_buckets([5, 1, 9, 2, 8, 1], 2)
    assert batches == [[1, 5], [3, 0], [4, 2]]


def test_overfit_then_save_and_reload(tiny_model_dir, tmp_path):
    """A real training signal through the alignment: the model learns exact tags of 3 sentences,
    and the saved checkpoint (safetensors, label2id in config) predicts the same after reload."""
    from xner_ray.evaluate import predict_tags

    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_token_classifier(str(tiny_model_dir), LABELS)
    words = [["Angela", "Merkel", "visited", "Paris", "."], ["Wiesbaden", "is", "big"],
             ["He", "met", "Mark", "Rutte", "in", "Den", "Haag"]]
    tags = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-LOC", "O", "O"],
            ["O", "O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    enc = encode_words(tok, words, tags, L2I)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                     labels=enc.labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert predict_tags(model, tok, words) == tags
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    again = load_token_classifier(str(tmp_path))
    assert again.config.label2id == L2I
    assert predict_tags(again, load_tokenizer(str(tmp_path)), words) == tags
