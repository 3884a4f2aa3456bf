"""A self-contained HTML report of a store's pseudo-label quality (``xner report``).

Every number comes from running the question files in ``sql/`` through
:func:`xner_ray.sqlshell.run_sql` on a read-only connection, so the page and the SQL agree.
Charts are inline SVG (no JavaScript, CSS or image fetched from anywhere; no plotting library).
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from xner_ray import sqlshell
from xner_ray.store.store import Store

COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}th{background:#f4f4f4}
td.s{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:13px;text-align:center}.note{color:#666;font-size:13px}"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def html_table(rows: list[dict], columns: Optional[Sequence[str]] = None) -> str:
    if not rows:
        return '<p class="note">no rows</p>'
    columns = list(columns or rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"" if isinstance(r[c], (int, float)) else "s"}">'
                         f"{html.escape(_fmt(r[c]))}</td>" for c in columns) + "</tr>"
        for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _tick(v: float) -> str:
    """Axis label short enough for the 48-px margin: 0.25, 120, 9500, 12.5k, 3.2M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(v) >= div:
            return f"{v / (1e3 if suffix == 'k' else div):.3g}{suffix}"
    return f"{v:.4g}"


def bar_chart(categories: Sequence[str], series: dict[str, Sequence[float]], title: str, *,
              y_max: Optional[float] = None, width: int = 520, height: int = 260) -> str:
    """Grouped vertical bars as an inline SVG figure."""
    left, right, top, bottom = 48, 10, 24, 70
    pw, ph = width - left - right, height - top - bottom
    values = [v for vs in series.values() for v in vs]
    y_max = y_max or max(values + [0]) or 1.0
    group_w = pw / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'role="img"><title>{html.escape(title)}</title>']
    for i in range(5):  # y grid and labels
        y = top + ph - ph * i / 4
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#eee"/><text x="{left - 4}" y="{y + 4:.1f}" font-size="10" '
                   f'text-anchor="end">{_tick(y_max * i / 4)}</text>')
    for s, (name, vs) in enumerate(series.items()):
        for c, v in enumerate(vs):
            h = ph * min(v, y_max) / y_max
            x = left + c * group_w + group_w * 0.1 + s * bar_w
            out.append(f'<rect x="{x:.1f}" y="{top + ph - h:.1f}" width="{bar_w:.1f}" '
                       f'height="{h:.1f}" fill="{COLORS[s % len(COLORS)]}">'
                       f"<title>{html.escape(f'{categories[c]} {name}: {v:.4g}')}</title></rect>")
    rotate = len(categories) > 8 or max((len(c) for c in categories), default=0) > 8
    for c, cat in enumerate(categories):
        x = left + (c + 0.5) * group_w
        tr = f' transform="rotate(-45 {x:.1f} {top + ph + 12})"' if rotate else ""
        out.append(f'<text x="{x:.1f}" y="{top + ph + 12}" font-size="10" '
                   f'text-anchor="{"end" if rotate else "middle"}"{tr}>{html.escape(cat)}</text>')
    for s, name in enumerate(series if len(series) > 1 else []):
        out.append(f'<rect x="{left + 8 + s * 110}" y="4" width="10" height="10" '
                   f'fill="{COLORS[s % len(COLORS)]}"/><text x="{left + 22 + s * 110}" y="13" '
                   f'font-size="11">{html.escape(name)}</text>')
    out.append("</svg>")
    return f"<figure>{''.join(out)}<figcaption>{html.escape(title)}</figcaption></figure>"


