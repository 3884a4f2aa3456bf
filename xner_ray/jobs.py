"""The jobs as commands: ``xner rikd | tsl | advpicker | project | calibrenet | combined``
and ``jobs/NAME.py``.

    xner NAME --config FILE [--set key=value ...] [--dry-run] [--address ADDR] [--allow-empty]
    python jobs/NAME.py ...     (the same command, for `ray job submit`)

A job parses its typed config (unknown keys, bad values and missing input files or models
fail before any work starts, exit 2), optionally prints it resolved, connects to Ray once and
calls one library function (a failure there: one line, exit 1). Adding a job is one entry in
:data:`JOBS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A job: its config class and run function, imported only when the job is used
    (``module`` first, then ``module.job``: the method folders)."""

    name: str
    module: str
    config: str
    run: str
    help: str

    def load(self) -> tuple[type, Callable[[Any], Any]]:
        from xner_ray.config import load_symbol

        return (load_symbol(f"{self.module}:{self.config}"),
                load_symbol(f"{self.module}:{self.run}"))


JOBS: dict[str, Job] = {j.name: j for j in (
    Job("rikd", "xner_ray.methods.rikd", "RikdConfig", "run_rikd",
        "RIKD: reinforced iterative knowledge distillation, per target language"),
    Job("tsl", "xner_ray.methods.tsl", "TslConfig", "run_tsl",
        "TSL: single/multi-source teacher-student distillation"),
    Job("advpicker", "xner_ray.methods.advpicker", "AdvPickerConfig", "run_advpicker",
        "AdvPicker: adversarial teachers, discriminator-selected pseudo-labels, students"),
    Job("project", "xner_ray.methods.projection", "ProjectConfig", "run_project",
        "entity projection on parallel corpora, then target models"),
    Job("calibrenet", "xner_ray.methods.calibrenet", "CalibrenetConfig", "run_calibrenet",
        "CalibreNet: boundary calibration of a base tagger's labels on target text"),
    Job("combined", "xner_ray.methods.combined", "CombinedConfig", "run_combined",
        "projection + English teachers -> AdvPicker selection -> RIKD rounds (-> CalibreNet)"),
)}


def load_job(name: str) -> tuple[type, Callable[[Any], Any]]:
    """``(ConfigClass, run_function)`` of a registered job."""
    return JOBS[name].load()


# --- the command line -----------------------------------------------------------------------

def add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML or JSON config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key; dots for nested keys (student.lr=3e-4), "
                        "lists as [a, b]; converted to the key's type")
    p.add_argument("--dry-run", action="store_true",
                   help="print every resolved key (nested blocks with their defaults), check "
                        "that inputs and models exist, and exit")
    p.add_argument("--allow-empty", action="store_true",
                   help="accept empty input files (default: an error)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a private "
                                     "local cluster)")


class _KeysHelp(argparse.Action):
    """``-h``: the usage plus every config key with its type, default and help (loads the
    job's config class only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show this help, with every config key, and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        job = getattr(parser, "_xner_job", None)
        if job is not None:
            cls, _ = load_job(job)
            parser.epilog = config_keys_help(cls)
        parser.print_help()
        parser.exit()


def config_keys_help(cls: type) -> str:
    """Every key of a config dataclass: ``name (type, default X): help``."""
    from xner_ray.config import _type_name, field_default

    hints = typing.get_type_hints(cls)
    lines = [f"config keys ({cls.__module__}.{cls.__name__}):"]
    for f in dataclasses.fields(cls):
        default = field_default(f)
        shown = "required" if default is dataclasses.MISSING else f"default: {default!r}"
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, {shown})")
        if f.metadata.get("help"):
            lines.append(f"      {f.metadata['help']}")
    return "\n".join(lines)


def add_job_parsers(sub: Any, parser_class: Optional[type] = None, **kw: Any) -> None:
    """One ``xner NAME`` subcommand per registered job."""
    for job in JOBS.values():
        p = sub.add_parser(job.name, help=job.help, description=job.help, add_help=False, **kw)
        p.add_argument("-h", "--help", action=_KeysHelp)
        p._xner_job = job.name
        add_job_args(p)
        p.set_defaults(func=cmd_job, job=job.name)


def build_config(cls: type, args: argparse.Namespace) -> Any:
    """The typed config from ``--config`` and ``--set`` (a :class:`ConfigError` when bad)."""
    from xner_ray import config

    values = config.load_file(args.config)
    for item in args.set:
        config.set_value(values, item)
    if getattr(args, "allow_empty", False) and _label_knob("allow_empty", cls):
        label = values.get("label")
        values["label"] = {**(label if isinstance(label, dict) else {}), "allow_empty": True}
    return config.build(cls, values)


def _label_knob(name: str, cls: type) -> bool:
    """Whether the job's ``label:`` block takes ``name`` (the labeling pipeline decides)."""
    from xner_ray import config

    block = config._block_for(cls, "label")
    try:
        return block is not None and name in config._block_keys(block)[1]
    except ImportError:
        return False


