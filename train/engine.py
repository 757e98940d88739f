"""One epoch of training, as torchvision's references keep it in ``engine.train_one_epoch``:
batches onto the device, one cancellable step each (:meth:`train.trainer.Trainer.train_step`),
the metrics records of every ``PRINT_FREQ`` interval, the progress bar and mid-epoch
checkpoints.  What happens between epochs (unfreezing, lr, epoch checkpoints) is the
trainer's (:meth:`~train.trainer.Trainer.start_epoch`, :meth:`~train.trainer.Trainer.finish_epoch`).
"""
from __future__ import annotations

import json
import time

import torch
from tqdm import tqdm

from pipeline.batch import IMAGES

from .telemetry import DeviceWaits

__all__ = ["train_one_epoch", "device_batches"]


def device_batches(loader_iter, device: torch.device, host_loader: bool, channels_last: bool):
    """The loader's batches as a step takes them: on ``device``, images channels_last if asked.

    ``host_loader``: the loader renders on the CPU for a CUDA step (TRAIN.LOADER_DEVICE cpu), so
    batches are copied from pinned memory on a side stream, one batch ahead.
    """
    if host_loader:
        return _prefetch_to(loader_iter, device, channels_last)
    if channels_last:
        return map(_channels_last_images, loader_iter)
    return loader_iter


def _channels_last_images(batch: dict) -> dict:
    """The batch with its images in channels_last memory format (TRAIN.CHANNELS_LAST)."""
    return {k: (v.contiguous(memory_format=torch.channels_last) if k in IMAGES else v) for k, v in batch.items()}


def _prefetch_to(loader_iter, device, channels_last):
    """Yield batches moved to ``device``: pinned host memory, async copies on a side stream, one ahead."""
    stream = torch.cuda.Stream(device)

    def issue(batch):
        with torch.cuda.stream(stream):
            out = {}
            for k, v in batch.items():
                if isinstance(v, torch.Tensor):
                    if v.device.type == "cpu" and not v.is_pinned():
                        v = v.pin_memory()
                    v = v.to(device, non_blocking=True)
                    if channels_last and v.dim() == 4 and k in IMAGES:
                        v = v.contiguous(memory_format=torch.channels_last)
                out[k] = v
        return out

    nxt = None
    for batch in loader_iter:
        cur, nxt = nxt, issue(batch)
        if cur is not None:
            yield cur
        torch.cuda.current_stream(device).wait_stream(stream)
        for v in nxt.values():
            if isinstance(v, torch.Tensor) and v.device.type == "cuda":
                v.record_stream(torch.cuda.current_stream(device))
    if nxt is not None:
        yield nxt


def _record_batch(fh, epoch: int, step: int, batch: dict) -> None:
    """TRAIN.RECORD_BATCHES: one line of per-sample image sums (which samples a rank trained on)."""
    fp = {k: batch[k].double().flatten(1).sum(1).tolist() for k in IMAGES}
    fh.write(json.dumps({"epoch": epoch, "step": step, **fp}) + "\n")


def train_one_epoch(trainer, lr: float, metrics, record=None) -> None:
    """Train the rest of ``trainer.epoch``: from its ``epoch_step`` (0, or where a resumed run
    stopped) to ``steps_per_epoch``, advancing ``epoch_step`` and ``global_step``.

    ``lr``: the epoch's learning rate (for records and the bar). ``metrics``: rank 0's
    MetricsWriter (None on other ranks); a record is written at every epoch step that is a
    multiple of PRINT_FREQ and at the epoch's last step, the one device read of an interval.
    ``record``: an open file for TRAIN.RECORD_BATCHES, or None. ``latest.pth`` is saved every
    CKPT_INTERVAL global steps inside the epoch (the epoch's end is ``finish_epoch``'s). Returns
    early, after a step, when ``trainer.stop_requested()``.
    """
    tr = trainer.cfg.TRAIN
    pairs_per_step = tr.BATCH_SIZE * trainer.ctx.world_size
    bar = tqdm(total=trainer.steps_per_epoch, initial=trainer.epoch_step, unit="step", dynamic_ncols=True,
               desc=f"epoch {trainer.epoch + 1}/{tr.EPOCH}", disable=not trainer.show_progress)
    shown_loss = "-"  # read from the device once per PRINT_FREQ steps, not before
    it = trainer.batches()
    # data wait: on CUDA on the device timeline (the host runs ahead of the GPU), else the host clock
    waits = DeviceWaits(trainer.device) if trainer.on_cuda else None
    t0 = time.perf_counter()
    while trainer.epoch_step < trainer.steps_per_epoch:
        asked = waits.asked() if waits is not None else None
        try:
            batch = next(it)
        except StopIteration:
            raise RuntimeError(f"loader ended after {trainer.epoch_step} of {trainer.steps_per_epoch} "
                               f"batches in epoch {trainer.epoch + 1}") from None
        t1 = time.perf_counter()
        if waits is not None:
            waits.got(asked, None if trainer.host_loader else getattr(trainer.loader, "ready_event", None))
        if record is not None:
            _record_batch(record, trainer.epoch, trainer.global_step, batch)
        contrib = trainer.train_step(batch)
        trainer.epoch_step += 1
        trainer.global_step += 1
        if trainer.param_grad_stats and trainer.last_grad_stats:  # PySOT logs these every step
            metrics.tensorboard_scalars(trainer.last_param_grads, trainer.global_step)
        t2 = time.perf_counter()
        for meter in (trainer.interval, trainer.epoch_meter):
            meter.update(contrib, pairs_per_step, t1 - t0 if waits is None else 0.0, t2 - t0, trainer.last_grad_stats)
        t0 = t2
        # Intervals are aligned to the epoch's steps, so a resumed run (which restores the
        # unfinished interval's sums) writes the records an uninterrupted run would.
        record_step = trainer.epoch_step % tr.PRINT_FREQ == 0 or trainer.epoch_step == trainer.steps_per_epoch
        checkpoint_step = bool(tr.CKPT_INTERVAL and trainer.global_step % tr.CKPT_INTERVAL == 0
                               and trainer.epoch_step < trainer.steps_per_epoch)
        stop = trainer.stop_requested()  # every rank agrees (a signal, too many replaced crops): fit() ends the run
        if waits is not None and (record_step or checkpoint_step or stop):
            waited = waits.settle()
            for meter in (trainer.interval, trainer.epoch_meter):
                meter.add_wait(waited)
        if record_step:
            if metrics is not None:  # rank 0: the one device read of an interval
                shown_loss = f'{trainer.epoch_meter.means()["total_loss"]:.4f}'  # epoch so far: steadier
                metrics.write({"epoch": trainer.epoch, "step": trainer.global_step, "lr": lr,
                               **trainer.interval.means(), "skipped_steps": trainer.skipped_steps,
                               "replaced_crops": trainer.replaced_crops})
            trainer.interval.reset()
        if trainer.show_progress:
            meter = trainer.epoch_meter
            bar.update(1)
            bar.set_postfix(loss=shown_loss, lr=f"{lr:.2e}",
                            pairs_s=f"{meter.pairs / max(meter.step_s, 1e-9):.1f}",
                            wait=f"{100 * meter.wait_s / max(meter.step_s, 1e-9):.0f}%",
                            replaced=trainer.replaced_crops, refresh=False)
        if checkpoint_step:
            trainer.save("latest.pth")
        if stop:
            break
    bar.close()
