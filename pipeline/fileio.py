"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and ``os.replace`` (creating the folder).

    On failure the temp file is removed and the error (e.g. a full disk) propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    try:
        with open(tmp, 'wb') as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
