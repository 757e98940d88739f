"""Test helpers for SiamMask search masks: shards with masks (COCO and YouTube-VOS, built from
crop511 folders with the authors' `.m.png` files), a SiamMask config over them, and the check of
rendered masks against the SiamMask authors' augmentation (`pipeline.reference.render_mask`)."""
from pathlib import Path

import numpy as np

from crop511_fixtures import write_crop511
from pipeline.batch import LABEL_CLS, LABEL_MASK, LABEL_MASK_WEIGHT, SEARCH
from pipeline.ingest import build_dataset
from pipeline.reference import authors_mask_weight, render_mask
from pipeline.shards import decode_mask
from train.config import load_config

# A rendered pixel may differ from the authors' only where the exact bilinear value lies within
# cv2's sample-point rounding (1/32 pixel on each axis) of the 0.5 threshold.
NEAR_HALF = 1 / 16


def exact_mask_values(mask: np.ndarray, aug) -> np.ndarray:
    """(S, S) float64: the bilinear value of `mask` > 0 (zero outside) at the search crop's
    exact sample points, after the flip (what the authors threshold at 0.5)."""
    src = (mask > 0).astype(np.float64)
    n = aug.out_size
    x1, y1, x2, y2 = aug.crop
    xs = x1 + np.arange(n) * (x2 - x1) / (n - 1)
    ys = y1 + np.arange(n) * (y2 - y1) / (n - 1)
    if aug.flip:
        xs = xs[::-1]
    padded = np.pad(src, 1)

    def taps(s, length):
        f = np.floor(s)
        index = np.clip(f.astype(np.int64) + 1, 0, length + 1)
        nxt = np.clip(f.astype(np.int64) + 2, 0, length + 1)
        return index, nxt, s - f

    xi, xn, wx = taps(xs, src.shape[1])
    yi, yn, wy = taps(ys, src.shape[0])
    top = padded[yi][:, xi] * (1 - wx) + padded[yi][:, xn] * wx
    bottom = padded[yn][:, xi] * (1 - wx) + padded[yn][:, xn] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def assert_mask_like_authors(out, mask: np.ndarray, aug, what: str = "mask") -> int:
    """`out` (1, S, S) equals the authors' search mask of `mask` for `aug`, except at pixels whose
    exact value is within NEAR_HALF of 0.5; returns the number of such differences."""
    out = np.asarray(out)
    ref = render_mask(mask, aug)
    assert out.shape == ref.shape and out.dtype == np.float32, (what, out.shape, out.dtype)
    assert set(np.unique(out).tolist()) <= {-1.0, 1.0}, what
    differ = out[0] != ref[0]
    if differ.any():
        values = exact_mask_values(mask, aug)[differ]
        assert np.abs(values - 0.5).max() < NEAR_HALF, (what, values)
    assert differ.sum() <= max(4, 0.01 * (ref > 0).sum()), (what, int(differ.sum()))
    return int(differ.sum())


def check_mask_labels(loader, epoch: int, first: int, batch: dict) -> dict:
    """Every pair's label_mask and label_mask_weight in a loader's batch (first index `first` of
    its rank's epoch, no pair replaced) against the authors' for its plan; returns counts of the
    kinds of pairs seen."""
    plans = loader.sampler.plan_batch(epoch, loader.sampler.rank_indices()[first:first + len(batch[SEARCH])])
    seen = {"mask": 0, "neg": 0, "no_mask_dataset": 0, "flip": 0}
    for i in range(len(plans)):
        plan = plans[i]
        d, e = plan.search_ref
        reader = loader.readers[d]
        if plan.search_mask:
            mask = decode_mask(*reader.mask_at(e), loader.sampler.crop_size)
            assert_mask_like_authors(batch[LABEL_MASK][i].cpu().numpy(), mask, plan.search, f"pair {i}")
            seen["mask"] += 1
            seen["flip"] += plan.search.flip
        else:
            assert (batch[LABEL_MASK][i] == -1).all().item()
            seen["neg" if plan.neg else "no_mask_dataset"] += 1
            assert plan.neg or not reader.has_masks
        authors = authors_mask_weight(batch[LABEL_CLS][i].cpu().numpy(), plan.search_mask)
        np.testing.assert_array_equal(batch[LABEL_MASK_WEIGHT][i].cpu().numpy(), (authors == 1).astype(np.float32))
    return seen


# VID without masks; COCO images (one-frame tracks) and YouTube-VOS videos with masks.
VID_TRACKS = [("a/v0", 0, range(8)), ("a/v1", 0, range(6)), ("a/v2", 1, range(7))]
COCO_TRACKS = [(f"train2017/img{i}", t, [0]) for i in range(8) for t in range(1 + i % 2)]
YTBVOS_TRACKS = [("vid0", 1, range(0, 40, 5)), ("vid0", 2, range(0, 30, 5)),
                 ("vid1", 1, range(0, 35, 5))]


def build_mask_shards(tmp: Path) -> Path:
    """tmp/cache/{VID, COCO, YTBVOS}: shards built by the project's builder from crop511
    folders (`write_crop511_with_masks`), COCO and YTBVOS with their masks."""
    out = tmp / "cache"
    for name, tracks, seed, masks in (("VID", VID_TRACKS, 1, False), ("COCO", COCO_TRACKS, 2, True),
                                      ("YTBVOS", YTBVOS_TRACKS, 3, True)):
        anno = write_crop511(tmp / f"{name}_crop511", tracks, seed, masks)
        build_dataset(name, out_root=out, from_crop511=tmp / f"{name}_crop511", anno=anno,
                      progress=False)
    return out


def mask_overrides(**extra) -> list:
    """KEY=VALUE overrides of a SiamMask config (base-stage augmentation) over the
    `build_mask_shards` datasets (YTBVOS has no section in the defaults: a config gives it,
    as the SiamMask configs do)."""
    base = {"MASK.MASK": True, "DATASET.NAMES": "[VID,COCO,YTBVOS]",
            "DATASET.YTBVOS.ROOT": "ytb_vos/crop511", "DATASET.YTBVOS.ANNO": "ytb_vos/train.json",
            "DATASET.YTBVOS.FRAME_RANGE": 20, "DATASET.YTBVOS.NUM_USE": -1,
            "DATASET.VID.NUM_USE": -1, "DATASET.COCO.NUM_USE": -1, "DATASET.VID.FRAME_RANGE": 3,
            "DATASET.VIDEOS_PER_EPOCH": 24, "DATASET.NEG": 0.2, "DATASET.GRAY": 0.25,
            "DATASET.SEARCH.BLUR": 0.18, "DATASET.SEARCH.FLIP": 0.5}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def mask_cfg(**extra):
    """The config of `mask_overrides`."""
    return load_config(None, overrides=mask_overrides(**extra))
