"""AnchorTargets against a straightforward per-sample numpy implementation of PySOT's AnchorTarget."""
import math

import numpy as np
import pytest
import torch

from pipeline.reference import authors_mask_weight
from pipeline.targets import AnchorTargets, mask_weight
from train.config import load_config

NO_SUBSAMPLING = ['TRAIN.POS_NUM=100000', 'TRAIN.TOTAL_NUM=200000', 'TRAIN.NEG_NUM=100000']


def oracle_anchors(stride=8, ratios=(0.33, 0.5, 1, 2, 3), scales=(8,), search=255, size=25):
    """Anchors (A, S, S, 4) as (cx, cy, w, h), written out with loops (independent of pipeline.anchors)."""
    out = []
    for r in ratios:
        ws = int(math.sqrt(stride * stride / r))
        hs = int(ws * r)
        for s in scales:
            grid = np.zeros((size, size, 4))
            for y in range(size):
                for x in range(size):
                    grid[y, x] = (search // 2 + (x - size // 2) * stride,
                                  search // 2 + (y - size // 2) * stride, ws * s, hs * s)
            out.append(grid)
    return np.stack(out)


def oracle_targets(box, neg, thr_high=0.6, thr_low=0.3, search=255, stride=8, size=25):
    """Candidate sets before subsampling: (pos mask, neg mask, deltas (4,A,S,S)) for one sample."""
    anchors = oracle_anchors(stride=stride, search=search, size=size)
    x1, y1, x2, y2 = [float(v) for v in box]
    tcx, tcy, tw, th = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    if neg:
        cx = size // 2 + int(np.ceil((tcx - search // 2) / stride + 0.5))
        cy = size // 2 + int(np.ceil((tcy - search // 2) / stride + 0.5))
        window = np.zeros(anchors.shape[:3], bool)
        window[:, max(0, cy - 3):min(size, cy + 4), max(0, cx - 3):min(size, cx + 4)] = True
        return np.zeros_like(window), window, np.zeros((4,) + window.shape)
    acx, acy, aw, ah = np.moveaxis(anchors, -1, 0)
    ax1, ay1, ax2, ay2 = acx - aw / 2, acy - ah / 2, acx + aw / 2, acy + ah / 2
    iw = np.maximum(0, np.minimum(x2, ax2) - np.maximum(x1, ax1))
    ih = np.maximum(0, np.minimum(y2, ay2) - np.maximum(y1, ay1))
    inter = iw * ih
    iou = inter / (aw * ah + tw * th - inter)
    deltas = np.stack([(tcx - acx) / aw, (tcy - acy) / ah, np.log(tw / aw), np.log(th / ah)])
    return iou > thr_high, iou < thr_low, deltas


def centred(w, h, cx=127.0, cy=127.0):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def random_boxes(rng, n):
    w = rng.uniform(10, 200, n)
    h = w * np.exp(rng.uniform(-1.2, 1.2, n))
    cx, cy = rng.uniform(-10, 265, n), rng.uniform(-10, 265, n)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float32)


def run(cfg, boxes, neg, seed=0):
    targets = AnchorTargets(cfg)
    gen = torch.Generator().manual_seed(seed)
    return targets(torch.as_tensor(np.asarray(boxes, np.float32)), torch.as_tensor(neg, dtype=torch.bool), gen)


def test_shapes_and_dtypes():
    cfg = load_config(None)
    cls, loc, w = run(cfg, [centred(64, 64)] * 3, [False, True, False])
    assert cls.shape == (3, 5, 25, 25) and cls.dtype == torch.int64
    assert loc.shape == (3, 4, 5, 25, 25) and loc.dtype == torch.float32
    assert w.shape == (3, 5, 25, 25) and w.dtype == torch.float32


