"""One-pass evaluation of snapshots and baselines side by side: track, write results, score,
report (table + JSON) and optionally plot.  `tools/eval.py` and the demo call `evaluate`."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from model import build_model
from model.checkpoint import load_model_checkpoint
from track.tracker import StaticTracker, build_tracker

from pipeline.fileio import atomic_write, write_json

from track.engine import EngineOptions
from track.metrics import ABSENT_POLICIES, DEFAULT_ABSENT
from track.plots import plot_curves
from track.report import best_of, format_table, score_tracker
from track.runner import read_results, run_tracker, write_got10k_submission
from track.sequences import load_sequences, resolve_index

BASELINES = ('static', 'untrained')
UNFINISHED = '.unfinished.json'  # in results/<tracker>/ while its evaluation runs: what an interrupted one reuses
_EPOCH_RE = re.compile(r'checkpoint_e(\d+)\.pth$')


def epoch_checkpoints(run_dir) -> list:
    """`checkpoint_e<N>.pth` files of a run directory, sorted by epoch N."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f'run directory not found: {run_dir}')
    found = sorted((int(m.group(1)), p) for p in run_dir.rglob('checkpoint_e*.pth')
                   if (m := _EPOCH_RE.search(p.name)))
    if not found:
        raise FileNotFoundError(f'no checkpoint_e*.pth files under {run_dir}')
    return [p for _, p in found]


def snapshot_names(paths) -> list:
    """Short unique display names: the file stem, prefixed by its folder when stems clash."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    return [f'{p.parent.name}/{p.stem}' if stems.count(p.stem) > 1 else p.stem for p in paths]


def load_snapshot(cfg, path, device='cpu') -> torch.nn.Module:
    """A model built from `cfg` with a checkpoint strictly loaded (PySOT `{'state_dict': ...}`
    or bare state dict, `module.` prefixes allowed), in eval mode on `device`."""
    model = build_model(cfg)
    load_model_checkpoint(model, path)
    return model.to(device).eval()


def make_trackers(cfg, snapshots=(), baselines=(), device='cpu', seed: int = 0) -> dict:
    """{display name: tracker} for the given snapshots and baselines (static | untrained)."""
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f'unknown baseline(s) {unknown}; expected some of {BASELINES}')
    if (snapshots or 'untrained' in baselines) and cfg is None:
        raise ValueError('a config (--cfg) is needed to build the network')
    trackers = {}
    snapshots = list(dict.fromkeys(Path(p).resolve() for p in snapshots))  # same file once
    for name, path in zip(snapshot_names(snapshots), snapshots):
        trackers[name] = build_tracker(cfg, load_snapshot(cfg, path, device))
    if 'untrained' in baselines:
        torch.manual_seed(seed)  # same random init every run
        trackers['untrained'] = build_tracker(cfg, build_model(cfg).to(device).eval())
    if 'static' in baselines:
        trackers['static'] = StaticTracker()
    return trackers


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
    `track.runner.write_results`), read back as written: the figures are those of the files
    a toolkit would read.  `times`: {seq: per-frame seconds} for the fps column."""
    absent = DEFAULT_ABSENT[fmt] if absent is None else absent
    results = {seq.name: {'boxes': read_results(results_dir, name, fmt, seq.name),
                          'times': (times or {}).get(seq.name, [])} for seq in sequences}
    return score_tracker(sequences, results, absent, fmt, reports_speed)


def evaluate(trackers: dict, dataset_root, fmt: str = 'otb', out_dir='results/eval',
             plot: bool = False, absent: str | None = None, progress: bool = True,
             per_sequence: bool = True, index=None, log=print,
             engine: EngineOptions | None = EngineOptions()) -> dict:
    """Run every tracker over the dataset, write results/<tracker>/..., report.json, report.txt
    and (plot) success/precision PNGs into `out_dir`; returns {tracker: scores} plus 'best'.
    `index`: a PySOT-toolkit index JSON defining the sequences (auto-detected for OTB).
    `absent`: 'miss' | 'exclude' (None: `DEFAULT_ABSENT[fmt]`, the dataset's official rule).
    `engine`: batched engine options (None: one sequence at a time, frame by frame, as PySOT).
    GOT-10k results are also zipped per tracker as its evaluation server takes them."""
    absent = DEFAULT_ABSENT[fmt] if absent is None else absent
    if absent not in ABSENT_POLICIES:
        raise ValueError(f'absent={absent!r}; expected one of {ABSENT_POLICIES}')
    index = resolve_index(dataset_root, fmt, index)
    if index is not None:
        log(f'sequences from index {index}')
    sequences = load_sequences(dataset_root, fmt, index=index)
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
