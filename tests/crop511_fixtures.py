"""PySOT crop511 folders for the tests: textured 511 crops with a bright object at the box's
`box_on_crop`, their train.json and (SiamMask) the object's mask as the authors' `.m.png`."""
import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.crop import box_on_crop


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


def write_crop511(root: Path, tracks, seed: int, masks: bool = False) -> Path:
    """PySOT crop511 folder + train.json for [(video, track, frames)]: textured crops with the
    object at box_on_crop, a rectangle; with `masks` an irregular blob on a darker background,
    also written as the authors' `<frame>.<track>.m.png`."""
    rng = np.random.default_rng(seed)
    anno = {}
    for video, track, frames in tracks:
        for f in frames:
            w = float(rng.uniform(30, 200))
            h = w * float(np.exp(rng.uniform(-0.8, 0.8)))
            x, y = float(rng.uniform(0, 300)), float(rng.uniform(0, 200))
            box = [x, y, x + w, y + h]
            anno.setdefault(video, {}).setdefault(f"{track:02d}", {})[f"{f:06d}"] = box
            img = cv2.resize(rng.integers(0, 120 if masks else 256, (16, 16, 3), dtype=np.uint8),
                             (511, 511), interpolation=cv2.INTER_CUBIC)
            img = cv2.add(img, rng.integers(0, 10, img.shape, dtype=np.uint8))
            stem = root / video / f"{f:06d}.{track:02d}"
            stem.parent.mkdir(parents=True, exist_ok=True)
            if masks:
                mask = blob_mask(rng, box_on_crop(box))
                img[mask > 0] = rng.integers(200, 255, 3, dtype=np.uint8)
                cv2.imwrite(f"{stem}.m.png", mask)
            else:
                x1, y1, x2, y2 = (int(round(v)) for v in box_on_crop(box))
                img[y1:y2, x1:x2] = rng.integers(150, 255, 3, dtype=np.uint8)
            cv2.imwrite(f"{stem}.x.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "train.json").write_text(json.dumps(anno))
    return root / "train.json"
