"""Pseudo-label quality on the real target data: label CoNLL-2002 es and nl train (their gold
tags kept for measurement only) with a trained English teacher in one run, then answer every
question in sql/ against the store and write the HTML report.

    python benchmarks/pseudo_label_quality.py --teacher outputs/direct_transfer/cpu

Selector: top-rho 0.8 by confidence (RIKD Eq. 5), so the "selected" vs "other" buckets give the
AdvPicker Table 4 view. Writes benchmarks/results/pseudo_label_quality_<tag>.{json,md} and the
report next to the store.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import footer, provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--teacher", required=True, help="trained teacher folder")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--store", default=str(REPO / "outputs" / "pseudo_label_quality" / "store"))
    p.add_argument("--selector", default="top_rho:confidence:0.8")
    p.add_argument("--tag", default="cpu", help="results file suffix")
    args = p.parse_args(argv)
    meta = provenance()  # the revision and state the run starts from

    from xner_ray.cluster import init_ray
    from xner_ray.labeling.pipeline import LabelConfig, label
    from xner_ray.report import write_report
    from xner_ray.sqlshell import run_sql, sql_files

    data = Path(args.data_dir)
    init_ray()
    cfg = LabelConfig(teachers=[args.teacher], store=args.store, selector=args.selector,
                      run_id="quality",
                      inputs=[{"path": str(data / "conll2002-es/train.txt"), "lang": "es",
                               "gold": True},
                              {"path": str(data / "conll2002-nl/train.txt"), "lang": "nl",
                               "gold": True}])
    t0 = time.time()
    counts = label(cfg)
    seconds = round(time.time() - t0, 1)
    answers = {}
    for name, path in sql_files().items():
        answers[name] = run_sql(args.store, path, output="arrow").to_pylist()
        print(f"sql/{name}.sql: {len(answers[name])} rows", flush=True)
    report = write_report(args.store, Path(args.store).parent / "report.html")
    result = {"benchmark": "pseudo_label_quality", "teacher": args.teacher,
              "teacher_summary": _teacher_summary(args.teacher), "selector": args.selector,
              "label_seconds": seconds, "counts": counts, "report": str(report),
              "pseudo_label_prf": answers["pseudo_label_prf"],
              "boundary_errors": answers["boundary_errors"], **meta}
    out = REPO / "benchmarks" / "results" / f"pseudo_label_quality_{args.tag}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    out.with_suffix(".md").write_text(_markdown(result))
    print(f"wrote {out}.json and .md; report {report}")
    return 0


def _teacher_summary(teacher: str) -> dict:
    path = Path(teacher) / "train_summary.json"
    if not path.exists():
        return {}
    s = json.loads(path.read_text())
    return {"config": s.get("config"), "best": s.get("best")}


def _markdown(r: dict) -> str:
    lines = [f"# Pseudo-label quality ({r['selector']})", "",
             "Teacher: `" + r["teacher"] + "` (English CoNLL-2003, see its train_summary.json: "
             + json.dumps((r["teacher_summary"].get("config") or {}).get("layers")) + " layers). "
             "Unlabeled target text: CoNLL-2002 es and nl train; their gold tags are kept only to "
             "measure the pseudo-labels (entity level, strict IOB2, by `sql/pseudo_label_prf.sql`).",
             f"Labeling took {r['label_seconds']} s for both languages in one run.", "",
             "| lang | bucket | sentences | gold | predicted | precision | recall | F1 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["pseudo_label_prf"]:
        lines.append(f"| {row['lang']} | {row['bucket']} | {row['sentences']} | "
                     f"{row['gold_entities']} | {row['pred_entities']} | {row['precision']:.4f} "
                     f"| {row['recall']:.4f} | {row['f1']:.4f} |")
    lines += ["", "Boundary errors (`sql/boundary_errors.sql`, CalibreNet Table 1 categories):", "",
              "| lang | category | errors | share |", "|---|---|---|---|"]
    for row in r["boundary_errors"]:
        lines.append(f"| {row['lang']} | {row['category']} | {row['errors']} | "
                     f"{row['share']:.4f} |")
    lines += ["", *footer(r)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
