"""Typed configs: dataclasses with ``help`` metadata, filled from a YAML/JSON file and flags.

Every value -- from a file, a ``--set key=value`` or a flag -- is converted to its field's type
(bool, int, float, str, Optional, list, dict) or rejected with one line naming the key, the
value and the expected type. A ``dict`` field that is a block of another dataclass's keys (a
job's ``student:`` is ``TrainConfig`` keys) is checked key by key the same way, so
``student.lr=fast`` fails before any work starts, named ``student.lr``. Unknown keys and bad
values raise at construction with the valid options listed: a typo never silently falls back
to a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad key or value in a config: the command line reports it in one line, exit 2."""


class Raw(str):
    """Text from the command line (``--set key=value``): converted by the field's type."""


# --- values ---------------------------------------------------------------------------------

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
_NULL = ("null", "none", "~")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _bad(key: str, value: Any, expected: str, hint: str = "") -> ConfigError:
    shown = str(value) if isinstance(value, Raw) else value
    return ConfigError(f"{key}: invalid value {shown!r} (expected {expected}){hint}")


def _parse_text(text: str, key: str, expected: str) -> Any:
    """List/mapping syntax from the command line: JSON or YAML flow (``[a, b]``, ``{k: v}``)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise _bad(key, text, expected) from None


def plain(value: Any) -> Any:
    """Command-line text where no type is known: a JSON value if it parses, else the string."""
    if isinstance(value, Raw):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` or a :class:`ConfigError` naming ``key``, the value and ``tp``."""
    if tp is Any or tp is object or isinstance(tp, (str, typing.ForwardRef)):
        return plain(value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, Raw) and value.lower() in _NULL):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        for arg in inner:
            try:
                return coerce(value, arg, key)
            except ConfigError:
                if len(inner) == 1:  # Optional[X]: X's own message says more
                    raise
        raise _bad(key, value, _type_name(tp))
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise _bad(key, value, "one of " + ", ".join(map(repr, typing.get_args(tp))))
        return value
    if value is None:
        raise _bad(key, value, _type_name(tp))
    if tp is bool:
        return _to_bool(value, key)
    if tp is int:
        return _to_int(value, key)
    if tp is float:
        return _to_float(value, key)
    if tp is str:
        if isinstance(value, bool):
            raise _bad(key, value, "str", " (quote it: YAML reads yes/no/on/off as booleans)")
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise _bad(key, value, "str")
        return str(value)
    if tp in (list, tuple) or origin in (list, tuple):
        return _to_list(value, tp, key)
    if tp is dict or origin is dict:
        if isinstance(value, str):
            value = _parse_text(value, key, "mapping")
        if not isinstance(value, dict):
            raise _bad(key, value, "mapping")
        args = typing.get_args(tp)
        return {k: coerce(v, args[1], f"{key}.{k}") if args else plain(v)
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _bad(key, value, f"mapping of {tp.__name__} keys")
        return typed_values(tp, value, key + ".")
    return plain(value)


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise _bad(key, value, "bool: true/false, yes/no or 1/0")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise _bad(key, value, "int")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        raise _bad(key, value, "int")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
    raise _bad(key, value, "int")


def _to_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise _bad(key, value, "float")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise _bad(key, value, "float") from None
        if math.isfinite(out):
            return out
    raise _bad(key, value, "float")


def _to_list(value: Any, tp: Any, key: str) -> list:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = _parse_text(text, key, _type_name(tp))
        else:  # one item (a lone path for a list of paths); "" is no item
            value = [value] if text else []
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise _bad(key, value, _type_name(tp))
    args = typing.get_args(tp)
    if not args:
        return [plain(v) for v in value]
    return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]


