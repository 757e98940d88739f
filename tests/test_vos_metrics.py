"""DAVIS's J and F and their statistics: hand-computed cases, then a test-only transcription of the
official code (davisvideochallenge/davis2017-evaluation: metrics.py db_eval_iou / f_measure /
_seg2bmap, utils.db_statistics, the semi-supervised branch of evaluation.py with davis.py's and
results.py's reading) against ours on random masks and label maps."""
import math

import cv2
import numpy as np
import pytest

from track.vos.metrics import (boundary_map, boundary_radius, disk, f_measure, jaccard, sequence_measures,
                               statistics)

# --- the official definitions, transcribed for the comparison (np.bool written as bool) -----------


def official_iou(annotation, segmentation):
    annotation, segmentation = annotation.astype(bool), segmentation.astype(bool)
    void = np.zeros_like(segmentation)
    inters = np.sum((segmentation & annotation) & np.logical_not(void), axis=(-2, -1))
    union = np.sum((segmentation | annotation) & np.logical_not(void), axis=(-2, -1))
    j = inters / union
    if j.ndim == 0:
        j = 1 if np.isclose(union, 0) else j
    else:
        j[np.isclose(union, 0)] = 1
    return j


def official_seg2bmap(seg):
    seg = seg.astype(bool)
    seg[seg > 0] = 1
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def skimage_disk(radius):  # skimage.morphology.disk (strict_radius=True), skimage not installed here
    L = np.arange(-radius, radius + 1)
    X, Y = np.meshgrid(L, L)
    return np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=np.uint8)


def official_f_measure(foreground_mask, gt_mask, bound_th=0.008):
    void = np.zeros_like(foreground_mask).astype(bool)
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    fg_boundary = official_seg2bmap(foreground_mask * np.logical_not(void))
    gt_boundary = official_seg2bmap(gt_mask * np.logical_not(void))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), skimage_disk(bound_pix).astype(np.uint8))
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), skimage_disk(bound_pix).astype(np.uint8))
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0
    return 2 * precision * recall / (precision + recall)


def official_boundary(annotation, segmentation):  # db_eval_boundary on (T, H, W)
    return np.array([official_f_measure(segmentation[t], annotation[t]) for t in range(annotation.shape[0])])


def official_statistics(per_frame_values):
    M = np.nanmean(per_frame_values)
    O = np.nanmean(per_frame_values > 0.5)
    ids = np.round(np.linspace(1, len(per_frame_values), 4 + 1) + 1e-10) - 1
    ids = ids.astype(np.uint8)
    D_bins = [per_frame_values[ids[i]:ids[i + 1] + 1] for i in range(0, 4)]
    D = np.nanmean(D_bins[0]) - np.nanmean(D_bins[3])
    return M, O, D


def official_semisupervised(gt_frames, result_frames):
    """davis.get_all_masks(separate_objects_masks=True) + results.read_masks + the semi-supervised
    branch: per object (JM, JR, JD, FM, FR, FD) of raw ground-truth and result label stacks."""
    masks = gt_frames.astype(np.float64)
    for k in range(masks.shape[0]):
        masks[k, masks[k] == 255] = 0
    num_objects = int(np.max(masks[0, ...]))
    tmp = np.ones((num_objects, *masks.shape)) * np.arange(1, num_objects + 1)[:, None, None, None]
    all_gt = (tmp == masks[None, ...]) > 0
    all_gt = all_gt[:, 1:-1]
    res = result_frames[1:-1].astype(np.float64)
    n_res = int(np.max(res))
    tmp = np.ones((n_res, *res.shape)) * np.arange(1, n_res + 1)[:, None, None, None]
    all_res = (tmp == res[None, ...]) > 0
    assert all_res.shape[0] <= all_gt.shape[0]
    if all_res.shape[0] < all_gt.shape[0]:
        pad = np.zeros((all_gt.shape[0] - all_res.shape[0], *all_res.shape[1:]))
        all_res = np.concatenate([all_res, pad], axis=0)
    out = []
    for ii in range(all_gt.shape[0]):
        j = official_iou(all_gt[ii], all_res[ii])
        f = official_boundary(all_gt[ii], all_res[ii])
        out.append((*official_statistics(j), *official_statistics(f)))
    return np.array(out)


# --- hand-computed cases --------------------------------------------------------------------------

