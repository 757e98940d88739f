"""One-pass evaluation (OPE: OTB, GOT-10k, LaSOT) of trackers side by side: track every
sequence (batched engine or PySOT's one at a time), write the result files, score them as
written, report (table + JSON) and optionally plot.  `tools/eval.py` and the demo call `evaluate`."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.fileio import atomic_write, write_json
from track.datasets import load_dataset
from track.engine import EngineOptions, Job, run_batched
from track.metrics import absent_policy, score_tracker
from track.plots import plot_curves
from track.protocol import OnePassProtocol, run_sequential
from track.results import read_results, write_got10k_submission, write_results

UNFINISHED = '.unfinished.json'  # in results/<tracker>/ while its evaluation runs: what an interrupted one reuses


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
                read = seq.read_frame
                job = Job(OnePassProtocol(seq), None, seq.name)
                run_sequential(job.protocol, tracker, lambda i: (bar.update(1), read(i))[1])
                done(job)
                protocols.append(job.protocol)
    else:
        jobs = [Job(OnePassProtocol(seq), seq.read_frame, seq.name, frames=len(seq)) for seq in sequences]
        protocols = run_batched(jobs, tracker, engine, progress, f'track {name}', done)
    results = {seq.name: p.result() for seq, p in zip(sequences, protocols)}
    skipped = sum(r['skipped'] for r in results.values())
    if skipped:
        tqdm.write(f'{name}: {skipped} unreadable frame(s) skipped (previous box repeated)')
    return results


def tracker_key(tracker, dataset_root, fmt: str) -> str:
    """What makes two runs of a tracker give the same result files: its kind, config, weights and
    the dataset (a digest)."""
    h = hashlib.sha256(json.dumps([type(tracker).__name__, str(Path(dataset_root).resolve()), fmt]).encode())
    cfg = getattr(tracker, 'cfg', None)
    if cfg is not None:
        h.update(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    model = getattr(tracker, 'model', None)
    if model is not None:
        for k, v in model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def finished_before(results_dir, name: str, fmt: str, sequences, key: str) -> list:
    """Sequences an interrupted evaluation of the same tracker (same `key`) wrote completely."""
    try:
        marker = json.loads((Path(results_dir) / name / UNFINISHED).read_text())
    except (OSError, ValueError):
        return []
    if marker.get('key') != key:
        return []
    done = []
    for seq in sequences:
        try:
            if len(read_results(results_dir, name, fmt, seq.name)) == len(seq):
                done.append(seq)
        except (OSError, ValueError):
            continue
    return done


def score_results(sequences, results_dir, name: str, fmt: str, absent: str | None = None,
                  times=None, reports_speed: bool = True) -> dict:
    """Scores of the result files of tracker `name` under `results_dir` (the layout of
    `track.results.write_results`), read back as written: the figures are those of the files
    a toolkit would read.  `times`: {seq: per-frame seconds} for the fps column."""
    results = {seq.name: {'boxes': read_results(results_dir, name, fmt, seq.name),
                          'times': (times or {}).get(seq.name, [])} for seq in sequences}
    return score_tracker(sequences, results, fmt, absent, reports_speed)


def evaluate(trackers: dict, dataset_root, fmt: str = 'otb', out_dir='results/eval',
             plot: bool = False, absent: str | None = None, progress: bool = True,
             per_sequence: bool = True, index=None, log=print,
             engine: EngineOptions | None = EngineOptions()) -> dict:
    """Run every tracker over the dataset, write results/<tracker>/..., report.json, report.txt
    and (plot) success/precision PNGs into `out_dir`; returns {tracker: scores} plus 'best'.
    `index`: a PySOT-toolkit index JSON defining the sequences (auto-detected for OTB).
    `absent`: 'miss' | 'exclude' (None: `DEFAULT_ABSENT[fmt]`, the dataset's official rule).
    `engine`: batched engine options (None: one sequence at a time, frame by frame, as PySOT).
    GOT-10k results are also zipped per tracker as its evaluation server takes them. A tracker
    whose evaluation was interrupted (Ctrl-C) tracks only the sequences it had not written, when
    it is the same tracker (`tracker_key`) on the same dataset."""
    absent = absent_policy(fmt, absent)
    sequences, index = load_dataset(dataset_root, fmt, index)
    if index is not None:
        log(f'sequences from index {index}')
    out_dir = Path(out_dir)
    results_dir = out_dir / 'results'
    scores = {}
    for name, tracker in trackers.items():
        key = tracker_key(tracker, dataset_root, fmt)
        reused = {s.name for s in finished_before(results_dir, name, fmt, sequences, key)}
        if reused:
            log(f'{name}: reusing {len(reused)} of {len(sequences)} sequences that an interrupted evaluation wrote to '
                f'{results_dir / name}')
        write_json(results_dir / name / UNFINISHED, {'key': key})
        todo = [s for s in sequences if s.name not in reused]
        results = run_tracker(tracker, todo, name, results_dir, fmt, progress, engine) if todo else {}
        scores[name] = score_results(sequences, results_dir, name, fmt, absent,
                                     {k: r['times'] for k, r in results.items()},
                                     getattr(tracker, 'reports_speed', True))
        if getattr(tracker, 'cfg', None) is not None:
            scores[name]['track'] = dict(tracker.cfg.TRACK)  # the settings it tracked with
        if fmt == 'got10k':
            log(f'wrote {write_got10k_submission(results_dir, name, [s.name for s in sequences])}')
        (results_dir / name / UNFINISHED).unlink()
    table = format_table(scores, per_sequence=per_sequence)
    best = best_of(scores)
    text = f'{fmt} one-pass evaluation on {dataset_root} ({len(sequences)} sequences)\n{table}\n'
    if best is not None:
        text += f'best AUC: {best} ({scores[best]["overall"]["auc"]:.3f})\n'
    log(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / 'report.txt', text)
    write_json(out_dir / 'report.json', {'dataset': str(dataset_root), 'format': fmt,
                                         'index': None if index is None else str(index),
                                         'absent': absent, 'best': best, 'trackers': scores})
    if plot:
        for path in plot_curves(scores, out_dir, title=Path(dataset_root).name):
            log(f'wrote {path}')
    return {'trackers': scores, 'best': best, 'table': table}


def _fmt(v) -> str:
    return '  n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3f}'


def _fps(v) -> str:
    return '–' if v is None else f'{v:.1f}'


def format_table(scores: dict, per_sequence: bool = False) -> str:
    """Table of trackers (rows, in the given order): success AUC, precision@20px, norm. precision@0.2,
    GOT-10k's AO / SR0.50 / SR0.75 when present, fps ('–' for a tracker that does no work)."""
    got = any('got10k' in s for s in scores.values())
    width = max([len('tracker')] + [len(n) for n in scores]) + 2
    head = f'{"tracker":<{width}}{"AUC":>8}{"Prec@20":>9}{"NPrec@.2":>10}'
    if got:
        head += f'{"AO":>8}{"SR.50":>8}{"SR.75":>8}'
    head += f'{"fps":>9}'
    lines = [head, '-' * len(head)]
    for name, s in scores.items():
        o = s['overall']
        row = f'{name:<{width}}{_fmt(o["auc"]):>8}{_fmt(o["precision"]):>9}{_fmt(o["norm_precision"]):>10}'
        if got:
            g = s.get('got10k', {}).get('overall', {})
            row += ''.join(f'{_fmt(g.get(k)):>8}' for k in ('ao', 'sr50', 'sr75'))
        lines.append(row + f'{_fps(s["fps"]):>9}')
    if per_sequence and scores:
        seqs = list(dict.fromkeys(q for s in scores.values() for q in s['sequences']))  # any tracker's
        sw = max([len('sequence')] + [len(q) for q in seqs]) + 2
        lines += ['', 'per-sequence AUC / Prec@20'.ljust(sw)]
        lines.append(f'{"sequence":<{sw}}' + ''.join(f'{n[:18]:>20}' for n in scores))
        for q in seqs:
            cells = ''.join(f'{_fmt(m.get("auc")) + " / " + _fmt(m.get("precision")):>20}'
                            for m in (s['sequences'].get(q, {}) for s in scores.values()))
            lines.append(f'{q:<{sw}}' + cells)
    return '\n'.join(lines)


def best_of(scores: dict, key: str = 'auc') -> str | None:
    """Name of the tracker with the highest overall `key` (NaN ignored)."""
    valid = {n: s['overall'][key] for n, s in scores.items() if not math.isnan(s['overall'][key])}
    return max(valid, key=valid.get) if valid else None
