"""Teacher fine-tuning on source-language labeled data, as a Ray Train ``TorchTrainer``.

The driver reads and validates the CoNLL files (rejects counted and written to
``rejects.jsonl``), feeds the training sentences to the workers through Ray Data, and each epoch
rank 0 scores the source dev set (model selection on source-language dev only) and reports a
checkpoint; the best one is copied to ``out`` as a plain Hugging Face folder (``loop.fit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from xner_ray.train.loop import TrainConfig, fit, read_labeled, write_rejects


@dataclass(kw_only=True)
class TeacherConfig(TrainConfig):
    """Teacher training settings (every field is also a CLI flag / config key)."""

    train: str = field(metadata={"help": "CoNLL file(s)/dir/glob with source-language labels"})
    dev: str = field(metadata={"help": "source-language dev CoNLL file for model selection"})
    label_map: Optional[str] = field(default=None,
                                     metadata={"help": "label mapping, e.g. 'drop:MISC'"})


def labels_of(sents) -> list[str]:
    from xner_ray.labels import entity_type, label_list

    return label_list(sorted({entity_type(t) for s in sents for t in s.tags if t != "O"}))


def read_train_dev(cfg: TeacherConfig):
    """``(train, train_rejects, dev, dev_rejects, labels)`` of a teacher config: both files read
    with its label map, the label set taken from train; dev tags train never has are an error
    here, before any training."""
    from xner_ray.labels import LabelMap

    label_map = LabelMap.from_spec(cfg.label_map) if cfg.label_map else None
    train, train_rej = read_labeled(cfg.train, "train", label_map)
    dev, dev_rej = read_labeled(cfg.dev, "dev", label_map)
    labels = labels_of(train)
    unknown = sorted({t for s in dev for t in s.tags} - set(labels))
    if unknown:
        raise ValueError(f"dev tags {unknown} never occur in train (labels {labels}); "
                         "map them with label_map, e.g. 'drop:TYPE'")
    return train, train_rej, dev, dev_rej, labels


def train_teacher(cfg: TeacherConfig) -> Path | str:
    """Train, select on dev, and leave the best checkpoint in ``cfg.out``; returns that path."""
    import ray

    train, train_rej, dev, dev_rej, labels = read_train_dev(cfg)
    from xner_ray.io.uri import join

    write_rejects(join(cfg.out, "rejects.jsonl"), [*train_rej, *dev_rej])
    ds = ray.data.from_items([{"tokens": s.tokens, "tags": s.tags} for s in train])
    from xner_ray.train.steps import CEStep

    return fit(cfg, step=CEStep, labels=labels, dataset=ds, n_train=len(train), dev=dev,
               name="teacher", extra_summary={"rejects": {"train": dict(train_rej.counts),
                                                          "dev": dict(dev_rej.counts)}})
