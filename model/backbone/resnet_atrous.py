"""ResNet-18/34/50 in PySOT's "atrous" form (state_dict-compatible with PySOT).

Differences from torchvision's ResNet, all needed to load PySOT checkpoints and to
reproduce its feature-map sizes (127 -> 15, 255 -> 31 from layer2 on):
  * stem conv1 is 7x7 stride 2 with padding 0;
  * a stride-2 3x3 conv has padding 0 (padding = 2 - stride), also in the downsample;
  * downsample is 1x1 only when stride == 1 and dilation == 1 (layer1), otherwise 3x3;
  * layer3 / layer4 keep stride 1 and use dilation 2 / 4; the first block of a dilated
    stage (the one carrying the downsample) uses half that dilation;
  * layer3 / layer4 are only built when requested in ``used_layers``.
"""
import math

import torch.nn as nn

from .layers import check_used_layers

__all__ = ['ResNet', 'BasicBlock', 'Bottleneck', 'resnet18', 'resnet34', 'resnet50']

# Indices accepted in ``used_layers``: 0 = post-ReLU stem, 1..4 = layer1..layer4.
NUM_OUTPUTS = 5


def _conv3x3_padding(stride, dilation):
    """PySOT's padding rule for a 3x3 conv: the dilation if dilated, else 2 - stride."""
    if stride != 1 and dilation != 1:
        raise ValueError(f'a 3x3 conv cannot have both stride {stride} and dilation {dilation}')
    return dilation if dilation > 1 else 2 - stride


def _entry_dilation(dilation, has_downsample):
    """The block that changes shape (has a downsample) in a dilated stage uses half the dilation."""
    return dilation // 2 if has_downsample and dilation > 1 else dilation


class BasicBlock(nn.Module):
    """Two 3x3 convs; the first carries the stride (and the entry dilation)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        d1 = _entry_dilation(dilation, downsample is not None)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, dilation=d1,
                               padding=_conv3x3_padding(stride, d1), bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, dilation=dilation,
                               padding=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 with 4x channel expansion."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        d2 = _entry_dilation(dilation, downsample is not None)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, dilation=d2,
                               padding=_conv3x3_padding(stride, d2), bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Atrous ResNet returning the features listed in ``used_layers``.

    Outputs are indexed [stem (post-ReLU, 64 ch), layer1, layer2, layer3, layer4]; a single
    requested output is returned as a tensor, several as a list.

    Attributes: ``used_layers``; ``feature_size`` (as PySOT computes it: channels of the
    deepest built stage); ``out_channels`` (list, channels of each returned output).
    """

    def __init__(self, block, layers, used_layers=(2, 3, 4)):
        super().__init__()
        self.used_layers = check_used_layers(used_layers, NUM_OUTPUTS)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.feature_size = 128 * block.expansion
        stage_channels = [64, 64 * block.expansion, 128 * block.expansion,
                          256 * block.expansion, 512 * block.expansion]

        if 3 in used_layers:
            self.layer3 = self._make_layer(block, 256, layers[2], dilation=2)
            self.feature_size = (256 + 128) * block.expansion  # PySOT's value, kept as is
        else:
            self.layer3 = nn.Identity()
            stage_channels[3] = stage_channels[2]
        if 4 in used_layers:
            self.layer4 = self._make_layer(block, 512, layers[3], dilation=4)
            self.feature_size = 512 * block.expansion
        else:
            self.layer4 = nn.Identity()
            stage_channels[4] = stage_channels[3]
        self.out_channels = [stage_channels[i] for i in used_layers]
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes, blocks, stride=1, dilation=1):
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            if stride == 1 and dilation == 1:
                conv = nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False)
            else:
                dd = dilation // 2 if dilation > 1 else 1
                conv = nn.Conv2d(self.inplanes, out_planes, kernel_size=3, stride=stride,
                                 padding=dd if dilation > 1 else 0, dilation=dd, bias=False)
            downsample = nn.Sequential(conv, nn.BatchNorm2d(out_planes))

        stage = [block(self.inplanes, planes, stride, downsample, dilation=dilation)]
        self.inplanes = out_planes
        stage += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x):
        stem = self.relu(self.bn1(self.conv1(x)))
        p1 = self.layer1(self.maxpool(stem))
        p2 = self.layer2(p1)
        p3 = self.layer3(p2)
        p4 = self.layer4(p3)
        feats = [stem, p1, p2, p3, p4]
        out = [feats[i] for i in self.used_layers]
        return out[0] if len(out) == 1 else out


def resnet18(used_layers=(2, 3, 4)):
    """Atrous ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return ResNet(BasicBlock, [2, 2, 2, 2], used_layers)


def resnet34(used_layers=(2, 3, 4)):
    """Atrous ResNet-34 (BasicBlock, [3, 4, 6, 3])."""
    return ResNet(BasicBlock, [3, 4, 6, 3], used_layers)


def resnet50(used_layers=(2, 3, 4)):
    """Atrous ResNet-50 (Bottleneck, [3, 4, 6, 3]), as used by SiamRPN++ / SiamMask."""
    return ResNet(Bottleneck, [3, 4, 6, 3], used_layers)
