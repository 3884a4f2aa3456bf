"""Writer leases: one attempt at a time writes a (run, language, round).

A lease is a small JSON object at a fixed path, ``_leases/run_id=<r>/lang=<l>/round=<k>.json``::

    {"key": "run_id=r1/lang=es/round=0", "holder": "<host>/<pid>/<attempt>",
     "host": ..., "pid": ..., "attempt": ..., "pidns": ..., "pid_start": ...,
     "acquired_at": ..., "heartbeat_at": ..., "expires_at": ..., "ttl_s": ...}

``attempt`` is also the name of the attempt's folder under ``_tmp/<key>/``, so the lease says
which temporary files belong to the live writer. The holder renews ``heartbeat_at`` and
``expires_at`` from a daemon thread every ``ttl / 4`` seconds and deletes the lease when it
commits or aborts (and at interpreter exit). A second writer gets :class:`LeaseHeld`, which
names the holder and when its lease expires.

A lease is *stale* when it expired (its holder stopped renewing it for longer than the TTL:
killed, frozen, or cut off from the store), or when its holder ran on this host, in this pid
namespace, and that process is gone (checked with the pid and the process start time, so a
reused pid does not count as alive). A stale lease may be taken over; the takeover is logged.

Atomicity:

- Local disks: every change (create, take over, renew, release) happens under an exclusive
  ``flock`` of the lease's folder, and the lease is written to a temporary file, fsynced and
  renamed into place -- exact. Where ``flock`` is not supported (some network filesystems), a
  new lease is still created atomically (``os.link`` of the complete temporary file fails if
  the lease exists); only the takeover of a stale lease is then a read-compare-replace.
- Object stores (``s3://`` ...): pyarrow offers no conditional put. A writer reads the lease,
  puts its own when there is none (or a stale one), waits ``SETTLE_S`` and reads it back: it
  holds the lease only if the holder read back is itself. Residual race: two writers whose
  put and read-back interleave exactly (A puts, A reads back, B puts, B reads back) both
  believe they hold it. The loser finds out at its next heartbeat or at the fence of its
  commit (:meth:`Lease.check`, run before the files move and again before the manifest is
  written), and fails with :class:`LeaseLost`; files it already moved into the partition
  folders are not listed by the winner's manifest (readers of manifests never see them;
  ``xner store check`` reports them as unlisted files). S3 conditional writes
  (``If-None-Match``) would close this race once pyarrow exposes them.

Clocks: ``expires_at`` is written by the holder's clock and compared with the reader's; hosts
must agree to well within the TTL.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Iterator, Optional

import pyarrow.fs as pafs

if TYPE_CHECKING:
    from xner_ray.store.store import Store

logger = logging.getLogger(__name__)

LEASES = "_leases"
DEFAULT_TTL_S = 120.0
SETTLE_S = 0.5  # object stores: wait between put and read-back


class LeaseError(RuntimeError):
    """Base of lease errors."""


class LeaseHeld(LeaseError):
    """Another live attempt holds the lease of this round."""

    def __init__(self, key: str, info: dict, where: str):
        self.key, self.info, self.where = key, info, where
        super().__init__(
            f"round {key} is being written by {info.get('holder', '?')} (lease {where}, "
            f"heartbeat {info.get('heartbeat_at', '?')}, expires {info.get('expires_at', '?')}); "
            "wait for that writer to finish -- or, if it died, for its lease to expire")


class LeaseLost(LeaseError):
    """This attempt's lease expired or was taken over: it must not commit."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _parse_time(text: Optional[str]) -> Optional[dt.datetime]:
    try:
        t = dt.datetime.fromisoformat(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _pid_start(pid: int) -> Optional[str]:
    """Start time of a process (clock ticks since boot, /proc/<pid>/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pidns() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def identity() -> dict:
    """Who this process is: host, pid, pid namespace, process start."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pidns": _pidns(),
            "pid_start": _pid_start(pid)}


def holder_is_dead(info: dict) -> bool:
    """True only when we can tell: the holder ran on this host and pid namespace, and its
    process is gone (or the pid now belongs to a process started at another time)."""
    me = identity()
    if info.get("host") != me["host"] or info.get("pidns") != me["pidns"] or not me["pidns"]:
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    start = _pid_start(pid)
    return start is not None and info.get("pid_start") not in (None, start)


def is_own_process(info: dict) -> bool:
    me = identity()
    return (info.get("host"), info.get("pid"), info.get("pidns"), info.get("pid_start")) == (
        me["host"], me["pid"], me["pidns"], me["pid_start"])


