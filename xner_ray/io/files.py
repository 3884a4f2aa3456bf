"""Finding input files and streaming their lines, local or remote, plain or compressed.

Every reader goes through :func:`expand_paths` and :func:`iter_lines`, so a path spec means the
same thing everywhere (file, directory, glob, ``s3://``/``gs://``/``file://`` URI) and no reader
ever holds a whole corpus in memory.
"""

from __future__ import annotations

import bz2
import collections
import fnmatch
import glob
import gzip
import io
import lzma
import os
import zlib
from dataclasses import dataclass, field
from typing import IO, Iterator, Optional, Sequence, Union

PathSpec = Union[str, "os.PathLike[str]"]
PathSpecs = Union[PathSpec, Sequence[PathSpec]]

# Compression is chosen by the last extension, as gzip/zstd tools name their outputs.
COMPRESSION_BY_EXT = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd", ".xz": "xz"}
_GLOB_CHARS = frozenset("*?[")
_READ_BUFFER = 1 << 20
_ASCII_SPACE = " \t\r\n\f\v"


@dataclass
class ReadStats:
    """Counters a reader fills in while streaming, for the caller to log or assert on.

    Pass one instance to a reader (``stats=``) and read it after the iterator is exhausted.
    ``bio_repairs`` counts I-X tags turned into B-X (IOB1 input or broken IOB2); they are
    repaired, not rejected, so this is the only place they show up.
    """

    files: int = 0
    lines: int = 0
    sentences: int = 0
    tokens: int = 0
    entities: int = 0  # B- tags after repair
    rejected: int = 0
    bio_repairs: int = 0
    docstarts: int = 0
    empty_tokens_dropped: int = 0
    langs: collections.Counter = field(default_factory=collections.Counter)  # sentences per lang

    def summary(self) -> str:
        return (f"{self.files} files, {self.lines} lines -> {self.sentences} sentences, "
                f"{self.tokens} tokens, {self.entities} entities; {self.rejected} rejected, "
                f"{self.bio_repairs} BIO repairs, {self.empty_tokens_dropped} empty tokens dropped")


def compression_of(path: str) -> Optional[str]:
    """Codec name implied by the file extension (``None`` for plain files)."""
    return COMPRESSION_BY_EXT.get(os.path.splitext(path)[1].lower())


def strip_compression_ext(path: str) -> str:
    """``a/b.jsonl.gz`` -> ``a/b.jsonl``: lets format sniffing look at the real extension."""
    root, ext = os.path.splitext(path)
    return root if ext.lower() in COMPRESSION_BY_EXT else path


def _is_uri(spec: str) -> bool:
    """``file://`` counts as a URI on purpose: it runs the same pyarrow code as s3/gs."""
    return "://" in spec


def _is_hidden(rel_path: str) -> bool:
    return any(part.startswith(".") for part in rel_path.split("/") if part not in ("", "."))


def _expand_local(spec: str) -> list[str]:
    if any(ch in spec for ch in _GLOB_CHARS):
        return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    if not os.path.isdir(spec):
        return [spec] if os.path.isfile(spec) else []
    found = []
    for root, dirs, names in os.walk(spec):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, n) for n in names if not n.startswith("."))
    return sorted(p for p in found if os.path.isfile(p))


def _list_uri_dir(base: str) -> list[str]:
    """Non-hidden files under the directory URI ``base``, as URIs; [] when it is no directory."""
    import pyarrow.fs as pafs

    fs, base_path = pafs.FileSystem.from_uri(base)
    if fs.get_file_info(base_path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(base_path, recursive=True))
    rels = (i.path[len(base_path):].lstrip("/") for i in infos if i.type == pafs.FileType.File)
    return [f"{base.rstrip('/')}/{rel}" for rel in rels if not _is_hidden(rel)]


