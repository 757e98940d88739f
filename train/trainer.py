"""The training loop: PySOT's recipe (freeze schedule, per-epoch lr, SGD, clipping, summed DDP
gradient) with exact resume, skipped non-finite steps and throughput telemetry.

Single process (CPU or one GPU) and torchrun DDP share one code path; see :class:`Trainer`.
One epoch's steps are :func:`train.engine.train_one_epoch`. The steady-state step never waits for
the device: losses stay there and are read once per ``PRINT_FREQ`` interval, and a bad step is
cancelled on the device (:mod:`train.step`).
"""
from __future__ import annotations

import contextlib
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from model import build_model
from model.checkpoint import load_pretrained, read_state_dict
from pipeline.fileio import write_json
from pipeline.crop_source import describe_damage
from pipeline.loader import build_loader

from .checkpoint import (CheckpointError, DiskFullError, capture_rng, load_checkpoint, remove_stale_temp_files,
                         restore_rng, save_checkpoint, to_plain)
from .distributed import DistContext, init_distributed, loader_device, wrap_ddp
from .engine import device_batches, train_one_epoch
from .freeze import apply_freeze, backbone_unfrozen_at, build_optimizer, set_train_mode
from .grad_stats import grad_norms
from .lr_schedule import EpochLR
from .preflight import (PreflightError, check_batch, check_checkpoint_fits, check_compile, check_free_space,
                        check_same_shards, check_shards, checkpoint_bytes, shards_identity)
from .run_folder import discard, find_resume_checkpoint, put_back, refuse_or_set_aside, truncate_records
from .run_lock import RunLock
from .step import BufferGuard, GradBuffer, masked_sgd_step
from .stop import Stop, StopVote, exit_status, resume_command
from .telemetry import IntervalMeter, MetricsWriter, bound_verdict, setup_logger

__all__ = ["Trainer", "RunStopped", "TrainingInterrupted", "MAX_VALID_LOSS", "CHECKPOINT_FORMAT"]

MAX_VALID_LOSS = 1e4  # PySOT's is_valid_number: a loss above this is treated like NaN/Inf
CHECKPOINT_FORMAT = "siamtrack-train-1"
_REPO_ROOT = Path(__file__).resolve().parents[1]


def _resolve(path: str) -> Path:
    """A path as given, else relative to the repo root (PySOT resolves pretrained paths there)."""
    p = Path(path)
    return p if p.exists() or p.is_absolute() else _REPO_ROOT / p


def compile_mode(cfg, on_cuda: bool) -> str | None:
    """torch.compile's mode for TRAIN.COMPILE: "reduce-overhead" (CUDA graphs of the forward and
    backward; the batch's shapes are static) with TRAIN.CUDA_GRAPHS on CUDA, else the default."""
    return "reduce-overhead" if on_cuda and cfg.TRAIN.CUDA_GRAPHS else None


class RunStopped(RuntimeError):
    """Training stopped for a reason already logged (train.log and stderr), e.g. a full disk."""


