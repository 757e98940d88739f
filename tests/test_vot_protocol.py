"""The supervised (reset-based) protocol, its frame times under both drivers, VOT sequence folders
and vot-toolkit's result layout."""
import functools
import json

import numpy as np
import pytest
import torch
from vot.region import Polygon, Rectangle, Special
from vot.region.io import write_trajectory as toolkit_write_trajectory

from model import build_model
from track.engine import EngineOptions
from track.protocol import Request, run_sequential
from track.tracker import StaticTracker, build_tracker
from track.vot.evaluate import batched_driver, drive_sequential, evaluate_vot
from track.vot.protocol import SupervisedProtocol
from track.vot.regions import FAILURE, INITIALIZATION, UNKNOWN
from track.vot.results import read_runs, read_trajectory, trajectory_path, write_trajectory
from track.vot.datasets import VOTSequence, load_sequence, load_vot
from train.config import load_config
from vot_synthetic import write_dataset, write_sequence

BLANK = np.zeros((60, 200, 3), np.uint8)


def codes(regions):
    return [r if isinstance(r, int) else '.' for r in regions]


def moving_truth(n, step=3.0, x0=20.0):
    """A 10x10 target moving `step` px a frame: a static box loses it once it moved 10 px."""
    return [np.array([x0 + step * i, 20, 10, 10]) for i in range(n)]


def test_failure_then_reinitialisation_five_frames_later():
    gt = moving_truth(20)
    protocol = run_sequential(SupervisedProtocol(VOTSequence('s', [], gt, (200, 60))), StaticTracker(), lambda i: BLANK)
    # frame 4: the static box (x 20..29) and the target (x 32..41) are apart -> failure; frames
    # 5-8 skipped; re-initialised on frame 9's ground truth; fails again 4 frames later
    assert codes(protocol.regions) == [1, '.', '.', '.', 2, 0, 0, 0, 0,
                                       1, '.', '.', '.', 2, 0, 0, 0, 0, 1, '.']
    np.testing.assert_array_equal(protocol.regions[12], gt[9])  # the box of the latest init
    assert codes(protocol.regions).count(FAILURE) == 2 and protocol.next_request() is None
    assert [t is None for t in protocol.times] == [c == 0 for c in codes(protocol.regions)]


@pytest.mark.parametrize('n, expected_tail', [
    (13, [1, '.', '.', '.', 2, 0, 0, 0, 0, 1, '.', '.', '.']),  # re-init at n-4: no new failure
    (9, [1, '.', '.', '.', 2, 0, 0, 0, 0]),                     # failure + 5 == n: no re-init
    (7, [1, '.', '.', '.', 2, 0, 0]),                           # failure in the last 5 frames
])
def test_failures_near_the_end(n, expected_tail):
    protocol = run_sequential(SupervisedProtocol(VOTSequence('s', [], moving_truth(n), (200, 60))), StaticTracker(), lambda i: BLANK)
    assert codes(protocol.regions) == expected_tail


def test_requests_init_boxes_and_report_order():
    poly = np.array([10, 10, 30, 10, 30, 20, 10, 20.0])
    protocol = SupervisedProtocol(VOTSequence('s', [], [poly] * 3, (100, 100)))
    first = protocol.next_request()
    assert first == Request('init', 0, (10.0, 10.0, 21.0, 11.0))  # PySOT's box of the polygon
    assert protocol.next_request() is first  # the same pending request until it is reported
    with pytest.raises(ValueError, match="sequence 's': report for"):
        protocol.report(Request('track', 0), {'bbox': [0, 0, 1, 1]})
    protocol.report(first, None)
    req = protocol.next_request()
    assert req == Request('track', 1)
    # a SiamMask-style output: the polygon is scored, not the box
    protocol.report(req, {'bbox': [80, 80, 5, 5], 'polygon': list(poly)})
    np.testing.assert_array_equal(protocol.regions[1], poly)
    with pytest.raises(ValueError, match=r"sequence 'x', frame 0 \(the first frame\): cannot initialise"):
        SupervisedProtocol(VOTSequence('x', [], [UNKNOWN], (10, 10))).next_request()


def test_vot_folders(tmp_path):
    root = write_dataset(tmp_path / 'ds', {'b': dict(n=4, angle=10, seed=1), 'a': dict(n=3)})
    seqs = load_vot(root)
    assert [s.name for s in seqs] == ['b', 'a'] and len(seqs[0]) == 4 and seqs[0].size == (160, 120)
    assert len(seqs[0].groundtruth[0]) == 8 and len(seqs[1].groundtruth[0]) == 4
    assert seqs[1].read_frame(2).shape == (120, 160, 3)
    # an unreadable frame reads as None (as a one-pass Sequence's); the protocol names it
    seqs[1].frames[1].write_bytes(b'not a jpeg')
    assert seqs[1].read_frame(1) is None
    with pytest.raises(ValueError, match=r"sequence 'a': cannot read frame 1 \(.*00000002.jpg\)"):
        run_sequential(SupervisedProtocol(seqs[1]), StaticTracker(), seqs[1].read_frame)
    # legacy layout (no `sequence` file, images in the folder): size from the first image
    legacy = tmp_path / 'legacy'
    write_sequence(legacy, 3, sequence_file=False)
    for p in sorted((legacy / 'color').iterdir()):
        p.rename(legacy / p.name)
    assert load_sequence(legacy).size == (160, 120) and len(load_sequence(legacy).frames) == 3
    (root / 'a' / 'groundtruth.txt').write_text('1,2,3,4\n' * 2)
    with pytest.raises(ValueError, match="sequence 'a': 2 ground-truth regions .* but 3 images"):
        load_vot(root)
    (root / 'list.txt').write_text('b\nmissing\n')
    with pytest.raises(FileNotFoundError, match="'missing'"):
        load_vot(root)


