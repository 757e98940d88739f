"""The batched tracking engine: many protocols (sequences, or sequence x setting pairs) through
one network forward per step.

`run_batched(jobs, tracker)` keeps up to `batch_size` jobs active; each step it reads the frame
every active protocol asks for (decoded once per (source, frame) in a thread pool, the next frame
prefetched while the network runs), initialises the 'init' requests with one template forward
and tracks the 'track' requests with one search forward per crop geometry, then reports each
result to its protocol and admits waiting jobs as others finish.  Each job keeps its own
`TargetState` (position, size, template features, TRACK settings), so the boxes are those of
the sequential tracker; only float rounding in the batched convolutions differs (well under
1e-3 px, tested).  Any `track.protocol.Protocol` runs on it, including re-initialising ones.

On the CPU the engine also splits the jobs evenly into `streams` sub-batches run concurrently,
each on its own thread with its own copy of the network and a share of the torch threads, so
one stream's cropping and Python work overlaps the other's convolutions.  The CPU batch stays
small (8 per stream): the forward is compute-bound, and larger batches fall out of the cache.
On the CPU the engine's model copies run the backbone in oneDNN's blocked layout
(`torch.utils.mkldnn`), kept from the first convolution to the last: the convolutions are the
same oneDNN kernels the NCHW path calls (bit-identical), but the reorders between layers go and
max-pooling is vectorised over channels (about 1.5x on the demo AlexNet's backbone; BatchNorm
rounds differently in the last bit).  A backbone with an operator oneDNN's layout lacks
(MobileNetV2's ReLU6) keeps the plain one.
Two opt-in CPU speed-ups change the float rounding more than batching does (tracks part by up
to ~1e-3 px within 8 frames of a random network, ~1e-4 px with batching alone; see
tests/test_engine.py): NHWC crops (`channels_last`) and BatchNorm folded into the preceding
convolutions of a copy of the model (`fuse_bn`).
SiamMask is batched too: one search forward, then one refine forward with each target's own
score-map position.  Trackers without a batched path (the static baseline) run one job at a time
through the same loop.
"""
from __future__ import annotations

import copy
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from tqdm import tqdm

from track.protocol import Protocol

try:  # an old torch API; without it the engine keeps the plain backbone
    import torch.utils.mkldnn as mkldnn_utils
except ImportError:
    mkldnn_utils = None

__all__ = ['Job', 'EngineOptions', 'run_batched', 'inference_model', 'BlockedBackbone', 'default_batch_size']


@dataclass
class Job:
    """One protocol to run.  `read_frame(i)`: frame i (BGR uint8) or None when it cannot be read.
    Jobs with the same `source` (e.g. the sequence name) read the same frames: a frame asked by
    several of them in one step is decoded once, and their equal first boxes share one template.
    `track`: this job's TRACK section (hyper-parameter search), None for the tracker's own.
    `frames`: how many frames the job will process, for the progress bar (0: unknown)."""
    protocol: Protocol
    read_frame: Callable[[int], np.ndarray | None]
    source: Hashable = None
    track: Any = None
    frames: int = 0


@dataclass
class EngineOptions:
    """How the engine runs; 0 / None pick a default for the tracker's device."""
    batch_size: int = 0           # active jobs per stream (0: 8 on CPU, 64 on CUDA)
    streams: int = 0              # CPU sub-batches run concurrently (0: 2 if torch has >= 2 threads); CUDA: 1
    read_workers: int = 0         # threads decoding frames and cutting crops (0: min(8, CPUs))
    fuse_bn: bool = False         # fold BatchNorm into convolutions (on a copy of the model)
    channels_last: bool = False   # NHWC crops (faster convolutions on the CPU)
    blocked: bool = True          # CPU: backbone in oneDNN's blocked layout (when it supports it)

    @classmethod
    def fast(cls, **kwargs) -> 'EngineOptions':
        """Batching plus the CPU speed-ups that round differently (channels_last, fuse_bn)."""
        return cls(**{'fuse_bn': True, 'channels_last': True, **kwargs})


