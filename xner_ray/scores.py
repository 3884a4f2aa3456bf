"""Per-sentence scores of pseudo-labels (numpy only, no torch), single and batched.

A sentence's soft labels are ``probs``: a [T, L] array (T words, L labels in ``labels`` order);
its hard tags are the T predicted IOB2 tags (argmax or Viterbi). Batched versions take ragged
lists of such arrays and work on one concatenated [sum T, L] array plus segment offsets, so a
batch costs a few numpy calls, not a Python loop over words.

Scores (RIKD = Liang et al. 2021, "Reinforced Iterative Knowledge Distillation for Cross-Lingual
Named Entity Recognition", section 3.3.1 and section 4.5.3):

- ``confidence``  RIKD Eq. 5: conf(x) = 1/L sum_i max_c p_c(x_i), the mean top probability.
- ``f_conf``      RIKD 3.3.1: f_conf = -1/L sum_i log p(y^_i | x), the teacher's inference loss
                  on its own predicted tags (lower = more confident).
- ``f_entities``  RIKD 3.3.1: sum_i [y^_i != O], the number of non-O *words*.
- ``n_entities``  the number of entity *spans* (strict IOB2: one per ``B-`` tag), stored in the
                  ``pseudo_labels.n_entities`` column; RIKD's f_entities is kept separately.
- ``agreement``   RIKD Eq. 6: agree(x) = -1/L sum_i MSE(p_teacher(x_i), p_student(x_i)), with
                  MSE over the L labels (torch's MSELoss 'mean'); 0 = identical, more negative =
                  less agreement. It compares *distributions*, as in the paper.
- ``tag_agreement`` the share of words whose hard tags agree: a cheaper proxy when only the
                  student's tags are at hand (not in the paper).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

OUTSIDE = "O"
EPS = 1e-12  # floor for log p: a zero probability on the predicted tag gives a large, finite f_conf


def _segments(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ragged [T_i, ...] arrays; return (flat, lengths)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    width = next((a.shape[1] for a in arrays if a.ndim == 2), 0)
    arrays = [a.reshape(0, width) if a.size == 0 else a for a in arrays]  # [] -> [0, L]
    if not arrays:
        return np.zeros((0, width), dtype=np.float64), lengths
    return np.concatenate(arrays), lengths


def _segment_mean(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean of ``values`` per segment; NaN for empty segments (a 0-word sentence has no mean)."""
    seg = np.repeat(np.arange(len(lengths)), lengths)
    sums = np.bincount(seg, weights=values, minlength=len(lengths))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, sums / np.maximum(lengths, 1), np.nan)


def batch_confidence(probs: Sequence[np.ndarray]) -> np.ndarray:
    """RIKD Eq. 5 for each sentence: mean over words of max_c p_c(x_i)."""
    flat, lengths = _segments(probs)
    top = flat.max(axis=1) if flat.size else np.zeros(0)
    return _segment_mean(top, lengths)


def confidence(probs: np.ndarray) -> float:
    """RIKD Eq. 5: conf(x) = 1/L sum_i max_c p_c(x_i) for one [T, L] array."""
    return float(batch_confidence([probs])[0])