def _groups(rows: list[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _name(key: tuple) -> str:
    run, lang, rnd = key
    return f"{lang} round {rnd} ({run})"


def _charts(figures: list[str]) -> str:
    return f'<div class="charts">{"".join(figures)}</div>' if figures else \
        '<p class="note">no data</p>'


def _confidence(rows: list[dict]) -> str:
    figs = [bar_chart([f"{r['bin_lo']:.2f}" for r in g],
                      {"all": [r["sentences"] for r in g], "selected": [r["selected"] for r in g]},
                      f"confidence (RIKD Eq. 5): {_name(k)}")
            for k, g in _groups(rows, ("run_id", "lang", "round")).items()]
    return _charts(figs)


def _labels(rows: list[dict]) -> str:
    figs = []
    for k, g in _groups(rows, ("run_id", "lang", "round")).items():
        ents = [r for r in g if r["tag"] != "O"]
        o_share = sum(r["share"] for r in g if r["tag"] == "O")
        figs.append(bar_chart([r["tag"] for r in ents],
                              {"all": [r["share"] for r in ents],
                               "selected": [r["selected_share"] for r in ents]},
                              f"tag share: {_name(k)} (O: {o_share:.1%})"))
    return _charts(figs)


def _short(keys: Sequence[tuple]) -> list[str]:
    """``lang/round`` labels, prefixed by the run (and suffixed by the selector) only when the
    rows hold more than one."""
    runs, extra = {k[0] for k in keys}, {k[3:] for k in keys}
    return [(f"{k[0]}:" if len(runs) > 1 else "") + f"{k[1]}/{k[2]}"
            + (f" {k[3]}" if len(extra) > 1 else "") for k in keys]


def _selection(rows: list[dict]) -> str:
    groups = _groups(rows, ("run_id", "lang", "round", "selector"))
    cats = _short(list(groups))
    ratio = [sum(r["share"] for r in g if r["selected"]) for g in groups.values()]
    chart = bar_chart(cats, {"selected": ratio}, "selection ratio per language/round",
                      y_max=1.0) if groups else ""
    return _charts([chart] if chart else []) + html_table(rows, [
        "run_id", "lang", "round", "selector", "selected", "sentences", "share",
        "avg_confidence", "avg_f_conf", "avg_agreement", "avg_lang_score", "avg_policy_p"])


def _prf(rows: list[dict]) -> str:
    groups = _groups(rows, ("run_id", "lang", "round"))
    buckets = ("selected", "other", "all")
    series = {b: [next((r["f1"] for r in g if r["bucket"] == b), 0.0) for g in groups.values()]
              for b in buckets}
    chart = bar_chart(_short(list(groups)), series,
                      "pseudo-label entity F1 per bucket (AdvPicker Table 4)", y_max=1.0)
    return (_charts([chart]) if groups else '<p class="note">no gold labels in the store</p>') \
        + html_table(rows)


def _per_group_bars(rows: list[dict], label: str, value: str, title: str) -> str:
    figs = [bar_chart([r[label] for r in g], {value: [r[value] for r in g]},
                      f"{title}: {_name(k)}")
            for k, g in _groups(rows, ("run_id", "lang", "round")).items()]
    return _charts(figs) + (html_table(rows) if rows else "")


CATEGORIES = ("super", "sub", "drifted", "adjacent", "type", "type_boundary", "spurious", "missed")


def _calibration(summary: list[dict], errors: list[dict]) -> str:
    """CalibreNet: what the calibration stage changed, and (where gold exists) the error
    categories of the base tags vs the calibrated tags, summed over entity types."""
    if not summary:
        return '<p class="note">no calibrations in the store (jobs/calibrenet.py writes them)</p>'
    figs = []
    for k, g in _groups(errors, ("run_id", "lang", "round")).items():
        cats = [c for c in CATEGORIES if any(r["category"] == c for r in g)]
        total = {side: [sum(r[side] for r in g if r["category"] == c) for c in cats]
                 for side in ("before", "after")}
        figs.append(bar_chart(cats, total, f"errors before / after calibration: {_name(k)}"))
    return (_charts(figs) if figs else '<p class="note">no gold labels for the calibrated '
            'rounds</p>') + html_table(summary, [
                "run_id", "lang", "round", "sentences", "orig_spans", "calib_spans",
                "spans_changed", "sentences_changed", "avg_orig_score", "avg_calib_score",
                "gold_entities", "f1_before", "f1_after"]) + (html_table(errors) if errors else "")


def _scores(rows: list[dict]) -> str:
    """Source and target dev F1 per round: each round's student against its teacher (the
    previous round's student) -- the target scores are for reading only, never for choosing."""
    if not rows:
        return '<p class="note">no scored rounds (labeling-only runs record counts)</p>'
    figs = []
    for key, g in _groups(rows, ("run_id", "lang")).items():
        figs.append(bar_chart([f"round {r['round']}" for r in g],
                              {"source dev F1": [r["source_dev_f1"] or 0.0 for r in g],
                               "target dev F1": [r["target_dev_f1"] or 0.0 for r in g]},
                              f"dev F1 per round: {_name(key)}", y_max=1.0))
    return _charts(figs) + html_table(rows, [
        "run_id", "job", "lang", "round", "n_train", "source_dev_f1", "target_dev_f1",
        "target_f1_per_type", "discard_ratio", "teacher", "student"])


def build_report(store_root: Union[str, os.PathLike, Store], title: Optional[str] = None) -> str:
    """The report's HTML text."""
    store = store_root if isinstance(store_root, Store) else Store(store_root)
    con = sqlshell.connect(store)

    def rows(name: str) -> list[dict]:
        return sqlshell.run_sql(con, name, output="arrow").to_pylist()

    sections = [
        ("Runs", html_table(rows("runs_overview"), ["run_id", "job", "status", "code_version",
                                                    "started_at", "seconds"])),
        ("Scores per round (source dev chooses; target dev is reported only)",
         _scores(rows("round_scores"))),
        ("Sentences and entities", html_table(rows("sentences_entities"))),
        ("Confidence histograms", _confidence(rows("confidence_histogram"))),
        ("Label distribution", _labels(rows("label_distribution"))),
        ("Selection", _selection(rows("selection_summary"))),
        ("Pseudo-label precision / recall / F1 (where gold exists)",
         _prf(rows("pseudo_label_prf"))),
        ("Label flips between the first and the last round",
         html_table(rows("label_flips")[:50])),
        ("Most frequent entities", html_table(rows("top_entities")[:60])),
        ("Error categories (CalibreNet Table 1)",
         _per_group_bars(rows("boundary_errors"), "category", "errors", "errors")),
        ("Calibration (CalibreNet: base tags vs calibrated tags)",
         _calibration(rows("calibration_summary"), rows("calibration_errors"))),
        ("Rejected input", _per_group_bars(rows("rejects_per_reason"), "reason", "rejects",
                                           "rejects")),
        ("Annotation projection", html_table(rows("projection_status"))),
    ]
    title = title or f"xner_ray store report: {store.root}"
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f"<h2>{html.escape(h)}</h2>{s}" for h, s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">generated {now} from the complete "
            f"rounds, by the queries in sql/</p>{body}</body></html>\n")


def write_report(store_root: Union[str, os.PathLike, Store], out_html: Union[str, os.PathLike],
                 title: Optional[str] = None) -> Path:
    """Write the report to ``out_html`` (a local path) and return it."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(store_root, title), encoding="utf-8")
    return out


def cmd_report(args: argparse.Namespace) -> int:
    """Handler of ``xner report``."""
    sqlshell.check_store(args.store)
    print(write_report(args.store, args.out))
    return 0


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Plug ``report`` into the ``xner`` command's subparsers."""
    p = subparsers.add_parser("report", help="HTML report of pseudo-label quality in a store",
                              allow_abbrev=False)
    p.add_argument("--store", required=True, help="store root (folder or URI)")
    p.add_argument("--out", default="xner-report.html", help="HTML file to write")
    p.set_defaults(func=cmd_report)
    return p
