"""Which GPU and how many threads the loader takes (pipeline.devices), testable without a GPU:
every DDP rank must render on its own GPU (cuda:LOCAL_RANK), never silently on GPU 0."""
import os

import pytest
import torch
import torch.distributed as dist

from gloo_ranks import end_rank, report, reports, set_rank_env, spawn_ranks
from pipeline import build_loader
from pipeline.devices import (cores_per_process, dali_device_id, local_world_size,
                              resolve_device, resolve_device_on, usable_cores)
from test_loader import BATCH, make_cfg, shards  # noqa: F401  (module fixture)


def test_resolve_device_on():
    assert resolve_device_on("cpu", 0, 0) == torch.device("cpu")
    # a bare 'cuda' is the process's current GPU; an explicit index wins over it
    assert resolve_device_on("cuda", 3, 8) == torch.device("cuda", 3)
    assert resolve_device_on("cuda:5", 3, 8) == torch.device("cuda", 5)
    assert resolve_device_on(torch.device("cuda", 1), 0, 2) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="GPU 2 does not exist \\(2 visible\\)"):
        resolve_device_on("cuda:2", 0, 2)
    with pytest.raises(ValueError, match="GPU 0 does not exist"):
        resolve_device_on("cuda", 0, 0)
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'"):
        resolve_device_on("meta", 0, 1)


def test_dali_device_id():
    assert dali_device_id(torch.device("cpu")) is None      # CPU-only DALI pipeline
    assert dali_device_id(torch.device("cuda", 3)) == 3
    with pytest.raises(ValueError, match="resolve"):
        dali_device_id(torch.device("cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_resolve_device_without_a_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_cores_per_process(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_world_size() == 2
    assert cores_per_process() == max(1, usable_cores() // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE"):
        local_world_size()


def _rank_placement(rank: int, world: int, port: int, out: str) -> None:
    """One torchrun-like rank: what it would hand DALI for cuda:LOCAL_RANK, and for a bare
    'cuda' after the trainer's torch.cuda.set_device(LOCAL_RANK), on an 8-GPU node."""
    set_rank_env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    local_rank = int(os.environ["LOCAL_RANK"])
    mine = {"explicit": dali_device_id(resolve_device_on(f"cuda:{local_rank}", 0, 8)),
            "bare": dali_device_id(resolve_device_on("cuda", local_rank, 8)),
            "threads": cores_per_process()}
    report(out, rank, mine)
    end_rank()


def test_each_ddp_rank_hands_dali_its_own_gpu(tmp_path):
    spawn_ranks(_rank_placement, str(tmp_path))
    placement = reports(tmp_path)
    assert [p["explicit"] for p in placement] == [0, 1]
    assert [p["bare"] for p in placement] == [0, 1]
    assert [p["threads"] for p in placement] == [max(1, usable_cores() // 2)] * 2


def test_cpu_loader_placement(shards, monkeypatch):  # noqa: F811
    """A CPU loader builds a CPU-only DALI pipeline and takes its share of the cores (+1)."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    loader = build_loader(make_cfg(), shards=shards, batch_size=BATCH, device="cpu")
    assert loader.device == torch.device("cpu") and loader.device_id is None
    assert loader.num_threads == cores_per_process() + 1
    assert loader.graph.pipe.device_id is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_loader_uses_the_current_gpu(shards):  # noqa: F811
    current = torch.cuda.current_device()
    loader = build_loader(make_cfg(), shards=shards, batch_size=BATCH, device="cuda")
    assert loader.device == torch.device("cuda", current) and loader.device_id == current
    assert loader.graph.pipe.device_id == current
    batch = next(iter(loader))
    assert all(t.device == loader.device for t in batch.values())