def test_matches_oracle_without_subsampling():
    cfg = load_config(None, overrides=NO_SUBSAMPLING)
    rng = np.random.default_rng(1)
    boxes = random_boxes(rng, 64)
    boxes[:4] = [centred(64, 64), centred(85.9, 42.9), centred(30, 90, 40, 200), centred(150, 60, 250, 5)]
    neg = rng.random(64) < 0.3
    cls, loc, w = run(cfg, boxes, neg)
    for i in range(64):
        pos_mask, neg_mask, deltas = oracle_targets(boxes[i], neg[i])
        expected = np.full(pos_mask.shape, -1)
        expected[neg_mask] = 0
        expected[pos_mask] = 1
        np.testing.assert_array_equal(cls[i].numpy(), expected, err_msg=f"sample {i} box {boxes[i]}")
        np.testing.assert_allclose(loc[i].numpy(), deltas, rtol=1e-5, atol=1e-5)
        n_pos = pos_mask.sum()
        np.testing.assert_allclose(w[i].numpy(), pos_mask / (n_pos + 1e-6), rtol=1e-6)


def test_subsampling_counts_and_subsets():
    cfg = load_config(None)
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 48)
    boxes[0] = centred(56, 64)   # 18 positive candidates (the most any box gets)
    neg = rng.random(48) < 0.3
    neg[0] = False
    cls, _, w = run(cfg, boxes, neg, seed=5)
    saw_capped_pos = False
    for i in range(48):
        pos_mask, neg_mask, _ = oracle_targets(boxes[i], neg[i])
        got_pos, got_neg = cls[i].numpy() == 1, cls[i].numpy() == 0
        assert not (got_pos & ~pos_mask).any() and not (got_neg & ~neg_mask).any()
        keep_neg = 16 if neg[i] else 48   # NEG_NUM for negative pairs, TOTAL_NUM - POS_NUM otherwise
        assert got_pos.sum() == min(pos_mask.sum(), 16)
        assert got_neg.sum() == min(neg_mask.sum(), keep_neg)
        if got_pos.sum():
            np.testing.assert_allclose(w[i].numpy()[got_pos], 1 / (got_pos.sum() + 1e-6), rtol=1e-6)
        assert (w[i].numpy()[~got_pos] == 0).all()
        saw_capped_pos |= pos_mask.sum() > 16
    assert saw_capped_pos, "test boxes should include a sample with more than POS_NUM candidates"


def test_pysot_sanity_table():
    # PySOT's AnchorTarget (`pysot/datasets/anchor_target.py`, called as anchor_target(bbox, 25, neg)
    # with its default config) gives these counts for centred search boxes: 64x64 and 85.9x42.9 are
    # matched (IoU > 0.6) by 9 and 10 anchors of `pysot/utils/anchor.py` (ratio 1: 64x64, ratio 0.5:
    # 88x40); 20x20 and 200x200 by none (best IoU 0.13 and 0.10); negatives (IoU < 0.3) are thousands,
    # cut to TOTAL_NUM - POS_NUM = 64 - 16 = 48. The oracle above (oracle_targets) agrees.
    cfg = load_config(None)
    boxes = [centred(64, 64), centred(85.9, 42.9), centred(20, 20), centred(200, 200)]
    cls, _, w = run(cfg, boxes, [False] * 4)
    assert (cls == 1).sum((1, 2, 3)).tolist() == [9, 10, 0, 0]
    assert (cls == 0).sum((1, 2, 3)).tolist() == [48, 48, 48, 48]
    assert w[2].sum() == 0 and w[3].sum() == 0


def test_deltas_decode_back_to_box():
    cfg = load_config(None)
    box = np.array([80.5, 101.25, 170.0, 143.5])
    targets = AnchorTargets(cfg)
    cls, loc, _ = targets(torch.tensor(box[None], dtype=torch.float32), torch.tensor([False]),
                          torch.Generator().manual_seed(0))
    acx, acy, aw, ah = targets.centres.numpy()
    dx, dy, dw, dh = loc[0].numpy()
    decoded = np.stack([acx + dx * aw, acy + dy * ah, aw * np.exp(dw), ah * np.exp(dh)])
    expected = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]])
    np.testing.assert_allclose(decoded, np.broadcast_to(expected[:, None, None, None], decoded.shape),
                               rtol=1e-5, atol=1e-3)
    assert (cls == 1).any()


