"""What the one-pass report shows: the scorer over a dataset (`metrics.score_tracker`), the text
table and best pick (`ope.format_table`, `ope.best_of`), and the plots (`track.plots`) checked
on the figure's data before saving and on the PNG read back."""
import math

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from track.datasets import Sequence
from track.metrics import (PRECISION_THRESHOLDS, SUCCESS_THRESHOLDS, evaluate_overall, evaluate_sequence,
                           score_tracker)
from track.ope import best_of, format_table
from track.plots import curve_figure, heatmap_figure, plot_curves, plot_heatmap


def moving_truth(n, step=4.0):
    return np.array([[10 + step * i, 20, 30, 20] for i in range(n)], np.float64)


@pytest.fixture(scope='module')
def dataset():
    """Two sequences with full ground truth and one with the first box only (a test split)."""
    gt_a, gt_b = moving_truth(10), moving_truth(8, step=-2.0) + [80, 0, 0, 0]
    seqs = [Sequence('a', [f'a{i}.jpg' for i in range(10)], gt_a),
            Sequence('b', [f'b{i}.jpg' for i in range(8)], gt_b),
            Sequence('test', [f't{i}.jpg' for i in range(5)], moving_truth(1))]
    static = {s.name: {'boxes': np.repeat(s.groundtruth[:1], len(s), axis=0), 'times': [0.5] * len(s)}
              for s in seqs}
    near = {s.name: {'boxes': np.vstack([s.groundtruth[:1], np.repeat(s.groundtruth[:1], len(s) - 1, axis=0)]),
                     'times': [0.1] * len(s)} for s in seqs}
    for s in seqs[:2]:
        near[s.name]['boxes'] = s.groundtruth + [1.5, -1, 0, 0]
    return seqs, {'near': near, 'static': static}


def test_score_tracker_scores_only_full_ground_truth_and_times_every_frame(dataset):
    seqs, results = dataset
    scores = score_tracker(seqs, results['static'], 'otb')
    assert sorted(scores['sequences']) == ['a', 'b'] and scores['overall']['sequences'] == 2
    per = {s.name: evaluate_sequence(s.groundtruth, results['static'][s.name]['boxes']) for s in seqs[:2]}
    assert scores['sequences']['a'] == per['a']
    assert scores['overall']['auc'] == pytest.approx(evaluate_overall(per)['auc'])
    assert scores['fps'] == pytest.approx(2.0)  # 23 frames in 11.5 s, the unscored sequence included
    assert score_tracker(seqs, results['static'], 'otb', reports_speed=False)['fps'] is None
    with pytest.raises(ValueError, match="absent='sometimes'"):
        score_tracker(seqs, results['static'], 'otb', 'sometimes')


@pytest.fixture(scope='module')
def scores(dataset):
    seqs, results = dataset
    out = {name: score_tracker(seqs, r, 'otb') for name, r in results.items()}
    out['empty'] = score_tracker(seqs[2:], {'test': results['static']['test']}, 'otb')  # nothing scored
    return out


def test_table_rows_columns_and_the_best_pick(scores):
    table = format_table({'static': scores['static'], 'near': scores['near'], 'empty': scores['empty']},
                         per_sequence=True)
    lines = table.splitlines()
    assert lines[0].split() == ['tracker', 'AUC', 'Prec@20', 'NPrec@.2', 'fps']
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:5]}
    for name in ('static', 'near'):
        o = scores[name]['overall']
        assert rows[name] == [f'{o["auc"]:.3f}', f'{o["precision"]:.3f}', f'{o["norm_precision"]:.3f}',
                              f'{scores[name]["fps"]:.1f}']
    assert rows['empty'] == ['n/a'] * 3 + ['2.0']
    per_seq = lines[lines.index(next(x for x in lines if x.startswith('sequence'))) + 1:]
    a = scores['near']['sequences']['a']
    assert per_seq[0].split()[0] == 'a' and f'{a["auc"]:.3f} / {a["precision"]:.3f}' in per_seq[0]
    assert per_seq[0].endswith('n/a /   n/a')  # 'empty' scored no sequence
    assert best_of(scores) == 'near' and scores['near']['overall']['auc'] > scores['static']['overall']['auc']
    assert best_of({'empty': scores['empty']}) is None  # NaN is never the best
    # GOT-10k columns, and '–' for a tracker whose speed means nothing
    got = dict(scores['static'], fps=None, got10k={'overall': {'ao': 0.25, 'sr50': 0.5, 'sr75': math.nan}})
    lines = format_table({'static': got}).splitlines()
    assert lines[0].split() == ['tracker', 'AUC', 'Prec@20', 'NPrec@.2', 'AO', 'SR.50', 'SR.75', 'fps']
    assert lines[2].split()[4:] == ['0.250', '0.500', 'n/a', '–']


