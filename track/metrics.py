"""Evaluation metrics with the conventions of the official toolkits (OTB, LaSOT, GOT-10k).

Boxes are (x, y, w, h) rows, 0-based, continuous extent [x, x + w) (no +1 in areas).

One-pass evaluation (OPE; OTB toolkit, PySOT's toolkit, the `got10k` package's OTB experiment):
- **Success**: fraction of frames with IoU > t (strict) for t in linspace(0, 1, 21); the
  denominator is *all* frames of the sequence.  A frame whose ground truth is invalid
  (w or h <= 0, or NaN) is a miss at every threshold, as in the toolkit.  AUC = mean of the
  21-point curve.
- **Precision**: fraction of frames whose centre distance is <= t px, t = 0..50; reported at
  20 px.  Centres are (x + (w - 1) / 2, y + (h - 1) / 2) as in the toolkit.
- **Normalised precision** (LaSOT): both centres divided by the GT (w, h), distance <= t for
  t = 0, 0.01, .., 0.5; reported at 0.2 (index 20; the LaSOT toolkit's index 21, 1-based).
- **Absent frames** (`visible` False: LaSOT full_occlusion | out_of_view, GOT-10k cover 0):
  `absent='miss'` (the official LaSOT toolkit, `calc_seq_err_robust.m` + `eval_tracker.m`)
  scores only visible frames but keeps every frame in the denominator, so absent frames are
  misses for every tracker; `absent='exclude'` drops them from numerator and denominator (the
  GOT-10k rule, which our success AUC follows on GOT-10k).  `DEFAULT_ABSENT` gives the default
  of each dataset format; `absent_policy` resolves and checks a choice.
- Deviations from the toolkits: PySOT's and LaSOT's precision mark frames with a GT coordinate
  <= 0 as distance -1, which counts as a *hit*, and `got10k` measures centre errors of zero-size
  ground truth; here any invalid GT frame is a miss for all metrics.
- The overall figure of a tracker is the mean over sequences of per-sequence values
  (the toolkit's convention), not a frame-weighted mean.

GOT-10k (`got10k_overlaps`, `got10k_summary`; the official `got10k` package's
`ExperimentGOT10k.report`): the first frame is dropped, both boxes are clipped to the image
(`meta_info.ini` resolution) before the IoU, frames with `cover.label` 0 are left out, and the
overlaps of all frames of all sequences are pooled: **AO** = their mean, **SR0.50** / **SR0.75**
= the fraction above 0.5 / 0.75.
"""
from __future__ import annotations

import numpy as np

SUCCESS_THRESHOLDS = np.linspace(0.0, 1.0, 21)
PRECISION_THRESHOLDS = np.arange(0, 51, dtype=np.float64)
NORM_PRECISION_THRESHOLDS = np.arange(0, 51, dtype=np.float64) / 100.0
PRECISION_AT = 20.0  # px
NORM_PRECISION_AT = 0.2
ABSENT_POLICIES = ('miss', 'exclude')
DEFAULT_ABSENT = {'otb': 'exclude', 'got10k': 'exclude', 'lasot': 'miss'}  # per dataset format
GOT10K_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # the got10k package's success-curve bins
GOT10K_SR = {'sr50': GOT10K_THRESHOLDS[50], 'sr75': GOT10K_THRESHOLDS[75]}


def absent_policy(fmt: str, absent: str | None = None) -> str:
    """The absent-frame policy to use: `absent`, or the dataset format's official rule
    (`DEFAULT_ABSENT`) when None; a ValueError for anything else."""
    if absent is None:
        if fmt not in DEFAULT_ABSENT:
            raise ValueError(f'unknown dataset format {fmt!r}; expected one of {sorted(DEFAULT_ABSENT)}')
        return DEFAULT_ABSENT[fmt]
    if absent not in ABSENT_POLICIES:
        raise ValueError(f'absent={absent!r}; expected one of {ABSENT_POLICIES}')
    return absent


def _as_boxes(boxes, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f'{what}: expected (N, 4) boxes x,y,w,h, got shape {arr.shape}')
    return arr


def iou(a, b) -> np.ndarray:
    """Per-row IoU of (N, 4) x,y,w,h boxes in [0, 1]; NaN where a union is not positive/defined."""
    a, b = _as_boxes(a, 'iou a'), _as_boxes(b, 'iou b')
    left = np.maximum(a[:, 0], b[:, 0])
    right = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    top = np.maximum(a[:, 1], b[:, 1])
    bottom = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.maximum(0.0, right - left) * np.maximum(0.0, bottom - top)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(divide='ignore', invalid='ignore'):
        out = np.where(union > 0, inter / union, np.nan)
    return np.clip(out, 0.0, 1.0)


