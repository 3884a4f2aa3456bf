"""Peak memory while streaming a corpus much larger than Ray's object store through ``label()``.

    # full size: 2,000,000 synthetic sentences, 75 MiB object store (Ray's minimum);
    # ~12-15 min on 2 cores (~2,500 sentences/s steady state at 20,000, machine under load)
    python benchmarks/streaming_memory.py
    # end-to-end check (~30 s), results kept out of benchmarks/results
    python benchmarks/streaming_memory.py --sentences 20000 --results /tmp/xner-bench

Generates N deterministic synthetic multilingual-ish sentences (5-25 words) into a gzip text
file, starts a private local Ray cluster with a small object store, labels the file with the
tests' tiny BERT (so the run measures the pipeline's memory, not a model's), and samples every
``--interval`` seconds: the driver's RSS, the summed RSS (and PSS) of the Ray worker processes
(``ray::...``), the other Ray processes (raylet, GCS, agents), and the object store's usage and
spilling. Progress is the number of rows in the ``pseudo_labels`` Parquet files the write tasks
have finished under the store (their footers, polled at every sample): the driver receives and
writes no rows any more, so it cannot count them. A write task gathers ``--rows-per-file`` rows
per file, so progress moves in steps of that size.

Writes ``<results>/streaming_memory.{json,md}`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import footer, provenance  # noqa: E402
from labeling_throughput import prepare_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
FRACTIONS = (0.10, 0.25, 0.50, 0.75, 1.00)
FLAT_TOLERANCE = 0.15  # "flat": the RSS at 100% within 15% of the RSS at 25%


# -- corpus ----------------------------------------------------------------------------------------
WORDS = {
    "en": "the of and to in is was for on with as by at from that this which have been new city",
    "es": "el la de que y en los se del las por un para con una su al es lo como más año ciudad",
    "de": "der die und in den von zu das mit sich des auf für ist im dem nicht ein Straße über",
    "nl": "de het een van en in is op te dat die voor met zijn niet aan er ook bij jaar stad",
    "fr": "le la les de des et à un une du en est que pour dans qui sur au été très ville année",
    "pt": "o a os de do da em um uma para com não que por mais as dos como mas ao ele ano cidade",
    "misc": ("Zürich São Kraków Łódź İstanbul Москва Αθήνα 東京 naïve café co-operation l'État "
             "1,000.50 2024 % ( ) , . : ; ? ! - \""),
}
SYLLABLES = ("ka", "lo", "mi", "ran", "de", "vel", "su", "tor", "an", "bri", "ge", "os", "na", "li",
             "ber", "ham", "ström", "ović", "ez", "ini")


def _vocabulary(rng: random.Random) -> list[str]:
    """Function words of six languages plus ~2,000 made-up capitalized names (entity-like)."""
    vocab = [w for ws in WORDS.values() for w in ws.split()]
    names = {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
             for _ in range(2500)}
    return vocab + sorted(names)


def generate_corpus(path: Path, n: int, seed: int) -> dict:
    """Write ``n`` sentences of 5-25 words, one per line, gzip; deterministic for a seed."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    raw = words = 0
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:  # level 1: speed
        chunk = []
        for _ in range(n):
            sent = rng.choices(vocab, k=rng.randint(5, 25))
            line = " ".join(sent) + "\n"
            chunk.append(line)
            raw += len(line.encode("utf-8"))
            words += len(sent)
            if len(chunk) >= 10_000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return {"sentences": n, "words_generated": words, "text_bytes": raw,
            "gzip_bytes": path.stat().st_size}


# -- memory sampling -------------------------------------------------------------------------------
def _rss_pss(proc) -> tuple[int, int]:
    """RSS and PSS of one process: RSS counts the shared object-store pages in every process
    that maps them, PSS splits them, so the PSS sum does not double-count."""
    import psutil

    try:
        full = proc.memory_full_info()
        return full.rss, getattr(full, "pss", full.rss)
    except psutil.Error:  # exited between listing and reading: nothing to count
        return 0, 0


class ObjectStoreStats:
    """Object store used / spilled bytes from the raylet's stats (the numbers of ``ray memory
    --stats-only``). Bound to our cluster's GCS address: another job's Ray cluster may run on
    the same machine. Private Ray API: yields {} if it moves."""

    def __init__(self, gcs_address: str):
        try:
            from ray._private.internal_api import (
                get_memory_info_reply,
                get_state_from_address,
            )

            self._state, self._reply = get_state_from_address(gcs_address), get_memory_info_reply
        except Exception:  # noqa: BLE001 -- private API: degrade to no store figures
            self._state = None

    def __call__(self) -> dict:
        if self._state is None:
            return {}
        try:
            s = self._reply(self._state).store_stats
        except Exception:  # noqa: BLE001 -- a missed sample must not kill the run
            return {}
        return {"store_used": s.object_store_bytes_used,
                "store_fallback": s.object_store_bytes_fallback, "spilled": s.spilled_bytes_total}