def square(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return m


def test_boundary_map_is_the_ring_half_a_pixel_towards_the_origin():
    m = square((10, 10), (2, 5), (2, 5))
    want = square((10, 10), (1, 5), (1, 5)) & ~square((10, 10), (2, 4), (2, 4))  # 5x5 ring, 16 px
    np.testing.assert_array_equal(boundary_map(m), want)
    # the last row / column rules: a mask touching the bottom-right corner
    m = square((4, 4), (2, 3), (2, 3))
    b = boundary_map(m)
    assert b[3, 1] and b[1, 3] and b[1, 1] and not b[3, 3] and not b[2, 2]
    np.testing.assert_array_equal(b, official_seg2bmap(m))


def test_j_and_f_by_hand():
    shape = (10, 10)  # tolerance ceil(0.008 * sqrt(200)) = 1 pixel: a plus-shaped disk
    assert boundary_radius(shape) == 1
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    gt = square(shape, (2, 5), (2, 5))
    assert jaccard(gt, gt) == 1.0 and f_measure(gt, gt) == 1.0
    one = square(shape, (2, 5), (3, 6))  # one column to the right: every boundary pixel within 1
    assert jaccard(gt, one) == pytest.approx(12 / 20)
    assert f_measure(gt, one) == pytest.approx(1.0)
    two = square(shape, (2, 5), (4, 7))  # two columns: 10 of the 16 boundary pixels match each way
    assert jaccard(gt, two) == pytest.approx(8 / 24)
    assert f_measure(gt, two) == pytest.approx(10 / 16)
    # a tolerance of 2 pixels (bound_th >= 1 is a pixel count) matches them all
    assert f_measure(gt, two, bound_th=2) == pytest.approx(1.0)


def test_empty_masks():
    empty, some = np.zeros((10, 10), bool), square((10, 10), (2, 5), (2, 5))
    assert jaccard(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0
    assert jaccard(some, empty) == 0.0 and f_measure(some, empty) == 0.0  # precision 1, recall 0
    assert jaccard(empty, some) == 0.0 and f_measure(empty, some) == 0.0  # precision 0, recall 1
    np.testing.assert_array_equal(jaccard(np.stack([empty, some]), np.stack([empty, empty])), [1.0, 0.0])


def test_radius_on_davis_frames():
    assert boundary_radius((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_radius((1080, 1920)) == 18


def test_statistics_by_hand_and_the_overlapping_decay_bins():
    v = np.arange(1, 11, dtype=float) / 10  # 0.1 .. 1.0
    mean, recall, decay = statistics(v)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # 0.6 .. 1.0: strictly above 0.5
    # bin edges round(linspace(0, 9, 5)) = 0, 2, 5 (4.5 rounds up), 7, 9; a bin holds both edges:
    # first = v[0:3], last = v[7:10]
    assert decay == pytest.approx(np.mean(v[0:3]) - np.mean(v[7:10]))
    assert decay != pytest.approx(np.mean(np.array_split(v, 4)[0]) - np.mean(np.array_split(v, 4)[3]))
    assert statistics([0.7]) == (0.7, 1.0, 0.0)
    assert all(math.isnan(x) for x in statistics([]))


def test_statistics_equal_the_official_for_every_length_it_handles():
    for n in range(1, 256):
        v = np.random.default_rng(n).random(n)
        np.testing.assert_allclose(statistics(v), official_statistics(v), rtol=0, atol=1e-12, err_msg=str(n))
    # from 256 scored frames on, the official uint8 bin edges wrap (DAVIS has at most 104 frames);
    # here the edges stay integers
    v = np.random.default_rng(0).random(300)
    edges = [0, 75, 150, 224, 299]  # round(linspace(0, 299, 5)) = 0, 74.75, 149.5, 224.25, 299
    assert statistics(v)[2] == pytest.approx(np.mean(v[edges[0]:edges[1] + 1]) - np.mean(v[edges[3]:edges[4] + 1]))


# --- random masks against the transcription -------------------------------------------------------

def blobs(rng, shape, n_objects):
    """Label map of smooth random blobs (ids 1..n_objects), some pixels of noise."""
    fields = [cv2.GaussianBlur(rng.random(shape), (0, 0), 3) for _ in range(n_objects)]
    stack = np.stack(fields)
    labels = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
    labels[np.max(stack, axis=0) < np.quantile(stack.max(axis=0), 0.55)] = 0
    noise = rng.random(shape) < 0.01
    labels[noise] = rng.integers(0, n_objects + 1, shape, dtype=np.uint8)[noise]
    return labels


@pytest.mark.parametrize('shape', [(37, 53), (48, 64), (120, 90)])
def test_j_and_f_equal_the_official_on_random_masks(shape):
    rng = np.random.default_rng(shape[0])
    for _ in range(12):
        gt, pred = blobs(rng, shape, 1) > 0, blobs(rng, shape, 1) > 0
        if rng.random() < 0.2:
            pred = gt.copy() ^ (rng.random(shape) < 0.02)  # nearly right
        assert jaccard(gt, pred) == pytest.approx(float(official_iou(gt, pred)), abs=1e-12)
        assert f_measure(gt, pred) == pytest.approx(official_f_measure(pred, gt), abs=1e-12)
        np.testing.assert_array_equal(boundary_map(pred), official_seg2bmap(pred))


def test_sequences_equal_the_official_with_void_pixels_and_fewer_result_objects():
    rng = np.random.default_rng(5)
    shape, frames, n_objects = (40, 56), 9, 3
    gt = np.stack([blobs(rng, shape, n_objects) for _ in range(frames)])
    gt[0][:3, :3] = n_objects  # the largest id is in the first frame
    gt[rng.random(gt.shape) < 0.03] = 255  # void pixels: background for J and F
    for result_objects in (3, 2):  # a result without object 3 is padded with an empty mask
        result = np.stack([blobs(rng, shape, result_objects) for _ in range(frames)])
        result[:, 5:9, 5:9] = result_objects  # the result has its largest id in the scored frames
        want = official_semisupervised(gt, result)
        labels = gt[1:-1].copy()
        labels[labels == 255] = 0
        j, f = sequence_measures(labels, result[1:-1], n_objects)
        got = np.array([(*statistics(j[k]), *statistics(f[k])) for k in range(n_objects)])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_a_result_id_above_the_first_frames_objects_is_an_error():
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[:, 2:4, 2:4] = 1
    result = gt.copy()
    result[1, 5, 5] = 2
    with pytest.raises(ValueError, match=r'seqA: object id 2 in the result, but the first frame has 1'):
        sequence_measures(gt, result, 1, source='seqA')
