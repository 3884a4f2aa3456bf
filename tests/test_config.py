"""Typed configs: file + flags, unknown keys, validation."""

from __future__ import annotations

import argparse
import json

import pytest

from xner_ray import config
from xner_ray.train.teacher import TeacherConfig


def _parser():
    p = argparse.ArgumentParser()
    config.add_dataclass_args(p, TeacherConfig, defaults_none=True)
    return p


def test_flags_override_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: a.txt\ndev: b.txt\nout: o\nepochs: 2\nfreeze_embeddings: true\n")
    args = _parser().parse_args(["--epochs", "5", "--layers", "4"])
    cfg = config.from_args(TeacherConfig, args, config.load_file(str(f)))
    assert (cfg.train, cfg.epochs, cfg.layers, cfg.freeze_embeddings) == ("a.txt", 5, 4, True)
    assert json.loads(config.dump(cfg))["epochs"] == 5


def test_unknown_and_missing_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown TeacherConfig keys \['epoch'\].*valid keys"):
        config.build(TeacherConfig, {"train": "a", "dev": "b", "out": "o", "epoch": 3})
    with pytest.raises(ValueError, match=r"missing required keys \['dev', 'out'\]"):
        config.build(TeacherConfig, {"train": "a"})


def test_bad_values_raise_at_construction():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TeacherConfig(train="a", dev="b", out="o", epochs=0)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--freeze-embeddings", "maybe"])


def test_config_file_must_be_a_mapping(tmp_path):
    f = tmp_path / "c.json"
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a mapping"):
        config.load_file(str(f))
