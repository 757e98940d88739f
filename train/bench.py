"""Training throughput benchmark: the real loader vs. in-memory batches, frozen and unfrozen phases.

* Time: on CUDA the GPU time of the timed steps, from CUDA events recorded on the training
  stream (no host sync inside the window, so the host and the loader keep running ahead as in
  training); on the CPU wall time.
* MFU: achieved FLOP/s (FlopCounterMode's count of a training forward+backward per pair, in the
  live freeze state) over the card's own dense peak (:mod:`train.gpu_peaks`): bf16 with AMP,
  TF32 without.
* Data wait: on CUDA on the device timeline (:class:`train.telemetry.DeviceWaits`): the time
  the training stream waits for each batch to be ready (CUDA events), as a share of the step's
  GPU time; the loader's own GPU work (DALI's decoding and operators, the copies, the label
  kernels) is compute shared with training, reported as its own column ``loader_gpu_frac``:
  1 - in-memory step time / real-loader step time - data wait. On the CPU, where a step is
  synchronous, the host clock: the share of wall time spent in ``next`` (``host_wait_frac``).
* Windows: at most ``steps`` timed steps, fewer when ``max_seconds`` of host time pass first (a
  slow card or loader still gives figures inside a time budget); ``steps`` says how many ran.
* Memory: torch's allocator peak and the device-wide used memory (``cudaMemGetInfo``, sampled
  after every step: DALI's pools, nvJPEG and the CUDA contexts included; other processes on the
  same GPU too).
* xcorr layout: on CUDA with channels_last, the GPU time of the NCHW round trips around the
  depthwise correlations (channels_last minus contiguous inputs, forward and backward, at the
  model's real shapes), per step and as a share of the step.
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.flops import count_flops
from model.heads.rpn import DepthwiseXCorr
from model.heads.xcorr import xcorr_depthwise
from pipeline.batch import SEARCH

from .freeze import set_train_mode
from .gpu_peaks import card_peak
from .telemetry import DeviceWaits
from .trainer import Trainer

__all__ = ["device_peak", "train_flops_per_pair", "bench_training", "profile_steps", "xcorr_round_trips",
           "MemoryMeter"]


def device_peak(device: torch.device, amp: bool) -> dict:
    """The card and the dense peak (TFLOP/s) that fits the run; peak None for an unknown card or the CPU."""
    if device.type != "cuda":
        return {"device_name": "cpu", "card": "cpu", "peak_tflops": None, "peak_kind": None}
    props = torch.cuda.get_device_properties(device)
    found = card_peak(props.name, props.multi_processor_count, props.total_memory)
    return {"device_name": props.name, "card": found.card if found else None,
            "peak_tflops": found.peak(amp) if found else None, "peak_kind": "bf16" if amp else "tf32",
            "sm_count": props.multi_processor_count, "memory_gib": props.total_memory / 2**30}


def _slice(batch, n):
    return {k: v[:n] for k, v in batch.items()}


def _autocast(trainer):
    return torch.autocast("cuda", dtype=torch.bfloat16) if trainer.amp else torch.autocast("cpu", enabled=False)


def train_flops_per_pair(trainer: Trainer, batch) -> float:
    """FLOPs of one training forward+backward per pair, counted on the live model in its current
    freeze state (a frozen backbone needs no backward, so this differs by phase)."""
    n = 2
    small = _slice(batch, n)
    counter = FlopCounterMode(display=False)
    with counter:
        with _autocast(trainer):
            loss = trainer.model(small)["total_loss"]
        loss.backward()
    trainer.grads.zero_()
    return counter.get_total_flops() / n


class MemoryMeter:
    """Peak memory over a benchmark: torch's allocator and the whole device (DALI included)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.device_used_peak = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)  # device-wide, no stream sync
            self.device_used_peak = max(self.device_used_peak, total - free)

    def result(self) -> dict:
        if self.device.type != "cuda":
            return {"host_max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30}
        self.sample()
        reserved = torch.cuda.max_memory_reserved(self.device)
        return {"torch_peak_allocated_gib": torch.cuda.max_memory_allocated(self.device) / 2**30,
                "torch_peak_reserved_gib": reserved / 2**30,
                "device_used_peak_gib": self.device_used_peak / 2**30,
                # DALI's pools and nvJPEG, the CUDA contexts, and any other process on this GPU
                "outside_torch_gib": max(0, self.device_used_peak - reserved) / 2**30}


class _Clock:
    """A timed window: CUDA events on the training stream (GPU time), else wall time."""

    def __init__(self, device):
        self.device = device

    def start(self):
        self.t0 = time.perf_counter()
        if self.device.type == "cuda":
            self.begin = torch.cuda.Event(enable_timing=True)
            self.begin.record(torch.cuda.current_stream(self.device))

    def stop(self) -> float:
        if self.device.type != "cuda":
            return time.perf_counter() - self.t0
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(self.device))
        end.synchronize()  # the one wait, after the window
        return self.begin.elapsed_time(end) / 1e3


