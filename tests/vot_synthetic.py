"""Tiny synthetic VOT data for the VOT tests: a textured target moving over noise, with rectangle
or rotated-polygon ground truth, optionally jumping away (so any tracker fails there), written in
the VOT layout; and helpers to build a vot-toolkit workspace around it."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np


def target_path(n: int, start, velocity, jump_at=None, jump_to=None) -> np.ndarray:
    """(n, 2) top-left corners: constant velocity, teleported to `jump_to` at frame `jump_at`."""
    pos = np.array(start, np.float64) + np.arange(n)[:, None] * np.asarray(velocity, np.float64)
    if jump_at is not None:
        pos[jump_at:] += np.asarray(jump_to, np.float64) - pos[jump_at]
    return pos


def polygon_of(x, y, w, h, angle_deg) -> np.ndarray:
    """4 corners (x1,y1,...,x4,y4) of the w x h rectangle at (x, y) rotated about its centre."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    cx, cy = x + w / 2, y + h / 2
    corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    return np.array([v for dx, dy in corners for v in (cx + c * dx - s * dy, cy + s * dx + c * dy)])


def write_sequence(folder: Path, n: int, size=(160, 120), box=(26, 20), start=(20, 40), velocity=(2, 0.5),
                   angle=None, jump_at=None, jump_to=None, seed=0, sequence_file=True) -> list:
    """Write one VOT sequence folder; returns the ground-truth lines written."""
    rng = np.random.default_rng(seed)
    width, height = size
    (folder / 'color').mkdir(parents=True, exist_ok=True)
    texture = rng.integers(0, 256, (box[1], box[0], 3), dtype=np.uint8)
    texture[:, :, 2] = np.maximum(texture[:, :, 2], 200)  # a reddish target on grey noise
    lines = []
    for i, (x, y) in enumerate(target_path(n, start, velocity, jump_at, jump_to)):
        img = rng.integers(70, 140, (height, width, 3), dtype=np.uint8)
        x, y = round(x, 2), round(y, 2)
        if angle is None:
            xi, yi = int(round(x)), int(round(y))
            patch = img[max(yi, 0):yi + box[1], max(xi, 0):xi + box[0]]
            patch[...] = texture[:patch.shape[0], :patch.shape[1]]
            lines.append(f'{x:.2f},{y:.2f},{box[0]:.2f},{box[1]:.2f}')
        else:
            poly = polygon_of(x, y, box[0], box[1], angle + 2 * i)
            cv2.fillPoly(img, [np.round(poly.reshape(-1, 2)).astype(np.int32)], (40, 60, 230))
            lines.append(','.join(f'{v:.2f}' for v in poly))
        cv2.imwrite(str(folder / 'color' / f'{i + 1:08d}.jpg'), img)
    (folder / 'groundtruth.txt').write_text('\n'.join(lines) + '\n')
    if sequence_file:
        (folder / 'sequence').write_text(f'channels.color=color/%08d.jpg\nfps=30\nwidth={width}\nheight={height}\n')
    return lines


def write_dataset(root: Path, specs: dict) -> Path:
    """`specs` = {name: write_sequence kwargs}; writes list.txt too."""
    root.mkdir(parents=True, exist_ok=True)
    for name, kwargs in specs.items():
        write_sequence(root / name, **kwargs)
    (root / 'list.txt').write_text('\n'.join(specs) + '\n')
    return root


STACK = """title: siamtrain test stack
experiments:
  baseline:
    type: supervised
    repetitions: {repetitions}
    skip_initialize: 5
    analyses:
      - type: supervised_average_ar
        sensitivity: 30
      - type: supervised_eao_score
        low: {low}
        high: {high}
      - type: supervised_eao_curve
"""


def write_workspace(ws: Path, low: int, high: int, repetitions: int = 1, trackers_ini: str = '') -> Path:
    """A vot-toolkit workspace (config.yaml, stack.yaml, trackers.ini) around `ws/sequences`;
    the stack has no dataset key, so the toolkit uses the local sequences and downloads nothing."""
    ws.mkdir(parents=True, exist_ok=True)
    (ws / 'stack.yaml').write_text(STACK.format(repetitions=repetitions, low=low, high=high))
    (ws / 'config.yaml').write_text(f'registry:\n- ./trackers.ini\nstack: {ws.resolve() / "stack.yaml"}\n')
    (ws / 'trackers.ini').write_text(trackers_ini)
    return ws


def toolkit_scores(ws: Path, tracker: str) -> dict:
    """vot-toolkit's own analysis of `tracker`'s stored runs in workspace `ws` (its Python API, as
    `vot analysis` runs it, with an in-memory cache): accuracy, robustness, EAO and its curve."""
    from cachetools import LRUCache
    from vot.analysis import AnalysisProcessor, process_stack_analyses
    from vot.utilities import ThreadPoolExecutor
    from vot.workspace import Workspace

    workspace = Workspace.load(str(ws))
    trackers = workspace.registry.resolve(tracker, storage=workspace.storage.substorage('results'),
                                          skip_unknown=False)
    executor = ThreadPoolExecutor(1)
    try:
        with AnalysisProcessor(executor, LRUCache(1000)):
            results = process_stack_analyses(workspace, trackers)
    finally:
        executor.shutdown(wait=True)
    (_, analyses), = results.items()
    out = {}
    for analysis, grid in analyses.items():
        kind = type(analysis).__name__
        if kind == 'AverageAccuracyRobustness':
            out['accuracy'], out['robustness'], ar, out['length'] = grid[0, 0]
            out['ar_robustness'] = ar[0]
        elif kind == 'EAOScore':
            out['eao'] = grid[0, 0][0]
        elif kind == 'EAOCurve':
            out['eao_curve'] = np.asarray(grid[0, 0][0])
    return out
