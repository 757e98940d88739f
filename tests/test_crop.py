"""SiamFC crop geometry against PySOT's formulas, re-implemented independently here: the crop of
`training_dataset/*/par_crop.py` (`crop_like_SiamFC`: context 0.5, exemplar 127, the search square
mapped onto 510 px of a 511 crop, mean-colour padding) and the box of `TrkDataset._get_bbox`."""
import math

import cv2
import numpy as np
import pytest

from pipeline.crop import (box_on_crop, crop_search, mean_colour, search_crop_affine, search_crop_side,
                           siamfc_crop_size)


def smooth_image(h=300, w=420, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h // 20 + 2, w // 20 + 2, 3)).astype(np.uint8)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)


def pysot_style_crop(image, box, out=511, exemplar=127, context=0.5):
    """PySOT crop_like_SiamFC 'x' output written from its formulas: pad, s_x, crop_hwc(bbox corners)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = box[2] - box[0], box[3] - box[1]
    wc, hc = h + context * (w + h), w + context * (w + h)  # PySOT swaps w/h here; s_z is symmetric
    s_z = math.sqrt(wc * hc)
    s_x = s_z + 2 * ((out - exemplar) / 2) / (exemplar / s_z)
    x1, y1, x2, y2 = cx - s_x / 2, cy - s_x / 2, cx + s_x / 2, cy + s_x / 2
    a, b = (out - 1) / (x2 - x1), (out - 1) / (y2 - y1)
    m = np.array([[a, 0, -a * x1], [0, b, -b * y1]], dtype=np.float64)
    avg = np.mean(image, axis=(0, 1))
    return cv2.warpAffine(image, m, (out, out), borderMode=cv2.BORDER_CONSTANT, borderValue=avg)


def numpy_bilinear_crop(image, box, out=511, exemplar=127, context=0.5):
    """Straightforward inverse-mapped bilinear sampling with mean-colour padding (no OpenCV warp)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = box[2] - box[0], box[3] - box[1]
    p = context * (w + h)
    s_x = math.sqrt((w + p) * (h + p)) * out / exemplar
    step = s_x / (out - 1)
    u = cx - s_x / 2 + np.arange(out) * step
    v = cy - s_x / 2 + np.arange(out) * step
    X, Y = np.meshgrid(u, v)
    H, W = image.shape[:2]
    x0, y0 = np.floor(X).astype(int), np.floor(Y).astype(int)
    fx, fy = (X - x0)[..., None], (Y - y0)[..., None]
    padded = np.empty((H + 2, W + 2, 3))
    padded[:] = image.reshape(-1, 3).mean(0)
    padded[1:-1, 1:-1] = image

    def at(yy, xx):
        return padded[np.clip(yy + 1, 0, H + 1), np.clip(xx + 1, 0, W + 1)]
    res = ((1 - fx) * (1 - fy) * at(y0, x0) + fx * (1 - fy) * at(y0, x0 + 1)
           + (1 - fx) * fy * at(y0 + 1, x0) + fx * fy * at(y0 + 1, x0 + 1))
    return res


@pytest.mark.parametrize('box', [(100, 80, 180, 130), (5, 10, 60, 200), (300.5, 200.25, 415.0, 290.0),
                                 (0, 0, 420, 300)])
def test_crop_equals_pysot_formula(box):
    img = smooth_image()
    ours = crop_search(img, box)
    assert ours.shape == (511, 511, 3) and ours.dtype == np.uint8
    ref = pysot_style_crop(img, box)
    assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize('box', [(100, 80, 180, 130), (5, 10, 60, 200)])
def test_crop_matches_independent_bilinear(box):
    img = smooth_image(seed=1)
    ours = crop_search(img, box).astype(float)
    ref = numpy_bilinear_crop(img, box)
    # Interior pixels (away from the image border, where OpenCV blends with the border colour slightly
    # differently) must agree within 1 grey level.
    m = search_crop_affine(box)
    a, c, d = m[0, 0], m[0, 2], m[1, 2]
    xs = (np.arange(511) - c) / a
    ys = (np.arange(511) - d) / a
    inside = ((ys[:, None] > 1) & (ys[:, None] < img.shape[0] - 2) & (xs[None] > 1) & (xs[None] < img.shape[1] - 2))
    assert inside.sum() > 1000
    assert np.abs(ours - ref)[inside].max() <= 1.0
    outside = ((ys[:, None] < -2) | (ys[:, None] > img.shape[0] + 1)) & np.ones((1, 511), bool)
    if outside.any():  # padding is the frame's mean colour (rounded)
        assert np.abs(ours[outside] - img.reshape(-1, 3).mean(0)).max() <= 0.5 + 1e-6


def test_padding_is_mean_colour():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, :, 0], img[:50, :, 1], img[:, :, 2] = 200, 100, 7
    assert mean_colour(img) == pytest.approx((200, 50, 7))
    crop = crop_search(img, (0, 0, 10, 10))  # box at the corner: the crop's top-left is padding
    assert tuple(crop[0, 0]) == (200, 50, 7)


def test_sizes_and_510_quirk():
    w, h = 100.0, 50.0
    s_z = siamfc_crop_size(w, h)
    assert s_z == pytest.approx(math.sqrt(175 * 125))
    assert search_crop_side(w, h) == pytest.approx(s_z * 511 / 127)
    m = search_crop_affine((200, 100, 300, 150))
    # centre -> pixel 255 exactly; scale is 510 / s_x (PySOT maps s_x onto out-1 px)
    assert m[0, 0] * 250 + m[0, 2] == pytest.approx(255.0)
    assert m[1, 1] * 125 + m[1, 2] == pytest.approx(255.0)
    assert m[0, 0] == pytest.approx(510 / (s_z * 511 / 127))


def test_box_on_crop_matches_get_bbox():
    # PySOT's _get_bbox on a 511 crop: a square object is always 63.5 x 63.5 (127 / 2 for context
    # 0.5), 100 x 50 -> 85.9 x 42.9, centred at 255
    for side in (10, 77, 400):
        x1, y1, x2, y2 = box_on_crop((3, 4, 3 + side, 4 + side))
        assert (x2 - x1, y2 - y1) == pytest.approx((63.5, 63.5))
        assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((255, 255))
    x1, y1, x2, y2 = box_on_crop((0, 0, 100, 50))
    assert (x2 - x1, y2 - y1) == pytest.approx((85.9, 42.9), abs=0.05)
