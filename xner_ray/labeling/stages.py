"""Labeling stages: plain callables that map a batch to a batch and know nothing of Ray.

``SubwordStage`` (CPU) turns words into sub-word ids; ``TeacherStage`` loads one or more teacher
models once in ``__init__`` and turns sub-word ids into per-word soft labels, BIO-valid Viterbi
tags and the RIKD scores. Both take a ``pyarrow.Table`` or a dict of columns and return a
``pyarrow.Table`` -- soft labels stay plain ``list<list<float32>>`` Arrow lists (never a Ray
tensor extension type, which DuckDB cannot read). Each can be tried on a literal dict.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

Batch = Union[pa.Table, Mapping[str, Any]]


def _column(batch: Batch, name: str) -> list:
    if isinstance(batch, pa.Table):
        return batch.column(name).to_pylist()
    col = batch[name]
    return [list(v) if isinstance(v, np.ndarray) else v for v in col]


def _table(batch: Batch) -> pa.Table:
    if isinstance(batch, pa.Table):
        return batch
    return pa.table({k: (v.tolist() if isinstance(v, np.ndarray) and v.dtype == object else v)
                     for k, v in batch.items()})


def nested_probs(probs: list, n_labels: int) -> pa.Array:
    """Ragged [T_i, L] arrays -> one ``list<list<float32>>`` Arrow array, built from a single
    flat buffer and offsets (no per-word Python lists on the hot path)."""
    lengths = np.fromiter((len(p) for p in probs), dtype=np.int64, count=len(probs))
    flat = (np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, n_labels) for p in probs])
            if len(probs) else np.zeros((0, n_labels), dtype=np.float32))
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, flat.size + 1, n_labels, dtype=np.int32)),
        pa.array(flat.ravel()))
    outer_offsets = np.zeros(len(probs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=outer_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


COMBINE = ("mean", "best_confidence")  # TSL Eq. 6 weighted mean | AdvPicker 4.1 seed ensemble


PROBS_DTYPES = ("float32", "float16")


def flat_list(column) -> tuple[np.ndarray, np.ndarray]:
    """A ``list<int>`` Arrow column -> (flat int64 values, int64 offsets), no Python lists."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(arr, pa.ChunkedArray):  # zero chunks
        arr = pa.array([], pa.list_(pa.int32()))
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False).astype(np.int64)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]


def nested_flat(flat: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """[sum T, L] rows + words per sentence -> ``list<list<float>>`` (the dtype of ``flat``:
    float32 or float16), from one buffer and two offset arrays."""
    n_labels = flat.shape[1]
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, flat.size + 1, n_labels, dtype=np.int32)),
        pa.array(np.ascontiguousarray(flat).ravel()))
    outer = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=outer[1:])
    return pa.ListArray.from_arrays(pa.array(outer), inner)


def tag_lists(tag_ids: np.ndarray, lengths: np.ndarray, labels: Sequence[str]) -> pa.Array:
    """Tag indices + words per sentence -> ``list<string>`` with one Arrow ``take``."""
    strings = pa.array(list(labels), pa.string()).take(pa.array(tag_ids.astype(np.int32)))
    outer = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=outer[1:])
    return pa.ListArray.from_arrays(pa.array(outer), strings)


class SubwordStage:
    """Sub-word ids of whole sentences (never truncated) and each word's first sub-word position.

    A sentence longer than the model's limit keeps all its sub-words here; ``TeacherStage``
    labels it in overlapping windows. ``n_truncated`` counts words without any sub-word (a
    tokenizer that maps a word to nothing; such words get ``O``); nothing is cut any more.
    ``max_length`` is kept for the call signature: the window size is ``TeacherStage``'s.
    """

    def __init__(self, tokenizer_path: str, max_length: int = 512):
        from xner_ray.models.classifier import max_tokens, shared_tokenizer

        # a long sentence is windowed later, not an error: subword_ids does not warn about it
        self.tokenizer = shared_tokenizer(tokenizer_path)
        self.max_length = max_tokens(self.tokenizer, max_length)

    def __call__(self, batch: Batch) -> pa.Table:
        from xner_ray.models.classifier import subword_ids

        ids, firsts, n_cut = subword_ids(self.tokenizer, _column(batch, "tokens"))
        table = _table(batch)
        return (table.append_column("input_ids", pa.array(ids, pa.list_(pa.int32())))
                .append_column("word_pos", pa.array(firsts, pa.list_(pa.int32())))
                .append_column("n_truncated", pa.array(n_cut, pa.int32())))


