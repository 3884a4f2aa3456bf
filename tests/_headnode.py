"""A real `ray start --head` cluster for job-submission tests, isolated from the test session's
in-process cluster: its own ports, its own temp dir, and cleanup that kills only its processes
(`ray stop` would kill every Ray process on the machine)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict:
    # Token auth on both sides: `ray start` turns it on when ~/.ray/auth_token exists (any
    # earlier in-process ray.init writes one), and `ray job submit` must then send the token.
    return {**os.environ, "RAY_AUTH_MODE": "token", **extra}


@contextlib.contextmanager
def head_node(num_cpus: int = 2, timeout: float = 120.0):
    """Yields the job-server address (http://127.0.0.1:PORT) of a fresh head node."""
    temp_dir = tempfile.mkdtemp(prefix="xr", dir="/tmp")  # short: Unix socket paths are limited
    dash = _free_port()
    cmd = ["ray", "start", "--head", "--block", f"--port={_free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--dashboard-agent-listen-port={_free_port()}",
           f"--dashboard-agent-grpc-port={_free_port()}",
           f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
           f"--num-cpus={num_cpus}", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    proc = subprocess.Popen(cmd, env=ray_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (401 when token auth is on): the job server is up
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"no job server at {address} after {timeout}s")
                time.sleep(1)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        _kill_matching(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _kill_matching(needle: str) -> None:
    """SIGKILL every process whose command line mentions ``needle`` (Linux /proc)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle.encode() in f.read():
                    os.kill(int(pid), signal.SIGKILL)
