"""SiamMask heads (state_dict-compatible with PySOT's ``head/mask.py``); inference only.

``MaskCorr`` is a DepthwiseXCorr whose head predicts 63×63 = 3969 mask logits per position and
which also returns the correlation feature. ``Refine`` turns the correlation vector at one
score-map position plus the backbone's shallow search features into 127×127 mask logits.
Mask training is not implemented (PySOT does not implement it either).
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


class Refine(nn.Module):
    """SiamMask refinement module for search features f0 (64ch, 125px), f1 (256ch, 63px),
    f2 (512ch, 31px) of a 255 search image and a (B, 256, 25, 25) correlation feature."""

    def __init__(self):
        super().__init__()
        self.v0 = _two_convs(64, 16, 4)
        self.v1 = _two_convs(256, 64, 16)
        self.v2 = _two_convs(512, 128, 32)
        self.h2 = _two_convs(32, 32, 32)
        self.h1 = _two_convs(16, 16, 16)
        self.h0 = _two_convs(4, 4, 4)
        self.deconv = nn.ConvTranspose2d(256, 32, 15, 15)
        self.post0 = nn.Conv2d(32, 16, 3, padding=1)
        self.post1 = nn.Conv2d(16, 4, 3, padding=1)
        self.post2 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, f, corr_feature, pos):
        """``pos``: one (row, col) on the score map for the whole batch, or a (row, col) per
        sample; returns (B, 127*127) mask logits.

        Each level is padded and a window aligned with the position is cut at its stride
        relative to the score map (×4 for f0, ×2 for f1, ×1 for f2)."""
        batch = corr_feature.shape[0]
        cells = [tuple(pos)] * batch if np.ndim(pos) == 1 else [tuple(p) for p in pos]
        if len(cells) != batch:
            raise ValueError(f'{len(cells)} positions for a batch of {batch}')
        rows = [int(r) for r, _ in cells]
        cols = [int(c) for _, c in cells]

        def windows(level, pad, scale, size):
            padded = F.pad(level, [pad] * 4)
            return torch.stack([padded[i, :, scale * r:scale * r + size, scale * c:scale * c + size]
                                for i, (r, c) in enumerate(zip(rows, cols))])

        p0 = windows(f[0], 16, 4, 61)
        p1 = windows(f[1], 8, 2, 31)
        p2 = windows(f[2], 4, 1, 15)
        index = torch.arange(batch, device=corr_feature.device)
        p3 = corr_feature[index, :, rows, cols].reshape(-1, 256, 1, 1)

        out = self.deconv(p3)
        # PySOT's F.upsample defaults to nearest-neighbour resizing.
        out = self.post0(F.interpolate(self.h2(out) + self.v2(p2), size=(31, 31), mode='nearest'))
        out = self.post1(F.interpolate(self.h1(out) + self.v1(p1), size=(61, 61), mode='nearest'))
        out = self.post2(F.interpolate(self.h0(out) + self.v0(p0), size=(127, 127), mode='nearest'))
        return out.reshape(-1, 127 * 127)
