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
