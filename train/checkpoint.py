"""Training checkpoints: atomic writes, weights_only-loadable contents, RNG state capture.

A checkpoint is PySOT's ``{'epoch', 'state_dict', 'optimizer'}`` (state_dict without
``module.``) plus our keys for an exact resume: ``scheduler``, ``loader``, ``rng``, ``epoch_step``
(batches of ``epoch`` already trained), ``global_step``, ``backbone_unfrozen``, ``skipped_steps``,
``meta_arc``, ``config``, ``meters`` (the unfinished metrics intervals). Everything is tensors,
plain containers, numbers and strings, so ``torch.load(path, weights_only=True)`` reads it; files
are read with ``model.checkpoint.load_weights_only`` (one reader, one error type for the project).
"""
from __future__ import annotations

import errno
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from model.checkpoint import CheckpointError, CheckpointNotFoundError, load_weights_only
from pipeline.fileio import open_for_write

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "to_plain", "CheckpointError",
           "CheckpointNotFoundError", "DiskFullError", "remove_stale_temp_files"]

_TEMP_NAME = re.compile(r"^\.(?P<name>.+\.pth)\.tmp(?P<pid>\d+)$")  # _temp_path of a .pth checkpoint
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A checkpoint could not be written because its file system is full (or over quota)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def _no_space(err: BaseException) -> bool:
    """True if ``err`` or an exception it was raised from is ENOSPC/EDQUOT (torch.save wraps the
    OSError of a failed write in a RuntimeError that only keeps it as __context__)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
        err = err.__cause__ or err.__context__
    return False


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a crash leaves the previous file intact.

    A full disk raises :class:`DiskFullError` ("no space left on <folder> ...") after the
    partial temp file is removed; other errors propagate as they are.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open_for_write(tmp) as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        if _no_space(err):
            kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
            raise DiskFullError(f"no space left on {path.parent} while writing {path.name}; {kept}") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _temp_path(path: Path) -> Path:
    """Hidden sibling named after the writing process, so a leftover can be told from a live write."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OverflowError:  # not a pid this system can have
        return False
    except OSError as err:
        return err.errno == errno.EPERM  # exists, owned by someone else
    return True


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete checkpoint temp files in ``folder`` whose writing process no longer exists; returns them.

    A SIGKILL between the temp write and the rename leaves ``.NAME.tmpPID`` behind (checkpoint
    sized). Files of a live process are kept; the check is host-local, so only call this where
    the checkpoints are written (the main rank).
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        m = _TEMP_NAME.match(p.name)
        if m is None or not p.is_file() or _pid_alive(int(m["pid"])):
            continue
        try:
            p.unlink()
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append(p)
    return removed


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint (CPU tensors) with ``weights_only=True``; CheckpointError names the file."""
    obj = load_weights_only(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return dict(obj)


def to_plain(obj):
    """Convert numpy arrays/scalars and tuples inside ``obj`` to tensors / python numbers / lists."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def capture_rng() -> dict:
    """Global RNG states of python, numpy, torch (CPU) and CUDA as weights_only-safe values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
