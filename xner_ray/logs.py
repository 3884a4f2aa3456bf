"""Logging set-up and progress for the project's messages.

Every message of the project goes through :mod:`logging` under the ``xner_ray`` logger, at INFO
for normal progress and at WARNING only for things a user should act on. Entry points (``xner``
and ``jobs/*.py``) call :func:`setup` once; library code only does
``logger = logging.getLogger(__name__)``.

Progress, two ways:

* :class:`Progress` (from :func:`progress`) for a loop the caller owns -- the labeling driver
  consuming its stream, say: ``update(n, **fields)`` per batch. On a terminal it redraws one
  bar line (count, rate, ETA, fields) on stderr; elsewhere (a log file, ``ray job logs``, a
  Ray worker) it logs a plain line every ``every_s`` seconds. ``close()`` logs one final line.
* :func:`log_progress` for code that already decides when to report (the per-worker training
  loop): one line with count, rate, ETA and fields, through the given logger.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import re
import sys
import time
from typing import IO, Any, Optional

PROJECT = "xner_ray"
FORMAT = "%(asctime)s %(levelname)s %(short)s: %(message)s"
DEBUG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
_HANDLER_MARK = "_xner_ray_handler"


class _Formatter(logging.Formatter):
    """``%(short)s``: the logger name without the package (``labeling.pipeline``)."""

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        record.short = name[len(PROJECT) + 1:] if name.startswith(PROJECT + ".") else name
        return super().format(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it per test)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def debug_enabled() -> bool:
    """``XNER_DEBUG=1``: tracebacks and DEBUG logs (as ``--debug``)."""
    return os.environ.get("XNER_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def setup(verbose: bool = False, debug: bool = False, stream: Optional[IO[str]] = None) -> None:
    """The project's messages at INFO (DEBUG with ``debug``) on stderr, other libraries at
    WARNING (INFO with ``verbose``). Idempotent: a second call replaces the first's handler."""
    debug = debug or debug_enabled()
    root, project = logging.getLogger(), logging.getLogger(PROJECT)
    for lg in (root, project):  # ours from an earlier call or from ensure_handler()
        for h in [h for h in lg.handlers if getattr(h, _HANDLER_MARK, False)]:
            lg.removeHandler(h)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(_Formatter(DEBUG_FORMAT if debug else FORMAT, DATEFMT))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    project.setLevel(logging.DEBUG if debug else logging.INFO)


