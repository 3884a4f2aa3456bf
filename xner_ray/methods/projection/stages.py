"""Projection stages: plain callables that load their model in ``__init__`` and map an Arrow
batch of pairs (``corpus.PAIR_COLUMNS``) to an Arrow batch; none of them knows about Ray.

``SourceNerStage`` tags the source side with the English teacher (Li et al. Sec. 3.2 step 2),
``AlignStage`` finds every source entity in the target sentence (step 3: the similarity aligner
or the alignment model) and applies the Sec. 4.3 filters, ``ExampleStage`` turns pairs into
alignment training examples (Sec. 4.2, built from the corpus itself).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa

from xner_ray.store.schema import SCORED_SPAN, SPAN

ALIGNERS = ("similarity", "model")
EXAMPLE_COLUMNS = pa.schema([
    ("pair_id", pa.string()), ("lang", pa.string()), ("query", pa.list_(pa.string())),
    ("tokens", pa.list_(pa.string())), ("tags", pa.list_(pa.string())),
    ("source", pa.string()), ("kind", pa.string()), ("negative", pa.bool_()),
])


def _rows(batch, name: str) -> list:
    return batch.column(name).to_pylist()


def make_aligner(spec: Mapping[str, Any], threads: Optional[int] = None,
                 device: Optional[str] = None):
    """A similarity aligner or a trained alignment model from a spec dict: ``{"kind":
    "similarity", model, layer, method, max_gap, batch_size, max_length}`` or ``{"kind":
    "model", path, batch_size, max_length, min_score}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "similarity":
        from xner_ray.methods.projection.aligner import SimilarityAligner

        return SimilarityAligner(**spec, threads=threads, device=device)
    if kind == "model":
        from xner_ray.methods.projection.model import AlignmentModel

        return AlignmentModel(spec.pop("path"), **spec, threads=threads, device=device)
    raise ValueError(f"unknown aligner kind {kind!r}; valid: {ALIGNERS}")


class SourceNerStage:
    """Source entities from the English teacher: BIO-valid Viterbi tags -> spans; ``types``
    keeps only some entity types (Sec. 4.3 drops MISC for Chinese)."""

    def __init__(self, teacher: str, *, batch_size: int = 32, max_length: int = 256,
                 types: Optional[Sequence[str]] = None, device: Optional[str] = None,
                 threads: Optional[int] = None):
        import torch

        from xner_ray.models.classifier import load_token_classifier, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_token_classifier(teacher).to(self.device).eval()
        self.tokenizer = load_tokenizer(teacher)
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.types = set(types) if types else None
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, batch: pa.Table) -> pa.Table:
        from xner_ray.labels import tags_to_spans, viterbi_batch
        from xner_ray.models.classifier import predict_log_probs

        words = _rows(batch, "src_tokens")
        logps = predict_log_probs(self.model, self.tokenizer, words, batch_size=self.batch_size,
                                  max_length=self.max_length, device=self.device)
        ents = [[{"start": a, "end": b, "type": t} for a, b, t in tags_to_spans(tags)
                 if self.types is None or t in self.types]
                for tags in viterbi_batch(logps, self.labels)]
        return batch.append_column("src_entities", pa.array(ents, pa.list_(SPAN)))


class AlignStage:
    """Target spans of every source entity, then the Sec. 4.3 filters: adds ``tgt_spans``,
    ``alignment_score``, ``status``, ``reason``, (kept pairs) ``tgt_tags`` and ``aligner``."""

    def __init__(self, aligner: Mapping[str, Any], *, device: Optional[str] = None,
                 threads: Optional[int] = None):
        self.aligner = make_aligner(aligner, threads=threads, device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from xner_ray.methods.projection.filters import filter_pair, group_entities

        src, tgt = _rows(batch, "src_tokens"), _rows(batch, "tgt_tokens")
        groups = [group_entities(s, [(e["start"], e["end"], e["type"]) for e in ents])
                  for s, ents in zip(src, _rows(batch, "src_entities"))]
        self.aligner.project(src, tgt, groups)
        results = [filter_pair(t, g) for t, g in zip(tgt, groups)]
        cols = {
            "tgt_spans": pa.array([[{"start": a, "end": b, "type": typ, "score": sc}
                                    for a, b, typ, sc in r.spans] for r in results],
                                  pa.list_(SCORED_SPAN)),
            "alignment_score": pa.array([r.score for r in results], pa.float32()),
            "status": pa.array([r.status for r in results], pa.string()),
            "reason": pa.array([r.reason for r in results], pa.string()),
            "tgt_tags": pa.array([r.tags for r in results], pa.list_(pa.string())),
            "aligner": pa.array([self.aligner.id] * len(results), pa.string()),
        }
        for name, arr in cols.items():
            batch = batch.append_column(name, arr)
        return batch


class ExampleStage:
    """Alignment training examples from a batch of pairs (``examples.build_examples``); the
    similarity aligner is loaded only when ``simalign`` is a source. Negatives come from the
    other pairs of the same batch; the seed is derived from the batch's first pair id, so a
    rerun builds the same examples."""

    def __init__(self, *, sources: Sequence[str], similarity: Optional[Mapping[str, Any]] = None,
                 negative_ratio: float = 0.25, max_per_pair: int = 4, seed: int = 0,
                 device: Optional[str] = None, threads: Optional[int] = None):
        from xner_ray.methods.projection.examples import check_options

        check_options(sources, negative_ratio, max_per_pair)
        self.sources, self.negative_ratio = list(sources), negative_ratio
        self.max_per_pair, self.seed = max_per_pair, seed
        self.aligner = None
        if "simalign" in sources:
            if similarity is None:
                raise ValueError("the simalign example source needs similarity aligner settings")
            self.aligner = make_aligner({**similarity, "kind": "similarity"}, threads=threads,
                                        device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from xner_ray.methods.projection.examples import PairForExamples, build_examples

        ids, src, tgt = _rows(batch, "pair_id"), _rows(batch, "src_tokens"), _rows(batch, "tgt_tokens")
        links = _rows(batch, "links") if "links" in batch.column_names else [None] * len(ids)
        aligned = ([a.pairs for a in self.aligner.align(src, tgt, method="argmax")]
                   if self.aligner is not None else [None] * len(ids))
        pairs = [PairForExamples(i, s, t, [(l["src_start"], l["src_end"], l["tgt_start"],
                                            l["tgt_end"]) for l in (lk or [])], a)
                 for i, s, t, lk, a in zip(ids, src, tgt, links, aligned)]
        seed = self.seed + int(hashlib.blake2b(str(ids[:1]).encode(), digest_size=4).hexdigest(), 16)
        examples, _ = build_examples(pairs, sources=self.sources,
                                     negative_ratio=self.negative_ratio,
                                     max_per_pair=self.max_per_pair, seed=seed)
        lang = dict(zip(ids, _rows(batch, "lang")))
        return pa.Table.from_pylist(
            [{"pair_id": e.pair_id, "lang": lang[e.pair_id], "query": e.query,
              "tokens": e.tokens, "tags": e.tags, "source": e.source, "kind": e.kind,
              "negative": e.negative} for e in examples], schema=EXAMPLE_COLUMNS)
