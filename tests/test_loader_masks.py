"""SiamMask batches from the DALI loader on real shards with masks (CPU): the search mask and its
weight against the SiamMask authors' augmentation for the same plans, on both graph variants;
the refine stage's 143 search; unusable masks; SiamRPN batches unchanged."""
import shutil

import numpy as np
import pytest
import torch

from mask_fixtures import check_mask_labels, mask_cfg
from pipeline import build_loader
from pipeline.batch import LABEL_CLS, LABEL_MASK, LABEL_MASK_WEIGHT, MASK_LABELS, SEARCH
from pipeline.crop_source import mask_ref
from pipeline.sampling import PairSampler
from pipeline.shards import open_shard_readers
from shard_damage import flip_crop_byte

BATCH = 4


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "native"])
def test_mask_batches_match_the_authors_for_the_same_plans(mask_shards, kernel):
    cfg = mask_cfg()
    loader = build_loader(cfg, shards=mask_shards, batch_size=BATCH, device="cpu", seed=3,
                          crop_kernel=kernel)
    assert loader.sampler.masks
    seen = dict.fromkeys(("mask", "neg", "no_mask_dataset", "flip"), 0)
    for b, batch in enumerate(loader):
        assert batch[LABEL_MASK].shape == (BATCH, 1, 255, 255) and batch[LABEL_MASK].dtype == torch.float32
        assert batch[LABEL_MASK_WEIGHT].shape == (BATCH, 1, 25, 25)
        assert batch[LABEL_MASK_WEIGHT].dtype == torch.float32
        for key, count in check_mask_labels(loader, 0, b * BATCH, batch).items():
            seen[key] += count
    assert loader.skipped == 0
    assert all(seen.values()), seen   # every kind of pair was checked


def test_mask_lands_on_the_object(mask_shards):
    """The mask covers the bright object in the search image (same crop, scale and flip)."""
    cfg = mask_cfg(**{"DATASET.NEG": 0.0, "DATASET.GRAY": 0.0, "DATASET.SEARCH.BLUR": 0.0,
                      "DATASET.NAMES": "[COCO,YTBVOS]", "DATASET.VIDEOS_PER_EPOCH": 16})
    loader = build_loader(cfg, shards=mask_shards, batch_size=BATCH, device="cpu", seed=4)
    ious = []
    for batch in loader:
        bright = batch[SEARCH].mean(dim=1) > 170      # object 200-255, background below 140
        on = batch[LABEL_MASK][:, 0] > 0
        ious += ((bright & on).sum((1, 2)) / (bright | on).sum((1, 2))).tolist()
    assert len(ious) == 16 and min(ious) > 0.9, ious


def test_refine_stage_batches(mask_shards):
    """The refine stage: search 143, a 3x3 output, no negatives; masks as the authors'."""
    cfg = mask_cfg(**{"TRAIN.SEARCH_SIZE": 143, "TRAIN.OUTPUT_SIZE": 3, "TRAIN.BASE_SIZE": 0,
                      "DATASET.NEG": 0.0, "DATASET.SEARCH.SHIFT": 8, "DATASET.NAMES": "[COCO,YTBVOS]",
                      "DATASET.VIDEOS_PER_EPOCH": 16})
    loader = build_loader(cfg, shards=mask_shards, batch_size=BATCH, device="cpu", seed=5)
    positives = 0
    for b, batch in enumerate(loader):
        assert batch[SEARCH].shape == (BATCH, 3, 143, 143)
        assert batch[LABEL_MASK].shape == (BATCH, 1, 143, 143)
        assert batch[LABEL_CLS].shape == (BATCH, 5, 3, 3)
        assert batch[LABEL_MASK_WEIGHT].shape == (BATCH, 1, 3, 3)
        seen = check_mask_labels(loader, 0, b * BATCH, batch)
        assert seen["mask"] == BATCH and not batch["neg"].any()
        positives += int((batch[LABEL_MASK_WEIGHT].sum((1, 2, 3)) > 0).sum())
    assert positives >= 12   # the object sits at the centre: nearly every pair has a positive