def ensure_handler() -> None:
    """In a process nobody configured (a Ray worker under Ray Train v1, a plain actor), make
    INFO lines of the project visible: they reach the driver through Ray's log forwarding."""
    project = logging.getLogger(PROJECT)
    if project.level == logging.NOTSET:
        project.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not project.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        setattr(handler, _HANDLER_MARK, True)
        project.addHandler(handler)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fields(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        if v is None:
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return " ".join(parts)


def progress_line(done: int, total: Optional[int], *, unit: str = "it",
                  rate: Optional[float] = None, elapsed: Optional[float] = None,
                  **fields: Any) -> str:
    """``120/300 sentences (40%), 45.1 sentences/s, ETA 0:04, loss 0.1234`` (no ETA without a
    total or a rate)."""
    head = f"{done}/{total} {unit} ({100 * done / total:.0f}%)" if total else f"{done} {unit}"
    parts = [head]
    if rate:
        parts.append(f"{rate:.3g} {unit}/s")
        if total and done < total:
            parts.append(f"ETA {_duration((total - done) / rate)}")
    if elapsed is not None:
        parts.append(f"{_duration(elapsed)} elapsed")
    extra = _fields(fields)
    return ", ".join(parts) + (f", {extra}" if extra else "")


def log_progress(logger: logging.Logger, what: str, done: int, total: Optional[int] = None, *,
                 unit: str = "it", rate: Optional[float] = None, **fields: Any) -> None:
    """One progress line at INFO: ``[train] epoch 1: 40/120 steps (33%), 2.1 steps/s, ETA 0:38,
    loss 0.4``. For loops that pick their own reporting moments (the Ray Train loop)."""
    ensure_handler()
    logger.info("%s: %s", what, progress_line(done, total, unit=unit, rate=rate, **fields))


HEARTBEAT_S = 60.0  # off a terminal: an unchanged count is logged again at most this often


class Progress:
    """Count, rate and ETA of a loop; a bar on a terminal, periodic log lines elsewhere.

    ``what`` names the loop in each line (``"[label] de"``), ``total`` may be ``None``
    (no percentage or ETA), ``unit`` is what is counted (``"sentences"``, ``"steps"``).
    ``update(n, **fields)`` adds ``n`` and shows ``fields`` (``loss=0.41``) with the count;
    ``close(**fields)`` ends the bar and logs the final line (always, once).
    """

    def __init__(self, what: str, total: Optional[int] = None, unit: str = "it", *,
                 logger: Optional[logging.Logger] = None, every_s: float = 10.0,
                 stream: Optional[IO[str]] = None, tty: Optional[bool] = None,
                 start: int = 0) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.logger = logger or logging.getLogger(PROJECT + ".progress")
        self.every_s = every_s
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.done, self.fields = start, {}
        self._logged_done = start
        self.started = self._last = time.monotonic()
        self._start_count = start
        self._drawn = False
        self.closed = False
        ensure_handler()

    @property
    def rate(self) -> Optional[float]:
        elapsed = time.monotonic() - self.started
        counted = self.done - self._start_count
        return counted / elapsed if elapsed > 0 and counted > 0 else None

    def line(self, elapsed: bool = False) -> str:
        return progress_line(self.done, self.total, unit=self.unit, rate=self.rate,
                             elapsed=(time.monotonic() - self.started) if elapsed else None,
                             **self.fields)

    def update(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.monotonic()
        if self.tty:
            if now - self._last >= 0.1 or (self.total and self.done >= self.total):
                self._last = now
                self._draw()
        elif now - self._last >= (self.every_s if self.done != self._logged_done
                                  else max(self.every_s, HEARTBEAT_S)):
            # a new line when the count moved; an unchanged one only as a rare heartbeat
            self._last, self._logged_done = now, self.done
            self.logger.info("%s: %s", self.what, self.line())

    def _bar(self, width: int = 24) -> str:
        if not self.total:
            return ""
        filled = int(width * min(1.0, self.done / self.total))
        return "[" + "#" * filled + "-" * (width - filled) + "] "

    def _draw(self) -> None:
        self.stream.write(f"\r\x1b[2K{self.what} {self._bar()}{self.line()}")
        self.stream.flush()
        self._drawn = True

    def close(self, **fields: Any) -> None:
        if self.closed:
            return
        self.closed = True
        self.fields.update(fields)
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
        self.logger.info("%s: %s", self.what, self.line(elapsed=True))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._drawn:  # leave the failure's own message on a clean line
            self.stream.write("\n")
            self.stream.flush()


def progress(what: str, total: Optional[int] = None, unit: str = "it", **kw: Any) -> Progress:
    """A :class:`Progress`; use it as a context manager so the final line is logged."""
    return Progress(what, total, unit, **kw)


# --- Ray's own messages -------------------------------------------------------------------

# Ray Train v2 runs a detached PlacementGroupCleaner next to its controller. It asks the State
# API (served by the dashboard) every second whether the controller is still alive. A private
# local cluster has no dashboard, yet Ray records one at 127.0.0.1:8265 in the GCS, so every
# poll fails with this warning (~190 lines in the RIKD demo). The cleaner removes a dead
# controller's placement group; a private cluster dies with its driver, so it has nothing to
# clean there, and a dashboard only to answer it would cost ~10 processes and ~1 GB.
STATE_API_WARNING = "Failed to query Ray Train Controller actor state"
_FILTERS = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": (STATE_API_WARNING,),
    # our training loop turns Ray Data's bars off on purpose: no need to say so per process
    "ray.data._internal.progress": ("Progress bars disabled", "Progress bars for operators"),
    # per-dataset banners (also in actors such as Ray Train's SplitCoordinator, two per epoch);
    # ray-data.log in the session folder keeps them
    "ray.data._internal.execution.streaming_executor": ("Starting execution of Dataset",
                                                        "Execution plan of Dataset",
                                                        "execution finished in"),
    # the per-write summary of a Ray Data sink (the store logs its own commit line)
    "ray.data.dataset": ("Data sink %s finished", "Tip: Use `take_batch()`"),
    # Ray Train's worker-group bookkeeping, per training run (~6 lines each; the project's
    # epoch lines say what matters). "Requesting resources" stays: on an autoscaling cluster
    # it is the line that says what a waiting job waits for.
    "ray.train.v2._internal.execution.worker_group.worker_group": (
        "Attempting to start training worker group", "Started training worker group"),
    "ray.train.v2._internal.execution.storage": ("Checkpoint successfully created",),
    "ray.train.v2.torch.train_loop_utils": ("Moving model to device",),
    "ray.train.torch.config": ("Setting up process group",),
    # Ray Train asks Ray's autoscaler for its workers' resources; a private local cluster has
    # no autoscaler, and on a busy machine the request times out with a 20-line traceback
    # (Ray: "safe to ignore" when the CPU is overloaded)
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client": (
        "Failed to send resource request",),
    # a private cluster is ours alone: its token notice is not for the user
    "ray._private.authentication.authentication_token_setup": ("Token authentication is "
                                                               "enabled",),
}


class DropMessages(logging.Filter):
    """Drops records whose message contains one of ``parts``."""

    def __init__(self, *parts: str) -> None:
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(p in msg for p in self.parts)


