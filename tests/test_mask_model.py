"""SiamMask training in the model (model/builder.py, model/heads/mask.py, model/neck.py): both
stages' losses against the authors' definitions, the Refine training path against theirs and
against the tracking path, the 143 search's neck trim, PySOT's key structure, one graph."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mask_batches import SMALL_MASK, mask_batch
from model import build_model
from model.heads import Refine
from model.neck import AdjustLayer
from siammask_reference import authors_mask_loss, authors_refine_training, pysot_refine_at
from train.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


def small(stage, *extra):
    return load_config(CONFIGS / f'siammask_r50_l3_{stage}.yaml', SMALL_MASK + list(extra))


def _eval_model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()  # eval: BN uses running statistics, so two forwards agree


def test_base_stage_losses_are_the_authors():
    cfg = small('base')
    model = _eval_model(cfg)
    batch = mask_batch(cfg, 3, seed=1)
    assert batch['label_mask_weight'].sum() > 0
    with torch.no_grad():
        out = model(batch)
        zf, _ = model._features(batch['template'])
        xf, _ = model._features(batch['search'], search=True)
        pred, _ = model.mask_head(zf, xf)
        ref = authors_mask_loss(pred, batch['label_mask'], batch['label_mask_weight'], padding=32)
    assert set(out) == set(model.loss_keys + model.figure_keys)
    torch.testing.assert_close(out['mask_loss'], ref[0])
    for key, want in zip(('mask_iou_mean', 'mask_iou_at_5', 'mask_iou_at_7'), ref[1:]):
        torch.testing.assert_close(out[key], want)
    total = 1.0 * out['cls_loss'] + 1.2 * out['loc_loss'] + 36 * out['mask_loss']
    torch.testing.assert_close(out['total_loss'], total)


def test_refine_stage_losses_are_the_authors():
    cfg = small('refine')
    model = _eval_model(cfg)
    batch = mask_batch(cfg, 2, seed=2)
    with torch.no_grad():
        out = model(batch)
        feats = model.backbone(batch['template'])
        zf = model.neck(feats[-1])
        feats = model.backbone(batch['search'])
        xf = model.neck(feats[-1], 9)  # the authors' neck: 17x17 search maps trimmed by 4 px a side
        corr = model.mask_head.correlate(zf, xf)
        assert corr.shape[-2:] == (3, 3)
        pred = authors_refine_training(model.refine_head, feats[:-1], corr)
        ref = authors_mask_loss(pred, batch['label_mask'], batch['label_mask_weight'], padding=0)
    torch.testing.assert_close(out['mask_loss'], ref[0])
    torch.testing.assert_close(out['mask_iou_mean'], ref[1])
    torch.testing.assert_close(out['total_loss'], 36 * out['mask_loss'])  # cls and loc weigh 0


def test_refine_training_windows_are_the_tracking_windows():
    """forward_all over the levels padded as the tracking path pads them (16, 8, 4 px) gives, at
    every location, what tracking gives there; and unpadded it is the authors' training path."""
    torch.manual_seed(0)
    refine = Refine(channels=(8, 16, 32), corr_channels=24).eval()
    f = [torch.randn(2, 8, 37, 37), torch.randn(2, 16, 19, 19), torch.randn(2, 32, 9, 9)]  # 3x3 locations
    corr = torch.randn(2, 24, 3, 3)
    with torch.no_grad():
        padded = [F.pad(x, [p] * 4) for x, p in zip(f, (16, 8, 4))]
        every = refine.forward_all(padded, corr)
        assert every.shape == (2, 9, 127 * 127)
        for r in range(3):
            for c in range(3):
                torch.testing.assert_close(every[:, 3 * r + c], refine(f, corr, (r, c)))
                torch.testing.assert_close(every[:, 3 * r + c], pysot_refine_at(refine, f, corr, (r, c)))
        unpadded = [torch.randn(2, 8, 69, 69), torch.randn(2, 16, 35, 35), torch.randn(2, 32, 17, 17)]
        torch.testing.assert_close(refine.forward_all(unpadded, corr).reshape(-1, 127 * 127),
                                   authors_refine_training(refine, unpadded, corr))


def test_refine_training_at_another_search_size_is_refused():
    cfg = small('refine', 'TRAIN.SEARCH_SIZE=255', 'TRAIN.BASE_SIZE=8', 'TRAIN.OUTPUT_SIZE=25')
    model = _eval_model(cfg)
    with pytest.raises(ValueError, match='refine stage searches at 143'):
        model(mask_batch(cfg, 1, seed=0))


