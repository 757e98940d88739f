"""PySOT's AnchorTarget, vectorised over a batch in torch (on the boxes' device).

Semantics per sample, as in PySOT's `anchor_target.py`:
- positive pair: deltas (dx, dy, log dw, log dh) for every anchor; IoU (continuous, no +1)
  > THR_HIGH is positive, < THR_LOW negative; at most POS_NUM positives and at most
  TOTAL_NUM - POS_NUM negatives are kept, chosen uniformly at random; positives get
  weight 1 / (num_pos + 1e-6); everything else is -1 (ignored).
- negative pair: no positives, zero deltas and weights; the 7x7 cell window around
  cell S//2 + ceil((c - search_size//2) / stride + 0.5) of the search object's centre
  (one cell right/below of the true centre cell: PySOT's quirk) is a candidate set of
  which at most NEG_NUM anchors are kept at random as negatives.
  Deliberate difference: PySOT slices that window with stop index cx + 4, which wraps around
  (numpy negative indices) when the centre lies >= 13 px left of / above the crop; we keep the
  window empty there. Unreachable with PySOT's recipes (needs SEARCH.SHIFT >= 140 * (1 - SCALE)).

Random subsets: each anchor gets a uniform float64 key and the `keep` candidates with the
largest keys win (topk), a uniform random subset of size min(keep, count) without a per-sample
loop. PySOT draws with np.random.shuffle; the distribution is the same, the stream is not.
The keys are drawn on the host (`random_keys`, numpy) or from the caller's torch.Generator;
host keys make the labels the same on every device: everything else here is comparisons and
IEEE-rounded elementwise arithmetic (one op per kernel), and float64 keys tie with
probability ~1e-9 per sample (a tie is the only way topk could order them differently).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.anchors import anchor_grid_from_cfg


def random_keys(seed: int, rows: int, anchors: int, out: np.ndarray | None = None) -> np.ndarray:
    """(rows, anchors) float64 keys in [0, 1) for the label subsampling of a batch, from
    numpy's PCG64 seeded with `seed` (written into `out` when given, e.g. pinned memory)."""
    return np.random.default_rng(int(seed)).random((rows, anchors), out=out)


def _random_subset(candidates: torch.Tensor, keys: torch.Tensor, keep, max_keep: int) -> torch.Tensor:
    """(B, N) bool -> (B, N) bool: per row, the min(keep, count) candidates with the largest keys.

    With i.i.d. uniform keys this is a uniform random subset. `keep` is an int or a (B,) tensor;
    `max_keep` >= every keep, a host int, so no device value has to be read back (no GPU sync).
    Disjoint candidate sets may share one key tensor and stay independent.
    """
    k = min(int(max_keep), candidates.shape[1])
    chosen = torch.zeros_like(candidates)
    if k <= 0:
        return chosen
    top_keys, top_idx = keys.masked_fill(~candidates, -1.0).topk(k, dim=1, sorted=True)
    rank = torch.arange(k, device=candidates.device)
    keep = keep.unsqueeze(1) if isinstance(keep, torch.Tensor) else keep
    chosen.scatter_(1, top_idx, (top_keys >= 0) & (rank < keep))
    return chosen


