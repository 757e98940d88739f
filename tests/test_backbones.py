"""Backbones: PySOT state_dict keys/shapes, conv geometry and feature-map sizes.

Expected values are those of PySOT's `pysot/models/backbone/resnet_atrous.py`, `alexnet.py` and
`mobile_v2.py` (layer tables, kernel/stride/padding/dilation per stage, state_dict key names as
`model.state_dict()` of PySOT's modules prints them), written out here, not read from this
implementation's output.
"""
import pytest
import torch
import torch.nn as nn

from model.backbone import BACKBONES, get_backbone

BN_SUFFIXES = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def _forward(model, size, batch=1):
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(batch, 3, size, size))
    return out if isinstance(out, list) else [out]


def _shapes(outs):
    return [tuple(o.shape[1:]) for o in outs]


@pytest.fixture(scope='module')
def r50():
    torch.manual_seed(0)
    return get_backbone('resnet50', used_layers=[2, 3, 4]).eval()


# ---------------------------------------------------------------- ResNet-50 (SiamRPN++)

def test_resnet50_feature_maps_127_and_255(r50):
    assert _shapes(_forward(r50, 127)) == [(512, 15, 15), (1024, 15, 15), (2048, 15, 15)]
    assert _shapes(_forward(r50, 255)) == [(512, 31, 31), (1024, 31, 31), (2048, 31, 31)]
    assert r50.out_channels == [512, 1024, 2048]


def test_resnet50_parameter_count(r50):
    assert sum(p.numel() for p in r50.parameters()) == 45_528_128


def test_resnet50_state_dict_keys_match_pysot(r50):
    expected = {'conv1.weight'} | {f'bn1.{s}' for s in BN_SUFFIXES}
    for layer, blocks in ((1, 3), (2, 4), (3, 6), (4, 3)):
        for i in range(blocks):
            for j in (1, 2, 3):
                expected.add(f'layer{layer}.{i}.conv{j}.weight')
                expected |= {f'layer{layer}.{i}.bn{j}.{s}' for s in BN_SUFFIXES}
        expected.add(f'layer{layer}.0.downsample.0.weight')
        expected |= {f'layer{layer}.0.downsample.1.{s}' for s in BN_SUFFIXES}
    sd = r50.state_dict()
    assert set(sd) == expected
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes['conv1.weight'] == (64, 3, 7, 7)
    assert shapes['layer1.0.downsample.0.weight'] == (256, 64, 1, 1)
    assert shapes['layer2.0.downsample.0.weight'] == (512, 256, 3, 3)
    assert shapes['layer3.0.downsample.0.weight'] == (1024, 512, 3, 3)
    assert shapes['layer4.0.downsample.0.weight'] == (2048, 1024, 3, 3)
    assert shapes['layer4.2.bn3.running_var'] == (2048,)


def _geom(conv):
    return conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]


def test_resnet50_conv_geometry_matches_pysot_table(r50):
    # (kernel, stride, padding, dilation) per stage, as in PySOT's resnet_atrous.py
    assert _geom(r50.conv1) == (7, 2, 0, 1)
    assert _geom(r50.layer1[0].conv2) == (3, 1, 1, 1)
    assert _geom(r50.layer1[0].downsample[0]) == (1, 1, 0, 1)
    assert _geom(r50.layer2[0].conv2) == (3, 2, 0, 1)
    assert _geom(r50.layer2[0].downsample[0]) == (3, 2, 0, 1)
    assert all(_geom(b.conv2) == (3, 1, 1, 1) for b in r50.layer2[1:])
    assert _geom(r50.layer3[0].conv2) == (3, 1, 1, 1)
    assert _geom(r50.layer3[0].downsample[0]) == (3, 1, 1, 1)
    assert [_geom(b.conv2) for b in r50.layer3[1:]] == [(3, 1, 2, 2)] * 5
    assert _geom(r50.layer4[0].conv2) == (3, 1, 2, 2)
    assert _geom(r50.layer4[0].downsample[0]) == (3, 1, 2, 2)
    assert [_geom(b.conv2) for b in r50.layer4[1:]] == [(3, 1, 4, 4)] * 2
    assert all(m.bias is None for m in r50.modules() if isinstance(m, nn.Conv2d))


