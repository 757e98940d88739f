"""Test helpers for SiamMask search masks: object masks, crop511 folders with the authors'
`.m.png` files, and the check of a rendered mask against the SiamMask authors' augmentation
(`pipeline.reference.render_mask`)."""
import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.crop import box_on_crop
from pipeline.reference import render_mask

# A rendered pixel may differ from the authors' only where the exact bilinear value lies within
# cv2's sample-point rounding (1/32 pixel on each axis) of the 0.5 threshold.
NEAR_HALF = 1 / 16


def blob_mask(rng, box, size: int = 511) -> np.ndarray:
    """size x size uint8 {0, 255}: an irregular blob (ellipse with a wavy outline and a notch)
    filling the box (x1, y1, x2, y2) on the crop."""
    x1, y1, x2, y2 = box
    angle = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    radius = 1 + 0.15 * np.sin(int(rng.integers(2, 6)) * angle + rng.uniform(0, 2 * np.pi))
    pts = np.stack([(x1 + x2) / 2 + (x2 - x1) / 2 * radius * np.cos(angle),
                    (y1 + y2) / 2 + (y2 - y1) / 2 * radius * np.sin(angle)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
    mask[cy - 3:cy + 3, cx:int(x2) + 2] = 0   # a notch: the outline is not convex
    return mask


def exact_mask_values(mask: np.ndarray, aug) -> np.ndarray:
    """(S, S) float64: the bilinear value of `mask` > 0 (zero outside) at the search crop's
    exact sample points, after the flip (what the authors threshold at 0.5)."""
    src = (mask > 0).astype(np.float64)
    n = aug.out_size
    x1, y1, x2, y2 = aug.crop
    xs = x1 + np.arange(n) * (x2 - x1) / (n - 1)
    ys = y1 + np.arange(n) * (y2 - y1) / (n - 1)
    if aug.flip:
        xs = xs[::-1]
    padded = np.pad(src, 1)

    def taps(s, length):
        f = np.floor(s)
        index = np.clip(f.astype(np.int64) + 1, 0, length + 1)
        nxt = np.clip(f.astype(np.int64) + 2, 0, length + 1)
        return index, nxt, s - f

    xi, xn, wx = taps(xs, src.shape[1])
    yi, yn, wy = taps(ys, src.shape[0])
    top = padded[yi][:, xi] * (1 - wx) + padded[yi][:, xn] * wx
    bottom = padded[yn][:, xi] * (1 - wx) + padded[yn][:, xn] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def assert_mask_like_authors(out, mask: np.ndarray, aug, what: str = "mask") -> int:
    """`out` (1, S, S) equals the authors' search mask of `mask` for `aug`, except at pixels whose
    exact value is within NEAR_HALF of 0.5; returns the number of such differences."""
    out = np.asarray(out)
    ref = render_mask(mask, aug)
    assert out.shape == ref.shape and out.dtype == np.float32, (what, out.shape, out.dtype)
    assert set(np.unique(out).tolist()) <= {-1.0, 1.0}, what
    differ = out[0] != ref[0]
    if differ.any():
        values = exact_mask_values(mask, aug)[differ]
        assert np.abs(values - 0.5).max() < NEAR_HALF, (what, values)
    assert differ.sum() <= max(4, 0.01 * (ref > 0).sum()), (what, int(differ.sum()))
    return int(differ.sum())


def write_crop511_with_masks(root: Path, tracks, seed: int, masks: bool = True) -> Path:
    """A PySOT crop511 folder + train.json: textured crops with a bright blob object at the
    box's `box_on_crop`, and (masks) the blob as the authors' `<frame>.<track>.m.png`."""
    rng = np.random.default_rng(seed)
    anno = {}
    for video, track, frames in tracks:
        for f in frames:
            w = float(rng.uniform(30, 200))
            h = w * float(np.exp(rng.uniform(-0.8, 0.8)))
            x, y = float(rng.uniform(0, 300)), float(rng.uniform(0, 200))
            box = [x, y, x + w, y + h]
            anno.setdefault(video, {}).setdefault(f"{track:02d}", {})[f"{f:06d}"] = box
            img = cv2.resize(rng.integers(0, 120, (16, 16, 3), dtype=np.uint8), (511, 511),
                             interpolation=cv2.INTER_CUBIC)
            img = cv2.add(img, rng.integers(0, 10, img.shape, dtype=np.uint8))
            mask = blob_mask(rng, box_on_crop(box))
            img[mask > 0] = rng.integers(200, 255, 3, dtype=np.uint8)
            stem = root / video / f"{f:06d}.{track:02d}"
            stem.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(f"{stem}.x.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if masks:
                cv2.imwrite(f"{stem}.m.png", mask)
    (root / "train.json").write_text(json.dumps(anno))
    return root / "train.json"
