"""Forward FLOP counting for one template+search pair.

Definition: FLOPs as reported by ``torch.utils.flop_counter.FlopCounterMode``, i.e.
**2 × multiply-accumulates** of the convolution / matmul ops (grouped and depthwise convs
counted per group, transposed convs included). Element-wise work (BatchNorm, ReLU, adds,
softmax, pooling, interpolation) is not counted; for these networks it is < 1 % of the total.
A "pair" is ``template(z)`` + ``track(x)``: backbone and neck on both images plus the heads,
the same convolutions as one training forward (the loss adds no counted ops).
"""
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_flops', 'flops_by_module']


def _run(model: nn.Module, template_size: int, search_size: int, batch: int, device):
    """Run template+track under a FlopCounterMode; return (total FLOPs, FLOPs per child)."""
    device = device if device is not None else next(model.parameters()).device
    z = torch.zeros(batch, 3, template_size, template_size, device=device)
    x = torch.zeros(batch, 3, search_size, search_size, device=device)
    counter = FlopCounterMode(display=False)
    per_child, start, hooks = {}, {}, []
    # Attribute FLOPs to top-level children by the counter's running total around their calls
    # (template/track are not the root's forward, so the counter's own module tree is flat).
    for name, child in model.named_children():
        per_child[name] = 0

        def pre(_mod, _inp, name=name):
            start[name] = counter.get_total_flops()

        def post(_mod, _inp, _out, name=name):
            per_child[name] += counter.get_total_flops() - start[name]

        hooks += [child.register_forward_pre_hook(pre), child.register_forward_hook(post)]
    was_training = model.training
    model.eval()  # no BN running-stat updates from the dummy inputs
    try:
        with torch.no_grad(), counter:
            model.template(z)
            model.track(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return counter.get_total_flops(), per_child


def count_flops(model: nn.Module, template_size: int = 127, search_size: int = 255,
                batch: int = 1, device=None) -> int:
    """Forward FLOPs (2×MACs) per template+search pair of a model with ``template``/``track``.

    Works on a model on the ``meta`` device too (shapes only, no compute)."""
    total, _ = _run(model, template_size, search_size, batch, device)
    if total % batch:
        raise RuntimeError(f'FLOP total {total} is not a multiple of the batch {batch}')
    return total // batch


def flops_by_module(model: nn.Module, template_size: int = 127, search_size: int = 255,
                    device=None) -> dict:
    """FLOPs (2×MACs) per pair for each top-level submodule (backbone, neck, rpn_head, ...)."""
    return _run(model, template_size, search_size, 1, device)[1]
