"""Labeling throughput: the Ray Data pipeline (``xner_ray.labeling.pipeline.label``) against a
plain single-process loop over the same model, the same blocks and the same work (read with
``read_unlabeled``, ``SubwordStage`` + ``TeacherStage`` on blocks of ``block_rows``, the same
selector, written with the store's ``RoundWriter``), at several corpus sizes, A/B interleaved.

    # full size on CPU (~25-30 min on 2 quiet cores; ~50 min with another job running):
    python benchmarks/labeling_throughput.py
    # = --model builtin:me5-small --layers 4 --sizes 2000,8000,32000 --reps 3
    # on a GPU machine the same command keeps all 12 layers and adds the HF pipeline row
    # smoke test (~1.5 min): tiny random BERT, results kept out of benchmarks/results
    python benchmarks/labeling_throughput.py --model tiny --sizes 200,400 --reps 1 \\
        --results /tmp/xner-bench

Sentences are CoNLL-2002 Spanish train read as unlabeled text (tags ignored); a size larger
than the file cycles it. On a GPU machine the Hugging Face ``pipeline("token-classification",
aggregation_strategy="first")`` runs on the same GPU and sentences as a third row.

Writes ``<results>/labeling_throughput_<cpu|gpu>.{json,md}`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import footer, provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/_tiny.py for --model tiny
LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
RUN_ID, LANG = "bench", "es"


# -- inputs ----------------------------------------------------------------------------------------
def conll_blocks(path: Path) -> list[str]:
    """The sentence blocks of a CoNLL file, verbatim (so both paths read identical input)."""
    text = path.read_text(encoding="utf-8")
    return [b.strip("\n") for b in text.split("\n\n") if b.strip()]


def write_corpus(blocks: list[str], n: int, out: Path) -> Path:
    """``n`` sentences, cycling ``blocks``; still CoNLL so ``read_unlabeled`` sniffs it as such
    and drops the tags (the papers label target text without its gold tags)."""
    with out.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(blocks[i % len(blocks)] + "\n\n")
    return out


def count_corpus(path: Path, max_words: int) -> tuple[int, int]:
    """(sentences, words) as the pipeline's reader sees them -- the denominator of words/s."""
    from xner_ray.io.text import read_unlabeled

    n = words = 0
    for s in read_unlabeled(str(path), lang=LANG, max_words=max_words):
        n += 1
        words += len(s.tokens)
    return n, words


def prepare_model(spec: str, layers, seed: int, work: Path) -> Path:
    """A model folder with a NER head: ``tiny`` (tests/_tiny.py), ``builtin:...`` (a truncated
    encoder + seeded random head: throughput does not depend on the head being trained), or a
    folder given as is."""
    import torch

    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    if spec != "tiny" and not spec.startswith("builtin:"):
        return Path(spec)
    if spec == "tiny":
        out = work / f"tiny-seed{seed}-head"
    else:
        out = work / f"{spec.split(':', 1)[1]}-L{layers or 'all'}-seed{seed}-head"
    if (out / "config.json").exists():
        return out
    base = spec
    kwargs = {"layers": layers}
    if spec == "tiny":
        from tests._tiny import make_tiny_model

        base, kwargs = str(make_tiny_model(work / "tiny-base")), {}
    torch.manual_seed(seed)
    load_token_classifier(base, LABELS, **kwargs).save_pretrained(out, safe_serialization=True)
    load_tokenizer(base).save_pretrained(out)
    return out


# -- the two contenders (and the HF pipeline on GPU) -----------------------------------------------
def label_config(model: Path, corpus: Path, store: Path, args):
    from xner_ray.labeling.pipeline import LabelConfig

    actors, threads = args.ray_layout if args.ray_layout else (None, None)
    return LabelConfig(teachers=[str(model)], inputs=[{"path": str(corpus), "lang": LANG}],
                       store=str(store), run_id=RUN_ID, selector=args.selector,
                       batch_size=args.batch_size, block_rows=args.block_rows,
                       max_length=args.max_length, num_actors=actors, threads=threads)


