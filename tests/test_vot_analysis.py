"""VOT accuracy, robustness and EAO: by hand, equal to vot-toolkit's own analysis on the same
stored runs, PySOT's EAO variant, and the evaluation runner end to end."""
import copy
import json
import math
import warnings

import numpy as np
import pytest

from track.protocol import run_sequential
from track.tracker import StaticTracker
from track.vot.analysis import analyse
from track.vot.evaluate import evaluate_vot, score_stored
from track.vot.protocol import SupervisedProtocol
from track.vot.regions import FAILURE, INITIALIZATION, UNKNOWN
from track.vot.results import trajectory_path, write_trajectory
from track.vot.datasets import VOTSequence, load_vot
from vot_synthetic import polygon_of, toolkit_scores, write_dataset, write_workspace

# vot-toolkit's class registry warns about its own deprecated calls
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:class_registry.*')

BLANK = np.zeros((8, 8, 3), np.uint8)
GT = np.array([0, 0, 10, 10.0])
HALF, FULL = np.array([0, 0, 10, 5.0]), GT.copy()  # overlaps 0.5 and 1 with GT


def one_sequence(n):
    return [VOTSequence('s', [], [GT] * n, (20, 20))]


def test_scores_by_hand():
    # init, 0.5, 1, failure, 2 skipped: the failure is in the last 5 frames (no re-init)
    run = [INITIALIZATION, HALF, FULL, FAILURE, UNKNOWN, UNKNOWN]
    s = analyse(one_sequence(6), {'s': [run]}, low=1, high=2, burnin=1)
    assert s['accuracy'] == 0.75 and s['robustness'] == 1 and s['lost'] == 1
    assert s['ar_robustness'] == pytest.approx(math.exp(-30 / 6))
    assert s['robustness_per100'] == pytest.approx(100 / 6)
    # vot-toolkit: one failed segment [init, .5, 1] -> curve [0, .5, .75]
    np.testing.assert_allclose(s['eao_curve'], [0, 0.5, 0.75])
    assert s['eao'] == pytest.approx((0.5 + 0.75) / 2)
    assert analyse(one_sequence(6), {'s': [run]}, low=1, high=2)['accuracy'] == 0  # burn-in 10 hides all
    assert math.isnan(analyse(one_sequence(6), {'s': [run]}, low=4, high=5)['eao'])  # curve too short
    # PySOT: the failure is ignored, one fragment [0, .5, 1, 0, 0, 0] (codes as 0), indices 1..2
    pysot = analyse(one_sequence(6), {'s': [run]}, low=2, high=3, eao='pysot')
    assert pysot['eao'] == pytest.approx((0.5 + 0.75) / (2 + 6e-6), abs=1e-7)


def test_eao_variants_on_a_reinitialised_run():
    run = [INITIALIZATION, HALF, FULL, FAILURE] + [UNKNOWN] * 4 + [INITIALIZATION, FULL, FULL, FULL]
    seqs, runs = one_sequence(12), {'s': [run]}
    # vot-toolkit: [0, .5, 1] failed (zero-filled) + [0, 1, 1, 1] to the end -> running means
    # [0, .5, .75, .5] and [0, 1, 1, 1]
    vot = analyse(seqs, runs, low=1, high=3)
    np.testing.assert_allclose(vot['eao_curve'], [0, 0.75, 0.875, 0.75])
    assert vot['eao'] == pytest.approx((0.75 + 0.875 + 0.75) / 3)
    # PySOT: fragment [0,.5,1,0,0,0,0,0,0] zero-padded to 12 + [0,1,1,1] NaN-padded; past index
    # 3 only the first counts (running mean of its zeros): curve[i] for i = 1..11
    first = np.cumsum([0.5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]) / np.arange(1, 12)
    curve = np.concatenate([[1], (first[:3] + 1) / 2, first[3:]])
    for low, high in ((2, 4), (3, 12), (1, 20)):
        window = np.zeros(12)
        window[low - 1:high] = 1
        expected = np.sum(curve * window) / np.sum(window + 1e-6)
        assert analyse(seqs, runs, low, high, eao='pysot')['eao'] == pytest.approx(expected, abs=1e-6)


def test_pysot_eao_keeps_a_failure_exactly_five_frames_before_the_end():
    seqs = [VOTSequence('a', [], [GT] * 8, (20, 20)), VOTSequence('b', [], [GT] * 12, (20, 20))]
    runs = {'a': [[INITIALIZATION, HALF, FULL, FAILURE] + [UNKNOWN] * 4],
            'b': [[INITIALIZATION] + [FULL] * 11]}
    # a's fragment [0,.5,1,0,0,0,0,0] is zero-padded to 12 (failure kept: 3 + 5 <= 8) with
    # PySOT's weight 8/9 (8 'all' tags over 9 indices); b never fails (running mean 1)
    a = np.cumsum([0.5, 1] + [0] * 9) / np.arange(1, 12)
    curve = np.concatenate([[1], (a * 8 / 9 + 1) / (8 / 9 + 1)])
    expected = np.sum(curve[8:12]) / (4 + 12e-6)
    assert analyse(seqs, runs, 9, 12, eao='pysot')['eao'] == pytest.approx(expected, abs=1e-6)


