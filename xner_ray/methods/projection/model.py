"""The entity alignment model of Li et al. Sec. 3.1 (Fig. 1): an encoder reads the source entity
as segment A and the target sentence as segment B, and tags the target words that translate the
entity -- token classification over segment B, labels ``O``/``B-ALN``/``I-ALN`` on the first
sub-word of each target word (``-100`` on the query, specials and later sub-words).

Training runs on Ray Train through the shared loop (``fit(step=AlignStep)``,
``methods/projection/steps.py``),
model selection on held-out alignment examples (span F1); Sec. 4.2 trains 3 epochs, batch 64,
lr 5e-5. Inference: :class:`AlignmentModel` decodes BIO-valid spans with Viterbi and scores
each span by the mean probability of its tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import torch

from xner_ray.models.classifier import first_subwords, length_buckets, max_tokens
from xner_ray.methods.projection.examples import ALIGN_LABELS
from xner_ray.methods.projection.filters import TargetSpan


@dataclass
class PairBatch:
    """Encoder tensors of ``query [SEP] target`` rows, and each target word's first sub-word."""

    inputs: dict
    labels: Optional[torch.Tensor]
    first_subword: list[np.ndarray]  # per row: [n_target_words], -1 where truncated


def encode_pairs(tokenizer, queries: Sequence[Sequence[str]], words: Sequence[Sequence[str]],
                 tags=None, label2id=None, max_length: int = 256) -> PairBatch:
    """Tokenize (query words, target words) pairs; truncation cuts the target only, so the
    query is always read in full. Labels sit on the first sub-word of each target word."""
    enc = tokenizer([list(q) for q in queries], [list(w) for w in words],
                    is_split_into_words=True, truncation="only_second",
                    max_length=max_tokens(tokenizer, max_length), padding=True,
                    return_tensors="pt")
    labels, firsts = first_subwords(enc, words, tags, label2id, sequence=1)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return PairBatch(inputs, labels, firsts)


def pair_word_log_probs(model, batch: PairBatch, device) -> list[np.ndarray]:
    """Per row, ``[n_target_words, 3]`` log-probabilities (truncated words: certain ``O``)."""
    from xner_ray.models.classifier import EncodedBatch, word_log_probs

    logits = model(**{k: v.to(device) for k, v in batch.inputs.items()}).logits
    fake = EncodedBatch(batch.inputs["input_ids"], batch.inputs["attention_mask"], None,
                        batch.first_subword)
    return word_log_probs(logits, fake, o_index=0)


def decode_spans(log_probs: Sequence[np.ndarray]) -> tuple[list[list[str]], list[list[TargetSpan]]]:
    """Viterbi (BIO-valid) tags and scored spans: a span's score is the mean probability of its
    words' tags."""
    from xner_ray.labels import tags_to_spans, viterbi_batch

    tags = viterbi_batch(log_probs, ALIGN_LABELS)
    index = {l: i for i, l in enumerate(ALIGN_LABELS)}
    spans = []
    for lp, row in zip(log_probs, tags):
        p = np.exp(np.asarray(lp, dtype=np.float64))
        tag_p = [p[i, index[t]] for i, t in enumerate(row)]
        spans.append([TargetSpan(a, b, float(np.mean(tag_p[a:b]))) for a, b, _ in tags_to_spans(row)])
    return tags, spans


@torch.inference_mode()
def predict_alignment(model, tokenizer, queries: Sequence[Sequence[str]],
                      words: Sequence[Sequence[str]], *, batch_size: int = 32,
                      max_length: int = 256, device="cpu"
                      ) -> tuple[list[list[str]], list[list[TargetSpan]]]:
    """Tags and spans of every (query, target) row, in input order."""
    model.eval()
    logps: list = [None] * len(words)
    lengths = [len(q) + len(w) for q, w in zip(queries, words)]
    for idx in length_buckets(lengths, batch_size):
        batch = encode_pairs(tokenizer, [queries[i] for i in idx], [words[i] for i in idx],
                             max_length=max_length)
        for i, lp in zip(idx, pair_word_log_probs(model, batch, device)):
            logps[i] = lp
    return decode_spans(logps)