def _time_steps(trainer, batches, steps, warmup, memory: MemoryMeter, ready=None, max_seconds=None) -> dict:
    """``warmup`` untimed steps, then up to ``steps`` timed ones from ``batches`` (fewer once
    ``max_seconds`` of host time have passed, at least one). ``ready()``: the ready event of the
    batch just taken (the loader's), else the hand-over point. Returns steps, seconds (GPU time
    on CUDA, else wall), host wall seconds, host seconds blocked in ``next`` and, on CUDA, the
    device-timeline data wait in seconds."""
    for _ in range(warmup):
        trainer.train_step(next(batches))
        memory.sample()
    clock = _Clock(trainer.device)
    waits = DeviceWaits(trainer.device) if trainer.device.type == "cuda" else None
    clock.start()
    host_wait, n = 0.0, 0
    while n < steps and (n == 0 or max_seconds is None or time.perf_counter() - clock.t0 < max_seconds):
        asked = waits.asked() if waits is not None else None
        t0 = time.perf_counter()
        batch = next(batches)
        host_wait += time.perf_counter() - t0
        if waits is not None:
            waits.got(asked, ready() if ready is not None else None)
        trainer.train_step(batch)
        memory.sample()
        n += 1
    wall = time.perf_counter() - clock.t0
    seconds = clock.stop()
    return {"steps": n, "seconds": seconds, "wall_s": wall, "host_wait_s": host_wait,
            "device_wait_s": waits.settle() if waits is not None else None}


def _loader_batches(trainer):
    epoch = 0
    while True:
        trainer.loader.set_epoch(epoch)
        yield from trainer.batches()
        epoch += 1


def _repeat(batch):
    while True:
        yield batch


