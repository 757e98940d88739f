"""The trainer on SiamMask, both stages, on CPU with the real loader over shards with masks
(tests/mask_fixtures.py: VID without masks, COCO and YouTube-VOS with): mask loss and IoU figures
in metrics.jsonl and the log, exact resume after a crash, the skip-together bad step, DDP with
summed gradients, the refine stage starting from a base checkpoint (ours or PySOT's) and training
only the mask branch and Refine.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from gloo_ranks import end_rank, report, reports, set_rank_env, spawn_ranks
from mask_batches import SMALL_MASK
from model import build_model, load_model_checkpoint, load_pretrained
from pipeline import build_loader
from train.config import load_config
from train.freeze import apply_freeze, set_train_mode
from train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# the mask_fixtures datasets, all of each; 2 steps of 2 pairs an epoch
TINY = ["DATASET.VID.NUM_USE=-1", "DATASET.VID.FRAME_RANGE=3", "DATASET.YTBVOS.NUM_USE=-1",
        "TRAIN.BATCH_SIZE=2", "DATASET.VIDEOS_PER_EPOCH=4", "TRAIN.PRINT_FREQ=1"]
BASE_NAMES = "DATASET.NAMES=[VID,COCO,YTBVOS]"  # the refine config's are COCO and YTBVOS already
BASE = TINY + [BASE_NAMES, "TRAIN.EPOCH=2", "BACKBONE.TRAIN_EPOCH=1", "TRAIN.LR_WARMUP.EPOCH=1", "TRAIN.CKPT_INTERVAL=1"]
TIMING = ("pairs_per_s", "data_wait_frac")
MASK_KEYS = ("mask_loss", "mask_iou_mean", "mask_iou_at_5", "mask_iou_at_7")


def _cfg(stage, *extra):
    return load_config(CONFIGS / f"siammask_r50_l3_{stage}.yaml", SMALL_MASK + list(extra))


def _loader(cfg, shards, rank=0, world_size=1, **kw):
    return build_loader(cfg, shards=str(shards), batch_size=cfg.TRAIN.BATCH_SIZE, device="cpu", rank=rank,
                        world_size=world_size, seed=cfg.TRAIN.SEED, **kw)


def _train(cfg, shards, out, loader=None, **kw):
    trainer = Trainer(cfg, shards=shards, out_dir=out, device="cpu", show_progress=False, loader=loader, **kw)
    return trainer, trainer.fit()


def _records(run_dir):
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING}
            for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


class _Crash(RuntimeError):
    pass


class _Wrapped:
    """The real loader, each batch passed through ``change(index in this run, batch)`` on its way out."""

    def __init__(self, loader, change):
        self.loader, self.change, self.seen = loader, change, 0

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # set_epoch, state_dict, load_state_dict, skipped
        return getattr(self.loader, name)

    def __iter__(self):
        for batch in self.loader:
            batch = self.change(self.seen, batch)
            self.seen += 1
            yield batch


def _crash_at(n):
    def change(i, batch):
        if i == n:
            raise _Crash("stopped")
        return batch
    return change


@pytest.fixture(scope="module")
def base_run(mask_shards, tmp_path_factory):
    """A base-stage run: 2 epochs of 2 steps, the backbone unfrozen for the second."""
    out = tmp_path_factory.mktemp("base")
    _, summary = _train(_cfg("base", *BASE), mask_shards, out)
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
    first = torch.load(out / "checkpoint_e1.pth", weights_only=True)["state_dict"]
    assert final["backbone_unfrozen"]
    state = final["state_dict"]  # layer2 trained in epoch 2, its BN statistics frozen (BACKBONE.FREEZE_BN)
    assert not torch.equal(state["backbone.layer2.0.conv1.weight"], first["backbone.layer2.0.conv1.weight"])
    assert torch.equal(state["backbone.layer2.0.bn1.running_mean"], first["backbone.layer2.0.bn1.running_mean"])
    assert not torch.equal(state["neck.downsample.downsample.1.running_mean"],
                           first["neck.downsample.downsample.1.running_mean"])
    # PySOT's siammask_r50_l3 structure (here with the small test widths) loads it: all but refine_head
    tracking = build_model(load_config(CONFIGS / "siammask_r50_l3.yaml", SMALL_MASK))
    report = load_pretrained(tracking, str(out / "checkpoint_e2.pth"))
    assert report.unused == [] and report.missing and all(k.startswith("refine_head.") for k in report.missing)


def test_base_stage_resumes_exactly_after_a_crash_mid_epoch(base_run, mask_shards, tmp_path):
    ref, _ = base_run
    cfg = _cfg("base", *BASE)
    with pytest.raises(_Crash):  # dies fetching step 4, after epoch 2's first step
        _train(cfg, mask_shards, tmp_path, loader=_Wrapped(_loader(cfg, mask_shards), _crash_at(3)))
    assert torch.load(tmp_path / "latest.pth", weights_only=True)["global_step"] == 3
    _, summary = _train(cfg, mask_shards, tmp_path, resume=True)
    assert summary["global_step"] == 4
    assert _records(tmp_path) == _records(ref)  # every loss and figure, the resumed step included
    want = torch.load(ref / "checkpoint_e2.pth", weights_only=True)
    got = torch.load(tmp_path / "checkpoint_e2.pth", weights_only=True)
    for k, v in want["state_dict"].items():
        assert torch.equal(v, got["state_dict"][k]), k


def _nan_template(i, batch):
    if i == 1:
        batch = dict(batch)
        batch["template"] = batch["template"].clone()
        batch["template"][0, 0, 3, 3] = float("nan")
    return batch


def test_non_finite_step_is_skipped(mask_shards, tmp_path):
    cfg = _cfg("base", *TINY, BASE_NAMES, "TRAIN.EPOCH=1", "TRAIN.LR_WARMUP.WARMUP=False", "TRAIN.CKPT_INTERVAL=0")
    trainer, summary = _train(cfg, mask_shards, tmp_path, loader=_Wrapped(_loader(cfg, mask_shards), _nan_template))
    assert summary["skipped_steps"] == 1
    recs = _records(tmp_path)
    assert [r["total_loss"] is None for r in recs] == [False, True]
    assert all(recs[1][k] is None for k in MASK_KEYS) and all(recs[0][k] is not None for k in MASK_KEYS)
    for k, v in trainer.model.state_dict().items():
        assert torch.isfinite(v.float()).all(), k


FROZEN = ("backbone.", "neck.", "rpn_head.", "mask_head.head.")


def _refine_cfg(base_dir):
    return _cfg("refine", *TINY, "TRAIN.EPOCH=2", "TRAIN.CKPT_INTERVAL=1",
                f"TRAIN.PRETRAINED={base_dir / 'checkpoint_e2.pth'}")


@pytest.fixture(scope="module")
def refine_run(base_run, mask_shards, tmp_path_factory):
    """A refine-stage run from the base run's checkpoint: 2 epochs of 2 steps."""
    out = tmp_path_factory.mktemp("refine")
    trainer, summary = _train(_refine_cfg(base_run[0]), mask_shards, out)
    return out, trainer, summary