def run_ray(model: Path, corpus: Path, store: Path, args) -> dict:
    from xner_ray.labeling.pipeline import label

    cfg = label_config(model, corpus, store, args)
    t0 = time.perf_counter()
    summary = label(cfg)
    return {"seconds": time.perf_counter() - t0, "sentences": summary[LANG]["sentences"]}


def run_plain(model: Path, corpus: Path, store: Path, args) -> dict:
    """What one would write without Ray: one process, the same stages, blocks and writer --
    the engine's in-process runner (``LabelConfig.local``) over the same plan.

    Timed from loading the stages (model load included, as it is inside the Ray time)."""
    from xner_ray.labeling.pipeline import label

    cfg = label_config(model, corpus, store, args)
    cfg.local, cfg.threads = True, args.plain_threads
    t0 = time.perf_counter()
    summary = label(cfg)
    return {"seconds": time.perf_counter() - t0, "sentences": summary[LANG]["sentences"]}


def run_hf(model: Path, corpus: Path, args) -> dict:
    """The Hugging Face pipeline a user would otherwise pick, on the same GPU and sentences.

    Not the same work: it re-tokenizes the words joined by spaces, returns entity spans (no
    soft labels, scores or Viterbi) and writes nothing. Sentences are read before the clock."""
    import torch
    from transformers import pipeline as hf_pipeline

    from xner_ray.io.text import read_unlabeled

    texts = [" ".join(s.tokens) for s in read_unlabeled(str(corpus), lang=LANG)]
    cuda = torch.cuda.is_available()
    torch.set_num_threads(args.plain_threads)
    t0 = time.perf_counter()
    pipe = hf_pipeline("token-classification", model=str(model), aggregation_strategy="first",
                       device=0 if cuda else -1, dtype=torch.bfloat16 if cuda else None)
    first, n = None, 0
    # A generator streams results (a list returns them all at the end; the pipeline's
    # is_split_into_words=True yields nothing for a generator in transformers 5.23).
    for _ in pipe((t for t in texts), batch_size=args.batch_size):
        first = first or time.perf_counter()
        n += 1
    return {"seconds": time.perf_counter() - t0,
            "sentences": n}


def same_tags(ray_store: Path, plain_store: Path) -> float:
    """Share of the plain loop's sentences whose Viterbi tags the Ray run reproduced (a check
    that both did the same work; threads can move a near-tie, so not always exactly 1)."""
    from xner_ray.store import Store

    def tags(root):
        t = Store(str(root)).read("pseudo_labels", run_id=RUN_ID, lang=LANG)
        return dict(zip(t.column("sent_id").to_pylist(), t.column("tags").to_pylist()))

    a, b = tags(ray_store), tags(plain_store)
    return sum(a.get(k) == v for k, v in b.items()) / max(1, len(b))


# -- driver ----------------------------------------------------------------------------------------
def measure(args, model: Path, tmp: Path, blocks: list[str], hf: bool) -> dict:
    sizes = {}
    for size in args.sizes:
        corpus = write_corpus(blocks, size, tmp / f"corpus-{size}.conll")
        n, words = count_corpus(corpus, args.max_words)
        reps = {"ray": [], "plain": [], "hf": []}
        check = None
        for rep in range(args.reps):  # A, B, A, B: drift on a shared machine hits both alike
            ray_store, plain_store = tmp / f"ray-{size}-{rep}", tmp / f"plain-{size}-{rep}"
            reps["ray"].append(run_ray(model, corpus, ray_store, args))
            reps["plain"].append(run_plain(model, corpus, plain_store, args))
            if hf:
                reps["hf"].append(run_hf(model, corpus, args))
            if rep == 0:
                check = same_tags(ray_store, plain_store)
            _check_and_log(reps, n, f"size {size} rep {rep}")
            _rmtree(ray_store), _rmtree(plain_store)
        sizes[str(size)] = summarize(n, words, reps, check)
    return sizes


def _check_and_log(reps: dict, n: int, where: str) -> None:
    for side in ("ray", "plain", "hf"):
        if reps[side]:
            r = reps[side][-1]
            if side != "hf" and r["sentences"] != n:  # a different count: not the same work
                raise RuntimeError(f"{side} labeled {r['sentences']} of {n} sentences")
            print(f"[bench] {where} {side}: {r['seconds']:.1f} s ({n / r['seconds']:.0f} sent/s)",
                  flush=True)


