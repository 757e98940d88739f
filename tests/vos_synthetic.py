"""A tiny DAVIS-layout data set for the VOS tests: moving ellipses of several colours on a
textured background, JPEG frames, palette-PNG masks (object ids, optional void pixels) and the
ImageSets lists of DAVIS 2016 and 2017."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from track.vos.png import write_labels

COLOURS = [(40, 40, 220), (40, 200, 40), (220, 120, 30), (200, 40, 200)]


def object_labels(shape, n_objects: int, t: int, rng_seed: int) -> np.ndarray:
    """(H, W) uint8 ids of `n_objects` ellipses at time t (later ids drawn over earlier ones)."""
    h, w = shape
    rng = np.random.default_rng(rng_seed)
    labels = np.zeros(shape, np.uint8)
    for k in range(1, n_objects + 1):
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        vx, vy = rng.uniform(-2, 2, 2)
        ax, ay = rng.uniform(0.08, 0.18) * w, rng.uniform(0.08, 0.18) * h
        centre = (int(round(cx + vx * t)), int(round(cy + vy * t)))
        cv2.ellipse(labels, centre, (int(ax), int(ay)), 15.0 * k, 0, 360, k, -1)
    return labels


def make_davis(root, sequences: dict, shape=(60, 80), seed: int = 0, void: bool = True,
               split: str = 'val') -> Path:
    """Write `sequences` {name: (frames, objects)} in DAVIS's layout under `root`; with `void`,
    a ring of 255 around object 1 in every mask.  Lists every sequence in ImageSets/2016 and
    ImageSets/2017 `<split>.txt`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for s, (name, (n_frames, n_objects)) in enumerate(sequences.items()):
        images = root / 'JPEGImages' / '480p' / name
        masks = root / 'Annotations' / '480p' / name
        images.mkdir(parents=True, exist_ok=True)
        background = cv2.resize(rng.integers(60, 200, (8, 8, 3), dtype=np.uint8), shape[::-1])
        for t in range(n_frames):
            labels = object_labels(shape, n_objects, t, seed * 1000 + s)
            frame = background.copy()
            for k in range(1, n_objects + 1):
                frame[labels == k] = COLOURS[(k - 1) % len(COLOURS)]
            cv2.imwrite(str(images / f'{t:05d}.jpg'), frame)
            if void:
                ring = cv2.dilate((labels == 1).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
                labels = labels.copy()
                labels[ring & (labels == 0)] = 255
            write_labels(masks / f'{t:05d}.png', labels)
    for year in ('2016', '2017'):
        listing = root / 'ImageSets' / year / f'{split}.txt'
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text(''.join(f'{n}\n' for n in sequences))
    return root


def small_siammask(overrides=(), seed: int = 0):
    """(cfg, model): SiamMask R50 (configs/siammask_r50_l3.yaml) scaled down for CPU tests: a
    175-pixel search (15 x 15 score map) and one bottleneck block per ResNet stage (channels,
    strides and dilations unchanged, so neck, heads and refine see the shapes they expect),
    random weights and non-trivial BatchNorm statistics (a fresh model's hide rounding)."""
    import torch
    import torch.nn as nn

    from model import build_model
    from train.config import load_config

    cfg = load_config('configs/siammask_r50_l3.yaml', overrides=['TRACK.INSTANCE_SIZE=175', *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg)
    for name in ('layer1', 'layer2', 'layer3'):
        setattr(model.backbone, name, getattr(model.backbone, name)[:1])
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return cfg, model.eval()
