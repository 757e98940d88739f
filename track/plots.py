"""Success and precision plots and the tuning heatmap (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

import numpy as np  # noqa: E402

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


def curve_figure(scores: dict, kind: str, title: str = ''):
    """The matplotlib Figure of one OPE plot (`kind`: a key of PLOTS) for {tracker:
    score_tracker(...)}: one line per tracker with a curve, best first, its headline number in
    the legend."""
    curve_key, xs, value_key, xlabel, ylabel, name, short = PLOTS[kind]
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
    ax.legend(loc='lower left' if kind == 'success' else 'lower right', fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(scores: dict, out_dir, title: str = '') -> list:
    """Write success.png, precision.png and norm_precision.png (`curve_figure`); returns the
    written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in PLOTS:
        fig = curve_figure(scores, kind, title)
        path = out_dir / f'{kind}.png'
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def heatmap_figure(points, x_key: str, y_key: str, metric: str, title: str = ''):
    """The Figure of `metric` over two parameters from [(x, y, value)]: a grid of cells (the best
    value per cell when other parameters vary) when each axis has at most 12 distinct values,
    else a scatter coloured by value (random search)."""
    xs, ys = sorted({p[0] for p in points}), sorted({p[1] for p in points})
    fig, ax = plt.subplots(figsize=(6.5, 5))
    if len(xs) <= 12 and len(ys) <= 12:
        grid = np.full((len(ys), len(xs)), np.nan)
        for x, y, v in points:
            i, j = ys.index(y), xs.index(x)
            if np.isnan(grid[i, j]) or v > grid[i, j]:
                grid[i, j] = v
        image = ax.imshow(grid, origin='lower', cmap='viridis', aspect='auto')
        ax.set_xticks(range(len(xs)), [f'{x:g}' for x in xs])
        ax.set_yticks(range(len(ys)), [f'{y:g}' for y in ys])
        for i in range(len(ys)):
            for j in range(len(xs)):
                if not np.isnan(grid[i, j]):
                    bright = image.norm(grid[i, j]) > 0.6  # dark text on the light end of viridis
                    ax.text(j, i, f'{grid[i, j]:.3f}', ha='center', va='center', fontsize=8,
                            color='k' if bright else 'w')
    else:
        image = ax.scatter([p[0] for p in points], [p[1] for p in points], c=[p[2] for p in points],
                           cmap='viridis', s=40)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set(xlabel=x_key, ylabel=y_key, title=title or f'{metric} over {x_key} x {y_key}')
    fig.tight_layout()
    return fig


def plot_heatmap(points, x_key: str, y_key: str, metric: str, path, title: str = '') -> Path:
    """Write `heatmap_figure` as a PNG at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = heatmap_figure(points, x_key, y_key, metric, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
