"""One labeling run over many languages: MasakhaNER 2.0's 20 and WikiANN's 5 train files.

    python benchmarks/many_languages.py                      # all 25 languages, whole files
    python benchmarks/many_languages.py --limit 2 --max-sentences 500 --results /tmp/x  # smoke

Every language is one input of ONE ``label()`` call (one Ray Data plan), and each language's
round is committed on its own. The teacher is the tests' tiny BERT with a seeded random NER
head: the run measures the data path (reading, tokenizing, writing, committing), not a model.
Reported: sentences and sentences/s of the whole run, per-language counts and rejects, and the
driver's resident memory sampled every 0.5 s (peak over its value before the run).

Writes ``<results>/many_languages_cpu.{json,md}`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _meta import footer, provenance  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MIB = 1024 * 1024


def inputs(data: Path, limit: int | None, max_sentences: int | None, tmp: Path) -> list[dict]:
    """(lang, path) of every MasakhaNER 2.0 and WikiANN train file, optionally cut short."""
    files = sorted((p.parent.name, p) for p in (data / "masakhaner2").glob("*/train.txt"))
    files += sorted((p.parent.name.split("-", 1)[1], p) for p in data.glob("wikiann-*/train.txt"))
    out = []
    for lang, path in files[:limit]:
        if max_sentences:
            path = _head(path, max_sentences, tmp / f"{lang}.txt")
        out.append({"path": str(path), "lang": lang, "fmt": "conll"})
    return out


def _head(src: Path, n: int, dest: Path) -> Path:
    """The first ``n`` blank-line separated sentences of a CoNLL file."""
    blocks = src.read_text(encoding="utf-8", errors="surrogateescape").split("\n\n")[:n]
    dest.write_text("\n\n".join(blocks) + "\n", encoding="utf-8", errors="surrogateescape")
    return dest


class RssSampler(threading.Thread):
    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        import psutil

        self.proc, self.every, self.samples = psutil.Process(), every, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self.proc.memory_info().rss)
            self.stop.wait(self.every)


def teacher(tmp: Path) -> Path:
    import torch

    from tests._tiny import make_tiny_model
    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    base = make_tiny_model(tmp / "tiny")
    out = tmp / "teacher"
    torch.manual_seed(0)
    labels = ["O", "B-DATE", "I-DATE", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    load_token_classifier(str(base), labels).save_pretrained(out, safe_serialization=True)
    load_tokenizer(str(base)).save_pretrained(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--limit", type=int, default=None, help="first N languages only")
    ap.add_argument("--max-sentences", type=int, default=None, help="per language")
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    meta = provenance()
    from xner_ray.cluster import init_ray
    from xner_ray.labeling.pipeline import LabelConfig, label
    from xner_ray.store import Store

    with tempfile.TemporaryDirectory(prefix="xner-many-") as tmp:
        tmp = Path(tmp)
        specs = inputs(Path(args.data), args.limit, args.max_sentences, tmp)
        model = teacher(tmp)
        init_ray()
        sampler = RssSampler()
        base = sampler.proc.memory_info().rss
        sampler.start()
        t0 = time.perf_counter()
        summary = label(LabelConfig(teachers=[str(model)], inputs=specs, store=str(tmp / "s"),
                                    run_id="many"))
        seconds = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
        committed = Store(tmp / "s").manifests("many")
    total = sum(v["sentences"] for v in summary.values())
    r = {**meta, "languages": len(summary), "sentences": total, "seconds": round(seconds, 1),
         "sentences_per_s": round(total / seconds, 1),
         "driver_rss_mib": {"before": round(base / MIB, 1),
                            "peak": round(max(sampler.samples) / MIB, 1),
                            "peak_over_before": round((max(sampler.samples) - base) / MIB, 1)},
         "rounds_committed": len(committed),
         "per_language": {l: {k: v[k] for k in ("sentences", "entities", "rejects")}
                          for l, v in sorted(summary.items())},
         "budget": {"limit": args.limit, "max_sentences": args.max_sentences,
                    "teacher": "tests' tiny BERT (2 layers, hidden 32), random NER head"}}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "many_languages_cpu.json").write_text(json.dumps(r, indent=2))
    (out / "many_languages_cpu.md").write_text(markdown(r))
    print(json.dumps({k: r[k] for k in ("languages", "sentences", "seconds", "sentences_per_s",
                                        "driver_rss_mib", "rounds_committed")}))
    return 0


def markdown(r: dict) -> str:
    rows = [f"| {l} | {v['sentences']} | {v['entities']} | {v['rejects']} |"
            for l, v in r["per_language"].items()]
    d = r["driver_rss_mib"]
    return "\n".join([
        "# One labeling run over many languages", "",
        f"{r['languages']} languages (MasakhaNER 2.0 train files and WikiANN train files) in one "
        f"`label()` call, each language's round committed on its own "
        f"({r['rounds_committed']} rounds committed). Teacher: {r['budget']['teacher']}: the "
        "run measures the data path, not a model.", "",
        f"- {r['sentences']} sentences in {r['seconds']} s: **{r['sentences_per_s']} "
        "sentences/s** (Ray start-up not included; model loading and commits included)",
        f"- driver RSS: {d['before']} MiB before the run, peak {d['peak']} MiB "
        f"(+{d['peak_over_before']} MiB): the driver holds records, not rows", "",
        "| language | sentences | entities | rejects |", "|---|---|---|---|", *rows, "",
        *footer(r)])


if __name__ == "__main__":
    sys.exit(main())
