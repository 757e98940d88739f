"""Hyper-parameter search over TRACK settings for one or many checkpoints, resumable.

Every (setting, sequence) pair of a checkpoint is one job of the batched engine: one forward
serves many settings and sequences (the template of a sequence is shared by its settings).
Each finished (checkpoint, setting, sequence) is stored at once as an atomic JSON file
`<out>/runs/<checkpoint key>/<setting id>/<sequence>.json` (boxes as written to result files),
so an interrupted search resumes where it stopped; figures are computed from the stored boxes
when the report is made.  The checkpoint key holds a hash of the file, the setting id a hash
of its values, and `<out>/search.json` the tuning set, format and base TRACK section, which a
resumed search must match.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np

from pipeline.fileio import atomic_write, write_json
from track.engine import EngineOptions, Job, run_batched
from track.metrics import score_tracker
from track.protocol import OnePassProtocol

METRICS = ('auc', 'precision', 'norm_precision', 'ao', 'sr50', 'sr75')
UNTUNABLE = ('TYPE', 'MASK_THERSHOLD', 'MASK_OUTPUT_SIZE')


def parse_space(specs, track) -> dict:
    """{KEY: [values] | (low, high)} from 'KEY=v1,v2,..' (a list) or 'KEY=low:high' (a range,
    for random sampling); KEY is a TRACK key (the 'TRACK.' prefix is optional), values take the
    type of the key in `track`."""
    space = {}
    for spec in specs:
        key, sep, values = spec.partition('=')
        key = key.strip().removeprefix('TRACK.')
        if not sep or not values.strip():
            raise ValueError(f'parameter {spec!r}: expected KEY=v1,v2,... or KEY=low:high')
        if key not in track:
            raise ValueError(f'parameter {spec!r}: TRACK has no key {key!r} (keys: {sorted(track)})')
        if key in UNTUNABLE or not isinstance(track[key], (int, float)) or isinstance(track[key], bool):
            raise ValueError(f'parameter {spec!r}: TRACK.{key} is not a number to tune')
        cast = int if isinstance(track[key], int) else float
        try:
            if ':' in values:
                low, high = (cast(v) for v in values.split(':'))
                if not low < high:
                    raise ValueError
                space[key] = (low, high)
            else:
                space[key] = [cast(v) for v in values.split(',') if v.strip()]
        except ValueError:
            raise ValueError(f'parameter {spec!r}: values must be {cast.__name__}s, as v1,v2 or low<high '
                             'as low:high') from None
    if not space:
        raise ValueError('no parameters to search: give --param KEY=v1,v2 (or KEY=low:high with --samples)')
    return space


def sample_settings(space: dict, samples: int = 0, seed: int = 0) -> list:
    """The grid (every combination; lists only) or `samples` random settings (a list: one of its
    values, a range: uniform, ints uniform over low..high), as [{KEY: value}], without repeats."""
    if samples <= 0:
        ranges = [k for k, v in space.items() if isinstance(v, tuple)]
        if ranges:
            raise ValueError(f'{ranges}: a range (low:high) needs random sampling (--samples N)')
        keys = list(space)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for _ in range(samples * 20):
        setting = {}
        for key, values in space.items():
            if isinstance(values, list):
                setting[key] = values[int(rng.integers(len(values)))]
            elif isinstance(values[0], int):
                setting[key] = int(rng.integers(values[0], values[1] + 1))
            else:
                setting[key] = round(float(rng.uniform(*values)), 6)
        sid = setting_id(setting)
        if sid not in seen:
            seen.add(sid)
            out.append(setting)
        if len(out) == samples:
            break
    return out


def setting_id(setting: dict) -> str:
    """Short stable id of a setting's values."""
    return 's' + hashlib.sha1(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:10]


def checkpoint_key(path) -> str:
    """`<stem>-<12 hex digits of the file's SHA-1>`: a retrained file is a new checkpoint."""
    digest = hashlib.sha1()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return f'{Path(path).stem}-{digest.hexdigest()[:12]}'


