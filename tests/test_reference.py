"""Reference (numpy/OpenCV) execution of pair plans, and the PySOT-style ReferenceDataset."""
import dataclasses
import shutil

import cv2
import numpy as np
import pytest
import torch

from mask_fixtures import build_mask_shards, mask_cfg
from pipeline.ingest import build_dataset
from pipeline.reference import ReferenceDataset, blur_kernel, render_image, render_mask, render_pair
from pipeline.sampling import PairSampler
from pipeline.shards import ShardReader, decode_mask, shard_dir
from pipeline.synthetic import make_dataset
from sampling_fixtures import build_test_shards, overrides
from shard_damage import overwrite_crop
from train.config import load_config


@pytest.fixture(scope='module')
def shard_root(tmp_path_factory):
    return build_test_shards(tmp_path_factory.mktemp('reference'))


@pytest.fixture(scope='module')
def readers(shard_root):
    return [ShardReader(shard_dir(shard_root, 'VID')), ShardReader(shard_dir(shard_root, 'COCO'))]


def jpegs(readers, plan):
    (dt, et), (ds, es) = plan.template_ref, plan.search_ref
    return readers[dt].jpeg_at(et), readers[ds].jpeg_at(es)


def crossing(profile, start, step, level):
    """Sub-pixel position where `profile`, walked from `start` by `step`, first reaches `level`."""
    j = start
    while profile[j] < level:
        j += step
    prev = j - step
    return prev + step * (level - profile[prev]) / (profile[j] - profile[prev])


def measured_edges(image, box):
    """Sub-pixel rectangle edges (x1, y1, x2, y2) on lines through the box centre, or None per edge."""
    gray = image.mean(axis=2)
    n = gray.shape[0]
    cx, cy = int(round((box[0] + box[2]) / 2)), int(round((box[1] + box[3]) / 2))
    out = [None] * 4
    for axis, line in ((0, gray[min(max(cy, 0), n - 1), :]), (1, gray[:, min(max(cx, 0), n - 1)])):
        lo, hi = box[axis], box[axis + 2]
        inside = line[max(int(lo) + 3, 0):min(int(hi) - 2, n)]
        for k, (edge, step) in enumerate(((lo, -1), (hi, 1))):
            if not (5 < edge < n - 6) or len(inside) < 3:
                continue
            outside = line[int(edge) + 4 * step:int(edge) + 8 * step:step]
            level = (np.median(inside) + np.median(outside)) / 2
            start = int(round((lo + hi) / 2))
            # walk outwards from the centre: the profile falls below `level` at the edge
            out[axis + 2 * k] = crossing(-line, start, step, -level)
    return out


def test_rectangle_lands_on_plan_box_including_flip(readers):
    cfg = load_config(None, overrides=overrides(**{'DATASET.SEARCH.FLIP': 0.5, 'DATASET.TEMPLATE.FLIP': 0.5,
                                                   'DATASET.NEG': 0.3, 'DATASET.GRAY': 0.2}))
    sampler = PairSampler(cfg, readers, seed=3)
    checked_edges, flipped = 0, 0
    for i in range(40):
        plan = sampler.plan(0, i)
        images = render_pair(plan, *jpegs(readers, plan))
        for image, aug in zip(images, (plan.template, plan.search)):
            assert image.shape == (aug.out_size, aug.out_size, 3) and image.dtype == np.float32
            box = aug.box.astype(np.float64)
            for k, got in enumerate(measured_edges(image, box)):
                if got is not None:
                    assert abs(got - box[k]) <= 1.0, (i, k, aug.box, got)
                    checked_edges += 1
            flipped += aug.flip
    assert checked_edges > 100 and flipped > 5


def _plan(readers, **extra):
    cfg = load_config(None, overrides=overrides(**extra))
    return PairSampler(cfg, readers, seed=1).plan(0, 0)


def test_colour_offset_is_subtracted_unclipped(readers):
    plan = _plan(readers)
    image = cv2.imdecode(np.frombuffer(jpegs(readers, plan)[1], np.uint8), cv2.IMREAD_COLOR)
    aug = plan.search
    assert np.any(aug.color_offset != 0) and aug.blur_size == 0
    plain = render_image(image, dataclasses.replace(aug, color_offset=np.zeros(3, np.float32)), False)
    coloured = render_image(image, aug, False)
    np.testing.assert_allclose(plain - coloured, np.broadcast_to(aug.color_offset, plain.shape), atol=1e-4)
    # a bright offset pushes values outside 0..255 and they are kept
    strong = dataclasses.replace(aug, color_offset=np.array([-300, 0, 300], np.float32))
    out = render_image(image, strong, False)
    assert out[..., 0].max() > 255 and out[..., 2].min() < 0


