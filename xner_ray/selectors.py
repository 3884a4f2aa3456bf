"""Pseudo-label selectors: decide which rows a student trains on, and with what weight.

A selector reads score columns of ``pseudo_labels`` rows and returns the rows with three
columns added or overwritten: ``selected`` (bool), ``selector`` (its versioned id, e.g.
``"confidence.v1(threshold=0.9)"``) and ``weight`` (float32; 0 for discarded rows). Input and
output are the same kind: a pyarrow Table / RecordBatch, or a dict of numpy arrays / lists (a
Ray Data batch). Names are versioned (spaCy-registry style): change a rule, bump the version.

Two scopes, so later selectors fit one interface:

- ``scope = "row"``: each row is decided alone (thresholds, RIKD's policy network reading
  ``policy_p``). Call the selector on any batch, e.g. inside ``map_batches``.
- ``scope = "set"``: rows are decided relative to the whole set (top-rho, AdvPicker's top
  rho of ``lang_score``). ``fit(data)`` first sees the whole set -- only the columns in
  ``selector.columns``, so a pipeline can project them and keep memory small -- then the fitted
  selector is called per batch. ``select(table)`` does both for a set already in memory.
  A set selector (:class:`SetSelector`) holds no per-row state: ``rank_keys(cols)`` turns its
  ``rank_columns`` into keys [n, K] (ascending = better, null last; K rankings), and the only
  fitted state is one cutoff per ranking, ``("all",) | ("none",) | ("at", key, sent_id)``: the
  floor(rho * n)-th row in (key, sent_id) order (:func:`cutoffs_from_keys`). A distributed
  caller can find the cutoffs over its shards, ``set_cutoffs`` them, and decide any batch.

Add one with ``@register_selector`` on a dataclass subclass of :class:`Selector` implementing
``decide(cols) -> (keep, weight)``; ``make_selector`` then builds it from a spec.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Batch = Union[pa.Table, pa.RecordBatch, Mapping[str, Any]]
OUT_FIELDS = (pa.field("selected", pa.bool_(), nullable=False),
              pa.field("selector", pa.string(), nullable=False),
              pa.field("weight", pa.float32(), nullable=False))


def _column(batch: Batch, name: str, owner: str) -> np.ndarray:
    """One column as numpy: floats with NaN for nulls; strings as a str array."""
    names = batch.column_names if isinstance(batch, (pa.Table, pa.RecordBatch)) else list(batch)
    if name not in names:
        raise ValueError(f"{owner} needs column {name!r}; the batch has {sorted(names)}")
    col = batch.column(name) if isinstance(batch, (pa.Table, pa.RecordBatch)) else batch[name]
    if not isinstance(col, (pa.Array, pa.ChunkedArray)):
        if isinstance(col, np.ndarray) and col.dtype.kind in "fiub":
            return col.astype(np.float64)
        col = pa.array([None if v is None else (list(v) if isinstance(v, np.ndarray) else v)
                        for v in col])
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        return _list_matrix(col.to_pylist(), name, owner)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=str)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    return pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)


def _list_matrix(rows: list, name: str, owner: str) -> np.ndarray:
    """A list column (e.g. per-seed ``lang_scores``) as [n, K] float64; null lists and null
    entries are NaN; every row must have the same length."""
    widths = {len(r) for r in rows if r is not None}
    if len(widths) > 1:
        raise ValueError(f"{owner}: rows of {name!r} have different lengths {sorted(widths)}")
    k = widths.pop() if widths else 1
    return np.array([[np.nan] * k if r is None else [np.nan if v is None else v for v in r]
                     for r in rows], dtype=np.float64).reshape(len(rows), k)


def _num_rows(batch: Batch) -> int:
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        return batch.num_rows
    return len(next(iter(batch.values()))) if batch else 0


class Selector(abc.ABC):
    """Base class; subclasses are dataclasses whose init fields are their parameters."""

    name: ClassVar[str] = ""  # versioned, e.g. "confidence.v1"
    scope: ClassVar[str] = "row"  # "row" or "set" (see module doc)
    aliases: ClassVar[dict[str, str]] = {}  # spec key -> field name
    columns: tuple[str, ...] = ()  # input columns read (set per instance where it varies)

    @abc.abstractmethod
    def decide(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``cols`` holds ``self.columns`` as numpy; return (keep bool[n], weight float32[n])."""

    @property
    def id(self) -> str:
        params = [f"{f.name}={_fmt(getattr(self, f.name))}" for f in dataclasses.fields(self)
                  if f.init]
        return f"{self.name}({','.join(params)})" if params else self.name

    def fit(self, data: Union[Batch, Iterable[Batch]]) -> "Selector":
        """Row selectors need nothing; set selectors override :meth:`_fit`."""
        if self.scope == "set":
            self._fit(_gather(data, self.columns, self.name))
        return self

    def _fit(self, cols: dict[str, np.ndarray]) -> None:  # pragma: no cover - set scope only
        raise NotImplementedError

    def __call__(self, batch: Batch) -> Batch:
        """Add/overwrite ``selected``, ``selector``, ``weight`` on one batch."""
        cols = {c: _column(batch, c, self.name) for c in self.columns}
        if not self.columns:
            cols["__n"] = np.zeros(_num_rows(batch))
        keep, weight = self.decide(cols)
        return _with_columns(batch, np.asarray(keep, dtype=bool),
                             np.asarray(weight, dtype=np.float32), self.id)

    def select(self, data: Batch) -> Batch:
        """Fit on ``data`` (the whole set) and apply to it."""
        return self.fit(data)(data)


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _gather(data: Union[Batch, Iterable[Batch]], columns: tuple[str, ...],
            owner: str) -> dict[str, np.ndarray]:
    batches = [data] if isinstance(data, (pa.Table, pa.RecordBatch, Mapping)) else list(data)
    out = {c: [_column(b, c, owner) for b in batches] for c in columns}
    return {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in out.items()}


