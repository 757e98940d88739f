"""PySOT's RPN anchors: integer-truncated sizes on a stride grid.

Anchor sizes follow PySOT's `Anchors.generate_anchors`: for each ratio r (h/w) the base
square of side `stride` becomes ws = int(sqrt(stride**2 / r)), hs = int(ws * r), then both
are multiplied by each scale (ratio-major, scale-minor order). With the defaults (stride 8,
ratios 0.33..3, scale 8) this gives 104x32, 88x40, 64x64, 40x80, 32x96.

Training anchors sit on a `size` x `size` grid whose origin is
im_c - (size // 2) * stride with im_c = search_size // 2 (31..223 for 255 / 25).
"""
from __future__ import annotations

import math

import numpy as np


def anchor_sizes(stride: int, ratios, scales) -> np.ndarray:
    """(A, 2) float32 anchor (w, h), A = len(ratios) * len(scales), ratio-major."""
    sizes = []
    base_area = stride * stride
    for ratio in ratios:
        ws = int(math.sqrt(base_area * 1.0 / ratio))
        hs = int(ws * ratio)
        for scale in scales:
            sizes.append((ws * scale, hs * scale))
    return np.asarray(sizes, dtype=np.float32)


def anchor_grid(stride: int, ratios, scales, search_size: int, output_size: int):
    """Training anchors in search-crop pixels.

    Returns (corners, centres), each float32 (4, A, S, S): corners are (x1, y1, x2, y2),
    centres are (cx, cy, w, h); index [.., a, y, x] with cx = origin + x * stride.
    """
    wh = anchor_sizes(stride, ratios, scales)
    num = wh.shape[0]
    origin = search_size // 2 - (output_size // 2) * stride
    offsets = origin + stride * np.arange(output_size, dtype=np.float32)
    shape = (num, output_size, output_size)
    cx = np.broadcast_to(offsets[None, None, :], shape)
    cy = np.broadcast_to(offsets[None, :, None], shape)
    w = np.broadcast_to(wh[:, 0, None, None], shape)
    h = np.broadcast_to(wh[:, 1, None, None], shape)
    centres = np.stack([cx, cy, w, h]).astype(np.float32)
    corners = np.stack([cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5]).astype(np.float32)
    return corners, centres


def anchor_grid_from_cfg(cfg):
    """`anchor_grid` for the training crop of `cfg` (cfg.ANCHOR, cfg.TRAIN sizes)."""
    return anchor_grid(cfg.ANCHOR.STRIDE, cfg.ANCHOR.RATIOS, cfg.ANCHOR.SCALES,
                       cfg.TRAIN.SEARCH_SIZE, cfg.TRAIN.OUTPUT_SIZE)


def tracker_anchors(stride: int, ratios, scales, score_size: int) -> np.ndarray:
    """(A * S * S, 4) float32 (cx, cy, w, h) with centres relative to the search centre.

    Flattened anchor-major (index a * S * S + y * S + x), the order of PySOT's
    `SiamRPNTracker.generate_anchor` and of `loc.permute(1, 2, 3, 0).reshape(4, -1)`.
    """
    _, centres = anchor_grid(stride, ratios, scales, 0, score_size)
    return np.ascontiguousarray(centres.reshape(4, -1).T)
