"""PairSampler: PySOT's TrkDataset mixing, pair selection and augmentation parameters, on real shards."""
from collections import Counter

import numpy as np
import pytest

from pipeline.crop import box_on_crop
from pipeline.sampling import PairSampler
from pipeline.shards import ShardReader, shard_dir
from sampling_fixtures import COCO_IMAGES, VID_TRACKS, build_test_shards, overrides
from train.config import load_config

# PySOT's colour PCA matrix (augmentation.py rgbVar), written out independently of pipeline.sampling.
RGB_VAR = np.array([[-0.55919361, 0.98062831, -0.41940627],
                    [1.72091413, 0.19879334, -1.82968581],
                    [4.64467907, 4.73710203, 4.88324118]])
N_VID_VIDEOS, N_COCO_IMAGES = 6, len(COCO_IMAGES)


@pytest.fixture(scope='module')
def readers(tmp_path_factory):
    root = build_test_shards(tmp_path_factory.mktemp('sampling'))
    return [ShardReader(shard_dir(root, 'VID')), ShardReader(shard_dir(root, 'COCO'))]


def sampler(readers, seed=0, **extra):
    return PairSampler(load_config(None, overrides=overrides(**extra)), readers, seed)


def plan_key(plan):
    """Hashable summary of every field of a plan."""
    def aug(a):
        return (tuple(a.crop), a.out_size, tuple(a.color_offset), a.blur_size, a.blur_wx, a.flip, tuple(a.box))
    return (plan.template_ref, plan.search_ref, plan.neg, plan.gray, aug(plan.template), aug(plan.search))


def location(readers, ref):
    """(dataset, video, track id, frame) of a plan ref."""
    d, e = ref
    return (d,) + readers[d].entry_location(e)


def test_deterministic_for_a_seed(readers):
    a, b, c = sampler(readers, seed=7), sampler(readers, seed=7), sampler(readers, seed=8)
    keys_a = [plan_key(a.plan(0, i)) for i in range(40)]
    assert keys_a == [plan_key(b.plan(0, i)) for i in reversed(range(40))][::-1]
    assert keys_a != [plan_key(c.plan(0, i)) for i in range(40)]
    assert plan_key(a.plan(0, 3, attempt=1)) == plan_key(b.plan(0, 3, attempt=1))
    assert plan_key(a.plan(0, 3, attempt=1)) != plan_key(a.plan(0, 3))


def test_epochs_differ(readers):
    s = sampler(readers)
    assert not np.array_equal(s.epoch_order(0), s.epoch_order(1))
    assert [plan_key(s.plan(0, i)) for i in range(10)] != [plan_key(s.plan(1, i)) for i in range(10)]


def test_num_use_all_videos_each_round(readers):
    # NUM_USE -1 for both and VIDEOS_PER_EPOCH 0: an epoch is one round = every video once, shuffled
    s = sampler(readers, **{'DATASET.VIDEOS_PER_EPOCH': 0})
    assert len(s) == N_VID_VIDEOS + N_COCO_IMAGES
    for epoch in range(3):
        order = s.epoch_order(epoch)
        assert sorted(order.tolist()) == list(range(N_VID_VIDEOS + N_COCO_IMAGES))


def test_num_use_repeats_and_stream_continuity(readers):
    # VID NUM_USE 15 > 6 videos: reshuffled repeats (each video 2 or 3 times), fixed across epochs
    s = sampler(readers, **{'DATASET.VID.NUM_USE': 15, 'DATASET.VIDEOS_PER_EPOCH': 10})
    round_size = 15 + N_COCO_IMAGES
    vid_counts = Counter(v for v in s.round_picks.tolist() if v < N_VID_VIDEOS)
    assert sum(vid_counts.values()) == 15 and set(vid_counts.values()) <= {2, 3}
    assert len(vid_counts) == N_VID_VIDEOS
    # the epochs tile one stream whose consecutive rounds are each a shuffle of the same multiset
    stream = np.concatenate([s.epoch_order(e) for e in range(round_size)])   # 10 rounds
    expected = sorted(s.round_picks.tolist())
    rounds = stream.reshape(10, round_size)
    for r in rounds:
        assert sorted(r.tolist()) == expected
    assert len({tuple(r) for r in rounds}) == 10


def test_num_use_smaller_than_dataset(readers):
    s = sampler(readers, **{'DATASET.VID.NUM_USE': 4, 'DATASET.VIDEOS_PER_EPOCH': 0})
    vid = [v for v in s.round_picks.tolist() if v < N_VID_VIDEOS]
    assert len(vid) == 4 and len(set(vid)) == 4 and len(s) == 4 + N_COCO_IMAGES
    # the same 4 videos in every epoch (PySOT draws the per-dataset pick list once)
    for e in range(3):
        assert sorted(v for v in s.epoch_order(e).tolist() if v < N_VID_VIDEOS) == sorted(vid)


