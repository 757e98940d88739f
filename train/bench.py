"""Training throughput benchmark: real loader vs. in-memory batches, frozen and unfrozen phases."""
from __future__ import annotations

import math
import resource
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .freeze import set_train_mode
from .trainer import Trainer

__all__ = ["PEAK_TFLOPS", "peak_tflops", "train_flops_per_pair", "bench_training"]

# Dense bf16 tensor-core peaks (TFLOP/s) of GPUs we know, by a substring of the device name.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def peak_tflops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_TFLOPS.items():
        if key in name:
            return name, peak
    return name, None


def _slice(batch, n):
    return {k: v[:n] for k, v in batch.items()}


def train_flops_per_pair(trainer: Trainer, batch) -> float:
    """FLOPs of one training forward+backward per pair, counted on the live model in its current
    freeze state (a frozen backbone needs no backward, so this differs by phase)."""
    n = 2
    small = _slice(batch, n)
    counter = FlopCounterMode(display=False)
    with counter:
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if trainer.amp else torch.autocast("cpu", enabled=False)
        with autocast:
            loss = trainer.model(small)["total_loss"]
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(trainer, batches, steps, warmup):
    """Run warmup+steps training steps from the iterator ``batches``; time the last ``steps``."""
    dev = trainer.device
    wait = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            wait = 0.0
            start = time.perf_counter()
        t0 = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t0
        trainer.train_step(batch)
    _sync(dev)
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return elapsed, wait, peak


def _loader_batches(trainer):
    epoch = 0
    while True:
        trainer.loader.set_epoch(epoch)
        yield from trainer.batches()
        epoch += 1


def bench_training(cfg, shards, device, steps, warmup=5) -> dict:
    """Measure both phases; returns a JSON-ready dict (see tools/bench_train.py)."""
    from model.flops import count_flops

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, shards=shards, out_dir=tmp, device=device, show_progress=False)
        gpu, peak = peak_tflops(trainer.device)
        pairs_per_step = cfg.TRAIN.BATCH_SIZE * trainer.ctx.world_size
        result = {"device": gpu, "peak_bf16_tflops": peak, "batch_size": cfg.TRAIN.BATCH_SIZE,
                  "world_size": trainer.ctx.world_size, "steps": steps, "warmup": warmup,
                  "amp_bf16": trainer.amp, "channels_last": trainer.channels_last, "compile": cfg.TRAIN.COMPILE,
                  "model_forward_gflop_per_pair": count_flops(trainer.model, cfg.TRAIN.EXEMPLAR_SIZE,
                                                              cfg.TRAIN.SEARCH_SIZE) / 1e9,
                  "phases": {}}
        batches = _loader_batches(trainer)
        for phase in ("frozen", "unfrozen"):
            if phase == "unfrozen" and not trainer.unfrozen:
                trainer.unfreeze()
            elif phase == "frozen" and trainer.unfrozen:
                result["phases"]["frozen"] = {"note": "BACKBONE.TRAIN_EPOCH <= START_EPOCH: no frozen phase"}
                continue
            set_train_mode(trainer.model, cfg, trainer.unfrozen)
            fixed = {k: v.to(trainer.device) for k, v in next(batches).items()}
            flops = train_flops_per_pair(trainer, fixed)
            entry = {"train_gflop_per_pair": flops / 1e9}
            for source, it in (("real_loader", batches), ("synthetic_in_memory", _repeat(fixed))):
                elapsed, wait, peak_mem = _time_steps(trainer, it, steps, warmup)
                rate = steps * pairs_per_step / elapsed
                tflops = rate * flops / 1e12
                entry[source] = {"pairs_per_s": rate, "step_ms": 1e3 * elapsed / steps,
                                 "data_wait_frac": wait / elapsed, "achieved_tflops": tflops,
                                 "mfu": (tflops / trainer.ctx.world_size / peak) if peak else None,
                                 "peak_mem_gib": peak_mem / 2**30}
            real, synth = entry["real_loader"]["pairs_per_s"], entry["synthetic_in_memory"]["pairs_per_s"]
            entry["real_over_synthetic"] = real / synth if synth else math.nan
            result["phases"][phase] = entry
        result["skipped_steps"] = trainer.skipped_steps
    return result


def _repeat(batch):
    while True:
        yield batch
