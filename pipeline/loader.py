"""Training-pair loader: PairSampler plans -> shard reads -> DALI graph -> torch batches.

Three stages overlap:
1. a background thread (`pipeline.read_ahead`) plans the next batches, hints the shard readers
   to prefetch their crops, reads them with a small pool of reader threads
   (TRAIN.LOADER_READ_THREADS) up to TRAIN.LOADER_READ_AHEAD batches ahead, checks them
   (`pipeline.crop_source`), replaces pairs with unusable crops and prepares each DALI run's
   input values and the batches' host-side label inputs;
2. DALI renders in its own threads (and on the GPU), two runs in flight;
3. the consumer's thread (`__iter__`) feeds runs to DALI, takes their outputs, computes the
   anchor labels on the output device (`pipeline.targets`) and yields the batches.
A run is as many consecutive batches as make MIN_RUN_PAIRS (64) pairs on the CPU and
GPU_RUN_PAIRS (128) on a GPU whose hardware JPEG decoder takes all JPEGs or none (else one
batch: `batches_per_run`), since each DALI run has a fixed host cost; the batches are slices of
the run's output.  CPU batches are DALI's own buffers (no copy); GPU batches are slices of a
copy in torch-owned memory, made on the consumer's current stream (the host never waits for the
rendering).

Determinism: a batch is a pure function of (seed, epoch, batch index, rank, world_size,
batch size) and of which shard entries are unusable (`pipeline.prepare`): DALI has no random
operators here, so thread counts do not matter; the label subsampling keys are drawn on the
host from a seed of (seed, epoch, batch index, rank), so labels are the same on every device.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def
from nvidia.dali.plugin.pytorch import feed_ndarray

from pipeline.batch import (BBOX, LABEL_CLS, LABEL_LOC, LABEL_LOC_WEIGHT, LABEL_MASK,
                            LABEL_MASK_WEIGHT, NEG, SEARCH, TEMPLATE)
from pipeline.crop_source import CropSource
from pipeline.dali_graph import PairGraph, decode_image
from pipeline.devices import dali_device_id, dali_threads, jpeg_hardware_share, resolve_device
from pipeline.prepare import BatchPreparer, LabelInputs
from pipeline.read_ahead import ReadAhead
from pipeline.sampling import PairSampler
from pipeline.shards import open_shard_readers
from pipeline.targets import AnchorTargets, mask_weight

log = logging.getLogger(__name__)

IN_FLIGHT = 2       # DALI runs scheduled at once, so it never idles at a run boundary
MIN_RUN_PAIRS = 64  # CPU: consecutive batches are rendered together in DALI runs of >= this
GPU_RUN_PAIRS = 128  # GPU: the same, where a sample's place in a run cannot change its pixels


def batches_per_run(batch_size: int, on_gpu: bool, hw_decoder_load: float | None = None) -> int:
    """Consecutive batches rendered by one DALI run: as many as make MIN_RUN_PAIRS pairs on the
    CPU and GPU_RUN_PAIRS on a GPU (a run has a fixed host cost: feeding every input, scheduling,
    taking the outputs).  On a GPU only where the hardware JPEG decoder takes every JPEG or none
    (`hw_decoder_load` 1 or 0): in between DALI gives it a share of each run by the samples'
    places in the run, and a resumed iteration, whose runs start at its first batch, could send
    a crop to the other decoder, whose IDCT may round differently; there a run is one batch."""
    if on_gpu and hw_decoder_load not in (0.0, 1.0):
        return 1
    return -(-(GPU_RUN_PAIRS if on_gpu else MIN_RUN_PAIRS) // int(batch_size))


class _DecodeProbe:
    """One-image DALI decoder (same device and options as the graph) that tells which crops
    DALI rejects."""

    def __init__(self, device: str, device_id, hw_decoder_load):
        self.device, self.device_id, self.hw_decoder_load = device, device_id, hw_decoder_load
        self.pipe = None

    def _build(self):
        @pipeline_def
        def probe():
            return decode_image({"jpeg": fn.external_source(name="jpeg")}, self.device, roi=False,
                                hw_decoder_load=self.hw_decoder_load)
        self.pipe = probe(batch_size=1, num_threads=1, prefetch_queue_depth=1,
                          device_id=self.device_id)
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


class PairLoader:
    """DALI training-pair loader over the LMDB shards of cfg.DATASET.NAMES under `shards`.

    Iterating yields the batches `pipeline.batch` describes, as tensors on `device`.  One pass
    yields `len(loader)` batches of this rank's slice of the current epoch and then moves to the
    next epoch; `set_epoch(e)` jumps to epoch e; `state_dict()` / `load_state_dict()` resume at
    the exact next batch.  Unusable crops (undecodable, failing their checksum, of the wrong
    size, in an unreadable shard) are replaced by another pair; `loader.skipped` counts the
    replaced pairs, each crop is logged once.  `close()` stops the background threads (an
    abandoned iteration stops its own).  `build_loader` is this class.

    shards: root folder of the shard folders.  batch_size: pairs per batch and process.
    device: 'cpu', 'cuda' (the process's current GPU) or 'cuda:N'.  rank, world_size: this
    process's slice of every epoch.  seed: the seed of every random decision.
    num_threads: DALI worker threads (default TRAIN.LOADER_DALI_THREADS, whose 0 means
    `pipeline.devices.dali_threads`: at most 4 on the GPU path, the process's cores + 1 on the
    CPU); results do not depend on it.
    read_ahead, read_threads, hw_decoder_load: default to cfg.TRAIN.LOADER_READ_AHEAD (batches
    read ahead of rendering), LOADER_READ_THREADS (concurrent crop readers; 0 reads in the
    background thread itself) and LOADER_HW_DECODER_LOAD (the GPU decoder's hardware share;
    negative: per card, `pipeline.devices.jpeg_hardware_share`).  `threads_why` and
    `hw_decoder_why` say how the values were chosen.
    roi_decode: decode only the part of each 511 crop that the crop can touch (default: on for
    the CPU, where it halves decoding; off on the GPU).  pin_memory (device='cpu' only): return
    page-locked tensors for a fast non_blocking host->GPU copy (costs one copy per batch;
    without it CPU batches are DALI's own buffers, handed over without a copy).  crop_kernel:
    do the pixel work in the fused CPU kernel (default on the CPU; it is a CPU operator) or
    with DALI's native operators (False; the GPU's way, ~1.5x more CPU per pair on a CPU).
    readers: ShardReaders to use instead of opening `shards`.
    """

    def __init__(self, cfg, shards="cache/", batch_size: int = 32, device="cuda", rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_threads: int | None = None,
                 roi_decode: bool | None = None, pin_memory: bool = False,
                 readers: list | None = None, crop_kernel: bool | None = None,
                 read_ahead: int | None = None, read_threads: int | None = None,
                 hw_decoder_load: float | None = None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if pin_memory and torch.device(device).type != "cpu":
            raise ValueError("pin_memory applies to device='cpu' only")
        self.device = resolve_device(device)
        self.pin_memory = bool(pin_memory)
        self.batch_size = int(batch_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        tr = cfg.TRAIN
        self.read_ahead = int(tr.LOADER_READ_AHEAD if read_ahead is None else read_ahead)
        self.read_threads = int(tr.LOADER_READ_THREADS if read_threads is None else read_threads)
        if self.read_ahead < 1 or self.read_threads < 0:
            raise ValueError(f"read_ahead must be >= 1 and read_threads >= 0, got "
                             f"{self.read_ahead} and {self.read_threads} "
                             f"(TRAIN.LOADER_READ_AHEAD / LOADER_READ_THREADS)")
        self.readers = readers if readers is not None else open_shard_readers(cfg, shards)
        self.sampler = PairSampler(cfg, self.readers, seed)  # raises on crop-parameter mismatch
        self.targets = AnchorTargets(cfg)
        self.image_size = self.sampler.crop_size  # every shard's, as its metadata records it
        self.source = CropSource(self.readers, self.sampler.names, [self.image_size] * len(self.readers))
        on_gpu = self.device.type == "cuda"
        self.dali_device = "gpu" if on_gpu else "cpu"
        self.device_id = dali_device_id(self.device)
        self.num_threads, self.threads_why = dali_threads(
            int(tr.LOADER_DALI_THREADS if num_threads is None else num_threads), on_gpu)
        if on_gpu:
            self.hw_decoder_load, self.hw_decoder_why = jpeg_hardware_share(
                torch.cuda.get_device_name(self.device),
                float(tr.LOADER_HW_DECODER_LOAD if hw_decoder_load is None else hw_decoder_load))
        else:
            self.hw_decoder_load, self.hw_decoder_why = None, "CPU loader: libjpeg-turbo decodes"
        # Batches rendered per DALI run: a run costs a fixed overhead, so small batches are
        # grouped (measured on the CPU: 1.73 vs 1.97 CPU ms per pair for runs of 64 vs 32; on
        # the GPU path the host's feeding, ~0.5 ms a run).
        self.run_batches = batches_per_run(self.batch_size, on_gpu, self.hw_decoder_load)
        self.in_flight = IN_FLIGHT
        # ROI decoding measured faster on the CPU (docs: dali-notes); the GPU decodes whole
        # crops (nvJPEG/hardware ROI support varies) unless asked otherwise.
        self.roi_decode = (not on_gpu) if roi_decode is None else bool(roi_decode)
        dcfg = cfg.DATASET
        self._graph_options = dict(
            template_size=int(tr.EXEMPLAR_SIZE), search_size=int(tr.SEARCH_SIZE),
            device=self.dali_device, num_threads=self.num_threads, device_id=self.device_id or 0,
            image_size=self.image_size, roi_decode=self.roi_decode, gray=bool(dcfg.GRAY),
            template_blur=bool(dcfg.TEMPLATE.BLUR), search_blur=bool(dcfg.SEARCH.BLUR),
            # Depth 1 with IN_FLIGHT runs scheduled: DALI's dynamic executor runs the second
            # while the first waits to be taken (measured on the CPU: both done after a pause);
            # a deeper queue would make the first schedule_run demand that many fed runs.
            kernel=crop_kernel, prefetch_queue_depth=1,
            hw_decoder_load=self.hw_decoder_load if on_gpu else None,
            # SiamMask: the search mask and its weight (pipeline.batch.MASK_LABELS)
            mask=bool(cfg.MASK.MASK))
        # Built now, not at the first batch: on the CPU this compiles the crop kernel's DALI
        # callbacks (~6 s, more on a cold numba cache), which is start-up, not data wait.
        self.graph = self._new_graph()
        self._scheduled = 0        # runs fed to the graph whose outputs were not taken yet
        self._generation = 0       # iterations started (only the latest one may use the graph)
        self._probe = _DecodeProbe(self.dali_device, self.device_id,
                                   self._graph_options["hw_decoder_load"])
        self.skipped = 0           # pairs replaced because a crop was unusable
        self.epoch_skipped = 0     # ... of them in the current epoch (TRAIN.MAX_REPLACED_FRAC)
        self.epoch = 0
        self.next_batch = 0
        # This rank's global indices: the same for every epoch (the epoch's order is applied
        # per index by the sampler), so computed once.
        self._rank_indices = self.sampler.rank_indices(self.rank, self.world_size)
        # (nothing in the preparer refers back to the loader: a dropped loader is freed at once,
        # with its DALI pipeline, not later by the garbage collector in a forked child)
        labels = LabelInputs(self.seed, self.rank, self.targets.anchor_count,
                             pinned=self.device.type == "cuda", masks=self._graph_options["mask"])
        self.preparer = BatchPreparer(self.sampler, self.source, self._rank_indices,
                                      self.batch_size, self.graph.inputs, labels)
        self._pool = None
        self._stages = weakref.WeakSet()
        self._held = collections.deque()   # (CUDA event, buffers) of runs being copied (GPU)
        # GPU: a timing event on the consumer's stream right after its wait for the last yielded
        # batch's DALI outputs (before the copies): where a device-timeline data wait ends.
        self.ready_event = None

    @property
    def bad_entries(self) -> set:
        """(dataset, entry) crops found unusable so far."""
        return self.source.bad

    # ---- epoch bookkeeping -------------------------------------------------------------
    def __len__(self) -> int:
        """Full batches per epoch for this rank (the last partial batch is dropped)."""
        return len(self._rank_indices) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch at the next iteration."""
        self.epoch, self.next_batch, self.epoch_skipped = int(epoch), 0, 0

    def damaged_shards(self) -> dict:
        """{shard folder: unusable crops found in it so far} (pipeline.crop_source)."""
        return self.source.damaged_shards()

    def state_dict(self) -> dict:
        """Position of the consumer: the next batch an iteration would yield."""
        return {"epoch": self.epoch, "next_batch": self.next_batch, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size,
                "batch_size": self.batch_size, "skipped": self.skipped, "epoch_skipped": self.epoch_skipped}

    def load_state_dict(self, state: dict) -> None:
        """Resume at exactly the batch `state_dict()` pointed to (same seed/world/batch size)."""
        for key in ("seed", "world_size", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]}, this loader has "
                                 f"{getattr(self, key)}: batches would not line up")
        self.epoch, self.next_batch = int(state["epoch"]), int(state["next_batch"])
        self.skipped = int(state.get("skipped", self.skipped))
        self.epoch_skipped = int(state.get("epoch_skipped", 0))

    def close(self) -> None:
        """Stop the background threads (read-ahead stages and crop readers) and discard the
        runs in flight.  The loader stays usable: a later iteration starts them again."""
        for stage in list(self._stages):
            stage.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._drain()

    # ---- batch production -----------------------------------------------------------------
    def _new_graph(self) -> PairGraph:
        return PairGraph(self.batch_size * self.run_batches, **self._graph_options)

    def _submit(self, run) -> None:
        """Feed a prepared run to DALI as one batch and start rendering it."""
        if self.graph is None:
            self.graph = self._new_graph()
        self.graph.feed_values(run.values)
        self.graph.schedule()
        self._scheduled += 1

    def _drain(self) -> None:
        """Discard runs still in flight (an iteration that was left early)."""
        while self._scheduled and self.graph is not None:
            self._scheduled -= 1
            try:
                self.graph.outputs()
            except Exception:
                self.graph = None
        self._scheduled = 0

    def _find_bad(self, run) -> int:
        """After a DALI failure: probe each crop of the run alone, mark the rejected ones."""
        found = 0
        for prepared in run.batches:
            plans = prepared.plans
            for i, (z, x) in enumerate(zip(prepared.template_jpegs, prepared.search_jpegs)):
                for ref, data in ((plans.template_ref[i], z), (plans.search_ref[i], x)):
                    if not self.source.is_bad(ref) and not self._probe.decodes(data):
                        found += self.source.mark_bad(ref, "rejected by the DALI decoder")
        return found

    def _to_torch(self, tensor_list, shape) -> torch.Tensor:
        if self.device.type == "cpu" and self.graph.pipe.exec_dynamic and not self.pin_memory:
            # The dynamic executor allocates every output batch afresh and DLPack keeps it
            # alive, so CPU outputs are handed over without a copy.
            out = torch.from_dlpack(tensor_list.as_tensor())
            if tuple(out.shape) != tuple(shape):
                raise RuntimeError(f"DALI output has shape {tuple(out.shape)}, expected {shape}")
            return out
        # A GPU batch is copied into torch's memory on the consumer's stream: the consumer owns
        # it, whatever DALI does with its buffers while rendering the next runs.
        out = torch.empty(shape, dtype=torch.float32, device=self.device,
                          pin_memory=self.pin_memory)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(tensor_list.as_tensor(), out, cuda_stream=stream)
        return out

    def _hold_until_copied(self, buffers) -> None:
        """Keep a run's DALI output buffers and its input bytes referenced until the consumer's
        stream has copied the outputs (an event after the copies, which follow DALI's work on
        the run): nothing is reused or freed while a copy or a decode may still read it."""
        while self._held and self._held[0][0].query():
            self._held.popleft()
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._held.append((event, buffers))

    def _collect(self, run) -> list:
        """Outputs of the oldest scheduled run -> one {TEMPLATE, SEARCH} dict per batch
        (views into the run's tensors: no copy)."""
        self._scheduled -= 1
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        outputs = self.graph.outputs(stream)
        self._mark_ready()
        n = sum(len(b.plans) for b in run.batches)
        tz, tx = self._graph_options["template_size"], self._graph_options["search_size"]
        shapes = {TEMPLATE: (n, 3, tz, tz), SEARCH: (n, 3, tx, tx), LABEL_MASK: (n, 1, tx, tx)}
        tensors = {key: self._to_torch(out, shapes[key])
                   for key, out in zip((TEMPLATE, SEARCH, LABEL_MASK), outputs)}
        if self.device.type == "cuda":   # its inputs (bytes fed without a copy) and outputs
            self._hold_until_copied((outputs, run))
        images, start = [], 0
        for prepared in run.batches:
            stop = start + len(prepared.plans)
            images.append({key: t[start:stop] for key, t in tensors.items()})
            start = stop
        return images

    def _mark_ready(self) -> None:
        """GPU: `ready_event` now, on the consumer's stream (which waits for DALI's outputs of
        every run taken so far): where the device-timeline data wait of the next batch ends."""
        if self.device.type == "cuda":
            self.ready_event = torch.cuda.Event(enable_timing=True)
            self.ready_event.record(torch.cuda.current_stream(self.device))

    def _add_labels(self, batch: dict, prepared) -> dict:
        boxes, neg, keys, search_mask = prepared.label_inputs
        if self.device.type == "cuda":  # pinned: the copies do not wait for the queued work
            boxes, neg, keys = (t.to(self.device, non_blocking=True) for t in (boxes, neg, keys))
            if search_mask is not None:
                search_mask = search_mask.to(self.device, non_blocking=True)
        with _single_cpu_thread(self.device):
            cls, loc, weight = self.targets(boxes, neg, keys=keys)
            labels = {LABEL_CLS: cls, LABEL_LOC: loc, LABEL_LOC_WEIGHT: weight, BBOX: boxes, NEG: neg}
            if search_mask is not None:
                labels[LABEL_MASK_WEIGHT] = mask_weight(cls, search_mask)
        if self.pin_memory:
            labels = {k: v.pin_memory() for k, v in labels.items()}
        batch.update(labels)
        return batch

    def _render(self, pending: collections.deque, epoch: int) -> list:
        """Per-batch images of the oldest submitted run, pending[0].  After a decoder failure
        the graph is rebuilt and every run in `pending` is prepared again (in place) and
        resubmitted, the undecodable crops now known."""
        while True:
            try:
                return self._collect(pending[0])
            except Exception as err:  # a DALI failure kills every run in flight and the pipeline
                self.graph, self._scheduled = None, 0
                if sum(self._find_bad(run) for run in pending) == 0:
                    raise
                log.warning("DALI failed on epoch %d batch %d (%s); re-planning it", epoch,
                            pending[0].batches[0].batch,
                            str(err).splitlines()[0] if str(err) else err)
                for i, stale in enumerate(pending):
                    pending[i] = self.preparer.refresh(epoch, stale)
                    self._submit(pending[i])

    def _read_pool(self):
        if self._pool is None and self.read_threads > 0:
            self._pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="crop-reader")
        return self._pool

    def __iter__(self):
        self._drain()
        self._generation += 1
        generation = self._generation  # a newer iteration owns the graph; don't drain it
        epoch, start, total = self.epoch, self.next_batch, len(self)
        if start >= total:
            return
        stage = ReadAhead(self.preparer, self.source, epoch, start, total, self.run_batches,
                          self.read_ahead, self._read_pool(), self.read_threads, self.device)
        self._stages.add(stage)
        pending = collections.deque()  # submitted runs, oldest first
        ready = collections.deque()    # (prepared batch, images) rendered, not yet yielded
        upcoming = start               # first batch not yet submitted

        def submit_ahead():
            nonlocal upcoming
            while len(pending) < self.in_flight and upcoming < total:
                # crops found unusable (by DALI) since the stage read them: prepare again
                run = self.preparer.refresh(epoch, stage.get())
                self._submit(run)
                pending.append(run)
                upcoming += len(run.batches)

        try:
            submit_ahead()
            for b in range(start, total):
                if not ready:
                    images = self._render(pending, epoch)
                    ready.extend(zip(pending.popleft().batches, images))
                    submit_ahead()  # DALI renders the next runs while labels and the consumer run
                else:
                    self._mark_ready()  # rendered with an earlier batch of its run
                current, images = ready.popleft()
                batch = self._add_labels(images, current)
                self.skipped += current.replaced
                self.epoch_skipped += current.replaced
                self.next_batch = b + 1
                if self.next_batch == total:
                    self.epoch, self.next_batch = epoch + 1, 0
                yield batch
        finally:
            stage.close()
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


build_loader = PairLoader  # the entry point the trainer and tools call: the class itself, one signature
