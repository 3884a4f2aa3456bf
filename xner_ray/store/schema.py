"""Arrow schemas of the store's tables, their docs, and batch -> Arrow conversion.

One place for the row types (STYLE: "row types in one place"). Every field carries its doc in
the field metadata (``b"doc"``), so ``describe(PSEUDO_LABELS)`` and the Parquet files themselves
document the columns.

Partition columns (``run_id``, ``lang``, ``round``; ``run_id`` only for ``runs``) are part of
each table schema -- they are what DuckDB/Polars/pyarrow readers see -- but they live in the
hive path (``run_id=r1/lang=es/round=0``), not inside the Parquet files (:func:`file_schema`).

Label set: ``pseudo_labels.labels`` repeats, per row, the label order of ``probs``. Parquet's
dictionary encoding stores it once per column chunk, so it costs next to nothing, and SQL can
read ``probs[i][list_position(labels, 'B-PER')]`` without reaching for the manifest (which also
records the label set of the round).

Spans (``projections``) are ``{start, end, type}`` with 0-based ``start`` and exclusive ``end``,
the same convention as :func:`xner_ray.labels.tags_to_spans` and the SQL macro ``bio_spans``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1
TZ = "UTC"

PROJECTION_STATUSES = ("ok", "unmapped", "overlap", "inconsistent")
RUN_STATUSES = ("running", "succeeded", "failed")


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


_STR_LIST = pa.list_(pa.string())
SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("type", pa.string())])
SCORED_SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("type", pa.string()),
                         ("score", pa.float32())])

_RUN_ID = _f("run_id", pa.string(), "run that wrote the row (partition column)")
_LANG = _f("lang", pa.string(), "target language code, e.g. 'es' (partition column)")
_ROUND = _f("round", pa.int32(), "distillation round k, 0-based (partition column)")

SENTENCES = pa.schema([
    _f("sent_id", pa.string(), "stable content hash of lang + tokens (records.sentence_id)"),
    _LANG,
    _f("source", pa.string(), "corpus / input path the sentence came from"),
    _f("tokens", _STR_LIST, "words"),
    _f("gold_tags", _STR_LIST, "gold IOB2 tags, only where gold exists (evaluation)", True),
    _f("text", pa.string(), "raw text when read from raw-text input", True),
    _ROUND, _RUN_ID,
])

PSEUDO_LABELS = pa.schema([
    _f("sent_id", pa.string(), "joins sentences.sent_id"),
    _LANG, _ROUND, _RUN_ID,
    _f("teacher", pa.string(), "teacher model id + version, e.g. 'xlmr-base-en@round0'"),
    _f("tags", _STR_LIST, "predicted IOB2 tag per word (e.g. Viterbi-decoded)"),
    _f("probs", pa.list_(pa.list_(pa.float32())),
       "soft labels: per word, a distribution over `labels` (plain lists, no tensor type)", True),
    _f("labels", _STR_LIST, "label set: the order of the inner lists of `probs`"),
    _f("confidence", pa.float32(), "mean over words of the max label probability (RIKD Eq. 5)"),
    _f("f_conf", pa.float32(), "mean -log p(predicted tag) (RIKD 3.3.1 f_conf)"),
    _f("n_entities", pa.int32(), "number of predicted entity spans (strict IOB2: B- tags)"),
    _f("length", pa.int32(), "number of words (RIKD f_length)"),
    _f("agreement", pa.float32(), "-mean MSE teacher vs student distributions (RIKD Eq. 6)",
       True),
    _f("lang_score", pa.float32(), "AdvPicker l_score = 1 - |P_dis - 0.5|", True),
    _f("lang_scores", pa.list_(pa.float32()),
       "every scorer's (TLADV seed's) l_score, in `lang_scorers` order", True),
    _f("n_windows", pa.int32(), "sub-word windows the sentence was labeled in (1 unless it "
       "was longer than the model's limit)", True),
    _f("policy_p", pa.float32(), "RIKD policy keep-probability pi(s)", True),
    _f("selected", pa.bool_(), "kept by the selector for training"),
    _f("selector", pa.string(), "versioned selector id, e.g. 'confidence.v1(threshold=0.9)'"),
    _f("weight", pa.float32(), "training weight (0 for discarded rows)"),
])

DECISIONS = pa.schema([
    _f("sent_id", pa.string(), "joins pseudo_labels.sent_id of the same run/lang/round"),
    _f("policy_p", pa.float32(), "RIKD policy keep-probability pi(s)", True),
    _f("selected", pa.bool_(), "kept for training"),
    _f("selector", pa.string(), "versioned id of what decided"),
    _f("weight", pa.float32(), "training weight (0 for discarded rows)"),
    _f("stage", pa.int32(), "0: decided after labeling (a whole-set selector); 1: decided in "
       "training (RIKD's policy). For one sentence the highest stage wins"),
    _LANG, _ROUND, _RUN_ID,
])

REJECTS = pa.schema([
    _RUN_ID,
    _f("path", pa.string(), "input file"),
    _f("line", pa.int64(), "1-based line in the input file"),
    _f("reason", pa.string(), "one of records.REJECT_REASONS"),
    _f("raw", pa.string(), "the raw input (undecodable bytes backslash-escaped)"),
    _f("detail", pa.string(), "why, in words", True),
    _LANG, _ROUND,
])

RUNS = pa.schema([
    _RUN_ID,
    _f("job", pa.string(), "job name, e.g. 'rikd'"),
    _f("config", pa.string(), "resolved config (JSON)"),
    _f("code_version", pa.string(), "package version (+ VCS revision when known)"),
    _f("started_at", pa.timestamp("us", tz=TZ), "start time (UTC)"),
    _f("ended_at", pa.timestamp("us", tz=TZ), "end time (UTC), null while running", True),
    _f("status", pa.string(), f"one of {RUN_STATUSES}"),
    _f("metrics", pa.string(), "JSON object {round: {metric: value}}"),
    _f("heartbeat_at", pa.timestamp("us", tz=TZ), "last sign of life of the run's driver (UTC); "
       "a run still 'running' with an old heartbeat was killed", True),
])

PROJECTIONS = pa.schema([
    _f("pair_id", pa.string(), "id of the parallel sentence pair"),
    _f("src_tokens", _STR_LIST, "source-language words"),
    _f("tgt_tokens", _STR_LIST, "target-language words"),
    _f("src_entities", pa.list_(SPAN), "source entities (0-based start, exclusive end)"),
    _f("tgt_spans", pa.list_(SCORED_SPAN), "projected target spans with aligner score"),
    _f("alignment_score", pa.float32(), "pair-level alignment score", True),
    _f("status", pa.string(), f"one of {PROJECTION_STATUSES}"),
    _f("reason", pa.string(), "why the pair was dropped (every failed filter); null when ok",
       True),
    _f("tgt_tags", _STR_LIST, "projected IOB2 tags over tgt_tokens; null when dropped", True),
    _f("ref", pa.string(), "the pair's external id, e.g. a verse (Moses .ids)", True),
    _f("aligner", pa.string(), "versioned aligner id, e.g. 'simalign.v1(...)'", True),
    _LANG, _ROUND, _RUN_ID,
])


CALIBRATIONS = pa.schema([
    _f("sent_id", pa.string(), "joins pseudo_labels.sent_id of the same run/lang/round"),
    _f("teacher", pa.string(), "the base tagger whose tags were calibrated (pseudo_labels.teacher)"),
    _f("calibrator", pa.string(), "versioned CalibreNet id, e.g. 'calibrenet.v1(<folder>)'"),
    _f("orig_tags", _STR_LIST, "the base tagger's IOB2 tags (pseudo_labels.tags)"),
    _f("calib_tags", _STR_LIST, "IOB2 tags after calibration (CalibreNet Sec. 4.4)"),
    _f("orig_spans", pa.list_(SCORED_SPAN),
       "the base spans; score = mean soft-label probability of their tags (null without probs)"),
    _f("calib_spans", pa.list_(SCORED_SPAN),
       "calibrated spans, overlaps resolved; score = geometric mean of p_start, p_end, "
       "sigmoid of the span match (Eq. 11, if on) and p_type"),
    _f("calib_score", pa.float32(), "mean calibrated span score; null without spans", True),
    _f("n_changed", pa.int32(), "base spans not kept unchanged (start, end, type)"),
    _LANG, _ROUND, _RUN_ID,
])


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: pa.Schema
    partition_cols: tuple[str, ...]

    @property
    def file_schema(self) -> pa.Schema:
        return file_schema(self.schema, self.partition_cols)


ROUND_PARTITION = ("run_id", "lang", "round")
TABLES: dict[str, TableSpec] = {
    "sentences": TableSpec("sentences", SENTENCES, ROUND_PARTITION),
    "pseudo_labels": TableSpec("pseudo_labels", PSEUDO_LABELS, ROUND_PARTITION),
    "rejects": TableSpec("rejects", REJECTS, ROUND_PARTITION),
    "projections": TableSpec("projections", PROJECTIONS, ROUND_PARTITION),
    "decisions": TableSpec("decisions", DECISIONS, ROUND_PARTITION),
    "calibrations": TableSpec("calibrations", CALIBRATIONS, ROUND_PARTITION),
    "runs": TableSpec("runs", RUNS, ("run_id",)),
}
ROUND_TABLES = ("sentences", "pseudo_labels", "rejects", "projections", "decisions",
                "calibrations")
# Decisions taken after a round's pseudo-labels were written (a whole-set selector's top rho,
# RIKD's policy) are rows of ``decisions``; readers see them over ``pseudo_labels`` (the views
# overlay policy_p / selected / selector / weight by sent_id), so no round file is rewritten.


# Soft labels are stored as float16 (max abs error 2^-11 on [0, 1], ~5e-4; the tags are
# decoded from the float32 values before the cast): half the bytes of the biggest column.
# Readers see float32: pyarrow datasets with the table schema cast on scan (DuckDB cannot scan
# an Arrow halffloat), and DuckDB's read_parquet widens it itself.
STORED_AS = {"probs": pa.list_(pa.list_(pa.float16()))}


def file_schema(schema: pa.Schema, partition_cols: Sequence[str]) -> pa.Schema:
    """The schema inside the Parquet files: the table schema minus its partition columns, with
    the narrower storage types of ``STORED_AS``."""
    out = pa.schema([f.with_type(STORED_AS.get(f.name, f.type)) for f in schema
                     if f.name not in partition_cols])
    return out.with_metadata({"xner_ray.schema_version": str(SCHEMA_VERSION)})


def describe(schema: pa.Schema) -> str:
    """Markdown table of a schema's columns, types and docs."""
    rows = ["| column | type | null | doc |", "|---|---|---|---|"]
    for f in schema:
        doc = (f.metadata or {}).get(b"doc", b"").decode()
        rows.append(f"| {f.name} | {f.type} | {'yes' if f.nullable else 'no'} | {doc} |")
    return "\n".join(rows)