# --- nested blocks --------------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """A ``dict`` field holding another dataclass's keys. Classes and key lists are named
    ``"module:NAME"`` and imported when needed (method modules move between folders;
    ``module.job`` is tried after ``module``)."""

    cls: str
    keys: Optional[str] = None        # allowed keys (default: every field of ``cls``)
    defaults: Optional[str] = None    # the job's defaults over the class's (shown by --dry-run)
    fixed: tuple = ()                 # keys the job sets itself (unless given, where allowed)
    extra: tuple = ()                 # ``(key, Block)`` pairs allowed besides ``cls``'s keys


_TRAIN = "xner_ray.train.loop:TrainConfig"
_TEACHER = "xner_ray.train.teacher:TeacherConfig"

# Nested blocks by ``Class.field`` (a base class's entries apply to its subclasses);
# ``field[]`` is each item of a list, ``field[].key`` a block inside each item.
BLOCKS: dict[str, Block] = {
    "JobConfig.student": Block(_TRAIN, defaults="xner_ray.methods.common:STUDENT_DEFAULTS",
                               fixed=("out",)),
    "JobConfig.label": Block("xner_ray.labeling.pipeline:LabelConfig",
                             keys="xner_ray.methods.common:LABEL_KNOBS"),
    "JobConfig.targets[]": Block("xner_ray.methods.common:TargetSpec"),
    "RikdConfig.train_teacher": Block(_TEACHER),
    "TslConfig.teachers[].train": Block(_TEACHER),
    "AdvPickerConfig.train_tladv": Block(
        "xner_ray.methods.advpicker.tladv:TladvConfig",
        fixed=("out", "seed", "unlabeled")),
    "ProjectConfig.train_teacher": Block(_TEACHER),
    "ProjectConfig.target": Block(_TRAIN, defaults="xner_ray.methods.projection:TARGET_DEFAULTS",
                                  fixed=("model", "out", "freeze_layers")),
    "ProjectConfig.train_aligner": Block(
        _TRAIN, defaults="xner_ray.methods.projection:ALIGNER_DEFAULTS", fixed=("out",),
        extra=(("examples", Block("xner_ray.methods.projection.pipeline:ExampleConfig")),)),
    "ProjectConfig.projection": Block("xner_ray.methods.projection.pipeline:ProjectionConfig",
                                      keys="xner_ray.methods.projection.pipeline:KNOBS"),
}


def load_symbol(spec: str) -> Any:
    """``"pkg.mod:NAME"`` -> the object; tries ``pkg.mod.job`` too (method folders)."""
    module, _, name = spec.partition(":")
    last: Optional[Exception] = None
    for mod in (module, module + ".job"):
        try:
            obj = getattr(importlib.import_module(mod), name, None)
        except ImportError as exc:
            last = exc
            continue
        if obj is not None:
            return obj
    raise ImportError(f"cannot load {spec}: {last or 'no such name'}")


def _block_for(cls: type, path: str) -> Optional[Block]:
    for base in cls.__mro__:
        block = BLOCKS.get(f"{base.__name__}.{path}")
        if block is not None:
            return block
    return None


def _block_keys(block: Block) -> tuple[type, list[str]]:
    cls = load_symbol(block.cls)
    keys = list(load_symbol(block.keys)) if block.keys else [f.name for f in
                                                             dataclasses.fields(cls)]
    return cls, keys + [k for k, _ in block.extra]


def suggest(word: str, options: Any) -> str:
    """``; did you mean 'lr'?`` when one option is close, else ``""``."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_block(block: Block, values: Any, key: str) -> Any:
    """Typed values of one block (a mapping), unknown keys named with the valid ones."""
    if values is None or dataclasses.is_dataclass(values):
        return values
    if isinstance(values, str):
        values = _parse_text(values, key, "mapping")
    if not isinstance(values, dict):
        raise _bad(key, values, "mapping")
    try:
        cls, valid = _block_keys(block)
    except ImportError:
        return plain(values)  # the class moved: its own constructor still checks the values
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key {key}.{unknown[0]}{suggest(unknown[0], valid)} "
                          f"(valid keys of {key}: {', '.join(sorted(valid))})")
    hints = typing.get_type_hints(cls)
    extra = dict(block.extra)
    out = {}
    for k, v in values.items():
        if k in extra:
            out[k] = check_block(extra[k], v, f"{key}.{k}")
        else:
            out[k] = coerce(v, hints.get(k, Any), f"{key}.{k}")
    return out


