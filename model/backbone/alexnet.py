"""AlexNet backbones of SiamRPN (state_dict-compatible with PySOT).

Both variants have the same five conv+BN stages with no padding (127 -> 6, 255 -> 22,
287 -> 26); they differ only in module naming:
  * ``alexnet``: stages ``layer1`` .. ``layer5`` (keys ``layer1.0.weight`` ...);
  * ``alexnetlegacy``: one ``features`` Sequential (keys ``features.0.weight`` ...), the
    layout of the original SiamRPN model files.
Conv layers keep their bias and PyTorch's default init (PySOT applies no custom init here).
"""
import torch.nn as nn

__all__ = ['AlexNet', 'AlexNetLegacy', 'alexnet', 'alexnetlegacy', 'alexnet_channels']

# Input channels followed by the output channels of the five conv stages.
BASE_CHANNELS = [3, 96, 256, 384, 384, 256]
# (kernel, stride, followed by a 3x3/2 max-pool, followed by ReLU) for each stage.
_STAGES = [(11, 2, True, True), (5, 1, True, True), (3, 1, False, True),
           (3, 1, False, True), (3, 1, False, False)]


def alexnet_channels(width_mult=1):
    """Channel list scaled by ``width_mult`` (truncated to int); the 3 input channels stay 3."""
    return [3] + [int(c * width_mult) for c in BASE_CHANNELS[1:]]


def _stage_modules(cin, cout, kernel, stride, pool, relu):
    # Order conv, BN, max-pool, ReLU as in PySOT (keeps the Sequential indices identical).
    mods = [nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride), nn.BatchNorm2d(cout)]
    if pool:
        mods.append(nn.MaxPool2d(kernel_size=3, stride=2))
    if relu:
        mods.append(nn.ReLU(inplace=True))
    return mods


class AlexNet(nn.Module):
    """AlexNet with stages ``layer1``..``layer5``; returns the last stage's tensor."""

    def __init__(self, width_mult=1):
        super().__init__()
        ch = alexnet_channels(width_mult)
        for i, spec in enumerate(_STAGES):
            self.add_module(f'layer{i + 1}', nn.Sequential(*_stage_modules(ch[i], ch[i + 1], *spec)))
        self.feature_size = ch[-1]
        self.out_channels = [ch[-1]]

    def forward(self, x):
        for i in range(len(_STAGES)):
            x = getattr(self, f'layer{i + 1}')(x)
        return x


class AlexNetLegacy(nn.Module):
    """The same network as :class:`AlexNet` flattened into one ``features`` Sequential."""

    def __init__(self, width_mult=1):
        super().__init__()
        ch = alexnet_channels(width_mult)
        mods = []
        for i, spec in enumerate(_STAGES):
            mods += _stage_modules(ch[i], ch[i + 1], *spec)
        self.features = nn.Sequential(*mods)
        self.feature_size = ch[-1]
        self.out_channels = [ch[-1]]

    def forward(self, x):
        return self.features(x)


def alexnet(width_mult=1):
    """AlexNet backbone with ``layer1..layer5`` keys."""
    return AlexNet(width_mult)


def alexnetlegacy(width_mult=1):
    """AlexNet backbone with ``features.N`` keys."""
    return AlexNetLegacy(width_mult)
