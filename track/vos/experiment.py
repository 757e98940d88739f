"""The DAVIS semi-supervised experiment: track every object of every sequence, write the results
in DAVIS's layout, score them as the official evaluation does, report (`tools/eval_vos.py`).

Files under `out_dir`:
    <tracker>/<sequence>/<frame>.png            results (palette PNGs, pixel = object id)
    <tracker>/global_results-<subset>.csv       the official tool's two tables, its names,
    <tracker>/per-sequence_results-<subset>.csv columns and 3-decimal format
    report.txt, report.json                     every tracker: overall, per sequence, per object
                                                (with the per-frame J and F)
Stored results (`score_stored`) are read from `<results>/<tracker>/<sequence>/`.
"""
from __future__ import annotations

import csv
import io
import math
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.fileio import atomic_write, write_json
from track.engine import EngineOptions, Job, run_batched
from track.protocol import run_sequential
from track.vos.datasets import first_frame_objects, parse_split
from track.vos.metrics import BOUND_TH, sequence_measures, statistics
from track.vos.protocol import VOSProtocol
from track.vos.results import MaskMerger, is_complete, read_result_frames, sequence_dir

__all__ = ['MEASURES', 'mask_threshold', 'gives_masks', 'track_vos', 'score_sequence', 'score_results', 'summarise',
           'format_table', 'evaluate_vos', 'score_stored']

MEASURES = ('J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay')
BOX_SUFFIX = '-box'


def mask_threshold(tracker) -> float:
    """The probability above which a pixel belongs to an object: the tracker's
    TRACK.MASK_THERSHOLD, 0.5 for a tracker without a config (box masks are 0 or 1)."""
    cfg = getattr(tracker, 'cfg', None)
    return float(cfg.TRACK.MASK_THERSHOLD) if cfg is not None else 0.5


def gives_masks(tracker) -> bool:
    """True for a tracker whose results carry a mask (SiamMask)."""
    return bool(getattr(getattr(tracker, 'model', None), 'has_mask', False))


def track_vos(tracker, sequences, name: str, out_dir, box_masks: bool = False,
              engine: EngineOptions | None = EngineOptions(), restart: bool = False,
              progress: bool = True) -> dict:
    """Track every object of `sequences` with `tracker` and write `<out_dir>/<name>/<seq>/`;
    with `box_masks` a mask tracker's run also writes its boxes as masks to `<name>-box` (a
    tracker without masks is scored on its boxes anyway).  Sequences whose results are all
    stored are kept unless `restart`.  `engine`: the batched engine's
    options (every object of every sequence a job); None: one object at a time, frame by frame.
    Returns {seq: {'objects', 'skipped', 'seconds', 'frames'} or {'stored': True}}."""
    threshold = mask_threshold(tracker)
    names = [(name, 'mask')] + ([(name + BOX_SUFFIX, 'box')] if box_masks and gives_masks(tracker) else [])
    jobs, info = [], {}
    for seq in sequences:
        folders = [sequence_dir(out_dir, n, seq.name) for n, _ in names]
        if not restart and all(is_complete(f, seq.frame_ids) for f in folders):
            info[seq.name] = {'stored': True}
            continue
        first = seq.labels(0)
        objects = first_frame_objects(first)
        mergers = [MaskMerger(f, seq.frame_ids, first, objects, threshold) for f in folders]
        for index, k in enumerate(objects):
            outputs = [(kind, partial(m.add, index)) for (_, kind), m in zip(names, mergers)]
            protocol = VOSProtocol(f'{seq.name}_{k}', len(seq), first == k, outputs)
            jobs.append(Job(protocol, seq.read_frame, source=seq.name, frames=len(seq)))
        info[seq.name] = {'objects': len(objects), 'mergers': mergers}
    desc = f'track {name}'
    if not jobs:
        pass  # everything stored: no network copies made
    elif engine is None:
        with tqdm(total=sum(j.frames for j in jobs), desc=desc, unit='frame', disable=not progress,
                  dynamic_ncols=True) as bar:
            for job in jobs:
                run_sequential(job.protocol, tracker, lambda i, read=job.read_frame: (bar.update(1), read(i))[1])
    else:
        run_batched(jobs, tracker, engine, progress, desc)
    for job in jobs:
        entry = info[job.source]
        entry['skipped'] = entry.get('skipped', 0) + job.protocol.skipped
        entry['seconds'] = entry.get('seconds', 0.0) + float(job.protocol.times.sum())
        entry['frames'] = entry.get('frames', 0) + job.protocol.n_frames
    for seq_name, entry in info.items():
        mergers = entry.pop('mergers', [])
        unfinished = [str(m.folder) for m in mergers if not m.done]
        if unfinished:
            raise RuntimeError(f'{seq_name}: results not complete in {unfinished}')
    return info