def stale_reason(info: Optional[dict], now: Optional[dt.datetime] = None) -> Optional[str]:
    """Why a lease read from the store is stale (None: it is live)."""
    if info is None:
        return "missing"
    if info.get("_corrupt"):
        return f"unreadable ({info['_corrupt']})"
    now = now or utcnow()
    expires = _parse_time(info.get("expires_at"))
    if expires is None:
        return "no expiry"
    if expires <= now:
        return f"expired at {info['expires_at']}"
    if holder_is_dead(info):
        return f"its holder (pid {info.get('pid')} on {info.get('host')}) is gone"
    return None


def lease_path(store: "Store", key: str) -> str:
    return store.path(LEASES, key + ".json")


def read_lease(store: "Store", path: str) -> Optional[dict]:
    """The lease at ``path``; None if there is none; ``{"_corrupt": why}`` if unreadable."""
    try:
        with store.fs.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if store.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        raise LeaseError(f"cannot read lease {store.to_uri(path)}: {exc}") from exc
    try:
        info = json.loads(data.decode("utf-8"))
        if not isinstance(info, dict) or "holder" not in info:
            raise ValueError("not a lease object")
        return info
    except (UnicodeDecodeError, ValueError) as exc:
        return {"_corrupt": str(exc) or "empty", "holder": "?"}


# -- local-disk helpers ---------------------------------------------------------------------------
@contextlib.contextmanager
def _dir_lock(directory: str) -> Iterator[bool]:
    """An exclusive flock of ``directory`` (yields False where flock is not supported)."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL,
                                 errno.EBADF):
                raise
            locked = False
        yield locked
    finally:
        os.close(fd)  # releases the lock


def fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_local_atomic(path: str, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``path`` via a temporary file in its folder: write, fsync, then rename over it
    (``exclusive``: link instead, which fails -- returning False -- if ``path`` exists)."""
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:  # no hard links here: O_EXCL create, then write
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                try:
                    fd2 = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd2, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
        else:
            os.replace(tmp, path)
        fsync_dir(directory)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- the lease ------------------------------------------------------------------------------------
_ACTIVE: dict[tuple[str, str], "Lease"] = {}
_ACTIVE_LOCK = threading.Lock()


def active_lease(store: "Store", key: str) -> Optional["Lease"]:
    """The lease this process holds on ``key`` of ``store`` (None if none)."""
    with _ACTIVE_LOCK:
        lease = _ACTIVE.get((store.uri, key))
    return lease if lease is not None and not lease.released else None


