"""Entity projection on the English-Spanish Bible (Li et al. 2021), three measurements:

1. alignment quality against the Bible's gold Strong's word links (span and word P/R/F1 of the
   projected target spans of linked source words) and on the silver PER/LOC entity links, for
   the similarity aligner (SimAlign-style, argmax and itermax) and the trained alignment model;
2. projection yield: pairs kept / dropped per filter reason (Sec. 4.3), from SQL over the store;
3. Spanish dev F1 (CoNLL-2002 es dev) of the model fine-tuned from the English teacher on the
   projected Bible data, gamma 0 vs 4 and frozen layers 0 vs 3, against direct transfer.

    python benchmarks/projection.py --teacher outputs/direct_transfer/cpu          # ~1 h, 2 CPUs
    python benchmarks/projection.py --teacher outputs/direct_transfer/cpu --smoke  # minutes

Verses are split by index: every 20th verse is held out for the alignment evaluation (never
used to train the aligner), the aligner's examples and the projected training data come from
two disjoint strided samples of the rest. The silver entity links are evaluated on every verse
outside the aligner's training sample. Writes benchmarks/results/projection_<budget>.{json,md}
(``--smoke``: into the output folder only; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _meta import footer, provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EVAL_EVERY = 20
BUDGETS = {
    "cpu": dict(eval_verses=1000, example_verses=3000, project_verses=4000, max_examples=6000,
                aligner_layers=6, aligner_epochs=2, aligner_max_steps=None, sim_layer=8,
                aligner_lr=1e-4,
                target_max_steps=None, source_dev_limit=500, es_dev_limit=None,
                entity_eval_limit=None, max_length=128),
    "smoke": dict(eval_verses=8, example_verses=24, project_verses=24, max_examples=60,
                  aligner_layers=2, aligner_epochs=1, aligner_max_steps=3, sim_layer=2,
                  aligner_lr=1e-4,
                  target_max_steps=2, source_dev_limit=20, es_dev_limit=20,
                  entity_eval_limit=12, max_length=64),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--teacher", required=True, help="English NER teacher (source NER + start of "
                                                    "target training)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--model", default="builtin:me5-small",
                   help="encoder of the similarity aligner and the alignment model")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script only")
    p.add_argument("--out", help="work folder (default outputs/projection/<budget>; replaced)")
    p.add_argument("--ablate-gold-links", action="store_true",
                   help="also train an aligner without the gold-link examples (~+12 min)")
    for key, value in BUDGETS["cpu"].items():
        p.add_argument("--" + key.replace("_", "-"), type=float if key.endswith("lr") else int,
                       default=None, help=f"override (cpu budget: {value})")
    p.add_argument("--target-aligner", choices=("model", "similarity"), default="model",
                   help="whose projections the Spanish models learn (paper: the model)")
    args = p.parse_args(argv)
    meta = provenance()  # the revision and state the run starts from
    args.teacher = str(Path(args.teacher).resolve())  # Ray Train workers run elsewhere
    tag = "smoke" if args.smoke else "cpu"
    sizes = {k: (getattr(args, k) if getattr(args, k) is not None else v)
             for k, v in BUDGETS[tag].items()}
    out = Path(args.out or REPO / "outputs" / "projection" / tag).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = Path(args.data_dir)
    bible = data / "opus-bible-en-es"
    result = run(args, sizes, out, bible, data)
    result.update(budget=tag, sizes=sizes, **meta)
    dest = (out if args.smoke else REPO / "benchmarks" / "results") / f"projection_{tag}"
    dest.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    dest.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {dest}.json and .md")
    return 0


# -- data subsets ---------------------------------------------------------------------------------

def split_verses(n: int, sizes: dict) -> dict[str, list[int]]:
    """0-based verse indices: held-out eval (every 20th), then two disjoint strided samples of
    the rest for the aligner's examples and for projection."""
    eval_pool = list(range(0, n, EVAL_EVERY))
    rest = [i for i in range(n) if i % EVAL_EVERY]
    ex_step = max(1, len(rest) // max(1, sizes["example_verses"]))
    examples = rest[::ex_step][: sizes["example_verses"]]
    taken = set(examples)
    left = [i for i in rest if i not in taken]
    pr_step = max(1, len(left) // max(1, sizes["project_verses"]))
    project = left[pr_step // 2::pr_step][: sizes["project_verses"]]
    ev_step = max(1, len(eval_pool) // max(1, sizes["eval_verses"]))
    return {"eval": eval_pool[::ev_step][: sizes["eval_verses"]], "examples": examples,
            "project": project}


def write_subset(bible: Path, indices: list[int], dest: Path) -> Path:
    """Moses files + ids + links.jsonl of the chosen verses (same line = same verse)."""
    dest.mkdir(parents=True, exist_ok=True)
    keep = set(indices)
    for src, name in (("bible.en-es.en", "bible.en-es.en"), ("bible.en-es.es", "bible.en-es.es"),
                      ("bible.en-es.ids", "bible.en-es.ids"), ("links.jsonl", "links.jsonl")):
        with open(bible / src, encoding="utf-8") as f, open(dest / name, "w", encoding="utf-8") as g:
            for i, line in enumerate(f):
                if i in keep:
                    g.write(line)
    return dest


def es_dev(data: Path, limit, out: Path) -> str:
    path = data / "conll2002-es" / "dev.txt"
    if not limit:
        return str(path)
    blocks = path.read_text(encoding="utf-8").strip().split("\n\n")[:limit]
    small = out / "es.dev.small.txt"
    small.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return str(small)


# -- alignment quality --------------------------------------------------------------------------

def read_eval(subset: Path, field: str, trim_names: bool, limit=None) -> list[dict]:
    """Per verse: words and the gold target spans per distinct source query (its words)."""
    from xner_ray.methods.projection.corpus import ParallelSpec, iter_pairs, links_to_words
    from xner_ray.methods.projection.examples import trim_to_names
    from xner_ray.records import RejectSink

    records = [json.loads(l) for l in open(subset / "links.jsonl", encoding="utf-8")]
    spec = ParallelSpec(lang="es", path=str(subset / "bible"))
    out = []
    for pair in iter_pairs(spec, RejectSink(), 2048):
        links = links_to_words(pair, {"links": records[pair.line - 1].get(field) or []})
        queries: dict[tuple, dict] = {}
        for l in links:
            q = tuple(pair.src.tokens[l["src_start"]:l["src_end"]])
            span = (l["tgt_start"], l["tgt_end"])
            entry = queries.setdefault(q, {"mentions": [], "raw": set(), "gold": set()})
            entry["mentions"].append((l["src_start"], l["src_end"]))
            entry["raw"].add(span)
            entry["gold"].add(trim_to_names(pair.tgt.tokens, span, q) if trim_names else span)
        if queries:
            out.append({"src": pair.src.tokens, "tgt": pair.tgt.tokens, "queries": queries})
        if limit and len(out) >= limit:
            break
    return out


def _prf(tp: int, n_pred: int, n_gold: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "predicted": n_pred, "gold": n_gold}


def score(verses: list[dict], predictions: list[dict]) -> dict:
    """Exact span P/R/F1 against ``gold`` spans; word P/R/F1 against the raw linked words."""
    tp = n_pred = n_gold = wtp = wpred = wgold = 0
    for verse, pred in zip(verses, predictions):
        for q, entry in verse["queries"].items():
            spans = set(pred.get(q, ()))
            tp += len(spans & entry["gold"])
            n_pred += len(spans)
            n_gold += len(entry["gold"])
            pw = {j for a, b in spans for j in range(a, b)}
            gw = {j for a, b in entry["raw"] for j in range(a, b)}
            wtp, wpred, wgold = wtp + len(pw & gw), wpred + len(pw), wgold + len(gw)
    return {"queries": sum(len(v["queries"]) for v in verses), "span": _prf(tp, n_pred, n_gold),
            "word": _prf(wtp, wpred, wgold)}


def similarity_predictions(aligner, verses: list[dict], method: str, max_gap: int) -> list[dict]:
    from xner_ray.methods.projection.aligner import spans_from_words, word_alignment

    s_emb = aligner.embed([v["src"] for v in verses])
    t_emb = aligner.embed([v["tgt"] for v in verses])
    preds = []
    for v, s, t in zip(verses, s_emb, t_emb):
        al = word_alignment(s, t, len(v["src"]), len(v["tgt"]), method)
        preds.append({q: {sp for a, b in e["mentions"]
                          for sp in spans_from_words(al.targets_of(range(a, b)), v["tgt"], max_gap)}
                      for q, e in v["queries"].items()})
    return preds


def model_predictions(model, verses: list[dict]) -> list[dict]:
    rows = [(i, q) for i, v in enumerate(verses) for q in v["queries"]]
    found = model.find([list(q) for _, q in rows], [verses[i]["tgt"] for i, _ in rows])
    preds: list[dict] = [{} for _ in verses]
    for (i, q), spans in zip(rows, found):
        preds[i][q] = {(s.start, s.end) for s in spans}
    return preds


def alignment_quality(sets: dict, sim, models: dict, max_gap: int) -> dict:
    out = {}
    for name, verses in sets.items():
        t0 = time.time()
        res = {f"similarity_{m}": score(verses, similarity_predictions(sim, verses, m, max_gap))
               for m in ("argmax", "itermax")}
        for model_name, model in models.items():
            res[model_name] = score(verses, model_predictions(model, verses))
        out[name] = {"verses": len(verses), "seconds": round(time.time() - t0, 1), **res}
        print(f"[bench] alignment quality {name}: "
              + json.dumps({k: v["span"]["f1"] for k, v in res.items()}), flush=True)
    return out


# -- the run --------------------------------------------------------------------------------------

def run(args, sizes: dict, out: Path, bible: Path, data: Path) -> dict:
    import torch

    from xner_ray.cluster import init_ray
    from xner_ray.evaluate import evaluate_model
    from xner_ray.methods.projection.job import ProjectConfig, train_target
    from xner_ray.methods.projection.aligner import SimilarityAligner
    from xner_ray.methods.projection.corpus import ParallelSpec
    from xner_ray.methods.projection.model import AlignmentModel, train_aligner
    from xner_ray.methods.projection.pipeline import (ExampleConfig, ProjectionConfig,
                                              build_example_file, project)
    from xner_ray.sqlshell import run_sql
    from xner_ray.store import Store
    from xner_ray.train.loop import TrainConfig

    started = time.time()
    torch.set_num_threads(2)
    n = sum(1 for _ in open(bible / "bible.en-es.en", encoding="utf-8"))
    split = split_verses(n, sizes)
    subsets = {k: write_subset(bible, v, out / "data" / k) for k, v in split.items()}
    train_verses = set(split["examples"])
    entity_pool = [i for i in range(n) if i not in train_verses]
    subsets["entities"] = write_subset(bible, entity_pool, out / "data" / "entities")
    init_ray()
    sim_spec = {"model": args.model, "layer": sizes["sim_layer"], "method": "argmax", "max_gap": 1}
    dev = es_dev(data, sizes["es_dev_limit"], out)
    corpus = {k: ParallelSpec(lang="es", path=str(subsets[k] / "bible"),
                              links=str(subsets[k] / "links.jsonl"), dev=dev) for k in subsets}

    # the alignment model: examples from the corpus itself (Sec. 4.2 with our three sources);
    # --ablate-gold-links adds one trained without the gold links (what any corpus has)
    variants = {"alignment_model": ["simalign", "identical", "gold_links"]}
    if args.ablate_gold_links:
        variants["alignment_model_no_gold_links"] = ["simalign", "identical"]
    aligner_info = {}
    for name, sources in variants.items():
        t0 = time.time()
        folder = out / name
        built = build_example_file(
            [corpus["examples"]], ExampleConfig(sources=sources, max_examples=sizes["max_examples"]),
            folder / "examples.parquet", similarity=sim_spec,
            knobs={"max_length": sizes["max_length"]})
        train_aligner(TrainConfig(out=str(folder), model=args.model, layers=sizes["aligner_layers"],
                                  epochs=sizes["aligner_epochs"],
                                  max_steps=sizes["aligner_max_steps"],
                                  batch_size=16, lr=sizes["aligner_lr"], freeze_embeddings=True,
                                  max_length=sizes["max_length"]),
                      folder / "examples.parquet", name=f"bench-{name}")
        shutil.rmtree(folder / "_checkpoints", ignore_errors=True)  # the best is in folder
        best = json.loads((folder / "train_summary.json").read_text())["best"]
        aligner_info[name] = {"sources": sources, "examples": built, "dev_span_f1": best["dev_f1"],
                              "seconds": round(time.time() - t0, 1)}

    # 1. alignment quality
    sim = SimilarityAligner(args.model, layer=sizes["sim_layer"], method="argmax", threads=2,
                            max_length=sizes["max_length"])
    models = {name: AlignmentModel(str(out / name), threads=2, max_length=sizes["max_length"])
              for name in variants}
    sets = {"strong_links": read_eval(subsets["eval"], "links", trim_names=False),
            "entity_links": read_eval(subsets["entities"], "entities", trim_names=True,
                                      limit=sizes["entity_eval_limit"])}
    quality = alignment_quality(sets, sim, models, max_gap=1)
    del sim, models

    # 2. projection yield, per aligner, from SQL
    store = Store(out / "store")
    aligners = {"similarity": {"kind": "similarity", **sim_spec},
                "model": {"kind": "model", "path": str(out / "alignment_model")}}
    projection = {}
    for name, spec in aligners.items():
        t0 = time.time()
        project(ProjectionConfig(corpora=[corpus["project"]], teacher=args.teacher, aligner=spec,
                                 store=str(store.root), run_id=f"bible-{name}",
                                 max_length=sizes["max_length"]), store)
        projection[name] = {"seconds": round(time.time() - t0, 1)}
    yield_rows = run_sql(store, "projection_status", output="arrow").to_pylist()

    # 3. Spanish dev F1: direct transfer vs fine-tuned on one aligner's projections
    direct = evaluate_model(args.teacher, corpus["project"].dev, lang="es")
    target = {}
    for gamma in (0.0, 4.0):
        for freeze in (0, 3):
            key = f"gamma{gamma:g}_freeze{freeze}"
            cfg = ProjectConfig(
                run_id=f"bible-{args.target_aligner}", store=str(store.root),
                out=str(out / "targets"),
                source_dev=str(data / "conll2003-en" / "dev.txt"), corpora=[corpus["project"]],
                teacher=args.teacher, aligner="model",
                alignment_model=str(out / "alignment_model"),
                gamma=gamma, freeze_layers=freeze,
                target={"epochs": 1, "batch_size": 16, "lr": 5e-5, "freeze_embeddings": True,
                        "max_length": sizes["max_length"], "dev_limit": sizes["source_dev_limit"],
                        "max_steps": sizes["target_max_steps"]})
            t0 = time.time()
            target[key] = train_target(cfg, store, corpus["project"], args.teacher,
                                       out / "targets" / key)
            target[key]["seconds"] = round(time.time() - t0, 1)
            shutil.rmtree(out / "targets" / key / "_checkpoints", ignore_errors=True)
            print(f"[bench] {key}: es dev F1 {target[key]['target_dev']['f1']:.4f}", flush=True)
    return {"benchmark": "projection", "teacher": args.teacher, "model": args.model,
            "similarity": sim_spec, "split": {k: len(v) for k, v in split.items()},
            "entity_pool_verses": len(entity_pool), "aligner": aligner_info,
            "alignment_quality": quality, "projection": projection, "yield": yield_rows,
            "target_aligner": args.target_aligner,
            "direct_transfer": {k: direct[k] for k in ("precision", "recall", "f1", "n_sentences")},
            "target": target, "seconds": round(time.time() - started, 1)}


# -- report ---------------------------------------------------------------------------------------

def markdown(r: dict) -> str:
    s = r["sizes"]
    main = r["aligner"]["alignment_model"]
    lines = [f"# Entity projection on the Bible, en -> es ({r['budget']} budget)", "",
             f"Teacher (source NER and start of target training): `{r['teacher']}`. Encoder of "
             f"both aligners: `{r['model']}`; similarity aligner at layer {s['sim_layer']}, "
             f"alignment model cut to {s['aligner_layers']} layers, {s['aligner_epochs']} "
             f"epoch(s) at lr {s['aligner_lr']:g} (paper: 3 epochs on 30K at 5e-5) on "
             f"{main['examples']['counts'].get('examples')} examples "
             f"(held-out example span F1 {main['dev_span_f1']:.4f}).",
             f"Subsampled: {r['split']['eval']} held-out verses (every {EVAL_EVERY}th) for the "
             f"Strong's-link evaluation, {r['split']['examples']} verses for the aligner's "
             f"examples, {r['split']['project']} verses projected for target training; silver "
             f"entity links evaluated on the {r['alignment_quality']['entity_links']['verses']} "
             f"verses that have them among the {r['entity_pool_verses']} outside the aligner's "
             f"examples; max {s['max_length']} sub-words per input.", "",
             "## 1. Alignment quality", "",
             "Span = exact match of projected target spans (entity links: gold trimmed to the "
             "name, the links include prefixed words such as `era Pisón`); word = target words "
             "against the raw linked words.", "",
             "| links | aligner | queries | span P | span R | span F1 | word P | word R | "
             "word F1 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, res in r["alignment_quality"].items():
        for aligner, m in res.items():
            if isinstance(m, dict):
                lines.append(f"| {name} | {aligner} | {m['queries']} | {m['span']['precision']} "
                             f"| {m['span']['recall']} | {m['span']['f1']} | "
                             f"{m['word']['precision']} | {m['word']['recall']} | "
                             f"{m['word']['f1']} |")
    lines += [""] + [f"Examples of `{name}` (positive/negative:source:kind): `"
                     + json.dumps(info["examples"]["counts"]) + "`"
                     for name, info in r["aligner"].items()] + ["",
              "## 2. Projection yield (sql/projection_status.sql)", "",
              "| run | status | pairs | share | source entities | projected spans | "
              "avg alignment score |", "|---|---|---|---|---|---|---|"]
    for row in r["yield"]:
        score = row["avg_alignment_score"]
        lines.append(f"| {row['run_id']} | {row['status']} | {row['pairs']} | "
                     f"{row['share']:.3f} | {row['src_entities']} | {row['projected_spans']} | "
                     + (f"{score:.3f}" if score is not None else "-") + " |")
    d = r["direct_transfer"]
    lines += ["", "## 3. Spanish dev F1 (CoNLL-2002 es dev)", "",
              "| model | training pairs | P | R | F1 |", "|---|---|---|---|---|",
              f"| direct transfer (teacher) | - | {d['precision']:.4f} | {d['recall']:.4f} | "
              f"{d['f1']:.4f} |"]
    for key, t in r["target"].items():
        dev = t["target_dev"]
        pairs = t["train_pairs"]["with_entities"] + t["train_pairs"]["empty"]
        lines.append(f"| fine-tuned on {r['target_aligner']} projections, {key} | {pairs} | "
                     f"{dev['precision']:.4f} | "
                     f"{dev['recall']:.4f} | {dev['f1']:.4f} |")
    lines += ["", "The Bible is far from CoNLL's news: its entities are mostly people and places "
              "of antiquity, its language archaic (1909 Spanish, KJV English). Fine-tuning on it "
              "can lose F1 on news even when the projections are right.", "",
              f"Total {r['seconds']} s.", "", *footer(r)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