def _with_columns(batch: Batch, keep: np.ndarray, weight: np.ndarray, sel_id: str) -> Batch:
    n = len(keep)
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        arrays = (pa.array(keep, pa.bool_()), pa.array([sel_id] * n, pa.string()),
                  pa.array(weight, pa.float32()))
        for field, arr in zip(OUT_FIELDS, arrays):
            i = batch.schema.get_field_index(field.name)
            batch = batch.set_column(i, field, arr) if i >= 0 else batch.append_column(field, arr)
        return batch
    out = dict(batch)
    out.update(selected=keep, selector=np.full(n, sel_id, dtype=object), weight=weight)
    return out


_REGISTRY: dict[str, type[Selector]] = {}


def register_selector(cls: type[Selector]) -> type[Selector]:
    """Class decorator: make ``cls`` buildable by ``make_selector`` under ``cls.name`` (versioned)
    and its unversioned prefix (``"confidence"`` -> the latest registered version)."""
    if not cls.name or ".v" not in cls.name:
        raise ValueError(f"selector {cls.__name__} needs a versioned name like 'mine.v1'")
    _REGISTRY[cls.name] = cls
    _REGISTRY[cls.name.rsplit(".v", 1)[0]] = cls
    return cls


def _threshold(value: float, owner: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{owner}: threshold must be a finite number, got {value}")
    return value


def _at_least(scores: np.ndarray, threshold: float) -> np.ndarray:
    """``scores >= threshold`` in float32, the store's type: a stored 0.9f (0.89999998) passes
    a 0.9 threshold. NaN (null) never passes."""
    with np.errstate(invalid="ignore"):
        return scores.astype(np.float32) >= np.float32(threshold)


@register_selector
@dataclasses.dataclass
class KeepAll(Selector):
    """Keep every row (the "no selection" baseline of RIKD Table 7 / AdvPicker "All-Data")."""

    name: ClassVar[str] = "keep_all.v1"

    def decide(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n = len(next(iter(cols.values())))
        return np.ones(n, dtype=bool), np.ones(n, dtype=np.float32)


@register_selector
@dataclasses.dataclass
class ConfidenceThreshold(Selector):
    """RIKD section 4.5.3: keep x when conf(x) (RIKD Eq. 5) >= threshold; null never passes."""

    threshold: float
    name: ClassVar[str] = "confidence.v1"
    columns: ClassVar[tuple[str, ...]] = ("confidence",)

    def __post_init__(self) -> None:
        self.threshold = _threshold(self.threshold, self.name)

    def decide(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        keep = _at_least(cols["confidence"], self.threshold)
        return keep, keep.astype(np.float32)


@register_selector
@dataclasses.dataclass
class AgreementThreshold(Selector):
    """RIKD section 4.5.3: keep x when agree(x) (RIKD Eq. 6, <= 0) >= threshold; null (no student
    yet, e.g. round 0) never passes."""

    threshold: float
    name: ClassVar[str] = "agreement.v1"
    columns: ClassVar[tuple[str, ...]] = ("agreement",)

    def __post_init__(self) -> None:
        self.threshold = _threshold(self.threshold, self.name)

    def decide(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        keep = _at_least(cols["agreement"], self.threshold)
        return keep, keep.astype(np.float32)


Cutoff = tuple  # ("all",) | ("none",) | ("at", key: float, sent_id: str)


def n_kept(rho: float, n: int) -> int:
    """k = floor(rho * n), the rows a top-rho ranking keeps (epsilon: 0.7 * 10 is
    7.000000000000001, 0.8 * 10 is 8.000000000000002)."""
    return min(n, math.floor(rho * n + 1e-9))


def cutoffs_from_keys(keys: np.ndarray, ids: np.ndarray, rho: float) -> list[Cutoff]:
    """One cutoff per ranking (column) of ``keys`` [n, K] (ascending = better; NaN already
    +inf): ``("at", key, sent_id)`` of the floor(rho*n)-th row in ascending (key, sent_id)
    order, or ``("all",)`` / ``("none",)`` when every / no row is kept. Pure: a distributed
    caller that finds the same k-th row over its shards gets the same cutoffs."""
    keys = np.asarray(keys, dtype=np.float64)
    if keys.ndim == 1:
        keys = keys[:, None]
    ids = np.asarray(ids, dtype=str)
    n = len(ids)
    if keys.shape[0] != n:
        raise ValueError(f"{keys.shape[0]} key rows for {n} sent_ids")
    k = n_kept(rho, n)
    if k == n:
        return [("all",)] * keys.shape[1]
    if k == 0:
        return [("none",)] * keys.shape[1]
    out: list[Cutoff] = []
    for j in range(keys.shape[1]):
        last = np.lexsort((ids, keys[:, j]))[k - 1]
        out.append(("at", float(keys[last, j]), str(ids[last])))
    return out


def keep_from_cutoffs(keys: np.ndarray, ids: np.ndarray, cutoffs: Sequence[Cutoff]
                      ) -> np.ndarray:
    """bool [n, K]: row i is within ranking j's cutoff (at or before it in (key, sent_id))."""
    keys = np.asarray(keys, dtype=np.float64)
    if keys.ndim == 1:
        keys = keys[:, None]
    if keys.shape[1] != len(cutoffs):
        raise ValueError(f"{keys.shape[1]} rankings but {len(cutoffs)} cutoffs")
    ids = np.asarray(ids, dtype=str)
    keep = np.zeros(keys.shape, dtype=bool)
    for j, cut in enumerate(cutoffs):
        if cut[0] in ("all", "none"):
            keep[:, j] = cut[0] == "all"
        else:
            _, ck, cid = cut
            keep[:, j] = (keys[:, j] < ck) | ((keys[:, j] == ck) & (ids <= cid))
    return keep


def _check_cutoffs(cutoffs: Sequence[Cutoff], owner: str) -> list[Cutoff]:
    out = []
    for c in cutoffs:
        c = tuple(c)
        if c in (("all",), ("none",)) or (len(c) == 3 and c[0] == "at"):
            out.append(c if c[0] != "at" else ("at", float(c[1]), str(c[2])))
        else:
            raise ValueError(f"{owner}: a cutoff is ('all',), ('none',) or ('at', key, "
                             f"sent_id), got {c!r}")
    return out


class SetSelector(Selector):
    """A whole-set (top-rho) selector without per-row state.

    ``rank_keys(cols)`` maps the ``rank_columns`` of any batch to keys [n, K] (float64,
    ascending = better, null -> +inf), one column per ranking. The only fitted state is one
    cutoff per ranking (``set_cutoffs``; ``fit`` computes them in memory with
    :func:`cutoffs_from_keys`, a distributed caller may find them itself); ``decide`` then keeps
    a row that is within the cutoff of any ranking -- any batch, any order, any worker.
    """

    scope: ClassVar[str] = "set"
    rho: float
    _cutoffs: Any = None

    @property
    def rank_columns(self) -> tuple[str, ...]:  # pragma: no cover - subclasses
        raise NotImplementedError

    @abc.abstractmethod
    def rank_keys(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        """[n, K] float64 keys from ``cols`` (``rank_columns`` as :func:`_column` reads them)."""

    def batch_keys(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(keys [n, K], sent_ids [n]) of any batch: what a distributed fit needs."""
        cols = {c: _column(batch, c, self.name) for c in (*self.rank_columns, "sent_id")}
        return self.rank_keys(cols), cols["sent_id"]

    @property
    def cutoffs(self) -> Optional[list[Cutoff]]:
        return None if self._cutoffs is None else list(self._cutoffs)

    def set_cutoffs(self, cutoffs: Sequence[Cutoff]) -> "SetSelector":
        self._cutoffs = _check_cutoffs(cutoffs, self.name)
        return self

    def _fit(self, cols: dict[str, np.ndarray]) -> None:
        self.set_cutoffs(cutoffs_from_keys(self.rank_keys(cols), cols["sent_id"], self.rho))

    def decide(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self._cutoffs is None:
            raise RuntimeError(f"{self.id} ranks the whole set: call fit(whole_set), "
                               "select(whole_set) or set_cutoffs(...) before applying it")
        keep = keep_from_cutoffs(self.rank_keys(cols), cols["sent_id"], self._cutoffs).any(1)
        return keep, keep.astype(np.float32)


def _check_rho(rho: Any, owner: str) -> float:
    rho = float(rho)
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"{owner}: rho must be in [0, 1], got {rho}")
    return rho


def _ascending(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Ascending sort key: best first; NaN (null) -> +inf, i.e. last."""
    key = -np.asarray(scores, dtype=np.float64) if higher_is_better else np.array(
        scores, dtype=np.float64)
    key[np.isnan(key)] = np.inf
    return key


@register_selector
@dataclasses.dataclass
class TopRho(SetSelector):
    """Keep the top ``rho`` share of the whole set by ``score_column`` (AdvPicker: top rho=0.8 of
    ``lang_score``). k = floor(rho * n) rows; order: score (best first), then ``sent_id``
    ascending, so ties are broken deterministically; null scores rank last. Needs ``fit`` (or
    ``set_cutoffs``). One ranking (K = 1)."""

    score_column: str
    rho: float
    higher_is_better: bool = True
    name: ClassVar[str] = "top_rho.v1"
    aliases: ClassVar[dict[str, str]] = {"score": "score_column"}
    _cutoffs: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rho = _check_rho(self.rho, self.name)
        if not isinstance(self.score_column, str) or not self.score_column:
            raise ValueError(f"{self.name}: score_column must be a column name")
        self.columns = (self.score_column, "sent_id")

    @property
    def rank_columns(self) -> tuple[str, ...]:
        return (self.score_column,)

    def rank_keys(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        return _ascending(cols[self.score_column], self.higher_is_better)[:, None]


LANG_COMBINE = ("chosen", "union")


@register_selector
@dataclasses.dataclass
class LangScoreTopRho(SetSelector):
    """AdvPicker 3.2: keep the most language-independent target sentences, the top ``rho``
    (paper: 0.8, Sec. 4.1) by l_score = 1 - |P_dis - 0.5| (Eq. 6), written by the labeling
    stage's discriminators (``lang_scorers``).

    ``combine="chosen"`` (default) is the paper's rule: one ranking of the stored
    ``lang_score``, exactly ``floor(rho * n)`` rows. With a seed ensemble the stored score is
    that of the seed whose soft labels were kept -- AdvPicker 4.1 keeps per sentence "only
    [the] sequences that have the highest sum of each predicted label confidence", so a
    sentence's pseudo-label comes from one TLADV model, and 3.2 selects "samples with the
    highest l_score in the top rho": we rank by that model's l_score. The paper's counts are
    exactly floor(0.8 n) (Table 5: de 9,733 of 12,167, es 6,724 of 8,405, nl 12,668 of
    15,836), so a union over seeds, which keeps more, is not its rule.

    ``combine="union"`` (kept as a named option; not the paper's): a sentence is kept when any
    seed's discriminator puts it in that seed's own top ``rho`` -- K rankings over the
    transient per-seed ``lang_scores`` column, which must be present wherever ``decide`` runs
    (it is not stored). Keeps between rho and min(1, K * rho) of the rows (the benchmark's
    union of 5 seeds kept 94.5% es / 89.5% nl at rho 0.8).
    One scorer: both are the same. Ties and order as :class:`TopRho`.
    """

    rho: float = 0.8
    combine: str = "chosen"
    name: ClassVar[str] = "lang_score.v1"
    _cutoffs: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rho = _check_rho(self.rho, self.name)
        if self.combine not in LANG_COMBINE:
            raise ValueError(f"{self.name}: combine must be one of {LANG_COMBINE}, "
                             f"got {self.combine!r}")
        self.columns = (*self.rank_columns, "sent_id")

    @property
    def rank_columns(self) -> tuple[str, ...]:
        return ("lang_score",) if self.combine == "chosen" else ("lang_scores",)

    def rank_keys(self, cols: dict[str, np.ndarray]) -> np.ndarray:
        scores = np.asarray(cols[self.rank_columns[0]], dtype=np.float64)
        if self.combine == "union" and scores.ndim != 2:
            raise ValueError(f"{self.id}: 'lang_scores' must hold one list of per-seed scores "
                             f"per row, got shape {scores.shape}")
        keys = _ascending(scores, higher_is_better=True)
        return keys[:, None] if keys.ndim == 1 else keys


def available() -> list[str]:
    return sorted(_REGISTRY)


def _convert(value: Any, field: dataclasses.Field, owner: str) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if kind == "bool" and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{owner}: {field.name} must be true/false, got {value!r}")
        return value.lower() in ("true", "1")
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{owner}: {field.name} must be a number, got {value!r}") from exc
    return value


def make_selector(spec: Union[str, Mapping[str, Any], Selector]) -> Selector:
    """Build a selector from a spec.

    ``"keep_all"``, ``"confidence:0.9"``, ``"agreement:-0.01"``, ``"top_rho:lang_score:0.8"``
    (positional parameters in field order), ``{"name": "top_rho", "score": "lang_score",
    "rho": 0.8}``; names may carry a version (``"confidence.v1"``). Raises ``ValueError``
    listing the valid names / parameters.
    """
    if isinstance(spec, Selector):
        return spec
    if isinstance(spec, str):
        name, *args = spec.strip().split(":")
        kwargs: dict[str, Any] = {}
    elif isinstance(spec, Mapping):
        kwargs = dict(spec)
        name, args = kwargs.pop("name", None), []
    else:
        raise ValueError(f"selector spec must be a string or a dict, got {type(spec).__name__}")
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown selector {name!r}; available: {available()}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if len(args) > len(fields):
        raise ValueError(f"{cls.name} takes {[f.name for f in fields]}; got {len(args)} args")
    params = {f.name: a for f, a in zip(fields, args)}
    for key, value in kwargs.items():
        key = cls.aliases.get(key, key)
        if key not in {f.name for f in fields}:
            raise ValueError(f"{cls.name} has no parameter {key!r}; valid: "
                             f"{[f.name for f in fields]}")
        params[key] = value
    missing = [f.name for f in fields if f.name not in params
               and f.default is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{cls.name} needs {missing}; spec was {spec!r}")
    by_name = {f.name: f for f in fields}
    return cls(**{k: _convert(v, by_name[k], cls.name) for k, v in params.items()})
