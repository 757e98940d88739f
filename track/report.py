"""Scoring tracked results and presenting several trackers side by side (text table + JSON)."""
from __future__ import annotations

import math

from track.metrics import evaluate_overall, evaluate_sequence

from track.runner import fps


def score_tracker(sequences, results: dict, absent: str = 'exclude') -> dict:
    """Per-sequence and overall metrics of one tracker's results ({seq: {'boxes', ...}}).

    Sequences without full ground truth (GOT-10k test split) are left out of the scores.
    """
    per_seq = {}
    for seq in sequences:
        if not seq.has_full_gt:
            continue
        per_seq[seq.name] = evaluate_sequence(seq.gt, results[seq.name]['boxes'], seq.visible, absent)
    return {'overall': evaluate_overall(per_seq), 'sequences': per_seq, 'fps': fps(results)}


def _fmt(v) -> str:
    return '  n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3f}'


def format_table(scores: dict, per_sequence: bool = False) -> str:
    """Table of trackers (rows, in the given order): success AUC, precision@20px, norm. precision@0.2, fps."""
    width = max([len('tracker')] + [len(n) for n in scores]) + 2
    head = f'{"tracker":<{width}}{"AUC":>8}{"Prec@20":>9}{"NPrec@.2":>10}{"fps":>9}'
    lines = [head, '-' * len(head)]
    for name, s in scores.items():
        o = s['overall']
        lines.append(f'{name:<{width}}{_fmt(o["auc"]):>8}{_fmt(o["precision"]):>9}'
                     f'{_fmt(o["norm_precision"]):>10}{s["fps"]:>9.1f}')
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