class AlignmentModel:
    """A trained alignment model loaded once (an actor's model): ``find(queries, targets)``."""

    def __init__(self, path: str, *, batch_size: int = 32, max_length: int = 256,
                 min_score: float = 0.0, device: Optional[str] = None,
                 threads: Optional[int] = None):
        from xner_ray.models.classifier import load_token_classifier, load_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_token_classifier(path).to(self.device).eval()
        got = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        if got != ALIGN_LABELS:
            raise ValueError(f"{path} is not an alignment model: labels {got}, expected "
                             f"{ALIGN_LABELS} (train one with the project job's train_aligner)")
        self.tokenizer = load_tokenizer(path)
        self.batch_size, self.max_length, self.min_score = batch_size, max_length, min_score
        self.id = f"align_model.v1({path})"

    def find(self, queries: Sequence[Sequence[str]], targets: Sequence[Sequence[str]]
             ) -> list[list[TargetSpan]]:
        """Spans of each query in its target sentence (those scoring below ``min_score`` are
        left out: an entity with none left is unmapped)."""
        if not queries:
            return []
        _, spans = predict_alignment(self.model, self.tokenizer, queries, targets,
                                     batch_size=self.batch_size, max_length=self.max_length,
                                     device=self.device)
        return [[s for s in row if s.score >= self.min_score] for row in spans]

    def project(self, src: Sequence[Sequence[str]], tgt: Sequence[Sequence[str]], entities
                ) -> None:
        """Fill every pair's entity spans: one query per distinct entity string and pair."""
        rows, owners = [], []
        for i, ents in enumerate(entities):
            for e in ents:
                start, end = e.mentions[0]
                rows.append((list(src[i][start:end]), tgt[i]))
                owners.append(e)
        found = self.find([q for q, _ in rows], [t for _, t in rows])
        for e, spans in zip(owners, found):
            e.spans = spans


def _dev_pair(pair_id: str, share: float) -> bool:
    """Deterministic pair-level split: all examples of a pair land on the same side."""
    import hashlib

    h = int(hashlib.blake2b(pair_id.encode(), digest_size=4).hexdigest(), 16)
    return (h % 10_000) < share * 10_000


def read_example_part(path: str, *, filesystem=None, dev_share: float = 0.1, dev: bool = False,
                      columns=("query", "tokens", "tags")) -> Iterator[pa.Table]:
    """One read task: the training (``dev=False``) or held-out (``dev=True``) rows of one
    Parquet part of alignment examples -- the pairs hashed into ``dev_share`` are held out, so
    every example of a pair lands on the same side."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, filesystem=filesystem, columns=["pair_id", *columns])
    is_dev = np.array([_dev_pair(p, dev_share) for p in table.column("pair_id").to_pylist()],
                      dtype=bool)
    yield table.filter(pa.array(is_dev if dev else ~is_dev)).select(list(columns))


def train_aligner(cfg, examples, *, dev_share: float = 0.1, max_dev: int = 500,
                  name: str = "aligner") -> Path:
    """Fine-tune ``cfg.model`` (a ``TrainConfig``) on alignment examples with Ray Train.
    ``examples``: the folder (local path or URI) :func:`pipeline.build_example_file` wrote, or
    a list of its Parquet parts (``stages.EXAMPLE_COLUMNS``); Ray Data tasks read them, so the
    parts may live on any storage every node sees. The pairs hashed into ``dev_share`` are
    held out (at most ``max_dev`` rows reach the driver, as the dev set) and the best epoch by
    dev span F1 is kept in ``cfg.out``. Needs a connected Ray cluster."""
    from functools import partial

    from xner_ray import engine
    from xner_ray.methods.projection.pipeline import example_parts
    from xner_ray.methods.projection.steps import AlignStep
    from xner_ray.records import Sentence
    from xner_ray.store.sink import file_stats
    from xner_ray.train.loop import fit

    fs, parts = example_parts(examples)
    n_rows = sum(file_stats(fs, p)["rows"] for p in parts)  # footers only
    read = partial(read_example_part, filesystem=fs, dev_share=dev_share)
    held_out = engine.dataset(parts, partial(read, dev=True)).materialize()
    n_dev = held_out.count()
    train = engine.dataset(parts, partial(read, dev=False))
    if n_dev == n_rows or not n_dev:
        raise ValueError(f"{examples}: {n_rows - n_dev} training and {n_dev} dev examples after "
                         f"the pair-level split (dev_share={dev_share}); need both")
    words = held_out.take_batch(min(max_dev, cfg.dev_limit or max_dev),
                                batch_format="pyarrow").to_pylist()
    return fit(cfg, step=AlignStep, labels=ALIGN_LABELS, dataset=train,
               n_train=n_rows - n_dev, name=name,
               dev=[Sentence(tokens=r["tokens"], tags=r["tags"]) for r in words],
               step_args={"dev_queries": [r["query"] for r in words]},
               extra_summary={"examples": str(examples)})
