"""A lock file that says who holds it: an flock on the file plus a record of the holder (pid, host,
start, command) inside it.

The kernel releases an flock when its process ends, however it ends, so a lock is never stale: a
record left behind by a process that was killed is simply taken over (and returned, to be reported).
Used by the shard builder (``build.lock``, pipeline/ingest/lock.py) and by training (``run.lock``,
train/run_lock.py). flock is cluster-wide on NFS and on Lustre mounted with ``-o flock``;
``-o localflock`` makes it per node.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

__all__ = ["HeldLock", "LockHeldError", "LockUnsupportedError", "describe_holder"]

_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockHeldError(RuntimeError):
    """Another process holds the lock; ``holder`` is its record (None if it recorded none)."""

    def __init__(self, path: Path, holder: dict | None):
        self.path, self.holder = Path(path), holder
        super().__init__(f"{path} is held by {describe_holder(holder)}")


class LockUnsupportedError(OSError):
    """The file system does not support flock (e.g. Lustre mounted without ``-o flock``)."""


def this_process() -> dict:
    """The record a holder writes: pid, host, start time, command line."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": shlex.join([sys.executable, *sys.argv])}


def describe_holder(holder: dict | None) -> str:
    """'pid P on HOST, started T, command: C' (or a note that the holder recorded nothing)."""
    if not holder:
        return "a process that recorded nothing"
    return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}, command: {holder['command']}"


def _read_record(fd: int) -> dict | None:
    try:
        h = json.loads(os.pread(fd, 1 << 16, 0))
        return h if isinstance(h, dict) and {"pid", "host", "started", "command"} <= set(h) else None
    except (OSError, ValueError):
        return None


class HeldLock:
    """``acquire()`` the lock at ``path`` (created if missing) or raise :class:`LockHeldError`;
    ``release()`` it. Exclusive locks record their holder; shared ones (readers) do not."""

    def __init__(self, path, exclusive: bool = True):
        self.path = Path(path)
        self.exclusive = exclusive
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> dict | None:
        """Take the lock; returns the record a previous holder left behind when it ended without
        releasing (killed), else None. OSError for a file that cannot be opened."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            os.close(fd)
            raise LockHeldError(self.path, holder) from None
        except OSError as err:
            os.close(fd)
            if err.errno in _UNSUPPORTED:
                raise LockUnsupportedError(err.errno, f"{self.path}: this file system does not support flock "
                                                      f"({os.strerror(err.errno)})") from None
            raise
        left = _read_record(fd) if self.exclusive else None
        if self.exclusive:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(this_process()).encode(), 0)
            except OSError:  # e.g. a full disk: the lock holds all the same, only unnamed
                pass
        self._fd = fd
        return left

    def release(self) -> None:
        """Give the lock up (its record is cleared first, so nothing stale is left to report)."""
        if self._fd is None:
            return
        if self.exclusive:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
