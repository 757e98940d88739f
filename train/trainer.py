"""The training loop: PySOT's recipe (freeze schedule, per-epoch lr, SGD, clipping, summed DDP
gradient) with exact resume, skipped non-finite steps and throughput telemetry.

Single process (CPU or one GPU) and torchrun DDP share one code path; see :class:`Trainer`.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.fileio import write_json

from .checkpoint import (capture_rng, load_checkpoint, remove_stale_temp_files, restore_rng, save_checkpoint,
                         to_plain)
from .distributed import DistContext, init_distributed
from .freeze import apply_freeze, backbone_unfrozen_at, build_optimizer, set_train_mode
from .grad_stats import grad_norms
from .lr_schedule import EpochLR
from .preflight import PreflightError, check_batch, check_checkpoint_fits, check_compile, check_shards
from .telemetry import IntervalMeter, MetricsWriter, bound_verdict, setup_logger

__all__ = ["Trainer", "MAX_VALID_LOSS", "CHECKPOINT_FORMAT"]

MAX_VALID_LOSS = 1e4  # PySOT's is_valid_number: a loss above this is treated like NaN/Inf
CHECKPOINT_FORMAT = "siamtrack-train-1"
_REPO_ROOT = Path(__file__).resolve().parents[1]
_IMAGE_KEYS = ("template", "search")


def _resolve(path: str) -> Path:
    """A path as given, else relative to the repo root (PySOT resolves pretrained paths there)."""
    p = Path(path)
    return p if p.exists() or p.is_absolute() else _REPO_ROOT / p


class _BufferGuard:
    """Snapshot of the model's buffers (BN running stats) so a skipped step leaves no trace.

    A forward pass in train mode updates BN statistics even when the loss turns out NaN.
    """

    def __init__(self, model):
        self.live = [b for b in model.buffers()]
        self.saved = [b.detach().clone() for b in self.live]

    def snapshot(self):
        with torch.no_grad():
            torch._foreach_copy_(self.saved, self.live)

    def restore(self):
        with torch.no_grad():
            torch._foreach_copy_(self.live, self.saved)


def _channels_last_images(batch: dict) -> dict:
    """The batch with its images in channels_last memory format (TRAIN.CHANNELS_LAST)."""
    return {k: (v.contiguous(memory_format=torch.channels_last) if k in _IMAGE_KEYS else v) for k, v in batch.items()}


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
                    if channels_last and v.dim() == 4 and k in _IMAGE_KEYS:
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


class Trainer:
    """Builds model, loader, optimizer from ``cfg`` and trains into ``out_dir``.

    ``resume``: None (fresh run; cfg.TRAIN.RESUME may still name a checkpoint), True (resume
    from ``out_dir/latest.pth``) or a checkpoint path. ``loader``: an already built loader to
    use instead of ``pipeline.build_loader`` (same interface). ``ctx``: the distributed
    context (default: read from torchrun's environment).
    """

    def __init__(self, cfg, shards, out_dir, device="cpu", resume=None, loader=None, ctx: DistContext | None = None,
                 show_progress=True):
        self.cfg = cfg
        self.ctx = ctx or init_distributed(device)
        self.device = self.ctx.device
        self.on_cuda = self.device.type == "cuda"
        self.out_dir = Path(out_dir)
        self.show_progress = show_progress and self.ctx.is_main
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = setup_logger(self.out_dir if self.ctx.is_main else None, self.ctx.rank)
        tr = cfg.TRAIN
        if self.ctx.is_main:  # leftovers of a checkpoint write that was killed (only rank 0 writes them)
            for p in remove_stale_temp_files(self.out_dir):
                self.log.warning(f"removed {p}: temp file of an interrupted checkpoint write (its process is gone)")

        # ---- checks that need nothing built ----
        self.steps_per_epoch = check_batch(cfg, self.ctx.world_size)
        if tr.COMPILE:
            check_compile(self.device.type)
        self.shard_counts = check_shards(cfg, shards)
        resume_path = None
        if resume is True:
            resume_path = self.out_dir / "latest.pth"
            if not resume_path.is_file():
                raise PreflightError(f"--resume: {resume_path} does not exist (nothing to resume in {self.out_dir})")
        elif resume:
            resume_path = Path(resume)
        elif tr.RESUME:
            resume_path = _resolve(tr.RESUME)
        ckpt = load_checkpoint(resume_path) if resume_path is not None else None

        # ---- determinism and speed knobs ----
        torch.manual_seed(tr.SEED)
        np.random.seed(tr.SEED)
        random.seed(tr.SEED)
        if self.on_cuda:
            torch.backends.cudnn.benchmark = True  # PySOT runs deterministic/no-benchmark; we prefer speed
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp = self.on_cuda and tr.AMP
        self.channels_last = self.on_cuda and tr.CHANNELS_LAST

        # ---- model ----
        from model import build_model

        self.model = build_model(cfg)
        if ckpt is not None:
            check_checkpoint_fits(ckpt, self.model, cfg, resume_path)
        elif cfg.BACKBONE.PRETRAINED:
            self._load_pretrained(self.model.backbone, cfg.BACKBONE.PRETRAINED, "BACKBONE.PRETRAINED")
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

        # ---- data ----
        loader_device = tr.LOADER_DEVICE or self.device.type
        if loader_device not in ("cpu", "cuda"):
            raise PreflightError(f"TRAIN.LOADER_DEVICE={tr.LOADER_DEVICE!r} must be '', 'cpu' or 'cuda'")
        if loader_device == "cuda" and not self.on_cuda:
            raise PreflightError("TRAIN.LOADER_DEVICE='cuda' needs --device cuda")
        self.host_loader = loader_device == "cpu" and self.on_cuda
        if loader is None:
            from pipeline import build_loader

            loader = build_loader(cfg, shards=str(shards), batch_size=tr.BATCH_SIZE, device=loader_device,
                                  rank=self.ctx.rank, world_size=self.ctx.world_size, seed=tr.SEED)
        self.loader = loader
        if len(self.loader) != self.steps_per_epoch:
            self.log.warning(f"loader yields {len(self.loader)} batches per epoch; PySOT's count would be "
                             f"{self.steps_per_epoch}; using the loader's")
            self.steps_per_epoch = len(self.loader)

        # ---- training state ----
        self.epoch = tr.START_EPOCH
        self.epoch_step = 0
        self.global_step = self.epoch * self.steps_per_epoch
        self.skipped_steps = 0
        self.unfrozen = backbone_unfrozen_at(cfg, self.epoch)
        if ckpt is not None:
            self._restore(ckpt, resume_path)
        else:
            self._build_optimizer()
            if tr.PRETRAINED:
                self._load_pretrained(self.model, tr.PRETRAINED, "TRAIN.PRETRAINED")
        self.grad_scale = float(self.ctx.world_size) if tr.GRAD_SUM else 1.0
        self.param_grad_stats = False  # per-parameter LOG_GRADS scalars: fit() turns them on when TensorBoard is there
        self.last_param_grads: dict = {}
        self.buffers = _BufferGuard(self.model)
        self._wrap()

    # ------------------------------------------------------------------ setup helpers
    def _load_pretrained(self, module, path, key):
        from model.checkpoint import load_pretrained

        p = _resolve(path)
        if not p.is_file():
            raise PreflightError(f"{key}={path!r}: file not found (also tried {p})")
        report = load_pretrained(module, str(p))
        self.log.info(f"{key}: loaded {p}: {report}")

    def _restore(self, ckpt, path):
        cfg = self.cfg
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            # A PySOT checkpoint_eN (or foreign file): weights, optimizer if it fits, epoch.
            self.log.warning(f"{path} is not one of our training checkpoints; restoring weights and epoch only")
        from model.checkpoint import read_state_dict

        self.model.load_state_dict(read_state_dict(ckpt, str(path)), strict=True)
        self.epoch = int(ckpt.get("epoch", 0))
        self.epoch_step = int(ckpt.get("epoch_step", 0))
        if self.epoch_step and ckpt.get("world_size", self.ctx.world_size) != self.ctx.world_size:
            raise PreflightError(
                f"{path} stopped mid-epoch with {ckpt['world_size']} processes; resume it with the same number "
                f"(now {self.ctx.world_size}) or from an epoch checkpoint checkpoint_e{self.epoch}.pth")
        self.unfrozen = bool(ckpt.get("backbone_unfrozen", backbone_unfrozen_at(cfg, self.epoch)))
        self.global_step = int(ckpt.get("global_step", self.epoch * self.steps_per_epoch + self.epoch_step))
        self.skipped_steps = int(ckpt.get("skipped_steps", 0))
        self._build_optimizer()
        if "optimizer" in ckpt:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as err:
                if ckpt.get("format") == CHECKPOINT_FORMAT:
                    phase = "unfrozen" if self.unfrozen else "frozen"
                    raise PreflightError(f"{path}: optimizer state does not fit the {phase} parameter groups "
                                         f"({err})") from None
                # PySOT's checkpoint_e{TRAIN_EPOCH} holds the frozen-phase optimizer; PySOT itself would
                # rebuild the optimizer at that epoch, so a fresh one is the faithful continuation.
                self.log.warning(f"{path}: optimizer state does not fit ({err}); starting a fresh optimizer")
        if "scheduler" in ckpt:
            self.sched.load_state_dict(ckpt["scheduler"])
        if "loader" in ckpt:
            self.loader.load_state_dict(ckpt["loader"])
        if "rng" in ckpt:
            restore_rng(ckpt["rng"])
        self.log.info(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.epoch_step}/{self.steps_per_epoch}, "
                      f"global step {self.global_step}, backbone {'unfrozen' if self.unfrozen else 'frozen'}")

    def _wrap(self):
        """(Re)wrap the model for DDP / compile; needed again when the trainable set changes."""
        self.net = self.model
        if self.ctx.distributed:
            self.net = DDP(self.model, device_ids=[self.device.index] if self.on_cuda else None,
                           broadcast_buffers=False,  # PySOT never syncs BN buffers; rank 0's are saved
                           find_unused_parameters=False)
        if self.cfg.TRAIN.COMPILE:
            self.net = torch.compile(self.net)

    def unfreeze(self):
        self.log.info(f"epoch {self.epoch + 1}: start training backbone layers {list(self.cfg.BACKBONE.TRAIN_LAYERS)} "
                      f"at lr x{self.cfg.BACKBONE.LAYERS_LR}; optimizer rebuilt (momentum reset), as PySOT")
        self.unfrozen = True
        self.net = None
        self._build_optimizer()
        self._wrap()

    def _build_optimizer(self):
        """Freeze the backbone as `self.unfrozen` says, then a fresh optimizer (PySOT's parameter
        groups, zero momentum) and its lr schedule."""
        apply_freeze(self.model, self.cfg, self.unfrozen)
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.sched = EpochLR(self.optimizer, self.cfg.TRAIN)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict:
        return {
            "epoch": self.epoch,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.sched.state_dict(),
            "loader": to_plain(self.loader.state_dict()),
            "rng": capture_rng(),
            "epoch_step": self.epoch_step,
            "global_step": self.global_step,
            "backbone_unfrozen": self.unfrozen,
            "skipped_steps": self.skipped_steps,
            "world_size": self.ctx.world_size,
            "meta_arc": self.cfg.META_ARC,
            "config": self.cfg.to_dict(),
            "format": CHECKPOINT_FORMAT,
        }

    def _save(self, *names):
        if not self.ctx.is_main:
            return
        payload = self.checkpoint_payload()
        for name in names:
            save_checkpoint(self.out_dir / name, payload)

    # ------------------------------------------------------------------ the loop
    def batches(self):
        """One pass over the loader as ``train_step`` takes it: on the device, images channels_last if asked."""
        it = iter(self.loader)
        if self.host_loader:
            return _prefetch_to(it, self.device, self.channels_last)
        if self.channels_last:
            return map(_channels_last_images, it)
        return it

    def train_step(self, batch):
        """Forward, all-rank validity vote, backward/clip/step. Returns mean losses or None if skipped."""
        self.buffers.snapshot()
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext())
        with autocast:
            out = self.net(batch)
        loss = out["total_loss"]
        vals = torch.stack([out["total_loss"].detach(), out["cls_loss"].detach(), out["loc_loss"].detach()]).float()
        ok = torch.isfinite(vals).all() & (vals[0] <= MAX_VALID_LOSS)
        packed = torch.cat([torch.where(ok, vals, torch.zeros_like(vals)), ok.float().reshape(1)])
        if self.ctx.distributed:  # one collective per step: loss sums and the count of valid ranks
            dist.all_reduce(packed)
        packed = packed.cpu()
        if packed[3].item() < self.ctx.world_size:  # some rank saw a bad loss: every rank skips together
            self.skipped_steps += 1
            self.buffers.restore()
            return None
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self.grad_scale).backward()  # DDP averages; x world_size restores PySOT's SUM
        # Gradients are already reduced here, so rank 0's are every rank's. Before clipping, as PySOT;
        # one extra device sync per step, so only on request (PySOT's key).
        grads = {}
        if self.cfg.TRAIN.LOG_GRADS and self.ctx.is_main:
            grads, self.last_param_grads = grad_norms(self.model, per_param=self.param_grad_stats)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.TRAIN.GRAD_CLIP)
        self.optimizer.step()
        w = self.ctx.world_size
        return {"total_loss": packed[0].item() / w, "cls_loss": packed[1].item() / w,
                "loc_loss": packed[2].item() / w, **grads}

    def _record_batch(self, fh, batch):
        fp = {k: batch[k].double().flatten(1).sum(1).tolist() for k in ("template", "search")}
        fh.write(json.dumps({"epoch": self.epoch, "step": self.global_step, **fp}) + "\n")

    def fit(self) -> dict:
        """Train until cfg.TRAIN.EPOCH; returns a summary dict (also written to summary.json)."""
        cfg, tr = self.cfg, self.cfg.TRAIN
        metrics = MetricsWriter(self.out_dir) if self.ctx.is_main else None
        self.param_grad_stats = bool(tr.LOG_GRADS and metrics is not None and metrics.tensorboard)
        record = (open(self.out_dir / f"batches_rank{self.ctx.rank}.jsonl", "a", buffering=1)
                  if tr.RECORD_BATCHES else None)
        total = {"pairs": 0, "wait_s": 0.0, "step_s": 0.0}
        pairs_per_step = tr.BATCH_SIZE * self.ctx.world_size
        verdicts = []
        try:
            from tqdm import tqdm

            while self.epoch < tr.EPOCH:
                if not self.unfrozen and backbone_unfrozen_at(cfg, self.epoch):
                    self.unfreeze()
                self.sched.set_epoch(self.epoch)
                if self.epoch_step == 0:
                    self.loader.set_epoch(self.epoch)
                set_train_mode(self.model, cfg, self.unfrozen)
                lr = self.sched.lr_at(self.epoch)
                self.log.info(f"epoch {self.epoch + 1}/{tr.EPOCH}: lr {lr:.6g}, group lrs "
                              f"{[f'{x:.3g}' for x in self.sched.group_lrs()]}, backbone "
                              f"{'unfrozen' if self.unfrozen else 'frozen'}")
                meter, ep = IntervalMeter(), IntervalMeter()
                bar = tqdm(total=self.steps_per_epoch, initial=self.epoch_step, unit="step", dynamic_ncols=True,
                           desc=f"epoch {self.epoch + 1}/{tr.EPOCH}", disable=not self.show_progress)
                it = self.batches()
                t0 = time.perf_counter()
                while self.epoch_step < self.steps_per_epoch:
                    try:
                        batch = next(it)
                    except StopIteration:
                        raise RuntimeError(f"loader ended after {self.epoch_step} of {self.steps_per_epoch} "
                                           f"batches in epoch {self.epoch + 1}") from None
                    t1 = time.perf_counter()
                    if record is not None:
                        self._record_batch(record, batch)
                    losses = self.train_step(batch)
                    self.epoch_step += 1
                    self.global_step += 1
                    if self.param_grad_stats and losses is not None:  # PySOT logs these every step
                        metrics.tensorboard_scalars(self.last_param_grads, self.global_step)
                    t2 = time.perf_counter()
                    meter.update(losses, pairs_per_step, t1 - t0, t2 - t0)
                    ep.update(losses, pairs_per_step, t1 - t0, t2 - t0)
                    t0 = t2
                    if self.show_progress:
                        bar.update(1)
                        m = ep.means()  # epoch-so-far means: steadier than the print interval
                        bar.set_postfix(loss=f"{m['total_loss']:.4f}", lr=f"{lr:.2e}",
                                        pairs_s=f"{m['pairs_per_s']:.1f}", wait=f"{100 * m['data_wait_frac']:.0f}%",
                                        refresh=False)
                    if meter.steps >= tr.PRINT_FREQ or self.epoch_step == self.steps_per_epoch:
                        if metrics is not None:
                            metrics.write({"epoch": self.epoch, "step": self.global_step, "lr": lr, **meter.means(),
                                           "skipped_steps": self.skipped_steps})
                        meter.reset()
                    if (tr.CKPT_INTERVAL and self.global_step % tr.CKPT_INTERVAL == 0
                            and self.epoch_step < self.steps_per_epoch):
                        self._save("latest.pth")
                bar.close()
                verdict = bound_verdict(self.epoch, ep.pairs, ep.wait_s, ep.step_s)
                verdicts.append(verdict)
                self.log.info(verdict + (f"; {self.skipped_steps} skipped steps so far" if self.skipped_steps else ""))
                total["pairs"] += ep.pairs
                total["wait_s"] += ep.wait_s
                total["step_s"] += ep.step_s
                self.epoch += 1
                self.epoch_step = 0
                self._save(f"checkpoint_e{self.epoch}.pth", "latest.pth")
        finally:
            if metrics is not None:
                metrics.close()
            if record is not None:
                record.close()
        summary = {
            "epochs": tr.EPOCH, "global_step": self.global_step, "skipped_steps": self.skipped_steps,
            "pairs_per_s": total["pairs"] / total["step_s"] if total["step_s"] else math.nan,
            "data_wait_frac": total["wait_s"] / total["step_s"] if total["step_s"] else math.nan,
            "world_size": self.ctx.world_size, "device": str(self.device), "verdicts": verdicts,
        }
        if self.ctx.is_main:
            write_json(self.out_dir / "summary.json", summary, indent=2)
            try:
                from .plotting import plot_run

                summary["curves"] = str(plot_run(self.out_dir))
            except Exception as err:  # a missing plot must not fail a finished training run
                self.log.warning(f"could not plot {self.out_dir / 'metrics.jsonl'}: {err}")
        return summary
