"""PySOT's backbone freeze/unfreeze and optimizer construction (its ``build_opt_lr``).

Until ``BACKBONE.TRAIN_EPOCH`` every backbone parameter is frozen and every backbone BatchNorm
runs in eval mode; from that epoch on the layers in ``BACKBONE.TRAIN_LAYERS`` train (their BN in
train mode) in a parameter group at ``LAYERS_LR x BASE_LR``. The optimizer is rebuilt at the
switch, as PySOT does, so SGD momentum restarts for every parameter.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["backbone_unfrozen_at", "apply_freeze", "set_train_mode", "build_optimizer"]


def backbone_unfrozen_at(cfg, epoch: int) -> bool:
    """True when PySOT would train the backbone's TRAIN_LAYERS in ``epoch``."""
    return epoch >= cfg.BACKBONE.TRAIN_EPOCH


def _train_layers(model, cfg) -> list[nn.Module]:
    layers = []
    for name in cfg.BACKBONE.TRAIN_LAYERS:
        if not hasattr(model.backbone, name):
            children = [n for n, _ in model.backbone.named_children()]
            raise ValueError(f"BACKBONE.TRAIN_LAYERS names {name!r}, which the backbone does not have ({children})")
        layers.append(getattr(model.backbone, name))
    return layers


def _backbone_bn_modes(model, cfg, unfrozen: bool) -> None:
    for m in model.backbone.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    if unfrozen:
        for layer in _train_layers(model, cfg):
            for m in layer.modules():
                if isinstance(m, _BatchNorm):
                    m.train()


def apply_freeze(model, cfg, unfrozen: bool) -> None:
    """Set backbone ``requires_grad`` and BN modes for the frozen or unfrozen phase."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    if unfrozen:
        for layer in _train_layers(model, cfg):
            for p in layer.parameters():
                p.requires_grad_(True)
    _backbone_bn_modes(model, cfg, unfrozen)


def set_train_mode(model, cfg, unfrozen: bool) -> None:
    """``model.train()`` that keeps frozen backbone BatchNorms in eval mode (plain .train() would not)."""
    model.train()
    _backbone_bn_modes(model, cfg, unfrozen)


def build_optimizer(model, cfg) -> torch.optim.SGD:
    """SGD over PySOT's parameter groups: backbone (trainable part, possibly empty), neck, rpn head, mask/refine.

    Group order and lrs are PySOT's, so the optimizer state_dict has the same layout as
    PySOT's checkpoints. Call :func:`apply_freeze` first.
    """
    base = cfg.TRAIN.BASE_LR
    groups = [{"params": [p for p in model.backbone.parameters() if p.requires_grad],
               "lr": cfg.BACKBONE.LAYERS_LR * base}]
    if cfg.ADJUST.ADJUST:
        groups.append({"params": list(model.neck.parameters()), "lr": base})
    groups.append({"params": list(model.rpn_head.parameters()), "lr": base})
    if cfg.MASK.MASK:
        groups.append({"params": list(model.mask_head.parameters()), "lr": base})
    if cfg.REFINE.REFINE:  # PySOT reads a non-existent key here; BASE_LR is the evident intent
        groups.append({"params": list(model.refine_head.parameters()), "lr": base})
    return torch.optim.SGD(groups, lr=base, momentum=cfg.TRAIN.MOMENTUM, weight_decay=cfg.TRAIN.WEIGHT_DECAY)
