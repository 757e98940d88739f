"""The trainer's GPU path. Every test runs on the CPU too (same logic, no autocast or
channels_last there), so a first GPU run is unlikely to fail on a test bug; the CUDA variants
are skipped without a GPU. tools/gpu_check.py runs this file's CUDA tests on the GPU host.

* the trainer across the unfreeze (bf16 + channels_last on CUDA; once with TRAIN.COMPILE) and a
  resume from the epoch checkpoint;
* no host-device sync in the steady-state step: torch's sync debug mode set to "error" (CUDA)
  and a dispatch mode that fails on any op that reads a tensor on the host (both devices);
* the data wait on the device timeline (CUDA events); TRAIN.CUDA_GRAPHS;
* tools/bench_train.py and tools/bench_loader.py end to end;
* tools/gpu_check.py --cpu-dry-run end to end (CPU only; a benchmark: ``-m benchmark``; the
  check's stages, budgets, preflight and judging are tested fast in tests/test_train_gpu_check.py).

``gpu_slow`` (compile and end-to-end runs, minutes on a GPU) is left out of the default run and of
tools/gpu_check.py's fast set: ``python -m pytest -m gpu_slow tests/test_train_gpu.py``.
"""
import json
import math
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from test_train import DEMO, ENV, ROOT, SMALL, _cfg
from train.trainer import Trainer

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=CUDA)]
# compile and end-to-end runs on the GPU (minutes): python -m pytest -m gpu_slow, beside tools/gpu_check.py
SLOW_DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[CUDA, pytest.mark.gpu_slow])]
TWO_BY_TWO = ["TRAIN.EPOCH=2", "DATASET.VIDEOS_PER_EPOCH=8", "TRAIN.CKPT_INTERVAL=0", "TRAIN.PRINT_FREQ=2"]


def _losses(run_dir):
    return [json.loads(line)["total_loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("device, compile_", [
    pytest.param("cpu", False, id="cpu"),  # cpu + compile: tests/test_train.py::test_compiled_training_matches_eager...
    pytest.param("cuda", False, id="cuda", marks=CUDA),
    pytest.param("cuda", True, id="cuda-compile", marks=[CUDA, pytest.mark.gpu_slow]),
])
def test_trainer_across_the_unfreeze_and_resume(shards, tmp_path, device, compile_):  # noqa: F811
    cfg = _cfg(*TWO_BY_TWO, "TRAIN.AMP=True", "TRAIN.CHANNELS_LAST=True", f"TRAIN.COMPILE={compile_}")
    trainer = Trainer(cfg, shards=shards, out_dir=tmp_path / "run", device=device, show_progress=False)
    on_cuda = device == "cuda"
    assert trainer.device.type == device and trainer.loader_device == trainer.device
    assert trainer.amp == on_cuda and trainer.channels_last == on_cuda
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == on_cuda
    summary = trainer.fit()
    assert summary["global_step"] == 4 and summary["skipped_steps"] == 0 and trainer.unfrozen
    assert summary["data_wait_clock"] == ("cuda_events" if on_cuda else "host")
    assert 0 <= summary["data_wait_frac"] <= 1
    losses = _losses(tmp_path / "run")
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    if compile_:
        return  # resuming is the same code compiled or not; compiling twice more costs a minute of GPU time

    resumed = Trainer(cfg, shards=shards, out_dir=tmp_path / "resumed", device=device, show_progress=False,
                      resume=tmp_path / "run" / "checkpoint_e1.pth")
    assert (resumed.epoch, resumed.global_step, resumed.unfrozen) == (1, 2, False)
    resumed.fit()
    again = _losses(tmp_path / "resumed")
    final = torch.load(tmp_path / "run" / "checkpoint_e2.pth", weights_only=True)["state_dict"]
    final_resumed = torch.load(tmp_path / "resumed" / "checkpoint_e2.pth", weights_only=True)["state_dict"]
    if on_cuda:  # cudnn.benchmark picks nondeterministic kernels: close, not bit-equal (README)
        assert again == pytest.approx(losses[1:], rel=5e-2)
    else:  # the CPU resumes bit for bit
        assert again == losses[1:]
        assert all(torch.equal(v, final_resumed[k]) for k, v in final.items())


