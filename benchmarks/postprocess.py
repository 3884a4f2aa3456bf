"""Labeling post-processing: CPU time per sentence of the teacher stage's work after the forward
pass, the previous per-sentence implementation against the vectorised one, A/B interleaved in
one process.

    python benchmarks/postprocess.py                  # CoNLL-2002 es + nl dev, ~1-2 min
    python benchmarks/postprocess.py --reps 5 --results /tmp/x

Both paths start from the logits of their own forward batches (computed once, before the
clock, with a tiny random BERT: post-processing does not depend on the encoder's size, only on
the words and the 9 labels) and end with the stage's Arrow columns:

- old: ``decode.reference_postprocess`` (softmax, per-sentence float64 first-sub-word rows,
  the ensemble mix in Python, numpy Viterbi over the block padded to its longest sentence,
  ``score_batch`` on tag strings) + the Arrow columns as the stage built them;
- new: first-sub-word gather + softmax per forward batch (``read_words``) + ``TeacherStage.finish``
  (torch mix, the compiled CPU Viterbi, scores, one host copy, Arrow columns from flat
  buffers).

Rows: one teacher, and an ensemble of two teachers with a student (agreement). Writes
``<results>/postprocess_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def make_teachers(root: Path, n: int) -> list[str]:
    import torch

    from tests._tiny import make_tiny_model
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    base = make_tiny_model(root / "base")
    out = []
    for k in range(n):
        torch.manual_seed(k)
        d = root / f"t{k}"
        load_token_classifier(str(base), LABELS).save_pretrained(d, safe_serialization=True)
        load_tokenizer(str(base)).save_pretrained(d)
        out.append(str(d))
    return out


def blocks(paths: list[Path], block_rows: int) -> list[list]:
    """Blocks of (words, gold tags) of the CoNLL files."""
    from xner_ray.io.conll import read_conll

    sents = [(s.tokens, s.tags) for p in paths for s in read_conll(str(p))]
    return [sents[i:i + block_rows] for i in range(0, len(sents), block_rows)]


def teacher_like(logits, rows, cols, gold, rng, scale: float = 6.0, wrong: float = 0.05):
    """Logits of a trained-looking teacher: the random model's logits plus ``scale`` on each
    word's gold label at its first sub-word (``wrong`` of the words on a random label)."""
    import torch

    lab = np.where(rng.random(len(gold)) < wrong, rng.integers(0, len(LABELS), len(gold)), gold)
    out = logits.clone()
    out[torch.as_tensor(rows), torch.as_tensor(cols), torch.as_tensor(lab)] += scale
    return out


def old_columns(res: dict) -> dict:
    """The Arrow columns exactly as the stage built them before (strings, nested lists)."""
    import pyarrow as pa

    from xner_ray.labeling.stages import nested_probs

    return {"tags": pa.array(res["tags"], pa.list_(pa.string())),
            "probs": nested_probs(res["probs"], len(LABELS)),
            "confidence": pa.array(res["confidence"]), "f_conf": pa.array(res["f_conf"]),
            "n_entities": pa.array(res["n_entities"]), "length": pa.array(res["length"]),
            "agreement": pa.array(res["agreement"])}


def prepare(stage, table, gold=None, batch_size: int = 32, seed: int = 0):
    """Logits of both paths' forward batches for one block (before any clock); with ``gold``
    (flat label ids of the block's words) teacher-like logits instead of the random model's."""
    import torch

    rng = np.random.default_rng(seed)

    from xner_ray.labeling.stages import flat_list

    models = list(stage.models) + ([stage.student] if stage.student is not None else [])
    ids = table.column("input_ids").to_pylist()
    pos = table.column("word_pos").to_pylist()
    # the old stage's inputs were cut at the limit (the tokenizer kept the closing special)
    lim = stage.limit
    ids = [x if len(x) <= lim else x[:lim - stage.suffix] + x[len(x) - stage.suffix:] for x in ids]
    pos = [[q if q < lim - stage.suffix else -1 for q in p] for p in pos]
    # old: rows sorted by length, batch_size rows per forward, padded to the longest
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    word_start = np.concatenate([[0], np.cumsum([len(p) for p in pos])])
    old = []
    with torch.inference_mode():
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            width = max(len(ids[i]) for i in idx)
            x = torch.full((len(idx), width), stage.pad_id, dtype=torch.long)
            m = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                x[r, :len(ids[i])] = torch.tensor(ids[i])
                m[r, :len(ids[i])] = 1
            logits = [mm(input_ids=x, attention_mask=m).logits for mm in models]
            if gold is not None:
                r, c, w = zip(*[(r, q, word_start[i] + j) for r, i in enumerate(idx)
                                for j, q in enumerate(pos[i]) if q >= 0])
                logits = [teacher_like(lg, list(r), list(c), gold[list(w)], rng) for lg in logits]
            old.append((idx, logits))
        ids_flat, ids_off = flat_list(table.column("input_ids"))
        pos_flat, pos_off = flat_list(table.column("word_pos"))
        pieces, batches = stage.plan(ids_flat, ids_off, pos_flat, pos_off)
        new = []
        for _, x, a, g in batches:
            logits = [mm(input_ids=torch.from_numpy(x), attention_mask=torch.from_numpy(a)).logits
                      for mm in models]
            if gold is not None:
                logits = [teacher_like(lg, g[0], g[1], gold[g[2]], rng) for lg in logits]
            new.append((torch.from_numpy(g), logits))
    return {"old": old, "pos": pos, "new": new, "pieces": pieces,
            "lengths": np.diff(pos_off), "n_models": len(models),
            "table": table.drop_columns(["input_ids", "word_pos"])}