Batch = Union[pa.Table, pa.RecordBatch, Mapping[str, Any], Sequence[Mapping[str, Any]]]


def _nested_floats(values: Any, depth: int, type_: pa.DataType) -> pa.Array:
    """Ragged numpy/list values -> list<...<float32>> without a Python loop over elements.

    Ray batches carry soft labels as an object array of [T, L] arrays (or a padded [B, T, L]
    array): concatenate once and build offsets instead of converting every float.
    """
    if isinstance(values, np.ndarray) and values.dtype != object and values.ndim == depth + 1:
        values = list(values)
    items = list(values)
    if not items or any(v is None for v in items) or not all(
            isinstance(v, np.ndarray) for v in items):
        return pa.array([None if v is None else (v.tolist() if isinstance(v, np.ndarray) else v)
                         for v in items], type=type_)
    if any(v.ndim != depth for v in items):
        raise ValueError(f"expected {depth}-d arrays, got shapes {[v.shape for v in items[:3]]}")
    if depth == 1:
        flat = pa.array(np.concatenate(items).astype(np.float32))
        return pa.ListArray.from_arrays(_offsets([len(v) for v in items]), flat, type=type_)
    width = {v.shape[1] for v in items if v.shape[0]}
    if len(width) > 1:
        raise ValueError(f"inner width differs across rows: {sorted(width)}")
    inner_len = next(iter(width), 0)
    rows = np.concatenate([v.reshape(-1, inner_len) for v in items])
    flat = pa.array(rows.reshape(-1).astype(np.float32))
    inner = pa.ListArray.from_arrays(_offsets([inner_len] * len(rows)), flat,
                                     type=type_.value_type)
    return pa.ListArray.from_arrays(_offsets([v.shape[0] for v in items]), inner, type=type_)