SYSTEM_ACTORS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def sample(driver, progress: dict, t0: float, store_stats) -> dict:
    """One snapshot: driver, Ray workers (``ray::`` processes) and the other Ray processes."""
    import psutil

    d_rss, d_pss = _rss_pss(driver)
    w_rss = w_pss = s_rss = s_pss = n_workers = 0
    # Our descendants only (raylet and GCS are the driver's children, workers the raylet's):
    # another job's Ray cluster on the same machine is not ours to count.
    for proc in driver.children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline()) or proc.name()
        except psutil.Error:
            continue
        # Agents are Ray's own services even though they are named ray::... like workers.
        worker = cmd.startswith("ray::") and not cmd.startswith(SYSTEM_ACTORS)
        rss, pss = _rss_pss(proc)
        if worker:
            w_rss, w_pss, n_workers = w_rss + rss, w_pss + pss, n_workers + 1
        else:
            s_rss, s_pss = s_rss + rss, s_pss + pss
    return {"t": round(time.perf_counter() - t0, 2), "rows": progress["rows"],
            "driver_rss": d_rss, "workers_rss": w_rss, "workers_pss": w_pss,
            "n_workers": n_workers, "ray_system_rss": s_rss,
            "total_rss": d_rss + w_rss + s_rss, "total_pss": d_pss + w_pss + s_pss,
            **store_stats()}


class StoreProgress(dict):
    """Rows written so far: the ``pseudo_labels`` Parquet files finished under the store root
    (in an attempt prefix while the round runs, in its partition once committed), counted from
    their footers. A file still being written has no footer yet and is counted next time; a
    file is known by its name, which a commit keeps when it moves the file."""

    TABLE = "pseudo_labels"

    def __init__(self, root: Path):
        super().__init__(rows=0, files=0, parquet_bytes=0, first=None)
        self.root = Path(root)
        self._seen: dict[str, tuple[int, int]] = {}

    def poll(self) -> dict:
        import pyarrow.parquet as pq

        if not self.root.exists():
            return self
        for path in self.root.rglob("*.parquet"):
            if path.name in self._seen or self.TABLE not in path.parts:
                continue
            try:
                rows = pq.read_metadata(path).num_rows
                size = path.stat().st_size
            except (OSError, ValueError):  # being written (no footer yet) or being moved
                continue
            self._seen[path.name] = (rows, size)
            if self["first"] is None:
                self["first"] = time.perf_counter()
        self.update(rows=sum(r for r, _ in self._seen.values()), files=len(self._seen),
                    parquet_bytes=sum(b for _, b in self._seen.values()))
        return self


class Sampler(threading.Thread):
    """Samples memory every ``interval`` seconds until stopped (daemon: never blocks exit);
    polls ``progress`` (a :class:`StoreProgress`) before each sample."""

    def __init__(self, progress: StoreProgress, interval: float, gcs_address: str):
        import psutil

        super().__init__(daemon=True)
        self.driver, self.progress, self.interval = psutil.Process(), progress, interval
        self.store_stats = ObjectStoreStats(gcs_address)
        self.samples: list[dict] = []
        self.t0 = time.perf_counter()
        self._stop_event = threading.Event()

    def _sample(self) -> dict:
        return sample(self.driver, self.progress.poll(), self.t0, self.store_stats)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(self._sample())
            self._stop_event.wait(self.interval)

    def stop(self) -> list[dict]:
        self._stop_event.set()
        self.join()
        self.samples.append(self._sample())
        return self.samples


# -- summary ---------------------------------------------------------------------------------------
METRICS = ("driver_rss", "workers_rss", "workers_pss", "ray_system_rss", "total_rss",
           "total_pss", "store_used", "spilled")


def at_progress(samples: list[dict], n: int) -> dict:
    """The first sample at or past each fraction of the ``n`` sentences written."""
    out = {}
    for frac in FRACTIONS:
        hit = next((s for s in samples if s["rows"] >= frac * n), samples[-1])
        out[f"{int(frac * 100)}%"] = hit
    return out