def run_old(stage, blk) -> None:
    from xner_ray.labeling.decode import reference_postprocess

    has_student = stage.student is not None
    k = len(stage.models)
    res = reference_postprocess([lg[:k] for _, lg in blk["old"]],
                                [[blk["pos"][i] for i in idx] for idx, _ in blk["old"]],
                                LABELS, stage.weights,
                                student_logits=[lg[k] for _, lg in blk["old"]] if has_student
                                else None)
    res["length"] = np.array([len(t) for t in res["tags"]], dtype=np.int32)
    old_columns(res)


def run_new(stage, blk):
    import torch

    from xner_ray.labeling.stages import read_words

    n = int(blk["lengths"].sum())
    out = torch.zeros((blk["n_models"], n, len(LABELS)), dtype=torch.float32)
    out[:, :, stage.o_index] = 1.0
    for g, logits in blk["new"]:
        for k, lg in enumerate(logits):
            read_words(out[k], lg, g)
    return stage.finish(blk["table"], out, blk["lengths"], blk["pieces"].n_windows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", default=[
        str(REPO.parent / "shared/data/conll2002-es/dev.txt"),
        str(REPO.parent / "shared/data/conll2002-nl/dev.txt")])
    ap.add_argument("--block-rows", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default=str(REPO / "benchmarks/results"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from xner_ray.labeling.stages import SubwordStage, TeacherStage

    tmp = Path(tempfile.mkdtemp(prefix="xner-pp-"))
    t_paths = make_teachers(tmp, 3)
    subword = SubwordStage(t_paths[0], 512)
    word_blocks = blocks([Path(p) for p in args.data], args.block_rows)
    n_sent = sum(len(b) for b in word_blocks)
    n_words = sum(len(w) for b in word_blocks for w, _ in b)
    rows = []
    configs = (("1 teacher, random model's logits", False, dict(teachers=t_paths[:1])),
               ("1 teacher, teacher-like logits", True, dict(teachers=t_paths[:1])),
               ("2 teachers + student, teacher-like logits", True,
                dict(teachers=t_paths[:2], weights=[3, 1], student=t_paths[2])))
    for name, like, kwargs in configs:
        stage = TeacherStage(kwargs.pop("teachers"), device="cpu", **kwargs)
        prepared = [prepare(stage, subword({"sent_id": [str(i) for i in range(len(b))],
                                            "tokens": [w for w, _ in b]}),
                            np.array([LABELS.index(t) for _, tags in b for t in tags])
                            if like else None) for b in word_blocks]
        times = {"old": [], "new": []}
        for fn in (run_old, run_new):  # untimed: numba's compile (or cache load), first calls
            fn(stage, prepared[0])
        for rep in range(args.reps):
            for path in (("old", "new") if rep % 2 == 0 else ("new", "old")):
                fn = run_old if path == "old" else run_new
                t0 = time.process_time()
                for blk in prepared:
                    fn(stage, blk)
                times[path].append((time.process_time() - t0) / n_sent * 1e6)
        stats = {p: {"min": min(v), "median": statistics.median(v), "max": max(v), "all": v}
                 for p, v in times.items()}
        ratio = [o / n for o, n in zip(times["old"], times["new"])]
        rows.append({"config": name, "us_per_sentence": stats,
                     "speedup": {"min": min(ratio), "median": statistics.median(ratio),
                                 "max": max(ratio)}})
        print(f"{name}: old {stats['old']['median']:.1f} us/sentence, new "
              f"{stats['new']['median']:.1f} us/sentence, speedup median "
              f"{statistics.median(ratio):.1f}x (min {min(ratio):.1f}, max {max(ratio):.1f})",
              flush=True)
    result = {"benchmark": "postprocess", "data": args.data, "sentences": n_sent,
              "words": n_words, "block_rows": args.block_rows, "reps": args.reps,
              "threads": args.threads, "clock": "process_time (CPU time of this process)",
              "rows": rows, **provenance()}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "postprocess_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Labeling post-processing CPU time per sentence (old vs new, one run)", "",
          f"{n_sent} sentences / {n_words} words "
          f"({', '.join(Path(d).parent.name + '/' + Path(d).name for d in args.data)}), "
          f"blocks of {args.block_rows}, {args.reps} reps A/B interleaved, "
          f"{args.threads} torch thread(s), CPU time (`process_time`). Both paths start from "
          "their forward batches' logits and end with the stage's Arrow columns; the encoder "
          "is not timed; one untimed call of each path first (numba compiles the new "
          "decoder once per process, or loads it from its cache). Logits: the tiny random "
          "BERT's (near-uniform: its per-word argmax is rarely valid IOB2) or "
          "teacher-like (those logits + 6 on the gold label, 5% of words on a random label).", "",
          "| config | old us/sentence (min / median / max) | new us/sentence (min / median / max) "
          "| speedup (min / median / max) |", "|---|---|---|---|"]
    for r in rows:
        o, n, s = r["us_per_sentence"]["old"], r["us_per_sentence"]["new"], r["speedup"]
        md.append(f"| {r['config']} | {o['min']:.1f} / {o['median']:.1f} / {o['max']:.1f} | "
                  f"{n['min']:.1f} / {n['median']:.1f} / {n['max']:.1f} | "
                  f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} |")
    md += ["", "Target (issue 14): new >= 5x lower per sentence.", ""] + footer(result)
    (out / "postprocess_cpu.md").write_text("\n".join(md))
    print(json.dumps({"rows": [{"config": r["config"], "speedup_median": r["speedup"]["median"]}
                               for r in rows]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