def test_resnet_init_follows_pysot():
    torch.manual_seed(0)
    m = get_backbone('resnet50', used_layers=[2])
    w = m.layer2[0].downsample[0].weight  # 3x3, 512 out: std sqrt(2 / (9 * 512))
    assert w.std().item() == pytest.approx((2 / (9 * 512)) ** 0.5, rel=0.02)
    assert abs(w.mean().item()) < 1e-3
    assert torch.all(m.bn1.weight == 1) and torch.all(m.bn1.bias == 0)


def test_resnet50_channels_last_bf16_autocast(r50):
    x = torch.randn(1, 3, 127, 127)
    with torch.no_grad():
        ref = r50(x)
        m = r50.to(memory_format=torch.channels_last)
        try:
            with torch.autocast('cpu', dtype=torch.bfloat16):
                out = m(x.to(memory_format=torch.channels_last))
        finally:
            r50.to(memory_format=torch.contiguous_format)
    for o, r in zip(out, ref):
        assert o.dtype == torch.bfloat16 and o.shape == r.shape
        assert torch.isfinite(o).all()
        assert ((o.float() - r).norm() / r.norm()).item() < 0.05


def test_resnet_unused_stages_not_built_and_single_output_is_tensor():
    m = get_backbone('resnet50', used_layers=[2]).eval()
    assert not any(k.startswith(('layer3.', 'layer4.')) for k in m.state_dict())
    with torch.no_grad():
        out = m(torch.randn(1, 3, 127, 127))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (1, 512, 15, 15)


@pytest.mark.parametrize('name,blocks', [('resnet18', [2, 2, 2, 2]), ('resnet34', [3, 4, 6, 3])])
def test_basicblock_resnets_build_and_run(name, blocks):
    m = get_backbone(name, used_layers=[0, 1, 2, 3, 4]).eval()
    for layer, n in enumerate(blocks, start=1):
        assert len(getattr(m, f'layer{layer}')) == n
    outs = _forward(m, 127)
    # stem after conv1 (7x7/2, pad 0): 61; then 31 after max-pool; stride 8 from layer2
    assert _shapes(outs) == [(64, 61, 61), (64, 31, 31), (128, 15, 15), (256, 15, 15), (512, 15, 15)]
    assert m.out_channels == [64, 64, 128, 256, 512]
    assert _geom(m.layer2[0].conv1) == (3, 2, 0, 1)
    assert _geom(m.layer3[0].conv1) == (3, 1, 1, 1)
    assert _geom(m.layer4[0].conv1) == (3, 1, 2, 2)
    assert _geom(m.layer4[-1].conv2) == (3, 1, 4, 4)


def test_resnet_rejects_bad_used_layers():
    with pytest.raises(ValueError, match='used_layers'):
        get_backbone('resnet18', used_layers=[5])


# ---------------------------------------------------------------- AlexNet

def test_alexnet_feature_maps():
    m = get_backbone('alexnet').eval()
    assert [_shapes(_forward(m, s))[0] for s in (127, 255, 287)] == \
        [(256, 6, 6), (256, 22, 22), (256, 26, 26)]
    assert m.feature_size == 256