def test_refine_starts_from_the_authors_init():
    torch.manual_seed(0)
    refine = Refine()
    conv = refine.v1[0]  # kaiming-uniform with a=1: bound sqrt(3 / fan_in), not PyTorch's sqrt(1 / fan_in)
    bound = (3.0 / (conv.in_channels * 9)) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    deconv_bound = 1.0 / (refine.deconv.weight.shape[1] * 15 * 15) ** 0.5  # left at PyTorch's default
    assert refine.deconv.weight.abs().max() <= deconv_bound


def test_search_maps_under_20_px_are_trimmed_as_the_authors_do():
    layer = AdjustLayer(4, 4).eval()
    x = torch.randn(1, 4, 17, 17)
    full = layer.downsample(x)
    torch.testing.assert_close(layer(x, 9), full[:, :, 4:13, 4:13])
    torch.testing.assert_close(layer(x), full[:, :, 5:12, 5:12])  # PySOT's centre 7 when not asked
    z = torch.randn(1, 4, 15, 15)
    torch.testing.assert_close(layer(z), layer.downsample(z)[:, :, 4:11, 4:11])
    cfg = small('refine')
    model = _eval_model(cfg)
    with torch.no_grad():
        xf, shallow = model._features(torch.zeros(1, 3, 143, 143), search=True)
        zf, _ = model._features(torch.zeros(1, 3, 127, 127))
    assert xf.shape[-1] == 9 and zf.shape[-1] == 7 and [s.shape[-1] for s in shallow] == [69, 35, 17]


def test_tracking_keeps_pysot_refine_and_mask_outputs():
    cfg = small('refine')
    model = _eval_model(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.template(torch.rand(1, 3, 127, 127, generator=g) * 255)
        out = model.track(torch.rand(1, 3, 255, 255, generator=g) * 255)
        assert out['mask'].shape == (1, 3969, 25, 25)
        for pos in ((0, 0), (12, 7), (24, 24)):
            torch.testing.assert_close(model.mask_refine(pos),
                                       pysot_refine_at(model.refine_head, model.xf, model.mask_corr_feature, pos))


def _meta(name, *extra):
    with torch.device('meta'):
        return build_model(load_config(CONFIGS / name, list(extra)))


def test_stage_checkpoints_have_pysot_siammask_keys():
    """The refine stage's state_dict is PySOT's siammask_r50_l3 (keys and shapes); the base stage's
    is that without refine_head (PySOT's load_pretrain loads it, reporting refine_head missing)."""
    pysot = {k: tuple(v.shape) for k, v in _meta('siammask_r50_l3.yaml').state_dict().items()}
    refine = {k: tuple(v.shape) for k, v in _meta('siammask_r50_l3_refine.yaml').state_dict().items()}
    base = {k: tuple(v.shape) for k, v in _meta('siammask_r50_l3_base.yaml').state_dict().items()}
    assert refine == pysot
    assert base == {k: v for k, v in pysot.items() if not k.startswith('refine_head.')}
    assert len(pysot) - len(base) == 32  # refine_head: 16 (transposed) convs, weight and bias each


def test_mask_batches_without_mask_keys_are_named():
    cfg = small('base')
    batch = mask_batch(cfg, 1, seed=0)
    del batch['label_mask_weight']
    with pytest.raises(KeyError, match='label_mask_weight'):
        _eval_model(cfg)(batch)


@pytest.mark.parametrize('stage', ['base', 'refine'])
def test_training_forward_traces_as_one_graph(stage):
    # fullgraph fails on any graph break: a data-dependent shape (nonzero) or a host read (.item()).
    cfg = small(stage)
    model = _eval_model(cfg)
    batch = mask_batch(cfg, 2, seed=4)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.no_grad():
        got, ref = compiled(batch), model(batch)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('stage', ['base', 'refine'])
def test_training_step_reads_nothing_back_on_cuda(stage):
    """Forward and backward of both stages under bf16 autocast and channels_last, with CUDA's sync
    debug mode set to raise on any host-device synchronisation."""
    cfg = small(stage)
    torch.manual_seed(0)
    model = build_model(cfg).cuda().train().to(memory_format=torch.channels_last)
    batch = {k: v.cuda() for k, v in mask_batch(cfg, 4, seed=5).items()}
    with torch.autocast('cuda', dtype=torch.bfloat16):
        model(batch)['total_loss'].backward()  # warm-up: lazy initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        with torch.autocast('cuda', dtype=torch.bfloat16):
            out = model(batch)
        out['total_loss'].backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.isfinite(out['mask_loss']) and out['mask_iou_mean'].dtype == torch.float32
