"""Run a tracker over sequences (one-pass evaluation) and read/write results in public formats.

Result layouts under `<out>/<tracker>/`:
- otb / lasot: `<seq>.txt`, one `x,y,w,h` line per frame (PySOT's test.py format).
- got10k: `<seq>/<seq>_001.txt` (boxes, comma separated) and `<seq>/<seq>_time.txt` (seconds per
  frame), the GOT-10k toolkit's submission format.
Frame 0 reports the init box.  A frame that cannot be read is skipped (the previous box is
repeated, the tracker is not called) and counted.
"""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.fileio import atomic_write
from tqdm import tqdm


def result_file(out_dir, tracker_name: str, fmt: str, seq_name: str) -> Path:
    """Path of the box file of one sequence."""
    base = Path(out_dir) / tracker_name
    if fmt == 'got10k':
        return base / seq_name / f'{seq_name}_001.txt'
    return base / f'{seq_name}.txt'


def write_results(out_dir, tracker_name: str, fmt: str, seq_name: str, boxes, times=None) -> Path:
    """Write one sequence's boxes (and for got10k the per-frame times); returns the box file."""
    path = result_file(out_dir, tracker_name, fmt, seq_name)
    atomic_write(path, ''.join(','.join(f'{v:.4f}' for v in b) + '\n' for b in np.asarray(boxes)))
    if fmt == 'got10k':
        times = np.zeros(len(boxes)) if times is None else np.asarray(times)
        atomic_write(path.with_name(f'{seq_name}_time.txt'), ''.join(f'{t:.8f}\n' for t in times))
    return path


def read_results(out_dir, tracker_name: str, fmt: str, seq_name: str) -> np.ndarray:
    """(N, 4) boxes written by `write_results` (or any comma/space separated x,y,w,h file)."""
    from track.sequences import read_boxes
    return read_boxes(result_file(out_dir, tracker_name, fmt, seq_name))


def track_sequence(tracker, seq, bar=None) -> dict:
    """Run `tracker` (init/track API) over `seq`; returns boxes (N, 4), times (N,), skipped frames."""
    boxes = np.zeros((len(seq), 4))
    times = np.zeros(len(seq))
    skipped = 0
    for i, path in enumerate(seq.frames):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        start = time.perf_counter()
        if img is None:
            if i == 0:
                raise ValueError(f'cannot read the first frame of {seq.name!r}: {path}')
            skipped += 1
            boxes[i] = boxes[i - 1]
        elif i == 0:
            tracker.init(img, seq.init_box)
            boxes[0] = seq.init_box
        else:
            boxes[i] = tracker.track(img)['bbox']
        times[i] = time.perf_counter() - start
        if bar is not None:
            bar.update(1)
    return {'boxes': boxes, 'times': times, 'skipped': skipped}


def run_tracker(tracker, sequences, name: str, out_dir=None, fmt: str = 'otb',
                progress: bool = True) -> dict:
    """Track every sequence; write result files under `out_dir/name` if given.

    Returns {seq_name: {'boxes', 'times', 'skipped'}}; the bar shows frames per second.
    """
    results = {}
    total = sum(len(s) for s in sequences)
    with tqdm(total=total, desc=f'track {name}', unit='frame', disable=not progress,
              dynamic_ncols=True) as bar:
        for seq in sequences:
            res = track_sequence(tracker, seq, bar)
            results[seq.name] = res
            if out_dir is not None:
                write_results(out_dir, name, fmt, seq.name, res['boxes'], res['times'])
    skipped = sum(r['skipped'] for r in results.values())
    if skipped:
        tqdm.write(f'{name}: {skipped} unreadable frame(s) skipped (previous box repeated)')
    return results


def fps(results: dict) -> float:
    """Frames per second over all tracked frames (frame 0 = init included)."""
    t = sum(float(np.sum(r['times'])) for r in results.values())
    n = sum(len(r['times']) for r in results.values())
    return n / t if t > 0 else float('inf')
