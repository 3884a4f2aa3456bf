"""The command line's plumbing, shared by ``xner`` and ``jobs/*.py``: a parser that refuses
abbreviated flags and names the nearest one, and ``run_command``, which turns any failure into
one line on stderr and an exit code (2 for a bad command line or config, 1 for a failed run;
``--debug`` or ``XNER_DEBUG=1`` adds the traceback).
"""

from __future__ import annotations

import argparse
import difflib
import sys
import traceback
from typing import Any, Callable, Optional, Sequence


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and shows each option's default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "default:" in text or action.default in (
                None, False, [], argparse.SUPPRESS) or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


class XnerParser(argparse.ArgumentParser):
    """No abbreviated flags; an unknown flag is named with the nearest real one; a usage
    error is one line (``--help`` shows the usage)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("allow_abbrev", False)
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)

    def parse_known_args(self, args=None, namespace=None):
        if self._subparsers is None and args is not None:
            # before argparse's own checks, so `--sto x` is not reported as a missing --store
            known = {o for a in self._actions for o in a.option_strings}
            rest = list(args)[:list(args).index("--")] if "--" in args else list(args)
            unknown = [a for a in rest if a.startswith("--") and a.split("=", 1)[0] not in known]
            if unknown:
                self.error(self.unknown_message(unknown))
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            self.error(self.unknown_message(extras))
        return parsed, extras

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = self._subcommand(parsed) or self
            owner.error(owner.unknown_message(extras))
        return parsed

    def _subcommand(self, parsed: argparse.Namespace) -> Optional["XnerParser"]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(parsed, action.dest, None)
                return action.choices.get(chosen) if chosen else None
        return None

    def unknown_message(self, extras: list[str]) -> str:
        flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        first = next((e for e in extras if e.startswith("-")), extras[0])
        name = first.split("=", 1)[0]
        if not name.startswith("-"):
            return f"unexpected argument {first!r}"
        close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"unknown flag {name}{hint}"

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --- running a command ----------------------------------------------------------------------

_TERSE = (ValueError, RuntimeError, FileNotFoundError, NotADirectoryError, PermissionError)


def root_cause(exc: BaseException) -> BaseException:
    """The exception behind Ray's wrappers (task errors, Ray Train worker/controller
    failures) and ``raise ... from`` chains that only re-wrap."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = getattr(exc, "cause", None)
        failures = getattr(exc, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            nxt = next(iter(failures.values()))
        nxt = nxt if isinstance(nxt, BaseException) else getattr(exc, "controller_failure", None)
        if not isinstance(nxt, BaseException) and type(exc).__module__.startswith("ray."):
            nxt = exc.__cause__
        if not isinstance(nxt, BaseException):
            break
        exc = nxt
    return exc


def error_line(exc: BaseException) -> str:
    """One line for an exception: its first line, with the type unless it says little."""
    root = root_cause(exc)
    lines = [l.strip() for l in str(root).strip().splitlines() if l.strip()]
    text = lines[0] if lines else ""
    if not isinstance(root, _TERSE) or not text:
        text = f"{type(root).__name__}: {text}" if text else type(root).__name__
    return text


_COMPRESSED_ERRORS = ("EOFError", "BadGzipFile", "error", "LZMAError", "ArrowInvalid")


def corrupt_input(specs: Sequence[str]) -> Optional[str]:
    """After a decompression error: which compressed input fails to read to its end."""
    from xner_ray.io.files import compression_of, expand_paths, open_binary

    for spec in specs:
        try:
            files = [f for f in expand_paths(spec) if compression_of(f)]
        except (FileNotFoundError, OSError):
            continue
        for f in files:
            try:
                with open_binary(f) as handle:
                    while handle.read(1 << 20):
                        pass
            except Exception as exc:  # noqa: BLE001 - any failure names this file
                return f"{f}: truncated or corrupt {compression_of(f)} file ({error_line(exc)})"
    return None


def run_command(prog: str, fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
                *, debug: bool = False) -> int:
    """``fn(args)`` with the command line's error contract (see the module doc)."""
    from xner_ray import logs
    from xner_ray.config import ConfigError

    debug = debug or logs.debug_enabled()
    try:
        return int(fn(args) or 0)
    except ConfigError as exc:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the command line's last word; --debug shows all
        if debug:
            traceback.print_exc()
        line = error_line(exc)
        root = root_cause(exc)
        if type(root).__name__ in _COMPRESSED_ERRORS or "compress" in line.lower():
            line = corrupt_input(getattr(args, "_inputs", None) or []) or line
        hint = "" if debug else " (--debug for the traceback)"
        print(f"{prog}: error: {line}{hint}", file=sys.stderr)
        return 1