class AnchorTargets:
    """Callable computing RPN training labels for a batch of search boxes.

    `targets(boxes (B,4) float32 x1y1x2y2 in search pixels, neg (B,) bool, generator)` or
    `targets(boxes, neg, keys=keys)` with keys (B, anchor_count) float64 (`random_keys`)
    -> label_cls (B,A,S,S) int64, label_loc (B,4,A,S,S) float32, label_loc_weight (B,A,S,S) float32.
    """

    def __init__(self, cfg):
        corners, centres = anchor_grid_from_cfg(cfg)
        self.corners = torch.from_numpy(corners)
        self.centres = torch.from_numpy(centres)
        self.anchor_num = corners.shape[1]
        self.size = int(cfg.TRAIN.OUTPUT_SIZE)
        self.search_size = int(cfg.TRAIN.SEARCH_SIZE)
        self.stride = int(cfg.ANCHOR.STRIDE)
        self.thr_high = float(cfg.TRAIN.THR_HIGH)
        self.thr_low = float(cfg.TRAIN.THR_LOW)
        self.pos_num = int(cfg.TRAIN.POS_NUM)
        self.neg_keep = int(cfg.TRAIN.TOTAL_NUM) - int(cfg.TRAIN.POS_NUM)
        self.neg_pair_num = int(cfg.TRAIN.NEG_NUM)
        ax1, ay1, ax2, ay2 = self.corners
        self.areas = (ax2 - ax1) * (ay2 - ay1)
        self.anchor_count = self.anchor_num * self.size * self.size   # keys per sample
        self._on_device = {}

    def _anchors(self, device):
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (self.corners.to(device), self.centres.to(device),
                                    self.areas.to(device))
        return self._on_device[key]

    def window_centre(self, centre: torch.Tensor) -> torch.Tensor:
        """PySOT's negative-pair window cell for object centres (float) -> int64 cells."""
        shift = (centre.double() - self.search_size // 2) / self.stride + 0.5
        return self.size // 2 + torch.ceil(shift).long()

    def __call__(self, boxes: torch.Tensor, neg: torch.Tensor,
                 generator: torch.Generator | None = None, keys: torch.Tensor | None = None):
        device = boxes.device
        boxes = boxes.float()
        neg = neg.to(device=device, dtype=torch.bool)
        batch = boxes.shape[0]
        a, s = self.anchor_num, self.size
        corners, centres, areas = self._anchors(device)

        x1, y1, x2, y2 = (boxes[:, i].view(batch, 1, 1, 1) for i in range(4))
        tcx, tcy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
        tw, th = x2 - x1, y2 - y1
        acx, acy, aw, ah = centres
        # Deltas written in place into one (B,4,A,S,S) tensor (the same float operations as
        # (tcx - acx) / aw etc., without the temporaries a stack would need).
        loc = torch.empty((batch, 4, a, s, s), device=device)
        torch.sub(tcx, acx, out=loc[:, 0]).div_(aw)
        torch.sub(tcy, acy, out=loc[:, 1]).div_(ah)
        torch.div(tw, aw, out=loc[:, 2]).log_()
        torch.div(th, ah, out=loc[:, 3]).log_()

        ax1, ay1, ax2, ay2 = corners
        inter = torch.minimum(x2, ax2).sub_(torch.maximum(x1, ax1)).clamp_(min=0)
        inter.mul_(torch.minimum(y2, ay2).sub_(torch.maximum(y1, ay1)).clamp_(min=0))
        iou = inter / (areas + tw * th - inter)  # (B,A,S,S)

        not_neg = (~neg).view(batch, 1, 1, 1)
        pos_cand = (iou > self.thr_high) & not_neg
        neg_cand = (iou < self.thr_low) & not_neg

        # Negative pairs: candidates are the 7x7 window around the object's (shifted) cell.
        cells = torch.arange(s, device=device)
        cx = self.window_centre((boxes[:, 0] + boxes[:, 2]) * 0.5).view(batch, 1, 1)
        cy = self.window_centre((boxes[:, 1] + boxes[:, 3]) * 0.5).view(batch, 1, 1)
        in_cols = (cells.view(1, 1, s) >= cx - 3) & (cells.view(1, 1, s) < cx + 4)
        in_rows = (cells.view(1, s, 1) >= cy - 3) & (cells.view(1, s, 1) < cy + 4)
        window = (in_rows & in_cols).unsqueeze(1).expand(batch, a, s, s) & neg.view(batch, 1, 1, 1)

        # Positives, negatives of positive pairs and window negatives of negative pairs are
        # disjoint sets, so one tensor of random keys serves all three selections.
        flat = (batch, a * s * s)
        if keys is None:
            if generator is None:
                raise ValueError("AnchorTargets needs a generator or keys")
            keys = torch.rand(flat, generator=generator, device=device, dtype=torch.float64)
        elif tuple(keys.shape) != flat or keys.device != device:
            raise ValueError(f"keys must be {flat} on {device}, got {tuple(keys.shape)} on {keys.device}")
        pos = _random_subset(pos_cand.reshape(flat), keys, self.pos_num, self.pos_num)
        neg_keep = torch.where(neg, self.neg_pair_num, self.neg_keep)
        negs = _random_subset((neg_cand | window).reshape(flat), keys, neg_keep,
                              max(self.neg_pair_num, self.neg_keep))

        # -1 ignore, 0 negative, 1 positive (the sets are disjoint); int8 arithmetic, one widening
        label_cls = (negs.to(torch.int8) + 2 * pos.to(torch.int8) - 1).long()
        pos_count = pos.sum(dim=1, keepdim=True).float()
        weight = pos.float() / (pos_count + 1e-6)

        # PySOT leaves the deltas of negative pairs at zero (a mask, not loc[neg]: no GPU sync)
        loc.masked_fill_(neg.view(batch, 1, 1, 1, 1), 0.0)
        return label_cls.view(batch, a, s, s), loc, weight.view(batch, a, s, s)


def mask_weight(label_cls: torch.Tensor, search_mask: torch.Tensor) -> torch.Tensor:
    """SiamMask's mask weight (B, 1, S, S) float32: 1 at the positions where any anchor is
    positive in `label_cls` (B, A, S, S), for the pairs whose search mask is a label
    (`search_mask` (B,) bool: positive pairs from datasets with masks), else 0.

    The SiamMask authors take `label_cls.max(axis=0)` (-1, 0 or 1) and their loss uses only
    the positions equal to 1; here the others are 0, the same positions, and the map can
    weight directly.  Elementwise on the labels' device: no host sync.
    """
    positive = (label_cls == 1).any(dim=1, keepdim=True)
    return (positive & search_mask.to(positive.device).view(-1, 1, 1, 1)).float()
