"""MobileNetV2 backbone of PySOT (state_dict-compatible; keys ``layer0`` .. ``layer7``).

PySOT's variant differs from the classification MobileNetV2:
  * ``layer0`` is a 3x3 stride-2 conv with padding 0 (+BN+ReLU6);
  * every inverted residual has the 1x1 expansion conv, even with expansion 1;
  * a 3x3 depthwise conv has padding ``2 - stride`` (0 for stride 2) or the dilation;
  * layers 4..7 keep stride 1 and use dilation 2 / 2 / 4 / 4; the first block of a stage
    whose dilation grows uses half of it. Output stride 8: 127 -> 15, 255 -> 31.
No custom init (PyTorch defaults), as in PySOT.
"""
import torch.nn as nn

from .layers import check_used_layers

__all__ = ['MobileNetV2', 'InvertedResidual', 'mobilenetv2']

# expansion t, output channels c, blocks n, first stride s, dilation d  (layer1..layer7)
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1, 1],
    [6, 24, 2, 2, 1],
    [6, 32, 3, 2, 1],
    [6, 64, 4, 1, 2],
    [6, 96, 3, 1, 2],
    [6, 160, 3, 1, 4],
    [6, 320, 1, 1, 4],
]
NUM_LAYERS = 1 + len(INVERTED_RESIDUAL_SETTING)


def _conv_bn_relu6(inp, oup, stride, padding):
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, padding, bias=False),
                         nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride, dilation) -> 1x1 linear projection, stored as ``conv``."""

    def __init__(self, inp, oup, stride, expand_ratio, dilation=1):
        super().__init__()
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        padding = dilation if dilation > 1 else 2 - stride
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, padding, dilation=dilation, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 returning the outputs of ``layer{i}`` for i in ``used_layers`` (0..7).

    A single requested output is returned as a tensor, several as a list. Attributes:
    ``used_layers``, ``out_channels`` (channels of each returned output), and PySOT's
    ``channels`` / ``last_channel`` (informational, unused by PySOT's model).
    """

    def __init__(self, width_mult=1.0, used_layers=(3, 5, 7)):
        super().__init__()
        self.used_layers = check_used_layers(used_layers, NUM_LAYERS)
        self.channels = [int(c * width_mult) for c in (24, 32, 96, 320)]
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280

        input_channel = int(32 * width_mult)
        layer_channels = [input_channel]
        self.add_module('layer0', _conv_bn_relu6(3, input_channel, 2, 0))
        last_dilation = 1
        for idx, (t, c, n, s, d) in enumerate(INVERTED_RESIDUAL_SETTING, start=1):
            output_channel = int(c * width_mult)
            first_dilation = d if d == last_dilation else max(d // 2, 1)
            blocks = [InvertedResidual(input_channel, output_channel, s, t, first_dilation)]
            blocks += [InvertedResidual(output_channel, output_channel, 1, t, d) for _ in range(1, n)]
            self.add_module(f'layer{idx}', nn.Sequential(*blocks))
            input_channel = output_channel
            last_dilation = d
            layer_channels.append(output_channel)
        self.out_channels = [layer_channels[i] for i in used_layers]

    def forward(self, x):
        outputs = []
        # Layers after the deepest requested one are not run (they cannot affect the output).
        for idx in range(max(self.used_layers) + 1):
            x = getattr(self, f'layer{idx}')(x)
            outputs.append(x)
        out = [outputs[i] for i in self.used_layers]
        return out[0] if len(out) == 1 else out


def mobilenetv2(width_mult=1.0, used_layers=(3, 5, 7)):
    """PySOT's dilated MobileNetV2 backbone."""
    return MobileNetV2(width_mult, used_layers)
