"""The DALI pair graph (CPU operators) against the OpenCV reference on fixed plans.

Both variants run here: the fused crop kernel (the CPU default) and the native DALI operators
that the GPU graph uses (kernel=False), so the GPU graph's logic is checked on every CPU run.
The SiamMask search mask is checked against the SiamMask authors' augmentation the same way.
"""
import dataclasses
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from crop511_fixtures import blob_mask
from mask_fixtures import assert_mask_like_authors
from pipeline.crop_source import NO_MASK, decode_mask_region
from pipeline.dali_graph import PairGraph, decode_regions, resize_window
from pipeline.reference import decode_crop, render_image
from pipeline.sampling import ImageAug, PairPlan, draw_image_aug
from pipeline.shards import encode_mask

BATCH = 6
KIND_SEEDS = {"plain": 11, "blur": 12, "gray": 13, "flip": 14}  # fixed: a failure reproduces


def render(graph, plans, template_jpegs, search_jpegs, masks=None):
    """One batch through `graph` as the loader drives it (inputs fed, scheduled, outputs taken),
    synchronously: (template, search[, search mask]) as numpy arrays."""
    graph.feed_values(graph.inputs.values(plans, template_jpegs, search_jpegs, masks))
    graph.schedule()
    outputs = graph.outputs()
    if graph.device == "gpu":
        outputs = [out.as_cpu() for out in outputs]
    return tuple(np.array(out.as_tensor()) for out in outputs)


