"""OPE metrics on hand-built trajectories (expected values derived by hand in comments)."""
import math

import numpy as np
import pytest

from track.metrics import (centres, evaluate_overall, evaluate_sequence, iou,
                                      norm_precision_curve, precision_curve, success_curve)


def gt_track(n=10):
    return np.array([[10.0 + 3 * i, 20.0 + i, 40.0, 30.0] for i in range(n)])


def test_iou_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    b = np.array([[5, 0, 10, 10], [0, 0, 10, 10], [20, 20, 5, 5], [0, 0, 5, 10]], float)
    np.testing.assert_allclose(iou(a, b), [50 / 150, 1.0, 0.0, 0.5])


def test_perfect_tracker():
    gt = gt_track()
    m = evaluate_sequence(gt, gt)
    # IoU 1 passes every threshold except t = 1.0 (strict >): 20 of 21 points
    assert m['success_curve'][:20] == [1.0] * 20 and m['success_curve'][20] == 0.0
    assert m['auc'] == pytest.approx(20 / 21)
    assert m['precision'] == 1.0 and m['norm_precision'] == 1.0
    assert all(v == 1.0 for v in m['precision_curve'])


def test_constant_iou_series_gives_known_auc():
    gt = gt_track()
    pred = gt.copy()
    pred[:, 2] *= 0.62  # same left/top/height, 62 % of the width: IoU = 0.62 on every frame
    curve = success_curve(gt, pred)
    # thresholds 0, 0.05, ..., 0.60 are < 0.62 (13 of them), 0.65 .. 1.0 are not
    assert list(curve) == [1.0] * 13 + [0.0] * 8
    assert float(np.mean(curve)) == pytest.approx(13 / 21)

    pred[:, 2] = gt[:, 2] * 0.5  # IoU exactly 0.5: fails at t = 0.5 (strict)
    assert list(success_curve(gt, pred)) == [1.0] * 10 + [0.0] * 11


def test_mixed_series_uses_all_frames_as_denominator():
    gt = gt_track(4)
    pred = gt.copy()
    pred[2:, 0] += 1000  # two frames lost completely (IoU 0)
    m = evaluate_sequence(gt, pred)
    assert m['auc'] == pytest.approx(0.5 * 20 / 21)
    assert m['precision'] == 0.5


def test_invalid_ground_truth_counts_as_miss():
    gt = gt_track(4)
    pred = gt.copy()
    gt[1, 2] = 0.0      # zero width
    gt[2, 3] = -1.0     # negative height
    gt[3] = np.nan      # unknown
    for curve in (success_curve(gt, pred), precision_curve(gt, pred), norm_precision_curve(gt, pred)):
        assert curve[0] == pytest.approx(0.25)


def test_absent_frames_policies():
    gt = gt_track(10)
    pred = gt.copy()
    visible = np.ones(10, bool)
    visible[[2, 3, 7, 8]] = False
    pred[~visible, 0] += 500  # wrong while absent: must not matter
    excl = evaluate_sequence(gt, pred, visible, absent='exclude')
    assert excl['auc'] == pytest.approx(20 / 21) and excl['precision'] == 1.0
    miss = evaluate_sequence(gt, pred, visible, absent='miss')
    assert miss['auc'] == pytest.approx(0.6 * 20 / 21) and miss['precision'] == pytest.approx(0.6)
    none_visible = evaluate_sequence(gt, pred, np.zeros(10, bool))
    assert math.isnan(none_visible['auc'])


def test_centre_distance_thresholds():
    gt = np.array([[10.0, 10.0, 20.0, 40.0]] * 3)
    pred = gt.copy()
    pred[0, :2] += (3, 4)       # 5 px
    pred[1, :2] += (12, 16)     # 20 px: hit at 20 (<=)
    pred[2, :2] += (12, 20)     # 23.3 px
    p = precision_curve(gt, pred)
    assert p[4] == 0.0 and p[5] == pytest.approx(1 / 3)
    assert p[20] == pytest.approx(2 / 3) and p[23] == pytest.approx(2 / 3) and p[24] == 1.0
    # normalised by GT (w, h) = (20, 40): frame 0 -> sqrt(0.15^2 + 0.1^2) = 0.1803,
    # frame 1 -> sqrt(0.6^2 + 0.4^2) = 0.721, frame 2 -> sqrt(0.6^2 + 0.5^2) = 0.781
    n = norm_precision_curve(gt, pred)
    assert n[18] == 0.0 and n[19] == pytest.approx(1 / 3) and n[20] == pytest.approx(1 / 3)
    assert n[50] == pytest.approx(1 / 3)
    np.testing.assert_allclose(centres([[10, 20, 5, 8]]), [[12.0, 23.5]])


def test_overall_is_mean_over_sequences():
    gt = gt_track(4)
    perfect = evaluate_sequence(gt, gt)
    half = gt.copy()
    half[2:, 0] += 1000
    per_seq = {'a': perfect, 'b': evaluate_sequence(gt, half), 'c': evaluate_sequence(gt[:2], gt[:2])}
    o = evaluate_overall(per_seq)
    assert o['sequences'] == 3
    assert o['auc'] == pytest.approx((20 / 21 + 10 / 21 + 20 / 21) / 3)
    assert o['precision'] == pytest.approx((1 + 0.5 + 1) / 3)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match='frames'):
        success_curve(gt_track(3), gt_track(4))