def at_time(samples: list[dict]) -> dict:
    """The sample nearest to each quarter of the labeling time (first write to last sample)."""
    started = [s for s in samples if s["rows"] > 0] or samples
    t_a, t_b = started[0]["t"], started[-1]["t"]
    return {f"t{int(q * 100)}%": min(started, key=lambda s: abs(s["t"] - (t_a + q * (t_b - t_a))))
            for q in (0.25, 0.5, 0.75, 1.0)}


def summarize(samples: list[dict], n: int) -> dict:
    peaks = {m: max(s.get(m, 0) for s in samples) for m in METRICS}
    prog = at_progress(samples, n)
    # The verdict reads the total; the parts are reported too, since a leak in one process
    # (e.g. the driver's writer) could hide inside 15% of a total that the workers dominate.
    change = {m: _change(prog["25%"].get(m), prog["100%"].get(m))
              for m in ("total_rss", "driver_rss", "workers_pss", "total_pss")}
    total = change["total_rss"]
    verdict = "flat" if abs(total) <= FLAT_TOLERANCE else "growing" if total > 0 else "shrinking"
    return {"peaks": peaks, "at_progress": prog, "at_time": at_time(samples),
            "rss_change_25_to_100": total, "change_25_to_100": change, "verdict": verdict}


def _change(before, after) -> float:
    return round((after - before) / before, 4) if before else float("nan")


# -- driver ----------------------------------------------------------------------------------------
def start_ray(store_bytes: int) -> dict:
    import ray

    from xner_ray.cluster import init_ray

    t0 = time.perf_counter()
    # the product's private cluster (its worker limits, quiet Ray Data), with a small store
    init_ray(num_cpus=os.cpu_count(), object_store_memory=store_bytes)
    res = ray.cluster_resources()
    return {"init_s": round(time.perf_counter() - t0, 2), "cpus": res.get("CPU"),
            "gcs_address": ray.get_runtime_context().gcs_address,
            "object_store_bytes": int(res.get("object_store_memory", store_bytes))}


def main(argv=None) -> int:
    from ray._private.ray_constants import OBJECT_STORE_MINIMUM_MEMORY_BYTES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sentences", type=int, default=2_000_000)
    p.add_argument("--object-store-mb", type=float, default=0,
                   help=f"MiB; default and floor: Ray's minimum "
                        f"({OBJECT_STORE_MINIMUM_MEMORY_BYTES / MIB:g} MiB)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block-rows", type=int, default=256)
    p.add_argument("--rows-per-file", type=int, default=100_000, help="store Parquet rotation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="where the corpus and store go (default: $TMPDIR)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    meta = provenance()  # the revision and state the run starts from
    store_bytes = max(int(args.object_store_mb * MIB), OBJECT_STORE_MINIMUM_MEMORY_BYTES)

    with tempfile.TemporaryDirectory(prefix="xner-stream-", dir=args.tmp) as tmp_:
        tmp = Path(tmp_)
        t0 = time.perf_counter()
        corpus = generate_corpus(tmp / "corpus.txt.gz", args.sentences, args.seed)
        corpus["generate_s"] = round(time.perf_counter() - t0, 1)
        print(f"[stream] corpus: {corpus}", flush=True)
        model = prepare_model("tiny", 0, args.seed, tmp)
        cluster = start_ray(store_bytes)
        run, samples = label_and_sample(args, model, tmp, cluster["gcs_address"])
    ratio = corpus["text_bytes"] / cluster["object_store_bytes"]
    if ratio < 3:
        print(f"[stream] WARNING: the corpus text is only {ratio:.1f}x the object store: not a "
              "test of streaming past it (use more --sentences)", flush=True)
    result = {"benchmark": "streaming_memory", "corpus": corpus, "cluster": cluster,
              "budget": {"model": "tests/_tiny.py tiny BERT (2 layers, hidden 32) + random head",
                         "batch_size": args.batch_size, "block_rows": args.block_rows,
                         "rows_per_file": args.rows_per_file, "interval_s": args.interval},
              "corpus_over_object_store": round(ratio, 1),
              "pseudo_labels_parquet_over_object_store": round(
                  run["parquet_bytes"] / cluster["object_store_bytes"], 1),
              "run": run, **summarize(samples, args.sentences), "samples": samples, **meta}
    out = Path(args.results) / "streaming_memory"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out}.json and .md")
    return 0


