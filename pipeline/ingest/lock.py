"""One build per dataset folder: an flock on ``<folder>/build.lock`` that records who holds it
(pipeline/file_lock.py).

A build holds it exclusively; a verification shares it (several can run, none during a build).  The
kernel releases it when the process ends, however it ends, so there is never a stale lock to remove.
"""
from __future__ import annotations

from pathlib import Path

from ..file_lock import HeldLock, LockHeldError, describe_holder
from .spec import BuildError
from .writer import disk_full_error, is_disk_full

LOCK_NAME = 'build.lock'


class FolderLock:
    """Context manager: lock a dataset folder (created if missing) or raise BuildError naming the holder."""

    def __init__(self, folder, exclusive: bool = True):
        self.folder = Path(folder)
        self.exclusive = exclusive
        self._lock = HeldLock(self.folder / LOCK_NAME, exclusive)

    def __enter__(self):
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except LockHeldError as e:
            holder = (describe_holder(e.holder) if e.holder else
                      'a verification (build_lmdb.py --verify-only) or a build that recorded nothing')
            what = 'built' if self.exclusive else 'built (a verification waits for the build to end)'
            raise BuildError(f'{self.folder} is being {what} by another process: {holder}. '
                             f'Wait for it to finish (or stop it), then rerun') from None
        except OSError as e:
            if is_disk_full(e):
                raise disk_full_error(self.folder / LOCK_NAME, e) from None
            raise
        return self

    def __exit__(self, *exc):
        self._lock.release()
        return False