def test_ddp_slices_disjoint_equal_and_complete(readers):
    s = sampler(readers, **{'DATASET.VIDEOS_PER_EPOCH': 41})
    slices = [s.rank_indices(rank, 3) for rank in range(3)]
    assert [len(x) for x in slices] == [13, 13, 13]
    union = np.concatenate(slices)
    assert len(set(union.tolist())) == 39 and sorted(union.tolist()) == list(range(39))
    assert s.rank_indices().tolist() == list(range(41))
    # a rank's plan does not depend on the rank layout
    other = sampler(readers, **{'DATASET.VIDEOS_PER_EPOCH': 41})
    assert plan_key(s.plan(2, int(slices[1][4]))) == plan_key(other.plan(2, int(slices[1][4])))
    with pytest.raises(ValueError):
        s.rank_indices(3, 3)


def _object_frames(readers, d, video, track):
    return [f for (v, t, frames) in VID_TRACKS if (v, t) == (video, track) for f in frames] if d == 0 else [0]


def test_positive_pair_frame_window(readers):
    s = sampler(readers, **{'DATASET.NEG': 0.0, 'DATASET.VIDEOS_PER_EPOCH': 3000})
    offsets, tracks_seen, crossed_gap = Counter(), set(), False
    for i in range(3000):
        p = s.plan(0, i)
        assert not p.neg
        t, q = location(readers, p.template_ref), location(readers, p.search_ref)
        assert t[:3] == q[:3], "positive pair: same dataset, video and track"
        frames = _object_frames(readers, *t[:3])
        offset = frames.index(q[3]) - frames.index(t[3])   # distance in list positions
        assert abs(offset) <= (3 if t[0] == 0 else 1)
        if t[0] == 0:
            offsets[offset] += 1
            tracks_seen.add(t[1:3])
            crossed_gap |= t[1:3] == ('v0', 1) and (t[3] < 10) != (q[3] < 10)
    assert set(offsets) == set(range(-3, 4))
    # the gap in v0/track 1 is crossed: frames 7 and 12 are adjacent list positions
    assert crossed_gap and len(tracks_seen) == len(VID_TRACKS)


def test_template_frame_uniform_over_track(readers):
    s = sampler(readers, **{'DATASET.NEG': 0.0, 'DATASET.VIDEOS_PER_EPOCH': 4000})
    frames = Counter()
    tracks = Counter()
    for i in range(4000):
        t = location(readers, s.plan(0, i).template_ref)
        if t[1] == 'v0':
            tracks[t[2]] += 1
            if t[2] == 1:
                frames[t[3]] += 1
    # v0 has two objects (track 1 stored as two runs): uniform over objects, not runs
    assert abs(tracks[0] / sum(tracks.values()) - 0.5) < 0.08
    assert set(frames) == set(range(8)) | set(range(12, 20))


def test_negative_fraction_and_sources(readers):
    n = 3000
    s = sampler(readers, **{'DATASET.NEG': 0.2, 'DATASET.GRAY': 0.3, 'DATASET.VIDEOS_PER_EPOCH': n})
    order = s.epoch_order(0)
    plans = [s.plan(0, i) for i in range(n)]
    neg = np.array([p.neg for p in plans])
    gray = np.array([p.gray for p in plans])
    assert abs(neg.mean() - 0.2) < 0.03      # std ~ 0.007
    assert abs(gray.mean() - 0.3) < 0.03
    search_in_coco = []
    for i, p in enumerate(plans):
        d = 0 if order[i] < N_VID_VIDEOS else 1
        video = readers[d].video_names[order[i] - (0 if d == 0 else N_VID_VIDEOS)]
        t = location(readers, p.template_ref)
        assert t[:2] == (d, video), "the template always comes from the picked video"
        if p.neg:
            search_in_coco.append(p.search_ref[0] == 1)
    # negative search: dataset uniform over datasets, not weighted by size
    assert abs(np.mean(search_in_coco) - 0.5) < 0.08


def test_augmentation_parameter_ranges(readers):
    s = sampler(readers, **{'DATASET.SEARCH.BLUR': 0.3, 'DATASET.SEARCH.FLIP': 0.4,
                            'DATASET.TEMPLATE.COLOR': 0.5, 'DATASET.VIDEOS_PER_EPOCH': 2000})
    blur_sizes, blurred, flipped, coloured = Counter(), 0, 0, 0
    for i in range(2000):
        p = s.plan(0, i)
        for aug, size, shift, scale in [(p.template, 127, 4, 0.05), (p.search, 255, 64, 0.18)]:
            x1, y1, x2, y2 = aug.crop
            assert aug.out_size == size
            sx, sy = (x2 - x1) / (size - 1), (y2 - y1) / (size - 1)
            assert 1 - scale <= sx <= 1 + scale and 1 - scale <= sy <= 1 + scale
            # shift around the scaled box centred at 255, kept inside [0, 510]
            assert abs((x1 + x2) / 2 - 255) <= shift + 1e-9 and abs((y1 + y2) / 2 - 255) <= shift + 1e-9
            assert x1 >= 0 and y1 >= 0 and x2 <= 510 and y2 <= 510
            # target box = crop box mapped by the crop's affine (then flipped)
            crop_box = np.array(box_on_crop(readers[(p.search_ref if size == 255 else p.template_ref)[0]]
                                            .box_at((p.search_ref if size == 255 else p.template_ref)[1])))
            m = aug.affine(np.float64)
            mapped = np.array([m[0, 0] * crop_box[0] + m[0, 2], m[1, 1] * crop_box[1] + m[1, 2],
                               m[0, 0] * crop_box[2] + m[0, 2], m[1, 1] * crop_box[3] + m[1, 2]])
            if aug.flip:
                mapped = np.array([size - 1 - mapped[2], mapped[1], size - 1 - mapped[0], mapped[3]])
            np.testing.assert_allclose(aug.box, mapped, atol=1e-3)
        assert p.template.blur_size == 0 and not p.template.flip
        coloured += bool(np.any(p.template.color_offset != 0))
        assert np.any(p.search.color_offset != 0)
        if p.search.blur_size:
            blurred += 1
            blur_sizes[p.search.blur_size] += 1
            assert 0 <= p.search.blur_wx < 1
        flipped += p.search.flip
    assert set(blur_sizes) == set(range(5, 46, 2))
    assert abs(blurred / 2000 - 0.3) < 0.04 and abs(flipped / 2000 - 0.4) < 0.04
    assert abs(coloured / 2000 - 0.5) < 0.04