def test_refine_stage_trains_only_the_mask_branch_and_refine(base_run, refine_run, mask_shards, tmp_path):
    base_dir, _ = base_run
    out, trainer, summary = refine_run
    base = torch.load(base_dir / "checkpoint_e2.pth", weights_only=True)["state_dict"]
    recs = _records(out)
    assert len(recs) == 4 and summary["skipped_steps"] == 0
    assert all(math.isfinite(r["mask_loss"]) and r["total_loss"] == pytest.approx(36 * r["mask_loss"]) for r in recs)
    assert [r["lr"] for r in recs] == pytest.approx([0.01, 0.01, 0.0025, 0.0025])  # log 0.01 -> 0.0025
    groups = trainer.optimizer.param_groups
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("mask_head.conv_kernel.", "mask_head.conv_search.", "refine_head."))
                           for n in trained)
    assert sum(len(g["params"]) for g in groups) == len(trained)
    after = torch.load(out / "checkpoint_e2.pth", weights_only=True)["state_dict"]
    for k, v in base.items():  # frozen parts: weights and BN statistics as the base stage left them
        if k.startswith(FROZEN):
            assert torch.equal(v, after[k]), k
    assert not torch.equal(base["mask_head.conv_search.0.weight"], after["mask_head.conv_search.0.weight"])
    # The refine checkpoint is PySOT's siammask_r50_l3 structure (small widths): a strict load
    tracking = build_model(load_config(CONFIGS / "siammask_r50_l3.yaml", SMALL_MASK))
    load_model_checkpoint(tracking, out / "checkpoint_e2.pth")

    # PySOT's own snapshots ({'epoch', 'state_dict' with module.}) start the stage as well
    torch.save({"epoch": 20, "state_dict": {"module." + k: v for k, v in base.items()}}, tmp_path / "pysot.pth")
    t = Trainer(trainer.cfg.replace([f"TRAIN.PRETRAINED={tmp_path / 'pysot.pth'}"]), shards=mask_shards,
                out_dir=tmp_path / "p", device="cpu", show_progress=False)
    for k, v in t.model.state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), k

    # SGD momentum restarts with every epoch (TRAIN.RESET_MOMENTUM_EACH_EPOCH, the authors' new optimizer)
    assert trainer.optimizer.state
    trainer.epoch, trainer.epoch_step = 1, 0
    trainer.start_epoch()
    assert not trainer.optimizer.state


def test_refine_stage_resumes_exactly_after_a_crash_mid_epoch(base_run, refine_run, mask_shards, tmp_path):
    """Across the epoch boundary (momentum restarted) and from mid-epoch 2 (momentum restored)."""
    ref = refine_run[0]
    cfg = _refine_cfg(base_run[0])
    with pytest.raises(_Crash):
        _train(cfg, mask_shards, tmp_path, loader=_Wrapped(_loader(cfg, mask_shards), _crash_at(3)))
    _, summary = _train(cfg, mask_shards, tmp_path, resume=True)
    assert summary["global_step"] == 4 and _records(tmp_path) == _records(ref)
    want = torch.load(ref / "checkpoint_e2.pth", weights_only=True)
    got = torch.load(tmp_path / "checkpoint_e2.pth", weights_only=True)
    for k, v in want["state_dict"].items():
        assert torch.equal(v, got["state_dict"][k]), k


