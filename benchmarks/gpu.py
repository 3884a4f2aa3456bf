"""Accelerator benchmark in one call: labeling and distillation tokens/s and MFU.

    python benchmarks/gpu.py                       # one H100/H200: me5-small + a 12-layer base
    python benchmarks/gpu.py --device cpu --tiny   # CPU smoke mode (tests): a tiny random BERT

For each model, in the same run and on the same sentences (CoNLL-2002 es train words, cycled):

- ``stage``: ``TeacherStage`` (token-budget batches, bf16 + SDPA on CUDA, device-side gather,
  softmax, Viterbi and scores, one host copy per block) on pre-tokenized blocks;
- ``plain``: the loop one would write: sorted batches of 64 sentences, tokenizer per batch,
  forward (bf16 autocast on CUDA), per-word argmax read on the host;
- ``hf_pipeline``: ``transformers.pipeline("token-classification", aggregation_strategy=
  "first")`` over the sentences joined by spaces (its own tokenization; no soft labels);
- ``distill``: a distillation step (student forward, the project's ``kd_mse_loss`` against
  teacher soft labels, backward, AdamW) in token-budget batches, bf16 autocast on CUDA.

tokens/s counts real (unpadded) sub-words. MFU = tokens/s x FLOPs per token / peak, where FLOPs
per token (forward) = 2 x non-embedding parameters + 4 x layers x hidden x mean sequence length
(QK^T and AV), x3 for a training step, and the peak is a measured bf16 (fp32 on CPU) matmul on
the same device. ``builtin:me5-small`` is the project's converted multilingual-e5-small; the
base model is a BertConfig (12 layers, hidden 768, 12 heads, 3072) with random weights -- the
speed does not depend on the weights. Writes ``<results>/gpu.{json,md}`` (``--tiny``:
``gpu_cpu_tiny.{json,md}``) and prints one JSON object on its last line.
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


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(device, tiny: bool) -> dict:
    """Measured matmul FLOP/s: bf16 on CUDA (fp32 on CPU), best of a few runs."""
    import torch

    n = 512 if tiny else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    reps = 3 if tiny else 20
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return {"flops": 2 * n ** 3 / best, "n": n, "dtype": str(dtype).replace("torch.", "")}


def flops_per_token(config, seq_len: float) -> float:
    """Forward FLOPs per token: 2 x non-embedding params + attention score/value terms."""
    h, layers = config.hidden_size, config.num_hidden_layers
    inter = config.intermediate_size
    per_layer = 4 * h * h + 4 * h + 2 * h * inter + h + inter + 4 * h  # attn + FFN + 2 LN
    non_embedding = layers * per_layer + h * len(LABELS) + len(LABELS)
    return 2.0 * non_embedding + 4.0 * layers * h * seq_len


def sentences(n: int, tiny: bool = False) -> list[list[str]]:
    from xner_ray.io.conll import read_conll

    path = REPO.parent / "shared/data/conll2002-es/train.txt"
    if tiny or not path.is_file():  # the bundled sample: no corpus needed, quick to read
        from xner_ray.demo import sample_path

        path = sample_path("en.train.txt")
    sents = [s.tokens for s in read_conll(str(path))]
    return [sents[i % len(sents)] for i in range(n)]


def make_models(root: Path, tiny: bool) -> dict:
    """{name: folder of a token classifier with a (random) head over LABELS}."""
    import torch
    from transformers import BertConfig, BertModel

    from xner_ray.models.classifier import load_token_classifier, load_tokenizer, resolve

    out = {}
    if tiny:
        from tests._tiny import make_tiny_model

        bases = {"tiny-bert": make_tiny_model(root / "tiny")}
    else:
        me5 = Path(resolve("builtin:me5-small"))
        base = root / "bert-base-random"
        torch.manual_seed(0)
        tok = load_tokenizer(str(me5))
        cfg = BertConfig(vocab_size=len(tok), hidden_size=768, num_hidden_layers=12,
                         num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=514, pad_token_id=tok.pad_token_id or 0)
        BertModel(cfg, add_pooling_layer=False).save_pretrained(base, safe_serialization=True)
        tok.model_max_length = 512
        tok.save_pretrained(base)
        bases = {"me5-small": me5, "bert-base-12L-random": base}
    for name, path in bases.items():
        torch.manual_seed(0)
        d = root / f"{name}-ner"
        load_token_classifier(str(path), LABELS).save_pretrained(d, safe_serialization=True)
        load_tokenizer(str(path)).save_pretrained(d)
        out[name] = d
    return out


def run_stage(model_dir: Path, sents, device, block_rows: int, compile_model: bool) -> dict:
    from xner_ray.labeling.stages import SubwordStage, TeacherStage

    sub = SubwordStage(str(model_dir))
    stage = TeacherStage([str(model_dir)], device=str(device), compile=compile_model,
                         max_tokens=None if device.type == "cuda" else 4096)
    blocks = [sub({"sent_id": [str(i) for i in range(len(b))], "tokens": b})
              for b in (sents[i:i + block_rows] for i in range(0, len(sents), block_rows))]
    stage(blocks[0])  # warm-up (and compile)
    sync(device)
    tokens = sum(len(x) for b in blocks for x in b.column("input_ids").to_pylist())
    t0 = time.perf_counter()
    for b in blocks:
        stage(b)
    sync(device)
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "sentences": len(sents),
            "max_tokens_per_forward": stage.max_tokens}


def run_plain(model_dir: Path, sents, device, batch: int = 64) -> dict:
    import torch

    from xner_ray.models.classifier import encode_words, load_token_classifier, load_tokenizer

    tok = load_tokenizer(str(model_dir))
    model = load_token_classifier(str(model_dir)).to(device).eval()
    order = np.argsort([len(s) for s in sents], kind="stable")
    cuda = device.type == "cuda"
    tokens = 0

    def one(idx):
        enc = encode_words(tok, [sents[i] for i in idx], max_length=512)
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            logits = model(input_ids=enc.input_ids.to(device),
                           attention_mask=enc.attention_mask.to(device)).logits
        arg = logits.argmax(-1).cpu().numpy()
        _ = [arg[r, p[p >= 0]] for r, p in enumerate(enc.first_subword)]
        return int(enc.attention_mask.sum())

    one(order[:batch])
    sync(device)
    t0 = time.perf_counter()
    for k in range(0, len(order), batch):
        tokens += one(order[k:k + batch])
    sync(device)
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "sentences": len(sents)}


def run_hf(model_dir: Path, sents, device, batch: int = 64) -> dict:
    import torch
    from transformers import pipeline

    from xner_ray.models.classifier import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    texts = [" ".join(s) for s in sents]
    tokens = sum(len(x) for x in tok(texts, truncation=True, max_length=512)["input_ids"])
    cuda = device.type == "cuda"
    pipe = pipeline("token-classification", model=str(model_dir), aggregation_strategy="first",
                    device=0 if cuda else -1, dtype=torch.bfloat16 if cuda else None)
    list(pipe(texts[:batch], batch_size=batch))
    sync(device)
    t0 = time.perf_counter()
    for _ in pipe((t for t in texts), batch_size=batch):
        pass
    sync(device)
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "sentences": len(sents)}


def run_distill(model_dir: Path, sents, device, steps: int, max_tokens: int,
                compile_model: bool = False) -> dict:
    import torch

    from xner_ray.labeling.windows import token_batches
    from xner_ray.models.classifier import encode_words, load_token_classifier, load_tokenizer
    from xner_ray.train.losses import kd_mse_loss

    tok = load_tokenizer(str(model_dir))
    model = load_token_classifier(str(model_dir)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    forward = torch.compile(model, dynamic=True) if compile_model else model  # as TrainConfig
    enc = [encode_words(tok, [s], max_length=512) for s in sents[:4000]]
    lengths = np.array([int(e.attention_mask.sum()) for e in enc])
    batches = token_batches(lengths, max_tokens, 8)
    rng = np.random.default_rng(0)
    prepared = []
    for idx in batches:  # inputs tokenized once, padded once, on the device before the clock
        width = int(-(-lengths[idx].max() // 8) * 8)
        ids = torch.full((len(idx), width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :lengths[i]] = enc[i].input_ids[0, :lengths[i]]
            mask[r, :lengths[i]] = 1
        teacher = torch.as_tensor(rng.dirichlet(np.ones(len(LABELS)), size=(len(idx), width)),
                                  dtype=torch.float32)
        prepared.append((ids.to(device), mask.to(device), teacher.to(device),
                         int(mask.sum())))
    cuda = device.type == "cuda"

    def step(ids, mask, teacher):
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            logits = forward(input_ids=ids, attention_mask=mask).logits
        loss = kd_mse_loss(logits, teacher, mask, torch.ones(len(ids), device=device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for p in prepared[:2]:  # warm-up (and compile)
        step(*p[:3])
    sync(device)
    tokens, t0 = 0, time.perf_counter()
    for k in range(steps):
        ids, mask, teacher, n = prepared[k % len(prepared)]
        step(ids, mask, teacher)
        tokens += n
    sync(device)
    seq = float(np.mean([p[3] / len(p[0]) for p in prepared]))
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "steps": steps,
            "mean_seq_len": seq, "max_tokens_per_step": max_tokens}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny random BERT, few sentences")
    ap.add_argument("--sentences", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the labeling stage's model and the distillation step's "
                    "(compiled in the untimed warm-up)")
    ap.add_argument("--results", default=str(REPO / "benchmarks/results"))
    args = ap.parse_args(argv)
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(1 if args.tiny else torch.get_num_threads())
    n_sent = args.sentences or (200 if args.tiny else 20000)
    reps = args.reps or (1 if args.tiny else 3)
    t_start = time.perf_counter()
    peak = peak_flops(device, args.tiny)
    root = Path(tempfile.mkdtemp(prefix="xner-gpu-"))
    models = make_models(root, args.tiny)
    sents = sentences(n_sent, args.tiny)
    rows = []
    for name, d in models.items():
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(d)
        runs = {"stage": [], "plain": [], "hf_pipeline": [], "distill": []}
        for _ in range(reps):  # A/B/C interleaved
            runs["stage"].append(run_stage(d, sents, device, 256 if args.tiny else 4096,
                                           args.compile))
            runs["plain"].append(run_plain(d, sents, device))
            runs["hf_pipeline"].append(run_hf(d, sents, device))
            runs["distill"].append(run_distill(d, sents, device, 5 if args.tiny else 60,
                                               2048 if args.tiny else 32768, args.compile))
        row = {"model": name, "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size}
        for kind, rs in runs.items():
            tps = [r["tokens"] / r["seconds"] for r in rs]
            seq = (rs[0]["mean_seq_len"] if kind == "distill"
                   else rs[0]["tokens"] / rs[0]["sentences"])
            fpt = flops_per_token(cfg, seq) * (3 if kind == "distill" else 1)
            mfu = [t * fpt / peak["flops"] for t in tps]
            row[kind] = {"tokens_per_s": {"min": min(tps), "median": statistics.median(tps),
                                          "max": max(tps)},
                         "mfu_median": statistics.median(mfu), "flops_per_token": fpt,
                         "runs": rs}
        row["stage_vs_hf"] = row["stage"]["tokens_per_s"]["median"] / row["hf_pipeline"][
            "tokens_per_s"]["median"]
        row["stage_vs_plain"] = row["stage"]["tokens_per_s"]["median"] / row["plain"][
            "tokens_per_s"]["median"]
        rows.append(row)
        print(f"{name}: stage {row['stage']['tokens_per_s']['median']:.0f} tok/s "
              f"(MFU {row['stage']['mfu_median']:.3f}), plain "
              f"{row['plain']['tokens_per_s']['median']:.0f}, HF pipeline "
              f"{row['hf_pipeline']['tokens_per_s']['median']:.0f}, distill "
              f"{row['distill']['tokens_per_s']['median']:.0f} tok/s (MFU "
              f"{row['distill']['mfu_median']:.3f})", flush=True)
    result = {"benchmark": "gpu", "device": str(device), "tiny": args.tiny,
              "sentences": n_sent, "reps": reps, "compile": args.compile, "peak": peak, "rows": rows,
              "seconds_total": time.perf_counter() - t_start, **provenance()}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu" if device.type == "cuda" else "gpu_cpu_tiny" if args.tiny else "gpu_cpu"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [f"# Labeling and distillation throughput on {result['machine']['gpu'] or 'CPU'}"
          + (" (CPU tiny smoke mode: not a measurement of anything but the script)"
             if device.type == "cpu" else ""), "",
          f"{n_sent} sentences "
          f"({'the bundled English sample' if args.tiny else 'CoNLL-2002 es train words'}), "
          f"{reps} rep(s) interleaved{', torch.compile' if args.compile else ''}; peak "
          f"{peak['flops'] / 1e12:.2f} TFLOP/s measured ({peak['dtype']} {peak['n']}^3 matmul).",
          "", "| model | path | tokens/s (min / median / max) | MFU (median) |",
          "|---|---|---|---|"]
    for r in rows:
        for kind in ("stage", "plain", "hf_pipeline", "distill"):
            t = r[kind]["tokens_per_s"]
            md.append(f"| {r['model']} | {kind} | {t['min']:.0f} / {t['median']:.0f} / "
                      f"{t['max']:.0f} | {r[kind]['mfu_median']:.3f} |")
        md.append(f"| {r['model']} | stage / HF pipeline | {r['stage_vs_hf']:.2f}x | |")
    md += ["", "Targets (issue 14, one H100/H200): labeling >= 50% MFU on an me5-small-sized "
           "teacher and >= 5x the HF pipeline; distillation >= 40% MFU.", ""] + footer(result)
    (out / f"{stem}.md").write_text("\n".join(md))
    print(json.dumps({"device": str(device), "tiny": args.tiny,
                      "seconds": round(result["seconds_total"], 1),
                      "rows": [{"model": r["model"],
                                "stage_tokens_per_s": r["stage"]["tokens_per_s"]["median"],
                                "stage_mfu": r["stage"]["mfu_median"],
                                "plain_tokens_per_s": r["plain"]["tokens_per_s"]["median"],
                                "hf_tokens_per_s": r["hf_pipeline"]["tokens_per_s"]["median"],
                                "distill_tokens_per_s": r["distill"]["tokens_per_s"]["median"],
                                "distill_mfu": r["distill"]["mfu_median"],
                                "stage_vs_hf": r["stage_vs_hf"]} for r in rows]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
