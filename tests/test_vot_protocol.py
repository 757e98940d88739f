"""The supervised (reset-based) protocol, VOT sequence folders and vot-toolkit's result layout."""
import numpy as np
import pytest
from vot.region import Polygon, Rectangle, Special
from vot.region.io import write_trajectory as toolkit_write_trajectory

from track.protocol import Request, run_sequential
from track.tracker import StaticTracker
from track.vot.protocol import SupervisedProtocol
from track.vot.regions import FAILURE, INITIALIZATION, UNKNOWN
from track.vot.results import read_runs, read_trajectory, trajectory_path, write_trajectory
from track.vot.datasets import load_sequence, load_vot
from vot_synthetic import write_dataset, write_sequence

BLANK = np.zeros((60, 200, 3), np.uint8)


def codes(regions):
    return [r if isinstance(r, int) else '.' for r in regions]


def moving_truth(n, step=3.0, x0=20.0):
    """A 10x10 target moving `step` px a frame: a static box loses it once it moved 10 px."""
    return [np.array([x0 + step * i, 20, 10, 10]) for i in range(n)]


def test_failure_then_reinitialisation_five_frames_later():
    gt = moving_truth(20)
    protocol = run_sequential(SupervisedProtocol(gt, (200, 60)), StaticTracker(), lambda i: BLANK)
    # frame 4: the static box (x 20..29) and the target (x 32..41) are apart -> failure; frames
    # 5-8 skipped; re-initialised on frame 9's ground truth; fails again 4 frames later
    assert codes(protocol.regions) == [1, '.', '.', '.', 2, 0, 0, 0, 0,
                                       1, '.', '.', '.', 2, 0, 0, 0, 0, 1, '.']
    np.testing.assert_array_equal(protocol.regions[12], gt[9])  # the box of the latest init
    assert protocol.failures == 2 and protocol.done
    assert [t is None for t in protocol.times] == [c == 0 for c in codes(protocol.regions)]


@pytest.mark.parametrize('n, expected_tail', [
    (13, [1, '.', '.', '.', 2, 0, 0, 0, 0, 1, '.', '.', '.']),  # re-init at n-4: no new failure
    (9, [1, '.', '.', '.', 2, 0, 0, 0, 0]),                     # failure + 5 == n: no re-init
    (7, [1, '.', '.', '.', 2, 0, 0]),                           # failure in the last 5 frames
])
def test_failures_near_the_end(n, expected_tail):
    protocol = run_sequential(SupervisedProtocol(moving_truth(n), (200, 60)), StaticTracker(), lambda i: BLANK)
    assert codes(protocol.regions) == expected_tail


def test_requests_init_boxes_and_report_order():
    poly = np.array([10, 10, 30, 10, 30, 20, 10, 20.0])
    protocol = SupervisedProtocol([poly] * 3, (100, 100), name='s')
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
    with pytest.raises(ValueError, match="sequence 'x', frame 0: cannot initialise"):
        SupervisedProtocol([UNKNOWN], (10, 10), name='x').next_request()


def test_vot_folders(tmp_path):
    root = write_dataset(tmp_path / 'ds', {'b': dict(n=4, angle=10, seed=1), 'a': dict(n=3)})
    seqs = load_vot(root)
    assert [s.name for s in seqs] == ['b', 'a'] and len(seqs[0]) == 4 and seqs[0].size == (160, 120)
    assert len(seqs[0].groundtruth[0]) == 8 and len(seqs[1].groundtruth[0]) == 4
    assert seqs[1].read_frame(2).shape == (120, 160, 3)
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
