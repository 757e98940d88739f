"""Helpers of the VOS tests: a tiny synthetic DAVIS set (the project's writer,
`pipeline.synthetic.make_dataset('DAVIS')`) and a scaled-down random-weight SiamMask."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from model import build_model
from pipeline.synthetic import make_dataset
from train.config import load_config

SMALL_SIAMMASK = ['TRACK.INSTANCE_SIZE=175']  # a 15 x 15 score map instead of 25 x 25


def tiny_davis(root, frames: int = 5, broken: bool = False) -> Path:
    """4 sequences of `frames` 96x64 frames: val = bear-walk (1 object) and camel-run (3 objects,
    occluding one another), train = boat-drift (1) and car-loop (2; 2016/train lists boat-drift
    only); 255 (void) along every object border.  `broken`: a truncated JPEG in bear-walk, a
    corrupt and a missing PNG in boat-drift."""
    make_dataset('DAVIS', root, videos=4, frames=frames, size=(96, 64), broken=broken, seed=0)
    return Path(root)


def small_siammask(overrides=(), seed: int = 0):
    """(cfg, model): SiamMask R50 (configs/siammask_r50_l3.yaml) scaled down for CPU tests: a
    175-pixel search and one bottleneck block per ResNet stage (channels, strides and dilations
    unchanged, so neck, heads and refine see the shapes they expect), random weights and
    non-trivial BatchNorm statistics (a fresh model's mean 0 / var 1 hide rounding)."""
    cfg = load_config('configs/siammask_r50_l3.yaml', overrides=[*SMALL_SIAMMASK, *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg)
    for name in ('layer1', 'layer2', 'layer3'):
        setattr(model.backbone, name, getattr(model.backbone, name)[:1])
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return cfg, model.eval()
