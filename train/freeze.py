"""What trains when, and the optimizer over it: PySOT's ``build_opt_lr`` and the SiamMask
authors' refine stage.

SiamRPN, SiamRPN++ and SiamMask's base stage (PySOT's and the authors' schedule): until
``BACKBONE.TRAIN_EPOCH`` every backbone parameter is frozen and every backbone BatchNorm runs in
eval mode; from that epoch on the layers in ``BACKBONE.TRAIN_LAYERS`` train (their BN in train
mode, unless ``BACKBONE.FREEZE_BN``: the SiamMask authors' base stage leaves them in eval mode) in a
parameter group at ``LAYERS_LR x BASE_LR``. The optimizer is rebuilt at the switch, as PySOT does,
so SGD momentum restarts for every parameter.

SiamMask's refine stage (a MASK config with REFINE.REFINE; the authors'
``tools/train_siammask_refine.py``): only the mask branch's correlation (``mask_head``'s
``conv_kernel`` and ``conv_search``, whose feature Refine reads) and ``refine_head`` train, with
their BN in train mode; backbone, neck, RPN head and the unused 63×63 ``mask_head.head`` are
frozen in eval mode (BN statistics frozen) for the whole stage. The authors' optimizer lists the
whole mask branch, but ``head`` gets no gradient there, which torch's SGD skips (no weight decay
either), so leaving it out is the same update.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["refine_stage", "backbone_unfrozen_at", "apply_freeze", "set_train_mode", "build_optimizer"]


def refine_stage(cfg) -> bool:
    """True for SiamMask's refine stage (MASK.MASK and REFINE.REFINE)."""
    return bool(cfg.MASK.MASK and cfg.REFINE.REFINE)


def backbone_unfrozen_at(cfg, epoch: int) -> bool:
    """True when PySOT would train the backbone's TRAIN_LAYERS in ``epoch`` (never in the refine stage)."""
    return not refine_stage(cfg) and epoch >= cfg.BACKBONE.TRAIN_EPOCH


def _train_layers(model, cfg) -> list[nn.Module]:
    layers = []
    for name in cfg.BACKBONE.TRAIN_LAYERS:
        if not hasattr(model.backbone, name):
            children = [n for n, _ in model.backbone.named_children()]
            raise ValueError(f"BACKBONE.TRAIN_LAYERS names {name!r}, which the backbone does not have ({children})")
        layers.append(getattr(model.backbone, name))
    return layers


def _refine_trained(model) -> list[nn.Module]:
    return [model.mask_head.conv_kernel, model.mask_head.conv_search, model.refine_head]


def _refine_frozen(model) -> list[nn.Module]:
    frozen = [model.backbone, model.rpn_head, model.mask_head.head]
    return frozen + ([model.neck] if hasattr(model, "neck") else [])


def _bn_modes(model, cfg, unfrozen: bool) -> None:
    if refine_stage(cfg):
        for module in _refine_frozen(model):
            module.eval()
        return
    for m in model.backbone.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    if unfrozen and not cfg.BACKBONE.FREEZE_BN:
        for layer in _train_layers(model, cfg):
            for m in layer.modules():
                if isinstance(m, _BatchNorm):
                    m.train()


def apply_freeze(model, cfg, unfrozen: bool) -> None:
    """Set ``requires_grad`` and BN modes for the stage and phase."""
    if refine_stage(cfg):
        for p in model.parameters():
            p.requires_grad_(False)
        for module in _refine_trained(model):
            for p in module.parameters():
                p.requires_grad_(True)
    else:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        if unfrozen:
            for layer in _train_layers(model, cfg):
                for p in layer.parameters():
                    p.requires_grad_(True)
    _bn_modes(model, cfg, unfrozen)


def set_train_mode(model, cfg, unfrozen: bool) -> None:
    """``model.train()`` that keeps frozen parts in eval mode (plain .train() would not)."""
    model.train()
    _bn_modes(model, cfg, unfrozen)


def _trainable(module) -> list:
    return [p for p in module.parameters() if p.requires_grad]


def build_optimizer(model, cfg) -> torch.optim.SGD:
    """SGD over PySOT's parameter groups: backbone (trainable part, possibly empty), neck, rpn head, mask/refine.

    Group order and lrs are PySOT's, so the optimizer state_dict has the same layout as
    PySOT's checkpoints. Each group holds its module's trainable parameters (in the refine stage
    only the mask and refine groups have any). Call :func:`apply_freeze` first.
    """
    base = cfg.TRAIN.BASE_LR
    groups = [{"params": _trainable(model.backbone), "lr": cfg.BACKBONE.LAYERS_LR * base}]
    if cfg.ADJUST.ADJUST:
        groups.append({"params": _trainable(model.neck), "lr": base})
    groups.append({"params": _trainable(model.rpn_head), "lr": base})
    if cfg.MASK.MASK:
        groups.append({"params": _trainable(model.mask_head), "lr": base})
        if cfg.REFINE.REFINE:  # PySOT reads a non-existent key here; BASE_LR is the evident intent
            groups.append({"params": _trainable(model.refine_head), "lr": base})
    return torch.optim.SGD(groups, lr=base, momentum=cfg.TRAIN.MOMENTUM, weight_decay=cfg.TRAIN.WEIGHT_DECAY)
