"""Indexed PNGs (one label per pixel), read and written as the DAVIS tools do, with Pillow.

The official evaluation reads every annotation and result with `np.array(Image.open(path))`:
the palette index of a palette ('P') PNG, the value of a grayscale ('L') one.  OpenCV cannot
stand in: it expands a palette PNG to colours and the indices are lost.  Results are written as
palette PNGs with DAVIS's colours (the PASCAL VOC colour map), so they open as coloured masks
in any viewer and read back as the labels written.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.fileio import atomic_write

__all__ = ['DAVIS_PALETTE', 'read_labels', 'write_labels', 'encode_labels']


def _voc_palette(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 RGB: the PASCAL VOC / DAVIS colour of each label (the bits of the label
    spread over the high bits of R, G and B: 1 dark red, 2 dark green, 3 olive, ...)."""
    palette = np.zeros((n, 3), np.uint8)
    for label in range(n):
        rgb, value = [0, 0, 0], label
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette[label] = rgb
    return palette


DAVIS_PALETTE = _voc_palette()


def read_labels(path) -> np.ndarray:
    """(H, W) uint8 labels of an indexed PNG: the palette indices of a palette image, the values
    of a grayscale one (as `np.array(PIL.Image.open(path))`, the official reader).  A colour or
    16-bit PNG, or a file that is not an image, is a ValueError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            mode = img.mode
            labels = np.array(img)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's errors for broken files
        raise ValueError(f'{path}: not a readable PNG ({err})') from None
    if mode not in ('P', 'L', '1') or labels.ndim != 2:
        raise ValueError(f'{path}: a {mode} image; expected an indexed PNG (palette or 8-bit grayscale: '
                         'one object id per pixel)')
    return labels.astype(np.uint8, copy=False)


def encode_labels(labels: np.ndarray, palette: np.ndarray = DAVIS_PALETTE) -> bytes:
    """PNG bytes of a palette image holding `labels` ((H, W) integers in 0..255)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'labels must be (H, W), got shape {labels.shape}')
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f'labels must lie in 0..255, got {labels.min()}..{labels.max()}')
    h, w = labels.shape
    img = Image.frombytes('P', (w, h), np.ascontiguousarray(labels, np.uint8).tobytes())
    img.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    out = io.BytesIO()
    img.save(out, format='PNG')
    return out.getvalue()


def write_labels(path, labels: np.ndarray, palette: np.ndarray = DAVIS_PALETTE) -> Path:
    """Write `labels` as a palette PNG, atomically (a reader never sees a partial file)."""
    atomic_write(path, encode_labels(labels, palette))
    return Path(path)