def tag_ids(tags: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Tag strings -> indices into ``labels``; raises ``ValueError`` on a tag not in the set."""
    tags = np.asarray(tags, dtype=object)
    if not tags.size:
        return np.zeros(0, dtype=np.int64)
    uniq, inv = np.unique(tags.astype(str), return_inverse=True)
    index = {lab: i for i, lab in enumerate(labels)}
    missing = [t for t in uniq if t not in index]
    if missing:
        raise ValueError(f"tags {missing} are not in the label set {list(labels)}")
    return np.array([index[t] for t in uniq], dtype=np.int64)[inv.reshape(-1)]


def batch_f_conf(probs: Sequence[np.ndarray], tags: Sequence[Sequence[str]],
                 labels: Sequence[str]) -> np.ndarray:
    """RIKD 3.3.1 f_conf = -1/L sum_i log p(y^_i | x) for each sentence."""
    flat, lengths = _segments(probs)
    flat_tags = [t for sent in tags for t in sent]
    if len(flat_tags) != len(flat):
        raise ValueError(f"{len(flat_tags)} tags for {len(flat)} words of probs")
    ids = tag_ids(flat_tags, labels)
    picked = flat[np.arange(len(flat)), ids] if len(flat) else np.zeros(0)
    return _segment_mean(-np.log(np.maximum(picked, EPS)), lengths)


def f_conf(probs: np.ndarray, tags: Sequence[str], labels: Sequence[str]) -> float:
    """RIKD 3.3.1 f_conf for one sentence."""
    return float(batch_f_conf([probs], [tags], labels)[0])


def batch_f_entities(tags: Sequence[Sequence[str]]) -> np.ndarray:
    """RIKD 3.3.1 f_entities = sum_i [y^_i != O] (non-O words) for each sentence."""
    return np.array([sum(t != OUTSIDE for t in sent) for sent in tags], dtype=np.int64)


def batch_n_entities(tags: Sequence[Sequence[str]]) -> np.ndarray:
    """Entity spans per sentence under strict IOB2 (seqeval mode='strict'): one per ``B-``."""
    return np.array([sum(t.startswith("B-") for t in sent) for sent in tags], dtype=np.int64)


def n_entities(tags: Sequence[str]) -> int:
    return int(batch_n_entities([tags])[0])


def batch_agreement(teacher_probs: Sequence[np.ndarray],
                    student_probs: Sequence[np.ndarray]) -> np.ndarray:
    """RIKD Eq. 6 for each sentence: -1/L sum_i MSE(p_teacher(x_i), p_student(x_i))."""
    t_flat, t_len = _segments(teacher_probs)
    s_flat, s_len = _segments(student_probs)
    if not np.array_equal(t_len, s_len) or t_flat.shape != s_flat.shape:
        raise ValueError(f"teacher and student probs differ in shape: {t_flat.shape} vs "
                         f"{s_flat.shape} (word counts equal: {np.array_equal(t_len, s_len)})")
    mse = ((t_flat - s_flat) ** 2).mean(axis=1) if t_flat.size else np.zeros(0)
    return 0.0 - _segment_mean(mse, t_len)  # "0.0 -" keeps identical inputs at +0.0


def agreement(teacher_probs: np.ndarray, student_probs: np.ndarray) -> float:
    """RIKD Eq. 6 for one sentence (both [T, L] over the same label order)."""
    return float(batch_agreement([teacher_probs], [student_probs])[0])


def tag_agreement(teacher_tags: Sequence[str], student_tags: Sequence[str]) -> float:
    """Share of words with the same hard tag (not RIKD Eq. 6, which compares distributions)."""
    if len(teacher_tags) != len(student_tags):
        raise ValueError(f"{len(teacher_tags)} teacher tags vs {len(student_tags)} student tags")
    if not teacher_tags:
        return float("nan")
    return float(np.mean([a == b for a, b in zip(teacher_tags, student_tags)]))


def batch_lang_score(p_source: np.ndarray) -> np.ndarray:
    """AdvPicker Eq. 6: l_score(x) = 1 - |P(source | x) - 0.5| for each sentence: 1 where the
    language discriminator cannot tell (P = 0.5), 0.5 where it is certain (P = 0 or 1)."""
    p = np.asarray(p_source, dtype=np.float64)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("discriminator probabilities must lie in [0, 1]")
    return 1.0 - np.abs(p - 0.5)


def most_confident(per_model: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """AdvPicker 4.1, seed ensemble: for each sentence, the index of the model whose soft-label
    sequence has the highest *sum* over words of the predicted label's probability
    (sum_i max_c p_c(x_i)); ties go to the first model. ``per_model[k][s]`` is model k's
    [T_s, L] array for sentence s."""
    if not per_model:
        raise ValueError("most_confident needs at least one model")
    n = len(per_model[0])
    if any(len(m) != n for m in per_model):
        raise ValueError(f"models labeled different numbers of sentences: "
                         f"{[len(m) for m in per_model]}")
    sums = np.zeros((len(per_model), n))
    for k, probs in enumerate(per_model):
        flat, lengths = _segments(probs)
        seg = np.repeat(np.arange(n), lengths)
        sums[k] = np.bincount(seg, weights=flat.max(axis=1) if flat.size else None, minlength=n)
    return sums.argmax(axis=0)


def score_batch(probs: Sequence[np.ndarray], tags: Sequence[Sequence[str]],
                labels: Sequence[str]) -> dict[str, np.ndarray]:
    """The score columns of ``pseudo_labels`` for a batch, typed as the store expects."""
    return {
        "confidence": batch_confidence(probs).astype(np.float32),
        "f_conf": batch_f_conf(probs, tags, labels).astype(np.float32),
        "n_entities": batch_n_entities(tags).astype(np.int32),
        "length": np.array([len(t) for t in tags], dtype=np.int32),
    }
