"""Small real LMDB shards for the sampling/reference tests, built through the shard builder from a
PySOT-style crop511 folder whose 511 crops show a bright rectangle exactly at `box_on_crop`."""
import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.ingest import build_dataset
from pipeline.crop import box_on_crop

# VID: (video, track id, frames); track 1 of v0 has a gap (frames 0..7 and 12..19).
VID_TRACKS = [('v0', 0, list(range(20))), ('v0', 1, list(range(8)) + list(range(12, 20))),
              ('v1', 0, list(range(6))), ('v2', 0, list(range(10))), ('v2', 3, list(range(4, 9))),
              ('v3', 0, list(range(12))), ('v4', 0, list(range(5))), ('v5', 2, list(range(7)))]
COCO_IMAGES = {f'img{i}': list(range(1 + i % 3)) for i in range(8)}   # image -> track ids


def object_box(rng):
    """Original-image box with a random size and aspect ratio."""
    w = float(rng.uniform(20, 300))
    h = w * float(np.exp(rng.uniform(-1.0, 1.0)))
    x, y = float(rng.uniform(0, 500)), float(rng.uniform(0, 400))
    return [x, y, x + w, y + h]


def draw_crop(box, shade):
    """511 crop: dark background with a slight gradient, bright rectangle at box_on_crop(box)."""
    img = np.empty((511, 511, 3), np.uint8)
    img[:] = np.array([40, 60, 80], np.uint8) + np.uint8(shade)
    x1, y1, x2, y2 = box_on_crop(box)
    # pixels whose centre (integer coordinates, as cv2 and PySOT use) lies inside the box
    c0, c1 = int(np.ceil(x1)), int(np.floor(x2))
    r0, r1 = int(np.ceil(y1)), int(np.floor(y2))
    img[r0:r1 + 1, c0:c1 + 1] = (230, 220, 210)
    return img


def write_crop511(root: Path, tracks, seed):
    """PySOT crop511 folder + train.json for [(video, track, frames)]."""
    rng = np.random.default_rng(seed)
    anno = {}
    for video, track, frames in tracks:
        for f in frames:
            box = object_box(rng)
            anno.setdefault(video, {}).setdefault(f'{track:02d}', {})[f'{f:06d}'] = box
            path = root / video / f'{f:06d}.{track:02d}.x.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), draw_crop(box, (f * 3) % 20), [cv2.IMWRITE_JPEG_QUALITY, 98])
    (root / 'train.json').write_text(json.dumps(anno))
    return root / 'train.json'


def build_test_shards(tmp: Path) -> Path:
    """cache-like folder with VID and COCO shards; returns the shard root."""
    out = tmp / 'cache'
    vid_anno = write_crop511(tmp / 'vid_crop511', VID_TRACKS, seed=1)
    build_dataset('VID', out_root=out, from_crop511=tmp / 'vid_crop511', anno=vid_anno, progress=False)
    coco = [(name, t, [0]) for name, ts in COCO_IMAGES.items() for t in ts]
    coco_anno = write_crop511(tmp / 'coco_crop511', coco, seed=2)
    build_dataset('COCO', out_root=out, from_crop511=tmp / 'coco_crop511', anno=coco_anno, progress=False)
    return out


def overrides(**extra):
    """Config overrides for a VID + COCO mix with small epochs."""
    base = {'DATASET.NAMES': '[VID,COCO]', 'DATASET.VID.NUM_USE': -1, 'DATASET.COCO.NUM_USE': -1,
            'DATASET.VID.FRAME_RANGE': 3, 'DATASET.VIDEOS_PER_EPOCH': 40}
    base.update(extra)
    return [f'{k}={v}' for k, v in base.items()]
