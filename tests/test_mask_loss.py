"""SiamMask's mask loss (model/loss.py) against a transcription of the authors' definition
(tests/siammask_reference.py) on random inputs: base stage (63x63 maps on a 25x25 score map over
a 255 search) and refine stage (127x127 maps on 3x3 over 143), values and gradients, batches
without positives, and the static shapes that keep it free of host syncs."""
import pytest
import torch
import torch.nn.functional as F

from model.loss import MASK_WINDOW, mask_label_padding, select_mask_logistic_loss
from siammask_reference import authors_mask_loss


def _label(b, size, g):
    """(B, 1, size, size) in {-1, +1}: a disk of random centre and radius per pair."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    cx = torch.randint(size // 3, 2 * size // 3, (b, 1, 1), generator=g)
    cy = torch.randint(size // 3, 2 * size // 3, (b, 1, 1), generator=g)
    r = torch.randint(size // 8, size // 3, (b, 1, 1), generator=g)
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    return (inside.float() * 2 - 1).unsqueeze(1)


def _weight(b, out, g, counts):
    """(B, 1, out, out): 1 on counts[i] random locations of pair i; other entries 0 or -1 (as
    the authors' cls.max over anchors leaves them)."""
    w = torch.randint(-1, 1, (b, out * out), generator=g).float()
    for i, n in enumerate(counts):
        w[i, torch.randperm(out * out, generator=g)[:n]] = 1.0
    return w.reshape(b, 1, out, out)


def _windows(label, padding):
    cols = F.unfold(label, MASK_WINDOW, padding=padding, stride=8)  # (B, 127², L)
    return cols.transpose(1, 2)  # (B, L, 127²)


def _base_prediction(label, g, out=25):
    """(B, 3969, out, out) logits: each location's label window at 63x63, scaled, plus noise of a
    random strength, so that IoUs spread over (0, 1]."""
    b = label.shape[0]
    win = _windows(label, 32).reshape(-1, 1, MASK_WINDOW, MASK_WINDOW)
    small = F.interpolate(win, size=(63, 63), mode='area').reshape(b, out * out, 3969)
    noise = torch.randn(small.shape, generator=g) * torch.rand(b, out * out, 1, generator=g) * 3
    return (small * 2 + noise).transpose(1, 2).reshape(b, 3969, out, out).contiguous()


def _refine_prediction(label, g):
    b = label.shape[0]
    win = _windows(label, 0)  # (B, 9, 127²)
    noise = torch.randn(win.shape, generator=g) * torch.rand(b, 9, 1, generator=g) * 3
    return win * 2 + noise


def _compare(ours, ref, pred_ours, pred_ref):
    assert torch.allclose(ours.loss, ref[0], rtol=1e-5, atol=1e-7)
    for got, want in zip(ours[1:], ref[1:]):
        assert torch.allclose(got, want, atol=1e-6), (got, want)
    g_ours, = torch.autograd.grad(ours.loss, pred_ours)
    g_ref, = torch.autograd.grad(ref[0], pred_ref)
    assert torch.allclose(g_ours, g_ref, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize('max_positions', [16, None])
def test_base_stage_matches_the_authors(max_positions):
    g = torch.Generator().manual_seed(0)
    label = _label(4, 255, g)
    weight = _weight(4, 25, g, counts=[16, 1, 0, 7])
    weight[3, 0, 0, 0] = weight[3, 0, 24, 24] = 1  # corner locations: windows reach into the padding
    pred = _base_prediction(label, g).requires_grad_()
    pred_ref = pred.detach().clone().requires_grad_()
    ours = select_mask_logistic_loss(pred, label, weight, padding=32, max_positions=max_positions)
    ref = authors_mask_loss(pred_ref, label, weight, padding=32)
    _compare(ours, ref, pred, pred_ref)
    assert 0 < float(ours.iou_at_7) < float(ours.iou_at_5) < 1  # the figures are exercised


def test_refine_stage_matches_the_authors():
    g = torch.Generator().manual_seed(1)
    label = _label(5, 143, g)
    weight = _weight(5, 3, g, counts=[9, 0, 1, 4, 3])
    pred = _refine_prediction(label, g).requires_grad_()
    pred_ref = pred.detach().clone().requires_grad_()
    ours = select_mask_logistic_loss(pred, label, weight, padding=0, max_positions=16)
    ref = authors_mask_loss(pred_ref.reshape(-1, MASK_WINDOW ** 2), label, weight, padding=0)
    _compare(ours, ref, pred, pred_ref)


@pytest.mark.parametrize('stage', ['base', 'refine'])
def test_no_positive_location_gives_zero_loss_in_the_graph(stage):
    g = torch.Generator().manual_seed(2)
    if stage == 'base':
        label, out, padding = _label(2, 255, g), 25, 32
        pred = _base_prediction(label, g).requires_grad_()
    else:
        label, out, padding = _label(2, 143, g), 3, 0
        pred = _refine_prediction(label, g).requires_grad_()
    weight = _weight(2, out, g, counts=[0, 0])
    ours = select_mask_logistic_loss(pred, label, weight, padding=padding, max_positions=16)
    ref = authors_mask_loss(pred.detach(), label, weight, padding=padding)
    assert all(float(x.detach()) == 0.0 for x in ours) and all(float(x) == 0.0 for x in ref)
    grad, = torch.autograd.grad(ours.loss, pred)  # in the graph: a gradient, all zeros
    assert torch.count_nonzero(grad) == 0


def test_label_padding_centres_windows_on_the_anchor_grid():
    assert mask_label_padding(255, 25, 8) == 32  # the authors' base stage
    assert mask_label_padding(143, 3, 8) == 0  # their refine stage
    assert mask_label_padding(255, 17, 8) == 0  # an AlexNet-style 17x17 map: windows inside the image
    for out in (24, 1):  # an even map has no centre location; one location would need negative padding
        with pytest.raises(ValueError, match='cannot be centred'):
            mask_label_padding(255, out, 8)


def test_mismatched_shapes_are_named():
    pred = torch.zeros(2, 3969, 25, 25)
    with pytest.raises(ValueError, match='locations'):
        select_mask_logistic_loss(pred, torch.ones(2, 1, 255, 255), torch.ones(2, 1, 17, 17), padding=32)
    with pytest.raises(ValueError, match='square'):
        select_mask_logistic_loss(torch.zeros(2, 3968, 25, 25), torch.ones(2, 1, 255, 255),
                                  torch.ones(2, 1, 25, 25), padding=32)


def test_traces_as_one_graph_without_data_dependent_shapes():
    # fullgraph=True fails on a graph break: nonzero's data-dependent shape or a .item() read.
    g = torch.Generator().manual_seed(3)
    label = _label(2, 255, g)
    weight = _weight(2, 25, g, counts=[3, 0])
    pred = _base_prediction(label, g)

    def loss(p, m, w):
        return tuple(select_mask_logistic_loss(p, m, w, padding=32, max_positions=16))

    compiled = torch.compile(loss, backend='eager', fullgraph=True)
    for got, want in zip(compiled(pred, label, weight), loss(pred, label, weight)):
        assert torch.equal(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_no_host_sync_on_cuda():
    g = torch.Generator().manual_seed(4)
    label = _label(3, 255, g).cuda()
    weight = _weight(3, 25, g, counts=[5, 0, 16]).cuda()
    pred = _base_prediction(label.cpu(), g).cuda().requires_grad_()
    select_mask_logistic_loss(pred, label, weight, padding=32, max_positions=16)  # warm-up (lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        out = select_mask_logistic_loss(pred, label, weight, padding=32, max_positions=16)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    ref = authors_mask_loss(pred.detach(), label, weight, padding=32)
    assert torch.allclose(out.loss, ref[0], rtol=1e-5)
