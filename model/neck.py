"""Adjust ("neck") layers between backbone and heads, state_dict-compatible with PySOT.

``AdjustLayer``: 1×1 conv (no bias) + BN stored as ``downsample``; feature maps narrower than
20 px (the 15×15 template features) are then centre-cropped to ``center_size`` (7). The crop
comes after BN on purpose: in train mode BN statistics are taken over the full 15×15 map.
``AdjustAllLayer``: one AdjustLayer per level, named ``downsample`` for a single level
(SiamMask) or ``downsample2``, ``downsample3``, ... for several (SiamRPN++).

A caller may ask for another crop side (``center_size``): SiamMask's refine stage searches at
143, whose 17×17 features the authors' neck (``ResDownS``) trims by 4 px a side to 9×9 (a 3×3
score map), where PySOT's centre 7 would leave 1×1; for the 15×15 template both give 7×7.
"""
import torch.nn as nn

__all__ = ['AdjustLayer', 'AdjustAllLayer', 'get_neck', 'NECKS']

# PySOT crops only template-sized maps; search maps (31×31) are wider than this.
CROP_BELOW_WIDTH = 20


class AdjustLayer(nn.Module):
    def __init__(self, in_channels, out_channels, center_size=7):
        super().__init__()
        self.downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.center_size = center_size

    def forward(self, x, center_size=None):
        x = self.downsample(x)
        if x.shape[3] < CROP_BELOW_WIDTH:
            size = self.center_size if center_size is None else int(center_size)
            left = (x.shape[3] - size) // 2
            right = left + size
            x = x[:, :, left:right, left:right]
        return x


class AdjustAllLayer(nn.Module):
    """Per-level AdjustLayers; takes a tensor (one level) or a list of tensors (several)."""

    def __init__(self, in_channels, out_channels, center_size=7):
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ValueError(f'AdjustAllLayer: in_channels {list(in_channels)} and out_channels '
                             f'{list(out_channels)} differ in length')
        self.num = len(out_channels)
        if self.num == 1:
            self.downsample = AdjustLayer(in_channels[0], out_channels[0], center_size)
        else:
            for i in range(self.num):
                self.add_module(f'downsample{i + 2}',
                                AdjustLayer(in_channels[i], out_channels[i], center_size))

    def forward(self, features, center_size=None):
        if self.num == 1:
            return self.downsample(features, center_size)
        if len(features) != self.num:
            raise ValueError(f'AdjustAllLayer built for {self.num} levels got {len(features)}')
        return [getattr(self, f'downsample{i + 2}')(f, center_size) for i, f in enumerate(features)]


NECKS = {'AdjustLayer': AdjustLayer, 'AdjustAllLayer': AdjustAllLayer}


def get_neck(name, **kwargs):
    """Build the neck registered as ``name`` (cfg.ADJUST.TYPE) with cfg.ADJUST.KWARGS."""
    if name not in NECKS:
        raise KeyError(f'unknown neck type {name!r} (ADJUST.TYPE); known: {sorted(NECKS)}')
    return NECKS[name](**kwargs)