def test_blur_kernel_is_pysots_cross():
    k = blur_kernel(7, 0.25)
    assert k.shape == (7, 7) and abs(k.sum() - 1) < 1e-12
    assert k[3, 3] == pytest.approx(1 / 7)
    assert k[0, 3] == pytest.approx(0.25 / 7) and k[3, 0] == pytest.approx(0.75 / 7)
    assert np.count_nonzero(k) == 13


def test_blur_equals_row_plus_column_filters(readers):
    # what a separable implementation (e.g. the DALI graph) computes must equal the cross kernel
    plan = _plan(readers, **{'DATASET.SEARCH.BLUR': 1.0})
    aug = plan.search
    assert aug.blur_size >= 5
    image = cv2.imdecode(np.frombuffer(jpegs(readers, plan)[1], np.uint8), cv2.IMREAD_COLOR)
    unblurred = render_image(image, dataclasses.replace(aug, blur_size=0), False)
    n = aug.blur_size
    row = cv2.filter2D(unblurred, -1, np.full((1, n), 1.0 / n))
    col = cv2.filter2D(unblurred, -1, np.full((n, 1), 1.0 / n))
    expected = (1 - aug.blur_wx) * row + aug.blur_wx * col
    np.testing.assert_allclose(render_image(image, aug, False), expected, atol=1e-3)


def test_flip_and_gray(readers):
    plan = _plan(readers, **{'DATASET.SEARCH.FLIP': 1.0})
    image = cv2.imdecode(np.frombuffer(jpegs(readers, plan)[1], np.uint8), cv2.IMREAD_COLOR)
    flipped = render_image(image, plan.search, False)
    unflipped = render_image(image, dataclasses.replace(plan.search, flip=False), False)
    np.testing.assert_array_equal(flipped, unflipped[:, ::-1])
    gray = render_image(image, dataclasses.replace(plan.search, color_offset=np.zeros(3, np.float32)), True)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_reference_dataset_items(shard_root):
    cfg = load_config(None, overrides=overrides(**{'DATASET.NEG': 0.3}))
    ds = ReferenceDataset(cfg, shard_root, seed=5, epoch=1, rank=1, world_size=2)
    assert len(ds) == 20
    neg_seen = pos_seen = 0
    for i in range(len(ds)):
        item = ds[i]
        assert item['template'].shape == (3, 127, 127) and item['search'].shape == (3, 255, 255)
        assert item['template'].dtype == item['search'].dtype == np.float32
        assert item['label_cls'].shape == (5, 25, 25) and item['label_cls'].dtype == np.int64
        assert item['label_loc'].shape == (4, 5, 25, 25) and item['label_loc_weight'].shape == (5, 25, 25)
        assert item['bbox'].shape == (4,) and item['skipped'] == 0
        if item['neg']:
            neg_seen += 1
            assert not (item['label_cls'] == 1).any() and (item['label_cls'] == 0).sum() <= 16
        elif (item['label_cls'] == 1).any():
            pos_seen += 1
            assert item['label_loc_weight'].sum() == pytest.approx(1.0, abs=1e-4)
    assert neg_seen and pos_seen
    again = ReferenceDataset(cfg, shard_root, seed=5, epoch=1, rank=1, world_size=2)[7]
    first = ds[7]
    for k in first:
        np.testing.assert_array_equal(np.asarray(first[k]), np.asarray(again[k]))


def test_reference_dataset_in_dataloader_workers(shard_root):
    cfg = load_config(None, overrides=overrides())
    ds = ReferenceDataset(cfg, shard_root, seed=2, epoch=0)
    single = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, num_workers=0)))
    multi = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)))
    for k in single:
        assert torch.equal(single[k], multi[k]), k


