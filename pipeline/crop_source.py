"""The crops the loader may use: shard reads that reject unusable crops and remember them.

Thread-safe: the loader's reader threads call `read` concurrently (the shard reader's
`jpeg_at` is thread-safe).  A crop is unusable when the reader says so (`CorruptCropError`:
missing, short, failed checksum, unreadable shard), when its bytes fail the cheap checks of
`pipeline.crop_check` (not a complete JPEG, wrong size), or when DALI's decoder rejects it
(the loader reports that with `mark_bad`).  Each is logged once, with its dataset and entry, and
never read again; the loader replaces the pair.  Any other error from a reader propagates.
"""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.crop_check import crop_problem
from pipeline.shards import CorruptCropError

log = logging.getLogger("pipeline.loader")

LISTED = 10  # unusable crops named in the log one by one; the rest are counted (damaged_shards)


class CropSource:
    """Validated crop reads over ShardReaders in cfg.DATASET.NAMES order.

    names: dataset names (for messages); crop_sizes: each dataset's crop side in pixels (from
    its shard metadata).  Refs are (dataset index, entry index).
    """

    def __init__(self, readers: list, names: list, crop_sizes: list):
        self.readers, self.names = list(readers), list(names)
        self.crop_sizes = [int(s) for s in crop_sizes]
        self.bad = set()              # refs known to be unusable
        self._lock = threading.Lock()

    def read(self, ref) -> bytes | None:
        """JPEG bytes of crop `ref`, or None if it is unusable (then it is marked bad)."""
        ref = (int(ref[0]), int(ref[1]))
        if ref in self.bad:
            return None
        try:
            data = self.readers[ref[0]].jpeg_at(ref[1])
        except CorruptCropError as err:
            self.mark_bad(ref, str(err))
            return None
        problem = crop_problem(data, self.crop_sizes[ref[0]])
        if problem is not None:
            self.mark_bad(ref, problem)
            return None
        return data

    def read_many(self, refs) -> list:
        """`read` for each ref, in order (one task of a reader thread)."""
        return [self.read(ref) for ref in refs]

    def is_bad(self, ref) -> bool:
        return (int(ref[0]), int(ref[1])) in self.bad

    def mark_bad(self, ref, why: str) -> bool:
        """Record crop `ref` as unusable (logged the first time); True if it was not known."""
        ref = (int(ref[0]), int(ref[1]))
        with self._lock:
            if ref in self.bad:
                return False
            self.bad.add(ref)
            listed = len(self.bad) <= LISTED
        if listed:
            log.warning("unusable crop, skipped: dataset %s entry %d (%s)%s", self.names[ref[0]], ref[1], why,
                        "; further ones are counted, not listed" if len(self.bad) == LISTED else "")
        return True

    def damaged_shards(self) -> dict:
        """{shard folder: unusable crops found in it so far}, in folder order."""
        with self._lock:
            bad = sorted(self.bad)
        counts = defaultdict(int)
        for d, e in bad:
            reader = self.readers[d]
            shard = reader.meta["shards"][int(reader.entry_shard[e])]["name"]
            counts[str(Path(reader.folder) / shard)] += 1
        return dict(sorted(counts.items()))

    def prefetch(self, refs) -> None:
        """Advisory read-ahead of crops needed soon (readers that offer `prefetch(entries)`)."""
        by_dataset = defaultdict(list)
        for d, e in np.asarray(refs, np.int64).reshape(-1, 2).tolist():
            by_dataset[d].append(e)
        for d, entries in by_dataset.items():
            hint = getattr(self.readers[d], "prefetch", None)
            if hint is not None:
                hint(np.unique(np.asarray(entries, np.int64)))


def describe_damage(shards: dict) -> str:
    """'cache/VID/shard-00000 (12 unusable crops), ...; check them with build_lmdb.py --verify-only'."""
    if not shards:
        return "no damaged shard known"
    listed = ", ".join(f"{k} ({v} unusable crop{'s' * (v != 1)})" for k, v in shards.items())
    folders = sorted({Path(k).parent for k in shards})
    checks = "; ".join(f"python tools/build_lmdb.py --dataset {f.name} --out {f.parent} --verify-only" for f in folders)
    return f"{listed}; check them with {checks}"