# Ray Train's per-report line, from a logger named by its file path; the project's own epoch
# line says the same with the dev score
_RAY_FILE_FILTERS = {"train/v2/_internal/execution/context.py": ("Reporting training result",)}


def filter_ray_messages() -> None:
    """Install the message filters on the loggers that emit them (idempotent)."""
    import ray

    base = os.path.dirname(ray.__file__)
    by_file = {os.path.join(base, *rel.split("/")): parts
               for rel, parts in _RAY_FILE_FILTERS.items()}
    for name, prefixes in {**_FILTERS, **by_file}.items():
        lg = logging.getLogger(name)
        if not any(isinstance(f, DropMessages) for f in lg.filters):
            lg.addFilter(DropMessages(*prefixes))


def quiet_ray_worker() -> None:
    """``worker_process_setup_hook`` of a private local cluster (``cluster.init_ray``): runs in
    every Ray worker process before its tasks and actors."""
    import warnings

    import ray

    # The State API client finds its cluster through RAY_ADDRESS; without it, on a machine
    # with several Ray clusters, the cleaner's thread dies with a traceback instead.
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    filter_ray_messages()
    # Ray's internal use of its own deprecated options (Ray Data's DatasetManager) is not
    # something a user of this project can act on.
    from ray.util.annotations import RayDeprecationWarning

    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data: no execution plans or per-dataset banners on the console (they stay in
    ``ray-data.log``), no progress bars (ours report the same counts once)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.print_on_execution_start = False
    ctx.enable_progress_bars = False
    # Ray Data's high-memory detector repeats a 12-line advice to set `memory=` on an actor
    # pool every 30 s of a labeling run (66 of the RIKD demo's first 150 lines); a user of the
    # pipeline cannot act on it -- the pipeline's resource requests are where it belongs.
    detectors = getattr(ctx, "issue_detectors_config", None)
    high_memory = getattr(detectors, "high_memory_detector_config", None)
    if high_memory is not None:
        high_memory.detection_time_interval_s = -1
    filter_ray_messages()


# --- whose lines are these? (the demo's log-share measure, benchmarks/demo_log.py) ----------
# ``HH:MM:SS LEVEL name: message`` from this handler, optionally behind Ray's forwarding prefix
# ``(RayTrainWorker pid=123) `` / ``(pid=123, ip=10.0.0.1) ``; ``name`` is ours when it is one
# of the package's modules (shown without the ``xner_ray.`` prefix).
_LINE = re.compile(r"^(?:\([^)]*\) )?(\d\d:\d\d:\d\d) (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
                   r"([\w.]+): ")


@functools.lru_cache(maxsize=1)
def _own_modules() -> frozenset:
    import pkgutil

    import xner_ray

    return frozenset({m.name for m in pkgutil.iter_modules(xner_ray.__path__)}
                     | {PROJECT, "progress"})
# plain lines the project prints on purpose: job summaries (``[job] ...``, ``[advpicker] ...``)
# and the final JSON of a command
_PRINTED = re.compile(r"^(?:\([^)]*\) )?(\[(job|label|train|rikd|tsl|advpicker|project|"
                      r"calibrenet|calibrate|xner)\b[^\]]*\]|\{\s*\")")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its forwarding prefixes
# a progress line: ``[label] de round 0: 120/300 sentences (40%)`` / ``[train] epoch 1: ...``
_PROGRESS = re.compile(r"\[(label|project|calibrate|train)\][^:]*: \d+(/\d+)? \w+")


def is_own_line(line: str) -> bool:
    """Whether a console line is one of the project's messages (not Ray's, not a library's)."""
    line = _ANSI.sub("", line)
    m = _LINE.match(line)
    if m:
        return m.group(3).split(".", 1)[0] in _own_modules()
    return bool(_PRINTED.match(line))


def log_share(text: str) -> dict:
    """Lines of a log, the project's own among them, their share, and the most frequent other
    lines (digits masked, so a repeated message counts as one kind)."""
    lines = [l for l in text.splitlines() if l.strip()]
    own = [l for l in lines if is_own_line(l)]
    others = collections.Counter(re.sub(r"\d+", "N", _ANSI.sub("", l))[:120]
                                 for l in lines if not is_own_line(l))
    # progress lines are ours but repetitive: the share is also given without them
    progress = [l for l in own if _PROGRESS.search(_ANSI.sub("", l))]
    rest = len(lines) - len(progress)
    return {"lines": len(lines), "own": len(own),
            "share": round(len(own) / len(lines), 4) if lines else None,
            "progress_lines": len(progress),
            "share_without_progress": round((len(own) - len(progress)) / rest, 4)
            if rest else None,
            "state_api_warnings": sum(STATE_API_WARNING in l for l in lines),
            "top_other": others.most_common(10)}
