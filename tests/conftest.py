"""Shared fixtures: the real data folder, one local Ray cluster, a tiny real HF model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    env = os.environ.get("XNER_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real corpora not found: set XNER_SHARED_DATA or put shared/data beside the repo")
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (starting one costs ~4 s)."""
    import ray

    if not ray.is_initialized():
        from xner_ray.cluster import local_system_config

        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 log_to_driver=True, logging_level="WARNING",
                 _system_config=local_system_config(2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny BERT (2 layers, hidden 32) with a WordPiece tokenizer trained on the bundled sample.

    Real transformers classes and files, small enough to train in seconds on 2 cores.
    """
    from tests._tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


TAGS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.fixture(scope="session")
def tiny_teacher_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny encoder with an (untrained, seeded) NER head over WikiANN's labels."""
    import torch

    from xner_ray.models.classifier import load_token_classifier, load_tokenizer

    out = tmp_path_factory.mktemp("tiny-teacher")
    torch.manual_seed(0)
    load_token_classifier(str(tiny_model_dir), TAGS).save_pretrained(out, safe_serialization=True)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(out)
    return out