def summarize(n: int, words: int, reps: dict, check: float) -> dict:
    def side(runs):
        if not runs:
            return None
        secs = [r["seconds"] for r in runs]
        return {"seconds": [round(s, 2) for s in secs],
                "sentences_per_s": round(n / statistics.median(secs), 1),
                "words_per_s": round(words / statistics.median(secs), 1)}

    ratios = [p["seconds"] / r["seconds"] for r, p in zip(reps["ray"], reps["plain"])]
    out = {"sentences": n, "words": words, "ray": side(reps["ray"]),
           "plain": side(reps["plain"]), "hf_pipeline": side(reps["hf"]),
           "throughput_ratio_ray_over_plain": {"min": round(min(ratios), 3),
                                    "median": round(statistics.median(ratios), 3),
                                    "max": round(max(ratios), 3)},
           "same_tags_share": round(check, 4)}
    if reps["hf"]:
        hf = [p["seconds"] / h["seconds"] for h, p in zip(reps["hf"], reps["plain"])]
        out["ratio_hf_over_plain_median"] = round(statistics.median(hf), 3)
    return out


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def start_ray() -> dict:
    """Ray's fixed cost, paid once per process (not inside any per-run time)."""
    import ray

    from xner_ray.cluster import init_ray

    t0 = time.perf_counter()
    init_ray()
    started = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False  # keep the log readable
    return {"init_ray_s": round(started, 2), "cluster": {k: v for k, v in
                                                         ray.cluster_resources().items()
                                                         if k in ("CPU", "GPU", "memory",
                                                                  "object_store_memory")}}


