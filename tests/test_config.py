"""Typed configs: file + flags, unknown keys, validation."""

from __future__ import annotations

import argparse
import dataclasses
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
    with pytest.raises(ValueError, match="threads must be >= 1"):
        TeacherConfig(train="a", dev="b", out="o", threads=0)
    with pytest.raises(SystemExit):
        _parser().parse_args(["--freeze-embeddings", "maybe"])


def test_config_file_must_be_a_mapping(tmp_path):
    f = tmp_path / "c.json"
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a mapping"):
        config.load_file(str(f))


# --- typed values ------------------------------------------------------------------------------

def _teacher(**kw):
    return config.build(TeacherConfig, {"train": "a", "dev": "b", "out": "o", **kw})


@pytest.mark.parametrize("text,expected", [("False", False), ("no", False), ("0", False),
                                           ("TRUE", True), ("yes", True), ("1", True)])
def test_bools_from_the_command_line(text, expected):
    assert _teacher(freeze_embeddings=config.Raw(text)).freeze_embeddings is expected


@pytest.mark.parametrize("key,value,expected", [
    ("freeze_embeddings", config.Raw("maybe"), "bool"),
    ("freeze_embeddings", "off-ish", "bool"),
    ("freeze_embeddings", 2, "bool"),
    ("epochs", config.Raw("2.5"), "int"),
    ("epochs", 2.5, "int"),
    ("epochs", config.Raw("abc"), "int"),
    ("epochs", True, "int"),
    ("lr", config.Raw("fast"), "float"),
    ("lr", "nan", "float"),
    ("max_steps", config.Raw("many"), "int"),
    ("model", True, "str"),
])
def test_bad_values_name_key_value_and_type(key, value, expected):
    with pytest.raises(config.ConfigError) as err:
        _teacher(**{key: value})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{key}: invalid value")
    assert repr(str(value) if isinstance(value, config.Raw) else value) in msg
    assert f"expected {expected}" in msg


def test_numbers_optional_and_yaml_strings_convert():
    cfg = _teacher(epochs=config.Raw("4"), lr="1e-4", max_steps=config.Raw("null"),
                   layers=3.0, warmup_ratio=config.Raw("0.2"), use_gpu=config.Raw("none"))
    assert (cfg.epochs, cfg.lr, cfg.max_steps, cfg.layers, cfg.warmup_ratio, cfg.use_gpu) == (
        4, 1e-4, None, 3, 0.2, None)
    assert isinstance(cfg.lr, float) and isinstance(cfg.layers, int)


def test_lists_from_json_or_yaml_syntax():
    assert config.coerce(config.Raw('["a", "b"]'), list, "k") == ["a", "b"]
    assert config.coerce(config.Raw("[1, 2]"), list[int], "k") == [1, 2]
    assert config.coerce(config.Raw("one/path"), list, "k") == ["one/path"]
    assert config.coerce(["1", 2], list[int], "k") == [1, 2]
    with pytest.raises(config.ConfigError, match=r"k\[1\]: invalid value 'x' \(expected int\)"):
        config.coerce([1, "x"], list[int], "k")
    with pytest.raises(config.ConfigError, match="expected list"):
        config.coerce({"a": 1}, list, "k")


def test_set_keeps_text_until_the_type_converts_it():
    values = {"student": {"lr": 1e-4}}
    for item in ("run_id=007", "rounds=2", "student.lr=3e-4", "train_teacher.out=/x/y",
                 "label.batch_size=8"):
        config.set_value(values, item)
    assert values["run_id"] == "007" and isinstance(values["rounds"], config.Raw)
    assert values["student"] == {"lr": "3e-4"} and values["train_teacher"] == {"out": "/x/y"}
    with pytest.raises(config.ConfigError, match="key=value"):
        config.set_value(values, "rounds")
    with pytest.raises(config.ConfigError, match="run_id is not a mapping"):
        config.set_value(values, "run_id.x=1")


# --- nested blocks of the jobs -----------------------------------------------------------------

def _rikd_values(tmp_path, **extra):
    from xner_ray.demo import sample_path

    return {"run_id": "r", "store": str(tmp_path / "s"), "out": str(tmp_path / "o"),
            "source_dev": str(sample_path("en.dev.txt")), "teacher": str(tmp_path),
            "targets": [{"lang": "de", "unlabeled": str(sample_path("de.dev.txt"))}], **extra}


def test_nested_blocks_are_typed_and_named(tmp_path):
    from xner_ray.jobs import load_job

    cls, _ = load_job("rikd")
    cfg = config.build(cls, _rikd_values(
        tmp_path, reinforce=config.Raw("False"),
        student={"lr": config.Raw("3e-4"), "epochs": "2", "freeze_embeddings": "no"},
        label={"batch_size": config.Raw("8")},
        train_teacher={"train": "a", "dev": "b", "out": "o", "layers": config.Raw("4")}))
    assert cfg.reinforce is False
    assert cfg.student == {"lr": 3e-4, "epochs": 2, "freeze_embeddings": False}
    assert cfg.label == {"batch_size": 8} and cfg.train_teacher["layers"] == 4
    bad = [({"student": {"lr": config.Raw("fast")}}, r"^student\.lr: invalid value 'fast' "
                                                      r"\(expected float\)$"),
           ({"rounds": config.Raw("2.5")}, r"^rounds: invalid value '2\.5' \(expected int\)$"),
           ({"rounds": config.Raw("abc")}, r"^rounds: invalid value 'abc'"),
           ({"train_teacher": {"epochs": "x"}}, r"^train_teacher\.epochs: invalid value 'x'"),
           ({"label": {"use_gpu": "maybe"}}, r"^label\.use_gpu: invalid value 'maybe'"),
           ({"student": {"lrr": 1}}, r"unknown key student\.lrr; did you mean 'lr'\?"),
           ({"label": {"store": "x"}}, r"unknown key label\.store"),
           ({"targets": [{"lang": "de", "unlabeled": "x", "dev": ["a"]}]},
            r"^targets\[0\]\.dev: invalid value \['a'\] \(expected str\)$")]
    for extra, pattern in bad:
        with pytest.raises(config.ConfigError, match=pattern):
            config.build(cls, _rikd_values(tmp_path, **extra))


def test_tsl_teachers_train_blocks_are_typed(tmp_path):
    from xner_ray.jobs import load_job

    cls, _ = load_job("tsl")
    values = _rikd_values(tmp_path)
    del values["teacher"]
    values["teachers"] = [{"lang": "en", "train": {"train": "a", "dev": "b", "out": "o",
                                                   "epochs": "two"}}]
    with pytest.raises(config.ConfigError, match=r"^teachers\[0\]\.train\.epochs: invalid"):
        config.build(cls, values)


def test_dry_run_shows_nested_defaults(tmp_path):
    from xner_ray.jobs import load_job
    from xner_ray.train.loop import TrainConfig

    cls, _ = load_job("rikd")
    data = config.resolved(config.build(cls, _rikd_values(tmp_path, student={"lr": 1e-3})))
    student = data["student"]
    assert set(student) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert student["lr"] == 1e-3 and student["out"] == config.JOB_SETS
    assert student["freeze_layers"] == 3  # the papers' student default, not TrainConfig's 0
    assert data["label"]["batch_size"] == 32 and "store" not in data["label"]
    assert data["targets"][0]["fmt"] == "auto"

