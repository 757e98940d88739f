"""An SGD update that a device-side flag can cancel, so the skip-together decision of a bad step
needs no host-device sync.

Every step runs backward; the all-rank validity flag ``apply`` (a 0-dim bool tensor, identical
on every rank) then selects, on the device, between the updated state and the state before the
step. A cancelled step leaves parameters, SGD momentum buffers and BatchNorm statistics as they
were (a NaN forward also poisons BN running stats, and zero gradients would not be a no-op for
SGD with momentum and weight decay). Three pieces:

* :class:`GradBuffer`: the trainable parameters' ``.grad`` as views of one flat buffer per
  dtype, so zeroing, cancelling (NaN-safe) and the clipping norm are one kernel each.
* :func:`masked_sgd_step`: torch's SGD (momentum, weight decay; PySOT uses no dampening or
  Nesterov) written with foreach ops whose step size and momentum factor come from ``apply``.
  It keeps the optimizer's state layout (``momentum_buffer`` per parameter), so checkpoints and
  ``optimizer.state_dict()`` are unchanged.
* :class:`BufferGuard`: a flat snapshot of the model's buffers, restored where ``apply`` is false.
"""
from __future__ import annotations

import torch

__all__ = ["GradBuffer", "BufferGuard", "masked_sgd_step"]


def _grouped_by_dtype(tensors):
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


def _view_like(flat: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """A view of ``flat[offset:offset+numel]`` with the shape and strides of ``like`` (which must be
    dense, e.g. contiguous or channels_last), so DDP's bucket copies see matching layouts."""
    dense = like.is_contiguous() or (like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last))
    if dense:
        return flat.as_strided(like.shape, like.stride(), offset)
    return flat[offset:offset + like.numel()].view(like.shape)


class GradBuffer:
    """Owns the ``.grad`` of ``params``: views into flat buffers that backward accumulates into."""

    def __init__(self, params):
        self.params = [p for p in params if p.requires_grad]
        self.flats = []
        self.views = []
        for (dtype, device), group in _grouped_by_dtype(self.params).items():
            flat = torch.zeros(sum(p.numel() for p in group), dtype=dtype, device=device)
            offset = 0
            for p in group:
                self.views.append((p, _view_like(flat, offset, p)))
                offset += p.numel()
            self.flats.append(flat)
        self.attach()

    def attach(self) -> None:
        """(Re)install the views as ``.grad`` (after something set them to None)."""
        for p, view in self.views:
            p.grad = view

    def zero_(self) -> None:
        if self.views and self.views[0][0].grad is not self.views[0][1]:
            self.attach()
        for flat in self.flats:
            flat.zero_()

    @torch.no_grad()
    def keep_if(self, apply: torch.Tensor) -> None:
        """Zero every gradient (NaN and inf included) unless ``apply``."""
        for flat in self.flats:
            flat.masked_fill_(~apply, 0.0)

    @torch.no_grad()
    def clip_(self, max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_`` over all the gradients, without a host sync; returns
        the total norm before clipping (a device tensor)."""
        norms = [torch.linalg.vector_norm(flat) for flat in self.flats]
        if not norms:
            return torch.zeros(())
        total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for flat in self.flats:
            flat.mul_(coef.to(flat.dtype))
        return total


@torch.no_grad()
def masked_sgd_step(optimizer: torch.optim.SGD, apply: torch.Tensor) -> None:
    """One ``optimizer.step()`` of torch's SGD when ``apply`` is true, none when it is false.

    Gradients must be finite (see :meth:`GradBuffer.keep_if`). Per parameter, as torch's SGD
    with dampening 0: ``d = g + wd*p``; ``buf = momentum*buf + d`` (``buf = d`` at the first
    step: the buffer starts at zero); ``p -= lr*buf``. Cancelled: ``buf`` and ``p`` keep their
    values (``buf*1 + 0``, ``p - lr*0``). When applied, every operation equals torch's own.
    """
    applied = apply.to(torch.float32)
    for group in optimizer.param_groups:
        if group.get("nesterov") or group.get("dampening", 0) or group.get("maximize"):
            raise ValueError("masked_sgd_step implements SGD without nesterov, dampening or maximize (PySOT's)")
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        grads = [p.grad for p in params]
        lr, momentum, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        if wd:
            torch._foreach_add_(grads, params, alpha=wd)  # the gradients are scratch until the next zero_
        torch._foreach_mul_(grads, applied)
        if momentum:
            bufs = []
            for p in params:
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, torch.where(apply, momentum, 1.0))
            torch._foreach_add_(bufs, grads)
            grads = bufs
        torch._foreach_add_(params, torch._foreach_mul(grads, applied), alpha=-lr)


class BufferGuard:
    """Flat snapshot of a model's buffers (BN running stats and counters) taken before the forward;
    :meth:`keep_if` puts the snapshot back unless the step is applied."""

    def __init__(self, model: torch.nn.Module):
        self.groups = []
        for _, live in _grouped_by_dtype(list(model.buffers())).items():
            flat_live = [b.view(-1) for b in live]
            self.groups.append((live, flat_live, torch.cat(flat_live).clone(), [b.numel() for b in live]))

    def snapshot(self) -> None:
        with torch.no_grad():
            for _, flat_live, saved, _ in self.groups:
                torch.cat(flat_live, out=saved)

    def keep_if(self, apply: torch.Tensor) -> None:
        with torch.no_grad():
            for live, flat_live, saved, sizes in self.groups:
                chosen = torch.where(apply, torch.cat(flat_live), saved)
                torch._foreach_copy_(flat_live, list(chosen.split(sizes)))
