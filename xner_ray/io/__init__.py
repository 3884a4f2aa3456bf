"""Readers: CoNLL (labeled or not), raw text, JSONL and parallel text, all streaming.

Every reader takes a path spec (file, directory, glob, ``s3://``/``gs://``/``file://`` URI, or a
list of those; ``.gz``/``.bz2``/``.zst``/``.xz`` are decompressed on the fly), yields rows one at
a time, hands unusable input to a :class:`~xner_ray.records.RejectSink` and fills an optional
:class:`ReadStats`.
"""

from xner_ray.io.conll import read_conll
from xner_ray.io.files import ReadStats, count_lines, expand_paths, iter_lines
from xner_ray.io.parallel import (
    MosesFiles, ParallelLengthError, SentencePair, find_moses, read_moses, read_tsv_pairs,
)
from xner_ray.io.text import detect_format, read_jsonl, read_text, read_unlabeled, word_tokenize

__all__ = [
    "MosesFiles", "ParallelLengthError", "ReadStats", "SentencePair", "count_lines",
    "detect_format", "expand_paths", "find_moses", "iter_lines", "read_conll", "read_jsonl",
    "read_moses", "read_text", "read_tsv_pairs", "read_unlabeled", "word_tokenize",
]