def _offsets(lengths: Sequence[int]) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32))


def _is_float_list(type_: pa.DataType) -> int:
    depth = 0
    while pa.types.is_list(type_):
        depth, type_ = depth + 1, type_.value_type
    return depth if depth and pa.types.is_floating(type_) else 0


def _to_array(values: Any, type_: pa.DataType) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.cast(type_) if values.type != type_ else values
    depth = _is_float_list(type_)
    if depth:
        return _nested_floats(values, depth, type_)
    if isinstance(values, np.ndarray) and values.dtype == object:
        values = [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
    return pa.array(values, type=type_)


def batch_to_table(batch: Batch, schema: pa.Schema, *, extra: str = "error") -> pa.Table:
    """Rows (list of dicts), a column dict (lists / numpy arrays), a RecordBatch or a Table ->
    a Table with exactly ``schema``'s columns, in order, cast to its types.

    Missing nullable columns become nulls; a missing non-nullable column or a null in one raises
    ``ValueError`` naming it. Columns not in the schema raise (``extra="error"``, the default:
    columns are never dropped silently) or are dropped (``extra="drop"``).
    """
    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    if isinstance(batch, pa.Table):
        cols: Mapping[str, Any] = {n: batch.column(n) for n in batch.column_names}
        n_rows = batch.num_rows
    elif isinstance(batch, Mapping):
        cols = batch
        n_rows = len(next(iter(batch.values()))) if batch else 0
    else:
        rows = list(batch)
        names = {k for r in rows for k in r}
        cols = {k: [r.get(k) for r in rows] for k in names}
        n_rows = len(rows)
    unknown = sorted(set(cols) - set(schema.names))
    if unknown and extra == "error":
        raise ValueError(f"columns {unknown} are not in the schema; valid: {schema.names}")
    arrays = []
    for field in schema:
        if field.name in cols:
            try:
                arr = _to_array(cols[field.name], field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
                raise ValueError(f"column {field.name!r}: cannot convert to {field.type}: "
                                 f"{exc}") from exc
            if len(arr) != n_rows:
                raise ValueError(f"column {field.name!r} has {len(arr)} rows, expected {n_rows}")
        elif field.nullable:
            arr = pa.nulls(n_rows, field.type)
        else:
            raise ValueError(f"missing required column {field.name!r}")
        if not field.nullable and arr.null_count:
            raise ValueError(f"column {field.name!r} is not nullable but has {arr.null_count} "
                             "nulls")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema)