def _expand_uri(spec: str) -> list[str]:
    """Like :func:`_expand_local` for pyarrow URIs; in a glob, ``*`` may also cross ``/``."""
    import pyarrow.fs as pafs

    glob_at = next((i for i, ch in enumerate(spec) if ch in _GLOB_CHARS), None)
    if glob_at is None:
        fs, path = pafs.FileSystem.from_uri(spec)
        if fs.get_file_info(path).type == pafs.FileType.File:
            return [spec]
        return sorted(_list_uri_dir(spec))
    base = spec[: spec.rfind("/", 0, glob_at)]
    return sorted(u for u in _list_uri_dir(base) if fnmatch.fnmatchcase(u, spec))


def expand_paths(spec: PathSpecs) -> list[str]:
    """Resolve a file, directory (regular files under it, sorted, hidden ones skipped), glob or
    URI -- or a list of those -- into concrete file paths.

    Raises ``FileNotFoundError`` naming the spec when it matches nothing: an empty input set is
    always a mistake (a typo in a glob must not turn into a silently empty dataset).
    """
    if isinstance(spec, (list, tuple)):
        return [path for one in spec for path in expand_paths(one)]
    text = os.fspath(spec)
    paths = _expand_uri(text) if _is_uri(text) else _expand_local(text)
    if not paths:
        raise FileNotFoundError(f"no input files match {text!r}")
    return paths


_STDLIB_CODECS = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}


def open_binary(path: str) -> IO[bytes]:
    """Open ``path`` for buffered binary reading, decompressing by extension. URIs go through
    pyarrow.fs; local zstd through pyarrow's codec (the stdlib has none before Python 3.14)."""
    codec = compression_of(path)
    if _is_uri(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        stream = fs.open_input_stream(inner, compression=codec)
    elif codec is None:
        return open(path, "rb", buffering=_READ_BUFFER)
    elif codec in _STDLIB_CODECS:
        stream = _STDLIB_CODECS[codec](path, "rb")
    else:
        import pyarrow as pa

        stream = pa.CompressedInputStream(pa.OSFile(path, "rb"), codec)
    # A large buffer makes line iteration over (decompressing) streams several times faster.
    return io.BufferedReader(stream, buffer_size=_READ_BUFFER)  # type: ignore[arg-type]


def iter_lines(path: str, *, rstrip: bool = True) -> Iterator[tuple[int, Optional[str], bytes]]:
    """Stream ``(line_number, text, raw)`` for each line of ``path``.

    ``line_number`` is 1-based. ``raw`` is the line's bytes without its line end (``\\n`` or
    ``\\r\\n``). ``text`` is ``raw`` decoded as UTF-8 with trailing ASCII whitespace removed
    (only the line end with ``rstrip=False``: TSV readers need a trailing empty column), or
    ``None`` when the bytes are not valid UTF-8 -- callers reject the line with
    ``raw.decode('utf-8', 'replace')`` rather than guess an encoding. A UTF-8 byte order mark
    at the start of the file is dropped.
    """
    try:
        yield from _iter_lines(path, rstrip)
    except _CODEC_ERRORS as exc:  # a bad shard fails with its path, not deep in a worker
        if compression_of(path) is None:
            raise
        raise ValueError(f"{path}: truncated or corrupt {compression_of(path)} file "
                         f"({type(exc).__name__}: {exc})") from exc


_CODEC_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)  # BadGzipFile is an OSError


def _iter_lines(path: str, rstrip: bool) -> Iterator[tuple[int, Optional[str], bytes]]:
    with open_binary(path) as handle:
        for number, raw in enumerate(handle, 1):
            raw = raw.rstrip(b"\r\n")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None, raw
                continue
            yield number, (text.rstrip(_ASCII_SPACE) if rstrip else text), raw


def count_lines(path: str) -> int:
    """Number of lines :func:`iter_lines` would yield, counted in 1 MiB chunks (no decoding)."""
    count, last = 0, b"\n"
    with open_binary(path) as handle:
        while chunk := handle.read(_READ_BUFFER):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")
