"""Atomic file writes (a reader sees the old file or the new one, never a partial one), free space,
and the seam where a full disk can be simulated.

``SIAMTRAIN_DISK_LIMIT=BYTES:FOLDER`` makes the file system under FOLDER hold BYTES in all, its
files counting as used: writes through :func:`open_for_write` and the shard writer's
:func:`check_room` past that fail with ENOSPC, and :func:`free_bytes` reports what is left. The
disk-full tests use it where no small file system can be mounted (tests/conftest.py); unset, it
costs one environment lookup per file opened.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path

DISK_LIMIT_ENV = 'SIAMTRAIN_DISK_LIMIT'


def _disk_limit(path) -> tuple[Path, int] | None:
    """(folder, bytes) of the simulated disk that holds ``path``, if there is one."""
    spec = os.environ.get(DISK_LIMIT_ENV)
    if not spec:
        return None
    size, _, folder = spec.partition(':')
    folder, path = Path(folder).absolute(), Path(path).absolute()
    if path != folder and folder not in path.parents:
        return None
    return folder, int(size)


def _used(folder: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(folder) for f in files)


def free_bytes(path) -> int:
    """Free bytes for new data at ``path`` (a file or folder; the nearest existing parent is asked)."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path('.'))
    free = shutil.disk_usage(existing).free
    limit = _disk_limit(path)
    if limit is not None:
        free = min(free, max(0, limit[1] - _used(limit[0])))
    return free


def check_room(path, nbytes: int) -> None:
    """OSError(ENOSPC) if ``nbytes`` more would not fit on a simulated disk holding ``path``
    (a real disk reports itself, at the write)."""
    limit = _disk_limit(path)
    if limit is not None and _used(limit[0]) + nbytes > limit[1]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class _RoomCheckedFile:
    """A binary file on the simulated disk: each write is flushed (so the next one sees it in the
    used space), and one that does not fit writes what fits, then fails with ENOSPC."""

    def __init__(self, path: Path, buffering: int):
        self._f = open(path, 'wb', buffering=buffering)
        self.path = path

    def write(self, data) -> int:
        data = memoryview(data).cast('B')
        folder, size = _disk_limit(self.path)
        room = max(0, size - _used(folder))
        n = self._f.write(data[:room])  # as a full disk does: what fits, then ENOSPC
        self._f.flush()
        if n < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
        return False


def open_for_write(path, buffering: int = -1):
    """``open(path, 'wb', buffering)``, or under a simulated disk a file whose writes are checked."""
    path = Path(path)
    if _disk_limit(path) is None:
        return open(path, 'wb', buffering=buffering)
    return _RoomCheckedFile(path, buffering)


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and ``os.replace`` (creating the folder).

    On failure the temp file is removed and the error (e.g. a full disk) propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    try:
        with open_for_write(tmp) as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path, payload: dict, indent: int = 1) -> Path:
    """Atomic JSON write; NaN and inf are written as null (valid JSON)."""
    def clean(x):
        if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    path = Path(path)
    atomic_write(path, json.dumps(clean(payload), indent=indent))
    return path