def test_alexnet_keys_and_legacy_layout_are_the_same_network():
    new, legacy = get_backbone('alexnet').eval(), get_backbone('alexnetlegacy').eval()
    new_sd, old_sd = new.state_dict(), legacy.state_dict()
    conv_keys = [f'layer{i}.0.weight' for i in range(1, 6)]
    assert [tuple(new_sd[k].shape) for k in conv_keys] == \
        [(96, 3, 11, 11), (256, 96, 5, 5), (384, 256, 3, 3), (384, 384, 3, 3), (256, 384, 3, 3)]
    assert 'layer5.0.bias' in new_sd and 'layer5.1.running_mean' in new_sd
    # Legacy Sequential indices: conv, BN, pool, ReLU per stage (no pool in 3-5, no ReLU in 5)
    assert sorted({int(k.split('.')[1]) for k in old_sd}) == [0, 1, 4, 5, 8, 9, 11, 12, 14, 15]
    # Same tensors in the same order: loading one layout into the other gives the same output.
    assert [v.shape for v in new_sd.values()] == [v.shape for v in old_sd.values()]
    new.load_state_dict(dict(zip(new_sd, old_sd.values())))
    x = torch.randn(1, 3, 127, 127)
    with torch.no_grad():
        assert torch.equal(new(x), legacy(x))


def test_alexnet_width_mult_truncates_channels():
    m = get_backbone('alexnet', width_mult=0.3)
    # int(96*0.3)=28, int(256*0.3)=76, int(384*0.3)=115; input stays 3
    assert tuple(m.layer1[0].weight.shape) == (28, 3, 11, 11)
    assert tuple(m.layer5[0].weight.shape) == (76, 115, 3, 3)
    assert m.feature_size == 76


# ---------------------------------------------------------------- MobileNetV2

def test_mobilenetv2_width_1_4_outputs():
    m = get_backbone('mobilenetv2', width_mult=1.4, used_layers=[3, 5, 7]).eval()
    assert _shapes(_forward(m, 127)) == [(44, 15, 15), (134, 15, 15), (448, 15, 15)]
    assert _shapes(_forward(m, 255)) == [(44, 31, 31), (134, 31, 31), (448, 31, 31)]
    assert m.out_channels == [44, 134, 448]


def test_mobilenetv2_layout_and_dilation():
    m = get_backbone('mobilenetv2')
    assert _geom(m.layer0[0]) == (3, 2, 0, 1)
    assert [len(getattr(m, f'layer{i}')) for i in range(1, 8)] == [1, 2, 3, 4, 3, 3, 1]
    dw = {i: [b.conv[3] for b in getattr(m, f'layer{i}')] for i in range(1, 8)}
    assert _geom(dw[2][0]) == (3, 2, 0, 1)  # stride 2: padding 0
    assert _geom(dw[4][0]) == (3, 1, 1, 1)  # dilation grows 1 -> 2: first block halves it
    assert _geom(dw[4][1]) == (3, 1, 2, 2)
    assert _geom(dw[5][0]) == (3, 1, 2, 2)  # same dilation as before: kept
    assert _geom(dw[6][0]) == (3, 1, 2, 2)  # 2 -> 4: halved
    assert _geom(dw[7][0]) == (3, 1, 4, 4)
    # expansion-1 stage still has the 1x1 expansion conv (key layer1.0.conv.0.weight)
    assert tuple(m.state_dict()['layer1.0.conv.0.weight'].shape) == (32, 32, 1, 1)
    assert tuple(m.state_dict()['layer7.0.conv.6.weight'].shape) == (320, 960, 1, 1)


# ---------------------------------------------------------------- registry

def test_registry_names():
    assert set(BACKBONES) == {'alexnetlegacy', 'mobilenetv2', 'resnet18', 'resnet34',
                              'resnet50', 'alexnet'}


def test_unknown_backbone_names_valid_ones():
    with pytest.raises(ValueError) as err:
        get_backbone('res50')
    msg = str(err.value)
    assert "'res50'" in msg and 'resnet50' in msg and 'alexnetlegacy' in msg
    with pytest.raises(ValueError, match='mobilenetv2'):
        get_backbone('vgg16')


def test_unknown_kwarg_is_named():
    with pytest.raises(ValueError, match='width_mult'):
        get_backbone('resnet50', width_mult=1.0)