def label_and_sample(args, model: Path, tmp: Path, gcs: str) -> tuple[dict, list[dict]]:
    from xner_ray.labeling.pipeline import LabelConfig, label

    cfg = LabelConfig(teachers=[str(model)], inputs=[{"path": str(tmp / "corpus.txt.gz"),
                                                      "lang": "xx", "fmt": "text"}],
                      store=str(tmp / "store"), run_id="stream", batch_size=args.batch_size,
                      block_rows=args.block_rows, rows_per_file=args.rows_per_file)
    progress = StoreProgress(tmp / "store")
    sampler = Sampler(progress, args.interval, gcs)
    sampler.start()
    t0 = time.perf_counter()
    try:
        summary = label(cfg)
    finally:
        samples = sampler.stop()
    seconds = time.perf_counter() - t0
    s = summary["xx"]
    if s["sentences"] != args.sentences:
        raise RuntimeError(f"labeled {s['sentences']} of {args.sentences} sentences")
    if progress["rows"] != args.sentences:
        raise RuntimeError(f"the store's pseudo_labels files hold {progress['rows']} rows, "
                           f"expected {args.sentences}")
    run = {"seconds": round(seconds, 1), "sentences": s["sentences"], "rejects": s["rejects"],
           "sentences_per_s": round(s["sentences"] / seconds, 1),
           "first_file_s": round(progress["first"] - t0, 2) if progress["first"] else None,
           "files": progress["files"], "parquet_bytes": progress["parquet_bytes"],
           "n_samples": len(samples)}
    return run, samples


def _mib(v) -> str:
    return "" if v is None else f"{v / MIB:,.0f}"


def markdown(r: dict) -> str:
    c, k, run = r["corpus"], r["cluster"], r["run"]
    lines = [
        "# Streaming memory", "",
        f"{c['sentences']:,} synthetic sentences (5-25 words, {c['words_generated']:,} words, "
        f"{_mib(c['text_bytes'])} MiB of text, {_mib(c['gzip_bytes'])} MiB gzip) labeled by "
        f"`label()` with the tests' tiny BERT on a local Ray cluster of {k['cpus']:g} CPUs with a "
        f"{_mib(k['object_store_bytes'])} MiB object store: the text is "
        f"{r['corpus_over_object_store']}x the object store. The write tasks wrote the store "
        f"(the driver receives no rows): {run['files']} `pseudo_labels` files, "
        f"{_mib(run['parquet_bytes'])} MiB of Parquet "
        f"({r['pseudo_labels_parquet_over_object_store']}x the object store).",
        f"Run: {run['seconds']} s ({run['sentences_per_s']} sentences/s, first file written "
        f"{run['first_file_s']} s, {run['rejects']} rejects), {run['n_samples']} samples every "
        f"{r['budget']['interval_s']} s; batch {r['budget']['batch_size']}, block_rows "
        f"{r['budget']['block_rows']}.", "",
        f"**Verdict: {r['verdict']}** (total RSS at 100% vs 25% of sentences written: "
        f"{r['rss_change_25_to_100']:+.1%}; flat = within {FLAT_TOLERANCE:.0%}). From 25% to "
        "100%: " + ", ".join(f"{m} {v:+.1%}" for m, v in r["change_25_to_100"].items()) + ".",
        "",
        "| MiB | " + " | ".join(["peak", *r["at_progress"], *r["at_time"]]) + " |",
        "|---|" + "---|" * (1 + len(r["at_progress"]) + len(r["at_time"])),
    ]
    points = [*r["at_progress"].values(), *r["at_time"].values()]
    lines.append("| sentences written | | " + " | ".join(f"{p['rows']:,}" for p in points) + " |")
    lines.append("| seconds | | " + " | ".join(f"{p['t']}" for p in points) + " |")
    for m in METRICS:
        lines.append(f"| {m} | {_mib(r['peaks'][m])} | "
                     + " | ".join(_mib(p.get(m)) for p in points) + " |")
    lines += ["",
              "driver = this process (plans the run, commits the round from the write tasks' "
              "records); workers = `ray::` processes (read tasks, SubwordStage, TeacherStage, "
              "SelectStage actors, write tasks, Ray Data's helper actors, idle workers); "
              "sentences written = rows in the finished `pseudo_labels` files (steps of "
              f"{r['budget']['rows_per_file']:,}); ray_system = raylet, GCS, "
              "dashboard/runtime-env agents, log monitor. RSS counts mapped object-store "
              "pages in every process that touches them, so total_rss double-counts; PSS "
              "shares them out. "
              "store_used / spilled: the raylet's object store stats.",
              "", *footer(r)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
