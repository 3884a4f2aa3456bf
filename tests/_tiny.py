"""Builds a tiny real Hugging Face encoder for tests (no download)."""

from __future__ import annotations

from pathlib import Path


def _sample_words() -> list[str]:
    from xner_ray.demo import sample_path

    words = []
    for name in ("en.train.txt", "en.dev.txt", "de.dev.txt", "nl.dev.txt"):
        for line in sample_path(name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                words.append(line.split("\t")[0].split(":", 1)[-1])
    return words


def make_tiny_model(out: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials)
    words = _sample_words()
    tok.train_from_iterator((" ".join(words[i:i + 50]) for i in range(0, len(words), 50)), trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=128)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden,
                     max_position_embeddings=128, pad_token_id=0)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out
