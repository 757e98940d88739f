"""The crops the loader may use: shard reads that reject unusable crops and remember them.

Thread-safe: the loader's reader threads call `read` concurrently (the shard reader's
`jpeg_at` is thread-safe).  A crop is unusable when the reader says so (`CorruptCropError`:
missing, short, failed checksum, unreadable shard), when its bytes fail the cheap checks of
`pipeline.crop_check` (not a complete JPEG, wrong size), or when DALI's decoder rejects it
(the loader reports that with `mark_bad`).  Each is logged once, with its dataset and entry, and
never read again; the loader replaces the pair.  Any other error from a reader propagates.

SiamMask search masks are read the same way, under refs of their own (`mask_ref`): `read`
returns the mask decoded (the PNG of its region, with OpenCV, in the reader thread), or None
when it is unusable (`CorruptCropError`, a PNG that does not decode to the region the index
records); the pair is then replaced as for a crop, while the crop itself stays usable.
Decoding here was measured cheaper than DALI's decoder (36 vs 47 us of CPU per mask) and
keeps the graph's mask input the same on the CPU and the GPU.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from pipeline.crop_check import crop_problem
from pipeline.shards import CorruptCropError

log = logging.getLogger("pipeline.loader")

LISTED = 10  # unusable crops of each kind named in the log one by one; the rest are counted (damaged_shards)
MASK_TAG = 1    # third element of a mask's ref: (dataset, entry, MASK_TAG)
# The graph input of a pair without a mask label (negatives, datasets without masks) and of an
# empty mask: one background pixel at the crop's origin.
NO_MASK = (np.zeros((1, 1, 1), np.uint8), (0, 0))


def mask_ref(dataset: int, entry: int) -> tuple:
    """The ref of an entry's search mask (a crop's ref is (dataset, entry))."""
    return int(dataset), int(entry), MASK_TAG


def is_mask_ref(ref) -> bool:
    return len(ref) == 3


def decode_mask_region(png: bytes, box, crop_size: int):
    """(region (h, w, 1) uint8, nonzero = object, (x, y)) from `ShardReader.mask_at`'s (PNG,
    box), or a one-line reason (str) why the mask is unusable; `NO_MASK` for an empty mask."""
    x, y, w, h = (int(v) for v in box)
    if not png:
        return NO_MASK
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > crop_size or y + h > crop_size:
        return f"mask region {w}x{h} at ({x}, {y}) is not inside the {crop_size}x{crop_size} crop"
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.shape != (h, w) or mask.dtype != np.uint8:
        got = "nothing" if mask is None else f"{mask.dtype} {'x'.join(map(str, mask.shape))}"
        return f"mask PNG decodes to {got}, expected uint8 {h}x{w}"
    return mask[:, :, None], (x, y)


class CropSource:
    """Validated crop reads over ShardReaders in cfg.DATASET.NAMES order.

    names: dataset names (for messages); crop_sizes: each dataset's crop side in pixels (from
    its shard metadata).  Refs are (dataset index, entry index).
    """

    def __init__(self, readers: list, names: list, crop_sizes: list):
        self.readers, self.names = list(readers), list(names)
        self.crop_sizes = [int(s) for s in crop_sizes]
        self.bad = set()              # refs known to be unusable
        self._listed = Counter()      # unusable refs logged, per kind of fault
        self._lock = threading.Lock()

    def read(self, ref):
        """JPEG bytes of crop `ref`, or the decoded search mask (`decode_mask_region`) of a
        `mask_ref`; None if it is unusable (then it is marked bad)."""
        if is_mask_ref(ref):
            return self._read_mask(mask_ref(ref[0], ref[1]))
        ref = (int(ref[0]), int(ref[1]))
        if ref in self.bad:
            return None
        try:
            data = self.readers[ref[0]].jpeg_at(ref[1])
        except CorruptCropError as err:
            self.mark_bad(ref, str(err), kind="stored bytes")
            return None
        problem = crop_problem(data, self.crop_sizes[ref[0]])
        if problem is not None:
            self.mark_bad(ref, problem, kind="not a crop")
            return None
        return data

    def _read_mask(self, ref):
        if ref in self.bad:
            return None
        try:
            png, box = self.readers[ref[0]].mask_at(ref[1])
        except CorruptCropError as err:
            self.mark_bad(ref, str(err), kind="stored bytes")
            return None
        mask = decode_mask_region(png, box, self.crop_sizes[ref[0]])
        if isinstance(mask, str):
            self.mark_bad(ref, mask, kind="not a mask")
            return None
        return mask

    def read_many(self, refs) -> list:
        """`read` for each ref, in order (one task of a reader thread)."""
        return [self.read(ref) for ref in refs]

    def is_bad(self, ref) -> bool:
        return tuple(int(v) for v in ref) in self.bad

    def mark_bad(self, ref, why: str, kind: str = "") -> bool:
        """Record crop (or mask) `ref` as unusable (logged the first time, up to LISTED of each
        `kind` of fault); True if it was not known."""
        ref = tuple(int(v) for v in ref)
        kind = kind or why
        with self._lock:
            if ref in self.bad:
                return False
            self.bad.add(ref)
            self._listed[kind] += 1
            listed = self._listed[kind]
        if listed <= LISTED:
            log.warning("unusable %s, skipped: dataset %s entry %d (%s)%s", "mask" if is_mask_ref(ref) else "crop",
                        self.names[ref[0]], ref[1], why,
                        f"; further ones ({kind}) are counted, not listed" if listed == LISTED else "")
        return True

    def damaged_shards(self) -> dict:
        """{shard folder: unusable crops (and masks) found in it so far}, in folder order."""
        with self._lock:
            bad = sorted(self.bad)
        counts = defaultdict(int)
        for d, e, *_ in bad:  # crops and masks
            reader = self.readers[d]
            shard = reader.meta["shards"][int(reader.entry_shard[e])]["name"]
            counts[str(Path(reader.folder) / shard)] += 1
        return dict(sorted(counts.items()))

    def prefetch(self, refs) -> None:
        """Advisory read-ahead of crops needed soon, for readers that offer `prefetch(entries)`:
        `refs` an (M, 2) array of (dataset, entry) or refs (a mask lies beside its crop: the
        crop's hint covers it), repeats allowed."""
        if not isinstance(refs, np.ndarray):
            refs = [tuple(ref)[:2] for ref in refs]
        refs = np.asarray(refs, np.int64).reshape(-1, 2)
        for d in np.unique(refs[:, 0]).tolist():
            hint = getattr(self.readers[d], "prefetch", None)
            if hint is not None:
                hint(np.unique(refs[refs[:, 0] == d, 1]))


def describe_damage(shards: dict) -> str:
    """'cache/VID/shard-00000 (12 unusable crops), ...; check them with build_lmdb.py --verify-only'."""
    if not shards:
        return "no damaged shard known"
    listed = ", ".join(f"{k} ({v} unusable crop{'s' * (v != 1)})" for k, v in shards.items())
    folders = sorted({Path(k).parent for k in shards})
    checks = "; ".join(f"python tools/build_lmdb.py --dataset {f.name} --out {f.parent} --verify-only" for f in folders)
    return f"{listed}; check them with {checks}"