def profile_steps(trainer, batches, steps: int, path) -> Path:
    """A torch.profiler summary (operators by device time, or CPU time on the CPU) of ``steps``
    training steps, written as text to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step(next(batches))
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
    sort = "device_time_total" if trainer.device.type == "cuda" else "cpu_time_total"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"torch.profiler, {steps} training steps ({'frozen' if not trainer.unfrozen else 'unfrozen'} "
                    f"backbone), sorted by {sort}\n" + prof.key_averages().table(sort_by=sort, row_limit=40))
    return path


def _xcorr_shapes(trainer, batch) -> list:
    """(search, kernel) shapes of every depthwise correlation in one forward of the model."""
    shapes, hooks = [], []
    for m in trainer.model.modules():
        if isinstance(m, DepthwiseXCorr):
            seen = {}
            hooks.append(m.conv_search.register_forward_hook(lambda _m, _i, o, s=seen: s.__setitem__("x", o.shape)))
            hooks.append(m.conv_kernel.register_forward_hook(
                lambda _m, _i, o, s=seen: shapes.append((tuple(s["x"]), tuple(o.shape)))))
    try:
        with torch.no_grad(), _autocast(trainer):
            trainer.model(_slice(batch, batch[SEARCH].shape[0]))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def xcorr_round_trips(trainer, batch, reps: int = 20) -> dict:
    """GPU time per step of the layout copies around the depthwise correlations: forward and
    backward of ``xcorr_depthwise`` on channels_last inputs (output converted back, as the head's
    convolution does) minus the same on contiguous inputs, summed over the model's calls."""
    shapes = _xcorr_shapes(trainer, batch)
    dtype = torch.bfloat16 if trainer.amp else torch.float32
    clock = _Clock(trainer.device)

    def run(fmt):
        tensors = []
        for xs, ks in shapes:
            x = torch.randn(xs, device=trainer.device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
            k = torch.randn(ks, device=trainer.device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
            tensors.append((x, k))
        for i in range(reps + 2):
            if i == 2:
                clock.start()
            for x, k in tensors:
                out = xcorr_depthwise(x, k).contiguous(memory_format=fmt)
                out.backward(torch.ones_like(out))
        return clock.stop() / reps

    channels_last, contiguous = run(torch.channels_last), run(torch.contiguous_format)
    return {"calls_per_step": len(shapes), "channels_last_ms": 1e3 * channels_last,
            "contiguous_ms": 1e3 * contiguous, "round_trip_ms_per_step": 1e3 * max(0.0, channels_last - contiguous)}


def _loader_settings(loader) -> dict:
    """The loader's thread and decoder choices, with the reasons it gives."""
    keys = ("num_threads", "threads_why", "read_threads", "read_ahead", "hw_decoder_load", "hw_decoder_why")
    return {k: getattr(loader, k) for k in keys if hasattr(loader, k)}


def bench_training(cfg, shards, device, steps, warmup=5, profile_dir=None, profile_steps_n=5, max_seconds=None,
                   on_phase=None) -> dict:
    """Measure both phases; returns a JSON-ready dict (see tools/bench_train.py). With
    ``profile_dir``, also writes a torch.profiler summary of ``profile_steps_n`` steps per phase there.
    ``max_seconds``: host time after which a timed window stops early. ``on_phase(name, entry)``
    is called as each phase's figures are complete."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, shards=shards, out_dir=tmp, device=device, show_progress=False)
        memory = MemoryMeter(trainer.device)
        on_cuda = trainer.device.type == "cuda"
        pairs_per_step = cfg.TRAIN.BATCH_SIZE * trainer.ctx.world_size
        card = device_peak(trainer.device, trainer.amp)
        peak = card["peak_tflops"]
        result = {**card, "batch_size": cfg.TRAIN.BATCH_SIZE,
                  "world_size": trainer.ctx.world_size, "steps": steps, "warmup": warmup, "max_seconds": max_seconds,
                  "amp_bf16": trainer.amp, "channels_last": trainer.channels_last, "compile": cfg.TRAIN.COMPILE,
                  "cuda_graphs": bool(cfg.TRAIN.COMPILE and cfg.TRAIN.CUDA_GRAPHS and on_cuda),
                  "timing": "cuda_events" if on_cuda else "wall",
                  "data_wait_clock": "cuda_events" if on_cuda else "host",
                  "loader": _loader_settings(trainer.loader),
                  "model_forward_gflop_per_pair": count_flops(trainer.model, cfg.TRAIN.EXEMPLAR_SIZE,
                                                              cfg.TRAIN.SEARCH_SIZE) / 1e9,
                  "phases": {}}
        batches = _loader_batches(trainer)
        loader_ready = None if trainer.host_loader else (lambda: getattr(trainer.loader, "ready_event", None))
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
            for source, it, ready in (("real_loader", batches, loader_ready),
                                      ("synthetic_in_memory", _repeat(fixed), None)):
                timed = _time_steps(trainer, it, steps, warmup, memory, ready, max_seconds)
                rate = timed["steps"] * pairs_per_step / timed["seconds"]
                tflops = rate * flops / 1e12
                entry[source] = {"steps": timed["steps"], "pairs_per_s": rate,
                                 "step_ms": 1e3 * timed["seconds"] / timed["steps"], "achieved_tflops": tflops,
                                 "mfu": (tflops / trainer.ctx.world_size / peak) if peak else None}
                if on_cuda:
                    entry[source]["data_wait_frac"] = timed["device_wait_s"] / timed["seconds"]
                else:  # the host clock, for the CPU path only
                    entry[source]["host_wait_frac"] = timed["host_wait_s"] / timed["wall_s"]
            real, synth = entry["real_loader"], entry["synthetic_in_memory"]
            entry["real_over_synthetic"] = real["pairs_per_s"] / synth["pairs_per_s"]
            entry["data_wait_frac"] = real["data_wait_frac"] if on_cuda else real["host_wait_frac"]
            if on_cuda:  # the loader's GPU work on the step: compute shared with training, not waiting
                entry["loader_gpu_frac"] = max(0.0, 1.0 - synth["step_ms"] / real["step_ms"] - entry["data_wait_frac"])
            if on_cuda and trainer.channels_last:
                xc = xcorr_round_trips(trainer, fixed)
                xc["share_of_step"] = xc["round_trip_ms_per_step"] / synth["step_ms"]
                entry["xcorr_layout"] = xc
            if profile_dir is not None:
                entry["profile"] = str(profile_steps(trainer, batches, profile_steps_n,
                                                     Path(profile_dir) / f"profile_{phase}.txt"))
            result["phases"][phase] = entry
            if on_phase is not None:
                on_phase(phase, entry)
        result["peak_memory"] = memory.result()
        result["skipped_steps"] = trainer.skipped_steps
    return result