def test_siamrpn_batches_are_unchanged_by_masks_in_the_shards(mask_shards):
    """A SiamRPN config on shards with masks: no mask keys, and the same images and labels as
    the SiamMask config gives (masks add keys, they change nothing else)."""
    rpn = build_loader(mask_cfg(**{"MASK.MASK": False}), shards=mask_shards, batch_size=BATCH,
                       device="cpu", seed=6)
    siammask = build_loader(mask_cfg(), shards=mask_shards, batch_size=BATCH, device="cpu", seed=6)
    assert not rpn.sampler.masks and siammask.sampler.masks
    for a, b in zip(rpn, siammask):
        assert not set(MASK_LABELS) & set(a) and set(MASK_LABELS) <= set(b)
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_mask_batches_do_not_depend_on_threads(mask_shards):
    cfg = mask_cfg()
    one = list(build_loader(cfg, shards=mask_shards, batch_size=BATCH, device="cpu", seed=7))
    two = list(build_loader(cfg, shards=mask_shards, batch_size=BATCH, device="cpu", seed=7,
                            read_threads=0, read_ahead=1, num_threads=1))
    for a, b in zip(one, two):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_an_unusable_mask_replaces_the_pair(mask_shards, tmp_path, caplog):
    """A mask failing its checksum: the pair is replaced and counted like one with a bad crop;
    the crop itself stays usable."""
    root = tmp_path / "cache"
    shutil.copytree(mask_shards, root)
    cfg = mask_cfg(**{"DATASET.NEG": 0.0})
    loader = build_loader(cfg, shards=root, batch_size=BATCH, device="cpu", seed=8)
    plans = loader.sampler.plan_batch(0, loader.sampler.rank_indices()[:BATCH])
    victim = int(np.flatnonzero(plans.search_mask)[0])
    d, e = plans.search_ref[victim].tolist()
    flip_crop_byte(loader.readers[d], e, mask=True)
    batch = next(iter(loader))
    assert loader.skipped >= 1 and mask_ref(d, e) in loader.bad_entries
    assert (d, e) not in loader.bad_entries
    assert "unusable mask" in caplog.text
    # every replacement was for this pair (a replacement may hit the same mask again)
    replacement = loader.sampler.plan_batch(0, loader.sampler.rank_indices()[victim:victim + 1],
                                            loader.skipped)
    assert not (replacement.search_mask[0] and tuple(replacement.search_ref[0].tolist()) == (d, e))
    assert torch.equal(batch["bbox"][victim], torch.from_numpy(replacement.search.box[0]))
    loader.close()


def test_plans_mark_the_search_masks_that_are_labels(mask_shards):
    """search_mask = a positive pair whose search entry has a stored mask (the authors'
    `has_mask and not neg`); none without MASK.MASK.  YTBVOS is sampled like any dataset."""
    cfg = mask_cfg(**{"DATASET.NEG": 0.3, "DATASET.VIDEOS_PER_EPOCH": 400})
    readers = open_shard_readers(cfg, mask_shards)
    plans = PairSampler(cfg, readers, seed=9).plan_batch(0, np.arange(400))
    has_mask = np.array([readers[d].entry_has_mask[e] for d, e in plans.search_ref.tolist()])
    assert np.array_equal(plans.search_mask, has_mask & ~plans.neg)
    names = [cfg.DATASET.NAMES[d] for d in plans.search_ref[:, 0]]
    assert {"VID", "COCO", "YTBVOS"} <= set(names) and plans.search_mask.any()
    assert (~plans.search_mask[np.array(names) == "VID"]).all()
    rpn = PairSampler(mask_cfg(**{"MASK.MASK": False, "DATASET.NEG": 0.3,
                                  "DATASET.VIDEOS_PER_EPOCH": 400}), readers, seed=9)
    assert not rpn.masks and not rpn.plan_batch(0, np.arange(400)).search_mask.any()