class BlockedBackbone(nn.Module):
    """A CPU backbone run in oneDNN's blocked tensor layout from input to output: dense tensors
    in and out (a list stays a list), `torch.utils.mkldnn` modules inside."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.inner = mkldnn_utils.to_mkldnn(copy.deepcopy(backbone).eval())

    def forward(self, x: torch.Tensor):
        out = self.inner(x.contiguous().to_mkldnn())
        return [o.to_dense() for o in out] if isinstance(out, (list, tuple)) else out.to_dense()

    @classmethod
    def convert(cls, backbone: nn.Module, size: int = 127) -> nn.Module:
        """`backbone` in the blocked layout, or `backbone` itself when that cannot run it (no
        oneDNN, an operator without a blocked kernel) or differs from it on a test crop."""
        if mkldnn_utils is None or not torch.backends.mkldnn.is_available():
            return backbone
        probe = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
        try:
            blocked = cls(backbone)
            with torch.no_grad():
                got, want = blocked(probe), backbone.eval()(probe)
        except (RuntimeError, NotImplementedError):
            return backbone
        got, want = (got, want) if isinstance(want, (list, tuple)) else ([got], [want])
        same = len(got) == len(want) and all(  # float rounding only, relative to the scale
            g.shape == w.shape and float((g - w).abs().max()) <= 1e-4 * float(w.abs().max()) + 1e-6
            for g, w in zip(got, want))
        return blocked if same else backbone


def inference_model(model: nn.Module, fuse_bn: bool = True, blocked: bool = False) -> nn.Module:
    """A deep copy of `model` in eval mode; with `fuse_bn`, every BatchNorm2d that directly
    follows a Conv2d inside an nn.Sequential is folded into it (replaced by Identity); with
    `blocked` (CPU), the backbone runs in oneDNN's blocked layout when it can (BlockedBackbone)."""
    model = copy.deepcopy(model).eval()
    if fuse_bn:
        for module in model.modules():
            if not isinstance(module, nn.Sequential):
                continue
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                        and bn.track_running_stats and bn.running_mean is not None):
                    module._modules[a] = fuse_conv_bn_eval(conv, bn)
                    module._modules[b] = nn.Identity()
    if blocked and hasattr(model, 'backbone') and next(model.parameters()).device.type == 'cpu':
        model.backbone = BlockedBackbone.convert(model.backbone)
    return model


class _OneAtATime:
    """The batch interface over a tracker without one (the static baseline)."""

    def __init__(self, tracker):
        self.tracker = tracker

    def new_state(self, track=None):
        if track is not None:
            raise ValueError(f'{type(self.tracker).__name__} has no batched path: it cannot take '
                             'per-job TRACK settings')
        return None

    def init_batch(self, states, imgs, boxes):
        self.tracker.init(imgs[0], boxes[0])

    def track_batch(self, states, imgs):
        return [self.tracker.track(imgs[0])]


class _Active:
    __slots__ = ('job', 'source', 'state', 'request')

    def __init__(self, job, state, request):
        self.job, self.state, self.request = job, state, request
        self.source = id(job) if job.source is None else job.source


class _Lane:
    """One stream: a tracker (own model copy) and up to `batch_size` active jobs."""

    def __init__(self, tracker, batch_size, shared):
        self.tracker, self.batch_size, self.shared = tracker, batch_size, shared

    def _admit(self, active: list) -> None:
        while len(active) < self.batch_size:
            job = self.shared.take(self, len(active))
            if job is None:
                break
            request = job.protocol.next_request()
            if request is None:
                self.shared.finished(job)
            else:
                active.append(_Active(job, self.tracker.new_state(job.track), request))
        self.shared.set_active(self, len(active))

    def run(self) -> None:
        active, cache = [], {}
        pool = self.shared.pool
        while not self.shared.stop.is_set():
            self._admit(active)
            if not active:
                return
            keys = [(a.source, a.request.frame) for a in active]
            for key, a in zip(keys, active):
                if key not in cache:
                    cache[key] = pool.submit(a.job.read_frame, key[1])
            frames = {key: cache[key].result() for key in keys}
            # prefetch the frames most protocols ask next while the network works (a failed
            # speculative read, e.g. past the last frame, is never looked at)
            upcoming = {}
            for (source, frame), a in zip(keys, active):
                nxt = (source, frame + 1)
                if nxt not in upcoming:
                    upcoming[nxt] = cache.get(nxt) or pool.submit(a.job.read_frame, frame + 1)
            cache = upcoming
            start = self.shared.clock()
            self._step(active, [frames[k] for k in keys])
            seconds = (self.shared.clock() - start) / len(active)  # each frame's share of the step
            for a in active:
                a.job.protocol.timed(a.request, seconds)
            self.shared.advance(len(active))
            still = []
            for a in active:
                a.request = a.job.protocol.next_request()
                if a.request is None:
                    self.shared.finished(a.job)
                else:
                    still.append(a)
            active = still
        self.shared.set_active(self, 0)

    def _step(self, active: list, imgs: list) -> None:
        inits, tracks = [], []
        for a, img in zip(active, imgs):
            if img is None:
                a.job.protocol.unreadable(a.request)
            elif a.request.kind == 'init':
                inits.append((a, img))
            elif a.request.kind == 'track':
                tracks.append((a, img))
            else:
                raise ValueError(f'unknown request kind {a.request.kind!r}')
        if inits:
            self.tracker.init_batch([a.state for a, _ in inits], [img for _, img in inits],
                                    [a.request.box for a, _ in inits])
            for a, _ in inits:
                a.job.protocol.report(a.request, None)
        if tracks:
            results = self.tracker.track_batch([a.state for a, _ in tracks], [img for _, img in tracks])
            for (a, _), result in zip(tracks, results):
                a.job.protocol.report(a.request, result)


