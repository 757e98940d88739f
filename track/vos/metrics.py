"""DAVIS's region (J) and boundary (F) measures and their statistics, as the official evaluation
(davisvideochallenge/davis2017-evaluation: `davis2017/metrics.py`, `utils.db_statistics`,
`evaluation.py`) defines them for the semi-supervised task.

- J: intersection over union of the object's ground-truth and predicted pixels; 1 when both are
  empty.
- F: boundary F-measure.  Boundaries are the 1-pixel maps of `boundary_map` (the official
  `seg2bmap`); a boundary pixel matches when the other mask's boundary lies within a disk of
  radius ceil(0.008 * image diagonal) pixels around it; precision and recall are the matched
  fractions of the predicted and the ground-truth boundary (an empty boundary against a
  non-empty one: precision 1 / recall 0 or the reverse; both empty: 1 and 1); F = 2PR/(P+R),
  0 when P + R = 0.
- Per object over the frames scored (all but the first and the last): Mean; Recall = fraction
  of frames above 0.5; Decay = mean of the first of four bins minus mean of the last, the bins
  cut at round(linspace(0, n - 1, 5)) and each holding both its edges (neighbouring bins share
  a frame: this is the official code, not an even split).
- Objects: ids 1..N, N the largest id in the first frame's ground truth; ground-truth void
  pixels (255) count as background and no void mask is passed to J or F (the semi-supervised
  task's rule; only the unsupervised task leaves void pixels out).  A result holding fewer
  objects is padded with empty masks; a result id above N is an error.
- Dataset figures average the objects (not the sequences); J&F-Mean = (J-Mean + F-Mean) / 2.

Deliberate difference: the official code casts the decay bin edges to uint8, which wraps for
sequences of 256 or more scored frames (none in DAVIS: at most 104); plain integers here.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ['BOUND_TH', 'jaccard', 'boundary_map', 'boundary_radius', 'disk', 'f_measure',
           'statistics', 'object_masks', 'sequence_measures']

BOUND_TH = 0.008


def jaccard(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of boolean masks over their last two axes ((..., H, W) -> (...)); 1 where both are empty."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f'ground truth {gt.shape} and result {pred.shape} differ in shape')
    inter = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    with np.errstate(invalid='ignore', divide='ignore'):
        j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return j


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a boolean mask, half a pixel towards the origin (`seg2bmap`): a
    pixel is on it when it differs from its right, lower or lower-right neighbour; in the last
    row only the right neighbour counts, in the last column only the lower one, and the
    bottom-right pixel is never on it."""
    m = np.asarray(mask, bool)
    right = np.zeros_like(m)
    below = np.zeros_like(m)
    diagonal = np.zeros_like(m)
    right[:, :-1] = m[:, 1:]
    below[:-1, :] = m[1:, :]
    diagonal[:-1, :-1] = m[1:, 1:]
    b = (m != right) | (m != below) | (m != diagonal)
    b[-1, :] = m[-1, :] != right[-1, :]
    b[:, -1] = m[:, -1] != below[:, -1]
    b[-1, -1] = False
    return b


def boundary_radius(shape, bound_th: float = BOUND_TH) -> int:
    """Match tolerance in pixels: bound_th itself if >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 structuring element: 1 where x^2 + y^2 <= r^2 (skimage's disk)."""
    offsets = np.arange(-radius, radius + 1)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius ** 2).astype(np.uint8)


def _dilate(boundary: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.dilate(boundary.astype(np.uint8), kernel).astype(bool)


def f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH, *,
              gt_boundary: np.ndarray | None = None, kernel: np.ndarray | None = None) -> float:
    """Boundary F-measure of one frame's boolean masks (see the module docstring).
    `gt_boundary` / `kernel` may be passed when already computed."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f'ground truth {gt.shape} and result {pred.shape} differ in shape')
    if kernel is None:
        kernel = disk(boundary_radius(gt.shape, bound_th))
    gt_b = boundary_map(gt) if gt_boundary is None else gt_boundary
    pred_b = boundary_map(pred)
    n_gt, n_pred = int(np.count_nonzero(gt_b)), int(np.count_nonzero(pred_b))
    if n_gt == 0 or n_pred == 0:
        precision = 1.0 if n_pred == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
    else:
        precision = np.count_nonzero(pred_b & _dilate(gt_b, kernel)) / n_pred
        recall = np.count_nonzero(gt_b & _dilate(pred_b, kernel)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(values) -> tuple:
    """(Mean, Recall, Decay) of one object's per-frame J or F values (NaN for no frames)."""
    v = np.asarray(values, np.float64)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(v))
    recall = float(np.mean(v > 0.5))
    edges = np.floor(np.linspace(0, n - 1, 5) + 0.5).astype(int)  # round half up
    first, last = v[edges[0]:edges[1] + 1], v[edges[3]:edges[4] + 1]
    return mean, recall, float(np.mean(first) - np.mean(last))


def object_masks(labels: np.ndarray, n_objects: int) -> np.ndarray:
    """(N, ...) booleans: labels == k for k = 1..N (ids above N belong to no object)."""
    ids = np.arange(1, n_objects + 1).reshape((-1,) + (1,) * np.ndim(labels))
    return np.asarray(labels)[None] == ids


def sequence_measures(gt: np.ndarray, result: np.ndarray, n_objects: int,
                      bound_th: float = BOUND_TH, source: str = 'result') -> tuple:
    """Per-object, per-frame (J, F), each (N, T), of the scored frames of one sequence.

    `gt`, `result`: (T, H, W) integer labels of those frames (void already background);
    `n_objects`: N from the first frame.  A result id above N is a ValueError naming `source`."""
    gt, result = np.asarray(gt), np.asarray(result)
    if gt.shape != result.shape:
        raise ValueError(f'{source}: result frames {result.shape} differ from the ground truth {gt.shape}')
    if result.size and int(result.max()) > n_objects:
        raise ValueError(f'{source}: object id {int(result.max())} in the result, but the first frame '
                         f'has {n_objects} object(s)')
    n_frames = gt.shape[0]
    j = np.zeros((n_objects, n_frames))
    f = np.zeros((n_objects, n_frames))
    if n_frames == 0:
        return j, f
    kernel = disk(boundary_radius(gt.shape[1:], bound_th))
    for k in range(n_objects):
        gt_k, res_k = gt == k + 1, result == k + 1
        j[k] = jaccard(gt_k, res_k)
        for t in range(n_frames):
            f[k, t] = f_measure(gt_k[t], res_k[t], bound_th, kernel=kernel)
    return j, f
