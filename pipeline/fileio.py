"""Atomic file writes: a reader sees the old file or the new one, never a partial one."""
from __future__ import annotations

import json
import math
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
