"""Training-pair loader: PairSampler plans -> LMDB reads -> DALI graph -> torch batches.

The Python side only samples indices/plans (`pipeline.sampling`) and reads JPEG bytes from
the shards; every pixel is produced by the DALI graph (`pipeline.dali_graph`), on the GPU
for device='cuda' and with CPU operators for device='cpu'.  Anchor targets are computed
vectorised on the output device (`pipeline.targets`).

Overlap without extra threads: DALI renders in its own worker threads and, on the CPU, always
has IN_FLIGHT (2) runs queued, so it never idles at a run boundary (the GPU keeps one); while
it renders, the Python side computes the labels of the batches just rendered, plans and reads
the next run, and the consumer (e.g. a training step) runs.  A run is one batch on the GPU; on the CPU it is as many
consecutive batches as make MIN_RUN_PAIRS (64) pairs, since each DALI run has a fixed CPU cost;
the batches are zero-copy slices of the run's output.

Determinism: a batch is a pure function of (seed, epoch, batch index, rank, world_size,
batch size) and of which shard entries are undecodable: DALI has no random operators here,
so `num_threads` does not matter; label subsampling uses a torch.Generator seeded from
(seed, epoch, batch index, rank).
"""
from __future__ import annotations

import collections
import contextlib
import logging

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def
from nvidia.dali.plugin.pytorch import feed_ndarray

from pipeline.dali_graph import PairGraph, decode_image
from pipeline.sampling import PairSampler
from pipeline.shards import open_shard_readers
from pipeline.targets import AnchorTargets

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 100  # replacement pairs tried for one index before giving up
IN_FLIGHT = 2       # CPU: DALI runs queued in the graph, so it never idles between runs
MIN_RUN_PAIRS = 64  # CPU: consecutive batches are rendered together in DALI runs of >= this


