"""The fused CPU crop kernel (pipeline.crop_kernel) against the OpenCV reference, directly."""
import dataclasses

import cv2
import numpy as np
import pytest

from pipeline.crop_kernel import NUM_PARAMS, PARAMS, crop_params, render_crop
from pipeline.dali_graph import decode_regions
from pipeline.reference import render_image
from pipeline.sampling import ImageAug, draw_image_aug
from test_dali_graph import aug_cfg, textured_crop

BOX = np.array([220.0, 210.0, 290.0, 300.0])
ONE_LEVEL = 1.0 + 1e-4  # one grey level, plus float32 rounding of the colour offset


@pytest.fixture(scope="module")
def bgr():
    return cv2.imdecode(np.frombuffer(textured_crop(11), np.uint8), cv2.IMREAD_COLOR)


def kernel_render(bgr, aug, gray, roi=True):
    """The kernel's output for one image, fed the decoded region exactly as the graph does."""
    anchors, shapes = decode_regions([aug.crop], bgr.shape[0], roi)
    (x0, y0), (w, h) = anchors[0], shapes[0]
    region = np.ascontiguousarray(bgr[y0:y0 + h, x0:x0 + w, ::-1])  # the decoder gives RGB
    out = np.full((3, aug.out_size, aug.out_size), np.nan, np.float32)  # every pixel is written
    render_crop(out, region, crop_params([aug], [gray], anchors)[0])
    return out


def max_diff(bgr, aug, gray, roi=True):
    ref = render_image(bgr, aug, gray).transpose(2, 0, 1)
    return float(np.abs(kernel_render(bgr, aug, gray, roi) - ref).max())


def random_augs(seed, n, out_size, shift, scale, **kw):
    rng = np.random.default_rng(seed)
    return [draw_image_aug(rng.random(9), rng.standard_normal(3), BOX,
                           aug_cfg(shift, scale, **kw), out_size) for _ in range(n)]


@pytest.mark.parametrize("gray", [False, True])
@pytest.mark.parametrize("out_size,shift,scale", [(127, 4, 0.05), (255, 64, 0.18)])
def test_kernel_matches_reference(bgr, gray, out_size, shift, scale):
    """Crop, gray, colour and flip: within one grey level of cv2 (its 1/32-pixel fixed-point
    bilinear weights are the only difference)."""
    augs = random_augs(out_size + gray, 12, out_size, shift, scale, flip=0.5)
    assert any(a.flip for a in augs) and not all(a.flip for a in augs)
    for aug in augs:
        assert max_diff(bgr, aug, gray) <= ONE_LEVEL


@pytest.mark.parametrize("size", [5, 7, 23, 45])
@pytest.mark.parametrize("colour", [True, False])
def test_kernel_blur_matches_cv2_filter2d(bgr, size, colour):
    """PySOT's cross kernel via running sums == filter2D with the k x k kernel (reflect_101).
    Without a colour offset PySOT blurs uint8 and rounds: so must the kernel."""
    for aug in random_augs(size, 4, 255, 64, 0.18, color=1.0 if colour else 0.0):
        blurred = dataclasses.replace(aug, blur_size=size, blur_wx=0.3)
        assert max_diff(bgr, blurred, gray=False) <= ONE_LEVEL
        if not colour:
            out = kernel_render(bgr, blurred, gray=False)
            assert np.array_equal(out, np.round(out)) and out.min() >= 0 and out.max() <= 255


def test_blur_is_not_a_no_op(bgr):
    aug = random_augs(3, 1, 255, 64, 0.18)[0]
    sharp = kernel_render(bgr, aug, False)
    blurred = kernel_render(bgr, dataclasses.replace(aug, blur_size=21, blur_wx=0.5), False)
    assert np.abs(blurred - sharp).mean() > 1.0


def test_crop_beyond_the_image_reads_zero(bgr):
    """Boxes reaching past the 511 crop (not produced by PySOT's clamped shifts, but legal
    input): cv2's constant 0 border, with and without region decoding."""
    for crop in ([-40.3, -25.7, 300.2, 280.9], [300.5, 320.25, 560.0, 540.5]):
        aug = ImageAug(crop=np.array(crop), out_size=127, color_offset=np.zeros(3, np.float32),
                       blur_size=0, blur_wx=0.0, flip=False, box=np.zeros(4, np.float32))
        out = kernel_render(bgr, aug, False)
        assert (out == 0).any(axis=0).mean() > 0.05   # a real black band
        for roi in (True, False):
            assert max_diff(bgr, aug, False, roi) <= ONE_LEVEL


def test_crop_params_layout():
    aug = ImageAug(crop=np.array([10.0, 20.0, 264.0, 528.0]), out_size=255,
                   color_offset=np.array([1.5, -2.0, 3.0], np.float32), blur_size=7,
                   blur_wx=0.25, flip=True, box=np.zeros(4, np.float32))
    params = crop_params([aug, aug], [True, False], [[4, 6], [0, 0]])
    assert params.shape == (2, NUM_PARAMS) and params.dtype == np.float32
    first = dict(zip(PARAMS, params[0].tolist()))
    assert first == {"x1": 6.0, "y1": 14.0, "step_x": 1.0, "step_y": 2.0, "flip": 1.0,
                     "gray": 1.0, "offset_b": 1.5, "offset_g": -2.0, "offset_r": 3.0,
                     "blur_size": 7.0, "blur_wx": 0.25}
    assert params[1, PARAMS.index("gray")] == 0 and params[1, PARAMS.index("x1")] == 10.0
