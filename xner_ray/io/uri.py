"""Files and folders named by a local path or a pyarrow URI (``s3://``, ``gs://``, ``abfs://``).

Outputs a worker or a later job reads -- model folders, summaries, ``results.json`` -- go through
these helpers, so a job's ``out`` can live on object storage as well as on a local or NFS disk.
Local writes are atomic (temporary file, fsync, rename); object stores take a single put, which
is atomic by itself.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Union

PathOrUri = Union[str, "os.PathLike[str]"]


def is_uri(path: PathOrUri) -> bool:
    """``scheme://...`` other than ``file://`` (which is a local path)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def local_path(path: PathOrUri) -> str:
    s = str(path)
    return s[len("file://"):] if s.startswith("file://") else s


def join(base: PathOrUri, *parts: str) -> str:
    """``base/part/...`` -- posix joins on a URI, ``os.path.join`` on a local path."""
    if is_uri(base):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return os.path.join(local_path(base), *parts)


def filesystem(path: PathOrUri):
    """(pyarrow filesystem, path inside it)."""
    import pyarrow.fs as pafs

    if is_uri(path):
        return pafs.FileSystem.from_uri(str(path))
    return pafs.LocalFileSystem(), os.path.abspath(local_path(path))


def exists(path: PathOrUri) -> bool:
    if not is_uri(path):
        return os.path.exists(local_path(path))
    import pyarrow.fs as pafs

    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_text(path: PathOrUri) -> str:
    if not is_uri(path):
        return Path(local_path(path)).read_text(encoding="utf-8")
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def write_text(path: PathOrUri, text: str) -> None:
    """Write a whole file atomically: readers see the old content or the new, never a part."""
    data = text.encode("utf-8")
    if is_uri(path):
        fs, p = filesystem(path)
        fs.create_dir(posixpath.dirname(p), recursive=True)
        with fs.open_output_stream(p) as out:  # one put
            out.write(data)
        return
    target = Path(local_path(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def list_files(path: PathOrUri) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every file under a folder, sorted; [] if none."""
    import pyarrow.fs as pafs

    fs, root = filesystem(path)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    out = []
    for info in infos:
        if info.type == pafs.FileType.File:
            rel = info.path[len(root.rstrip("/")) + 1:]
            out.append((rel, int(info.size or 0), int(info.mtime_ns or 0)))
    return sorted(out)


def upload_dir(local: PathOrUri, dest: PathOrUri) -> None:
    """Copy a local folder's files to ``dest`` (a URI or a local path), overwriting; the
    folder's other files at ``dest`` are left alone."""
    if not is_uri(dest):
        shutil.copytree(local, local_path(dest), dirs_exist_ok=True)
        return
    import pyarrow.fs as pafs

    fs, root = filesystem(dest)
    fs.create_dir(root, recursive=True)
    pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def download_dir(src: PathOrUri, local: PathOrUri) -> None:
    """Copy every file under ``src`` into the local folder ``local``."""
    import pyarrow.fs as pafs

    fs, root = filesystem(src)
    Path(local).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(root, str(local), source_filesystem=fs,
                    destination_filesystem=pafs.LocalFileSystem())
