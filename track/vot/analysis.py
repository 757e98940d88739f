"""Accuracy, robustness and EAO of supervised (reset-based) runs, as vot-toolkit 0.7.4 computes
them (`vot/analysis/supervised.py`), with PySOT's EAO as an option.

Per run (one trajectory of one sequence): overlaps per frame with `regions.overlaps`;
**accuracy** = mean overlap over frames that are not failures, not skipped and not within the
`burnin` (10) frames starting at each initialisation (0 when no frame is left); **failures** =
number of failure frames.  Per sequence: means over its runs.  Overall: **accuracy** and
**robustness** (failures) are averages over sequences weighted by their length; `ar_robustness` =
exp(-30 * failures / mean length) is the toolkit's AR-plot value.

**EAO** (vot-toolkit): each run is cut into segments from an initialisation to the next failure
(failure frame excluded; failed) or to the end (not failed).  On an array as long as the longest
segment, row i holds segment i's overlaps, zero-filled; the curve at length L is the mean over
rows of the average overlap of frames 1..L (the initialisation frame itself is left out), where
rows of segments that failed count at every length and the others only up to their length.
EAO = mean of the curve over [low, high] (indices, inclusive; each challenge's in `EAO_INTERVALS`,
the default `DEFAULT_EAO_INTERVAL` = VOT2018's); NaN when the curve is shorter than `low`.

**EAO, PySOT's toolkit** (`eao_benchmark.py`; `eao='pysot'`): fragments start at frame 0 and at
each failure + 5 (a failure less than 5 frames before the end is ignored: its fragment runs to the
end); every fragment but the last of a run includes the failure and the skipped frames as zeros
and is zero-padded to the longest *sequence*; the last is NaN-padded (counts only up to its
length); the curve is built the same way and averaged over indices [low-1, high-1], with 1e-6
added per valid curve point in the denominator.  It scores a tracker that fails lower than
vot-toolkit when sequences are shorter than the interval.  Both use the overlaps above (PySOT
measures them on continuous polygons instead of pixels: a difference of the order of 1/perimeter).
"""
from __future__ import annotations

import math

import numpy as np

from track.vot.regions import FAILURE, INITIALIZATION, is_special, overlaps as region_overlaps

EAO_INTERVALS = {'vot2016': (108, 371), 'vot2017': (100, 356), 'vot2018': (100, 356), 'vot2019': (46, 291)}
DEFAULT_EAO_CHALLENGE = 'vot2018'
DEFAULT_EAO_INTERVAL = EAO_INTERVALS[DEFAULT_EAO_CHALLENGE]
EAO_VARIANTS = ('vot', 'pysot')


def _codes(regions) -> np.ndarray:
    """Special code per frame, -1 for a region."""
    return np.array([int(r) if is_special(r) else -1 for r in regions], np.int64)


def run_accuracy(codes: np.ndarray, overlaps: np.ndarray, burnin: int = 10) -> tuple:
    """(mean overlap, frames used) of one run; (0.0, 0) when no frame is left."""
    keep = codes == -1
    for i in np.flatnonzero(codes == INITIALIZATION):
        keep[i:i + burnin] = False
    return (float(overlaps[keep].mean()), int(keep.sum())) if keep.any() else (0.0, 0)


def eao_segments(codes: np.ndarray, overlaps: np.ndarray) -> list:
    """[(overlaps from an initialisation, failed?)] of one run, as vot-toolkit cuts them."""
    fails, inits = np.flatnonzero(codes == FAILURE), np.flatnonzero(codes == INITIALIZATION)
    if not len(fails):
        return [(overlaps, False)]
    segments = [(overlaps[i:f], True) for i, f in zip(inits, fails)]
    if len(inits) > len(fails):
        segments.append((overlaps[inits[-1]:], False))
    return segments


def eao_curve(segments) -> np.ndarray:
    """vot-toolkit's expected-average-overlap curve of [(overlaps, failed)] segments."""
    length = max(len(o) for o, _ in segments)
    values = np.zeros((len(segments), length))
    counted = np.zeros((len(segments), length))
    for row, (o, failed) in enumerate(segments):
        values[row, :len(o)] = o
        counted[row, :length if failed else len(o)] = 1
    running = values.copy()
    running[:, 1:] = np.cumsum(values[:, 1:], axis=1) / np.arange(1, length)
    return (running * counted).sum(0) / counted.sum(0)


def interval_mean(curve: np.ndarray, low: int, high: int) -> float:
    """Mean of curve[low..high] (what the curve has of it); NaN if it has none."""
    part = curve[low:high + 1]
    return float(part.mean()) if len(part) else math.nan


