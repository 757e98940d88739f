"""PySOT's per-epoch lr schedule and the freeze/unfreeze parameter groups.

The expected values are PySOT's: `pysot/utils/lr_scheduler.py` (`build_lr_scheduler`: a
`WarmUPScheduler` joining the LR_WARMUP schedule's epochs to the LR schedule's; each group's lr
= lr_spaces[epoch] x group initial lr / start_lr, start_lr being the main schedule's first
value) and `tools/train.py` (`build_opt_lr`: backbone group at LAYERS_LR x BASE_LR once
BACKBONE.TRAIN_EPOCH is reached, neck and head groups at BASE_LR; SGD momentum 0.9, weight
decay 1e-4), applied to `experiments/siamrpn_r50_l234_dwxcorr_8gpu/config.yaml`.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from model import build_model
from train.config import load_config
from train.freeze import apply_freeze, build_optimizer, set_train_mode
from train.lr_schedule import EpochLR, build_lr_table, schedule_table

ROOT = Path(__file__).resolve().parents[1]
R50_RECIPE = ROOT / "configs" / "siamrpn_r50_l234_dwxcorr_8gpu.yaml"


def _pysot_r50_closed_form(e: int) -> float:
    # The 8-GPU recipe's LR_WARMUP is PySOT's StepScheduler(start_lr 0.001, end_lr 0.005, step 1) over
    # 5 epochs: mult = (0.005 / 0.001) ** (1 / (5 // 1)), lr_e = 0.001 * 5 ** (e / 5). Its LR is the
    # LogScheduler(0.005 -> 0.0005) over the other 15 epochs: np.logspace(log10 0.005, log10 0.0005, 15),
    # i.e. 0.005 * 0.1 ** ((e - 5) / 14).
    return 0.001 * 5 ** (e / 5) if e < 5 else 0.005 * 0.1 ** ((e - 5) / 14)


@pytest.fixture(scope="module")
def r50_cfg():
    return load_config(R50_RECIPE)


@pytest.fixture(scope="module")
def r50_model(r50_cfg):
    return build_model(r50_cfg)


def test_r50_recipe_table_matches_pysot_closed_form(r50_cfg):
    table, start_lr = build_lr_table(r50_cfg.TRAIN)
    assert len(table) == 20
    np.testing.assert_allclose(table, [_pysot_r50_closed_form(e) for e in range(20)], rtol=1e-12)
    assert start_lr == pytest.approx(0.005)  # WarmUPScheduler: start_lr is the normal schedule's first value
    # the lr at the unfreeze epoch (BACKBONE.TRAIN_EPOCH 10): 0.005 * 0.1 ** (5 / 14), written out
    assert table[10] == pytest.approx(0.0021970, abs=5e-8)


def test_r50_recipe_group_lrs_per_epoch(r50_cfg, r50_model):
    """Heads get lr_e; after the unfreeze the backbone group gets LAYERS_LR (0.1) x lr_e."""
    for epoch in range(20):
        unfrozen = epoch >= r50_cfg.BACKBONE.TRAIN_EPOCH
        apply_freeze(r50_model, r50_cfg, unfrozen)
        opt = build_optimizer(r50_model, r50_cfg)
        sched = EpochLR(opt, r50_cfg.TRAIN)
        sched.set_epoch(epoch)
        lr = _pysot_r50_closed_form(epoch)
        backbone, neck, head = opt.param_groups
        assert backbone["lr"] == pytest.approx(0.1 * lr, rel=1e-12)
        assert neck["lr"] == pytest.approx(lr, rel=1e-12) and head["lr"] == pytest.approx(lr, rel=1e-12)
        assert (len(backbone["params"]) > 0) == unfrozen
        assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4


def test_default_kwargs_scale_groups_by_base_over_start_lr():
    """Without KWARGS: warm-up 5 x 0.01, log 0.03 -> 5e-4, start_lr 0.03, so groups get lr_e x 0.005/0.03."""
    cfg = load_config(None)
    table, start_lr = build_lr_table(cfg.TRAIN)
    np.testing.assert_allclose(table[:5], 0.01)
    np.testing.assert_allclose(table[5:], np.logspace(np.log10(0.03), np.log10(5e-4), 15))
    assert start_lr == pytest.approx(0.03)
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": cfg.TRAIN.BASE_LR}])
    sched = EpochLR(opt, cfg.TRAIN)
    sched.set_epoch(7)
    assert opt.param_groups[0]["lr"] == pytest.approx(table[7] * 0.005 / 0.03)


@pytest.mark.parametrize("kind,kwargs,expect", [
    ("step", {"start_lr": 0.01, "step": 3, "mult": 0.1}, [0.01] * 3 + [0.001] * 3 + [0.0001]),
    ("multi-step", {"start_lr": 0.01, "steps": [2, 5], "mult": 0.5}, [0.01, 0.01, 0.005, 0.005, 0.005, 0.0025, 0.0025]),
    ("linear", {"start_lr": 0.01, "end_lr": 0.004}, list(np.linspace(0.01, 0.004, 7))),
    ("cos", {"start_lr": 0.01, "end_lr": 0.002}, [0.002 + 0.008 * (1 + np.cos(i * np.pi / 7)) / 2 for i in range(7)]),
])
def test_other_schedule_types(kind, kwargs, expect):
    table, start = schedule_table(kind, kwargs, 7)
    np.testing.assert_allclose(table, expect, rtol=1e-6)
    assert start == kwargs["start_lr"]


def test_bad_schedule_names_the_problem():
    with pytest.raises(ValueError, match="unknown lr schedule TYPE 'exp'"):
        schedule_table("exp", {}, 5)
    with pytest.raises(ValueError, match="unknown KWARGS \\['gamma'\\]"):
        schedule_table("log", {"gamma": 0.1}, 5)


def test_freeze_modes_survive_model_train(r50_cfg, r50_model):
    """Frozen: no backbone grads, all backbone BN eval even after .train(); unfrozen: only TRAIN_LAYERS."""
    m = r50_model
    apply_freeze(m, r50_cfg, False)
    set_train_mode(m, r50_cfg, False)
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert all(not b.training for b in m.backbone.modules() if isinstance(b, _BatchNorm))
    assert all(b.training for b in m.neck.modules() if isinstance(b, _BatchNorm))

    apply_freeze(m, r50_cfg, True)
    set_train_mode(m, r50_cfg, True)
    for name, child in m.backbone.named_children():
        trainable = name in ("layer2", "layer3", "layer4")
        params = list(child.parameters())
        bns = [b for b in child.modules() if isinstance(b, _BatchNorm)]
        assert all(p.requires_grad == trainable for p in params), name
        assert all(b.training == trainable for b in bns), name
