"""Vectorised planning (PairSampler.plan_batch, sample_draws) and the vectorised DALI inputs:
batched results equal the per-pair ones, rows do not depend on each other, the draws are
uniform / normal and independent."""
import numpy as np
import pytest

from pipeline.dali_graph import blur_kernels, resize_window, resize_windows
from pipeline.reference import blur_kernel
from pipeline.sampling import AugBatch, PairSampler, PlanBatch, sample_draws
from pipeline.shards import ShardReader, shard_dir
from sampling_fixtures import build_test_shards, overrides
from test_sampling import plan_key
from train.config import load_config


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    root = build_test_shards(tmp_path_factory.mktemp("plans"))
    readers = [ShardReader(shard_dir(root, "VID")), ShardReader(shard_dir(root, "COCO"))]
    cfg = load_config(None, overrides=overrides(**{"DATASET.NEG": 0.3, "DATASET.GRAY": 0.3,
                                                   "DATASET.SEARCH.BLUR": 0.5,
                                                   "DATASET.SEARCH.FLIP": 0.5,
                                                   "DATASET.VIDEOS_PER_EPOCH": 200}))
    return PairSampler(cfg, readers, seed=5)


def test_batch_rows_equal_single_plans_whatever_the_batch(sampler):
    indices = np.arange(60)
    attempts = indices % 3
    batch = sampler.plan_batch(2, indices, attempts)
    assert len(batch) == 60 and batch.neg.any() and (~batch.neg).any() and batch.gray.any()
    for i in range(60):
        assert plan_key(batch[i]) == plan_key(sampler.plan(2, int(indices[i]), int(attempts[i])))
    order = np.random.default_rng(0).permutation(60)
    shuffled = sampler.plan_batch(2, indices[order], attempts[order])
    for j, i in enumerate(order):
        assert plan_key(shuffled[j]) == plan_key(batch[i])
    with pytest.raises(IndexError, match="outside epoch"):
        sampler.plan_batch(2, [0, 200])


def test_take_concat_and_stack_round_trip(sampler):
    batch = sampler.plan_batch(0, np.arange(10))
    again = PlanBatch.concat([batch.take(np.arange(4)), batch.take(np.arange(4, 10))])
    assert [plan_key(again[i]) for i in range(10)] == [plan_key(batch[i]) for i in range(10)]
    stacked = PlanBatch.stack([batch[i] for i in range(10)])
    assert [plan_key(stacked[i]) for i in range(10)] == [plan_key(batch[i]) for i in range(10)]
    with pytest.raises(ValueError, match="one output size"):
        AugBatch.stack([batch.template[0], batch.search[0]])
    with pytest.raises(ValueError, match="different output sizes"):
        AugBatch.concat([batch.template, batch.search])


def test_draws_are_uniform_normal_and_independent():
    u, z = sample_draws(3, 1, np.arange(100_000), 0)
    assert u.shape == (100_000, 28) and z.shape == (100_000, 6)
    assert u.min() >= 0 and u.max() < 1
    # moments within ~5 standard errors; no correlation between slots or neighbouring samples
    assert np.all(np.abs(u.mean(0) - 0.5) < 5 * np.sqrt(1 / 12 / 1e5))
    assert np.all(np.abs(u.var(0) - 1 / 12) < 0.002)
    assert np.all(np.abs(z.mean(0)) < 0.02) and np.all(np.abs(z.var(0) - 1) < 0.02)
    corr = np.corrcoef(np.concatenate([u, z], axis=1).T) - np.eye(34)
    assert np.abs(corr).max() < 0.02
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.02
    counts = np.histogram(u[:, 7], bins=20, range=(0, 1))[0]
    assert ((counts - 5000) ** 2 / 5000).sum() < 50          # chi-square, 19 dof
    # every key component changes the stream
    base = sample_draws(3, 1, [7], 0)[0]
    for args in ((4, 1, [7], 0), (3, 2, [7], 0), (3, 1, [8], 0), (3, 1, [7], 1)):
        assert not np.array_equal(sample_draws(*args)[0], base)


def test_vectorised_resize_windows_and_blur_kernels(sampler):
    augs = sampler.plan_batch(0, np.arange(40)).search
    anchors = np.random.default_rng(1).integers(0, 50, (40, 2))
    start, end = resize_windows(augs, anchors)
    for i in range(40):
        one = resize_window(augs[i], tuple(anchors[i]))
        assert np.array_equal(one[0], start[i]) and np.array_equal(one[1], end[i])
    assert augs.blur_size.any() and not augs.blur_size.all()
    col, row = blur_kernels(augs)
    k = col.shape[1]
    assert k == augs.blur_size.max() and col.shape == (40, k, 1) and row.shape == (40, 1, k)
    for i in range(40):
        size = int(augs.blur_size[i])
        if not size:
            assert not col[i].any() and not row[i].any()
            continue
        cross = np.zeros((k, k))
        cross[:, k // 2] += col[i, :, 0]
        cross[k // 2, :] += row[i, 0, :]
        pad = (k - size) // 2
        expected = np.pad(blur_kernel(size, augs.blur_wx[i]), pad)
        np.testing.assert_allclose(cross, expected, atol=1e-7)