def test_errors_name_the_sequence():
    with pytest.raises(ValueError, match="no results for sequence 's'"):
        analyse(one_sequence(3), {})
    with pytest.raises(ValueError, match="sequence 's', run 1: 2 regions for 3 frames"):
        analyse(one_sequence(3), {'s': [[INITIALIZATION, FULL]]})
    with pytest.raises(ValueError, match='EAO variant'):
        analyse(one_sequence(3), {'s': [[INITIALIZATION, FULL, FULL]]}, eao='x')


class ShiftedStatic(StaticTracker):
    """Reports its first box shifted by `dx` pixels (a second, different repetition)."""

    def __init__(self, dx):
        self.dx = dx

    def track(self, img):
        x, y, w, h = self.box
        return {'bbox': [x + self.dx, y, w, h], 'best_score': 1.0}


def truth(n, kind, seed, speed=None):
    """Ground truth without images: 'still' wobbles (a static box never fails; polygons),
    'drift' moves `speed` (0.35) px a frame (a static box fails every 20 / speed frames),
    'fast' moves 2.5 px a frame (fails every few frames)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    if kind == 'still':
        return [polygon_of(60 + 3 * np.sin(i / 7), 50 + 2 * np.cos(i / 5), 30, 22, 15 + 5 * np.sin(i / 11))
                for i in t]
    speed = speed or (0.35 if kind == 'drift' else 2.5)
    x = 20 + (speed * t) % 140 + rng.uniform(-1, 1, n)
    return [np.array([xi, 40.25, 20, 16]) for xi in x]


def write_imageless_sequences(root, specs: dict) -> list:
    """{name: (length, kind, speed)} -> sequence folders with ground truth and sizes, no images."""
    for name, (n, kind, speed) in specs.items():
        folder = root / name
        folder.mkdir(parents=True)
        gt = truth(n, kind, len(name), speed)
        (folder / 'groundtruth.txt').write_text(''.join(','.join(f'{v:.3f}' for v in g) + '\n' for g in gt))
        (folder / 'sequence').write_text(f'channels.color=color/%08d.jpg\nwidth=200\nheight=120\nlength={n}\n')
    (root / 'list.txt').write_text('\n'.join(specs) + '\n')
    return load_vot(root, need_images=False)


def static_runs(ws, sequences, name='static', trackers=(StaticTracker(),)) -> dict:
    """Supervised runs of `trackers` (one repetition each), stored in ws/results/<name>/."""
    runs = {}
    for seq in sequences:
        runs[seq.name] = []
        for rep, trk in enumerate(trackers, 1):
            p = run_sequential(SupervisedProtocol(seq), trk, lambda i: BLANK)
            write_trajectory(trajectory_path(ws / 'results', name, seq.name, rep), p.regions, p.times)
            runs[seq.name].append(p.regions)
    return runs


@pytest.fixture(scope='module')
def stored_runs(tmp_path_factory):
    """A workspace with 3 long image-less sequences and runs of two trackers (2 repetitions each)."""
    ws = tmp_path_factory.mktemp('ws')
    sequences = write_imageless_sequences(ws / 'sequences', {
        'still': (420, 'still', None), 'drift': (380, 'drift', None), 'fast': (97, 'fast', None)})
    runs = {'static': static_runs(ws, sequences, 'static', (StaticTracker(), ShiftedStatic(3.5))),
            'shifted': static_runs(ws, sequences, 'shifted', (ShiftedStatic(9), ShiftedStatic(-7)))}
    ini = ''.join(f'[{t}]\nprotocol = traxpython\ncommand = unused\n' for t in runs)
    return ws, sequences, runs, ini


@pytest.mark.parametrize('low, high', [(100, 356), (46, 291), (2, 40)])
def test_equal_to_vot_toolkit_analysis(stored_runs, low, high):
    ws, sequences, runs, ini = stored_runs
    write_workspace(ws, low, high, repetitions=2, trackers_ini=ini)
    for tracker in runs:
        ours = analyse(sequences, runs[tracker], low, high)
        theirs = toolkit_scores(ws, tracker)
        assert ours['lost'] > 2 and ours['robustness'] > 0  # runs with failures and re-inits
        for key in ('accuracy', 'robustness', 'ar_robustness', 'eao'):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-6), key
        np.testing.assert_allclose(ours['eao_curve'], theirs['eao_curve'], atol=1e-6)
        # and the same figures from the stored files (our reader, both repetitions)
        stored = score_stored(ws / 'results', [tracker], ws / 'sequences', None, low, high, log=lambda s: None)
        assert stored['trackers'][tracker]['eao'] == pytest.approx(theirs['eao'], abs=1e-6)


@pytest.mark.parametrize('speed', [0.15, 0.35])
def test_pysot_eao_differs_on_sequences_shorter_than_the_interval(tmp_path, speed):
    """The README's example: a static box on 4 sequences of 150-300 frames whose target drifts
    `speed` px a frame.  At 0.15 (segments up to ~130 frames) PySOT's EAO is far below
    vot-toolkit's; at 0.35 every segment is shorter than 100 frames: vot-toolkit's EAO over
    [100, 356] is undefined (NaN), PySOT's is a number."""
    sequences = write_imageless_sequences(tmp_path / 'sequences', {
        f's{n}': (n, 'drift', speed) for n in (150, 220, 300, 250)})
    runs = static_runs(tmp_path, sequences)
    write_workspace(tmp_path, 100, 356, trackers_ini='[static]\nprotocol = traxpython\ncommand = x\n')
    vot, pysot = analyse(sequences, runs), analyse(sequences, runs, eao='pysot')
    with np.errstate(all='ignore'), warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # the toolkit's mean of an empty slice
        theirs = toolkit_scores(tmp_path, 'static')
    print(f'speed {speed}: EAO vot-toolkit {theirs["eao"]:.4f}, ours {vot["eao"]:.4f}, '
          f'PySOT variant {pysot["eao"]:.4f}; {vot["lost"]:.0f} failures, A {vot["accuracy"]:.3f}')
    assert pysot['eao'] > 0 and vot['lost'] >= 4
    if len(vot['eao_curve']) > 100:
        assert vot['eao'] == pytest.approx(theirs['eao'], abs=1e-6)
        assert vot['eao'] - pysot['eao'] > 0.05
    else:
        assert math.isnan(vot['eao']) and math.isnan(theirs['eao'])
    assert speed == 0.35 or len(vot['eao_curve']) > 100  # both cases are covered


