"""Model folders given as URIs (``s3://bucket/run/de/round1``), fetched once per node.

Every loader goes through :func:`xner_ray.models.classifier.resolve`, which sends a URI here:
the folder is downloaded into ``<cache>/remote-models/<name>-<fingerprint>`` on the node that
asks, where the fingerprint hashes the URI and every file's name, size and modification time.
The first process on a node downloads under a file lock into a temporary sibling and renames it
into place; the others (teacher actors, Ray Train workers on the same node) wait on the lock and
find it complete. A folder rewritten at the same URI has a new fingerprint, so a stale copy is
never reused. Old copies are not evicted: ``XNER_CACHE_DIR`` says where they go.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import time
from pathlib import Path

from xner_ray.io import uri as U
from xner_ray.models.builtin import _file_lock, cache_root

logger = logging.getLogger(__name__)

COMPLETE = ".xner_fetched.json"  # written last: its presence means the copy is complete


def fingerprint(files: list[tuple[str, int, int]], source: str) -> str:
    return hashlib.sha256(json.dumps([source, files]).encode()).hexdigest()[:16]


def fetch_model(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local copy of the model folder at URI ``source`` on this node (downloading it the
    first time). A URI with no files under it is a ``FileNotFoundError`` naming it."""
    files = U.list_files(source)
    if not any(rel == "config.json" for rel, _, _ in files):
        raise FileNotFoundError(f"model folder {source}: no config.json there "
                                f"({len(files)} file(s) under it)")
    name = posixpath.basename(source.rstrip("/")) or "model"
    root = cache_root(cache_dir) / "remote-models"
    final = root / f"{name}-{fingerprint(files, source)}"
    if (final / COMPLETE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{final.name}.lock"):
        if (final / COMPLETE).is_file():
            return final
        for stale in root.glob(f".{final.name}.tmp-*"):  # left by a killed download
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        tmp = root / f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        try:
            t0 = time.perf_counter()
            U.download_dir(source, tmp)
            got = sorted((rel, size) for rel, size, _ in U.list_files(tmp))
            want = sorted((rel, size) for rel, size, _ in files)
            if got != want:  # the folder changed while we copied it
                raise RuntimeError(f"model folder {source} changed during the download; retry")
            (tmp / COMPLETE).write_text(json.dumps({"source": source, "files": files}))
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("model %s fetched into %s (%.1f MB, %.1f s)", source, final,
                    sum(s for _, s, _ in files) / 1e6, time.perf_counter() - t0)
    return final