class TeacherStage:
    """Soft labels from one teacher or a weighted ensemble, plus tags and scores.

    Several teachers (multi-source, or an ensemble) are combined as a weighted average of their
    distributions, p = sum_k alpha_k p_k (TSL Eq. 6); weights default to uniform (TSL Eq. 7).
    With ``student`` given, ``agreement`` is RIKD Eq. 6 between the combined teacher and it.

    AdvPicker: ``combine="best_confidence"`` keeps, per sentence, the one teacher's soft labels
    with the highest summed label confidence instead of averaging (seed ensemble, AdvPicker
    4.1). ``lang_scorers`` are TLADV folders (encoder + ``discriminator.safetensors``); each
    gives P(source | x), the mean over the sentence's sub-words of its discriminator's sigmoid
    (Eq. 5; over a windowed sentence, the windows' means weighted by their sub-words), and
    l_score = 1 - |P - 0.5| (Eq. 6). ``lang_scores`` holds every scorer's l_score (for set
    selectors; not stored) and ``lang_score`` the stored one: the chosen teacher's when every
    teacher is a scorer and ``combine="best_confidence"`` (its score travels with its soft
    labels), else the highest over the scorers. A scorer that is also a teacher reuses that
    teacher's forward pass. Without scorers both columns are null.

    How a block is run: sentences over the sub-word limit (the model's positions, or
    ``max_length`` when smaller) are cut into overlapping windows (``overlap`` sub-words shared,
    default a quarter of a window) and stitched back, every word read from the window where it
    is most central; ``n_windows`` says how many each sentence took. All pieces of the block are
    sorted by length and grouped so that each forward holds at most ``max_tokens`` padded
    sub-words (default ``batch_size * 128``, at least 32k on CUDA), padded to a multiple of
    ``pad_multiple``; inputs are built from the flat Arrow buffers in one go (pinned memory on
    CUDA). On the device: first-sub-word gather, softmax, the teachers' mix, BIO Viterbi and the
    scores (:mod:`xner_ray.labeling.decode`); one device-to-host copy per block. On CUDA the
    weights are bf16 with SDPA attention; ``compile=True`` adds ``torch.compile``.
    ``probs_dtype="float16"`` returns ``list<list<float16>>`` soft labels (tags and scores are
    computed before the cast, in float64).
    """

    def __init__(self, teachers: Sequence[str], *, weights: Optional[Sequence[float]] = None,
                 student: Optional[str] = None, batch_size: int = 32,
                 device: Optional[str] = None, threads: Optional[int] = None,
                 teacher_id: Optional[str] = None, combine: str = "mean",
                 lang_scorers: Optional[Sequence[str]] = None,
                 max_length: Optional[int] = None, overlap: Optional[int] = None,
                 max_tokens: Optional[int] = None, pad_multiple: int = 8,
                 probs_dtype: str = "float32", compile: bool = False,
                 bf16: Optional[bool] = None):
        import torch

        from xner_ray.labeling.decode import LabelSet
        from xner_ray.models.classifier import inference_model

        if not teachers:
            raise ValueError("TeacherStage needs at least one teacher model")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        if combine == "best_confidence" and weights is not None:
            raise ValueError("teacher weights apply to combine='mean' only")
        if probs_dtype not in PROBS_DTYPES:
            raise ValueError(f"probs_dtype must be one of {PROBS_DTYPES}, got {probs_dtype!r}")
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._load = dict(device=self.device, bf16=bf16, compile=compile)
        self.models = [inference_model(t, **self._load) for t in teachers]
        self.labels = [self.models[0].config.id2label[i]
                       for i in range(self.models[0].config.num_labels)]
        for t, m in zip(teachers, self.models):
            got = [m.config.id2label[i] for i in range(m.config.num_labels)]
            if got != self.labels:
                raise ValueError(f"teacher {t} has labels {got}, expected {self.labels}")
        w = np.ones(len(teachers)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(teachers),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(teachers)} non-negative numbers, got {weights}")
        self.weights = w / w.sum()
        self.student = inference_model(student, **self._load) if student else None
        self.batch_size = batch_size
        cfg = self.models[0].config
        self.pad_id = cfg.pad_token_id or 0
        self.o_index = self.labels.index("O")
        self.teacher_id = teacher_id or "+".join(str(t) for t in teachers)
        self.combine = combine
        self.probs_dtype = probs_dtype
        self.label_set = LabelSet(self.labels, self.device)
        self._windows(str(teachers[0]), max_length, overlap)
        on_cuda = self.device.type == "cuda"
        self.max_tokens = int(max_tokens or (max(batch_size * 128, 32768) if on_cuda
                                             else batch_size * 128))
        self.pad_multiple = pad_multiple
        # BERT-style absolute positions: padding must not run past the position table
        self.max_width = (None if "roberta" in str(getattr(cfg, "model_type", ""))
                          else int(getattr(cfg, "max_position_embeddings", 0) or 0) or None)
        self._load_scorers([str(t) for t in teachers], [str(s) for s in lang_scorers or []])

    def _windows(self, tokenizer_path: str, max_length: Optional[int],
                 overlap: Optional[int]) -> None:
        """The sub-word limit per forward and the special tokens around a sentence."""
        from xner_ray.models.classifier import position_limit, shared_tokenizer, special_counts

        try:
            tok = shared_tokenizer(tokenizer_path)
            self.prefix, self.suffix = special_counts(tok)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{tokenizer_path}: no usable tokenizer to find the special tokens "
                             f"around a sentence ({exc})") from exc
        self.limit = position_limit(self.models[0].config, tok)
        if max_length:
            self.limit = min(self.limit, int(max_length))
        size = self.limit - self.prefix - self.suffix
        self.overlap = int(overlap) if overlap is not None else size // 4
        if not 0 <= self.overlap < size:
            raise ValueError(f"overlap must be in [0, {size}) for windows of {size} sub-words")

    def _load_scorers(self, teachers: list[str], scorers: list[str]) -> None:
        """(teacher index or own model, discriminator) per scorer (AdvPicker Eq. 5)."""
        from xner_ray.models.classifier import inference_model
        from xner_ray.models.discriminator import load_discriminator

        self.scorers = []
        for s in scorers:
            model = teachers.index(s) if s in teachers else inference_model(s, **self._load)
            disc = load_discriminator(s).to(self.device).eval()
            enc = self.models[model] if isinstance(model, int) else model
            if disc.input_dim != enc.config.hidden_size:
                raise ValueError(f"{s}: discriminator input {disc.input_dim} != encoder hidden "
                                 f"size {enc.config.hidden_size}")
            self.scorers.append((model, disc))
        self.chosen_score = (self.combine == "best_confidence" and len(scorers) == len(teachers)
                             and all(isinstance(m, int) and m == k
                                     for k, (m, _) in enumerate(self.scorers)))

    def _stored_lang_score(self, lang: np.ndarray, chosen) -> np.ndarray:
        if self.chosen_score:
            return lang[chosen, np.arange(lang.shape[1])]
        return lang.max(axis=0)

    def _host_tensor(self, arr: np.ndarray):
        import torch

        t = torch.from_numpy(arr)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def plan(self, ids_flat: np.ndarray, ids_off: np.ndarray, pos_flat: np.ndarray,
             pos_off: np.ndarray):
        """(pieces, forward batches) of a block: each batch is (piece indices, input ids and
        attention mask [rows, width] int64, gather [3, n] int64 = (row, column, word) of every
        word read from it), all numpy."""
        from xner_ray.labeling.windows import padded_width, plan_pieces, token_batches

        pieces = plan_pieces(ids_off, pos_flat, pos_off, limit=self.limit, prefix=self.prefix,
                             suffix=self.suffix, overlap=self.overlap)
        lengths = pieces.lengths
        batches = token_batches(lengths, self.max_tokens, self.pad_multiple, self.max_width)
        piece_batch = np.empty(len(lengths), dtype=np.int64)
        piece_row = np.empty(len(lengths), dtype=np.int64)
        for b, idx in enumerate(batches):
            piece_batch[idx] = b
            piece_row[idx] = np.arange(len(idx))
        word_idx = np.flatnonzero(pieces.word_piece >= 0)
        word_batch = piece_batch[pieces.word_piece[word_idx]]
        by_batch = np.argsort(word_batch, kind="stable")
        cuts = np.searchsorted(word_batch[by_batch], np.arange(len(batches) + 1))
        out = []
        for b, idx in enumerate(batches):
            lens = lengths[idx]
            width = int(padded_width(lens.max(), self.pad_multiple, self.max_width))
            rows = np.repeat(np.arange(len(idx)), lens)
            cols = np.arange(len(rows)) - np.repeat(np.cumsum(lens) - lens, lens)
            ids = np.full((len(idx), width), self.pad_id, dtype=np.int64)
            ids[rows, cols] = ids_flat[pieces.src[_ranges(pieces.offsets[idx], lens)]]
            mask = np.zeros((len(idx), width), dtype=np.int64)
            mask[rows, cols] = 1
            sel = word_idx[by_batch[cuts[b]:cuts[b + 1]]]
            gather = np.stack([piece_row[pieces.word_piece[sel]], pieces.word_col[sel], sel])
            out.append((idx, ids, mask, gather))
        return pieces, out

    def _run(self, ids_flat: np.ndarray, ids_off: np.ndarray, pos_flat: np.ndarray,
             pos_off: np.ndarray) -> dict:
        """Forward every piece of the block: per-word probabilities of every model (and the
        student, last) as one [models, N, L] float32 tensor on the device, P(source) per
        scorer and sentence, and the window plan."""
        import torch

        n_sent, n_words = len(ids_off) - 1, len(pos_flat)
        pieces, batches = self.plan(ids_flat, ids_off, pos_flat, pos_off)
        models = list(self.models) + ([self.student] if self.student is not None else [])
        out = torch.zeros((len(models), n_words, len(self.labels)), dtype=torch.float32,
                          device=self.device)
        out[:, :, self.o_index] = 1.0  # a word without any sub-word: certain O
        want = {m for m, _ in self.scorers if isinstance(m, int)}
        lang = {k: torch.zeros((len(self.scorers), n_sent), dtype=torch.float64,
                               device=self.device) for k in ("one", "sum", "cnt")}
        for idx, ids, mask, gather in batches:
            input_ids, attn, g = (self._host_tensor(ids), self._host_tensor(mask),
                                  self._host_tensor(gather))
            with torch.inference_mode():
                hiddens = {}
                for k, model in enumerate(models):
                    res = model(input_ids=input_ids, attention_mask=attn,
                                output_hidden_states=k in want)
                    read_words(out[k], res.logits, g)
                    if k in want:
                        hiddens[k] = res.hidden_states[-1]
                for j, (model, _) in enumerate(self.scorers):
                    h = hiddens[model] if isinstance(model, int) else model.base_model(
                        input_ids=input_ids, attention_mask=attn).last_hidden_state
                    self._score_lang(j, h, attn, pieces, idx, lang)
        p_source = None
        if self.scorers:
            single = torch.as_tensor(pieces.n_windows == 1, device=self.device)
            p_source = torch.where(single, lang["one"], lang["sum"] / lang["cnt"].clamp(min=1))
        return {"probs": out, "pieces": pieces, "lang": p_source, "n_batches": len(batches)}

    def _score_lang(self, j: int, hidden, attn, pieces, idx, lang) -> None:
        """Scorer ``j`` on one forward batch: P(source) per piece (Eq. 5), kept as is for a
        sentence of one piece and averaged over a windowed sentence's pieces, each weighted by
        its sub-word count."""
        import torch

        from xner_ray.models.discriminator import sentence_source_prob

        disc = self.scorers[j][1]
        sent = torch.as_tensor(pieces.sentence[idx], device=self.device)
        p = sentence_source_prob(disc(hidden.float()), attn).to(torch.float64)
        cnt = attn.sum(dim=1).to(torch.float64)
        lang["one"][j].index_copy_(0, sent, p)  # right for sentences of one piece
        lang["sum"][j].index_add_(0, sent, p * cnt)
        lang["cnt"][j].index_add_(0, sent, cnt)

    def __call__(self, batch: Batch) -> pa.Table:


        table = _table(batch)
        ids_flat, ids_off = flat_list(table.column("input_ids"))
        pos_flat, pos_off = flat_list(table.column("word_pos"))
        run = self._run(ids_flat, ids_off, pos_flat, pos_off)
        return self.finish(table, run["probs"], np.diff(pos_off), run["pieces"].n_windows,
                           run["lang"])

    def finish(self, table: pa.Table, probs, lengths: np.ndarray, n_windows: np.ndarray,
               p_source=None) -> pa.Table:
        """The output table from the per-word probabilities of every model (and the student,
        last) as one [models, N, L] tensor on the device: mix, Viterbi, scores on the device,
        one copy to the host, Arrow columns from flat buffers."""
        import torch

        from xner_ray.labeling import decode
        from xner_ray.scores import batch_lang_score

        n_sent = table.num_rows
        per_model = list(probs.unbind(0))
        student = per_model.pop() if self.student is not None else None
        seg = decode.segment_ids(lengths, self.device)
        mixed, chosen = decode.mix(per_model, self.weights, self.combine, seg, n_sent)
        tags = decode.viterbi_packed(decode.log(mixed), lengths, self.label_set)
        sc = decode.scores(mixed, tags, lengths, self.label_set, student=student, seg=seg)
        half = self.probs_dtype == "float16"
        host = _to_host([mixed.to(torch.float16 if half else torch.float32),
                         tags.to(torch.uint8 if len(self.labels) < 256 else torch.int32),
                         torch.stack([sc["confidence"], sc["f_conf"], sc["agreement"]]
                                     ).to(torch.float32),
                         sc["n_entities"].to(torch.int32),
                         chosen if chosen is not None else torch.zeros(0, dtype=torch.long,
                                                                      device=self.device),
                         p_source if p_source is not None else
                         torch.zeros(0, dtype=torch.float64, device=self.device)])
        probs, tag_ids, floats, n_ent, chosen_h, lang_p = host
        if np.isnan(floats[0][lengths > 0]).any():
            raise ValueError("a teacher produced NaN probabilities")
        if self.scorers:
            lang = batch_lang_score(np.clip(lang_p, 0.0, 1.0))
            lang_one = self._stored_lang_score(lang, chosen_h if self.combine ==
                                               "best_confidence" else None)
        else:
            lang, lang_one = None, np.full(n_sent, np.nan)
        agreement = floats[2]
        table = table.drop_columns([c for c in ("input_ids", "word_pos") if c in
                                    table.column_names])
        cols = {
            "teacher": pa.array([self.teacher_id] * n_sent, pa.string()),
            "tags": tag_lists(tag_ids, lengths, self.labels),
            "probs": nested_flat(probs, lengths),
            "confidence": pa.array(floats[0]),
            "f_conf": pa.array(floats[1]),
            "n_entities": pa.array(n_ent),
            "length": pa.array(lengths.astype(np.int32)),
            "agreement": pa.array(agreement, mask=np.isnan(agreement) if self.student is None
                                  else None),
            "lang_score": pa.array(lang_one.astype(np.float32), mask=np.isnan(lang_one)),
            "lang_scores": pa.array(list(lang.T.astype(np.float32)) if lang is not None
                                    else [None] * n_sent, pa.list_(pa.float32())),
            "n_windows": pa.array(np.asarray(n_windows, dtype=np.int32)),
        }
        for name, arr in cols.items():
            table = table.append_column(name, arr)
        return table


