"""The HTML report: self-contained, with its plots, built from the sql/ files."""

from __future__ import annotations

import re

import pytest

from tests.test_sql import build_store
from xner_ray import report
from xner_ray.store import Store


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("store")
    build_store(root)
    out = report.write_report(root, root.parent / "out" / "report.html")
    return out.read_text(encoding="utf-8")


def test_report_has_its_plots(page):
    assert page.startswith("<!DOCTYPE html>")
    # confidence: es/0, es/1, nl/0; label shares: 3; selection: 1; F1: 1;
    # errors: es/0, es/1 (Madrid tagged ORG in round 1); rejects: es/0, nl/0
    assert page.count("<svg") == 12
    for caption in ("confidence (RIKD Eq. 5): es round 0 (r1)", "tag share: nl round 0 (r1)",
                    "selection ratio per language/round",
                    "pseudo-label entity F1 per bucket (AdvPicker Table 4)",
                    "errors: es round 0 (r1)", "rejects: es round 0 (r1)"):
        assert f"<figcaption>{caption}" in page


def test_svgs_are_well_formed(page):
    import xml.etree.ElementTree as ET

    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.S)
    assert svgs and all(ET.fromstring(s).tag.endswith("svg") for s in svgs)


def test_report_numbers_come_from_the_sql(page):
    assert "es/0 all: 0.1905" in page  # F1 4/21, as pseudo_label_prf.sql computes
    assert "es/0 selected: 0.5556" in page  # 5 of 9 selected
    assert "<td class=\"s\">malformed_line</td>" in page


def test_report_is_self_contained(page):
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert not re.search(r"(src|href)=", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) <= {"http://www.w3.org/2000/svg"}


def test_empty_store_and_cli(tmp_path, capsys):
    from xner_ray.cli import main

    out = tmp_path / "r.html"
    assert main(["report", "--store", str(tmp_path / "nope"), "--out", str(out)]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", "--store", str(tmp_path / "empty"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert "no gold labels in the store" in text and "<svg" not in text
    assert Store(tmp_path / "empty").manifests() == []


def test_axis_labels_fit_the_margin():
    # y-axis labels are right-aligned in a 48-px margin at font-size 10: at most 5 characters
    svg = report.bar_chart(["a", "b"], {"n": [12_345.0, 250_000.0]}, "counts")
    labels = re.findall(r'text-anchor="end">([^<]+)</text>', svg)
    assert labels == ["0", "62.5k", "125k", "188k", "250k"]
    assert [report._tick(v) for v in (0.25, 9500.0, 3.2e6)] == ["0.25", "9500", "3.2M"]