def test_curve_figure_plots_each_trackers_curve_best_first(scores):
    fig = curve_figure(scores, 'success', title='synthetic')
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.lines]
    near, static = scores['near']['overall'], scores['static']['overall']
    assert labels == [f'near [AUC {near["auc"]:.3f}]', f'static [AUC {static["auc"]:.3f}]']  # 'empty' has no curve
    np.testing.assert_allclose(ax.lines[0].get_xdata(), SUCCESS_THRESHOLDS)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), near['success_curve'])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), static['success_curve'])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
    assert (ax.get_xlabel(), ax.get_ylabel()) == ('Overlap threshold', 'Success rate')
    assert ax.get_title() == 'Success plot of OPE - synthetic' and ax.get_ylim() == (0, 1.02)
    plt.close(fig)
    fig = curve_figure(scores, 'precision')
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), PRECISION_THRESHOLDS)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), scores['near']['overall']['precision_curve'])
    assert ax.get_xlim() == (0, 50) and ax.lines[0].get_label().startswith('near [P@20 ')
    plt.close(fig)


def colour_pixels(png, colour, tol=0.08) -> int:
    return int(np.sum(np.all(np.abs(png[..., :3] - np.array(to_rgb(colour))) < tol, axis=-1)))


def test_plot_curves_writes_the_figures_as_pngs(scores, tmp_path):
    paths = plot_curves({'near': scores['near'], 'static': scores['static']}, tmp_path, title='t')
    assert [p.name for p in paths] == ['success.png', 'precision.png', 'norm_precision.png']
    png = matplotlib.image.imread(paths[0])
    assert png.shape[:2] == (450, 600)  # 6 x 4.5 inches at 100 dpi
    # both curves are drawn: the first colour (best tracker) and the second, each a long line
    assert colour_pixels(png, 'C0') > 200 and colour_pixels(png, 'C1') > 200
    only = plot_curves({'static': scores['static']}, tmp_path / 'one')[0]
    png = matplotlib.image.imread(only)
    assert colour_pixels(png, 'C0') > 200 and colour_pixels(png, 'C1') < 20


def test_heatmap_shows_the_best_value_of_each_cell():
    # PENALTY_K x WINDOW_INFLUENCE, a third parameter (LR) varying inside each cell
    points = [(0.1, 0.3, 0.50), (0.1, 0.3, 0.55), (0.2, 0.3, 0.40), (0.1, 0.5, 0.60), (0.2, 0.5, 0.58),
              (0.2, 0.5, 0.35)]
    fig = heatmap_figure(points, 'PENALTY_K', 'WINDOW_INFLUENCE', 'auc')
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.55, 0.40], [0.60, 0.58]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ['0.1', '0.2']
    assert [t.get_text() for t in ax.get_yticklabels()] == ['0.3', '0.5']
    assert sorted(t.get_text() for t in ax.texts) == ['0.400', '0.550', '0.580', '0.600']
    assert (ax.get_xlabel(), ax.get_ylabel(), fig.axes[1].get_ylabel()) == ('PENALTY_K', 'WINDOW_INFLUENCE', 'auc')
    plt.close(fig)
    # a random search (more than 12 distinct values): a scatter of every point
    rng = np.random.default_rng(0)
    points = [(float(x), float(y), float(v)) for x, y, v in rng.uniform(0, 1, (20, 3))]
    fig = heatmap_figure(points, 'LR', 'PENALTY_K', 'ao', title='random')
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [p[:2] for p in points])
    np.testing.assert_allclose(ax.collections[0].get_array(), [p[2] for p in points])
    assert ax.get_title() == 'random' and not ax.images
    plt.close(fig)


def test_plot_heatmap_png_has_the_colours_of_its_cells(tmp_path):
    points = [(0.1, 0.3, 0.2), (0.2, 0.3, 0.9)]
    path = plot_heatmap(points, 'a', 'b', 'auc', tmp_path / 'h' / 'heatmap.png')
    png = matplotlib.image.imread(path)
    assert png.shape[:2] == (500, 650)
    cmap = plt.get_cmap('viridis')
    assert colour_pixels(png, cmap(0.0), tol=0.02) > 1000 and colour_pixels(png, cmap(1.0), tol=0.02) > 1000