def read_words(out, logits, gather) -> None:
    """``out[word] = softmax(logits[row, column])`` for the words of one forward batch, on the
    device (``gather`` = (row, column, word) as a [3, n] tensor)."""
    import torch

    flat = logits.reshape(-1, logits.shape[-1])
    rows = flat.index_select(0, gather[0] * logits.shape[1] + gather[1]).float()
    if rows.device.type == "cpu":
        # over the labels as dim 0 of a [labels, words] copy: torch's CPU softmax over a short
        # last dimension (9 labels) is ~20x slower than over a long one
        out.index_copy_(0, gather[2], torch.softmax(rows.T.contiguous(), dim=0).T)
    else:
        out.index_copy_(0, gather[2], torch.softmax(rows, dim=-1))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    from xner_ray.labeling.windows import multi_arange

    return multi_arange(starts, lengths)


def _to_host(tensors: list) -> list[np.ndarray]:
    """Tensors on the device -> numpy arrays with one device-to-host copy (into pinned memory on
    CUDA): their bytes are packed into one buffer first."""
    import torch

    if not tensors or tensors[0].device.type != "cuda":
        return [t.detach().cpu().numpy() for t in tensors]
    flat = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    packed = torch.cat(flat)
    host = torch.empty(packed.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(packed, non_blocking=True)
    torch.cuda.current_stream(packed.device).synchronize()
    raw = host.numpy()
    out, at = [], 0
    for t, f in zip(tensors, flat):
        n = f.numel()
        dtype = torch.empty(0, dtype=t.dtype).numpy().dtype
        out.append(raw[at:at + n].view(dtype).reshape(t.shape))
        at += n
    return out
