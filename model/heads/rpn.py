"""RPN heads of SiamRPN / SiamRPN++ (state_dict-compatible with PySOT's ``head/rpn.py``).

Output layout (shared with the loss and the tracker): ``cls`` (B, 2A, H, W) where channels
0..A-1 are the class-0 (background) logits of anchors 0..A-1 and A..2A-1 the class-1 logits;
``loc`` (B, 4A, H, W) with channel = coord*A + anchor, coord in (dx, dy, dw, dh).
Weights keep PyTorch's default init: PySOT defines a kaiming init for heads but never calls it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .xcorr import xcorr_depthwise, xcorr_fast

__all__ = ['UPChannelRPN', 'DepthwiseXCorr', 'DepthwiseRPN', 'MultiRPN']


class UPChannelRPN(nn.Module):
    """Classic SiamRPN head: template convs "up-channel" into per-sample correlation kernels."""

    def __init__(self, anchor_num=5, feature_in=256):
        super().__init__()
        cls_out, loc_out = 2 * anchor_num, 4 * anchor_num
        self.template_cls_conv = nn.Conv2d(feature_in, feature_in * cls_out, kernel_size=3)
        self.template_loc_conv = nn.Conv2d(feature_in, feature_in * loc_out, kernel_size=3)
        self.search_cls_conv = nn.Conv2d(feature_in, feature_in, kernel_size=3)
        self.search_loc_conv = nn.Conv2d(feature_in, feature_in, kernel_size=3)
        self.loc_adjust = nn.Conv2d(loc_out, loc_out, kernel_size=1)

    def forward(self, z_f, x_f):
        cls = xcorr_fast(self.search_cls_conv(x_f), self.template_cls_conv(z_f))
        loc = self.loc_adjust(xcorr_fast(self.search_loc_conv(x_f), self.template_loc_conv(z_f)))
        return cls, loc


def _conv_bn_relu(in_channels, out_channels, kernel_size):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DepthwiseXCorr(nn.Module):
    """conv+BN+ReLU on both branches, depthwise correlation, then a 1×1 conv head.

    ``hidden_kernel_size`` is accepted for config compatibility; PySOT ignores it too.
    """

    def __init__(self, in_channels, hidden, out_channels, kernel_size=3, hidden_kernel_size=5):
        super().__init__()
        self.conv_kernel = _conv_bn_relu(in_channels, hidden, kernel_size)
        self.conv_search = _conv_bn_relu(in_channels, hidden, kernel_size)
        self.head = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, kernel_size=1),
        )

    def correlate(self, kernel, search):
        """The depthwise correlation feature (B, hidden, H', W') before the head."""
        return xcorr_depthwise(self.conv_search(search), self.conv_kernel(kernel))

    def forward(self, kernel, search):
        return self.head(self.correlate(kernel, search))


class DepthwiseRPN(nn.Module):
    """SiamRPN++ single-level head: separate DepthwiseXCorr for cls (2A) and loc (4A)."""

    def __init__(self, anchor_num=5, in_channels=256, out_channels=256):
        super().__init__()
        self.cls = DepthwiseXCorr(in_channels, out_channels, 2 * anchor_num)
        self.loc = DepthwiseXCorr(in_channels, out_channels, 4 * anchor_num)

    def forward(self, z_f, x_f):
        return self.cls(z_f, x_f), self.loc(z_f, x_f)


class MultiRPN(nn.Module):
    """One DepthwiseRPN per level (``rpn2``, ``rpn3``, ...), fused by mean or by a softmax of
    learnt per-level weights (``cls_weight``/``loc_weight``, initialised to ones) if ``weighted``."""

    def __init__(self, anchor_num, in_channels, weighted=False):
        super().__init__()
        self.weighted = weighted
        self.num = len(in_channels)
        for i, ch in enumerate(in_channels):
            self.add_module(f'rpn{i + 2}', DepthwiseRPN(anchor_num, ch, ch))
        if weighted:
            self.cls_weight = nn.Parameter(torch.ones(self.num))
            self.loc_weight = nn.Parameter(torch.ones(self.num))

    def forward(self, z_fs, x_fs):
        if len(z_fs) != self.num or len(x_fs) != self.num:
            raise ValueError(f'MultiRPN built for {self.num} levels got {len(z_fs)} template '
                             f'and {len(x_fs)} search feature maps')
        cls, loc = [], []
        for i, (z_f, x_f) in enumerate(zip(z_fs, x_fs)):
            c, l = getattr(self, f'rpn{i + 2}')(z_f, x_f)
            cls.append(c)
            loc.append(l)
        if self.weighted:
            return _weighted_sum(cls, F.softmax(self.cls_weight, 0)), \
                _weighted_sum(loc, F.softmax(self.loc_weight, 0))
        return sum(cls) / self.num, sum(loc) / self.num


def _weighted_sum(tensors, weights):
    # Accumulate level by level, in PySOT's order.
    out = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:]):
        out = out + t * w
    return out
