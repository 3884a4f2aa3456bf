"""Plans of a labeling block's forward passes: sliding windows over long sentences and
token-budget batches, all in numpy over flat arrays (no per-token Python).

A sentence's sub-words are ``prefix + content + suffix`` (e.g. ``[CLS] ... [SEP]``). When they
exceed the model's limit, the content is cut into overlapping windows of ``limit - prefix -
suffix`` sub-words, ``overlap`` of them shared by neighbours (the Hugging Face
token-classification pipeline's ``stride``), the last window aligned to the end; each window
gets the prefix and suffix again. Every word takes its soft labels from the window in which its
first sub-word is most central (largest distance to the window's nearer edge; the earlier window
on ties), so each word keeps context on both sides where there is any. Nothing is cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pieces:
    """The model inputs of one block: one piece per window (one per sentence that fits)."""

    sentence: np.ndarray  # [P] sentence of each piece
    src: np.ndarray  # flat indices into the block's flat input ids, piece after piece
    offsets: np.ndarray  # [P + 1] of ``src``
    word_piece: np.ndarray  # [N words] piece each word is read from (-1: word has no sub-word)
    word_col: np.ndarray  # [N words] its first sub-word's position inside that piece
    n_windows: np.ndarray  # [S] pieces per sentence

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def multi_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every (s, l), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_start = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=seg_start[1:])
    return np.repeat(np.asarray(starts, dtype=np.int64) - seg_start, lengths) + np.arange(total)


def window_starts(content: int, size: int, overlap: int) -> np.ndarray:
    """Content offsets of the windows over ``content`` sub-words (one window when it fits)."""
    if content <= size:
        return np.zeros(1, dtype=np.int64)
    step = max(1, size - overlap)
    starts = list(range(0, content - size, step))
    starts.append(content - size)
    return np.asarray(starts, dtype=np.int64)


def plan_pieces(ids_offsets: np.ndarray, word_pos: np.ndarray, pos_offsets: np.ndarray, *,
                limit: int, prefix: int, suffix: int, overlap: int) -> Pieces:
    """Pieces of a block: sentence s has sub-words ``ids[ids_offsets[s]:ids_offsets[s+1]]`` and
    words whose first sub-words are ``word_pos[pos_offsets[s]:pos_offsets[s+1]]`` (-1: none)."""
    ids_offsets = np.asarray(ids_offsets, dtype=np.int64)
    pos_offsets = np.asarray(pos_offsets, dtype=np.int64)
    word_pos = np.asarray(word_pos, dtype=np.int64)
    n_sent = len(ids_offsets) - 1
    n_ids = np.diff(ids_offsets)
    size = limit - prefix - suffix
    if size < 1:
        raise ValueError(f"a sub-word limit of {limit} leaves no room beside {prefix} + {suffix} "
                         "special tokens")
    n_words = np.diff(pos_offsets)
    word_sent = np.repeat(np.arange(n_sent), n_words)
    long = np.flatnonzero(n_ids > limit)
    # the common case: one piece per sentence, the sentence's own sub-words
    n_windows = np.ones(n_sent, dtype=np.int64)
    starts_of = {}
    for s in long:
        st = window_starts(int(n_ids[s]) - prefix - suffix, size, overlap)
        starts_of[int(s)] = st
        n_windows[s] = len(st)
    piece_first = np.zeros(n_sent + 1, dtype=np.int64)
    np.cumsum(n_windows, out=piece_first[1:])
    n_pieces = int(piece_first[-1])
    sentence = np.repeat(np.arange(n_sent), n_windows)
    # each piece = three segments of the flat ids: prefix, content window, suffix
    seg_start = np.zeros((n_pieces, 3), dtype=np.int64)
    seg_len = np.zeros((n_pieces, 3), dtype=np.int64)
    short = np.ones(n_sent, dtype=bool)
    short[long] = False
    p_short = piece_first[:-1][short]
    seg_start[p_short, 0] = ids_offsets[:-1][short]
    seg_len[p_short, 0] = n_ids[short]
    word_piece = np.where(word_pos >= 0, piece_first[:-1][word_sent], -1)
    word_col = word_pos.copy()
    for s, st in starts_of.items():
        p = piece_first[s] + np.arange(len(st))
        base = ids_offsets[s]
        seg_start[p, 0], seg_len[p, 0] = base, prefix
        seg_start[p, 1], seg_len[p, 1] = base + prefix + st, size
        seg_start[p, 2], seg_len[p, 2] = ids_offsets[s + 1] - suffix, suffix
        w = slice(pos_offsets[s], pos_offsets[s + 1])
        q = word_pos[w] - prefix  # content coordinate of each word's first sub-word
        inside = (q[:, None] >= st[None]) & (q[:, None] < st[None] + size)
        margin = np.minimum(q[:, None] - st[None], st[None] + size - 1 - q[:, None])
        best = np.where(inside, margin, -1).argmax(axis=1)
        has = word_pos[w] >= 0
        word_piece[w] = np.where(has, p[best], -1)
        word_col[w] = np.where(has, q - st[best] + prefix, -1)
    lengths = seg_len.sum(axis=1)
    offsets = np.zeros(n_pieces + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    src = multi_arange(seg_start.ravel(), seg_len.ravel())
    return Pieces(sentence, src, offsets, word_piece, word_col, n_windows)


def token_batches(lengths: np.ndarray, max_tokens: int, multiple: int = 8,
                  max_width: int | None = None) -> list[np.ndarray]:
    """Piece indices grouped into forward batches: sorted by length over the whole block, each
    batch's padded size (rows x longest piece rounded up to ``multiple``) within
    ``max_tokens`` (a piece longer than that goes alone)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    width = padded_width(lengths[order], multiple, max_width)
    batches, start = [], 0
    for i in range(1, len(order) + 1):  # sorted ascending: a batch's width is its last piece's
        if i == len(order) or (i + 1 - start) * width[i] > max_tokens:
            batches.append(order[start:i])
            start = i
    return batches


def padded_width(lengths, multiple: int = 8, max_width: int | None = None):
    w = -(-np.asarray(lengths, dtype=np.int64) // multiple) * multiple
    return np.minimum(w, max(max_width, 1)) if max_width else w