def actor_layout(model: Path, tmp: Path, args) -> dict:
    """The stage pools of the Ray path (warm tasks or actors), read off the plan ``label()``
    builds."""
    from xner_ray.cluster import LIGHT_CPUS
    from xner_ray.engine import stage_names
    from xner_ray.labeling.pipeline import _teacher_resources, build_plan

    cfg = label_config(model, tmp / "x.conll", tmp / "layout", args)
    plan = build_plan(cfg, [], sink=None, rejects=None)
    pools = []
    for s in plan.stages:
        pools.append({"stages": stage_names(s), "num_cpus": s.num_cpus,
                      "num_gpus": s.num_gpus, "actors": [s.min_actors, s.max_actors],
                      "workers": "warm tasks" if s.runs_warm else "actors"})
    return {"read_tasks": {"num_cpus": plan.read_cpus, "per": "input file"},
            "pools": pools, "write_tasks": {"num_cpus": LIGHT_CPUS},
            "teacher_stage": _teacher_resources(cfg)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="builtin:me5-small",
                   help="a model folder with a NER head, builtin:NAME (truncated + random head) "
                        "or 'tiny' (the tests' tiny BERT + random head)")
    p.add_argument("--layers", type=int, default=None,
                   help="encoder layers kept for builtin: (default: 4 on CPU, all on GPU)")
    p.add_argument("--sizes", default="2000,8000,32000",
                   type=lambda s: [int(x) for x in s.split(",")], help="corpus sizes, sentences")
    p.add_argument("--reps", type=int, default=3, help="A/B repetitions per size")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    p.add_argument("--block-rows", type=int, default=256, help="sentences per stage call")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-words", type=int, default=2048)
    p.add_argument("--selector", default="keep_all",
                   help="a row-scope selector spec (the plain loop has no set-scope pass)")
    p.add_argument("--plain-threads", type=int, default=os.cpu_count(),
                   help="torch threads of the plain loop (default: all cores, torch's default)")
    p.add_argument("--ray-layout", default=None, metavar="ACTORSxTHREADS",
                   type=lambda v: tuple(int(x) for x in v.lower().split("x")),
                   help="teacher actors x torch threads of the Ray path (default: "
                        "cluster.inference_layout's choice, 2x1 on 2 CPUs)")
    p.add_argument("--hf", choices=("auto", "on", "off"), default="auto",
                   help="HF pipeline row: auto = only when a GPU is present")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed first (cold) job of each path")
    p.add_argument("--data", default=str(REPO.parent / "shared/data/conll2002-es/train.txt"))
    p.add_argument("--work", default=str(REPO / "outputs" / "bench_labeling"),
                   help="where the built model is cached")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    meta = provenance()  # the revision and state the run starts from
    if args.reps < 1 or min(args.sizes) < 1:
        p.error("--reps and every size must be >= 1")
    from xner_ray.selectors import make_selector

    if make_selector(args.selector).scope != "row":
        p.error("--selector must be row-scope (e.g. keep_all, confidence:0.9)")

    import torch

    device = "gpu" if torch.cuda.is_available() else "cpu"
    hf = args.hf == "on" or (args.hf == "auto" and device == "gpu")
    # The CPU budget truncates the encoder; a GPU runs the papers' full depth (BENCHMARKS.md).
    args.layers = args.layers or (None if device == "gpu" else 4)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_model = time.perf_counter()
    model = prepare_model(args.model, args.layers, args.seed, work)
    print(f"[bench] model {model} ready in {time.perf_counter() - t_model:.1f} s", flush=True)
    blocks = conll_blocks(Path(args.data))
    fixed = start_ray()
    with tempfile.TemporaryDirectory(prefix="xner-bench-") as tmp_:
        tmp = Path(tmp_)
        layout = actor_layout(model, tmp, args)
        cold = warmup(args, model, tmp, blocks) if not args.no_warmup else None
        t0 = time.perf_counter()
        sizes = measure(args, model, tmp, blocks, hf)
        total = time.perf_counter() - t0
    result = {"benchmark": "labeling_throughput", "device": device,
              "budget": {"model": args.model, "model_dir": str(model),
                         "layers": (args.layers or "all") if args.model.startswith("builtin:")
                         else None,
                         "sizes": args.sizes, "reps": args.reps, "batch_size": args.batch_size,
                         "block_rows": args.block_rows, "max_length": args.max_length,
                         "selector": args.selector, "plain_threads": args.plain_threads,
                         "ray_layout": "x".join(map(str, args.ray_layout)) if args.ray_layout
                         else "auto",
                         "data": args.data, "hf_pipeline": hf},
              "ray_fixed_cost": {**fixed, "cold_first_job": cold}, "actor_layout": layout,
              "sizes": sizes, "measure_seconds": round(total, 1), **meta}
    out = Path(args.results) / f"labeling_throughput_{device}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out}.json and .md")
    return 0


def warmup(args, model: Path, tmp: Path, blocks: list[str]) -> dict:
    """One untimed-for-the-table job per path on a small corpus: the first Ray job of a process
    pays one-off costs (Ray Data start, first worker imports) that later jobs do not."""
    n = min(256, min(args.sizes))
    corpus = write_corpus(blocks, n, tmp / "warmup.conll")
    ray_r = run_ray(model, corpus, tmp / "warm-ray", args)
    plain_r = run_plain(model, corpus, tmp / "warm-plain", args)
    _rmtree(tmp / "warm-ray"), _rmtree(tmp / "warm-plain")
    print(f"[bench] cold first job on {n} sentences: ray {ray_r['seconds']:.1f} s, "
          f"plain {plain_r['seconds']:.1f} s", flush=True)
    return {"sentences": n, "ray_s": round(ray_r["seconds"], 2),
            "plain_s": round(plain_r["seconds"], 2)}


def markdown(r: dict) -> str:
    lines = [*_md_header(r), *_md_table(r), "", *_md_notes(r), "",
             *footer(r)]
    return "\n".join(lines)