class Lease:
    """One attempt's lease on a round key. ``Lease(store, key).acquire()``; see the module doc."""

    def __init__(self, store: "Store", key: str, *, ttl_s: Optional[float] = None,
                 attempt: Optional[str] = None):
        self.store, self.key = store, key
        self.ttl_s = float(ttl_s if ttl_s is not None else store.lease_ttl_s)
        if self.ttl_s <= 0:
            raise ValueError(f"lease TTL must be > 0 seconds, got {self.ttl_s}")
        self.attempt = attempt or uuid.uuid4().hex[:12]
        self.me = identity()
        self.holder = f"{self.me['host']}/{self.me['pid']}/{self.attempt}"
        self.path = lease_path(store, key)
        self.acquired_at: Optional[dt.datetime] = None
        self.released = False
        self.lost: Optional[str] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f"Lease({self.key!r}, holder={self.holder!r})"

    @property
    def where(self) -> str:
        return self.store.to_uri(self.path)

    def _record(self) -> dict:
        now = utcnow()
        return {"key": self.key, "holder": self.holder, **self.me, "attempt": self.attempt,
                "acquired_at": (self.acquired_at or now).isoformat(),
                "heartbeat_at": now.isoformat(),
                "expires_at": (now + dt.timedelta(seconds=self.ttl_s)).isoformat(),
                "ttl_s": self.ttl_s}

    def _encode(self, record: dict) -> bytes:
        return json.dumps(record, indent=1, sort_keys=True).encode()

    # -- acquire ------------------------------------------------------------------------------
    def acquire(self) -> "Lease":
        """Take the lease or raise :class:`LeaseHeld` (naming the holder and its expiry)."""
        if self.store.is_local:
            self._acquire_local()
        else:
            self._acquire_object_store()
        self.acquired_at = self.acquired_at or utcnow()
        with _ACTIVE_LOCK:
            _ACTIVE[(self.store.uri, self.key)] = self
        self.start_heartbeat()
        return self

    def _takeover_ok(self, cur: Optional[dict]) -> bool:
        """May we replace ``cur``? Raises LeaseHeld when it belongs to a live writer."""
        if cur is None:
            return True
        why = stale_reason(cur)
        if why is None and is_own_process(cur):
            old = active_lease(self.store, self.key)
            if old is not None:
                old._abandon()
            logger.warning("round %s: an earlier attempt of this process (%s) was abandoned; "
                           "this attempt takes over its lease", self.key, cur.get("holder"))
            return True
        if why is None:
            raise LeaseHeld(self.key, cur, self.where)
        logger.warning("round %s: taking over the stale lease of %s (%s)", self.key,
                       cur.get("holder"), why)
        return True

    def _acquire_local(self) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        for _ in range(20):
            with _dir_lock(directory) as locked:
                cur = read_lease(self.store, self.path)
                self._takeover_ok(cur)
                self.acquired_at = utcnow()
                data = self._encode(self._record())
                if cur is None:
                    if write_local_atomic(self.path, data, exclusive=True):
                        return
                    continue  # created meanwhile (no flock here): look again
                write_local_atomic(self.path, data)
                if locked:
                    return
            back = read_lease(self.store, self.path)  # no flock: read back after a takeover
            if back is not None and back.get("holder") == self.holder:
                return
            raise LeaseHeld(self.key, back or {}, self.where)
        raise LeaseError(f"could not create lease {self.where}")

    def _acquire_object_store(self) -> None:
        fs = self.store.fs
        cur = read_lease(self.store, self.path)
        self._takeover_ok(cur)
        self.acquired_at = utcnow()
        fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(self.path) as out:  # one put
            out.write(self._encode(self._record()))
        time.sleep(SETTLE_S)
        back = read_lease(self.store, self.path)
        if back is None or back.get("holder") != self.holder:
            raise LeaseHeld(self.key, back or {}, self.where)

    # -- heartbeat ------------------------------------------------------------------------------
    def renew(self) -> bool:
        """Push ``expires_at`` forward; False (and ``lost`` set) if the lease is not ours."""
        with self._lock:
            if self.released or self.lost:
                return False
            if self.store.is_local:
                directory = os.path.dirname(self.path)
                cur = None
                if os.path.isdir(directory):  # else the store (or its _leases) was deleted
                    with _dir_lock(directory):
                        cur = read_lease(self.store, self.path)
                        if cur is not None and cur.get("holder") == self.holder:
                            write_local_atomic(self.path, self._encode(self._record()))
                            return True
            else:
                cur = read_lease(self.store, self.path)
                if cur is not None and cur.get("holder") == self.holder:
                    with self.store.fs.open_output_stream(self.path) as out:
                        out.write(self._encode(self._record()))
                    return True
            self.lost = (f"lease {self.where} is now held by {cur.get('holder')}"
                         if cur else f"lease {self.where} was deleted")
            logger.error("round %s: this attempt (%s) lost its lease: %s", self.key,
                         self.holder, self.lost)
            return False

    def start_heartbeat(self) -> None:
        if self._thread is not None:
            return
        interval = max(self.ttl_s / 4.0, 0.05)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    if not self.renew():
                        return
                except Exception as exc:  # noqa: BLE001 - a flaky store must not kill the writer
                    logger.warning("round %s: lease heartbeat failed: %s", self.key, exc)

        self._thread = threading.Thread(target=beat, name=f"xner-lease-{self.key}",
                                        daemon=True)
        self._thread.start()

    def check(self) -> None:
        """The commit's fence: raise :class:`LeaseLost` unless this attempt still holds a live
        lease (renewing it now, so the time to the next step is covered)."""
        if self.released:
            raise LeaseLost(f"round {self.key}: the lease of {self.holder} was released")
        if self.lost:
            raise LeaseLost(f"round {self.key}: this attempt ({self.holder}) lost its lease "
                            f"({self.lost}); not committing")
        if not self.renew():
            raise LeaseLost(f"round {self.key}: this attempt ({self.holder}) lost its lease "
                            f"({self.lost}); not committing")

    # -- release ----------------------------------------------------------------------------------
    def _abandon(self) -> None:
        self._stop.set()
        self.released = True
        with _ACTIVE_LOCK:
            if _ACTIVE.get((self.store.uri, self.key)) is self:
                del _ACTIVE[(self.store.uri, self.key)]

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours."""
        if self.released:
            return
        self._abandon()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            try:
                if self.store.is_local:
                    if not os.path.isdir(os.path.dirname(self.path)):
                        return
                    with _dir_lock(os.path.dirname(self.path)):
                        cur = read_lease(self.store, self.path)
                        if cur is not None and cur.get("holder") == self.holder:
                            os.unlink(self.path)
                else:
                    cur = read_lease(self.store, self.path)
                    if cur is not None and cur.get("holder") == self.holder:
                        self.store.fs.delete_file(self.path)
            except (OSError, LeaseError) as exc:
                logger.warning("round %s: could not release lease %s: %s (it expires in %.0f s)",
                               self.key, self.where, exc, self.ttl_s)


def _release_all() -> None:
    """At interpreter exit (not on SIGKILL): leases of this process are released."""
    with _ACTIVE_LOCK:
        leases = list(_ACTIVE.values())
    for lease in leases:
        with contextlib.suppress(Exception):
            lease.release()


atexit.register(_release_all)