def textured_crop(seed: int) -> bytes:
    """511x511 JPEG with smooth structure, fine noise and a sharp-edged object."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (511, 511),
                     interpolation=cv2.INTER_CUBIC)
    img = cv2.add(img, rng.integers(0, 12, img.shape, dtype=np.uint8))
    checker = ((np.indices((90, 70)).sum(0) // 9) % 2).astype(np.uint8)[..., None] * 200
    img[210:300, 220:290] = checker + 30
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return enc.tobytes()


def aug_cfg(shift, scale, blur=0.0, flip=0.0, color=1.0):
    return SimpleNamespace(SHIFT=shift, SCALE=scale, BLUR=blur, FLIP=flip, COLOR=color)


def make_plans(seed: int, n: int, blur=0.0, flip=0.0, gray=False, search_size=255,
               search_shift=64, search_mask=False):
    """PairPlans from the real augmentation drawing (PySOT's 8-GPU ranges; the SiamMask refine
    stage's with search_size 143, search_shift 8)."""
    rng = np.random.default_rng(seed)
    box = np.array([220.0, 210.0, 290.0, 300.0])
    plans = []
    for _ in range(n):
        template = draw_image_aug(rng.random(9), rng.standard_normal(3), box,
                                  aug_cfg(4, 0.05, blur, flip), 127)
        search = draw_image_aug(rng.random(9), rng.standard_normal(3), box,
                                aug_cfg(search_shift, 0.18, blur, flip), search_size)
        plans.append(PairPlan(template_ref=(0, 0), search_ref=(0, 0), neg=False, gray=gray,
                              template=template, search=search, search_mask=search_mask))
    return plans


@pytest.fixture(scope="module")
def jpegs():
    return [textured_crop(s) for s in range(BATCH)]


@pytest.fixture(scope="module", params=[True, False], ids=["kernel", "native"])
def graph(request):
    return PairGraph(BATCH, device="cpu", num_threads=2, kernel=request.param)


def compare(plans, jpegs, out_z, out_x):
    """Per image: (mean abs diff, 99.9th percentile abs diff) against the reference."""
    stats = []
    for plan, zj, xj, z, x in zip(plans, jpegs, jpegs[::-1], out_z, out_x):
        for aug, jpeg, out in ((plan.template, zj, z), (plan.search, xj, x)):
            ref = render_image(decode_crop(jpeg), aug, plan.gray)
            assert out.shape == (3, aug.out_size, aug.out_size)
            diff = np.abs(out.transpose(1, 2, 0) - ref)
            stats.append((float(diff.mean()), float(np.percentile(diff, 99.9)), float(diff.max())))
    return np.array(stats)


@pytest.mark.parametrize("kind", ["plain", "blur", "gray", "flip"])
def test_graph_matches_reference(graph, jpegs, kind):
    plans = make_plans(seed=KIND_SEEDS[kind], n=BATCH, blur=1.0 if kind == "blur" else 0.0,
                       flip=1.0 if kind == "flip" else 0.0, gray=kind == "gray")
    if kind == "blur":
        assert all(p.search.blur_size >= 5 for p in plans)
    if kind == "flip":
        assert all(p.search.flip and p.template.flip for p in plans)
    z, x = render(graph, plans, jpegs, jpegs[::-1])
    assert z.dtype == np.float32 and x.dtype == np.float32
    stats = compare(plans, jpegs, z, x)
    # Differences come only from bilinear rounding (cv2 uses 5-bit fixed-point weights and
    # rounds to uint8 after the warp): well under a grey level on average.  The native graph
    # converts to gray after the crop where cv2 rounds gray before it (a couple of levels at
    # the worst pixels); the kernel converts the source pixels as cv2 does (one level).
    assert stats[:, 0].max() < 0.3, stats
    assert stats[:, 1].max() <= 1.5, stats
    assert stats[:, 2].max() <= (1.0 + 1e-4 if graph.kernel else 2.5), stats


def test_blur_changes_the_image(graph, jpegs):
    """The cross-kernel blur is really applied (the comparison above would not notice a
    reference that also skipped it)."""
    plans = make_plans(seed=5, n=BATCH, blur=1.0)
    sharp = [PairPlan(p.template_ref, p.search_ref, p.neg, p.gray, p.template,
                      ImageAug(p.search.crop, 255, p.search.color_offset, 0, 0.0, False,
                               p.search.box)) for p in plans]
    _, blurred = render(graph, plans, jpegs, jpegs)
    _, plain = render(graph, sharp, jpegs, jpegs)
    assert np.abs(blurred - plain).mean() > 1.0


@pytest.mark.parametrize("kernel", [True, False])
def test_roi_decoding_equals_full_decoding(jpegs, kernel):
    plans = make_plans(seed=3, n=BATCH, blur=0.5)
    full = render(PairGraph(BATCH, device="cpu", num_threads=1, roi_decode=False, kernel=kernel),
                  plans, jpegs, jpegs)
    roi = render(PairGraph(BATCH, device="cpu", num_threads=1, roi_decode=True, kernel=kernel),
                 plans, jpegs, jpegs)
    for a, b in zip(full, roi):
        assert np.abs(a - b).max() <= 1.0  # libjpeg's chroma upsampling at region edges


@pytest.mark.parametrize("kernel", [True, False])
def test_partial_batch_and_thread_count(jpegs, kernel):
    plans = make_plans(seed=4, n=3, blur=0.5)
    one = render(PairGraph(BATCH, device="cpu", num_threads=1, kernel=kernel), plans, jpegs[:3], jpegs[:3])
    three = render(PairGraph(BATCH, device="cpu", num_threads=3, kernel=kernel), plans, jpegs[:3], jpegs[:3])
    assert one[0].shape == (3, 3, 127, 127) and one[1].shape == (3, 3, 255, 255)
    assert all(np.array_equal(a, b) for a, b in zip(one, three))


def test_decode_region_covers_the_crop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        aug = draw_image_aug(rng.random(9), rng.standard_normal(3), np.array([200., 200, 300, 300]),
                             aug_cfg(64, 0.18), 255)
        anchors, shapes = decode_regions(aug.crop, 511, roi=True)
        (x0, y0), (w, h) = anchors[0], shapes[0]
        x1, y1, x2, y2 = aug.crop
        assert 0 <= x0 <= np.floor(x1) and 0 <= y0 <= np.floor(y1)
        assert min(np.floor(x2) + 2, 511) <= x0 + w <= 511
        assert min(np.floor(y2) + 2, 511) <= y0 + h <= 511


def test_resize_window_maps_pixel_centres_like_cv2():
    aug = ImageAug(crop=np.array([10.0, 20.0, 300.0, 200.0]), out_size=255,
                   color_offset=np.zeros(3, np.float32), blur_size=0, blur_wx=0.0, flip=False,
                   box=np.zeros(4, np.float32))
    start, end = resize_window(aug, roi_anchor=(4, 6))
    # output pixel j (centre j + .5 in corner units) samples source centre x1 + j * k
    k = (300.0 - 10.0) / 254
    for j in (0, 100, 254):
        corner = start[1] + (j + 0.5) * (end[1] - start[1]) / 255
        assert corner - 0.5 == pytest.approx(10.0 + j * k - 4, abs=1e-3)
    flipped = resize_window(ImageAug(aug.crop, 255, aug.color_offset, 0, 0.0, True, aug.box))
    unflipped = resize_window(aug)
    assert flipped[0][1] == unflipped[1][1] and flipped[1][1] == unflipped[0][1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        PairGraph(0)
    with pytest.raises(ValueError, match="device"):
        PairGraph(2, device="tpu")
    with pytest.raises(ValueError, match="CPU operator"):
        PairGraph(2, device="gpu", kernel=True)


# ---- SiamMask: the search mask ----------------------------------------------------------------
def object_masks(seed: int, n: int) -> list:
    """Full 511 masks of objects around the plans' box, of varied shapes."""
    rng = np.random.default_rng(seed)
    return [blob_mask(rng, (200 + rng.uniform(-15, 15), 190 + rng.uniform(-15, 15),
                            300 + rng.uniform(-15, 15), 320 + rng.uniform(-15, 15)))
            for _ in range(n)]


def stored(masks) -> list:
    """The masks as the loader hands them to the graph: through the shards' codec (tight PNG
    region) and the reader threads' decode."""
    return [decode_mask_region(*encode_mask(m), 511) for m in masks]


@pytest.fixture(scope="module", params=[True, False], ids=["kernel", "native"])
def mask_graph(request):
    return PairGraph(BATCH, device="cpu", num_threads=2, kernel=request.param, mask=True)


@pytest.mark.parametrize("kind", ["plain", "flip", "blur-gray"])
def test_search_mask_is_the_authors_crop_of_the_mask(mask_graph, jpegs, kind):
    """Same crop, scale and flip as the search image; no gray, colour or blur; {-1, +1}."""
    plans = make_plans(seed=30 + len(kind), n=BATCH, blur=1.0 if kind == "blur-gray" else 0.0,
                       flip=0.5 if kind == "flip" else 0.0, gray=kind == "blur-gray",
                       search_mask=True)
    if kind == "flip":
        assert any(p.search.flip for p in plans) and not all(p.search.flip for p in plans)
    masks = object_masks(seed=len(kind), n=BATCH)
    z, x, m = render(mask_graph, plans, jpegs, jpegs[::-1], stored(masks))
    assert m.shape == (BATCH, 1, 255, 255) and m.dtype == np.float32
    for i, (plan, mask) in enumerate(zip(plans, masks)):
        assert_mask_like_authors(m[i], mask, plan.search, f"{kind} pair {i}")
        assert 0.02 < (m[i] > 0).mean() < 0.6   # the object is there, not everything
    # the images are those of a graph without masks
    plain = PairGraph(BATCH, device="cpu", num_threads=2, kernel=mask_graph.kernel)
    z0, x0 = render(plain, plans, jpegs, jpegs[::-1])
    assert np.array_equal(z, z0) and np.array_equal(x, x0)


def test_search_mask_of_the_refine_stage(mask_graph, jpegs):
    """Search 143 (the SiamMask refine stage): the mask follows the search crop's size."""
    graph = PairGraph(BATCH, search_size=143, device="cpu", num_threads=2,
                      kernel=mask_graph.kernel, mask=True)
    plans = make_plans(seed=40, n=BATCH, flip=0.5, search_size=143, search_shift=8,
                       search_mask=True)
    masks = object_masks(seed=41, n=BATCH)
    _, x, m = render(graph, plans, jpegs, jpegs, stored(masks))
    assert x.shape == (BATCH, 3, 143, 143) and m.shape == (BATCH, 1, 143, 143)
    for i, (plan, mask) in enumerate(zip(plans, masks)):
        assert_mask_like_authors(m[i], mask, plan.search, f"refine pair {i}")


def test_pairs_without_a_mask_get_background(mask_graph, jpegs):
    """NO_MASK (negatives, datasets without masks) and an empty stored mask: -1 everywhere."""
    plans = make_plans(seed=42, n=BATCH, flip=0.5)
    empty = decode_mask_region(*encode_mask(np.zeros((511, 511), np.uint8)), 511)
    assert empty is NO_MASK
    masks = [NO_MASK, empty] * (BATCH // 2)
    _, _, m = render(mask_graph, plans, jpegs, jpegs, masks)
    assert (m == -1).all()


def test_a_mask_graph_needs_its_masks(mask_graph, jpegs):
    plans = make_plans(seed=43, n=BATCH)
    with pytest.raises(ValueError, match="one search mask per pair"):
        mask_graph.inputs.values(plans, jpegs, jpegs)
    with pytest.raises(ValueError, match="one search mask per pair"):
        mask_graph.inputs.values(plans, jpegs, jpegs, [NO_MASK])


def test_mask_comparison_catches_a_wrong_mask(jpegs):
    """The check against the authors fails for a mask shifted by one pixel or not flipped."""
    plan = make_plans(seed=44, n=1, flip=1.0, search_mask=True)[0]
    mask = object_masks(seed=45, n=1)[0]
    graph = PairGraph(1, device="cpu", num_threads=1, mask=True)
    _, _, m = render(graph, [plan], jpegs[:1], jpegs[:1], stored([mask]))
    assert_mask_like_authors(m[0], mask, plan.search)
    with pytest.raises(AssertionError):
        assert_mask_like_authors(np.roll(m[0], 1, axis=2), mask, plan.search)
    with pytest.raises(AssertionError):
        assert_mask_like_authors(m[0], mask, dataclasses.replace(plan.search, flip=False))