def centres(boxes) -> np.ndarray:
    """(N, 2) centres x + (w - 1) / 2, y + (h - 1) / 2 (the toolkit's pixel convention)."""
    b = _as_boxes(boxes, 'centres')
    return np.stack([b[:, 0] + (b[:, 2] - 1) / 2, b[:, 1] + (b[:, 3] - 1) / 2], axis=1)


def valid_gt(gt) -> np.ndarray:
    """Frames whose ground truth is a real box: finite and w, h > 0."""
    g = _as_boxes(gt, 'ground truth')
    return np.all(np.isfinite(g), axis=1) & (g[:, 2] > 0) & (g[:, 3] > 0)


def _scored_frames(gt, pred, visible, absent):
    gt, pred = _as_boxes(gt, 'ground truth'), _as_boxes(pred, 'prediction')
    if len(gt) != len(pred):
        raise ValueError(f'ground truth has {len(gt)} frames but the prediction has {len(pred)}')
    if absent not in ABSENT_POLICIES:
        raise ValueError(f'absent={absent!r}; expected one of {ABSENT_POLICIES}')
    scored = valid_gt(gt)
    denominator = len(gt)
    if visible is not None:
        visible = np.asarray(visible, dtype=bool)
        if visible.shape != (len(gt),):
            raise ValueError(f'visible flags have shape {visible.shape}, expected ({len(gt)},)')
        scored &= visible
        if absent == 'exclude':
            denominator = int(visible.sum())
    return gt, pred, scored, denominator


def _curve(hits_at, values: np.ndarray, thresholds, denominator: int) -> np.ndarray:
    if denominator == 0:
        return np.full(len(thresholds), np.nan)
    return np.array([np.count_nonzero(hits_at(values, t)) for t in thresholds]) / float(denominator)


def success_curve(gt, pred, visible=None, absent: str = 'exclude') -> np.ndarray:
    """Success rate (IoU > t) at SUCCESS_THRESHOLDS; NaN curve if no frame counts."""
    gt, pred, scored, den = _scored_frames(gt, pred, visible, absent)
    overlaps = np.full(len(gt), -1.0)
    overlaps[scored] = iou(gt[scored], pred[scored])
    overlaps = np.nan_to_num(overlaps, nan=-1.0)
    return _curve(np.greater, overlaps, SUCCESS_THRESHOLDS, den)


def _distance_curve(gt, pred, visible, absent, normalised: bool) -> np.ndarray:
    gt, pred, scored, den = _scored_frames(gt, pred, visible, absent)
    dist = np.full(len(gt), np.inf)
    cg, cp = centres(gt[scored]), centres(pred[scored])
    if normalised:
        wh = gt[scored, 2:4]
        cg, cp = cg / wh, cp / wh
    d = np.sqrt(np.sum((cg - cp) ** 2, axis=1))
    dist[scored] = np.where(np.isfinite(d), d, np.inf)
    thresholds = NORM_PRECISION_THRESHOLDS if normalised else PRECISION_THRESHOLDS
    return _curve(np.less_equal, dist, thresholds, den)


def precision_curve(gt, pred, visible=None, absent: str = 'exclude') -> np.ndarray:
    """Fraction of frames with centre distance <= t px at PRECISION_THRESHOLDS."""
    return _distance_curve(gt, pred, visible, absent, normalised=False)


def norm_precision_curve(gt, pred, visible=None, absent: str = 'exclude') -> np.ndarray:
    """Fraction of frames with GT-size-normalised centre distance <= t at NORM_PRECISION_THRESHOLDS."""
    return _distance_curve(gt, pred, visible, absent, normalised=True)


def _at(curve, thresholds, value) -> float:
    return float(curve[int(np.argmin(np.abs(thresholds - value)))])


def summarise_curves(success, precision, norm_precision) -> dict:
    """Headline numbers from the three curves."""
    return {
        'auc': float(np.mean(success)),
        'precision': _at(precision, PRECISION_THRESHOLDS, PRECISION_AT),
        'norm_precision': _at(norm_precision, NORM_PRECISION_THRESHOLDS, NORM_PRECISION_AT),
    }


def evaluate_sequence(gt, pred, visible=None, absent: str = 'exclude') -> dict:
    """All OPE metrics of one sequence: curves (lists) plus auc / precision / norm_precision."""
    s = success_curve(gt, pred, visible, absent)
    p = precision_curve(gt, pred, visible, absent)
    n = norm_precision_curve(gt, pred, visible, absent)
    out = summarise_curves(s, p, n)
    out.update(success_curve=s.tolist(), precision_curve=p.tolist(),
               norm_precision_curve=n.tolist(), frames=int(len(np.asarray(gt))))
    return out


