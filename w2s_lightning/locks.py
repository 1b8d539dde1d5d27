"""Locks for the stage cache. A POSIX lock (`filelock`, `<key>.lock`) where the filesystem
passes `fcntl`/`flock` locks between hosts; elsewhere a lock file created atomically
(`<key>.lease`, O_CREAT | O_EXCL) holding its owner's host, pid and a heartbeat refreshed while
held, broken with a warning once the heartbeat is older than `stale_after` or it names a dead
process on this host."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

HOST = socket.gethostname()
LOCKS = ("posix", "file")
STALE_AFTER = 300.0  # seconds without a heartbeat after which a file lock's holder is taken as dead


def _pid_namespace() -> int | None:
    """Containers sharing a hostname have separate pids; a pid is only judged within its namespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


PIDNS = _pid_namespace()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another account
        pass
    return True


def read_lease(path: Path) -> dict | None:
    """A file lock's owner and heartbeat (its mtime while the owner has not written them yet);
    None when there is no lock file."""
    try:
        stat = path.stat()
        info = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    beat = info.get("heartbeat")
    return {
        **info,
        "inode": (stat.st_dev, stat.st_ino),
        "heartbeat": beat if isinstance(beat, float) else stat.st_mtime,
    }


def why_stale(lease: dict, stale_after: float = STALE_AFTER) -> str | None:
    """Why a file lock's holder is gone (None while it may be alive)."""
    if (age := time.time() - lease["heartbeat"]) > stale_after:
        return f"its heartbeat is {age:.0f} s old"
    pid = lease.get("pid")
    if (lease.get("host"), lease.get("pidns")) == (HOST, PIDNS) and isinstance(pid, int) and not pid_alive(pid):
        return f"its process {pid} on this host is dead"
    return None


class FileLease:
    """A lock that needs no POSIX locks: the lock file itself, created with O_CREAT | O_EXCL
    (atomic on local filesystems and NFSv3+), holding its owner's host, pid and a heartbeat that a
    thread refreshes every `stale_after / 4` s while held. A lock whose heartbeat is older than
    `stale_after` (the hosts' clocks must agree to well within it), or that names a dead process of
    this host, is broken with a warning. `timeout` < 0 waits for as long as the holder lives."""

    def __init__(self, path: str | Path, stale_after: float = STALE_AFTER, timeout: float = -1, poll: float = 0.25):
        self.path, self.stale_after, self.timeout, self.poll = Path(path), stale_after, timeout, poll
        self._fd: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> FileLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                pass
            if (lease := read_lease(self.path)) is not None and (reason := why_stale(lease, self.stale_after)):
                self._break(lease, reason)
                continue
            if self.timeout >= 0 and time.monotonic() >= deadline:
                raise Timeout(str(self.path))
            time.sleep(self.poll)
        self._token = uuid.uuid4().hex
        self._beat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"heartbeat {self.path}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        owned = self._owned()
        os.close(self._fd)  # before unlinking: NFS would keep an unlinked open file as .nfsXXXX
        self._fd = None
        if owned:
            self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        blob = json.dumps(
            {"host": HOST, "pidns": PIDNS, "pid": os.getpid(), "token": self._token, "heartbeat": time.time()}
        ).encode()
        os.pwrite(self._fd, blob, 0)
        os.ftruncate(self._fd, len(blob))
        os.fsync(self._fd)  # NFS clients hold writes back until fsync or close

    def _owned(self) -> bool:
        """Whether the lock file is still the one this holder created (nobody broke it)."""
        try:
            here, mine = self.path.stat(), os.fstat(self._fd)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_after / 4):
            if not self._owned():
                log.error(
                    "stage cache: lost the lock %s: another job broke it as stale (clock skew or a stall)", self.path
                )
                return
            self._beat()

    def _break(self, seen: dict, reason: str) -> None:
        """Move a stale lock aside to a unique name, so of several waiters breaking it only one
        succeeds, and put the file back if it turns out not to be the one judged stale."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another waiter broke it first
        moved = read_lease(aside) or {}
        if (moved.get("inode"), moved.get("token")) == (seen["inode"], seen.get("token")):
            log.warning(
                "stage cache: broke the lock %s of %s pid %s: %s",
                self.path,
                seen.get("host", "?"),
                seen.get("pid", "?"),
                reason,
            )
        else:  # another waiter broke it and a new holder took it between the read and the rename
            try:
                os.link(aside, self.path)
            except OSError as err:
                log.error(
                    "stage cache: could not restore the live lock %s (%s); two jobs may compute it", self.path, err
                )
        aside.unlink(missing_ok=True)


def make_lock(path: Path, timeout: float = -1, stale_after: float = STALE_AFTER) -> FileLock | FileLease:
    """The lock on `path`: a file lock for `<key>.lease`, a POSIX lock for `<key>.lock`."""
    if path.suffix == ".lease":
        return FileLease(path, stale_after, timeout)
    return FileLock(str(path), timeout=timeout)