def test_evaluate_vot_writes_reports_and_reuses_stored_runs(tmp_path):
    root = write_dataset(tmp_path / 'seqs', {'a': dict(n=25, velocity=(3, 0)),
                                             'b': dict(n=20, angle=30, velocity=(2, 1), seed=4)})
    out, logs = tmp_path / 'out', []
    first = evaluate_vot({'static': StaticTracker()}, root, out, low=2, high=15, progress=False,
                         log=logs.append)['trackers']['static']
    report = json.loads((out / 'report.json').read_text())
    assert report['trackers']['static']['eao'] == pytest.approx(first['eao'])
    assert 'static' in (out / 'report.txt').read_text() and first['lost'] >= 2
    path = trajectory_path(out / 'results', 'static', 'a')
    assert path.is_file() and path.with_name('a_001_time.value').is_file()
    again = evaluate_vot({'static': StaticTracker()}, root, out, low=2, high=15, progress=False,
                         log=logs.append)['trackers']['static']
    assert any('reused 2 stored run(s)' in line for line in logs)
    assert again['eao'] == first['eao'] and again['accuracy'] == first['accuracy']
    # a driver that steps all sequences in turn, one request each, with one tracker state per
    # sequence (what the batched engine does) gives the same runs and scores
    def round_robin(tracker, jobs, finished):
        states = [copy.deepcopy(tracker) for _ in jobs]
        live = list(range(len(jobs)))
        while live:
            for k in list(live):
                protocol, read_frame = jobs[k]
                req = protocol.next_request()
                if req is None:
                    live.remove(k)
                    finished(protocol)
                elif req.kind == 'init':
                    states[k].init(read_frame(req.frame), req.box)
                    protocol.report(req, None)
                else:
                    protocol.report(req, states[k].track(read_frame(req.frame)))
    batched = evaluate_vot({'static': StaticTracker()}, root, tmp_path / 'rr', low=2, high=15, progress=False,
                           log=logs.append, drive=round_robin)['trackers']['static']
    for key in ('eao', 'accuracy', 'robustness', 'eao_curve'):
        assert batched[key] == first[key]
    for seq in ('a', 'b'):
        assert trajectory_path(tmp_path / 'rr' / 'results', 'static', seq).read_text() == \
            trajectory_path(out / 'results', 'static', seq).read_text()
    path.write_text('1\n')  # an incomplete run is rerun, not scored
    evaluate_vot({'static': StaticTracker()}, root, out, low=2, high=15, progress=False, log=logs.append)
    assert len(path.read_text().splitlines()) == 25