def evaluate_overall(per_sequence: dict) -> dict:
    """Mean over sequences of the per-sequence curves (sequences without scored frames skipped)."""
    usable = [m for m in per_sequence.values() if not np.isnan(m['auc'])]
    if not usable:
        nan = {k: float('nan') for k in ('auc', 'precision', 'norm_precision')}
        return dict(nan, sequences=0, success_curve=[], precision_curve=[], norm_precision_curve=[])
    curves = {k: np.mean([m[k] for m in usable], axis=0)
              for k in ('success_curve', 'precision_curve', 'norm_precision_curve')}
    out = summarise_curves(curves['success_curve'], curves['precision_curve'],
                           curves['norm_precision_curve'])
    out.update({k: v.tolist() for k, v in curves.items()}, sequences=len(usable))
    return out


def got10k_overlaps(gt, pred, resolution, cover=None) -> np.ndarray:
    """Per-frame IoUs as the GOT-10k toolkit computes them: frames 1.. (the first dropped), both
    boxes clipped to the image `resolution` (w, h), overlap / (union + eps), and only frames
    whose `cover` (0..8) is > 0 when given."""
    gt, pred = _as_boxes(gt, 'ground truth'), _as_boxes(pred, 'prediction')
    if len(gt) != len(pred):
        raise ValueError(f'ground truth has {len(gt)} frames but the prediction has {len(pred)}')
    width, height = (float(v) for v in resolution)
    a, b = _clip_to_image(gt[1:], width, height), _clip_to_image(pred[1:], width, height)
    left, top = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    right = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    bottom = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.maximum(right - left, 0) * np.maximum(bottom - top, 0)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    overlaps = np.clip(inter / (union + np.finfo(float).eps), 0.0, 1.0)
    if cover is not None:
        cover = np.asarray(cover)
        if cover.shape != (len(gt),):
            raise ValueError(f'cover labels have shape {cover.shape}, expected ({len(gt)},)')
        overlaps = overlaps[cover[1:] > 0]
    return overlaps


def _clip_to_image(boxes, width, height):
    out = boxes.copy()
    out[:, 0] = np.clip(boxes[:, 0], 0, width)
    out[:, 1] = np.clip(boxes[:, 1], 0, height)
    out[:, 2] = np.clip(boxes[:, 2], 0, width - out[:, 0])
    out[:, 3] = np.clip(boxes[:, 3], 0, height - out[:, 1])
    return out


def _ao_sr(overlaps) -> dict:
    overlaps = np.asarray(overlaps, dtype=np.float64)
    if not len(overlaps):
        return {'ao': float('nan'), 'sr50': float('nan'), 'sr75': float('nan'), 'frames': 0}
    out = {'ao': float(np.mean(overlaps))}
    out.update({k: float(np.mean(overlaps > t)) for k, t in GOT10K_SR.items()})
    out['frames'] = int(len(overlaps))
    return out


def got10k_summary(overlaps_by_sequence: dict) -> dict:
    """AO, SR0.50, SR0.75 per sequence and overall, the overall figures over the frames of all
    sequences pooled (not a mean of sequence means), as the GOT-10k toolkit reports them."""
    pooled = np.concatenate([np.asarray(v, np.float64) for v in overlaps_by_sequence.values()] or [np.zeros(0)])
    return {'overall': _ao_sr(pooled),
            'sequences': {name: _ao_sr(v) for name, v in overlaps_by_sequence.items()}}


def fps(results: dict) -> float | None:
    """Frames per second over all tracked frames (frame 0 = init included); None without times."""
    t = sum(float(np.sum(r['times'])) for r in results.values())
    n = sum(len(r['times']) for r in results.values())
    if n == 0:
        return None
    return n / t if t > 0 else float('inf')


def score_tracker(sequences, results: dict, fmt: str = 'otb', absent: str | None = None,
                  reports_speed: bool = True) -> dict:
    """Per-sequence and overall metrics of one tracker's results ({seq: {'boxes', 'times'}};
    'times' may be left out) on `sequences` of dataset format `fmt`; the one scorer of the
    one-pass experiment and of tuning.

    `absent`: see `absent_policy` (None: the format's rule).  GOT-10k adds the official AO /
    SR0.50 / SR0.75 (`got10k`).  Sequences without full ground truth (GOT-10k's test split) are
    left out of the scores (`sequences` counts those scored).  `fps` is None for a tracker whose
    speed means nothing (the static baseline) or without times.
    """
    absent = absent_policy(fmt, absent)
    per_seq, overlaps = {}, {}
    for seq in sequences:
        if not seq.has_full_gt:
            continue
        boxes = results[seq.name]['boxes']
        per_seq[seq.name] = evaluate_sequence(seq.groundtruth, boxes, seq.visible, absent)
        if fmt == 'got10k':
            overlaps[seq.name] = got10k_overlaps(seq.groundtruth, boxes, seq.frame_size(), seq.cover)
    timed = {k: r for k, r in results.items() if 'times' in r}
    out = {'overall': evaluate_overall(per_seq), 'sequences': per_seq,
           'fps': fps(timed) if reports_speed else None}
    if fmt == 'got10k':
        out['got10k'] = got10k_summary(overlaps)
    return out
