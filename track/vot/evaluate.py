"""Run trackers through VOT's supervised experiment, store the runs in vot-toolkit's layout and
score them (`tools/eval_vot.py` calls `evaluate_vot` and `score_stored`)."""
from __future__ import annotations

import math
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.fileio import atomic_write, write_json
from track.engine import EngineOptions, Job, run_batched
from track.protocol import run_sequential
from track.vot.analysis import DEFAULT_EAO_INTERVAL, analyse
from track.vot.protocol import SupervisedProtocol
from track.vot.results import read_runs, trajectory_path, write_trajectory
from track.vot.datasets import load_vot


def drive_sequential(tracker, jobs, finished, clock=time.perf_counter) -> None:
    """Run each (protocol, read_frame) job to its end, one after the other (PySOT's way), calling
    `finished(protocol)` after each; frames timed with `clock`."""
    for protocol, read_frame in jobs:
        finished(run_sequential(protocol, tracker, read_frame, clock))


def batched_driver(options: EngineOptions | None = None, clock=time.perf_counter):
    """A `drive` that runs all jobs through the batched engine (`track.engine.run_batched`): one
    network forward per step over every sequence's search crop, re-initialisations included;
    each frame is charged its share of the step (`clock`)."""
    def drive(tracker, jobs, finished) -> None:
        run_batched([Job(protocol, read_frame, source=protocol.name) for protocol, read_frame in jobs],
                    tracker, options, on_done=lambda job: finished(job.protocol), clock=clock)
    return drive


def _fps(times) -> float:
    done = [t for t in times if t is not None]
    return len(done) / sum(done) if done and sum(done) > 0 else math.nan


def _stored_run(results_root, name, seq):
    """The stored first run of `name` on `seq` if it is complete, else None."""
    path = trajectory_path(results_root, name, seq.name)
    if not path.is_file():
        return None
    try:
        runs = read_runs(results_root, name, seq.name)
    except ValueError:
        return None
    return runs[0] if runs and len(runs[0]) == len(seq) else None


class _Counting:
    """`read_frame` that advances the bar for each frame read (reads may come from engine threads;
    a speculative read of a frame the protocol then skips is corrected when the run finishes)."""

    def __init__(self, read_frame, bar):
        self.read_frame, self.bar, self.count = read_frame, bar, 0

    def __call__(self, i):
        img = self.read_frame(i)
        self.count += 1
        self.bar.update(1)
        return img


def evaluate_vot(trackers: dict, dataset_root, out_dir='results/vot', low: int = DEFAULT_EAO_INTERVAL[0],
                 high: int = DEFAULT_EAO_INTERVAL[1], eao: str = 'vot', skip_initialize: int = 5, restart: bool = False,
                 progress: bool = True, log=print, drive=None) -> dict:
    """Run every tracker once over every sequence (a run already stored under
    `out_dir/results/<tracker>/baseline/` is reused unless `restart`), score, write
    report.txt / report.json in `out_dir`; returns {'trackers': {name: scores}, 'table'}.

    `drive(tracker, jobs, finished)` runs the [(SupervisedProtocol, read_frame)] jobs (default:
    `batched_driver()`, all sequences through the batched engine; `drive_sequential` runs them one
    after the other); each run is stored as soon as `finished` is called with it."""
    drive = drive or batched_driver()
    sequences = load_vot(dataset_root)
    results_root = Path(out_dir) / 'results'
    scores = {}
    for name, tracker in trackers.items():
        runs, times, jobs, counters = {}, [], [], {}
        with tqdm(total=sum(len(s) for s in sequences), desc=f'vot {name}', unit='frame',
                  disable=not progress, dynamic_ncols=True) as bar:
            for seq in sequences:
                stored = None if restart else _stored_run(results_root, name, seq)
                if stored is not None:
                    runs[seq.name] = [stored]
                    bar.update(len(seq))
                else:
                    protocol = SupervisedProtocol(seq, skip_initialize)
                    counter = _Counting(seq.read_frame, bar)
                    counters[seq.name] = (counter, len(seq))
                    jobs.append((protocol, counter))
            if len(runs):
                log(f'{name}: reused {len(runs)} stored run(s) from {results_root / name} (--restart reruns them)')

            def finished(protocol):
                write_trajectory(trajectory_path(results_root, name, protocol.name), protocol.regions,
                                 protocol.times)
                runs[protocol.name] = [protocol.regions]
                times.extend(protocol.times)
                counter, frames = counters[protocol.name]
                bar.update(frames - counter.count)  # the frames it skipped (or read ahead for nothing)

            drive(tracker, jobs, finished)
        scores[name] = analyse(sequences, runs, low, high, eao, skip_initialize=skip_initialize)
        scores[name]['fps'] = _fps(times)
    return _report(scores, dataset_root, len(sequences), out_dir, log)


def score_stored(results_root, tracker_names, dataset_root, out_dir=None, low: int = DEFAULT_EAO_INTERVAL[0],
                 high: int = DEFAULT_EAO_INTERVAL[1], eao: str = 'vot', skip_initialize: int = 5, log=print) -> dict:
    """Score runs already stored in vot-toolkit's layout (ours, or a workspace's `results/`,
    every repetition found); images are not needed when the `sequence` files give the sizes."""
    sequences = load_vot(dataset_root, need_images=False)
    scores = {}
    for name in tracker_names:
        runs = {s.name: read_runs(results_root, name, s.name) for s in sequences}
        missing = [n for n, r in runs.items() if not r]
        if missing:
            raise FileNotFoundError(f'{Path(results_root) / name}: no runs for {len(missing)} of '
                                    f'{len(sequences)} sequences, first {missing[0]!r}')
        scores[name] = analyse(sequences, runs, low, high, eao, skip_initialize=skip_initialize)
        scores[name]['fps'] = math.nan
    return _report(scores, dataset_root, len(sequences), out_dir, log)


def format_vot_table(scores: dict) -> str:
    """Trackers side by side: EAO, accuracy, robustness (failures), PySOT's lost number and R, fps."""
    def f(v, spec='.3f'):
        return '  n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
    width = max([len('tracker')] + [len(n) for n in scores]) + 2
    head = f'{"tracker":<{width}}{"EAO":>8}{"A":>8}{"R":>8}{"lost":>8}{"R/100":>8}{"fps":>8}'
    lines = [head, '-' * len(head)]
    for name, s in scores.items():
        lines.append(f'{name:<{width}}{f(s["eao"]):>8}{f(s["accuracy"]):>8}{f(s["robustness"]):>8}'
                     f'{f(s["lost"], ".1f"):>8}{f(s["robustness_per100"]):>8}{f(s["fps"], ".1f"):>8}')
    return '\n'.join(lines)


def _report(scores, dataset_root, n_seq, out_dir, log) -> dict:
    table = format_vot_table(scores)
    any_s = next(iter(scores.values()), None)
    head = f'VOT supervised evaluation on {dataset_root} ({n_seq} sequences)'
    if any_s is not None:
        low, high = any_s['eao_interval']
        head += f'; EAO {any_s["eao_variant"]} over [{low}, {high}]'
    text = (f'{head}\n{table}\n'
            'A: accuracy, R: failures per sequence (length-weighted, vot-toolkit), lost: total failures, '
            'R/100: failures per 100 frames (PySOT)\n')
    log(text)
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write(out_dir / 'report.txt', text)
        write_json(out_dir / 'report.json', {'dataset': str(dataset_root), 'trackers': scores})
    return {'trackers': scores, 'table': table}