def overlapping_folders(a, b) -> bool:
    """True when folders `a` and `b` are the same or one holds the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


class Search:
    """Stored results of one search folder."""

    def __init__(self, out_dir, dataset, fmt, track):
        self.out = Path(out_dir)
        self.manifest = {'dataset': str(Path(dataset).resolve()), 'format': fmt, 'track': dict(track)}
        path = self.out / 'search.json'
        if path.is_file():
            old = json.loads(path.read_text())
            if {k: old.get(k) for k in self.manifest} != self.manifest:
                raise ValueError(f'{self.out} holds another search ({path}: tuning set {old.get("dataset")}, '
                                 f'format {old.get("format")}, its base TRACK settings); choose another --out')
        else:
            write_json(path, self.manifest)

    def result_path(self, ckpt: str, sid: str, seq: str) -> Path:
        return self.out / 'runs' / ckpt / sid / f'{seq}.json'

    def store(self, ckpt, sid, setting, seq, boxes) -> None:
        payload = {'setting': setting, 'sequence': seq,
                   'boxes': [[round(float(v), 4) for v in b] for b in boxes]}
        atomic_write(self.result_path(ckpt, sid, seq), json.dumps(payload))

    def load(self, ckpt, sid, seq):
        path = self.result_path(ckpt, sid, seq)
        if not path.is_file():
            return None
        try:
            return np.asarray(json.loads(path.read_text())['boxes'], dtype=np.float64)
        except (ValueError, KeyError) as err:
            raise ValueError(f'{path}: not a stored tuning result ({err}); delete it to recompute') from None


def track_settings(search: Search, tracker, ckpt: str, settings: list, variants: list, sequences,
                   engine: EngineOptions | None = None, progress: bool = True) -> dict:
    """Track every missing (setting, sequence) of checkpoint `ckpt` with `tracker` in one batched
    run (`variants[i]`: the TRACK section of `settings[i]`), storing each as it finishes.
    Returns {'computed': n, 'reused': m}."""
    jobs, meta = [], {}
    for seq in sequences:
        for setting, track in zip(settings, variants):
            sid = setting_id(setting)
            if search.result_path(ckpt, sid, seq.name).is_file():
                continue
            job = Job(OnePassProtocol(seq), seq.read_frame, seq.name, track, len(seq))
            meta[id(job)] = (sid, setting)
            jobs.append(job)

    def done(job):
        sid, setting = meta[id(job)]
        search.store(ckpt, sid, setting, job.source, job.protocol.boxes)

    if jobs:
        run_batched(jobs, tracker, engine or EngineOptions(), progress, f'tune {ckpt}', done)
    return {'computed': len(jobs), 'reused': len(settings) * len(sequences) - len(jobs)}


def scored_sequences(sequences, dataset) -> list:
    """The sequences with ground truth on every frame (the only ones a setting can be scored
    on; GOT-10k's test split has the first box only); a ValueError when there are none."""
    scored = [seq for seq in sequences if seq.has_full_gt]
    if not scored:
        raise ValueError(f'{dataset}: no sequence has ground truth beyond its first box (a test split?): '
                         'nothing to tune on')
    return scored


def score_setting(search: Search, ckpt, setting, sequences, fmt, absent=None) -> dict | None:
    """Overall figures of one (checkpoint, setting) from its stored boxes (`score_tracker`, the
    one-pass experiment's scorer); None if incomplete."""
    sid = setting_id(setting)
    results = {}
    for seq in sequences:
        if seq.has_full_gt:
            results[seq.name] = {'boxes': search.load(ckpt, sid, seq.name)}
            if results[seq.name]['boxes'] is None:
                return None
    scores = score_tracker(sequences, results, fmt, absent, reports_speed=False)
    out = {k: scores['overall'][k] for k in ('auc', 'precision', 'norm_precision')}
    if fmt == 'got10k':
        out.update({k: v for k, v in scores['got10k']['overall'].items() if k != 'frames'})
    return out


def rank(rows: list, metric: str) -> list:
    """Rows sorted best first by `metric` (NaN last)."""
    return sorted(rows, key=lambda r: -r[metric] if not math.isnan(r[metric]) else math.inf)


def format_ranking(rows: list, params: list, metric: str, top: int = 0) -> str:
    """Text table: rank, checkpoint, parameter values, figures."""
    figures = [m for m in METRICS if rows and m in rows[0]]
    cw = max([len('checkpoint')] + [len(r['checkpoint']) for r in rows]) + 2
    head = f'{"#":>4}  {"checkpoint":<{cw}}' + ''.join(f'{p:>18}' for p in params) \
        + ''.join(f'{("*" if m == metric else "") + m:>16}' for m in figures)
    lines = [head, '-' * len(head)]
    for i, r in enumerate(rows[:top] if top else rows, 1):
        lines.append(f'{i:>4}  {r["checkpoint"]:<{cw}}' + ''.join(f'{r["setting"][p]:>18g}' for p in params)
                     + ''.join(f'{r[m]:>16.4f}' for m in figures))
    return '\n'.join(lines)


def setting_config(cfg, setting: dict):
    """`cfg` with the setting's TRACK values (validated by the config's own `replace`)."""
    return cfg.replace([f'TRACK.{k}={v!r}' for k, v in setting.items()], source='tuning setting')


def write_report(search: Search, cfg, checkpoints: dict, settings: list, sequences, fmt: str,
                 metric: str, heatmap: tuple, sets: dict, counts: dict, top: int = 20) -> dict:
    """Rank every complete (checkpoint, setting), write report.json, report.txt, heatmap.png and
    the winner's config (winner.yaml, loadable by tools/eval.py --cfg) into the search folder.
    `checkpoints`: {key: path}; `sets`: tuning_set, report_set, tuned_on_report_set."""
    import yaml

    from track.plots import plot_heatmap

    rows, incomplete = [], []
    for key, path in checkpoints.items():
        for setting in settings:
            figures = score_setting(search, key, setting, sequences, fmt)
            entry = {'checkpoint': Path(path).stem, 'checkpoint_key': key, 'checkpoint_path': str(path),
                     'setting_id': setting_id(setting), 'setting': setting}
            if figures is None:
                incomplete.append(entry)
            else:
                rows.append({**entry, **figures})
    if rows and metric not in rows[0]:
        raise ValueError(f'metric {metric!r} is not reported for format {fmt!r} (have {sorted(rows[0])})')
    rows = rank(rows, metric)
    params = list(settings[0]) if settings else []
    warning = ('TUNED ON THE REPORT SET: figures reported on it with this setting are optimistic'
               if sets.get('tuned_on_report_set') else None)
    report = {**sets, 'warning': warning, 'format': fmt, 'metric': metric, 'sequences': len(sequences),
              'settings': len(settings), 'checkpoints': [str(p) for p in checkpoints.values()], **counts,
              'ranked': rows, 'incomplete': incomplete, 'winner': rows[0] if rows else None}
    out = search.out
    if rows:
        best = rows[0]
        winner_cfg = setting_config(cfg, best['setting'])
        header = [f'# tools/tune.py winner: {metric} {best[metric]:.4f} with checkpoint {best["checkpoint_path"]}',
                  f'# tuning set {sets["tuning_set"]}; report set {sets["report_set"]}']
        if warning:
            header.append(f'# {warning}')
        atomic_write(out / 'winner.yaml', '\n'.join(header) + '\n' + yaml.safe_dump(winner_cfg.to_dict(), sort_keys=False))
        report['winner_config'] = str(out / 'winner.yaml')
        x_key, y_key = heatmap
        points = [(r['setting'][x_key], r['setting'][y_key], r[metric]) for r in rows
                  if r['checkpoint_key'] == best['checkpoint_key']]
        report['heatmap'] = str(plot_heatmap(points, x_key, y_key, metric, out / 'heatmap.png',
                                             f'{metric} of {best["checkpoint"]} (best over other parameters)'))
    text = [f'tuning on {sets["tuning_set"]} ({fmt}, {len(sequences)} sequences), {len(settings)} settings x '
            f'{len(checkpoints)} checkpoint(s), ranked by {metric}; report set {sets["report_set"]}']
    if warning:
        text.append(f'WARNING: {warning}')
    text.append(format_ranking(rows, params, metric, top))
    if incomplete:
        text.append(f'{len(incomplete)} (checkpoint, setting) pair(s) incomplete: run again to finish them')
    if rows:
        text.append(f'winner: {rows[0]["checkpoint"]} {rows[0]["setting"]} -> {out / "winner.yaml"}')
    report['text'] = '\n'.join(text) + '\n'
    write_json(out / 'report.json', report)
    atomic_write(out / 'report.txt', report['text'])
    return report
