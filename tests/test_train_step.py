"""The cancellable update (train/step.py): equal to torch's SGD when applied, an exact no-op when
cancelled (NaN gradients and poisoned BN statistics included), with channels_last parameters."""
import pytest
import torch

from train.step import BufferGuard, GradBuffer, masked_sgd_step


def _net(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 2, 1))
    return net.to(memory_format=torch.channels_last)


def _sgd(net, **kw):  # two groups with their own lr, as PySOT's backbone / head groups
    return torch.optim.SGD([{"params": list(net[0].parameters()), "lr": 0.01},
                            {"params": list(net[1:].parameters()), "lr": 0.05}],
                           lr=0.05, momentum=0.9, weight_decay=1e-4, **kw)


def _step_both(ref, ref_opt, ours, our_opt, grads, x):
    """One step on ``x``: torch's SGD for ``ref``, an applied masked step for ``ours``."""
    ref_opt.zero_grad()
    ref(x).square().mean().backward()
    ref_opt.step()
    grads.zero_()
    ours(x).square().mean().backward()
    masked_sgd_step(our_opt, torch.tensor(True))


@pytest.mark.parametrize("foreach", [False, True])
def test_applied_steps_equal_torch_sgd_bit_for_bit(foreach):
    ref, ours = _net(), _net()
    ref_opt, our_opt = _sgd(ref, foreach=foreach), _sgd(ours)
    grads = GradBuffer(ours.parameters())
    for step in range(5):
        _step_both(ref, ref_opt, ours, our_opt, grads,
                   torch.randn(4, 3, 10, 10).contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(ref_opt.state[a]["momentum_buffer"], our_opt.state[b]["momentum_buffer"])
    assert all(p.grad is view for p, view in grads.views)  # backward accumulated into the flat buffer
    assert ours[0].weight.grad.is_contiguous(memory_format=torch.channels_last)


def test_a_cancelled_step_changes_nothing():
    net = _net()
    opt = _sgd(net)
    grads, guard = GradBuffer(net.parameters()), BufferGuard(net)
    for _ in range(2):  # momentum buffers exist and are non-zero
        grads.zero_()
        net(torch.randn(4, 3, 10, 10)).square().mean().backward()
        masked_sgd_step(opt, torch.tensor(True))
    params = [p.detach().clone() for p in net.parameters()]
    momenta = [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    buffers = [b.clone() for b in net.buffers()]

    guard.snapshot()
    grads.zero_()
    bad = torch.randn(4, 3, 10, 10)
    bad[0, 0, 0, 0] = float("nan")
    net(bad).square().mean().backward()
    assert not torch.isfinite(net[1].running_mean).all() and not torch.isfinite(grads.flats[0]).all()
    cancel = torch.tensor(False)
    guard.keep_if(cancel)
    grads.keep_if(cancel)
    grads.clip_(10.0)
    masked_sgd_step(opt, cancel)
    assert all(torch.equal(a, b) for a, b in zip(params, net.parameters()))
    assert all(torch.equal(a, opt.state[p]["momentum_buffer"]) for a, p in zip(momenta, net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, net.buffers()))  # num_batches_tracked too


def test_first_step_cancelled_then_applied_equals_a_fresh_first_step():
    """A skipped first step leaves zero momentum buffers; the next applied step then equals
    torch's first step (buffer = d), as if the skipped one never happened."""
    ref, ours = _net(), _net()
    ref_opt, our_opt = _sgd(ref), _sgd(ours)
    grads = GradBuffer(ours.parameters())
    grads.zero_()
    ours(torch.randn(4, 3, 10, 10)).square().mean().backward()
    grads.keep_if(torch.tensor(False))
    masked_sgd_step(our_opt, torch.tensor(False))
    _step_both(ref, ref_opt, ours, our_opt, grads, torch.randn(4, 3, 10, 10))
    for a, b in zip(ref.parameters(), ours.parameters()):
        assert torch.equal(a, b)


def test_clipping_equals_torch_clip_grad_norm():
    net = _net()
    grads = GradBuffer(net.parameters())
    grads.zero_()
    net(torch.randn(4, 3, 10, 10)).square().sum().backward()
    expected = [p.grad.clone() for p in net.parameters()]
    total = torch.nn.utils.clip_grad_norm_(list(_clone_grads(expected)), max_norm=0.5)
    got_total = grads.clip_(0.5)
    torch.testing.assert_close(got_total, total)
    assert total > 0.5  # it really clipped
    for p, g in zip(net.parameters(), _clipped(expected, 0.5, total)):
        torch.testing.assert_close(p.grad, g)


def _clone_grads(grads):
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        yield p


def _clipped(grads, max_norm, total):
    coef = min(1.0, max_norm / (float(total) + 1e-6))
    return [g * coef for g in grads]


def test_rejects_sgd_variants_it_does_not_implement():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    GradBuffer(net.parameters()).zero_()
    with pytest.raises(ValueError, match="nesterov"):
        masked_sgd_step(opt, torch.tensor(True))
