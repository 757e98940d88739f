"""Device per process (cuda:LOCAL_RANK, --device cuda:N) and the flat gradient buffer under real
DDP: a 2-process gloo group started with torch.multiprocessing."""
import copy
import json
import os
import warnings

import pytest
import torch

from gloo_ranks import end_rank, report, reports, set_rank_env, spawn_ranks
from train.distributed import (choose_device, init_distributed, loader_device, parse_device, wrap_ddp)
from train.preflight import PreflightError
from train.step import GradBuffer


@pytest.mark.parametrize("arg, local_rank, local_processes, expected", [
    ("cpu", 3, 8, "cpu"),
    ("cuda", 0, 1, "cuda:0"),
    ("cuda", 5, 8, "cuda:5"),      # torchrun: every process its own GPU, never GPU 0 for all
    ("cuda:1", 0, 1, "cuda:1"),    # one process pinned to GPU 1
])
def test_device_per_process(arg, local_rank, local_processes, expected):
    dev = choose_device(arg, local_rank, local_processes, cuda_count=8)
    assert dev == torch.device(expected)
    # the loader gets the same indexed device ('' and 'cuda' alike), or the CPU when asked
    assert loader_device("", dev) == dev and str(loader_device("", dev)) == expected
    assert loader_device("cpu", dev) == torch.device("cpu")
    if dev.type == "cuda":
        assert loader_device("cuda", dev) == dev


def test_device_errors_name_the_problem():
    with pytest.raises(PreflightError, match="no CUDA GPU"):
        choose_device("cuda", 0, 1, cuda_count=0)
    with pytest.raises(PreflightError, match="LOCAL_RANK=2 needs GPU 2 but only 2"):
        choose_device("cuda", 2, 4, cuda_count=2)
    with pytest.raises(PreflightError, match="names one GPU but 2 processes"):
        choose_device("cuda:1", 1, 2, cuda_count=2)
    with pytest.raises(PreflightError, match="--device cuda:3 needs GPU 3"):
        choose_device("cuda:3", 0, 1, cuda_count=2)
    with pytest.raises(PreflightError, match="LOADER_DEVICE='cuda' needs"):
        loader_device("cuda", torch.device("cpu"))
    with pytest.raises(PreflightError, match="must be '', 'cpu' or 'cuda'"):
        loader_device("gpu", torch.device("cpu"))
    for bad in ("gpu", "cuda:x", "mps", "cpu:1"):
        with pytest.raises(ValueError, match="--device must be"):
            parse_device(bad)


def _rank_main(rank, world, port, out_dir):
    set_rank_env(rank, world, port)
    ctx = init_distributed("cpu")  # the real process group (gloo); the GPU choice is computed for 2 GPUs
    train_dev = choose_device("cuda", ctx.local_rank, int(os.environ["LOCAL_WORLD_SIZE"]), cuda_count=2)
    handed = str(loader_device("", train_dev))

    # the trainer's gradient views stay .grad through DDP's bucketed all-reduce
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    grads = GradBuffer(model.parameters())
    ddp = wrap_ddp(model)
    grads.zero_()
    torch.manual_seed(1 + rank)  # each rank its own batch
    ddp(torch.randn(2, 3, 8, 8)).square().sum().backward()
    views_kept = all(p.grad is v for p, v in grads.views)
    reduced = torch.cat([g.reshape(-1) for g in grads.flats]).tolist()

    report(out_dir, rank, {"rank": ctx.rank, "loader_device": handed, "views_kept": views_kept, "grad": reduced})
    end_rank()


def test_two_ranks_hand_the_loader_their_own_gpu_and_keep_gradient_views(tmp_path):
    spawn_ranks(_rank_main, str(tmp_path))
    result = reports(tmp_path)
    assert [r["loader_device"] for r in result] == ["cuda:0", "cuda:1"]
    assert all(r["views_kept"] for r in result)
    assert result[0]["grad"] == result[1]["grad"]  # all-reduced into the views: the same on both ranks
    # and equal to the mean of the two ranks' own gradients, recomputed here
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    own = []
    for rank in (0, 1):
        model.zero_grad()
        torch.manual_seed(1 + rank)
        model(torch.randn(2, 3, 8, 8)).square().sum().backward()
        own.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(torch.tensor(result[0]["grad"]), (own[0] + own[1]) / 2)