def looks_like_jpeg(data) -> bool:
    """Cheap structural check: JPEG SOI marker first and an EOI marker at the very end
    (trailing zero padding tolerated).  Catches truncated and garbage values."""
    if data is None or len(data) < 4 or data[:2] != b"\xff\xd8":
        return False
    return data.rfind(b"\xff\xd9", max(0, len(data) - 64)) != -1


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    """Seed of the label-subsampling generator of one batch."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(batch), int(rank), 0x4C42])
    return int(state.generate_state(1, np.uint64)[0] >> 1)


class _DecodeProbe:
    """One-image DALI decoder (same device as the graph) that tells which crops DALI rejects."""

    def __init__(self, device: str, device_id: int):
        self.device, self.device_id = device, device_id
        self.pipe = None

    def _build(self):
        @pipeline_def
        def probe():
            return decode_image({"jpeg": fn.external_source(name="jpeg")}, self.device, roi=False)
        self.pipe = probe(batch_size=1, num_threads=1, prefetch_queue_depth=1,
                          device_id=self.device_id if self.device == "gpu" else None)
        self.pipe.build()

    def decodes(self, data: bytes) -> bool:
        if self.pipe is None:
            self._build()
        try:
            self.pipe.feed_input("jpeg", [np.frombuffer(data, np.uint8)])
            self.pipe.schedule_run()
            self.pipe.outputs()
            return True
        except Exception:  # DALI raises various error types; the pipeline is dead afterwards
            self.pipe = None
            return False


class _Prepared:
    """A batch ready to be fed to DALI: plans and JPEG bytes."""

    def __init__(self, batch: int, plans, template_jpegs, search_jpegs, replaced: int):
        self.batch, self.plans, self.replaced = batch, plans, replaced
        self.template_jpegs, self.search_jpegs = template_jpegs, search_jpegs


class PairLoader:
    """Iterable of training batches for one rank; see `build_loader`."""

    def __init__(self, cfg, shards="cache/", batch_size: int = 32, device="cuda", rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_threads: int | None = None,
                 roi_decode: bool | None = None, pin_memory: bool = False,
                 readers: list | None = None, crop_kernel: bool | None = None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if pin_memory and self.device.type != "cpu":
            raise ValueError("pin_memory applies to device='cpu' only")
        self.pin_memory = bool(pin_memory)
        self.batch_size = int(batch_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.readers = readers if readers is not None else open_shard_readers(cfg, shards)
        self.sampler = PairSampler(cfg, self.readers, seed)  # raises on crop-parameter mismatch
        self.targets = AnchorTargets(cfg)
        self.image_size = self.sampler.crop_size  # the sampler checked every shard's crop size
        self.dali_device = "gpu" if self.device.type == "cuda" else "cpu"
        self.device_id = (self.device.index or 0) if self.device.type == "cuda" else 0
        if num_threads is None:
            # CPU: one thread more than the usable cores; with exactly one per core DALI's
            # pool leaves a core idle at every operator's end (measured: 1.75 vs 1.86 cores
            # busy, ~10% more pairs/s on 2 cores).
            num_threads = 2 if self.dali_device == "gpu" else len(_affinity()) + 1
        self.num_threads = int(num_threads)
        # Batches rendered per DALI run: on the CPU a run costs a fixed overhead, so small
        # batches are grouped (measured: 1.73 vs 1.97 CPU ms per pair for runs of 64 vs 32).
        self.run_batches = 1 if self.dali_device == "gpu" else -(-MIN_RUN_PAIRS // self.batch_size)
        # Two queued runs measured +9% on the CPU.  The GPU keeps one (rendered while the
        # consumer works): two queued runs with a GPU stage have never been run (no device).
        self.in_flight = 1 if self.dali_device == "gpu" else IN_FLIGHT
        # ROI decoding measured faster on the CPU (docs: dali-notes); the GPU decodes whole
        # crops (nvJPEG/hardware ROI support varies) unless asked otherwise.
        self.roi_decode = (self.dali_device == "cpu") if roi_decode is None else bool(roi_decode)
        dcfg = cfg.DATASET
        self._graph_options = dict(
            template_size=int(cfg.TRAIN.EXEMPLAR_SIZE), search_size=int(cfg.TRAIN.SEARCH_SIZE),
            device=self.dali_device, num_threads=self.num_threads, device_id=self.device_id,
            image_size=self.image_size, roi_decode=self.roi_decode, gray=bool(dcfg.GRAY),
            template_blur=bool(dcfg.TEMPLATE.BLUR), search_blur=bool(dcfg.SEARCH.BLUR),
            kernel=crop_kernel)
        # Built now, not at the first batch: on the CPU this compiles the crop kernel's DALI
        # callbacks (~6 s, more on a cold numba cache), which is start-up, not data wait.
        self.graph = self._new_graph()
        self._scheduled = 0        # batches fed to the graph whose outputs were not taken yet
        self._generation = 0       # iterations started (only the latest one may use the graph)
        self._probe = _DecodeProbe(self.dali_device, self.device_id)
        self.bad_entries = set()   # (dataset, entry) refs known to be undecodable
        self.skipped = 0           # pairs replaced because a crop was undecodable
        self.epoch = 0
        self.next_batch = 0
        # This rank's global indices: the same for every epoch (the epoch's order is applied
        # per index by the sampler), so computed once.
        self._rank_indices = self.sampler.epoch_indices(0, self.rank, self.world_size)

    # ---- epoch bookkeeping -------------------------------------------------------------
    def __len__(self) -> int:
        """Full batches per epoch for this rank (the last partial batch is dropped)."""
        return len(self._rank_indices) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch at the next iteration."""
        self.epoch, self.next_batch = int(epoch), 0

    def state_dict(self) -> dict:
        """Position of the consumer: the next batch an iteration would yield."""
        return {"epoch": self.epoch, "next_batch": self.next_batch, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size,
                "batch_size": self.batch_size, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        """Resume at exactly the batch `state_dict()` pointed to (same seed/world/batch size)."""
        for key in ("seed", "world_size", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]}, this loader has "
                                 f"{getattr(self, key)}: batches would not line up")
        self.epoch, self.next_batch = int(state["epoch"]), int(state["next_batch"])
        self.skipped = int(state.get("skipped", self.skipped))

    # ---- batch production -----------------------------------------------------------------
    def _read(self, ref) -> bytes | None:
        if ref in self.bad_entries:
            return None
        data = self.readers[ref[0]].jpeg_at(ref[1])
        if not looks_like_jpeg(data):
            self._mark_bad(ref, "not a complete JPEG")
            return None
        return data

    def _mark_bad(self, ref, why: str) -> None:
        if ref not in self.bad_entries:
            self.bad_entries.add(ref)
            name = self.sampler.names[ref[0]]
            log.warning("undecodable crop: dataset %s entry %d (%s)", name, ref[1], why)

    def _prepare(self, epoch: int, batch: int) -> _Prepared:
        indices = self._rank_indices[batch * self.batch_size:(batch + 1) * self.batch_size]
        plans, zs, xs, replaced = [], [], [], 0
        for index in indices:
            for attempt in range(MAX_ATTEMPTS):
                plan = self.sampler.plan(epoch, int(index), attempt)
                z = self._read(plan.template_ref)
                if z is None or plan.search_ref == plan.template_ref:  # one-frame objects: same crop
                    x = z
                else:
                    x = self._read(plan.search_ref)
                if z is not None and x is not None:
                    break
                replaced += 1
                log.warning("epoch %d index %d attempt %d: replacing the pair (template %s, "
                            "search %s)", epoch, index, attempt, plan.template_ref,
                            plan.search_ref)
            else:
                raise RuntimeError(f"epoch {epoch} index {index}: {MAX_ATTEMPTS} replacement "
                                   f"pairs in a row were undecodable; the shards look corrupt")
            plans.append(plan)
            zs.append(z)
            xs.append(x)
        return _Prepared(batch, plans, zs, xs, replaced)

    def _new_graph(self) -> PairGraph:
        return PairGraph(self.batch_size * self.run_batches, **self._graph_options)

    def _prepare_run(self, epoch: int, first: int, total: int) -> list:
        """The batches [first, first + run_batches) (fewer at the epoch's end), prepared."""
        return [self._prepare(epoch, b) for b in range(first, min(first + self.run_batches, total))]

    def _submit(self, run: list) -> None:
        """Feed a run of prepared batches to DALI as one batch and start rendering it."""
        if self.graph is None:
            self.graph = self._new_graph()
        self.graph.feed([p for b in run for p in b.plans],
                        [j for b in run for j in b.template_jpegs],
                        [j for b in run for j in b.search_jpegs])
        self.graph.schedule()
        self._scheduled += 1

    def _drain(self) -> None:
        """Discard batches still in flight (an iteration that was left early)."""
        while self._scheduled and self.graph is not None:
            self._scheduled -= 1
            try:
                self.graph.outputs()
            except Exception:
                self.graph = None
        self._scheduled = 0

    def _find_bad(self, run: list) -> int:
        """After a DALI failure: probe each crop of the run alone, mark the rejected ones."""
        found = 0
        for prepared in run:
            for plan, z, x in zip(prepared.plans, prepared.template_jpegs, prepared.search_jpegs):
                for ref, data in ((plan.template_ref, z), (plan.search_ref, x)):
                    if ref not in self.bad_entries and not self._probe.decodes(data):
                        self._mark_bad(ref, "rejected by the DALI decoder")
                        found += 1
        return found

    def _to_torch(self, tensor_list, shape) -> torch.Tensor:
        if self.device.type == "cpu" and self.graph.pipe.exec_dynamic and not self.pin_memory:
            # The dynamic executor allocates every output batch afresh and DLPack keeps it
            # alive, so CPU outputs are handed over without a copy.
            out = torch.from_dlpack(tensor_list.as_tensor())
            if tuple(out.shape) != tuple(shape):
                raise RuntimeError(f"DALI output has shape {tuple(out.shape)}, expected {shape}")
            return out
        out = torch.empty(shape, dtype=torch.float32, device=self.device,
                          pin_memory=self.pin_memory)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor_list.as_tensor(), out, cuda_stream=stream)
        return out

    def _collect(self, run: list) -> list:
        """Outputs of the oldest scheduled run -> one {'template', 'search'} dict per batch
        (views into the run's tensors: no copy)."""
        self._scheduled -= 1
        z, x = self.graph.outputs()
        n = sum(len(b.plans) for b in run)
        tz, tx = self._graph_options["template_size"], self._graph_options["search_size"]
        template, search = self._to_torch(z, (n, 3, tz, tz)), self._to_torch(x, (n, 3, tx, tx))
        images, start = [], 0
        for prepared in run:
            stop = start + len(prepared.plans)
            images.append({"template": template[start:stop], "search": search[start:stop]})
            start = stop
        return images

    def _add_labels(self, batch: dict, prepared: _Prepared, epoch: int) -> dict:
        boxes = torch.from_numpy(np.stack([p.search.box for p in prepared.plans]))
        neg = torch.tensor([p.neg for p in prepared.plans], dtype=torch.bool)
        if self.device.type == "cuda":  # a pageable copy would first wait for the queued training step
            boxes, neg = (t.pin_memory().to(self.device, non_blocking=True) for t in (boxes, neg))
        generator = torch.Generator(device=self.device)
        generator.manual_seed(batch_seed(self.seed, epoch, prepared.batch, self.rank))
        with _single_cpu_thread(self.device):
            cls, loc, weight = self.targets(boxes, neg, generator)
        labels = dict(label_cls=cls, label_loc=loc, label_loc_weight=weight, bbox=boxes, neg=neg)
        if self.pin_memory:
            labels = {k: v.pin_memory() for k, v in labels.items()}
        batch.update(labels)
        return batch

    def _render(self, pending: collections.deque, epoch: int) -> list:
        """Per-batch images of the oldest submitted run, pending[0].  After a decoder failure
        the graph is rebuilt and every run in `pending` is re-planned (in place) and
        resubmitted, the undecodable crops now known."""
        while True:
            try:
                return self._collect(pending[0])
            except Exception as err:  # a DALI failure kills every run in flight and the pipeline
                self.graph, self._scheduled = None, 0
                if sum(self._find_bad(run) for run in pending) == 0:
                    raise
                log.warning("DALI failed on epoch %d batch %d (%s); re-planning it", epoch,
                            pending[0][0].batch, str(err).splitlines()[0] if str(err) else err)
                for i, stale in enumerate(pending):
                    pending[i] = [self._prepare(epoch, b.batch) for b in stale]
                    self._submit(pending[i])

    def __iter__(self):
        self._drain()
        self._generation += 1
        generation = self._generation  # a newer iteration owns the graph; don't drain it
        epoch, start, total = self.epoch, self.next_batch, len(self)
        if start >= total:
            return
        pending = collections.deque()  # submitted runs (lists of batches), oldest first
        ready = collections.deque()    # (prepared batch, images) rendered, not yet yielded
        upcoming = start

        def submit_ahead():
            nonlocal upcoming
            while len(pending) < self.in_flight and upcoming < total:
                pending.append(self._prepare_run(epoch, upcoming, total))
                self._submit(pending[-1])
                upcoming += len(pending[-1])

        try:
            submit_ahead()
            for b in range(start, total):
                if not ready:
                    images = self._render(pending, epoch)
                    ready.extend(zip(pending.popleft(), images))
                    submit_ahead()  # DALI renders the next runs while labels and the consumer run
                current, images = ready.popleft()
                batch = self._add_labels(images, current, epoch)
                self.skipped += current.replaced
                self.next_batch = b + 1
                if self.next_batch == total:
                    self.epoch, self.next_batch = epoch + 1, 0
                yield batch
        finally:
            if generation == self._generation:
                self._drain()


