"""SiamRPN losses against values computed independently (by hand or with numpy loops)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.loss import log_softmax_cls, select_cross_entropy_loss, weight_l1_loss

LOG2 = math.log(2.0)


def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_select_ce(logp, label):
    """0.5·mean(-log p1 | label 1) + 0.5·mean(-log p0 | label 0), each over the whole batch,
    with an empty selection contributing 0."""
    logp, label = logp.reshape(-1, 2), label.reshape(-1)
    pos, neg = -logp[label == 1, 1], -logp[label == 0, 0]
    return 0.5 * (pos.mean() if pos.size else 0.0) + 0.5 * (neg.mean() if neg.size else 0.0)


def pysot_style_select_ce(pred, label):
    """Index-based formulation (nonzero + index_select + nll_loss), incl. the 1-anchor quirk."""
    pred, label = pred.reshape(-1, 2), label.reshape(-1)
    total = 0.0
    for cls in (1, 0):
        idx = (label == cls).nonzero().squeeze()
        if idx.dim() == 0 or idx.numel() == 0:
            continue
        total = total + 0.5 * F.nll_loss(pred.index_select(0, idx), label.index_select(0, idx))
    return torch.as_tensor(total, dtype=torch.float32)


def test_log_softmax_cls_channel_layout():
    rng = np.random.default_rng(0)
    b, a, h, w = 2, 5, 3, 4
    cls = rng.normal(size=(b, 2 * a, h, w)).astype(np.float32)
    out = log_softmax_cls(torch.from_numpy(cls)).numpy()
    assert out.shape == (b, a, h, w, 2)
    for n, k, y, x in [(0, 0, 0, 0), (1, 4, 2, 3), (0, 2, 1, 2)]:
        # Anchor k: class 0 logit in channel k, class 1 logit in channel a + k.
        expected = np_log_softmax(np.array([cls[n, k, y, x], cls[n, a + k, y, x]]))
        np.testing.assert_allclose(out[n, k, y, x], expected, rtol=1e-5, atol=1e-6)


def test_log_softmax_cls_is_float32_for_bf16_input():
    cls = torch.randn(1, 10, 5, 5).bfloat16()
    assert log_softmax_cls(cls).dtype == torch.float32


def test_by_hand_uniform_predictions():
    # Zero logits give log p = -log 2 for both classes, so any non-empty term is log 2.
    logp = log_softmax_cls(torch.zeros(1, 10, 2, 2))
    label = torch.tensor([0, 1, 1, -1] * 5).reshape(1, 5, 2, 2)
    assert select_cross_entropy_loss(logp, label).item() == pytest.approx(LOG2)


def test_general_case_matches_numpy_and_index_formulation():
    rng = np.random.default_rng(1)
    b, a, s = 4, 5, 7
    cls = torch.from_numpy(rng.normal(scale=2.0, size=(b, 2 * a, s, s)).astype(np.float32))
    label = torch.from_numpy(rng.choice([-1, 0, 1], size=(b, a, s, s), p=[0.6, 0.3, 0.1]))
    logp = log_softmax_cls(cls)
    expected = np_select_ce(logp.numpy(), label.numpy())
    for quirk in (True, False):
        assert select_cross_entropy_loss(logp, label, quirk).item() == pytest.approx(
            expected, rel=1e-6)
    assert select_cross_entropy_loss(logp, label).item() == pytest.approx(
        pysot_style_select_ce(logp, label).item(), rel=1e-6)


def test_means_are_pooled_over_the_batch_not_per_sample():
    # Sample 0: 1 positive with -log p = a; sample 1: 3 positives with -log p = b each.
    # Pooled mean = (a + 3b) / 4, per-sample mean would be (a + b) / 2.
    p_a, p_b = 0.9, 0.2
    logp = torch.log(torch.tensor([[1 - p_a, p_a], [1 - p_b, p_b], [1 - p_b, p_b],
                                   [1 - p_b, p_b]])).reshape(4, 1, 1, 1, 2)
    label = torch.ones(4, 1, 1, 1, dtype=torch.long)
    pooled = (-math.log(p_a) - 3 * math.log(p_b)) / 4
    assert select_cross_entropy_loss(logp, label).item() == pytest.approx(0.5 * pooled, rel=1e-6)


def test_no_positive_anchor_in_batch():
    # A negative pair only: the positive term is 0 (PySOT's code would give NaN here).
    logp = torch.log(torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.9, 0.1]]))
    label = torch.tensor([0, 0, -1])
    expected = 0.5 * (-math.log(0.75) - math.log(0.5)) / 2
    for quirk in (True, False):
        loss = select_cross_entropy_loss(logp, label, quirk)
        assert torch.isfinite(loss) and loss.item() == pytest.approx(expected, rel=1e-6)


def test_everything_ignored_gives_zero():
    logp = torch.log(torch.full((3, 2), 0.5))
    assert select_cross_entropy_loss(logp, torch.full((3,), -1)).item() == 0.0


def test_exactly_one_positive_quirk():
    logp = torch.log(torch.tensor([[0.2, 0.8], [0.75, 0.25], [0.5, 0.5], [0.6, 0.4]]))
    label = torch.tensor([1, 0, 0, -1])
    neg = 0.5 * (-math.log(0.75) - math.log(0.5)) / 2
    # PySOT: squeeze() of the single index is 0-d, so the positive term is dropped.
    assert select_cross_entropy_loss(logp, label, True).item() == pytest.approx(neg, rel=1e-6)
    assert select_cross_entropy_loss(logp, label).item() == pytest.approx(
        pysot_style_select_ce(logp, label).item(), rel=1e-6)
    assert select_cross_entropy_loss(logp, label, False).item() == pytest.approx(
        neg + 0.5 * -math.log(0.8), rel=1e-6)


def test_exactly_one_negative_quirk_and_its_gradient():
    logits = torch.tensor([[0.0, 2.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    logp = F.log_softmax(logits, dim=1)
    label = torch.tensor([1, 1, 0])
    p1 = torch.softmax(logits.detach(), 1)[:, 1].numpy()
    pos = 0.5 * (-math.log(p1[0]) - math.log(p1[1])) / 2
    loss = select_cross_entropy_loss(logp, label, True)
    assert loss.item() == pytest.approx(pos, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[2] == 0) and torch.all(logits.grad[:2] != 0)
    full = select_cross_entropy_loss(F.log_softmax(logits.detach(), 1), label, False)
    assert full.item() == pytest.approx(pos + 0.5 * -math.log(1 - p1[2]), rel=1e-6)


def test_weight_l1_by_hand():
    # B=2, A=2, 1×1 map; pred channel = coord*A + anchor.
    pred = torch.zeros(2, 8, 1, 1)
    pred[0, 0 * 2 + 1] = 1.0    # sample 0, anchor 1, dx
    pred[0, 3 * 2 + 1] = -2.0   # sample 0, anchor 1, dh
    pred[0, 1 * 2 + 0] = 5.0    # sample 0, anchor 0, dy (weight 0 → ignored)
    pred[1, 2 * 2 + 0] = 0.5    # sample 1, anchor 0, dw
    label = torch.zeros(2, 4, 2, 1, 1)
    label[0, 0, 1] = 0.25       # |1 - 0.25| = 0.75
    label[1, 2, 0] = -0.5       # |0.5 + 0.5| = 1
    weight = torch.zeros(2, 2, 1, 1)
    weight[0, 1] = 0.5
    weight[1, 0] = 1.0
    # (0.5 * (0.75 + 2) + 1.0 * 1) / 2 = 1.1875
    assert weight_l1_loss(pred, label, weight).item() == pytest.approx(1.1875)


def test_weight_l1_matches_numpy_loops():
    rng = np.random.default_rng(2)
    b, a, h, w = 3, 5, 4, 4
    pred = rng.normal(size=(b, 4 * a, h, w)).astype(np.float32)
    label = rng.normal(size=(b, 4, a, h, w)).astype(np.float32)
    weight = rng.random(size=(b, a, h, w)).astype(np.float32)
    expected = 0.0
    for n in range(b):
        for k in range(a):
            for c in range(4):
                expected += (weight[n, k] * np.abs(pred[n, c * a + k] - label[n, c, k])).sum()
    expected /= b
    got = weight_l1_loss(*map(torch.from_numpy, (pred, label, weight))).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_losses_trace_as_one_graph():
    # No data-dependent shapes (nonzero) inside: dynamo captures the loss without graph breaks.
    def loss_fn(cls, label, loc, label_loc, weight):
        return select_cross_entropy_loss(log_softmax_cls(cls), label) + \
            weight_l1_loss(loc, label_loc, weight)

    compiled = torch.compile(loss_fn, backend='eager', fullgraph=True)
    args = (torch.randn(2, 10, 5, 5), torch.randint(-1, 2, (2, 5, 5, 5)), torch.randn(2, 20, 5, 5),
            torch.randn(2, 4, 5, 5, 5), torch.rand(2, 5, 5, 5))
    assert torch.allclose(compiled(*args), loss_fn(*args))


def test_float64_inputs_are_not_downcast():
    # Low-precision logits are upcast to float32, but float64 must stay float64 (as in PySOT).
    cls = torch.randn(1, 10, 3, 3, dtype=torch.float64)
    logp = log_softmax_cls(cls)
    label = torch.tensor([0, 1, -1] * 15).reshape(1, 5, 3, 3)
    assert logp.dtype == torch.float64
    assert select_cross_entropy_loss(logp, label).dtype == torch.float64
    loc = torch.randn(1, 20, 3, 3, dtype=torch.float64)
    target = torch.randn(1, 4, 5, 3, 3, dtype=torch.float64)
    weight = torch.rand(1, 5, 3, 3, dtype=torch.float64)
    assert weight_l1_loss(loc, target, weight).dtype == torch.float64