def _bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 2))


def _rank_local_buffers(rank, world, port, out_dir):
    """One rank: BN statistics of its own before DDP, two forwards on its own data, a re-wrap
    (as the trainer's at the unfreeze) and one more forward; every step checked against a plain
    copy of the module that ran the same on this rank alone."""
    set_rank_env(rank, world, port)
    init_distributed("cpu")
    model = _bn_net()
    model[1].running_mean.fill_(float(rank + 1))  # this rank's statistics so far
    alone = copy.deepcopy(model)
    local = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for wraps in range(2):
            ddp = wrap_ddp(model)
            local.append(all(torch.equal(a, b) for a, b in zip(model.buffers(), alone.buffers())))
            for step in range(2 - wraps):
                torch.manual_seed(100 * rank + 10 * wraps + step)
                x = torch.randn(2, 3, 8, 8)
                ddp(x).sum().backward()
                alone(x)
                local.append(all(torch.equal(a, b) for a, b in zip(model.buffers(), alone.buffers())))
    report(out_dir, rank, {"local": local, "mean": model[1].running_mean.tolist(),
                           "future_warnings": [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]})
    end_rank()


def test_ddp_keeps_bn_statistics_rank_local_without_a_future_warning(tmp_path):
    """PySOT never synchronises BN buffers: DDP neither broadcasts rank 0's at construction (also
    not at a re-wrap) nor before a forward; and wrapping prints no FutureWarning on torch versions
    that deprecate broadcast_buffers."""
    spawn_ranks(_rank_local_buffers, str(tmp_path))
    ranks = reports(tmp_path)
    for r in ranks:
        assert r["local"] == [True] * 5, r["local"]  # after each wrap and each forward
        assert r["future_warnings"] == []
    assert ranks[0]["mean"] != ranks[1]["mean"]


def _nan_on_one_rank(rank, world, port, shards, out_dir):
    """One rank of a real gloo DDP run whose rank 1 sees a NaN template in its second batch."""
    from pipeline import build_loader
    from test_train import _cfg, _nan_template_at
    from train.trainer import Trainer

    set_rank_env(rank, world, port, OMP_NUM_THREADS="1")
    cfg = _cfg("TRAIN.EPOCH=1", "TRAIN.LR_WARMUP.WARMUP=False", "DATASET.VIDEOS_PER_EPOCH=24", "TRAIN.CKPT_INTERVAL=0")
    loader = build_loader(cfg, shards=shards, batch_size=4, device="cpu", rank=rank, world_size=world,
                          seed=cfg.TRAIN.SEED)
    trainer = Trainer(cfg, shards=shards, out_dir=out_dir, device="cpu", show_progress=False,
                      loader=_nan_template_at(loader, [(0, 1)] if rank == 1 else []))
    summary = trainer.fit()
    params = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    report(out_dir, rank, {"skipped": summary["skipped_steps"], "params": params.tolist(),
                           "finite": bool(torch.isfinite(params).all())})
    end_rank()


def test_a_bad_step_on_one_rank_is_skipped_on_every_rank(shards, tmp_path):  # noqa: F811
    """Real DDP on gloo: rank 1's loss is NaN at step 2 of 3; both ranks skip that step (decided on the
    device from the all-reduced flag), count it, and end with the same finite weights."""
    out = tmp_path / "run"
    spawn_ranks(_nan_on_one_rank, str(shards), str(out))
    ranks = reports(out)
    assert [r["skipped"] for r in ranks] == [1, 1]
    assert all(r["finite"] for r in ranks)
    assert ranks[0]["params"] == ranks[1]["params"]  # no rank applied the step the other skipped
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["total_loss"] is None for r in recs] == [False, True, False]