class TrainingInterrupted(RunStopped):
    """SIGTERM or SIGINT stopped training between two steps (logged, with the checkpoint written);
    ``exit_status`` is the shell's for that signal (143, 130)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


class Trainer:
    """Builds model, loader, optimizer from ``cfg`` and trains into ``out_dir``.

    ``resume``: None (fresh run; cfg.TRAIN.RESUME may still name a checkpoint), True (resume
    from the newest checkpoint in ``out_dir`` that loads) or a checkpoint path. A fresh run
    refuses an ``out_dir`` holding an earlier run unless ``overwrite`` (which deletes that run's
    files). ``loader``: an already built loader to use instead of ``pipeline.loader.build_loader``
    (same interface). ``ctx``: the distributed context (default: read from torchrun's environment).
    ``stop_signals``: a :class:`train.stop.StopSignals` whose SIGTERM / SIGINT end ``fit`` after
    the step in flight with a checkpoint (:class:`TrainingInterrupted`). The run folder is locked
    (``run.lock``) from here until ``fit`` ends or ``close``.
    """

    def __init__(self, cfg, shards, out_dir, device="cpu", resume=None, loader=None, ctx: DistContext | None = None,
                 show_progress=True, overwrite=False, stop_signals=None):
        self.cfg = cfg
        self.ctx = ctx or init_distributed(device)
        self.device = self.ctx.device
        self.on_cuda = self.device.type == "cuda"
        self.out_dir = Path(out_dir)
        self.show_progress = show_progress and self.ctx.is_main
        self.stop_signals = stop_signals
        self.run_lock = RunLock(self.out_dir) if self.ctx.is_main else None
        lock_note = self._agreed(lambda: self.run_lock.acquire())  # before anything touches the folder
        aside = None
        try:
            fresh = resume is None and not cfg.TRAIN.RESUME
            aside = self._agreed(lambda: refuse_or_set_aside(self.out_dir, overwrite)) if fresh else None
            aside = aside if self.ctx.is_main else None  # rank 0 owns the folder
            self._build(shards, resume, loader)
        except BaseException:
            if aside is not None:
                put_back(aside)
            self.close()
            raise
        if lock_note:
            self.log.warning(lock_note)
        if aside is not None:
            self.log.info(f"--overwrite: deleted the earlier run's {discard(aside)} files from {self.out_dir}")

    # ------------------------------------------------------------------ construction, in order
    def _build(self, shards, resume, loader):
        self._open_run_folder()
        resume_path, ckpt = self._preflight(shards, resume)
        self._seed_and_backends()
        self._build_model(ckpt, resume_path)
        self._build_loader(shards, loader)
        self._start_state(ckpt, resume_path)
        self._prepare_steps()
        self.finished = self.epoch >= self.cfg.TRAIN.EPOCH
        if not self.finished:  # also records of a run that stopped before its first checkpoint
            self._cut_records_after(self.global_step)
            size = checkpoint_bytes(self.model, self.cfg.TRAIN.MOMENTUM > 0)
            room = self._agreed(lambda: check_free_space(self.out_dir, size, self.cfg.TRAIN.EPOCH - self.epoch))
            if room:
                self.log.warning(room)

    def _open_run_folder(self):
        """The run folder and its log; leftovers of a checkpoint write that was killed removed."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = setup_logger(self.out_dir if self.ctx.is_main else None, self.ctx.rank)
        if self.ctx.is_main:  # only rank 0 writes checkpoints, so only it has such leftovers
            for p in remove_stale_temp_files(self.out_dir):
                self.log.warning(f"removed {p}: temp file of an interrupted checkpoint write (its process is gone)")

    def _preflight(self, shards, resume):
        """Checks that need nothing built (batch, compile toolchain, shards); the resume point."""
        self.steps_per_epoch = check_batch(self.cfg, self.ctx.world_size)
        if self.cfg.TRAIN.COMPILE:
            check_compile(self.device.type)
        self.shard_counts = check_shards(self.cfg, shards)
        self.shards_identity = shards_identity(self.cfg, shards)
        return self._resume_point(resume)

    def _seed_and_backends(self):
        """Global seeds (the model's initial weights), and the speed knobs of a CUDA run."""
        tr = self.cfg.TRAIN
        torch.manual_seed(tr.SEED)
        np.random.seed(tr.SEED)
        random.seed(tr.SEED)
        if self.on_cuda:
            torch.backends.cudnn.benchmark = True  # PySOT runs deterministic/no-benchmark; we prefer speed
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp = self.on_cuda and tr.AMP
        self.channels_last = self.on_cuda and tr.CHANNELS_LAST

    def _build_model(self, ckpt, resume_path):
        """The network on the device; a checkpoint to resume must fit it, else BACKBONE.PRETRAINED loads."""
        self.model = build_model(self.cfg)
        # What a step reports: the losses (all must be finite for the step to apply), then figures.
        self.loss_keys, self.log_keys = self.model.loss_keys, self.model.loss_keys + self.model.figure_keys
        if ckpt is not None:
            check_checkpoint_fits(ckpt, self.model, self.cfg, resume_path)
        elif self.cfg.BACKBONE.PRETRAINED:
            self._load_pretrained(self.model.backbone, self.cfg.BACKBONE.PRETRAINED, "BACKBONE.PRETRAINED")
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _build_loader(self, shards, loader):
        """The pair loader on TRAIN.LOADER_DEVICE (``loader`` if one was given)."""
        tr = self.cfg.TRAIN
        self.loader_device = loader_device(tr.LOADER_DEVICE, self.device)
        self.host_loader = self.loader_device.type == "cpu" and self.on_cuda
        if loader is None:
            loader = build_loader(self.cfg, shards=str(shards), batch_size=tr.BATCH_SIZE,
                                  device=str(self.loader_device), rank=self.ctx.rank,
                                  world_size=self.ctx.world_size, seed=tr.SEED, pin_memory=self.host_loader)
        self.loader = loader
        if len(self.loader) != self.steps_per_epoch:
            self.log.warning(f"loader yields {len(self.loader)} batches per epoch; PySOT's count would be "
                             f"{self.steps_per_epoch}; using the loader's")
            self.steps_per_epoch = len(self.loader)

    def _start_state(self, ckpt, resume_path):
        """Counters, meters and optimizer: from the checkpoint, or fresh (then TRAIN.PRETRAINED loads)."""
        self.epoch = self.cfg.TRAIN.START_EPOCH
        self.epoch_step = 0
        self.global_step = self.epoch * self.steps_per_epoch
        self._skipped = torch.zeros((), dtype=torch.int64, device=self.device)  # read lazily: skipped_steps
        self.interval, self.epoch_meter = IntervalMeter(self.log_keys), IntervalMeter(self.log_keys)
        self.totals = {"pairs": 0, "wait_s": 0.0, "step_s": 0.0}
        self.verdicts: list[str] = []
        self.unfrozen = backbone_unfrozen_at(self.cfg, self.epoch)
        if ckpt is not None:
            self._restore(ckpt, resume_path)
        else:
            self._build_optimizer()
            if self.cfg.TRAIN.PRETRAINED:
                self._load_pretrained(self.model, self.cfg.TRAIN.PRETRAINED, "TRAIN.PRETRAINED")

    def _prepare_steps(self):
        """What every step uses: the gradient scale, the BN snapshot, the (DDP/compiled) network."""
        self.grad_scale = float(self.ctx.world_size) if self.cfg.TRAIN.GRAD_SUM else 1.0
        self.param_grad_stats = False  # per-parameter LOG_GRADS scalars: fit() turns them on when TensorBoard is there
        self.last_grad_stats: dict = {}
        self.last_param_grads: dict = {}
        self.buffers = BufferGuard(self.model)
        self._wrap()
        self.stop_vote = StopVote(self.stop_signals, self.ctx.distributed)  # every rank, here: may make a group
        self.stop = Stop()
        self._latest_at = None  # global step of the latest.pth written by this process

    # ------------------------------------------------------------------ construction helpers
    def _agreed(self, decide):
        """``decide()`` on rank 0, its result (or its PreflightError/CheckpointError) on every rank."""
        outcome = [None, None]
        if self.ctx.is_main:
            try:
                outcome = [decide(), None]
            except (PreflightError, CheckpointError) as err:
                outcome = [None, str(err)]
        if self.ctx.distributed:
            dist.broadcast_object_list(outcome, src=0)
        if outcome[1] is not None:
            raise PreflightError(outcome[1])
        return outcome[0]

    def _resume_point(self, resume):
        """(path, checkpoint) to start from, or (None, None) for a fresh run."""
        if resume is True:  # rank 0 picks the newest checkpoint that loads; every rank reads that file
            found = {}

            def newest():
                found["point"] = find_resume_checkpoint(self.out_dir, self.steps_per_epoch)
                return str(found["point"].path)

            path = Path(self._agreed(newest))
            point = found.get("point")
            if point is None:
                return path, load_checkpoint(path)
            for p, why in point.passed_over:
                self.log.warning(f"--resume: not using {p}: {why}")
            self.log.info(f"--resume: the newest checkpoint that loads is {path} (global step {point.global_step})")
            return path, point.checkpoint
        if resume:
            path = Path(resume)
        elif self.cfg.TRAIN.RESUME:
            path = _resolve(self.cfg.TRAIN.RESUME)
        else:
            return None, None
        return path, load_checkpoint(path)

    def _load_pretrained(self, module, path, key):
        p = _resolve(path)
        if not p.is_file():
            raise PreflightError(f"{key}={path!r}: file not found (also tried {p})")
        report = load_pretrained(module, str(p))
        self.log.info(f"{key}: loaded {p}: {report}")

    def _restore(self, ckpt, path):
        """The state a checkpoint holds: weights, counters, optimizer, schedule, loader position,
        RNG states and the unfinished metrics interval (a PySOT file: weights, epoch, optimizer)."""
        cfg = self.cfg
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            # A PySOT checkpoint_eN (or foreign file): weights, optimizer if it fits, epoch.
            self.log.warning(f"{path} is not one of our training checkpoints; restoring weights and epoch only")
        if "shards" in ckpt:
            moved = check_same_shards(ckpt["shards"], self.shards_identity, path)
            if moved:
                self.log.info(moved)
        self.model.load_state_dict(read_state_dict(ckpt, str(path)), strict=True)
        self.epoch = int(ckpt.get("epoch", 0))
        self.epoch_step = int(ckpt.get("epoch_step", 0))
        if self.epoch_step and ckpt.get("world_size", self.ctx.world_size) != self.ctx.world_size:
            raise PreflightError(
                f"{path} stopped mid-epoch with {ckpt['world_size']} processes; resume it with the same number "
                f"(now {self.ctx.world_size}) or from an epoch checkpoint checkpoint_e{self.epoch}.pth")
        self.unfrozen = bool(ckpt.get("backbone_unfrozen", backbone_unfrozen_at(cfg, self.epoch)))
        self.global_step = int(ckpt.get("global_step", self.epoch * self.steps_per_epoch + self.epoch_step))
        self._skipped.fill_(int(ckpt.get("skipped_steps", 0)))
        self._restore_optimizer(ckpt, path)
        if "scheduler" in ckpt:
            self.sched.load_state_dict(ckpt["scheduler"])
        if "loader" in ckpt:
            self.loader.load_state_dict(ckpt["loader"])
        if "rng" in ckpt:
            restore_rng(ckpt["rng"])
        meters = ckpt.get("meters")
        if meters is not None and self.epoch_step:  # the unfinished PRINT_FREQ interval and epoch go on
            self.interval.load_state_dict(meters["interval"], self.device)
            self.epoch_meter.load_state_dict(meters["epoch"], self.device)
        if meters is not None:
            self.totals = {k: type(v)(meters["totals"][k]) for k, v in self.totals.items()}
            self.verdicts = list(meters["verdicts"])
        self.log.info(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.epoch_step}/{self.steps_per_epoch}, "
                      f"global step {self.global_step}, backbone {'unfrozen' if self.unfrozen else 'frozen'}")

    def _restore_optimizer(self, ckpt, path):
        """A fresh optimizer for the checkpoint's phase, then its saved state where that fits."""
        self._build_optimizer()
        if "optimizer" not in ckpt:
            return
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

    def _wrap(self):
        """(Re)wrap the model for DDP / compile; needed again when the trainable set changes."""
        self.net = self.model
        if self.ctx.distributed:  # PySOT never syncs BN buffers (rank 0's are saved): rank-local here too
            self.net = wrap_ddp(self.model, device_ids=[self.device.index] if self.on_cuda else None)
        if self.cfg.TRAIN.COMPILE:
            self.net = torch.compile(self.net, mode=compile_mode(self.cfg, self.on_cuda))

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
        for p in self.model.parameters():
            p.grad = None  # the previous phase's gradient views
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.grads = GradBuffer(p for g in self.optimizer.param_groups for p in g["params"])
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
            "meters": {"interval": self.interval.state_dict(), "epoch": self.epoch_meter.state_dict(),
                       "totals": dict(self.totals), "verdicts": list(self.verdicts)},
            "world_size": self.ctx.world_size,
            "shards": self.shards_identity,
            "meta_arc": self.cfg.META_ARC,
            "config": self.cfg.to_dict(),
            "format": CHECKPOINT_FORMAT,
        }

    @property
    def skipped_steps(self) -> int:
        """Steps skipped so far on every rank together (a device read: not for the per-step path)."""
        return int(self._skipped.item())

    @property
    def replaced_crops(self) -> int:
        """Pairs the loader replaced because a crop was unusable (counted in delivered batches)."""
        return int(getattr(self.loader, "skipped", 0))

    def save(self, *names):
        """Write the checkpoint as each of ``names`` in the run folder (rank 0 only); a full disk
        is logged and stops the run (:class:`RunStopped`)."""
        if not self.ctx.is_main:
            return
        payload = self.checkpoint_payload()
        for name in names:
            try:
                save_checkpoint(self.out_dir / name, payload)
            except DiskFullError as err:
                self.log.error(str(err))
                raise RunStopped(str(err)) from None
        if "latest.pth" in names:
            self._latest_at = self.global_step

    def _cut_records_after(self, step: int) -> None:
        """Resuming at ``step``: drop what the earlier run recorded after it, so the files read as
        one uninterrupted run (those steps are trained again)."""
        files = [f"batches_rank{self.ctx.rank}.jsonl"] + (["metrics.jsonl"] if self.ctx.is_main else [])
        for name in files:
            dropped = truncate_records(self.out_dir / name, step)
            if dropped:
                self.log.info(f"{name}: dropped {dropped} records after global step {step} (trained again now)")

    # ------------------------------------------------------------------ the loop
    def batches(self):
        """One pass over the loader as ``train_step`` takes it: on the device, images channels_last if asked."""
        return device_batches(iter(self.loader), self.device, self.host_loader, self.channels_last)

    def train_step(self, batch) -> torch.Tensor:
        """Forward, all-rank validity vote, backward, then an update that every rank applies or
        cancels together, decided on the device: no host-device sync (TRAIN.LOG_GRADS excepted).

        Returns the step's contribution, a float64 device tensor [*values of ``log_keys``, 1]
        (means over ranks: total, cls, loc(, mask loss, mask IoU figures)) for an applied step and
        zeros for a skipped one.
        """
        if self.on_cuda and self.cfg.TRAIN.CUDA_GRAPHS:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are free to reuse
        self.buffers.snapshot()
        self.grads.zero_()
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext())
        with autocast:
            out = self.net(batch)
        vals = torch.stack([out[k].detach().float() for k in self.log_keys])
        losses = vals[:len(self.loss_keys)]
        ok = torch.isfinite(losses).all() & (vals[0] <= MAX_VALID_LOSS)
        packed = torch.cat([torch.where(ok, vals, torch.zeros_like(vals)), ok.float().reshape(1)])
        if self.ctx.distributed:  # one collective per step: value sums and the count of valid ranks
            dist.all_reduce(packed)
        apply = packed[-1] == self.ctx.world_size  # every rank's loss was valid: the same flag on every rank
        (out["total_loss"] * self.grad_scale).backward()  # DDP averages; x world_size restores PySOT's SUM
        self.buffers.keep_if(apply)  # a skipped forward leaves no trace in the BN statistics
        self.grads.keep_if(apply)
        # Gradients are already reduced here, so rank 0's are every rank's. Before clipping, as PySOT;
        # a device sync per step, so only on request (PySOT's key).
        self.last_grad_stats = {}
        if self.cfg.TRAIN.LOG_GRADS and self.ctx.is_main and bool(apply):
            self.last_grad_stats, self.last_param_grads = grad_norms(self.model, per_param=self.param_grad_stats)
        self.grads.clip_(self.cfg.TRAIN.GRAD_CLIP)
        masked_sgd_step(self.optimizer, apply)
        self._skipped += ~apply
        return torch.where(apply, packed.double() / self.ctx.world_size, 0.0)

    def fit(self) -> dict:
        """Train until cfg.TRAIN.EPOCH; returns a summary dict (also written to summary.json).

        A resumed run that had already finished trains nothing, writes nothing and returns the
        summary it wrote then (``self.finished``). A stop that every rank agreed on (a signal, too
        many replaced crops: :meth:`stop_requested`) ends the loop between two steps; then the
        checkpoint is written and :class:`TrainingInterrupted` / :class:`RunStopped` raised.
        """
        try:
            if self.finished:
                self.log.info(self.finished_message())
                return self.previous_summary()
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        tr = self.cfg.TRAIN
        started_at = self.global_step
        metrics = MetricsWriter(self.out_dir) if self.ctx.is_main else None
        self.param_grad_stats = bool(tr.LOG_GRADS and metrics is not None and metrics.tensorboard)
        record = (open(self.out_dir / f"batches_rank{self.ctx.rank}.jsonl", "a", buffering=1)
                  if tr.RECORD_BATCHES else None)
        try:
            while self.epoch < tr.EPOCH and not self.stop_requested(after_step=False):
                lr = self.start_epoch()
                train_one_epoch(self, lr, metrics, record)
                if self.epoch_step == self.steps_per_epoch:
                    self.finish_epoch()
                if self.stop:
                    break
        finally:
            if metrics is not None:
                metrics.close()
            if record is not None:
                record.close()
        if self.stop:
            self._stop_here(started_at)
        summary = self._summary()
        if self.ctx.is_main:
            write_json(self.out_dir / "summary.json", summary, indent=2)
            try:
                from .plotting import plot_run  # matplotlib: imported only here, and a failure is tolerated

                summary["curves"] = str(plot_run(self.out_dir))
            except Exception as err:  # a missing plot must not fail a finished training run
                self.log.warning(f"could not plot {self.out_dir / 'metrics.jsonl'}: {err}")
        return summary

    def stop_requested(self, after_step: bool = True) -> bool:
        """Every rank's vote, after each step and before each epoch: stop here? (``self.stop``: a
        signal, or after a step, more replacement pairs drawn this epoch than TRAIN.MAX_REPLACED_FRAC
        of its pairs; a pair whose crop is unusable is replaced, and so may its replacement be)."""
        frac, pairs = self.cfg.TRAIN.MAX_REPLACED_FRAC, self.steps_per_epoch * self.cfg.TRAIN.BATCH_SIZE
        replaced = getattr(self.loader, "epoch_skipped", 0) if after_step else 0
        self.stop = self.stop_vote(damaged=frac >= 0 and replaced > frac * pairs)
        return bool(self.stop)

    def _stop_here(self, started_at: int) -> None:
        """After an agreed stop: latest.pth for this step (unless written already), one line, raise."""
        stop, tr = self.stop, self.cfg.TRAIN
        damage = self.stop_vote.gather((getattr(self.loader, "epoch_skipped", 0), self.loader.damaged_shards())
                                       if stop.damaged else (0, {}))
        trained = self.global_step > started_at
        if trained and self._latest_at != self.global_step:
            self.save("latest.pth")
        where = (f"at global step {self.global_step} (epoch {self.epoch + 1}, batch {self.epoch_step}/"
                 f"{self.steps_per_epoch})")
        latest = self.out_dir / "latest.pth"
        if trained or latest.exists():
            kept = f"saved {latest}" if trained else f"nothing trained since {latest}"
            then = f"continue with: {resume_command()}"
        else:
            kept, then = "nothing trained, no checkpoint", "rerun the same command to start again"
        if stop.damaged:
            shards = {k: v for _, d in damage for k, v in d.items()}
            pairs = self.steps_per_epoch * tr.BATCH_SIZE * self.ctx.world_size
            message = (f"stopped {where}: this epoch drew {sum(n for n, _ in damage)} replacement pairs for unusable "
                       f"crops, more than TRAIN.MAX_REPLACED_FRAC={tr.MAX_REPLACED_FRAC:g} of its {pairs} pairs; "
                       f"damaged shards: {describe_damage(shards)}; {kept}; repair the shards, then {then}")
            if self.ctx.is_main:
                self.log.error(message)
            raise RunStopped(message)
        message = f"stopped by {stop.signal_name} {where}: {kept}; {then}"
        if self.ctx.is_main:  # one line for the run, not one per rank
            self.log.warning(message)
        raise TrainingInterrupted(message, exit_status(stop.signum))

    def close(self) -> None:
        """Release the run folder (``run.lock``); ``fit`` does it when it ends, however it ends."""
        if self.run_lock is not None:
            self.run_lock.release()

    def start_epoch(self) -> float:
        """Ready ``self.epoch``: unfreeze the backbone when due, set the epoch's lr, point the loader
        at the epoch (unless a resumed run is inside it), set train/eval modes; returns the lr."""
        cfg, tr = self.cfg, self.cfg.TRAIN
        if not self.unfrozen and backbone_unfrozen_at(cfg, self.epoch):
            self.unfreeze()
        self.sched.set_epoch(self.epoch)
        if self.epoch_step == 0:
            self.loader.set_epoch(self.epoch)
            if tr.RESET_MOMENTUM_EACH_EPOCH:  # the SiamMask authors' refine stage: a new optimizer every epoch
                self.optimizer.state.clear()
        set_train_mode(self.model, cfg, self.unfrozen)
        lr = self.sched.lr_at(self.epoch)
        self.log.info(f"epoch {self.epoch + 1}/{tr.EPOCH}: lr {lr:.6g}, group lrs "
                      f"{[f'{x:.3g}' for x in self.sched.group_lrs()]}, backbone "
                      f"{'unfrozen' if self.unfrozen else 'frozen'}")
        return lr

    def finish_epoch(self) -> None:
        """After the epoch's last step: its verdict in the log, its figures added to the totals,
        the next epoch begun, and ``checkpoint_e{N}.pth`` and ``latest.pth`` saved."""
        ep = self.epoch_meter
        verdict = bound_verdict(self.epoch, ep.pairs, ep.wait_s, ep.step_s)
        self.verdicts.append(verdict)
        means = ep.means()
        self.log.info(f"epoch {self.epoch + 1} means: " + ", ".join(f"{k} {means[k]:.4f}" for k in self.log_keys))
        self.log.info(f"{verdict}; {self.skipped_steps} skipped steps, {self.replaced_crops} replaced crops so far")
        self.totals["pairs"] += ep.pairs
        self.totals["wait_s"] += ep.wait_s
        self.totals["step_s"] += ep.step_s
        self.epoch += 1
        self.epoch_step = 0
        self.interval.reset()
        self.epoch_meter.reset()
        self.save(f"checkpoint_e{self.epoch}.pth", "latest.pth")

    def _summary(self) -> dict:
        t = self.totals
        return {
            "epochs": self.cfg.TRAIN.EPOCH, "global_step": self.global_step, "skipped_steps": self.skipped_steps,
            "replaced_crops": self.replaced_crops,
            "pairs_per_s": t["pairs"] / t["step_s"] if t["step_s"] else math.nan,
            "data_wait_frac": t["wait_s"] / t["step_s"] if t["step_s"] else math.nan,
            "data_wait_clock": "cuda_events" if self.on_cuda else "host",
            "world_size": self.ctx.world_size, "device": str(self.device), "verdicts": list(self.verdicts),
        }

    def finished_message(self) -> str:
        return (f"nothing to resume: the run finished at epoch {self.epoch} (TRAIN.EPOCH={self.cfg.TRAIN.EPOCH}); "
                f"its summary is {self.out_dir / 'summary.json'}; raise TRAIN.EPOCH to train on")

    def previous_summary(self) -> dict:
        """summary.json of the finished run, as it was written (empty dict if there is none)."""
        try:
            return json.loads((self.out_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return {}
