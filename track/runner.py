"""Run a tracker over sequences (one-pass evaluation) and read/write results in public formats.

Result layouts under `<out>/<tracker>/`:
- otb / lasot: `<seq>.txt`, one `x,y,w,h` line per frame (PySOT's test.py format).
- got10k: `<seq>/<seq>_001.txt` (boxes, comma separated) and `<seq>/<seq>_time.txt` (seconds per
  frame), the GOT-10k toolkit's layout; `<out>/<tracker>.zip` holds the `<seq>/` folders at its
  top level, as the GOT-10k evaluation server takes a submission.
Frame 0 reports the init box.  A frame that cannot be read is skipped (the previous box is
repeated, the tracker is not called) and counted.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.fileio import atomic_write
from track.engine import EngineOptions, Job, run_batched
from track.protocol import OnePassProtocol, run_sequential


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
    from track.sequences import read_boxes
    return read_boxes(result_file(out_dir, tracker_name, fmt, seq_name))


def frame_reader(seq):
    """`read_frame(i)` for `seq`: BGR uint8 image i, None if it cannot be decoded."""
    return lambda i: cv2.imread(str(seq.frames[i]), cv2.IMREAD_COLOR)


def track_sequence(tracker, seq) -> dict:
    """Run `tracker` (init/track API) over `seq` one frame at a time, as PySOT does; returns
    boxes (N, 4), times (N,), skipped frames."""
    return run_sequential(OnePassProtocol(seq), tracker, frame_reader(seq)).result()


def run_tracker(tracker, sequences, name: str, out_dir=None, fmt: str = 'otb',
                progress: bool = True, engine: EngineOptions | None = EngineOptions()) -> dict:
    """Track every sequence with the batched engine (`engine`; None: one sequence at a time,
    frame by frame, as PySOT); write result files under `out_dir/name` as sequences finish.

    Returns {seq_name: {'boxes', 'times', 'skipped'}}; the bar shows frames per second.
    """
    def done(job):
        if out_dir is not None:
            res = job.protocol.result()
            write_results(out_dir, name, fmt, job.source, res['boxes'], res['times'])

    if engine is None:
        protocols = []
        with tqdm(total=sum(len(s) for s in sequences), desc=f'track {name}', unit='frame',
                  disable=not progress, dynamic_ncols=True) as bar:
            for seq in sequences:
                read = frame_reader(seq)
                job = Job(OnePassProtocol(seq), None, seq.name)
                run_sequential(job.protocol, tracker, lambda i: (bar.update(1), read(i))[1])
                done(job)
                protocols.append(job.protocol)
    else:
        jobs = [Job(OnePassProtocol(seq), frame_reader(seq), seq.name, frames=len(seq)) for seq in sequences]
        protocols = run_batched(jobs, tracker, engine, progress, f'track {name}', done)
    results = {seq.name: p.result() for seq, p in zip(sequences, protocols)}
    skipped = sum(r['skipped'] for r in results.values())
    if skipped:
        tqdm.write(f'{name}: {skipped} unreadable frame(s) skipped (previous box repeated)')
    return results


def fps(results: dict) -> float | None:
    """Frames per second over all tracked frames (frame 0 = init included); None without times."""
    t = sum(float(np.sum(r['times'])) for r in results.values())
    n = sum(len(r['times']) for r in results.values())
    if n == 0:
        return None
    return n / t if t > 0 else float('inf')