def score_sequence(seq, folder, bound_th: float = BOUND_TH) -> dict:
    """{object name: {'J': per-frame, 'F': per-frame}} of one sequence's results in `folder`
    (`<seq>_<id>` for ids 1..N), on the frames the official evaluation scores (not the first,
    not the last)."""
    scored = list(range(1, len(seq.annotations) - 1))
    n_objects = seq.object_count()
    if not scored:  # fewer than three frames: nothing is scored (the figures are NaN)
        return {f'{seq.name}_{k + 1}': {'J': [], 'F': []} for k in range(n_objects)}
    gt = np.stack([seq.labels(i) for i in scored])
    result = read_result_frames(folder, [seq.mask_ids[i] for i in scored], gt.shape[1:])
    j, f = sequence_measures(gt, result, n_objects, bound_th, source=str(folder))
    return {f'{seq.name}_{k + 1}': {'J': j[k].tolist(), 'F': f[k].tolist()} for k in range(n_objects)}


def _object_figures(per_frame: dict) -> dict:
    jm, jr, jd = statistics(per_frame['J'])
    fm, fr, fd = statistics(per_frame['F'])
    return {'J&F-Mean': (jm + fm) / 2, 'J-Mean': jm, 'J-Recall': jr, 'J-Decay': jd,
            'F-Mean': fm, 'F-Recall': fr, 'F-Decay': fd}


def summarise(objects: dict, sequence_of: dict) -> dict:
    """Figures from {object: {'J', 'F'}}: per object, per sequence (the mean of its objects)
    and overall (the mean over all objects, as the official tool; J&F-Mean = (J-Mean + F-Mean)/2)."""
    per_object = {name: _object_figures(v) for name, v in objects.items()}

    def mean(rows):
        rows = list(rows)
        if not rows:
            return {m: math.nan for m in MEASURES}
        out = {m: float(np.mean([r[m] for r in rows])) for m in MEASURES if m != 'J&F-Mean'}
        out['J&F-Mean'] = (out['J-Mean'] + out['F-Mean']) / 2
        return {m: out[m] for m in MEASURES}

    sequences = {}
    for name, seq in sequence_of.items():
        sequences.setdefault(seq, []).append(per_object[name])
    return {'overall': mean(per_object.values()), 'sequences': {s: mean(r) for s, r in sequences.items()},
            'objects': {name: {**per_object[name], 'J': objects[name]['J'], 'F': objects[name]['F']}
                        for name in objects}}


def score_results(sequences, results_dir, name: str, progress: bool = True) -> dict:
    """Score tracker `name`'s results under `results_dir` on the sequences with full ground truth."""
    objects, sequence_of = {}, {}
    scorable = [s for s in sequences if s.has_full_gt]
    for seq in tqdm(scorable, desc=f'score {name}', unit='seq', disable=not progress, dynamic_ncols=True):
        for obj, values in score_sequence(seq, sequence_dir(results_dir, name, seq.name)).items():
            objects[obj] = values
            sequence_of[obj] = seq.name
    scores = summarise(objects, sequence_of)
    scores['unscored'] = [s.name for s in sequences if not s.has_full_gt]
    return scores


def _csv(rows) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator='\n').writerows(rows)
    return out.getvalue()


def write_official_tables(folder, subset: str, scores: dict) -> list:
    """The official tool's `global_results-<subset>.csv` (the seven measures) and
    `per-sequence_results-<subset>.csv` (J-Mean and F-Mean of each `<seq>_<id>` object)."""
    folder = Path(folder)
    g = scores['overall']
    glob = folder / f'global_results-{subset}.csv'
    atomic_write(glob, _csv([MEASURES, [f'{g[m]:.3f}' for m in MEASURES]]))
    per = folder / f'per-sequence_results-{subset}.csv'
    atomic_write(per, _csv([('Sequence', 'J-Mean', 'F-Mean')] +
                           [(n, f'{o["J-Mean"]:.3f}', f'{o["F-Mean"]:.3f}') for n, o in scores['objects'].items()]))
    return [glob, per]


