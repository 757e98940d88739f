"""The trainer on SiamMask, both stages, on CPU: mask loss and IoU figures in metrics.jsonl and
the log, exact resume, the skip-together bad step, DDP with summed or averaged gradients, the
refine stage starting from a base checkpoint and training only the mask branch and Refine.

Batches come from tests/mask_batches.py (the loader's documented keys and shapes) until the
loader renders masks; the shards only satisfy the trainer's preflight.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from gloo_ranks import end_rank, report, reports, set_rank_env, spawn_ranks
from mask_batches import SMALL_MASK, MaskBatches
from model import build_model, load_model_checkpoint, load_pretrained
from train.config import load_config
from train.freeze import apply_freeze, set_train_mode
from train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["DATASET.NAMES=[VID]", "TRAIN.BATCH_SIZE=2", "DATASET.VIDEOS_PER_EPOCH=4", "TRAIN.PRINT_FREQ=1"]
BASE = TINY + ["TRAIN.EPOCH=2", "BACKBONE.TRAIN_EPOCH=1", "TRAIN.LR_WARMUP.EPOCH=1", "TRAIN.CKPT_INTERVAL=1"]
TIMING = ("pairs_per_s", "data_wait_frac")
MASK_KEYS = ("mask_loss", "mask_iou_mean", "mask_iou_at_5", "mask_iou_at_7")


def _cfg(stage, *extra):
    return load_config(CONFIGS / f"siammask_r50_l3_{stage}.yaml", SMALL_MASK + list(extra))


def _train(cfg, shards, out, loader=None, **kw):
    loader = loader or MaskBatches(cfg, cfg.TRAIN.BATCH_SIZE, seed=cfg.TRAIN.SEED)
    trainer = Trainer(cfg, shards=shards, out_dir=out, device="cpu", show_progress=False, loader=loader, **kw)
    return trainer, trainer.fit()


def _records(run_dir):
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING}
            for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


class _Crash(RuntimeError):
    pass


class _StopAfter(MaskBatches):
    """MaskBatches that raise after ``n`` batches in all: a run that dies mid-epoch."""

    def __init__(self, cfg, n):
        super().__init__(cfg, cfg.TRAIN.BATCH_SIZE, seed=cfg.TRAIN.SEED)
        self.left = n

    def __iter__(self):
        for batch in super().__iter__():
            if self.left == 0:
                raise _Crash("stopped")
            self.left -= 1
            yield batch


@pytest.fixture(scope="module")
def base_run(shards, tmp_path_factory):
    """A base-stage run: 2 epochs of 2 steps, the backbone unfrozen for the second."""
    out = tmp_path_factory.mktemp("base")
    _, summary = _train(_cfg("base", *BASE), shards, out)
    return out, summary


def test_base_stage_logs_mask_figures(base_run):
    out, summary = base_run
    recs = _records(out)
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and summary["skipped_steps"] == 0
    for r in recs:
        assert all(math.isfinite(r[k]) for k in MASK_KEYS + ("total_loss",)), r
        assert 0 <= r["mask_iou_at_7"] <= r["mask_iou_at_5"] <= 1 and 0 <= r["mask_iou_mean"] <= 1
        assert r["total_loss"] == pytest.approx(r["cls_loss"] + 1.2 * r["loc_loss"] + 36 * r["mask_loss"], rel=1e-5)
    log = (out / "train.log").read_text()
    assert "mask_loss" in log and "mask_iou_at_7" in log
    assert log.count("compute-bound") + log.count("INPUT-BOUND") == 2  # the verdict of each epoch
    final = torch.load(out / "checkpoint_e2.pth", weights_only=True)
    assert final["backbone_unfrozen"]
    # PySOT's siammask_r50_l3 structure (here with the small test widths) loads it: all but refine_head
    tracking = build_model(load_config(CONFIGS / "siammask_r50_l3.yaml", SMALL_MASK))
    report = load_pretrained(tracking, str(out / "checkpoint_e2.pth"))
    assert report.unused == [] and report.missing and all(k.startswith("refine_head.") for k in report.missing)


def test_base_stage_resumes_exactly_after_a_crash_mid_epoch(base_run, shards, tmp_path):
    ref, _ = base_run
    cfg = _cfg("base", *BASE)
    with pytest.raises(_Crash):
        _train(cfg, shards, tmp_path, loader=_StopAfter(cfg, 3))  # dies in step 4, after epoch 2's first step
    assert torch.load(tmp_path / "latest.pth", weights_only=True)["global_step"] == 3
    _, summary = _train(cfg, shards, tmp_path, resume=True)
    assert summary["global_step"] == 4
    assert _records(tmp_path) == _records(ref)  # every loss and figure, the resumed step included
    want = torch.load(ref / "checkpoint_e2.pth", weights_only=True)
    got = torch.load(tmp_path / "checkpoint_e2.pth", weights_only=True)
    for k, v in want["state_dict"].items():
        assert torch.equal(v, got["state_dict"][k]), k


def _nan_in_second_batch(cfg):
    class Loader(MaskBatches):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                if i == 1:
                    batch["template"][0, 0, 3, 3] = float("nan")
                yield batch
    return Loader(cfg, cfg.TRAIN.BATCH_SIZE, seed=cfg.TRAIN.SEED)


def test_non_finite_step_is_skipped(shards, tmp_path):
    cfg = _cfg("base", *TINY, "TRAIN.EPOCH=1", "TRAIN.LR_WARMUP.WARMUP=False", "TRAIN.CKPT_INTERVAL=0")
    trainer, summary = _train(cfg, shards, tmp_path, loader=_nan_in_second_batch(cfg))
    assert summary["skipped_steps"] == 1
    recs = _records(tmp_path)
    assert [r["total_loss"] is None for r in recs] == [False, True]
    assert all(recs[1][k] is None for k in MASK_KEYS) and all(recs[0][k] is not None for k in MASK_KEYS)
    for k, v in trainer.model.state_dict().items():
        assert torch.isfinite(v.float()).all(), k


FROZEN = ("backbone.", "neck.", "rpn_head.", "mask_head.head.")


def test_refine_stage_trains_only_the_mask_branch_and_refine(base_run, shards, tmp_path):
    base_dir, _ = base_run
    base = torch.load(base_dir / "checkpoint_e2.pth", weights_only=True)["state_dict"]
    cfg = _cfg("refine", *TINY, "TRAIN.EPOCH=1", f"TRAIN.PRETRAINED={base_dir / 'checkpoint_e2.pth'}")
    trainer, summary = _train(cfg, shards, tmp_path / "refine")
    recs = _records(tmp_path / "refine")
    assert len(recs) == 2 and summary["skipped_steps"] == 0
    assert all(math.isfinite(r["mask_loss"]) and r["total_loss"] == pytest.approx(36 * r["mask_loss"]) for r in recs)
    groups = trainer.optimizer.param_groups
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("mask_head.conv_kernel.", "mask_head.conv_search.", "refine_head."))
                           for n in trained)
    assert sum(len(g["params"]) for g in groups) == len(trained)
    assert groups[-1]["lr"] == pytest.approx(0.01)  # the refine schedule's first epoch, log 0.01 -> 0.0025
    after = torch.load(tmp_path / "refine" / "checkpoint_e1.pth", weights_only=True)["state_dict"]
    for k, v in base.items():  # frozen parts: weights and BN statistics as the base stage left them
        if k.startswith(FROZEN):
            assert torch.equal(v, after[k]), k
    assert not torch.equal(base["mask_head.conv_search.0.weight"], after["mask_head.conv_search.0.weight"])
    # The refine checkpoint is PySOT's siammask_r50_l3 structure (small widths): a strict load
    tracking = build_model(load_config(CONFIGS / "siammask_r50_l3.yaml", SMALL_MASK))
    load_model_checkpoint(tracking, tmp_path / "refine" / "checkpoint_e1.pth")

    # PySOT's own snapshots ({'epoch', 'state_dict' with module.}) start the stage as well
    torch.save({"epoch": 20, "state_dict": {"module." + k: v for k, v in base.items()}}, tmp_path / "pysot.pth")
    t = Trainer(cfg.replace([f"TRAIN.PRETRAINED={tmp_path / 'pysot.pth'}"]), shards=shards, out_dir=tmp_path / "p",
                device="cpu", show_progress=False, loader=MaskBatches(cfg, 2))
    for k, v in t.model.state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), k


def _one_step_on_each_rank(rank, world, port, shards, out_dir, grad_sum):
    set_rank_env(rank, world, port, OMP_NUM_THREADS="1")
    cfg = _cfg("base", *TINY, "TRAIN.EPOCH=1", "DATASET.VIDEOS_PER_EPOCH=4", "TRAIN.LR_WARMUP.WARMUP=False",
               f"TRAIN.GRAD_SUM={grad_sum}", "TRAIN.GRAD_CLIP=1000000.0", "TRAIN.CKPT_INTERVAL=0")
    loader = MaskBatches(cfg, 2, seed=cfg.TRAIN.SEED, rank=rank, world_size=world)
    trainer = Trainer(cfg, shards=shards, out_dir=out_dir, device="cpu", show_progress=False, loader=loader)
    trainer.fit()
    report(out_dir, rank, {"params": {n: p.detach().reshape(-1).tolist() for n, p in
                                      trainer.model.named_parameters() if p.requires_grad}})
    end_rank()


def test_ddp_step_is_the_sum_of_the_ranks_gradients(shards, tmp_path):
    """2 ranks on gloo, one step each on its own batch: with TRAIN.GRAD_SUM the update uses the sum of
    the ranks' gradients (PySOT's), mask loss included. (GRAD_SUM false, the SiamMask configs' setting,
    is DDP's own mean: tests/test_train_distributed.py.)"""
    grad_sum = True
    spawn_ranks(_one_step_on_each_rank, str(shards), str(tmp_path), grad_sum)
    ranks = reports(tmp_path)
    assert ranks[0]["params"] == ranks[1]["params"]

    cfg = _cfg("base", *TINY, "TRAIN.EPOCH=1", "TRAIN.LR_WARMUP.WARMUP=False")
    torch.manual_seed(cfg.TRAIN.SEED)
    model = build_model(cfg)
    apply_freeze(model, cfg, False)
    set_train_mode(model, cfg, False)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for _, p in named]
    for rank in (0, 1):
        loader = MaskBatches(cfg, 2, seed=cfg.TRAIN.SEED, rank=rank, world_size=2)
        grads = torch.autograd.grad(model(next(iter(loader)))["total_loss"], [p for _, p in named])
        total = [a + g for a, g in zip(total, grads)]
    lr, wd = 0.005, cfg.TRAIN.WEIGHT_DECAY  # the log schedule's first epoch
    told_apart = 0
    for (name, p), g in zip(named, total):
        summed = p.detach() - lr * (g + wd * p.detach())  # SGD's first step: momentum buffer = the update
        averaged = p.detach() - lr * (g / 2 + wd * p.detach())
        got = torch.tensor(ranks[0]["params"][name]).reshape(p.shape)
        torch.testing.assert_close(got, summed, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
        told_apart += not torch.allclose(got, averaged, rtol=1e-4, atol=1e-6)
    assert told_apart > len(named) // 2  # the check can tell a sum from a mean
