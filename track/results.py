"""One-pass results in the public formats: where each file goes, writing and reading them, and
GOT-10k's submission zip (VOT's trajectory files: `track.vot.results`).

Result layouts under `<out>/<tracker>/`:
- otb / lasot: `<seq>.txt`, one `x,y,w,h` line per frame (PySOT's test.py format).
- got10k: `<seq>/<seq>_001.txt` (boxes, comma separated) and `<seq>/<seq>_time.txt` (seconds per
  frame), the GOT-10k toolkit's layout; `<out>/<tracker>.zip` holds the `<seq>/` folders at its
  top level, as the GOT-10k evaluation server takes a submission.
Frame 0 holds the init box.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from pipeline.fileio import atomic_write
from track.datasets import read_boxes


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


def write_got10k_submission(out_dir, tracker_name: str, seq_names) -> Path:
    """`<out_dir>/<tracker>.zip` with `<seq>/<seq>_001.txt` and `<seq>/<seq>_time.txt` per sequence
    at the top level (the layout the GOT-10k server evaluates)."""
    base = Path(out_dir) / tracker_name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name in seq_names:
            for file in (f'{name}_001.txt', f'{name}_time.txt'):
                archive.write(base / name / file, f'{name}/{file}')
    path = Path(out_dir) / f'{tracker_name}.zip'
    atomic_write(path, buffer.getvalue())
    return path


def read_results(out_dir, tracker_name: str, fmt: str, seq_name: str) -> np.ndarray:
    """(N, 4) boxes written by `write_results` (or any comma/space separated x,y,w,h file)."""
    return read_boxes(result_file(out_dir, tracker_name, fmt, seq_name))
