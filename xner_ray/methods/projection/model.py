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
from typing import Optional, Sequence

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


def train_aligner(cfg, examples: Path, *, dev_share: float = 0.1, max_dev: int = 500,
                  name: str = "aligner") -> Path:
    """Fine-tune ``cfg.model`` (a ``TrainConfig``) on the examples in ``examples`` (Parquet of
    ``stages.EXAMPLE_COLUMNS``) with Ray Train; the pairs hashed into ``dev_share`` are held out
    and the best epoch by dev span F1 is kept in ``cfg.out``. Needs a connected Ray cluster."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray

    from xner_ray.records import Sentence
    from xner_ray.train.loop import fit

    table = pq.read_table(examples)
    is_dev = pa.array([_dev_pair(p, dev_share) for p in table.column("pair_id").to_pylist()])
    train, dev = table.filter(pc.invert(is_dev)), table.filter(is_dev)
    if not train.num_rows or not dev.num_rows:
        raise ValueError(f"{examples}: {train.num_rows} training and {dev.num_rows} dev examples "
                         f"after the pair-level split (dev_share={dev_share}); need both")
    dev = dev.slice(0, min(max_dev, cfg.dev_limit or max_dev))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_path = out / "train_examples.parquet"
    pq.write_table(train.select(["query", "tokens", "tags"]), train_path)
    dev_rows = dev.to_pylist()
    try:
        from xner_ray.methods.projection.steps import AlignStep

        return fit(cfg, step=AlignStep, labels=ALIGN_LABELS,
                   dataset=ray.data.read_parquet(str(train_path), num_cpus=0.25),
                   n_train=train.num_rows, name=name,
                   dev=[Sentence(tokens=r["tokens"], tags=r["tags"]) for r in dev_rows],
                   step_args={"dev_queries": [r["query"] for r in dev_rows]},
                   extra_summary={"examples": str(examples)})
    finally:
        train_path.unlink(missing_ok=True)
