"""Gradient and weight norms for TRAIN.LOG_GRADS (PySOT's ``log_grads``, grouped by module).

PySOT logs, per parameter, the L2 norm of its gradient, of its weight and their ratio, plus
totals split on the substring 'feature' (which never matches its ResNet names). We group by the
model's top-level modules instead (backbone, neck, rpn_head, mask_head, refine_head), so the
backbone's share is visible once it trains. All values come to the host in one transfer.
"""
from __future__ import annotations

import torch

__all__ = ["grad_norms"]


def grad_norms(model: torch.nn.Module, per_param: bool = False) -> tuple[dict, dict]:
    """Norms of the current gradients of ``model`` (call before clipping, as PySOT does).

    Returns ``(groups, params)``. ``groups``: ``grad_norm`` (all parameters) and
    ``grad_norm/<module>`` for every top-level module with at least one gradient (a frozen
    backbone has none, so it is absent rather than 0). ``params`` (only with ``per_param``):
    PySOT's TensorBoard tags ``grad/<name>``, ``weight/<name>``, ``w-g/<name>`` with the dots
    of the parameter name turned into slashes.
    """
    names, grads, weights, group_of = [], [], [], []
    group_names: list[str] = []
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        group = name.split(".", 1)[0]
        if group not in group_names:
            group_names.append(group)
        names.append(name)
        grads.append(p.grad.detach())
        weights.append(p.detach())
        group_of.append(group_names.index(group))
    if not grads:
        return {}, {}
    g = torch.stack(torch._foreach_norm(grads)).double()
    ids = torch.tensor(group_of, device=g.device)
    per_group = torch.zeros(len(group_names), dtype=g.dtype, device=g.device).index_add_(0, ids, g * g)
    parts = [torch.cat([per_group.sum().reshape(1), per_group]).sqrt()]
    if per_param:
        parts += [g, torch.stack(torch._foreach_norm(weights)).double()]
    host = torch.cat(parts).tolist()  # the one device->host sync
    groups = {"grad_norm": host[0], **{f"grad_norm/{n}": v for n, v in zip(group_names, host[1:1 + len(group_names)])}}
    params = {}
    if per_param:
        k = 1 + len(group_names)
        gn, wn = host[k:k + len(names)], host[k + len(names):]
        for name, gv, wv in zip(names, gn, wn):
            tag = name.replace(".", "/")
            params[f"grad/{tag}"] = gv
            params[f"weight/{tag}"] = wv
            params[f"w-g/{tag}"] = wv / (1e-20 + gv)
    return groups, params