def format_table(scores: dict, per_sequence: bool = True) -> str:
    """Trackers x the seven measures; then J&F-Mean per sequence and tracker."""
    names = list(scores)
    width = max([len(n) for n in names] + [7])
    lines = [f'{"tracker":<{width}} ' + ' '.join(f'{m:>8}' for m in MEASURES)]
    for n in names:
        lines.append(f'{n:<{width}} ' + ' '.join(f'{scores[n]["overall"][m]:8.3f}' for m in MEASURES))
    seqs = list(dict.fromkeys(s for n in names for s in scores[n]['sequences']))
    if per_sequence and seqs:
        sw = max(len(s) for s in seqs + ['sequence'])
        cw = max(8, width)
        lines += ['', 'J&F-Mean per sequence', f'{"sequence":<{sw}} ' + ' '.join(f'{n:>{cw}}' for n in names)]
        for s in seqs:
            cells = [scores[n]['sequences'].get(s, {}).get('J&F-Mean', math.nan) for n in names]
            lines.append(f'{s:<{sw}} ' + ' '.join(f'{c:{cw}.3f}' for c in cells))
    return '\n'.join(lines)


def _report(scores: dict, sequences, out_dir, dataset_root, split: str, log, extra: dict) -> dict:
    _, subset = parse_split(split)
    out_dir = Path(out_dir)
    for name, s in scores.items():
        write_official_tables(out_dir / name, subset, s)
    table = format_table(scores)
    unscored = sorted({u for s in scores.values() for u in s['unscored']})
    n_objects = max((len(s['objects']) for s in scores.values()), default=0)
    text = (f'DAVIS {split} semi-supervised evaluation on {dataset_root} ({len(sequences)} sequences, '
            f'{n_objects} objects)\n{table}\n')
    if unscored:
        text += f'not scored (no ground truth after the first frame): {", ".join(unscored)}\n'
    log(text)
    atomic_write(out_dir / 'report.txt', text)
    write_json(out_dir / 'report.json', {'dataset': str(dataset_root), 'split': split, 'bound_th': BOUND_TH,
                                         **extra, 'trackers': scores})
    return {'trackers': scores, 'table': table}


def evaluate_vos(trackers: dict, sequences, dataset_root, split: str, out_dir='results/vos',
                 box_masks: bool = False, engine: EngineOptions | None = EngineOptions(),
                 restart: bool = False, progress: bool = True, log=print) -> dict:
    """Run every tracker ({name: tracker}) over `sequences`, write results and reports into
    `out_dir`; `box_masks` adds each mask tracker's boxes as masks (`<name>-box`) from the same run.
    Returns {'trackers': {name: scores}, 'table'}."""
    scores, runs = {}, {}
    for name, tracker in trackers.items():
        runs[name] = track_vos(tracker, sequences, name, out_dir, box_masks, engine, restart, progress)
        stored = sum('stored' in r for r in runs[name].values())
        if stored:
            log(f'{name}: {stored} sequence(s) kept from an earlier run (--restart to rerun them)')
        skipped = sum(r.get('skipped', 0) for r in runs[name].values())
        if skipped:
            log(f'{name}: {skipped} unreadable object-frame(s): the previous mask repeated')
        for result_name in [name] + ([name + BOX_SUFFIX] if box_masks and gives_masks(tracker) else []):
            scores[result_name] = score_results(sequences, out_dir, result_name, progress)
            scores[result_name]['threshold'] = mask_threshold(tracker)
            scores[result_name]['skipped'] = skipped
            seconds = sum(r.get('seconds', 0.0) for r in runs[name].values())
            frames = sum(r.get('frames', 0) for r in runs[name].values())
            scores[result_name]['fps'] = frames / seconds if seconds > 0 and getattr(
                tracker, 'reports_speed', True) else None
    return _report(scores, sequences, out_dir, dataset_root, split, log, {})


def score_stored(results_root, names, sequences, dataset_root, split: str, out_dir='results/vos',
                 progress: bool = True, log=print) -> dict:
    """Score the results stored as `<results_root>/<name>/<sequence>/<frame>.png` (any method's)."""
    scores = {}
    for name in names:
        folder = Path(results_root) / name
        if not folder.is_dir():
            raise FileNotFoundError(f'no results for {name!r}: {folder} not found')
        scores[name] = score_results(sequences, results_root, name, progress)
    return _report(scores, sequences, out_dir, dataset_root, split, log, {'results': str(results_root)})
