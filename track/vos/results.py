"""Results in DAVIS's layout: `<results>/<tracker>/<sequence>/<frame>.png`, one palette PNG a
frame whose pixels are object ids (0 background), the layout the official evaluation reads.

`MaskMerger` turns the objects' per-frame probability maps into those files as the SiamMask
authors do (`tools/test.py`): each pixel goes to the object of highest probability (the lower
id on a tie) when that probability exceeds the threshold, else to the background; frame 0 is
the given first-frame mask.  Objects report frames in any order and from several threads; a
frame is merged incrementally (one best-probability map, one label map) and written as soon
as every object has reported it.  A sequence is written into `<sequence>.partial/` and renamed
to `<sequence>/` when its last frame is written, so a folder under its own name is complete.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np

from track.vos.png import read_labels, write_labels

__all__ = ['MaskMerger', 'sequence_dir', 'is_complete', 'read_result_frames']


def sequence_dir(results_dir, tracker: str, sequence: str) -> Path:
    """`<results_dir>/<tracker>/<sequence>`."""
    return Path(results_dir) / tracker / sequence


def is_complete(folder, frame_ids) -> bool:
    """True when `folder` holds a PNG for every frame id."""
    folder = Path(folder)
    return folder.is_dir() and all((folder / f'{i}.png').is_file() for i in frame_ids)


def read_result_frames(folder, frame_ids, shape) -> np.ndarray:
    """(T, H, W) uint8 labels of the result PNGs `<folder>/<id>.png` for `frame_ids`; a
    missing file, or one of another size than `shape`, is an error naming it."""
    out = np.zeros((len(frame_ids), *shape), np.uint8)
    for t, frame_id in enumerate(frame_ids):
        path = Path(folder) / f'{frame_id}.png'
        if not path.is_file():
            raise FileNotFoundError(f'result missing: {path}')
        labels = read_labels(path)
        if labels.shape != tuple(shape):
            raise ValueError(f'{path}: {labels.shape[1]}x{labels.shape[0]} result for a '
                             f'{shape[1]}x{shape[0]} sequence')
        out[t] = labels
    return out


class MaskMerger:
    """One sequence's result files from its tracked objects' probability maps.

    `object_ids`: the ids tracked, in order (index i of `add` is object_ids[i]); `first_labels`:
    frame 0's result; `threshold`: the mask threshold (MASK_THERSHOLD)."""

    def __init__(self, folder, frame_ids, first_labels: np.ndarray, object_ids, threshold: float):
        self.folder = Path(folder)
        self.partial = self.folder.with_name(self.folder.name + '.partial')
        self.frame_ids = list(frame_ids)
        self.object_ids = np.asarray(list(object_ids), np.uint8)  # ids 1..254: indices fit a uint8
        self.threshold = float(threshold)
        self.shape = np.shape(first_labels)
        self._lock = threading.Lock()
        self._pending = {}  # frame -> [best probability, best object index, objects reported]
        self._written = 0
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self._write(0, np.asarray(first_labels, np.uint8))
        if len(self.object_ids) == 0:  # nothing to track: empty frames
            for t in range(1, len(self.frame_ids)):
                self._write(t, np.zeros(self.shape, np.uint8))

    @property
    def done(self) -> bool:
        return self._written == len(self.frame_ids)

    def add(self, index: int, frame: int, prob: np.ndarray) -> None:
        """Object `index`'s probability map of `frame` (H, W)."""
        if np.shape(prob) != self.shape:
            raise ValueError(f'{self.folder.name} frame {frame}: mask {np.shape(prob)} for frames of {self.shape}')
        with self._lock:
            entry = self._pending.get(frame)
            if entry is None:
                entry = self._pending[frame] = [np.array(prob, np.float32), np.full(self.shape, index, np.uint8), 0]
            else:
                best, owner = entry[0], entry[1]
                take = (prob > best) | ((prob == best) & (index < owner))
                best[take] = prob[take]
                owner[take] = index
            entry[2] += 1
            if entry[2] < len(self.object_ids):
                return
            del self._pending[frame]
        best, owner, _ = entry
        labels = np.where(best > self.threshold, self.object_ids[owner], 0).astype(np.uint8)
        self._write(frame, labels)

    def _write(self, frame: int, labels: np.ndarray) -> None:
        write_labels(self.partial / f'{self.frame_ids[frame]}.png', labels)
        with self._lock:
            self._written += 1
            complete = self._written == len(self.frame_ids)
        if complete:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            os.replace(self.partial, self.folder)
