"""Selectors on known values: thresholds, top-rho ties and edges, specs, the plug-in interface."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

from xner_ray import selectors as sel
from xner_ray.selectors import (AgreementThreshold, ConfidenceThreshold, KeepAll, Selector, TopRho,
                                make_selector, register_selector)


def table(**over) -> pa.Table:
    cols = {"sent_id": ["e", "b", "d", "a", "c"],
            "confidence": pa.array([0.9, 0.5, None, 0.95, 0.89], pa.float32()),
            "agreement": pa.array([-0.01, -0.2, -0.05, None, 0.0], pa.float32()),
            "lang_score": [0.9, 0.5, 0.9, 0.7, 0.9]}
    cols.update(over)
    return pa.table(cols)


def kept(t) -> list[str]:
    col = t["selected"] if isinstance(t, dict) else t.column("selected").to_pylist()
    return sorted(np.asarray(t["sent_id"])[np.asarray(col, dtype=bool)].tolist())


def test_keep_all_table_and_dict():
    out = KeepAll()(table())
    assert out.column("selected").to_pylist() == [True] * 5
    assert set(out.column("selector").to_pylist()) == {"keep_all.v1"}
    d = KeepAll()({"sent_id": np.array(["a", "b"])})
    assert d["selected"].tolist() == [True, True] and d["weight"].dtype == np.float32


def test_confidence_threshold_in_float32():
    out = ConfidenceThreshold(0.9)(table())
    assert kept(out) == ["a", "e"]  # the stored 0.9f (0.8999999762) passes 0.9; null never
    assert out.column("weight").to_pylist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert out.column("selector")[0].as_py() == "confidence.v1(threshold=0.9)"
    assert out.schema.field("selected").type == pa.bool_()


def test_columns_are_overwritten_in_place():
    first = ConfidenceThreshold(0.9)(table())
    again = ConfidenceThreshold(0.0)(first)
    assert again.column_names == first.column_names
    assert kept(again) == ["a", "b", "c", "e"]


def test_agreement_threshold_dict_batch():
    batch = {k: v.to_pylist() for k, v in zip(table().column_names, table().columns)}
    out = AgreementThreshold(-0.05)(batch)
    assert isinstance(out["selected"], np.ndarray) and kept(out) == ["c", "d", "e"]
    assert out["selector"][0] == "agreement.v1(threshold=-0.05)"


def test_top_rho_ties_broken_by_sent_id():
    # lang_score 0.9 for c, d, e (tie), 0.7 for a, 0.5 for b
    assert kept(TopRho("lang_score", 0.4).select(table())) == ["c", "d"]
    assert kept(TopRho("lang_score", 0.8).select(table())) == ["a", "c", "d", "e"]
    low = TopRho("lang_score", 0.4, higher_is_better=False).select(table())
    assert kept(low) == ["a", "b"]


@pytest.mark.parametrize("rho, n_kept", [(0.0, 0), (0.19, 0), (0.2, 1), (0.5, 2), (0.99, 4),
                                         (1.0, 5)])
def test_top_rho_edges(rho, n_kept):
    assert len(kept(TopRho("confidence", rho).select(table()))) == n_kept


def test_top_rho_nulls_rank_last_and_rho_one_keeps_them():
    assert kept(TopRho("confidence", 0.8).select(table())) == ["a", "b", "c", "e"]
    assert kept(TopRho("confidence", 1.0).select(table())) == ["a", "b", "c", "d", "e"]
    assert kept(TopRho("confidence", 0.5).select(pa.table({"sent_id": [], "confidence": []}))) \
        == []


def test_top_rho_fit_whole_set_then_apply_per_batch():
    t = table()
    s = TopRho("lang_score", 0.6)
    with pytest.raises(RuntimeError, match="fit"):
        s(t)
    whole = s.select(t)
    fitted = TopRho("lang_score", 0.6).fit([t.slice(0, 2), t.slice(2)])  # fit on batches
    parts = [fitted(t.slice(0, 2)), fitted(t.slice(2, 1)), fitted(t.slice(3))]
    assert sum((p.column("selected").to_pylist() for p in parts), []) == \
        whole.column("selected").to_pylist()
    assert s.columns == ("lang_score", "sent_id") and s.scope == "set"


def test_missing_column_is_named():
    with pytest.raises(ValueError, match="needs column 'agreement'"):
        AgreementThreshold(0.0)(pa.table({"sent_id": ["a"]}))


def test_make_selector_specs():
    assert make_selector("keep_all") == KeepAll()
    assert make_selector("confidence:0.9") == ConfidenceThreshold(0.9)
    assert make_selector("confidence.v1:0.9") == ConfidenceThreshold(0.9)
    assert make_selector({"name": "agreement", "threshold": "-0.1"}) == AgreementThreshold(-0.1)
    spec = make_selector({"name": "top_rho", "score": "lang_score", "rho": 0.8})
    assert spec == TopRho("lang_score", 0.8)
    assert spec.id == "top_rho.v1(score_column=lang_score,rho=0.8,higher_is_better=true)"
    assert make_selector("top_rho:confidence:0.5:false") == TopRho("confidence", 0.5, False)
    s = ConfidenceThreshold(0.5)
    assert make_selector(s) is s


@pytest.mark.parametrize("spec, message", [
    ("nope", r"unknown selector 'nope'; available: \['agreement'"),
    ("confidence.v9:0.5", "unknown selector"),
    ({"threshold": 0.5}, "unknown selector None"),
    ("confidence", r"needs \['threshold'\]"),
    ("confidence:abc", "must be a number"),
    ("confidence:nan", "finite"),
    ("confidence:0.5:1", "takes"),
    ({"name": "confidence", "thresh": 0.5}, "no parameter 'thresh'"),
    ("top_rho:lang_score:1.5", r"rho must be in \[0, 1\]"),
    ("top_rho:lang_score:-0.1", r"rho must be in \[0, 1\]"),
    ("top_rho:lang_score:0.5:maybe", "true/false"),
    (42, "string or a dict"),
])
def test_invalid_specs_raise(spec, message):
    with pytest.raises(ValueError, match=message):
        make_selector(spec)


def test_plugin_row_selector_fits_the_interface():
    """How the RIKD policy selector can plug in: a row-scope dataclass reading policy_p."""

    @dataclasses.dataclass
    class PolicyMode(Selector):
        cutoff: float = 0.5
        name: ClassVar[str] = "test_policy.v1"
        columns: ClassVar[tuple[str, ...]] = ("policy_p",)

        def decide(self, cols):
            keep = cols["policy_p"] >= self.cutoff
            return keep, np.where(keep, cols["policy_p"], 0.0)

    try:
        register_selector(PolicyMode)
        s = make_selector("test_policy:0.6")
        out = s(pa.table({"sent_id": ["a", "b"], "policy_p": [0.7, 0.2]}))
        assert out.column("weight").to_pylist() == pytest.approx([0.7, 0.0])
        assert out.column("selector")[0].as_py() == "test_policy.v1(cutoff=0.6)"
    finally:
        sel._REGISTRY.pop("test_policy", None)
        sel._REGISTRY.pop("test_policy.v1", None)
    with pytest.raises(ValueError, match="versioned name"):
        register_selector(type("Bad", (KeepAll,), {"name": "bad"}))


# -- set selectors without per-row state: rank keys + cutoffs ----------------------------------

def _reference_top(scores: np.ndarray, ids: np.ndarray, rho: float) -> np.ndarray:
    """The rule written out: sort by (score desc, NaN last, sent_id asc), keep the first
    floor(rho * n) positions."""
    n = len(ids)
    k = int(np.floor(rho * n + 1e-9))
    order = sorted(range(n), key=lambda i: (np.isnan(scores[i]),
                                            0.0 if np.isnan(scores[i]) else -scores[i], ids[i]))
    keep = np.zeros(n, dtype=bool)
    keep[order[:k]] = True
    return keep


def _random_set(rng, n: int, k: int) -> pa.Table:
    """Scores from a few distinct values (many ties), some nulls, shuffled ids."""
    vals = rng.choice([0.1, 0.5, 0.5, 0.7, 0.9, np.nan], size=(n, k))
    ids = [f"s{i:03d}" for i in rng.permutation(n)]
    return pa.table({"sent_id": ids,
                     "lang_score": pa.array(vals[:, 0], pa.float64(), mask=np.isnan(vals[:, 0])),
                     "lang_scores": [[None if np.isnan(v) else float(v) for v in row]
                                     for row in vals]})


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.8, 1.0])
def test_fit_equals_cutoffs_from_keys_and_matches_the_rule(seed, rho):
    from xner_ray.selectors import LangScoreTopRho, cutoffs_from_keys

    rng = np.random.default_rng(seed)
    t = _random_set(rng, int(rng.integers(1, 40)), 3)
    ids = np.asarray(t.column("sent_id").to_pylist())
    scores = np.array(t.column("lang_scores").to_pylist(), dtype=float)
    for s in (TopRho("lang_score", rho), LangScoreTopRho(rho, "chosen"),
              LangScoreTopRho(rho, "union")):
        assert s.rho == rho and s.scope == "set"
        fitted = s.fit(t)
        keys, got_ids = s.batch_keys(t)
        assert keys.dtype == np.float64 and keys.shape == (
            len(ids), 3 if getattr(s, "combine", "") == "union" else 1)
        assert np.isinf(keys[np.isnan(scores[:, :keys.shape[1]])]).all()  # null -> +inf
        assert fitted.cutoffs == cutoffs_from_keys(keys, got_ids, rho)
        keep = np.asarray(s(t).column("selected").to_pylist())
        # today's rule: the top floor(rho n) per ranking, the union of them over rankings
        want = np.zeros(len(ids), dtype=bool)
        for j in range(keys.shape[1]):
            want |= _reference_top(scores[:, j], ids, rho)
        np.testing.assert_array_equal(keep, want)
        if keys.shape[1] == 1:
            assert keep.sum() == int(np.floor(rho * len(ids) + 1e-9))


def test_cutoffs_decide_any_batch_in_any_order_on_a_fresh_selector():
    """The distributed path: cutoffs found elsewhere, set on a new selector, batches decided
    independently -- no per-row state."""
    from xner_ray.selectors import LangScoreTopRho

    t = _random_set(np.random.default_rng(7), 50, 4)
    for combine in ("chosen", "union"):
        whole = LangScoreTopRho(0.6, combine).select(t).column("selected").to_pylist()
        cut = LangScoreTopRho(0.6, combine).fit(t).cutoffs
        fresh = LangScoreTopRho(0.6, combine).set_cutoffs(cut)
        assert not hasattr(fresh, "_decided") and fresh == LangScoreTopRho(0.6, combine)
        parts = {i: fresh(t.slice(i, 7)) for i in (42, 0, 21, 7, 35, 14, 28, 49)}
        got = sum((parts[i].column("selected").to_pylist() for i in sorted(parts)), [])
        assert got == whole
        dict_batch = {"sent_id": np.asarray(t.column("sent_id").to_pylist()),
                      "lang_score": t.column("lang_score").to_numpy(zero_copy_only=False),
                      "lang_scores": np.array([np.array(r, dtype=float)
                                               for r in t.column("lang_scores").to_pylist()],
                                              dtype=float)}
        assert fresh(dict_batch)["selected"].tolist() == whole


def test_cutoff_edges_and_checks():
    from xner_ray.selectors import cutoffs_from_keys, keep_from_cutoffs

    keys = np.array([[0.1], [np.inf], [0.1], [-1.0]])
    ids = np.array(["d", "a", "c", "b"])
    assert cutoffs_from_keys(keys, ids, 1.0) == [("all",)]
    assert cutoffs_from_keys(keys, ids, 0.2) == [("none",)]
    assert cutoffs_from_keys(keys, ids, 0.5) == [("at", 0.1, "c")]  # b, then c before d
    assert cutoffs_from_keys(keys, ids, 0.75) == [("at", 0.1, "d")]
    assert keep_from_cutoffs(keys, ids, [("at", 0.1, "c")])[:, 0].tolist() == [
        False, False, True, True]
    assert cutoffs_from_keys(np.zeros((0, 2)), np.array([], dtype=str), 0.5) == [("all",)] * 2
    s = TopRho("x", 0.5)
    with pytest.raises(ValueError, match="cutoff is"):
        s.set_cutoffs([("at", 1.0)])
    with pytest.raises(ValueError, match="1 rankings but 2 cutoffs"):
        s.set_cutoffs([("all",), ("none",)]).decide({"x": np.zeros(2), "sent_id": ids[:2]})
    assert s.set_cutoffs([["at", 0, "b"]]).cutoffs == [("at", 0.0, "b")]  # JSON round trip
    assert s.rank_columns == ("x",)
