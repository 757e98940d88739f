"""Indexed PNGs (one object id per pixel), read and written as the DAVIS tools do.

The official evaluation reads every annotation and result with `np.array(PIL.Image.open(path))`:
the palette index of a palette ('P') PNG, the value of a grayscale ('L') one; OpenCV cannot stand
in, it expands a palette to colours and the ids are lost.  The reader and the encoder are the
shard builder's and the synthetic data's (`pipeline.ingest.masks.read_palette_png`,
`pipeline.synthetic.scene.encode_palette_png`: PIL, the PASCAL VOC / DAVIS colour map); here
they get the evaluation's error handling (a ValueError naming the file) and atomic writes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.fileio import atomic_write
from pipeline.ingest.masks import read_palette_png
from pipeline.synthetic.scene import VOC_PALETTE, encode_palette_png

__all__ = ['DAVIS_PALETTE', 'read_labels', 'write_labels']

DAVIS_PALETTE = np.array(VOC_PALETTE, np.uint8).reshape(256, 3)  # RGB of each id: 1 dark red, 2 dark green, ...


def read_labels(path) -> np.ndarray:
    """(H, W) uint8 ids of an indexed PNG (palette or 8-bit grayscale).  A missing file is a
    FileNotFoundError; a colour PNG or a file that is not a PNG, a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'not found: {path}')
    labels, why = read_palette_png(str(path))
    if labels is None:
        raise ValueError(f'{path}: {why}')
    return np.asarray(labels, np.uint8)


def write_labels(path, labels: np.ndarray) -> Path:
    """Write (H, W) ids in 0..255 as a palette PNG with DAVIS's colours, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'{path}: labels must be (H, W), got shape {labels.shape}')
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f'{path}: labels must lie in 0..255, got {labels.min()}..{labels.max()}')
    atomic_write(path, encode_palette_png(labels))
    return Path(path)
