"""Typed configs: dataclasses with ``help`` metadata, filled from a YAML/JSON file and flags.

Unknown keys and bad values raise at construction with the valid options listed, so a typo in
a config never silently falls back to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Optional, TypeVar

T = TypeVar("T")


def _base_type(tp: Any) -> Any:
    """``Optional[int]`` -> ``int``; other annotations unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, defaults_none: bool = False,
                       skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field (``snake_case`` -> ``--snake-case``), typed, with its help."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        required = (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                    and not defaults_none)
        kw: dict[str, Any] = dict(help=f.metadata.get("help", ""), dest=f.name)
        if tp is bool:
            kw["type"] = _parse_bool
            kw["metavar"] = "BOOL"
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = json.loads
        if defaults_none or not required:
            kw["default"] = None
        parser.add_argument("--" + f.name.replace("_", "-"), required=required, **kw)


def build(cls: type[T], values: dict[str, Any], what: Optional[str] = None) -> T:
    """Construct ``cls`` from a dict, rejecting unknown keys with the valid ones listed;
    ``what`` names the thing in messages (default: the class name)."""
    what = what or cls.__name__
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; valid keys: {sorted(names)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in values)
    if missing:
        raise ValueError(f"{what}: missing required keys {missing}")
    return cls(**values)


def load_file(path: Optional[str]) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def from_args(cls: type[T], args: argparse.Namespace, file_values: Optional[dict] = None) -> T:
    """File values, overridden by flags that were given on the command line."""
    values = dict(file_values or {})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return build(cls, values)


def dump(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=False, default=str)
