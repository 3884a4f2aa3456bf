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

Add one with ``@register_selector`` on a dataclass subclass of :class:`Selector` implementing
``decide(cols) -> (keep, weight)``; ``make_selector`` then builds it from a spec.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, Iterable, Mapping, Union

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
        col = pa.array(list(col))
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=str)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.nan)
    return pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)


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


@register_selector
@dataclasses.dataclass
class TopRho(Selector):
    """Keep the top ``rho`` share of the whole set by ``score_column`` (AdvPicker: top rho=0.8 of
    ``lang_score``). k = floor(rho * n) rows; order: score (best first), then ``sent_id``
    ascending, so ties are broken deterministically; null scores rank last. Needs ``fit``."""

    score_column: str
    rho: float
    higher_is_better: bool = True
    name: ClassVar[str] = "top_rho.v1"
    scope: ClassVar[str] = "set"
    aliases: ClassVar[dict[str, str]] = {"score": "score_column"}
    _cutoff: Any = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.rho = float(self.rho)
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"{self.name}: rho must be in [0, 1], got {self.rho}")
        if not isinstance(self.score_column, str) or not self.score_column:
            raise ValueError(f"{self.name}: score_column must be a column name")
        self.columns = (self.score_column, "sent_id")

    def _key(self, scores: np.ndarray) -> np.ndarray:
        """Ascending sort key: best first; NaN (null) -> +inf, i.e. last."""
        key = -scores if self.higher_is_better else scores.copy()
        key[np.isnan(key)] = np.inf
        return key

    def _fit(self, cols: dict[str, np.ndarray]) -> None:
        key, ids = self._key(cols[self.score_column]), cols["sent_id"]
        n = len(key)
        k = min(n, math.floor(self.rho * n + 1e-9))  # epsilon: 0.7 * 10 is 7.000000000000001
        if k == n:
            self._cutoff = ("all",)
        elif k == 0:
            self._cutoff = ("none",)
        else:
            last = np.lexsort((ids, key))[k - 1]
            self._cutoff = ("at", key[last], ids[last])

    def decide(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self._cutoff is None:
            raise RuntimeError(f"{self.id} ranks the whole set: call fit(whole_set) or "
                               "select(whole_set) before applying it to batches")
        key, ids = self._key(cols[self.score_column]), cols["sent_id"]
        if self._cutoff[0] in ("all", "none"):
            keep = np.full(len(key), self._cutoff[0] == "all")
        else:
            _, ck, cid = self._cutoff
            keep = (key < ck) | ((key == ck) & (ids <= cid))
        return keep, keep.astype(np.float32)


LANG_COMBINE = ("union", "chosen")


@register_selector
@dataclasses.dataclass
class LangScoreTopRho(Selector):
    """AdvPicker 3.2: keep the most language-independent target sentences, the top ``rho``
    (paper: 0.8) by l_score = 1 - |P_dis - 0.5| (Eq. 6), written by the labeling stage's
    discriminators (``lang_scorers``).

    With a seed ensemble (several scorers): ``combine="union"`` keeps a sentence when any
    seed's discriminator puts it in that seed's top ``rho`` (reads every seed's score from
    the stage's transient ``lang_scores`` column; the decisions are remembered by ``sent_id``
    for the rewrite of the round's files, so the selector applies only to the set it was
    fitted on). ``combine="chosen"`` ranks the stored ``lang_score`` alone (the score of the
    seed whose soft labels were kept; exactly ``floor(rho * n)`` rows, as AdvPicker Table 5's
    counts are). One scorer: both are the same. Ties and order as :class:`TopRho`.
    """

    rho: float = 0.8
    combine: str = "union"
    name: ClassVar[str] = "lang_score.v1"
    scope: ClassVar[str] = "set"
    _top: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
    _decided: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rho = float(self.rho)
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"{self.name}: rho must be in [0, 1], got {self.rho}")
        if self.combine not in LANG_COMBINE:
            raise ValueError(f"{self.name}: combine must be one of {LANG_COMBINE}, "
                             f"got {self.combine!r}")
        self.columns = (("lang_score", "sent_id") if self.combine == "chosen"
                        else ("lang_scores", "sent_id"))

    def fit(self, data: Union[Batch, Iterable[Batch]]) -> "LangScoreTopRho":
        batches = [data] if isinstance(data, (pa.Table, pa.RecordBatch, Mapping)) else list(data)
        if self.combine == "chosen":
            self._top = TopRho("lang_score", self.rho).fit(batches)
            return self
        ids = np.concatenate([_column(b, "sent_id", self.name) for b in batches] or [[]])
        scores = _score_matrix(batches, self.name)
        keep = np.zeros(len(ids), dtype=bool)
        for k in range(scores.shape[1]):  # union of each seed's top rho (AdvPicker 4.1)
            top = TopRho("s", self.rho)
            cols = {"s": scores[:, k], "sent_id": ids}
            top._fit(cols)
            keep |= top.decide(cols)[0]
        decided: dict[str, bool] = {}
        for i, k in zip(ids.tolist(), keep.tolist()):
            decided[i] = decided.get(i, False) or k  # duplicates share a sent_id
        self._decided = decided
        return self

    def __call__(self, batch: Batch) -> Batch:
        need = ("lang_score", "sent_id") if self.combine == "chosen" else ("sent_id",)
        keep, weight = self.decide({c: _column(batch, c, self.name) for c in need})
        return _with_columns(batch, np.asarray(keep, dtype=bool),
                             np.asarray(weight, dtype=np.float32), self.id)

    def decide(self, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self._top is None and self._decided is None:
            raise RuntimeError(f"{self.id} ranks the whole set: call fit(whole_set) or "
                               "select(whole_set) before applying it to batches")
        if self.combine == "chosen":
            return self._top.decide(cols)
        unseen = [i for i in cols["sent_id"].tolist() if i not in self._decided]
        if unseen:
            raise ValueError(f"{self.id} was fitted on another set: {len(unseen)} sentences "
                             f"it never saw, e.g. {unseen[0]!r}")
        keep = np.array([self._decided[i] for i in cols["sent_id"].tolist()], dtype=bool)
        return keep, keep.astype(np.float32)


def _score_matrix(batches: list, owner: str) -> np.ndarray:
    """The per-seed ``lang_scores`` lists of all rows as one [n, K] array (nulls: NaN rows)."""
    rows = []
    for b in batches:
        col = b.column("lang_scores") if isinstance(b, (pa.Table, pa.RecordBatch)) else (
            b.get("lang_scores") if isinstance(b, Mapping) else None)
        if col is None:
            raise ValueError(f"{owner} needs column 'lang_scores' (the labeling stage's "
                             "per-seed l_scores)")
        rows.extend(col.to_pylist() if isinstance(col, (pa.Array, pa.ChunkedArray)) else col)
    widths = {len(r) for r in rows if r is not None}
    if len(widths) > 1:
        raise ValueError(f"{owner}: rows carry different numbers of seed scores {sorted(widths)}")
    k = widths.pop() if widths else 1
    return np.array([[np.nan] * k if r is None else r for r in rows], dtype=np.float64
                    ).reshape(len(rows), k)


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
