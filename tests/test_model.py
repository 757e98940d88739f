"""Model structure, shapes, parameter/key counts and FLOPs (PySOT compatibility).

Most checks build the network on the ``meta`` device (shapes only, no compute) so the file stays
fast; the few real forwards use batch 1. The pinned counts are those of PySOT's own `ModelBuilder`
(`pysot/models/model_builder.py`) built from its `experiments/*/config.yaml` for the same
architecture: state_dict length, parameter counts per module and tensor shapes, which anyone with
PySOT's code can reproduce with `len(model.state_dict())` and `sum(p.numel() ...)`. The FLOPs
are derived analytically below from the layer table of PySOT's `resnet_atrous.py`.
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import build_model, count_flops, flops_by_module, get_mask_head, get_neck, get_rpn_head
from model.heads import DepthwiseRPN, MultiRPN, Refine, UPChannelRPN, xcorr_depthwise, xcorr_fast
from model.neck import AdjustAllLayer, AdjustLayer
from train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'
SHIPPED = [
    'siamrpn_r50_l234_dwxcorr_8gpu.yaml', 'siamrpn_r50_l234_dwxcorr.yaml',
    'siamrpn_r50_l234_dwxcorr_otb.yaml', 'siamrpn_r50_l234_dwxcorr_otb_8gpu.yaml',
    'siamrpn_alex_dwxcorr.yaml', 'siamrpn_alex_dwxcorr_16gpu.yaml',
    'siamrpn_mobilev2_l234_dwxcorr.yaml', 'siammask_r50_l3.yaml', 'demo_cpu.yaml',
]
# Configs with a TRAIN section whose OUTPUT_SIZE describes the model at SEARCH_SIZE.
TRAINING = {'siamrpn_r50_l234_dwxcorr_8gpu.yaml', 'siamrpn_r50_l234_dwxcorr_otb_8gpu.yaml',
            'siamrpn_alex_dwxcorr_16gpu.yaml', 'demo_cpu.yaml'}
R50 = 'siamrpn_r50_l234_dwxcorr_8gpu.yaml'


def cfg_of(name, overrides=()):
    return load_config(CONFIGS / name, overrides=list(overrides))


def meta_model(cfg):
    with torch.device('meta'):
        return build_model(cfg).eval()


def fake_batch(b, out_size, device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    label_cls = torch.randint(-1, 2, (b, 5, out_size, out_size), generator=g)
    weight = (label_cls == 1).float()
    weight = weight / weight.sum(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    batch = {
        'template': torch.rand(b, 3, 127, 127, generator=g) * 255,
        'search': torch.rand(b, 3, 255, 255, generator=g) * 255,
        'label_cls': label_cls,
        'label_loc': torch.randn(b, 4, 5, out_size, out_size, generator=g),
        'label_loc_weight': weight,
    }
    return {k: v.to(device) for k, v in batch.items()}


# ---------------------------------------------------------------- shipped configs

@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_config_track_shapes(name):
    cfg = cfg_of(name)
    model = meta_model(cfg)
    # PySOT tracker's score-map size formula (independent of the network code).
    size = (cfg.TRACK.INSTANCE_SIZE - cfg.TRACK.EXEMPLAR_SIZE) // cfg.ANCHOR.STRIDE + 1 \
        + cfg.TRACK.BASE_SIZE
    a = cfg.ANCHOR.ANCHOR_NUM
    model.template(torch.zeros(1, 3, 127, 127, device='meta'))
    out = model.track(torch.zeros(1, 3, cfg.TRACK.INSTANCE_SIZE, cfg.TRACK.INSTANCE_SIZE,
                                  device='meta'))
    assert out['cls'].shape == (1, 2 * a, size, size)
    assert out['loc'].shape == (1, 4 * a, size, size)
    if cfg.MASK.MASK:
        assert out['mask'].shape == (1, 63 * 63, size, size)
        assert model.mask_refine((0, size - 1)).shape == (1, 127 * 127)
    else:
        assert 'mask' not in out


@pytest.mark.parametrize('name', sorted(TRAINING))
def test_training_config_forward_on_meta(name):
    cfg = cfg_of(name)
    model = meta_model(cfg).train()
    out_size = cfg.TRAIN.OUTPUT_SIZE
    model.template(torch.zeros(2, 3, 127, 127, device='meta'))
    assert model.track(torch.zeros(2, 3, 255, 255, device='meta'))['cls'].shape[-1] == out_size
    losses = model(fake_batch(2, out_size, device='meta'))
    assert set(losses) == {'total_loss', 'cls_loss', 'loc_loss'}
    assert all(v.shape == () for v in losses.values())


def test_siammask_training_needs_the_mask_labels():
    model = meta_model(cfg_of('siammask_r50_l3.yaml'))
    with pytest.raises(KeyError, match='label_mask'):
        model(fake_batch(1, 25, device='meta'))


# ---------------------------------------------------------------- R50 recipe: counts and keys

def test_r50_parameter_counts_match_pysot():
    model = meta_model(cfg_of(R50))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.backbone) == 45_528_128
    assert count(model.neck) == 919_040
    assert count(model.rpn_head) == 7_503_456
    assert count(model) == 53_950_624


def test_r50_state_dict_keys_match_pysot():
    sd = meta_model(cfg_of(R50)).state_dict()
    assert len(sd) == 458
    # 74 BatchNorm layers (53 backbone, 3 neck, 18 head) each own one num_batches_tracked.
    # 458 keys = 384 parameters and running statistics + 74 num_batches_tracked.
    assert sum(k.endswith('num_batches_tracked') for k in sd) == 74
    assert len([k for k in sd if not k.endswith('num_batches_tracked')]) == 384
    assert not any(k.startswith('module.') for k in sd)
    expected_shapes = {
        'backbone.conv1.weight': (64, 3, 7, 7),
        'backbone.layer1.0.downsample.0.weight': (256, 64, 1, 1),
        'backbone.layer2.0.downsample.0.weight': (512, 256, 3, 3),
        'backbone.layer3.0.downsample.0.weight': (1024, 512, 3, 3),
        'backbone.layer4.0.downsample.0.weight': (2048, 1024, 3, 3),
        'neck.downsample2.downsample.0.weight': (256, 512, 1, 1),
        'neck.downsample3.downsample.0.weight': (256, 1024, 1, 1),
        'neck.downsample4.downsample.0.weight': (256, 2048, 1, 1),
        'neck.downsample4.downsample.1.running_var': (256,),
        'rpn_head.cls_weight': (3,),
        'rpn_head.loc_weight': (3,),
        'rpn_head.rpn2.cls.conv_kernel.0.weight': (256, 256, 3, 3),
        'rpn_head.rpn3.loc.conv_search.1.weight': (256,),
        'rpn_head.rpn4.cls.head.0.weight': (256, 256, 1, 1),
        'rpn_head.rpn4.cls.head.3.weight': (10, 256, 1, 1),
        'rpn_head.rpn4.loc.head.3.weight': (20, 256, 1, 1),
        'rpn_head.rpn4.loc.head.3.bias': (20,),
    }
    assert {k: tuple(sd[k].shape) for k in expected_shapes} == expected_shapes


def test_other_configs_use_pysot_key_names():
    mask = meta_model(cfg_of('siammask_r50_l3.yaml')).state_dict()
    assert 'neck.downsample.downsample.0.weight' in mask
    assert 'rpn_head.cls.conv_kernel.0.weight' in mask
    assert mask['mask_head.head.3.weight'].shape == (3969, 256, 1, 1)
    assert mask['refine_head.deconv.weight'].shape == (256, 32, 15, 15)
    assert not any(k.startswith('backbone.layer4') for k in mask)
    alex = meta_model(cfg_of('siamrpn_alex_dwxcorr.yaml')).state_dict()
    assert 'backbone.features.0.weight' in alex and 'rpn_head.cls.conv_kernel.0.weight' in alex
    assert not any(k.startswith('neck.') for k in alex)
    unweighted = meta_model(cfg_of('siamrpn_r50_l234_dwxcorr_otb.yaml')).state_dict()
    assert 'rpn_head.cls_weight' not in unweighted and len(unweighted) == 456


# ---------------------------------------------------------------- FLOPs

def _conv_macs(out_hw, cin, cout, k=1, groups=1):
    return out_hw * out_hw * cin * cout * k * k // groups


def _r50_l234_macs(s):
    """Multiply-adds of PySOT's atrous ResNet-50 (`resnet_atrous.py`: conv1 7x7/2 unpadded, maxpool,
    layer2 stride 2 unpadded, layer3/4 dilated 2/4 with 3x3 downsamples) for an s x s input."""
    c1 = (s - 7) // 2 + 1            # conv1 7×7/2, no padding
    m = (c1 + 2 - 3) // 2 + 1        # maxpool 3×3/2, padding 1
    o = (m - 3) // 2 + 1             # layer2 stride-2 conv, no padding; layer3/4 keep size
    macs = _conv_macs(c1, 3, 64, 7)
    cin = 64
    for _ in range(3):               # layer1 at m×m
        macs += _conv_macs(m, cin, 64) + _conv_macs(m, 64, 64, 3) + _conv_macs(m, 64, 256)
        cin = 256
    macs += _conv_macs(m, 64, 256)   # layer1 1×1 downsample
    for planes, blocks, cin, first_at in ((128, 4, 256, m), (256, 6, 512, o), (512, 3, 1024, o)):
        out = 4 * planes
        macs += (_conv_macs(first_at, cin, planes) + _conv_macs(o, planes, planes, 3)
                 + _conv_macs(o, planes, out) + _conv_macs(o, cin, out, 3))  # 3×3 downsample
        macs += (blocks - 1) * (_conv_macs(o, out, planes) + _conv_macs(o, planes, planes, 3)
                                + _conv_macs(o, planes, out))
    return macs, o


def test_r50_flops_per_pair_pinned_and_analytic():
    """Pinned drift guard: 118,922,758,912 FLOPs (= 2 × 59,461,379,456 multiply-adds) per pair.

    Derived analytically: convolution MACs of the backbone on 127 and 255 inputs, the three
    1×1 neck convs on 15×15 and 31×31 maps, and per level and per branch (cls 10 / loc 20
    outputs) the head's 3×3 template conv (7→5), 3×3 search conv (31→29), 5×5 depthwise
    correlation (→25×25) and two 1×1 convs; FlopCounterMode counts 2 FLOPs per MAC and skips
    element-wise ops, so the two must agree exactly."""
    model = meta_model(cfg_of(R50))
    backbone_z, oz = _r50_l234_macs(127)
    backbone_x, ox = _r50_l234_macs(255)
    assert (oz, ox) == (15, 31)
    neck = sum(_conv_macs(o, c, 256) for o in (oz, ox) for c in (512, 1024, 2048))
    head = 3 * sum(_conv_macs(5, 256, 256, 3) + _conv_macs(29, 256, 256, 3)
                   + _conv_macs(25, 256, 256, 5, groups=256) + _conv_macs(25, 256, 256)
                   + _conv_macs(25, 256, out) for out in (10, 20))
    assert flops_by_module(model) == {'backbone': 2 * (backbone_z + backbone_x),
                                      'neck': 2 * neck, 'rpn_head': 2 * head}
    flops = count_flops(model)
    assert flops == 2 * (backbone_z + backbone_x + neck + head) == 118_922_758_912
    # Order of magnitude: a ResNet-50 at 224² is ~4.1 GMACs; stride-8 layer3/4 with 3×3
    # downsamples on a 255 search image make it an order of magnitude more.
    assert 40e9 < flops / 2 < 80e9
    assert count_flops(model, batch=2) == flops


# ---------------------------------------------------------------- real forwards

def test_r50_channels_last_bf16_autocast_forward():
    torch.manual_seed(0)
    cfg = cfg_of(R50)
    model = build_model(cfg).train().to(memory_format=torch.channels_last)
    batch = fake_batch(1, 25)
    for key in ('template', 'search'):
        batch[key] = batch[key].contiguous(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(batch)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())
    assert out['cls_loss'] > 0 and out['loc_loss'] > 0
    expected = cfg.TRAIN.CLS_WEIGHT * out['cls_loss'] + cfg.TRAIN.LOC_WEIGHT * out['loc_loss']
    assert torch.allclose(out['total_loss'], expected)


def test_demo_bf16_channels_last_matches_fp32_and_trains():
    torch.manual_seed(0)
    cfg = cfg_of('demo_cpu.yaml', ['TRAIN.CLS_WEIGHT=2.0', 'TRAIN.LOC_WEIGHT=0.5'])
    model = build_model(cfg).eval()
    batch = fake_batch(2, cfg.TRAIN.OUTPUT_SIZE)
    ref = model(batch)
    assert torch.allclose(ref['total_loss'], 2.0 * ref['cls_loss'] + 0.5 * ref['loc_loss'])
    model_cl = model.to(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = model_cl({k: (v.contiguous(memory_format=torch.channels_last) if v.dim() == 4
                            and v.shape[1] == 3 else v) for k, v in batch.items()})
    for key in ref:
        assert torch.allclose(low[key], ref[key], rtol=5e-2, atol=1e-2), key
    model.train()
    model(batch)['total_loss'].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_training_forward_traces_as_one_graph():
    # torch.compile(fullgraph=True) fails on any graph break (data-dependent shapes, .item()).
    torch.manual_seed(0)
    model = build_model(cfg_of('demo_cpu.yaml')).eval()
    batch = fake_batch(2, 17)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    got, ref = compiled(batch), model(batch)
    for key in ref:
        assert torch.allclose(got[key], ref[key]), key


def test_track_before_template_raises():
    model = meta_model(cfg_of('demo_cpu.yaml'))
    with pytest.raises(RuntimeError, match='template'):
        model.track(torch.zeros(1, 3, 255, 255, device='meta'))


def test_forward_names_missing_batch_keys():
    model = meta_model(cfg_of('demo_cpu.yaml'))
    batch = fake_batch(1, 17, device='meta')
    del batch['label_loc_weight']
    with pytest.raises(KeyError, match='label_loc_weight'):
        model(batch)


# ---------------------------------------------------------------- components

def _loop_xcorr(search, kernel, depthwise):
    outs = []
    for s, k in zip(search, kernel):
        if depthwise:
            outs.append(F.conv2d(s[None], k[:, None], groups=s.shape[0]))
        else:
            outs.append(F.conv2d(s[None], k.reshape(-1, s.shape[0], *k.shape[1:])))
    return torch.cat(outs)


@pytest.mark.parametrize('channels_last', [False, True])
def test_xcorr_matches_per_sample_convolution(channels_last):
    g = torch.Generator().manual_seed(1)
    search, kernel = torch.randn(3, 4, 9, 9, generator=g), torch.randn(3, 4, 3, 3, generator=g)
    kernel_full = torch.randn(3, 2 * 4, 3, 3, generator=g)
    if channels_last:
        search = search.contiguous(memory_format=torch.channels_last)
        kernel = kernel.contiguous(memory_format=torch.channels_last)
    dw = xcorr_depthwise(search, kernel)
    assert dw.shape == (3, 4, 7, 7)
    assert torch.allclose(dw, _loop_xcorr(search, kernel, True), atol=1e-5)
    full = xcorr_fast(search, kernel_full)
    assert full.shape == (3, 2, 7, 7)
    assert torch.allclose(full, _loop_xcorr(search, kernel_full, False), atol=1e-5)


def test_adjust_layer_crops_template_maps_only():
    torch.manual_seed(0)
    layer = AdjustLayer(6, 4).eval()
    z, x = torch.randn(1, 6, 15, 15), torch.randn(1, 6, 31, 31)
    full = layer.downsample(z)
    assert torch.equal(layer(z), full[:, :, 4:11, 4:11])
    assert torch.equal(layer(x), layer.downsample(x))
    single = get_neck('AdjustAllLayer', in_channels=[6], out_channels=[4])
    assert isinstance(single.downsample, AdjustLayer) and single(z).shape == (1, 4, 7, 7)
    multi = AdjustAllLayer([6, 8], [4, 4])
    assert [n for n, _ in multi.named_children()] == ['downsample2', 'downsample3']
    outs = multi([z, torch.randn(1, 8, 31, 31)])
    assert [o.shape[-1] for o in outs] == [7, 31]


@pytest.mark.parametrize('weighted', [True, False])
def test_multi_rpn_fusion(weighted):
    torch.manual_seed(0)
    head = MultiRPN(anchor_num=5, in_channels=[8, 8, 8], weighted=weighted).eval()
    zs = [torch.randn(2, 8, 7, 7) for _ in range(3)]
    xs = [torch.randn(2, 8, 31, 31) for _ in range(3)]
    per_level = [getattr(head, f'rpn{i + 2}')(z, x) for i, (z, x) in enumerate(zip(zs, xs))]
    if weighted:
        with torch.no_grad():
            head.cls_weight.copy_(torch.tensor([0.0, 1.0, 2.0]))
            head.loc_weight.copy_(torch.tensor([2.0, 0.0, -1.0]))
        wc = torch.exp(torch.tensor([0.0, 1.0, 2.0]))
        wl = torch.exp(torch.tensor([2.0, 0.0, -1.0]))
        wc, wl = wc / wc.sum(), wl / wl.sum()
    else:
        wc = wl = torch.full((3,), 1 / 3)
    cls, loc = head(zs, xs)
    assert cls.shape == (2, 10, 25, 25) and loc.shape == (2, 20, 25, 25)
    assert torch.allclose(cls, sum(w * c for w, (c, _) in zip(wc, per_level)), atol=1e-5)
    assert torch.allclose(loc, sum(w * l for w, (_, l) in zip(wl, per_level)), atol=1e-5)


def test_upchannel_rpn_shapes_and_keys():
    head = get_rpn_head('UPChannelRPN', anchor_num=5, feature_in=16)
    assert isinstance(head, UPChannelRPN)
    cls, loc = head(torch.randn(2, 16, 6, 6), torch.randn(2, 16, 22, 22))
    assert cls.shape == (2, 10, 17, 17) and loc.shape == (2, 20, 17, 17)
    assert head.template_loc_conv.weight.shape == (16 * 20, 16, 3, 3)
    assert set(dict(head.named_children())) == {
        'template_cls_conv', 'template_loc_conv', 'search_cls_conv', 'search_loc_conv',
        'loc_adjust'}
    assert isinstance(get_rpn_head('DepthwiseRPN', anchor_num=5, in_channels=8,
                                   out_channels=8), DepthwiseRPN)


def test_refine_uses_only_the_window_at_pos():
    torch.manual_seed(0)
    refine = Refine().eval()
    f = [torch.randn(1, 64, 125, 125), torch.randn(1, 256, 63, 63), torch.randn(1, 512, 31, 31)]
    corr = torch.randn(1, 256, 25, 25)
    with torch.no_grad():
        out = refine(f, corr, (0, 0))
        assert out.shape == (1, 127 * 127)
        assert refine(f, corr, (24, 24)).shape == (1, 127 * 127)
        # At pos (0, 0) the windows cover rows/cols < 11 (f2), < 23 (f1), < 45 (f0) and only
        # corr[:, :, 0, 0]; changing everything beyond must not change the mask.
        g = [f[0].clone(), f[1].clone(), f[2].clone()]
        g[0][:, :, 45:, :] += 1
        g[1][:, :, :, 23:] += 1
        g[2][:, :, 11:, 11:] += 1
        corr2 = corr.clone()
        corr2[:, :, 1:, :] += 1
        assert torch.equal(refine(g, corr2, (0, 0)), out)
        g[2][:, :, 10, 10] += 1
        assert not torch.equal(refine(g, corr2, (0, 0)), out)


def test_mask_corr_returns_feature():
    head = get_mask_head('MaskCorr', in_channels=8, hidden=8, out_channels=9).eval()
    out, feature = head(torch.randn(1, 8, 7, 7), torch.randn(1, 8, 31, 31))
    assert out.shape == (1, 9, 25, 25) and feature.shape == (1, 8, 25, 25)
    assert torch.allclose(head.head(feature), out)


@pytest.mark.parametrize('factory,name', [(get_neck, 'Nope'), (get_rpn_head, 'Nope'),
                                          (get_mask_head, 'Nope')])
def test_unknown_component_names_are_listed(factory, name):
    with pytest.raises(KeyError, match='known'):
        factory(name)
