"""Scoring tracked results and presenting several trackers side by side (text table + JSON)."""
from __future__ import annotations

import math

import cv2

from track.metrics import evaluate_overall, evaluate_sequence, got10k_overlaps, got10k_summary
from track.runner import fps


def image_size(path) -> tuple:
    """(width, height) of an image file."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read {path} to find the image size')
    return img.shape[1], img.shape[0]


def score_tracker(sequences, results: dict, absent: str = 'exclude', fmt: str = 'otb',
                  reports_speed: bool = True) -> dict:
    """Per-sequence and overall metrics of one tracker's results ({seq: {'boxes', 'times'}}).

    GOT-10k adds the official AO / SR0.50 / SR0.75 (`got10k`).  Sequences without full ground
    truth (GOT-10k test split) are left out of the scores.  `fps` is None for a tracker whose
    speed means nothing (the static baseline).
    """
    per_seq, overlaps = {}, {}
    for seq in sequences:
        if not seq.has_full_gt:
            continue
        boxes = results[seq.name]['boxes']
        per_seq[seq.name] = evaluate_sequence(seq.gt, boxes, seq.visible, absent)
        if fmt == 'got10k':
            overlaps[seq.name] = got10k_overlaps(seq.gt, boxes, seq.resolution or image_size(seq.frames[0]),
                                                 seq.cover)
    out = {'overall': evaluate_overall(per_seq), 'sequences': per_seq,
           'fps': fps(results) if reports_speed else None}
    if fmt == 'got10k':
        out['got10k'] = got10k_summary(overlaps)
    return out


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
        seqs = list(next(iter(scores.values()))['sequences'])
        sw = max([len('sequence')] + [len(q) for q in seqs]) + 2
        lines += ['', 'per-sequence AUC / Prec@20'.ljust(sw)]
        lines.append(f'{"sequence":<{sw}}' + ''.join(f'{n[:18]:>20}' for n in scores))
        for q in seqs:
            cells = ''.join(f'{_fmt(s["sequences"][q]["auc"]) + " / " + _fmt(s["sequences"][q]["precision"]):>20}'
                            for s in scores.values())
            lines.append(f'{q:<{sw}}' + cells)
    return '\n'.join(lines)


def best_of(scores: dict, key: str = 'auc') -> str | None:
    """Name of the tracker with the highest overall `key` (NaN ignored)."""
    valid = {n: s['overall'][key] for n, s in scores.items() if not math.isnan(s['overall'][key])}
    return max(valid, key=valid.get) if valid else None