def pysot_eao(runs, low: int, high: int, skip: int = 5) -> float:
    """PySOT's EAO from [(codes, overlaps)] runs (see the module docstring)."""
    max_len = max(len(c) for c, _ in runs)
    rows, weights = [], []
    for codes, o in runs:
        n = len(codes)
        o = np.where(codes == -1, o, np.nan)  # PySOT's overlap of a code line is NaN
        fails = np.flatnonzero(codes == FAILURE)
        if not len(fails):
            row = np.full(max_len, np.nan)
            row[:n] = o
            rows.append(row)
            weights.append(1.0)
            continue
        points = [0] + [int(f) + skip for f in fails if f + skip <= n]
        for k, start in enumerate(points):
            last = k == len(points) - 1
            piece = np.nan_to_num(o[start:] if last else o[start:points[k + 1] + 1], nan=0.0)
            row = np.full(max_len, np.nan) if last else np.zeros(max_len)
            row[:len(piece)] = piece
            rows.append(row)
            # PySOT weighs by the share of 'all'-tagged frames in the fragment's index range
            weights.append((n - start) / (n - start + 1e-16) if last
                           else len(range(start, min(points[k + 1] + 1, n))) / (points[k + 1] - start + 1))
    frags, weights = np.array(rows), np.array(weights)
    curve = np.zeros(max_len, np.float32)
    curve[0] = 1
    for i in range(1, max_len):
        live = ~np.isnan(frags[:, i])
        if live.any():
            means = frags[live, 1:i + 1].sum(1) / i
            curve[i] = np.sum(means * weights[live]) / np.sum(weights[live])
    window = np.zeros(max_len)
    window[low - 1:high] = 1
    valid = ~np.isnan(curve)
    return float(np.sum(curve[valid] * window[valid]) / np.sum(window[valid] + 1e-6))


def analyse(sequences, runs: dict, low: int = DEFAULT_EAO_INTERVAL[0], high: int = DEFAULT_EAO_INTERVAL[1],
            eao: str = 'vot',
            burnin: int = 10, sensitivity: float = 30.0, skip_initialize: int = 5) -> dict:
    """Scores of one tracker: `runs` = {sequence name: [trajectory (list of regions), ...]}.

    Every sequence needs at least one run.  Returns accuracy, robustness (failures, as
    vot-toolkit), ar_robustness, lost (PySOT's lost number: failures summed over sequences),
    robustness_per100 (PySOT's robustness: 100 * lost / frames), eao (the chosen variant),
    eao_curve (vot-toolkit's), and per sequence accuracy / failures / length.
    """
    if eao not in EAO_VARIANTS:
        raise ValueError(f'unknown EAO variant {eao!r}; expected one of {EAO_VARIANTS}')
    if not 0 <= low <= high:
        raise ValueError(f'EAO interval [{low}, {high}] must have 0 <= low <= high')
    per_seq, segments, flat = {}, [], []
    for seq in sequences:
        seq_runs = runs.get(seq.name) or []
        if not seq_runs:
            raise ValueError(f'no results for sequence {seq.name!r}')
        accs, fails = [], []
        for rep, regions in enumerate(seq_runs, 1):
            if len(regions) != len(seq):
                raise ValueError(f'sequence {seq.name!r}, run {rep}: {len(regions)} regions for {len(seq)} frames')
            codes = _codes(regions)
            o = region_overlaps(regions, seq.groundtruth, seq.size)
            accs.append(run_accuracy(codes, o, burnin)[0])
            fails.append(int(np.sum(codes == FAILURE)))
            segments += eao_segments(codes, o)
            flat.append((codes, o))
        per_seq[seq.name] = {'accuracy': float(np.mean(accs)), 'failures': float(np.mean(fails)),
                             'length': len(seq), 'runs': len(seq_runs)}
    lengths = np.array([s['length'] for s in per_seq.values()], np.float64)
    accuracy = float(np.dot([s['accuracy'] for s in per_seq.values()], lengths) / lengths.sum())
    failures = float(np.dot([s['failures'] for s in per_seq.values()], lengths) / lengths.sum())
    lost = float(sum(s['failures'] for s in per_seq.values()))
    curve = eao_curve(segments)
    score = interval_mean(curve, low, high) if eao == 'vot' else pysot_eao(flat, low, high, skip_initialize)
    return {'accuracy': accuracy, 'robustness': failures,
            'ar_robustness': math.exp(-failures / lengths.mean() * sensitivity),
            'lost': lost, 'robustness_per100': 100.0 * lost / lengths.sum(),
            'eao': score, 'eao_variant': eao, 'eao_interval': [low, high], 'eao_curve': curve.tolist(),
            'frames': int(lengths.sum()), 'sequences': per_seq}