@contextlib.contextmanager
def _single_cpu_thread(device: torch.device):
    """Run small CPU torch ops on one intra-op thread while DALI's threads are busy: with
    2 cores, torch's parallel kernels contend with DALI and run ~20x slower (measured)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _affinity() -> set:
    try:
        import os
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return {0}


def build_loader(cfg, shards="cache/", batch_size: int = 32, device="cuda", rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_threads: int | None = None,
                 roi_decode: bool | None = None, pin_memory: bool = False,
                 crop_kernel: bool | None = None) -> PairLoader:
    """DALI training-pair loader over the LMDB shards of cfg.DATASET.NAMES under `shards`.

    Iterating yields dicts of tensors on `device`: template (B,3,Tz,Tz) and search
    (B,3,Tx,Tx) float32 BGR 0-255 CHW, label_cls (B,A,S,S) int64, label_loc (B,4,A,S,S),
    label_loc_weight (B,A,S,S), bbox (B,4) float32 (search box after augmentation), neg (B,)
    bool.  One pass yields `len(loader)` batches of this rank's slice of the current epoch
    and then moves to the next epoch; `set_epoch(e)` jumps to epoch e; `state_dict()` /
    `load_state_dict()` resume at the exact next batch.  Undecodable crops are replaced by
    another pair (`loader.skipped` counts them, each is logged).

    num_threads: DALI worker threads (default: 2 with a GPU, else the usable cores + 1);
    results do not depend on it.  roi_decode: decode only the part of each 511 crop that the crop
    can touch (default: on for the CPU, where it halves decoding; off on the GPU).
    pin_memory (device='cpu' only): return page-locked tensors for a fast non_blocking
    host->GPU copy (costs one copy per batch; without it CPU batches are DALI's own
    buffers, handed over without a copy).  crop_kernel: do the pixel work in the fused CPU
    kernel (default on the CPU; it is a CPU operator) or with DALI's native operators (False;
    the GPU's way, ~1.5x more CPU per pair on a CPU).
    """
    return PairLoader(cfg, shards=shards, batch_size=batch_size, device=device, rank=rank,
                      world_size=world_size, seed=seed, num_threads=num_threads,
                      roi_decode=roi_decode, pin_memory=pin_memory, crop_kernel=crop_kernel)
