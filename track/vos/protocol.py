"""The semi-supervised VOS protocol for one object: start from its first-frame mask, track the
rest of the sequence, hand each frame's mask to the sequence's merger.

The tracker starts from the mask's bounding box (`cv2.boundingRect`: x, y, w, h) with its
centre at (x + w/2, y + h/2) and size (w, h), as the SiamMask authors' DAVIS evaluation does
(`tools/test.py`: `track_vos`); the box handed to the tracker is therefore
(x + 1/2, y + 1/2, w, h) in PySOT's convention, whose centre is x + (w - 1)/2.  Each frame's
mask is the tracker's own probability map (`result['mask']`, SiamMask) or, for trackers
without one and for the box-as-mask baseline, its box filled with 1.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from track.protocol import Protocol, Request

__all__ = ['mask_box', 'box_mask', 'VOSProtocol']


def mask_box(mask: np.ndarray) -> tuple:
    """(x, y, w, h) of the box the tracker starts from: the mask's bounding rectangle moved by
    half a pixel, so that PySOT's centre x + (w - 1)/2 is the authors' x + w/2."""
    x, y, w, h = cv2.boundingRect(np.asarray(mask, np.uint8))
    if w == 0 or h == 0:
        raise ValueError('empty first-frame mask: no box to start from')
    return (x + 0.5, y + 0.5, float(w), float(h))


def box_mask(box, shape) -> np.ndarray:
    """(H, W) float32: 1 on the pixels i whose centre i + 1/2 lies in [x, x + w) (and likewise
    for rows), 0 elsewhere.  The half-open interval gives the w x h pixels of an integer box both
    for a tracker's output [cx - w/2, cy - h/2, w, h] (x integral) and for the start box it was
    given (x + 1/2), which is what the static baseline reports."""
    h, w = shape[:2]
    x, y, bw, bh = (float(v) for v in box)
    out = np.zeros((h, w), np.float32)
    if not all(math.isfinite(v) for v in (x, y, bw, bh)):
        return out
    x0, x1 = max(0, math.ceil(x - 0.5)), min(w, math.ceil(x + bw - 0.5))
    y0, y1 = max(0, math.ceil(y - 0.5)), min(h, math.ceil(y + bh - 0.5))
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = 1.0
    return out


class VOSProtocol(Protocol):
    """One object of one sequence: init on frame 0 from `first_mask`'s box, track frames
    1..n-1, and hand each frame's probability map to every output.

    `outputs`: [(kind, on_mask)] with kind 'mask' (the tracker's mask when it gives one, else
    its box) or 'box' (its box: the box-as-mask baseline of the same run); `on_mask(frame,
    mask)` receives (H, W) float32 maps.  A frame that cannot be read repeats the previous
    maps (counted in `skipped`, the tracker is not called); the first frame must read."""

    KINDS = ('mask', 'box')

    def __init__(self, name: str, n_frames: int, first_mask: np.ndarray, outputs):
        self.outputs = list(outputs)
        bad = [kind for kind, _ in self.outputs if kind not in self.KINDS]
        if bad:
            raise ValueError(f'output kinds {bad}; expected some of {self.KINDS}')
        self.name = name
        self.n_frames = int(n_frames)
        self.box = mask_box(first_mask)
        self.shape = np.shape(first_mask)[:2]  # the frames' (H, W)
        self.times = np.zeros(self.n_frames)
        self.skipped = 0
        self._previous = [np.zeros(self.shape, np.float32)] * len(self.outputs)
        self._next = 0

    def next_request(self):
        i = self._next
        if i >= self.n_frames:
            return None
        return Request('init', 0, self.box) if i == 0 else Request('track', i)

    def _emit(self, frame: int, masks: list) -> None:
        self._previous = masks
        for (_, on_mask), mask in zip(self.outputs, masks):
            on_mask(frame, mask)

    def report(self, request, result):
        if request.kind == 'track':
            boxed = None
            masks = []
            for kind, _ in self.outputs:
                if kind == 'mask' and result.get('mask') is not None:
                    masks.append(np.asarray(result['mask'], np.float32))
                else:
                    boxed = box_mask(result['bbox'], self.shape) if boxed is None else boxed
                    masks.append(boxed)
            self._emit(request.frame, masks)
        self._next = request.frame + 1

    def unreadable(self, request):
        if request.kind == 'init':
            raise ValueError(f'{self.name}: cannot read the first frame')
        self.skipped += 1
        self._emit(request.frame, self._previous)
        self._next = request.frame + 1

    def timed(self, request, seconds):
        self.times[request.frame] = seconds