def test_colour_offset_statistics_match_rgbvar(readers):
    n = 4000
    s = sampler(readers, **{'DATASET.VIDEOS_PER_EPOCH': n})
    offsets = np.array([s.plan(0, i).search.color_offset for i in range(n)], np.float64)
    # offset = (rgbVar @ z)[::-1] with z ~ N(0, I): BGR covariance = reversed rgbVar @ rgbVar.T
    expected = (RGB_VAR @ RGB_VAR.T)[::-1, ::-1]
    cov = np.cov(offsets.T)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.all(np.abs(cov - expected) < 0.08 * scale), (cov, expected)
    assert np.all(np.abs(offsets.mean(0)) < 0.1 * np.sqrt(np.diag(expected)))


def test_search_box_is_own_object_box_for_negative_pairs(readers):
    s = sampler(readers, **{'DATASET.NEG': 1.0, 'DATASET.SEARCH.SCALE': 0.0, 'DATASET.SEARCH.SHIFT': 0})
    for i in range(20):
        p = s.plan(0, i)
        d, e = p.search_ref
        x1, y1, x2, y2 = box_on_crop(readers[d].box_at(e))
        # no scale/shift: crop box is [128, 382], the box moves by -128
        np.testing.assert_allclose(p.search.box, [x1 - 128, y1 - 128, x2 - 128, y2 - 128], atol=1e-4)


def test_crop_parameter_mismatch_is_a_clear_error(readers):
    cfg = load_config(None, overrides=overrides(**{'TRAIN.EXEMPLAR_SIZE': 135, 'TRAIN.OUTPUT_SIZE': 24}))
    with pytest.raises(ValueError, match=r"VID.*exemplar_size=127 \(config needs 135\)"):
        PairSampler(cfg, readers, 0)
    # the loader's path runs the same check as train/preflight.py: the config's tracking context too
    with pytest.raises(ValueError, match=r"context_amount=0\.5 \(config needs 0\.6\)"):
        sampler(readers, **{'TRACK.CONTEXT_AMOUNT': 0.6})


def _recorded_as(reader, **crop):
    """A reader of the same shards whose metadata records other crop parameters."""
    other = ShardReader(reader.folder)
    other.meta = {**other.meta, 'crop': {**other.meta['crop'], **crop}}
    return other


def test_boxes_follow_the_geometry_the_shards_record(readers):
    """The shards' metadata is the truth for their crops: shards recorded as cut with context 0.6
    (and a config that tracks with 0.6) place their boxes with 0.6, not pipeline.crop's 0.5."""
    wide = [_recorded_as(r, context_amount=0.6) for r in readers]
    s = PairSampler(load_config(None, overrides=overrides(**{
        'TRACK.CONTEXT_AMOUNT': 0.6, 'DATASET.SEARCH.SCALE': 0.0, 'DATASET.SEARCH.SHIFT': 0})), wide, 0)
    assert s.geometry.context_amount == 0.6
    for i in range(10):
        d, e = s.plan(0, i).search_ref
        x1, y1, x2, y2 = box_on_crop(readers[d].box_at(e), context=0.6)
        assert x2 - x1 < box_on_crop(readers[d].box_at(e))[2] - box_on_crop(readers[d].box_at(e))[0]
        np.testing.assert_allclose(s.plan(0, i).search.box, [x1 - 128, y1 - 128, x2 - 128, y2 - 128], atol=1e-4)


def test_shards_of_other_sizes_are_clear_errors(readers):
    with pytest.raises(ValueError, match=r"one crop size, got VID 511 px, COCO 600 px"):
        sampler([readers[0], _recorded_as(readers[1], crop_size=600)])
    with pytest.raises(ValueError, match=r"COCO.*crop_size=200 \(config needs >= 255\)"):
        sampler([readers[0], _recorded_as(readers[1], crop_size=200)])