class _HostReads(TorchDispatchMode):
    """Records every op that copies a device value to the host (``.item()``, ``bool()``,
    ``nonzero`` and friends): each is a host-device sync on a GPU. Works on the CPU too."""

    SYNCING = {"_local_scalar_dense", "nonzero", "equal", "is_nonzero", "masked_select", "unique_consecutive",
               "_unique2", "allclose"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNCING:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@contextmanager
def no_host_sync(device: torch.device):
    """Fail if the block reads a device value on the host (CUDA: torch's sync debug mode as well)."""
    reads = _HostReads()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
    try:
        with reads:
            yield
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    assert not reads.seen, f"host-device syncs in the step: {reads.seen}"


def test_the_sync_detector_sees_a_host_read():
    with pytest.raises(AssertionError, match="_local_scalar_dense"):
        with no_host_sync(torch.device("cpu")):
            torch.ones(2).sum().item()


@pytest.mark.parametrize("device", DEVICES)
def test_steady_state_step_has_no_host_sync(shards, tmp_path, device):  # noqa: F811
    """The steps between two PRINT_FREQ records (the logging step excluded) queue their work and
    never wait for the device: also across a skipped (NaN) step, which is decided on the device."""
    cfg = _cfg(*TWO_BY_TWO, "BACKBONE.TRAIN_EPOCH=0", "DATASET.VIDEOS_PER_EPOCH=32")
    trainer = Trainer(cfg, shards=shards, out_dir=tmp_path, device=device, show_progress=False)
    trainer.loader.set_epoch(0)
    it = trainer.batches()
    batches = [{k: v.clone() for k, v in next(it).items()} for _ in range(5)]  # the loader is not under test
    batches[3]["template"][0, 0, 5, 5] = float("nan")
    for b in batches[:2]:  # warm-up: momentum buffers, cudnn autotuning, allocator growth
        trainer.train_step(b)
    contribs = []
    with no_host_sync(trainer.device):
        for b in batches[2:]:
            contribs.append(trainer.train_step(b))
    applied = [c[3].item() for c in contribs]
    assert applied == [1.0, 0.0, 1.0] and trainer.skipped_steps == 1


def _run(cmd, timeout=600):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("device", SLOW_DEVICES)
def test_bench_train_end_to_end(shards, tmp_path, device):  # noqa: F811
    out = tmp_path / "bench.json"
    res = _run([sys.executable, str(ROOT / "tools" / "bench_train.py"), "--cfg", str(DEMO), "--shards", str(shards),
                "--device", device, "--steps", "2", "--warmup", "1", "--json", str(out),
                "--profile-dir", str(tmp_path / "prof"), "--profile-steps", "2", "--opts", *SMALL,
                "DATASET.VIDEOS_PER_EPOCH=64"])
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["timing"] == ("cuda_events" if device == "cuda" else "wall")
    for phase in ("frozen", "unfrozen"):
        entry = result["phases"][phase]
        assert entry["train_gflop_per_pair"] > 0
        for source in ("real_loader", "synthetic_in_memory"):
            assert entry[source]["pairs_per_s"] > 0 and entry[source]["step_ms"] > 0
        assert 0 <= entry["data_wait_frac"] <= 1
        assert Path(entry["profile"]).read_text().startswith("torch.profiler, 2 training steps")
        if device == "cuda":
            assert entry["xcorr_layout"]["calls_per_step"] == 2  # cls and loc of the one DepthwiseRPN
            assert entry["xcorr_layout"]["share_of_step"] >= 0
    mem = result["peak_memory"]
    if device == "cuda":
        assert result["card"] is None or result["peak_tflops"] > 0
        assert mem["device_used_peak_gib"] >= mem["torch_peak_reserved_gib"] > 0
    else:
        assert result["card"] == "cpu" and result["peak_tflops"] is None and mem["host_max_rss_gib"] > 0


@CUDA
@pytest.mark.gpu_slow
def test_bench_loader_end_to_end_on_cuda(shards, tmp_path):  # noqa: F811
    out = tmp_path / "loader.json"
    res = _run([sys.executable, str(ROOT / "tools" / "bench_loader.py"), "--shards", str(shards), "--device", "cuda",
                "--batch-size", "8", "--batches", "8", "--rounds", "1", "--skip-reference", "--json", str(out),
                "--cfg", str(DEMO), "--opts", *SMALL])
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dali"]["pairs_per_s"] > 0 and result["gpu"]


@CUDA
def test_device_timeline_data_wait():
    """DeviceWaits counts the time the training stream sits idle until a batch is ready: a batch
    handed over late (the host sleeps while the stream has nothing queued) is waited for at least
    that long; one that is ready behind queued work is not waited for."""
    from train.telemetry import DeviceWaits

    device = torch.device("cuda", torch.cuda.current_device())
    waits = DeviceWaits(device)
    torch.cuda.synchronize(device)
    asked = waits.asked()
    late = time.perf_counter()
    time.sleep(0.05)
    late = time.perf_counter() - late
    waits.got(asked)
    waited_late = waits.settle()
    a = torch.randn(2048, 2048, device=device)
    for _ in range(20):  # the previous step's work, still queued when the batch is asked for
        a = a @ a.T / 2048
    asked = waits.asked()
    waits.got(asked)     # ready at once: the stream goes on right behind its queue
    waited_ready = waits.settle()
    assert waited_late >= 0.9 * late  # events complete only once recorded: the idle time is real
    assert 0 <= waited_ready < waited_late
    assert waits.settle() == 0.0  # settled waits are not counted twice


def test_cuda_graphs_are_opt_in_and_need_compile():
    from train.config import ConfigError, load_config
    from train.trainer import compile_mode

    assert compile_mode(load_config(None), on_cuda=True) is None
    graphs = load_config(None, ["TRAIN.COMPILE=True", "TRAIN.CUDA_GRAPHS=True"])
    assert compile_mode(graphs, on_cuda=True) == "reduce-overhead"
    assert compile_mode(graphs, on_cuda=False) is None  # the CPU compiles without graphs
    with pytest.raises(ConfigError, match="TRAIN.CUDA_GRAPHS=True needs TRAIN.COMPILE=True"):
        load_config(None, ["TRAIN.CUDA_GRAPHS=True"])


@CUDA
@pytest.mark.gpu_slow
def test_cuda_graphs_training(shards, tmp_path):  # noqa: F811
    """TRAIN.CUDA_GRAPHS: the compiled steps replay CUDA graphs; across the unfreeze (a new graph
    for the new trainable set) the losses stay finite and no step is skipped."""
    cfg = _cfg(*TWO_BY_TWO, "TRAIN.AMP=True", "TRAIN.CHANNELS_LAST=True", "TRAIN.COMPILE=True",
               "TRAIN.CUDA_GRAPHS=True")
    trainer = Trainer(cfg, shards=shards, out_dir=tmp_path / "run", device="cuda", show_progress=False)
    summary = trainer.fit()
    assert summary["global_step"] == 4 and summary["skipped_steps"] == 0
    assert all(math.isfinite(v) for v in _losses(tmp_path / "run"))


@pytest.mark.benchmark  # ~60-80 s on 2 busy cores: every stage builds its own DALI loader
def test_gpu_check_cpu_dry_run_end_to_end(shards, tmp_path):  # noqa: F811
    """The dry run is the CPU stand-in for the GPU check, so it runs on any host: on a GPU host
    (where -m benchmark runs) with the GPUs hidden from it, or its test stage would run the GPU
    tests for real."""
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--cpu-dry-run", "--shards", str(shards),
           "--work", str(tmp_path / "work"), "--out", str(report)]
    res = subprocess.run(cmd, env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["mode"] == "cpu-dry-run"
    assert {s: v["status"] for s, v in result["stages"].items()} == {
        "shards": "given", "gpu_tests": "ok", "loader": "ok", "train_bench": "ok", "train_run": "ok",
        "loader_host": "ok", "profile_loader": "ok"}  # the dry run exercises the loader diagnosis too
    assert [c["name"] for c in result["preflight"]] == ["CUDA device", "pytest"]
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["loader pairs/s"]["value"] > 0 and rows["unfrozen MFU"]["status"] == "n/a"
    assert rows["unfrozen ms/step"]["value"] > 0 and rows["loader host side alone"]["value"] > 0
    counts = result["stages"]["gpu_tests"]["counts"]  # on the CPU the CUDA tests are collected and skip
    assert counts["collected"] > 0 and counts["skipped"] == counts["collected"] and rows["GPU tests"]["status"] == "n/a"
    assert "| loader pairs/s" in res.stdout  # the printed table