def test_negative_pair_window_for_centred_object():
    cfg = load_config(None, overrides=NO_SUBSAMPLING)
    cls, loc, w = run(cfg, [centred(64, 64)], [True])
    a, ys, xs = np.nonzero(cls[0].numpy() == 0)
    assert sorted(set(ys)) == list(range(10, 17)) and sorted(set(xs)) == list(range(10, 17))
    assert len(a) == 7 * 7 * 5
    assert not (cls == 1).any() and (loc == 0).all() and (w == 0).all()
    cfg = load_config(None)
    cls, _, _ = run(cfg, [centred(64, 64)] * 4, [True] * 4)
    assert (cls == 0).sum((1, 2, 3)).tolist() == [16] * 4
    _, ys, xs = np.nonzero(cls[0].numpy() == 0)
    assert ys.min() >= 10 and ys.max() <= 16 and xs.min() >= 10 and xs.max() <= 16


def test_negative_window_clamped_at_border():
    cfg = load_config(None, overrides=NO_SUBSAMPLING)
    boxes = [centred(20, 20, cx=5.0), centred(20, 20, cy=250.0)]
    cls, _, _ = run(cfg, boxes, [True, True])
    # centre x = 5: cell 12 + ceil((5 - 127) / 8 + 0.5) = 12 - 14 = -2 -> columns [0, 2)
    _, ys, xs = np.nonzero(cls[0].numpy() == 0)
    assert sorted(set(xs)) == [0, 1] and sorted(set(ys)) == list(range(10, 17))
    # centre y = 250: cell 12 + ceil(15.875) = 28 -> rows [25, 25): no candidates at all
    assert not (cls[1] == 0).any()


def test_generator_determinism_and_uniform_choice():
    cfg = load_config(None)
    boxes = [centred(56, 64)] * 400   # 18 positive candidates, keep 16
    a = run(cfg, boxes, [False] * 400, seed=3)[0]
    b = run(cfg, boxes, [False] * 400, seed=3)[0]
    c = run(cfg, boxes, [False] * 400, seed=4)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    pos_mask, _, _ = oracle_targets(boxes[0], False)
    n = int(pos_mask.sum())
    assert n > 16
    freq = (a == 1).float().mean(0).numpy()[pos_mask]
    # each candidate is kept with probability 16 / n; 400 draws -> std ~ 0.02
    assert np.all(np.abs(freq - 16 / n) < 0.1), (freq, 16 / n)
    assert not (a == 1).all(0).any()


@pytest.mark.parametrize("overrides", [["TRAIN.OUTPUT_SIZE=17", "TRAIN.BASE_SIZE=0"]])
def test_other_grid_size(overrides):
    cfg = load_config(None, overrides=overrides + NO_SUBSAMPLING)
    box = centred(64, 64)
    cls, _, _ = run(cfg, [box, box], [False, True])
    pos_mask, neg_mask, _ = oracle_targets(box, False, size=17)
    expected = np.full(pos_mask.shape, -1)
    expected[neg_mask] = 0
    expected[pos_mask] = 1
    np.testing.assert_array_equal(cls[0].numpy(), expected)
    _, ys, xs = np.nonzero(cls[1].numpy() == 0)
    assert sorted(set(xs)) == list(range(6, 13))   # centre cell 8, PySOT's +1 shift -> 9 +- 3


def test_mask_weight_is_the_authors_positive_map():
    """1 where the authors' label_cls.max over anchors is 1 (their loss uses those positions),
    for pairs whose search mask is a label; 0 elsewhere and for the other pairs."""
    g = torch.Generator().manual_seed(0)
    cls = torch.randint(-1, 2, (6, 5, 25, 25), generator=g)
    cls[cls == 1] = torch.where(torch.rand(int((cls == 1).sum()), generator=g) < 0.05, 1, -1)
    cls[2] = torch.where(cls[2] == 1, 0, cls[2])           # a pair without positives
    search_mask = torch.tensor([True, True, True, False, True, False])
    weight = mask_weight(cls, search_mask)
    assert weight.shape == (6, 1, 25, 25) and weight.dtype == torch.float32
    for i in range(6):
        authors = authors_mask_weight(cls[i].numpy(), bool(search_mask[i]))
        assert torch.equal(weight[i], torch.from_numpy((authors == 1).astype(np.float32))), i
    assert weight[0].sum() > 0 and weight[2].sum() == 0 and weight[3].sum() == 0