def _nested(cls: type, path: str, value: Any, key: str) -> Any:
    """Check the blocks registered under ``path`` (and below it) in ``value``."""
    block = _block_for(cls, path)
    if block is not None:
        value = check_block(block, value, key)
    if isinstance(value, list) and any(_block_for(cls, p) for p in _paths_below(cls, path)):
        value = [_nested(cls, f"{path}[]", v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif isinstance(value, dict):
        for sub in {p[len(path) + 1:].split(".")[0].split("[")[0]
                    for p in _paths_below(cls, path) if p[len(path):].startswith(".")}:
            if sub in value:
                value = {**value, sub: _nested(cls, f"{path}.{sub}", value[sub], f"{key}.{sub}")}
    return value


def _paths_below(cls: type, path: str) -> list[str]:
    names = {b.__name__ for b in cls.__mro__}
    out = []
    for full in BLOCKS:
        owner, _, p = full.partition(".")
        if owner in names and p.startswith(path) and p[len(path):len(path) + 1] in (".", "["):
            out.append(p)
    return out


def typed_values(cls: type, values: dict[str, Any], prefix: str = "") -> dict:
    """``values`` converted to ``cls``'s field types, nested blocks checked key by key; keys
    are named ``prefix + key`` in errors (``student.`` + ``lr``)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        key = prefix + f.name
        value = coerce(values[f.name], hints[f.name], key)
        out[f.name] = _nested(cls, f.name, value, key)
    return out


# --- building -------------------------------------------------------------------------------

def build(cls: type[T], values: dict[str, Any], what: Optional[str] = None) -> T:
    """Construct ``cls`` from a dict of typed (or convertible) values, rejecting unknown keys
    with the valid ones listed; ``what`` names the thing in messages (default: the class)."""
    what = what or cls.__name__
    if not isinstance(values, dict):
        raise ConfigError(f"{what}: expected a mapping of keys, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} keys {unknown}{suggest(unknown[0], names)}; "
                          f"valid keys: {sorted(names)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING and f.name not in values)
    if missing:
        raise ConfigError(f"{what}: missing required keys {missing}")
    typed = typed_values(cls, values, "" if what == cls.__name__ else what + ".")
    try:
        return cls(**typed)
    except TypeError as exc:  # a check inside the class met a value of a type it did not expect
        raise ConfigError(f"{what}: {exc}") from exc


def load_file(path: Optional[str]) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError / JSONDecodeError: both name line and column
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{path}: not valid {'YAML' if p.suffix != '.json' else 'JSON'}: "
                          f"{' '.join(l.strip() for l in first)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def set_value(values: dict, item: str) -> None:
    """Apply one ``--set key=value`` (dots for nested keys); the value stays text
    (:class:`Raw`) until the field's type converts it."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set takes key=value, got {item!r}")
    target = values
    *path, last = key.split(".")
    for i, part in enumerate(path):
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {'.'.join(path[:i + 1])} is not a mapping "
                              f"(it is {nxt!r})")
        target = nxt
    target[last] = Raw(raw)


# --- command-line flags ---------------------------------------------------------------------

def _base_type(tp: Any) -> Any:
    """``Optional[int]`` -> ``int``; other annotations unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    try:
        return _to_bool(text, "value")
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected true/false, yes/no or 1/0, got {text!r}") \
            from None


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, defaults_none: bool = False,
                       skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field (``snake_case`` -> ``--snake-case``), typed, with its help and
    the field's default (flags default to unset so a config file's values stay)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        default = field_default(f)
        required = default is dataclasses.MISSING and not defaults_none
        help_text = f.metadata.get("help", "")
        if default is not dataclasses.MISSING:
            help_text += f" (default: {default})"
        elif defaults_none:
            help_text += " (required)"
        kw: dict[str, Any] = dict(help=help_text, dest=f.name)
        if tp is bool:
            kw["type"] = _parse_bool
            kw["metavar"] = "BOOL"
        elif tp in (int, float, str):
            kw["type"] = tp
        else:
            kw["type"] = Raw
            kw["metavar"] = "JSON"
        if defaults_none or not required:
            kw["default"] = None
        parser.add_argument("--" + f.name.replace("_", "-"), required=required, **kw)


def from_args(cls: type[T], args: argparse.Namespace, file_values: Optional[dict] = None) -> T:
    """File values, overridden by flags that were given on the command line."""
    values = dict(file_values or {})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return build(cls, values)


# --- showing a config -----------------------------------------------------------------------

JOB_SETS = "<set by the job>"


def resolved(cfg: Any) -> dict:
    """The config as a dict, each nested block with its defaults filled in (what the job will
    run with; keys the job sets itself say so)."""
    data = dataclasses.asdict(cfg)
    return _fill(type(cfg), "", data)


def _fill(cls: type, path: str, value: Any) -> Any:
    if not path:
        return {k: _fill(cls, k, v) for k, v in value.items()}
    block = _block_for(cls, path)
    if block is not None and isinstance(value, dict):
        value = _fill_block(block, value)
    if isinstance(value, list) and _paths_below(cls, path):
        return [_fill(cls, f"{path}[]", v) for v in value]
    if isinstance(value, dict) and _paths_below(cls, path):
        return {k: _fill(cls, f"{path}.{k}", v) for k, v in value.items()}
    return value


def _fill_block(block: Block, given: dict) -> dict:
    try:
        cls, valid = _block_keys(block)
        job_defaults = load_symbol(block.defaults) if block.defaults else {}
    except ImportError:
        return given
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in valid:
            continue
        default = field_default(f)
        if f.name in given:
            out[f.name] = given[f.name]
        elif f.name in block.fixed:
            out[f.name] = JOB_SETS
        elif f.name in job_defaults:
            out[f.name] = job_defaults[f.name]
        elif default is not dataclasses.MISSING:
            out[f.name] = default
        else:
            out[f.name] = "<required>"
    for k, sub in block.extra:
        out[k] = _fill_block(sub, given.get(k) or {})
    return out


def dump(cfg: Any) -> str:
    return json.dumps(resolved(cfg), indent=2, sort_keys=False, default=str)