def _one_step_on_each_rank(rank, world, port, shards, out_dir):
    set_rank_env(rank, world, port, OMP_NUM_THREADS="1")
    cfg = _cfg("base", *DDP)

    def keep(i, batch):  # this rank's batch, for the test's own gradient
        torch.save(batch, Path(out_dir) / f"batch{rank}.pt")
        return batch

    # DALI's own ops: a fresh process would spend longer compiling the numba crop kernel than training
    loader = _Wrapped(_loader(cfg, shards, rank=rank, world_size=world, crop_kernel=False), keep)
    trainer = Trainer(cfg, shards=shards, out_dir=out_dir, device="cpu", show_progress=False, loader=loader)
    trainer.fit()
    report(out_dir, rank, {"params": {n: p.detach().reshape(-1).tolist() for n, p in
                                      trainer.model.named_parameters() if p.requires_grad}})
    end_rank()


DDP = TINY + [BASE_NAMES, "TRAIN.EPOCH=1", "DATASET.VIDEOS_PER_EPOCH=4", "TRAIN.LR_WARMUP.WARMUP=False",
               "TRAIN.GRAD_SUM=True", "TRAIN.GRAD_CLIP=1000000.0", "TRAIN.CKPT_INTERVAL=0"]


def test_ddp_step_is_the_sum_of_the_ranks_gradients(mask_shards, tmp_path):
    """2 ranks on gloo, one step each on its own batch: with TRAIN.GRAD_SUM the update uses the sum of
    the ranks' gradients (PySOT's), mask loss included. (GRAD_SUM false, the SiamMask configs' setting,
    is DDP's own mean: tests/test_train_distributed.py.)"""
    spawn_ranks(_one_step_on_each_rank, str(mask_shards), str(tmp_path))
    ranks = reports(tmp_path)
    assert ranks[0]["params"] == ranks[1]["params"]
    batches = [torch.load(tmp_path / f"batch{r}.pt", weights_only=True) for r in (0, 1)]
    assert not torch.equal(batches[0]["search"], batches[1]["search"])  # each rank its own pairs

    cfg = _cfg("base", *DDP)
    torch.manual_seed(cfg.TRAIN.SEED)
    model = build_model(cfg)
    apply_freeze(model, cfg, False)
    set_train_mode(model, cfg, False)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for _, p in named]
    for rank in (0, 1):
        batch = batches[rank]
        assert batch["label_mask_weight"].sum() > 0  # the mask loss is part of the gradient
        grads = torch.autograd.grad(model(batch)["total_loss"], [p for _, p in named])
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


def _modes(model, prefix):
    return {m.training for n, m in model.named_modules() if n.startswith(prefix)}


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_base_stage_backbone_bn_after_the_unfreeze(freeze_bn):
    """The authors' base stage keeps unfrozen layers' BN in eval mode (BACKBONE.FREEZE_BN); PySOT's
    build_opt_lr puts them in train mode."""
    cfg = _cfg("base", f"BACKBONE.FREEZE_BN={freeze_bn}")
    model = build_model(cfg)
    apply_freeze(model, cfg, True)
    set_train_mode(model, cfg, True)
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert model.backbone.layer2[0].bn1.training is not freeze_bn
    assert not model.backbone.layer1[0].bn1.training and _modes(model, "neck") == {True}


def test_refine_stage_modes():
    cfg = _cfg("refine")
    model = build_model(cfg)
    apply_freeze(model, cfg, False)
    set_train_mode(model, cfg, False)
    for frozen in ("backbone", "neck", "rpn_head", "mask_head.head"):
        assert _modes(model, frozen) == {False}, frozen
    for trained in ("mask_head.conv_kernel", "mask_head.conv_search", "refine_head"):
        assert _modes(model, trained) == {True}, trained


def test_stage_lr_schedules_are_the_authors():
    """experiments/siammask_base: a 5-epoch step warm-up 0.001 -> 0.005 (x 5^(1/5) an epoch, their
    lr_helper's StepScheduler), then log 0.005 -> 0.0025 over 15 epochs; siammask_sharp: log 0.01 ->
    0.0025 over 20. Group lr = table value (BASE_LR is each schedule's first value)."""
    from train.lr_schedule import build_lr_table

    base, start = build_lr_table(_cfg("base").TRAIN)
    want = [0.001 * 5 ** (e / 5) for e in range(5)] + [0.005 * 0.5 ** (k / 14) for k in range(15)]
    assert base.tolist() == pytest.approx(want, rel=1e-12) and start == pytest.approx(_cfg("base").TRAIN.BASE_LR)
    refine, start = build_lr_table(_cfg("refine").TRAIN)
    assert refine.tolist() == pytest.approx([0.01 * 0.25 ** (k / 19) for k in range(20)], rel=1e-12)
    assert start == pytest.approx(_cfg("refine").TRAIN.BASE_LR)