def prepare(cfg: Any, args: argparse.Namespace) -> Optional[int]:
    """``--dry-run``: print the resolved config and the path check, return the exit code.
    Otherwise check the paths (raising) and return ``None``: go on."""
    from xner_ray import config

    data = config.resolved(cfg)
    problems = check_paths(data, allow_empty=getattr(args, "allow_empty", False))
    if getattr(args, "dry_run", False):
        print(json.dumps(data, indent=2, default=str))
        for p in problems:
            print(f"path check: {p}")
        print(f"path check: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        return 2 if problems else 0
    if problems:
        more = f" (and {len(problems) - 1} more; --dry-run lists them)" if len(problems) > 1 else ""
        raise config.ConfigError(problems[0] + more)
    return None


def cmd_job(args: argparse.Namespace, fn: Optional[Callable] = None,
            cls: Optional[type] = None) -> int:
    """Handler of ``xner NAME`` (and of ``jobs/NAME.py``)."""
    from xner_ray.cluster import init_ray

    if cls is None or fn is None:
        cls, fn = load_job(args.job)
    cfg = build_config(cls, args)
    code = prepare(cfg, args)
    if code is not None:
        return code
    args._inputs = input_specs(dataclasses.asdict(cfg))  # for naming a corrupt input file
    init_ray(args.address)
    result = fn(cfg)
    print(json.dumps({"job": args.job, "result": result}, default=str))
    return 0


def run_job(name: str, cls: type, fn: Callable[[Any], Any],
            argv: Optional[Sequence[str]] = None, doc: str = "") -> int:
    """``jobs/NAME.py`` with an explicit config class and function (tests, custom jobs)."""
    from xner_ray import logs
    from xner_ray.console import XnerParser, run_command

    p = XnerParser(prog=f"jobs/{name}.py", description=doc,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_args(p)
    p.add_argument("--debug", action="store_true", help="tracebacks and DEBUG logs")
    args = p.parse_args(argv)
    args.job = name
    logs.setup(debug=args.debug)
    return run_command(f"jobs/{name}.py", lambda a: cmd_job(a, fn, cls), args,
                       debug=args.debug)


# --- input and model checks ------------------------------------------------------------------

INPUT_KEYS = frozenset({"train", "dev", "source_dev", "unlabeled", "path", "links", "data",
                        "input"})
EMPTY_CHECKED = frozenset({"unlabeled", "path", "input"})  # text to label: empty is a mistake
MODEL_KEYS = frozenset({"model", "teacher", "teachers", "student", "lang_scorers",
                        "alignment_model", "encoder"})


def _walk(data: Any, key: str = "", where: str = ""):
    """``(where, key, text)`` for every string in a nested config dict."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _walk(v, str(k), f"{where}.{k}" if where else str(k))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            yield from _walk(v, key, f"{where}[{i}]")
    elif isinstance(data, str) and not data.startswith("<"):
        yield where, key, data


def input_specs(data: dict) -> list[str]:
    return [text for _, key, text in _walk(data) if key in INPUT_KEYS]


def check_paths(data: dict, allow_empty: bool = False) -> list[str]:
    """Problems with the config's input files/globs and model folders, one line each
    (``builtin:...`` models and URIs such as ``s3://...`` are not checked)."""
    problems = []
    for where, key, text in _walk(data):
        if key in INPUT_KEYS:
            problem = check_input(text, check_empty=key in EMPTY_CHECKED and not allow_empty)
        elif key in MODEL_KEYS:
            problem = check_model(text)
        else:
            continue
        if problem:
            problems.append(f"{where}: {problem}")
    return problems


def _is_uri(text: str) -> bool:
    return "://" in text


def check_input(spec: str, check_empty: bool = False) -> Optional[str]:
    """``None`` when ``spec`` (file, folder, glob) names readable input, else why not."""
    from xner_ray.io.files import expand_paths

    if _is_uri(spec):
        return None
    try:
        files = expand_paths(spec)
    except FileNotFoundError:
        if os.path.isdir(spec):
            return f"folder {spec} holds no input files"
        return f"input {spec} does not exist" if not any(c in spec for c in "*?[") \
            else f"no input files match {spec}"
    if check_empty and len(files) <= 1000 and all(_is_empty(f) for f in files):
        return (f"input {spec} is empty" + (f" ({len(files)} files)" if len(files) > 1 else "")
                + "; pass --allow-empty to accept that")
    return None


def _is_empty(path: str, probe: int = 1 << 16) -> bool:
    """No text at all: a 0-byte file, or (decompressed) only whitespace in a short file."""
    from xner_ray.io.files import open_binary

    try:
        if os.path.getsize(path) == 0:
            return True
        with open_binary(path) as f:
            head = f.read(probe)
            return not head.strip() and len(head) < probe
    except (OSError, EOFError, ValueError):
        return False  # unreadable: the reader reports it, naming the file


def check_model(name: str) -> Optional[str]:
    """``None`` for an existing model folder, a ``builtin:`` model, a URI or a Hugging Face hub
    name; otherwise why the model cannot be found."""
    if name.startswith("builtin:") or _is_uri(name):
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return None
    if path.exists():
        return f"model {name} is a file, not a model folder"
    first = name.split("/")[0]
    local = (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
             or ("/" in name and Path(first).is_dir()))
    if local:
        return f"model folder {name} does not exist"
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") and not _in_hf_cache(name):
        return f"model {name} is no local folder and not in the Hugging Face cache (offline)"
    return None  # a hub name: transformers downloads it


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an invalid repo id, or no huggingface_hub: not cached
        return False
