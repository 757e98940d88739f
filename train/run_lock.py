"""One training run per run folder: ``<out>/run.lock``, held by rank 0 from before the folder is
touched until the run ends (pipeline/file_lock.py: an flock that records pid, host, start and
command). A second run, or a ``--resume`` while the first still trains, stops with one line
naming the holder; the record of a run that was killed is taken over.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.file_lock import HeldLock, LockHeldError, LockUnsupportedError, describe_holder

from .preflight import PreflightError

__all__ = ["RunLock", "LOCK_NAME"]

LOCK_NAME = "run.lock"


class RunLock:
    """The run folder's lock. ``acquire`` returns a line for the log (a taken-over record, or a
    file system without flock) or None, and raises PreflightError if another run holds it."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self._lock = HeldLock(self.out_dir / LOCK_NAME)

    def acquire(self) -> str | None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            left = self._lock.acquire()
        except LockHeldError as err:
            raise PreflightError(f"{self.out_dir} is in use by another training run: {describe_holder(err.holder)}; "
                                 f"wait for it to end (or stop it), or choose another --out") from None
        except LockUnsupportedError as err:
            return f"{err.strerror}: two runs into {self.out_dir} would not be stopped"
        if left:
            return f"{LOCK_NAME}: taking over from a run that ended without releasing it ({describe_holder(left)})"
        return None

    def release(self) -> None:
        self._lock.release()