def test_undecodable_crop_is_skipped_and_counted(shard_root, tmp_path):
    root = tmp_path / 'cache'
    shutil.copytree(shard_root, root)
    cfg = load_config(None, overrides=overrides())
    ds = ReferenceDataset(cfg, root, seed=4, epoch=0)
    plan = ds.sampler.plan(0, int(ds.indices[3]))
    d, e = plan.search_ref
    overwrite_crop(ds.readers[d], e, b'not a jpeg')
    item = ds[3]
    assert item['skipped'] >= 1 and ds.skipped >= 1
    assert item['search'].shape == (3, 255, 255)
    replacement = ds.sampler.plan(0, int(ds.indices[3]), attempt=item['skipped'])
    np.testing.assert_array_equal(item['bbox'], replacement.search.box)


def test_reference_dataset_on_synthetic_shards(tmp_path):
    # the real path: synthetic raw datasets -> shard builder -> sampler + reference rendering
    for name in ('VID', 'COCO'):
        make_dataset(name, tmp_path / 'raw' / name, videos=4, frames=8, seed=0)
        build_dataset(name, tmp_path / 'raw' / name, out_root=tmp_path / 'cache', progress=False)
    cfg = load_config(None, overrides=overrides(**{'DATASET.VIDEOS_PER_EPOCH': 16, 'DATASET.SEARCH.BLUR': 0.5}))
    ds = ReferenceDataset(cfg, tmp_path / 'cache', seed=0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=16)))
    assert batch['template'].shape == (16, 3, 127, 127) and batch['search'].shape == (16, 3, 255, 255)
    assert torch.isfinite(batch['search']).all() and batch['search'].std() > 5
    centres = (batch['bbox'][:, :2] + batch['bbox'][:, 2:]) / 2
    assert ((centres - 127).abs() <= 64 / 0.82 + 1).all()   # max search shift / min scale
    n_pos = (batch['label_cls'] == 1).sum((1, 2, 3))
    n_neg = (batch['label_cls'] == 0).sum((1, 2, 3))
    assert (n_pos <= 16).all() and (n_neg[~batch['neg']] == 48).all() and (n_neg[batch['neg']] <= 16).all()


def test_reference_dataset_mask_items(tmp_path):
    """With MASK.MASK the items carry the authors' search mask and the positive-anchor weight;
    pairs without a mask label (negatives, VID) get -1 and 0."""
    root = build_mask_shards(tmp_path)
    ds = ReferenceDataset(mask_cfg(**{'DATASET.NEG': 0.3}), root, seed=1)
    kinds = set()
    for i in range(len(ds)):
        item = ds[i]
        plan = ds.plan(int(ds.indices[i]))
        mask, weight = item['label_mask'], item['label_mask_weight']
        assert mask.shape == (1, 255, 255) and weight.shape == (1, 25, 25)
        assert mask.dtype == weight.dtype == np.float32
        if plan.search_mask:
            d, e = plan.search_ref
            full = decode_mask(*ds.readers[d].mask_at(e), 511)
            np.testing.assert_array_equal(mask, render_mask(full, plan.search))
            assert (mask == 1).any()
            np.testing.assert_array_equal(weight, (item['label_cls'] == 1).any(0, keepdims=True))
        else:
            assert (mask == -1).all() and (weight == 0).all()
        kinds.add('mask' if plan.search_mask else 'neg' if plan.neg else 'vid')
    assert kinds == {'mask', 'neg', 'vid'}
    rpn = ReferenceDataset(mask_cfg(**{'MASK.MASK': False}), root, seed=1)[0]
    assert 'label_mask' not in rpn and 'label_mask_weight' not in rpn


def test_render_mask_follows_the_image(readers):
    """The authors' mask crop moves with the image crop: for an image painted from its mask,
    the cropped mask marks the bright pixels of the cropped image (flip included)."""
    plan = _plan(readers, **{'DATASET.SEARCH.FLIP': 1.0, 'DATASET.SEARCH.COLOR': 0.0})
    rng = np.random.default_rng(0)
    mask = (cv2.resize(rng.random((24, 24)), (511, 511), interpolation=cv2.INTER_CUBIC) > 0.5)
    image = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)
    assert plan.search.flip
    bright = render_image(image, plan.search, False).mean(axis=2) > 127.5
    cropped = render_mask(mask.astype(np.uint8), plan.search)
    assert cropped.shape == (1, 255, 255) and set(np.unique(cropped)) == {-1.0, 1.0}
    assert ((cropped[0] > 0) == bright).mean() > 0.99
    unflipped = render_mask(mask.astype(np.uint8), dataclasses.replace(plan.search, flip=False))
    assert ((unflipped[0] > 0) == bright).mean() < 0.8
