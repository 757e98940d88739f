"""SiamMask heads (state_dict-compatible with PySOT's ``head/mask.py``).

``MaskCorr`` is a DepthwiseXCorr whose head predicts 63×63 = 3969 mask logits per position and
which also returns the correlation feature. ``Refine`` turns the correlation vector at a
score-map position plus the backbone's shallow search features into 127×127 mask logits: at one
position for tracking (``forward``, PySOT's), or at every position for training
(``forward_all``, the authors' refine stage, ``experiments/siammask_sharp/custom.py``).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .rpn import DepthwiseXCorr

__all__ = ['MaskCorr', 'Refine']


class MaskCorr(DepthwiseXCorr):
    def forward(self, kernel, search):
        """Return (mask logits (B, out, H', W'), correlation feature (B, hidden, H', W'))."""
        feature = self.correlate(kernel, search)
        return self.head(feature), feature


def _two_convs(cin, mid, cout):
    return nn.Sequential(
        nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, 3, padding=1), nn.ReLU(inplace=True),
    )


# Window side and stride (relative to the score map) of each shallow level: f0 (stride 2 in the
# search image), f1 (stride 4), f2 (stride 8); and the tracking path's padding of each level.
_WINDOWS = ((61, 4, 16), (31, 2, 8), (15, 1, 4))
OUT_SIZE = 127


def _windows_at_every_location(x, size, stride):
    """All size×size windows of ``x`` (B, C, H, W) at ``stride``, unpadded, as (B·L, C, size, size)
    in row-major location order (the authors' ``F.unfold`` of the refine stage)."""
    b, c = x.shape[:2]
    cols = F.unfold(x, size, stride=stride)  # (B, C·size², L)
    return cols.transpose(1, 2).reshape(-1, c, size, size)


class Refine(nn.Module):
    """SiamMask refinement module. ``channels``: the shallow levels' channels (ResNet-50's conv1,
    layer1, layer2: 64, 256, 512); ``corr_channels``: the correlation feature's (256). Its convs
    start from the authors' init (kaiming-uniform, a=1): PySOT never trains this module."""

    def __init__(self, channels=(64, 256, 512), corr_channels=256):
        super().__init__()
        c0, c1, c2 = channels
        self.corr_channels = int(corr_channels)
        self.v0 = _two_convs(c0, 16, 4)
        self.v1 = _two_convs(c1, 64, 16)
        self.v2 = _two_convs(c2, 128, 32)
        self.h2 = _two_convs(32, 32, 32)
        self.h1 = _two_convs(16, 16, 16)
        self.h0 = _two_convs(4, 4, 4)
        self.deconv = nn.ConvTranspose2d(self.corr_channels, 32, 15, 15)
        self.post0 = nn.Conv2d(32, 16, 3, padding=1)
        self.post1 = nn.Conv2d(16, 4, 3, padding=1)
        self.post2 = nn.Conv2d(4, 1, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # not the ConvTranspose2d, as in the authors' loop
                nn.init.kaiming_uniform_(m.weight, a=1)

    def _decode(self, p0, p1, p2, p3):
        out = self.deconv(p3)
        # PySOT's and the authors' F.upsample default to nearest-neighbour resizing.
        out = self.post0(F.interpolate(self.h2(out) + self.v2(p2), size=(31, 31), mode='nearest'))
        out = self.post1(F.interpolate(self.h1(out) + self.v1(p1), size=(61, 61), mode='nearest'))
        out = self.post2(F.interpolate(self.h0(out) + self.v0(p0), size=(OUT_SIZE, OUT_SIZE), mode='nearest'))
        return out.reshape(-1, OUT_SIZE * OUT_SIZE)

    def forward(self, f, corr_feature, pos):
        """Tracking: ``pos`` = one (row, col) on the score map for the whole batch, or a (row, col)
        per sample; returns (B, 127*127) mask logits.

        Each level is padded and a window aligned with the position is cut at its stride relative
        to the score map (×4 for f0, ×2 for f1, ×1 for f2)."""
        batch = corr_feature.shape[0]
        cells = [tuple(pos)] * batch if np.ndim(pos) == 1 else [tuple(p) for p in pos]
        if len(cells) != batch:
            raise ValueError(f'{len(cells)} positions for a batch of {batch}')
        rows = [int(r) for r, _ in cells]
        cols = [int(c) for _, c in cells]

        def windows(level, size, scale, pad):
            padded = F.pad(level, [pad] * 4)
            return torch.stack([padded[i, :, scale * r:scale * r + size, scale * c:scale * c + size]
                                for i, (r, c) in enumerate(zip(rows, cols))])

        p0, p1, p2 = (windows(x, *window) for x, window in zip(f, _WINDOWS))
        index = torch.arange(batch, device=corr_feature.device)
        p3 = corr_feature[index, :, rows, cols].reshape(-1, self.corr_channels, 1, 1)
        return self._decode(p0, p1, p2, p3)

    def forward_all(self, f, corr_feature):
        """Training (the authors' refine stage): (B, H·W, 127*127) mask logits at every location of
        ``corr_feature`` (B, C, H, W), row-major, from unpadded windows of each level (a 143 search
        gives 69, 35 and 17 px levels and a 3×3 map: 3×3 windows each)."""
        b, c, h, w = corr_feature.shape
        levels = []
        for x, (size, stride, _) in zip(f, _WINDOWS):
            count = ((x.shape[-2] - size) // stride + 1, (x.shape[-1] - size) // stride + 1)
            if count != (h, w):
                raise ValueError(f'Refine training windows: a {x.shape[-2]}x{x.shape[-1]} level gives {count[0]}x'
                                 f'{count[1]} windows of {size} at stride {stride}, the score map is {h}x{w}; the '
                                 f'refine stage searches at 143 (TRAIN.SEARCH_SIZE=143, TRAIN.OUTPUT_SIZE=3)')
            levels.append(_windows_at_every_location(x, size, stride))
        p3 = corr_feature.permute(0, 2, 3, 1).reshape(-1, c, 1, 1)
        return self._decode(*levels, p3).reshape(b, h * w, OUT_SIZE * OUT_SIZE)
