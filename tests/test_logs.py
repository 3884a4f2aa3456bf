"""Logging set-up, progress lines and bars, and Ray's noise filtered at its source."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xner_ray import logs

REPO = Path(__file__).resolve().parents[1]


def test_progress_line():
    assert logs.progress_line(30, 120, unit="steps", rate=2.0, loss=0.41234) == \
        "30/120 steps (25%), 2 steps/s, ETA 0:45, loss 0.4123"
    assert logs.progress_line(7, None, unit="sentences") == "7 sentences"
    assert logs.progress_line(120, 120, unit="steps", rate=2.0, elapsed=3725.0) == \
        "120/120 steps (100%), 2 steps/s, 1:02:05 elapsed"


def test_progress_logs_plain_lines_off_a_terminal(caplog):
    stream = io.StringIO()  # not a TTY
    with caplog.at_level(logging.INFO, logger="xner_ray"):
        with logs.progress("[label] de", total=4, unit="sentences", every_s=0.0,
                           stream=stream) as bar:
            bar.update(2)
            bar.update(2, selected=3)
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("[label] de: 2/4 sentences (50%), ")
    assert "sentences/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("[label] de: 4/4 sentences (100%)")
    assert "elapsed" in lines[-1] and lines[-1].endswith("selected 3")
    assert len(lines) == 3


def test_progress_draws_a_bar_on_a_terminal(caplog):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    with caplog.at_level(logging.INFO, logger="xner_ray"):
        bar = logs.progress("[train] epoch 1", total=10, unit="steps", stream=stream)
        bar.update(10, loss=0.5)
        bar.close()
        bar.close()  # once
    drawn = stream.getvalue()
    assert "\r" in drawn and "[########################] 10/10 steps (100%)" in drawn
    assert drawn.endswith("\r\x1b[2K")  # the bar is cleared before the final log line
    assert [r.getMessage() for r in caplog.records] == [
        caplog.records[0].getMessage()]
    assert "10/10 steps (100%)" in caplog.records[0].getMessage()


def test_setup_shows_project_info_once_and_others_at_warning():
    stream = io.StringIO()
    logs.setup(stream=stream)
    logs.setup(stream=stream)  # idempotent: still one handler
    try:
        logging.getLogger("xner_ray.labeling.pipeline").info("de: 300 sentences")
        logging.getLogger("some.library").info("chatter")
        logging.getLogger("some.library").warning("act on this")
        out = stream.getvalue().splitlines()
        assert len(out) == 2
        assert out[0].endswith("INFO labeling.pipeline: de: 300 sentences")
        assert out[1].endswith("WARNING some.library: act on this")
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, logs._HANDLER_MARK, False)]:
            root.removeHandler(h)
        root.setLevel(logging.WARNING)


def test_setup_follows_a_swapped_stderr(monkeypatch):
    """`xner` called many times in one process (tests) logs to the stderr of the moment."""
    logs.setup()
    try:
        for _ in range(2):
            buf = io.StringIO()
            monkeypatch.setattr(sys, "stderr", buf)
            logging.getLogger("xner_ray.demo").info("de dev: F1 0.5")
            assert buf.getvalue().endswith("INFO demo: de dev: F1 0.5\n")
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if getattr(h, logs._HANDLER_MARK, False)]:
            root.removeHandler(h)
        root.setLevel(logging.WARNING)


def test_ray_message_filters():
    logs.filter_ray_messages()
    logs.filter_ray_messages()
    cleaner = logging.getLogger(
        "ray.train.v2._internal.execution.controller.placement_group_cleaner")
    assert sum(isinstance(f, logs.DropMessages) for f in cleaner.filters) == 1
    record = logging.LogRecord(cleaner.name, logging.WARNING, __file__, 1, logs.STATE_API_WARNING
                               + ". State API may be temporarily unavailable.", None, None)
    assert not cleaner.filter(record)
    record.msg = "Detected that the Ray Train controller actor is dead."
    assert cleaner.filter(record)


FIT = textwrap.dedent("""
    import sys
    from pathlib import Path

    from xner_ray import logs
    from xner_ray.cluster import init_ray
    from xner_ray.demo import sample_path
    from xner_ray.train.teacher import TeacherConfig, train_teacher

    model, tmp = sys.argv[1], Path(sys.argv[2])

    def head(src, dst, n):
        dst.write_text("\\n\\n".join(src.read_text().split("\\n\\n")[:n]) + "\\n\\n")
        return str(dst)

    train = head(sample_path("en.train.txt"), tmp / "train.txt", 96)
    dev = head(sample_path("en.dev.txt"), tmp / "dev.txt", 40)
    logs.setup()
    init_ray(num_cpus=2)
    train_teacher(TeacherConfig(train=train, dev=dev, out=str(tmp / "out"), model=model,
                                epochs=2, batch_size=8, lr=1e-3))
""")


@pytest.mark.slow
def test_ray_train_fit_log_is_quiet(tiny_model_dir, tmp_path):
    """A real Ray Train fit on a private cluster started by ``init_ray`` (in its own process, so
    the session's shared cluster fixture does not stand in): the State-API warning never
    appears, each training line appears once, Ray Data prints no plans or banners."""
    run = subprocess.run([sys.executable, "-c", FIT, str(tiny_model_dir), str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    lines = [l for l in log.splitlines() if l.strip()]
    assert not [l for l in lines if logs.STATE_API_WARNING in l or "State API" in l]
    assert not [l for l in lines if "PlacementGroupCleaner" in l]  # no thread traceback either
    for epoch in (1, 2):
        assert sum(f"[train] epoch {epoch} done:" in l for l in lines) == 1, log
    for noise in ("Execution plan of Dataset", "Starting execution of Dataset",
                  "execution finished in", "Progress bars disabled", "Reporting training result",
                  "RayDeprecationWarning", "Failed to send resource request", "Data sink",
                  "Attempting to start training worker group", "Started training worker group",
                  "Checkpoint successfully created", "Moving model to device",
                  "Setting up process group"):
        assert not [l for l in lines if noise in l], noise
    assert sum("teacher: best epoch" in l for l in lines) == 1


def test_log_share_counts_the_projects_lines():
    """The demo-log measure (benchmarks/demo_log.py): our log lines, also forwarded from Ray
    workers, and our printed summaries count; Ray's and other libraries' lines do not."""
    from xner_ray.logs import STATE_API_WARNING, is_own_line, log_share

    own = ["14:00:01 INFO labeling.pipeline: de round 0: 300 sentences committed",
           "(RayTrainWorker pid=812) 14:00:09 INFO train.loop: epoch 1: 19/19 steps",
           "\x1b[36m(RayTrainWorker pid=812)\x1b[0m [train] epoch 1 done: 19/19 steps",
           "14:00:02 INFO progress: [label] de round 0: 120/300 sentences (40%)",
           "[job] teacher /x/teacher-en: trained already, reused"]
    other = ["2026-12-02 14:00:00,001\tINFO worker.py:1 -- Started a local Ray instance.",
             "14:00:03 WARNING ray.data._internal.execution: something",
             f"(pid=77) {STATE_API_WARNING}. State API may be temporarily unavailable",
             "14:00:04 WARNING root: a stray warning"]
    assert all(is_own_line(l) for l in own) and not any(is_own_line(l) for l in other)
    r = log_share("\n".join(own + other + ["", "   "]))
    assert (r["lines"], r["own"], r["share"], r["state_api_warnings"]) == (9, 5, 0.5556, 1)