def _md_header(r: dict) -> list[str]:
    b, f, layout = r["budget"], r["ray_fixed_cost"], r["actor_layout"]
    depth = ""
    if b["layers"]:
        depth = " (" + ("all" if b["layers"] == "all" else f"bottom {b['layers']}") + \
            " layers, seeded random head)"
    cold = f["cold_first_job"]
    return [
        f"# Labeling throughput ({r['device']})", "",
        "Ray Data pipeline (`label()`, a store in a temp dir) vs a plain single-process loop over "
        f"the same model, blocks and work (same stages, selector `{b['selector']}`, same "
        "sink: the engine's in-process runner). Sentences: CoNLL-2002 es train read as "
        "unlabeled text, cycled when a "
        "size exceeds the file. Times include building the stages (model loading) on both "
        "sides; the Ray time also includes starting its workers. After the untimed warm-up "
        "job, both sides keep their processes: the plain loop its own (imports, cached "
        "tokenizer), Ray its warm workers (CPU stages; `engine.Stage.warm`).", "",
        f"Budget: model `{b['model']}`{depth}, batch {b['batch_size']}, block_rows "
        f"{b['block_rows']}, max_length {b['max_length']}, plain-loop torch threads "
        f"{b['plain_threads']}; {b['reps']} repetitions per size, interleaved Ray, plain"
        + (", HF" if b["hf_pipeline"] else "") + f"; measuring took {r['measure_seconds']} s.", "",
        (f"Stage pools (in order): {layout['pools']}; teacher {layout['teacher_stage']}; "
         f"read tasks {layout['read_tasks']}, write tasks {layout['write_tasks']} "
         f"(layout: {b.get('ray_layout', 'auto')})." if "pools" in layout else
         f"Actor layout: teacher {layout['teacher_stage']}, subword stage "
         f"{layout['subword_stage']}, read tasks {layout['read_tasks']}"
         + (f", select stage {layout['select_stage']}, write tasks {layout['write_tasks']}"
            if "select_stage" in layout else "") + f" (layout: {b.get('ray_layout', 'auto')})."),
        f"Ray fixed cost (once per process, not in the table): `init_ray()` {f['init_ray_s']} s "
        f"on {f['cluster']}."
        + (f" Cold first job ({cold['sentences']} sentences, untimed warm-up): Ray "
           f"{cold['ray_s']} s, plain {cold['plain_s']} s." if cold else ""), "",
    ]


def _md_table(r: dict) -> list[str]:
    lines = ["| sentences | words | path | sentences/s (median) | words/s (median) "
             "| ray/plain throughput (min / median / max) | same tags |",
             "|---|---|---|---|---|---|---|"]
    for s in r["sizes"].values():
        q = s["throughput_ratio_ray_over_plain"]
        rows = [("Ray Data", s["ray"], f"{q['min']} / {q['median']} / {q['max']}"),
                ("plain loop", s["plain"], "1")]
        if s["hf_pipeline"]:
            rows.append(("HF pipeline*", s["hf_pipeline"],
                         f"(hf/plain {s['ratio_hf_over_plain_median']})"))
        for name, m, ratio in rows:
            lines.append(f"| {s['sentences']} | {s['words']} | {name} | {m['sentences_per_s']} | "
                         f"{m['words_per_s']} | {ratio} | "
                         f"{s['same_tags_share'] if name == 'Ray Data' else ''} |")
    return lines


def _md_notes(r: dict) -> list[str]:
    b = r["budget"]
    threads = r["actor_layout"]["teacher_stage"]["threads"]
    notes = ["ray/plain > 1: Ray is faster. Same tags: share of sentences (first repetition) "
             "whose Viterbi tags match between the two stores.",
             f"Each Ray teacher worker runs {threads} torch thread(s), the plain loop "
             f"{b['plain_threads']}; `--plain-threads {threads}` gives a thread-for-thread "
             "comparison."]
    if b["hf_pipeline"]:
        notes.append("\\* HF `pipeline(\"token-classification\", aggregation_strategy=\"first\")` "
                     "on the same device and sentences (words joined by spaces, re-tokenized): not "
                     "the same work -- entity spans only, no soft labels, scores or Viterbi, "
                     "nothing written, sentences read before the clock; words/s counts our words.")
    else:
        notes.append("HF pipeline row skipped: " + ("no GPU (`--hf on` forces it on CPU)."
                                                    if r["device"] == "cpu" else "`--hf off`."))
    if r["device"] == "cpu":
        notes.append("CPU run: absolute sentences/s on shared cores are not stable; the ray/plain "
                     "ratio from the same run is the figure to read. A truncated model on CPU is "
                     "not the papers' setting.")
    return notes


if __name__ == "__main__":
    sys.exit(main())
