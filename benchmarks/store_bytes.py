"""Stored bytes per million sentences (issue 14 item 4): today's store layout against the one
before, on the same sentences and teacher.

- now: one labeling round through the product's Ray pipeline (``label()``): soft labels stored
  as ``list<list<float16>>``, files of up to 65,536 rows (``LabelConfig.rows_per_file``), each
  one row group, zstd;
- before: the same round labeled again in-process with the previous layout: soft labels stored
  as the teacher's float32 values (the float16 storage type switched off for this run), one
  file and row group per ``--block-rows`` rows (what one write call per labeled block gave),
  zstd.

Both are measured as bytes on disk per table and scaled to a million sentences (bytes /
sentences x 1e6: linear once files hold more than a few blocks).

    python benchmarks/store_bytes.py --model outputs/direct_transfer/cpu   # a trained teacher
    python benchmarks/store_bytes.py --model tiny --results /tmp/x          # smoke: tiny BERT

Then a second round of the same run, as RIKD's later rounds label it: the sentences round 0
stored, labeled again (``LabelConfig.sentences_from``), which writes ``pseudo_labels`` only --
before, every round read its input again and wrote both tables. The run table gives a run of
``--rounds`` R rounds: before = R x round 0's bytes in the previous layout; now = round 0's
bytes + (R - 1) x round 1's (measured; rounds 2.. label the same sentences as round 1).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import footer, provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def _model(spec: str, work: Path) -> str:
    if spec != "tiny":
        return spec
    from tests._tiny import make_tiny_model
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    base = make_tiny_model(work / "tiny-base")
    out = work / "tiny-teacher"
    load_token_classifier(str(base), LABELS).save_pretrained(out, safe_serialization=True)
    load_tokenizer(str(base)).save_pretrained(out)
    return str(out)


def table_files(store: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for table in ("sentences", "pseudo_labels"):
        out[table] = sorted((store / table).rglob("*.parquet"))
    return out


def row_groups(files: list[Path]) -> list[int]:
    import pyarrow.parquet as pq

    return [pq.ParquetFile(f).metadata.num_rows // max(1, pq.ParquetFile(f).metadata.num_row_groups)
            for f in files]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "outputs" / "direct_transfer" / "cpu"),
                    help="teacher folder ('tiny': the tests' tiny random BERT)")
    ap.add_argument("--data", nargs="+", default=[
        str(REPO.parent / "shared/data/conll2002-es/train.txt")])
    ap.add_argument("--block-rows", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the run table (RIKD: 3)")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    meta = provenance()
    from xner_ray.cluster import init_ray
    from xner_ray.labeling.pipeline import LabelConfig, label

    work = Path(tempfile.mkdtemp(prefix="xner-bytes-"))
    try:
        model = _model(args.model, work)
        init_ray()
        store, old_store = work / "store", work / "before"
        inputs = [{"path": p, "lang": Path(p).parent.name.split("-")[-1], "fmt": "conll"}
                  for p in args.data]
        t0 = time.time()
        counts = label(LabelConfig(teachers=[model], inputs=inputs, store=str(store),
                                   run_id="bytes", block_rows=args.block_rows))
        seconds = round(time.time() - t0, 1)
        from xner_ray.store import schema as S

        stored_as = dict(S.STORED_AS)
        S.STORED_AS.clear()  # the previous layout: the teacher's float32 soft labels
        try:
            old_counts = label(LabelConfig(teachers=[model], inputs=inputs, store=str(old_store),
                                           run_id="bytes", block_rows=args.block_rows,
                                           rows_per_file=args.block_rows, local=True))
        finally:
            S.STORED_AS.update(stored_as)
        n_sent = sum(c["sentences"] for c in counts.values())
        if n_sent != sum(c["sentences"] for c in old_counts.values()):
            raise RuntimeError(f"not the same rows: {counts} vs {old_counts}")
        files0 = table_files(store)  # round 0's files: the per-round table below
        round0 = {t: sum(f.stat().st_size for f in fs) for t, fs in files0.items()}
        t1 = time.time()
        later = label(LabelConfig(teachers=[model], inputs=inputs, store=str(store),
                                  run_id="bytes", block_rows=args.block_rows, round=1,
                                  sentences_from=0))
        later_seconds = round(time.time() - t1, 1)
        if sum(c["sentences"] for c in later.values()) != n_sent:
            raise RuntimeError(f"round 1 labeled {later}, round 0 {counts}")
        round1 = {t: sum(f.stat().st_size for f in fs) - round0[t]
                  for t, fs in table_files(store).items()}
        rows = []
        old_files = table_files(old_store)
        for table, files in files0.items():
            before = old_files[table]
            b_new = sum(f.stat().st_size for f in files)
            b_old = sum(f.stat().st_size for f in before)
            rows.append({"table": table, "sentences": n_sent,
                         "files_before": len(before), "files_now": len(files),
                         "rows_per_row_group_before": int(np.median(row_groups(before))),
                         "rows_per_row_group_now": int(np.median(row_groups(files))),
                         "bytes_before": b_old, "bytes_now": b_new,
                         "mib_per_million_before": round(b_old / n_sent * 1e6 / 2**20, 1),
                         "mib_per_million_now": round(b_new / n_sent * 1e6 / 2**20, 1),
                         "ratio": round(b_old / b_new, 3)})
        tot_old = sum(r["bytes_before"] for r in rows)
        tot_new = sum(r["bytes_now"] for r in rows)
        rows.append({"table": "both", "sentences": n_sent,
                     "mib_per_million_before": round(tot_old / n_sent * 1e6 / 2**20, 1),
                     "mib_per_million_now": round(tot_new / n_sent * 1e6 / 2**20, 1),
                     "bytes_before": tot_old, "bytes_now": tot_new,
                     "ratio": round(tot_old / tot_new, 3)})
        result = {"benchmark": "store_bytes", "model": args.model, "data": args.data,
                  "block_rows": args.block_rows, "label_seconds": seconds, "counts": counts,
                  "rows": rows, "run": run_table(rows, round0, round1, args.rounds, n_sent),
                  "round1": {"bytes": round1, "label_seconds": later_seconds}, **meta}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "store_bytes_cpu.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "store_bytes_cpu.md").write_text(markdown(result))
    print(json.dumps(rows[-1]))
    return 0


def run_table(rows: list[dict], round0: dict, round1: dict, rounds: int, n_sent: int) -> dict:
    """Bytes of a run of ``rounds`` rounds, per table: before, every round wrote round 0's
    previous-layout files; now, round 0's files and then round 1's (no sentences) per round."""
    before = {r["table"]: r["bytes_before"] for r in rows if r["table"] != "both"}
    out = []
    for t in before:
        b, n = rounds * before[t], round0[t] + (rounds - 1) * round1[t]
        out.append({"table": t, "round1_bytes": round1[t], "bytes_before": b, "bytes_now": n,
                    "mib_per_million_before": round(b / n_sent * 1e6 / 2**20, 1),
                    "mib_per_million_now": round(n / n_sent * 1e6 / 2**20, 1),
                    "ratio": round(b / n, 3)})
    b, n = sum(r["bytes_before"] for r in out), sum(r["bytes_now"] for r in out)
    out.append({"table": "both", "bytes_before": b, "bytes_now": n,
                "mib_per_million_before": round(b / n_sent * 1e6 / 2**20, 1),
                "mib_per_million_now": round(n / n_sent * 1e6 / 2**20, 1),
                "ratio": round(b / n, 3)})
    return {"rounds": rounds, "rows": out}


def markdown(r: dict) -> str:
    lines = ["# Stored bytes per million sentences (before / now, same rows)", "",
             f"One labeling round of {r['rows'][-1]['sentences']:,} sentences "
             f"({', '.join(Path(p).parent.name + '/' + Path(p).name for p in r['data'])}) "
             f"through `label()` on Ray with teacher `{r['model']}`; the store as written now "
             "(float16 soft labels, files of up to 65,536 rows in one row group each, zstd) "
             "against the same sentences labeled again in-process in the previous layout (the "
             f"teacher's float32 soft labels, one file and row group per {r['block_rows']}-row "
             "block, zstd). MiB per million sentences = bytes / sentences x 10^6.", "",
             "| table | files before | files now | rows per row group before | now | "
             "MiB per 1M sentences before | now | before / now |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['table']} | {row.get('files_before', '')} | "
                     f"{row.get('files_now', '')} | {row.get('rows_per_row_group_before', '')} | "
                     f"{row.get('rows_per_row_group_now', '')} | "
                     f"{row['mib_per_million_before']} | {row['mib_per_million_now']} | "
                     f"{row['ratio']} |")
    run = r["run"]
    lines += ["", f"A run of {run['rounds']} rounds (RIKD's K): before, every round read its input "
              "again and wrote both tables (round 0's bytes above, each round); now round 1 "
              "labeled the sentences round 0 stored (`sentences_from: 0`) and wrote "
              f"{r['round1']['bytes']['sentences']} bytes of sentences; later rounds are taken "
              "to write what round 1 wrote (the same sentences, soft labels of the same shape).",
              "", "| table | round 1 bytes now | MiB per 1M sentences, whole run, before | now | "
              "before / now |", "|---|---|---|---|---|"]
    for row in run["rows"]:
        lines.append(f"| {row['table']} | {row.get('round1_bytes', '')} | "
                     f"{row['mib_per_million_before']} | {row['mib_per_million_now']} | "
                     f"{row['ratio']} |")
    lines += ["", "Target (issue 14): stored bytes per million sentences at least halved; the "
              "sentences table written once per run and language.", "", *footer(r)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