def test_results_layout_and_the_toolkits_binary_files(tmp_path):
    regions = [INITIALIZATION, np.array([1.25, 2, 3, 4]), FAILURE, UNKNOWN,
               np.array([1, 2, 3, 2, 3, 5.5])]
    path = write_trajectory(trajectory_path(tmp_path, 'trk', 'seq'), regions, [0.5, 0.25, 0.125, None, 1.0])
    assert path == tmp_path / 'trk' / 'baseline' / 'seq' / 'seq_001.txt'
    assert path.read_text().splitlines()[:3] == ['1', '1.25,2.0,3.0,4.0', '2']
    assert (path.parent / 'seq_001_time.value').read_text().splitlines() == ['0.5', '0.25', '0.125', '', '1.0']
    # a run the toolkit wrote in its (default) binary format, as repetition 2
    toolkit_write_trajectory(str(path.parent / 'seq_002.bin'), [
        Special(1), Rectangle(1.25, 2, 3, 4), Special(2), Special(0), Polygon([(1, 2), (3, 2), (3, 5.5)])])
    first, second = read_runs(tmp_path, 'trk', 'seq')
    for ours, theirs in zip(first, second):
        np.testing.assert_array_equal(ours, theirs)
    assert read_runs(tmp_path, 'trk', 'other') == []
    (path.parent / 'bad.bin').write_bytes(b'\x02\x00')
    with pytest.raises(ValueError, match='bad.bin: not a vot-toolkit binary trajectory'):
        read_trajectory(path.parent / 'bad.bin')


class TickClock:
    """A fake clock: every call returns one second more than the last one."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return float(self.calls)


def read_times(path) -> list:
    """The seconds of a `_time.value` file, None on its empty (skipped) lines."""
    return [float(t) if t else None for t in path.read_text().splitlines()]


@pytest.mark.parametrize('driver', ['batched', 'sequential'])
def test_frame_times_are_each_frames_share_of_the_drivers_step(tmp_path, driver):
    """Under the batched engine a step serves several sequences at once: each frame is charged
    the step's time divided by the frames in it (the whole step once made the fps low by about
    the batch size); one at a time, each frame its own step.  The clock is a fake one that
    advances one second per reading, so every step lasts exactly one second."""
    root = write_dataset(tmp_path / 'seqs', {'a': dict(n=12, velocity=(3, 0), seed=1),
                                             'b': dict(n=9, angle=20, velocity=(2, 1), seed=2),
                                             'c': dict(n=10, velocity=(1, 0), jump_at=5, jump_to=(110, 80), seed=3)})
    cfg = load_config('configs/demo_cpu.yaml')
    torch.manual_seed(0)
    tracker = build_tracker(cfg, build_model(cfg))
    clock = TickClock()
    drive = (batched_driver(EngineOptions(batch_size=4, streams=1), clock) if driver == 'batched'
             else functools.partial(drive_sequential, clock=clock))
    out = tmp_path / 'out'
    scores = evaluate_vot({'demo': tracker}, root, out, low=2, high=8, progress=False,
                          log=lambda *a: None, drive=drive)['trackers']['demo']
    steps = clock.calls / 2  # a reading before and after each step
    times = {name: read_times(out / 'results' / 'demo' / 'baseline' / name / f'{name}_001_time.value')
             for name in 'abc'}
    recorded = [t for ts in times.values() for t in ts if t is not None]
    assert scores['lost'] >= 1 and None in times['c']  # failures, and frames skipped after them
    assert sum(recorded) == pytest.approx(steps)  # every step's second, shared out exactly once
    if driver == 'batched':
        assert [times[n][0] for n in 'abc'] == pytest.approx([1 / 3] * 3)  # one step initialises all three
        assert set(np.round(recorded, 9)) <= {1.0, round(1 / 2, 9), round(1 / 3, 9)}
        assert steps < len(recorded)
    else:
        assert recorded == [1.0] * len(recorded) and steps == len(recorded)
    assert scores['fps'] == pytest.approx(len(recorded) / steps)
    assert json.loads((out / 'report.json').read_text())['trackers']['demo']['fps'] == pytest.approx(scores['fps'])
