"""One build per dataset folder: an flock on ``<folder>/build.lock`` that records who holds it.

A build holds it exclusively; a verification shares it (several can run, none during a build).  The
kernel releases it when the process ends, however it ends, so there is never a stale lock to remove.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from .spec import BuildError
from .writer import disk_full_error, is_disk_full

LOCK_NAME = 'build.lock'


def _holder() -> dict:
    return {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.strftime('%Y-%m-%d %H:%M:%S %z'),
            'command': shlex.join([sys.executable, *sys.argv])}


def _describe(raw: bytes) -> str:
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on {h['host']}, started {h['started']}, command: {h['command']}"
    except (ValueError, KeyError, TypeError):
        return 'a verification (build_lmdb.py --verify-only) or a build that recorded nothing'


class FolderLock:
    """Context manager: lock a dataset folder (created if missing) or raise BuildError naming the holder."""

    def __init__(self, folder, exclusive: bool = True):
        self.folder = Path(folder)
        self.exclusive = exclusive
        self._fd = None

    def __enter__(self):
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if is_disk_full(e):
                raise disk_full_error(self.folder / LOCK_NAME, e) from None
            raise
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 1 << 16, 0))
            os.close(fd)
            what = 'built' if self.exclusive else 'built (a verification waits for the build to end)'
            raise BuildError(f'{self.folder} is being {what} by another process: {holder}. '
                             f'Wait for it to finish (or stop it), then rerun') from None
        if self.exclusive:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(_holder()).encode(), 0)
            except OSError:  # e.g. a full disk: the lock holds all the same, only unnamed
                pass
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            if self.exclusive:
                try:
                    os.ftruncate(self._fd, 0)
                except OSError:
                    pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False
