"""Success and precision plots (PNG, matplotlib Agg) for several trackers."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from track.metrics import NORM_PRECISION_THRESHOLDS, PRECISION_THRESHOLDS, SUCCESS_THRESHOLDS  # noqa: E402

PLOTS = {
    'success': ('success_curve', SUCCESS_THRESHOLDS, 'auc', 'Overlap threshold',
                'Success rate', 'Success plot of OPE', 'AUC'),
    'precision': ('precision_curve', PRECISION_THRESHOLDS, 'precision', 'Location error threshold (px)',
                  'Precision', 'Precision plot of OPE', 'P@20'),
    'norm_precision': ('norm_precision_curve', NORM_PRECISION_THRESHOLDS, 'norm_precision',
                       'Normalised location error threshold', 'Normalised precision',
                       'Normalised precision plot of OPE', 'NP@0.2'),
}


def plot_curves(scores: dict, out_dir, title: str = '') -> list:
    """Write success.png, precision.png and norm_precision.png for {tracker: score_tracker(...)};
    legends give each tracker's headline number, best first.  Returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, (curve_key, xs, value_key, xlabel, ylabel, name, short) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        order = sorted(scores, key=lambda n: -(scores[n]['overall'][value_key] or 0.0))
        for tracker in order:
            o = scores[tracker]['overall']
            if not o[curve_key]:
                continue
            ax.plot(xs, o[curve_key], linewidth=2, label=f'{tracker} [{short} {o[value_key]:.3f}]')
        ax.set(xlabel=xlabel, ylabel=ylabel, title=f'{name}{" - " + title if title else ""}',
               xlim=(xs[0], xs[-1]), ylim=(0, 1.02))
        ax.grid(True, alpha=0.4)
        ax.legend(loc='lower right' if kind == 'precision' or kind == 'norm_precision' else 'lower left',
                  fontsize=8)
        fig.tight_layout()
        path = out_dir / f'{kind}.png'
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