class _Shared:
    """What the lanes share: the job queue, the reader pool, progress, completion and errors."""

    def __init__(self, jobs, pool, bar, on_done, lanes: int = 1, clock=time.perf_counter):
        self.queue = deque(jobs)
        self.pool, self.bar, self.on_done, self.clock = pool, bar, on_done, clock
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = []
        self.lanes, self.active = lanes, {}

    def take(self, lane, holding: int):
        """The next job for `lane`, which holds `holding` active jobs, or None when the queue is
        empty or the lane already holds its share (the work left split evenly over the lanes,
        so that 8 jobs on 2 lanes run as 4 + 4, not 8 + 0)."""
        with self.lock:
            left = len(self.queue) + holding + sum(n for k, n in self.active.items() if k is not lane)
            if not self.queue or holding >= -(-left // self.lanes):
                return None
            return self.queue.popleft()

    def set_active(self, lane, count: int) -> None:
        with self.lock:
            self.active[lane] = count

    def advance(self, frames: int) -> None:
        with self.lock:
            self.bar.update(frames)

    def finished(self, job) -> None:
        if self.on_done is not None:
            with self.lock:
                self.on_done(job)


def default_batch_size(device) -> int:
    """Active jobs per stream when EngineOptions.batch_size is 0: 64 on CUDA, 8 on the CPU."""
    return 64 if torch.device(device).type == 'cuda' else 8


def _lanes(tracker, options: EngineOptions) -> list:
    """[(tracker, batch size)] per stream; the first stream uses the tracker's own model unless
    it is folded or blocked, the others deep copies (the model caches features between calls)."""
    if not getattr(tracker, 'batchable', False):
        return [(_OneAtATime(tracker), 1)]
    cuda = tracker.device.type == 'cuda'
    batch_size = options.batch_size or default_batch_size(tracker.device)
    streams = 1 if cuda else (options.streams or (2 if torch.get_num_threads() >= 2 else 1))
    blocked = options.blocked and not cuda

    def model(i):
        if options.fuse_bn or blocked or i > 0:
            return inference_model(tracker.model, options.fuse_bn, blocked)
        return tracker.model

    return [(tracker.replica(model(i), options.channels_last), batch_size) for i in range(streams)]


def run_batched(jobs, tracker, options: EngineOptions | None = None, progress: bool = False,
                desc: str = 'track', on_done: Callable[[Job], None] | None = None,
                clock: Callable[[], float] = time.perf_counter) -> list:
    """Run every job's protocol to its end with `tracker` (a batchable tracker is served in
    batches, any other one job at a time).  `on_done(job)` is called as each job finishes (under
    a lock, from the engine's threads).  Each step is timed with `clock` (frame reading
    excluded) and every frame it served is `timed` with an equal share.  Returns the
    protocols, in job order.  The tracker's weights are never changed (folding works on a copy)."""
    jobs = list(jobs)
    options = options or EngineOptions()
    lanes = _lanes(tracker, options)
    workers = options.read_workers or min(8, os.cpu_count() or 1)
    total = sum(j.frames for j in jobs) if all(j.frames for j in jobs) else None
    threads = torch.get_num_threads()
    with ThreadPoolExecutor(workers, thread_name_prefix='track-read') as pool, \
            tqdm(total=total, desc=desc, unit='frame', disable=not progress, dynamic_ncols=True) as bar:
        shared = _Shared(jobs, pool, bar, on_done, len(lanes), clock)
        runners = []
        for lane_tracker, batch_size in lanes:
            if len(lanes) == 1:
                lane_tracker.map = pool.map  # one stream: crops in the pool, beside the forward
            runners.append(_Lane(lane_tracker, batch_size, shared))

        def run(lane):
            try:
                with torch.inference_mode():
                    lane.run()
            except BaseException as err:  # stop the other lanes, re-raise in the caller
                shared.errors.append(err)
                shared.stop.set()

        if len(runners) == 1:
            run(runners[0])
        else:
            torch.set_num_threads(max(1, threads // len(runners)))
            lane_threads = [threading.Thread(target=run, args=(r,), name=f'track-lane{i}')
                            for i, r in enumerate(runners)]
            try:
                for t in lane_threads:
                    t.start()
                for t in lane_threads:
                    t.join()
            except BaseException:  # Ctrl-C: the lanes stop after their current step
                shared.stop.set()
                for t in lane_threads:
                    if t.ident is not None:  # started
                        t.join()
                raise
            finally:
                torch.set_num_threads(threads)
        if shared.errors:
            raise shared.errors[0]
    return [job.protocol for job in jobs]
