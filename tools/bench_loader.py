"""Benchmark the DALI pair loader against the PySOT-style reference, in the same run.

    python tools/bench_loader.py --shards cache/ --device cpu|cuda --batch-size B --batches N
                                 [--cfg CFG] [--opts KEY=VAL ...] [--rounds R] [--cold]
                                 [--min-seconds S] [--json out.json]
    python tools/bench_loader.py --mask-cost --cfg configs/siammask_r50_l3.yaml --shards DIR ...

    python tools/bench_loader.py --host-only --shards DIR [--batch-size B] [--min-seconds S]
                                 [--cold] [--cfg CFG] [--opts ...]

--host-only: the GPU path's host work alone, with the GPU operators replaced by nothing (no
CUDA): plans, prefetch hints and read-ahead reads with their CRC and size checks
(`pipeline.read_ahead` with TRAIN.LOADER_READ_THREADS readers), the GPU graph's external_source
values, the label inputs, the hand-over of each prepared run to the consumer (its batches as the
GPU loader groups them on a card whose hardware JPEG decoder takes every JPEG, as the A100, H100
and H200 by default: `pipeline.loader.batches_per_run`) and the feeding of DALI: every value fed
to a DALI pipeline of the GPU graph's external sources, each followed by a shape query instead of
the decoder and operators.
Measures process CPU seconds (getrusage: every thread) and wall seconds of a window and each
thread's CPU seconds; reports host CPU us per pair and the pairs/s one core and two cores can
feed (two: also bounded by the busiest thread, which cannot use a second core); warm (the shard
files read into the page cache first) and, with --cold, with the shards evicted from the page
cache before the window.  Not counted: the host work of the GPU operators themselves (nvJPEG's
JPEG parsing, kernel launches) and the launches of the label kernels, which need the GPU.

DALI: `pipeline.loader.build_loader` on --device.  Reference: `pipeline.reference.
ReferenceDataset` in a torch DataLoader with one worker per core (PySOT style; pinned memory
and a host->device copy on cuda).  Both run the same config (default: PySOT's 8-GPU recipe,
search blur 0.2) on the same shards.  Each measured window holds at least --batches batches
and lasts at least --min-seconds (--progress: its pairs/s so far go to stderr every 2 s, so a
run stopped by a time budget still gives a figure).  On CUDA the window is timed with CUDA events recorded on
the consumer's stream (the host never synchronises the device inside it, so DALI keeps
rendering ahead as in training).  --cold evicts the shard files from the page cache
(posix_fadvise DONTNEED) before each round's first window and measures a warm window of the
same batches after reading the files back in: cold and warm pairs/s in one run.  Reports
pairs/s, CPU cores busy (process + worker CPU time / wall time), DALI and reader threads and
the GPU name; prints and writes JSON with the speed ratio (warm figures).

--mask-cost (a SiamMask config, MASK.MASK true): what the search masks and their labels cost.
The config and the same config as SiamRPN (MASK.MASK false) run on the same shards, their
windows alternating --rounds times; reports SiamMask over SiamRPN CPU ms per pair and pairs/s,
the medians of the per-round ratios (robust to other load on the machine).
"""
import argparse
import json
import multiprocessing
import os
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from nvidia.dali import fn, pipeline_def  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from pipeline.crop_source import CropSource  # noqa: E402
from pipeline.dali_graph import PairGraph  # noqa: E402
from pipeline.devices import dali_threads  # noqa: E402
from pipeline.fileio import atomic_write  # noqa: E402
from pipeline.loader import batches_per_run, build_loader  # noqa: E402
from pipeline.prepare import BatchPreparer, LabelInputs  # noqa: E402
from pipeline.read_ahead import ReadAhead  # noqa: E402
from pipeline.reference import ReferenceDataset  # noqa: E402
from pipeline.sampling import PairSampler  # noqa: E402
from pipeline.shards import evict_page_cache, open_shard_readers, shard_dir  # noqa: E402
from pipeline.targets import AnchorTargets  # noqa: E402
from train.config import load_config  # noqa: E402

DEFAULT_CFG = Path(__file__).resolve().parents[1] / "configs" / "siamrpn_r50_l234_dwxcorr_8gpu.yaml"
# The host side's target on the GPU path: 10,000 pairs/s fed by at most 2 cores (<= 200 us per pair).
HOST_TARGET_PAIRS_S = 10_000
HOST_TARGET_CORES = 2
PROGRESS_EVERY_S = 2.0  # --progress: a line on stderr this often in a measured window


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class _Window:
    """Wall time of a measured window: CUDA events on the consumer's stream for a GPU (what
    the device finished between them), the host clock otherwise; CPU time of the process."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def start(self):
        self.c0, self.t0 = _cpu_seconds(), time.perf_counter()
        if self.stream is not None:
            self.e0 = torch.cuda.Event(enable_timing=True)
            self.e0.record(self.stream)

    def elapsed(self) -> float:
        """Host seconds since start (to decide when the window is long enough; no sync)."""
        return time.perf_counter() - self.t0

    def stop(self) -> tuple:
        """(wall seconds, CPU seconds); on CUDA waits for the window's last work (an event)."""
        if self.stream is not None:
            e1 = torch.cuda.Event(enable_timing=True)
            e1.record(self.stream)
            e1.synchronize()
            wall = self.e0.elapsed_time(e1) / 1e3
        else:
            wall = time.perf_counter() - self.t0
        return wall, _cpu_seconds() - self.c0


def _endless(loader):
    """The loader's batches across epoch ends."""
    while True:
        yield from loader


def _measure(loader, device, batches: int, warmup: int, min_seconds: float, progress: bool = False) -> dict:
    it = _endless(loader)
    for _ in range(warmup):
        next(it)
    window = _Window(device)
    window.start()
    n, shown = 0, 0.0
    while n < batches or window.elapsed() < min_seconds:
        next(it)
        n += 1
        if progress and window.elapsed() - shown >= PROGRESS_EVERY_S:
            shown = window.elapsed()  # host clock: a figure for a run stopped before the window ends
            print("bench_loader progress " + json.dumps({"batches": n, "pairs": n * loader.batch_size,
                                                         "seconds": shown, "pairs_per_s": n * loader.batch_size / shown}),
                  file=sys.stderr, flush=True)
    wall, cpu = window.stop()
    it.close()
    pairs = n * loader.batch_size
    return {"pairs_per_s": pairs / wall, "cpu_cores_busy": cpu / wall,
            "cpu_ms_per_pair": 1e3 * cpu / pairs, "wall_s": wall, "batches": n}


def _shard_folders(cfg, shards) -> list:
    return [shard_dir(shards, name) for name in cfg.DATASET.NAMES]


def _read_files(folders) -> int:
    """Read every file under `folders` once (puts them in the page cache); returns bytes."""
    total = 0
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 24):
                        total += len(chunk)
    return total


def bench_dali(cfg, shards, device, batch_size, batches, warmup, epoch=0, cold=False,
               min_seconds=5.0, progress=False, **options):
    loader = build_loader(cfg, shards=shards, batch_size=batch_size, device=str(device), **options)
    if batches < 4 * loader.run_batches:
        # up to IN_FLIGHT runs are rendered ahead of the window and behind it
        print(f"warning: {batches} batches span fewer than 4 DALI runs of {loader.run_batches} "
              f"batches: the DALI figures are unreliable", file=sys.stderr)
    result = {"num_threads": loader.num_threads, "threads_why": loader.threads_why,
              "hw_decoder_load": loader.hw_decoder_load, "hw_decoder_why": loader.hw_decoder_why,
              "read_threads": loader.read_threads,
              "read_ahead": loader.read_ahead, "roi_decode": loader.roi_decode,
              "crop_kernel": getattr(loader.graph, "kernel", None),
              "batches_per_dali_run": loader.run_batches}
    folders = _shard_folders(cfg, shards)
    if cold:  # nothing of the shards is mapped yet: the readers open their files lazily
        result["evicted_bytes"] = sum(evict_page_cache(f) for f in folders)
        loader.set_epoch(epoch)
        result["cold"] = _measure(loader, device, batches, warmup, min_seconds, progress)
        _read_files(folders)
    loader.set_epoch(epoch)
    result.update(_measure(loader, device, batches, warmup, min_seconds, progress))
    result["skipped"] = loader.skipped
    loader.close()
    for reader in loader.readers:  # unmap the shards, so the next eviction can drop them
        reader.close()
    return result


# ---- --host-only: the GPU path's host side ---------------------------------------------------
def _process_cpu_seconds() -> float:
    """CPU seconds of this process, every thread (getrusage)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _thread_cpu_seconds(ident: int) -> float:
    """CPU seconds of one live thread of this process (its CPU-time clock; `Thread.ident`)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, ValueError):  # the thread has ended
        return 0.0


class FeedOnly:
    """The GPU graph's external sources, each followed by a shape query (a trivial CPU operator)
    in place of the GPU operators: DALI's host work of feeding a run (feed_input of every value,
    scheduling it, taking its outputs), with the GPU path's default thread count.  Built from the
    first run's values (their names and batch sizes), so it follows the graph's inputs."""

    def __init__(self):
        self.threads = dali_threads(0, on_gpu=True)[0]
        self.pipe = None

    def _build(self, values: dict) -> None:
        names = list(values)

        @pipeline_def
        def feed_only():
            return tuple(fn.external_source(name=n, no_copy=n == "jpeg").shape() for n in names)

        self.pipe = feed_only(batch_size=max(len(v) for v in values.values()), num_threads=self.threads,
                              device_id=None, prefetch_queue_depth=1)
        self.pipe.build()

    def __call__(self, values: dict) -> None:
        if self.pipe is None:
            self._build(values)
        for name, value in values.items():
            self.pipe.feed_input(name, value)
        self.pipe.schedule_run()
        self.pipe.outputs()


class HostSide:
    """What the GPU loader's host runs, with the GPU operators replaced by nothing: the sampler,
    validated crop reads, the GPU graph's external_source values (`PairGraph.inputs` of the
    native-operator graph, whole-crop decoding: the GPU graph's fields) and the label inputs
    (pinned when CUDA is there), prepared by `pipeline.read_ahead` in the GPU loader's runs (a
    card whose hardware decoder takes every JPEG: `batches_per_run`)."""

    def __init__(self, cfg, shards, batch_size: int, read_threads=None, read_ahead=None, seed=0):
        tr, ds = cfg.TRAIN, cfg.DATASET
        self.batch_size = int(batch_size)
        self.run_batches = batches_per_run(self.batch_size, on_gpu=True, hw_decoder_load=1.0)
        self.read_threads = int(tr.LOADER_READ_THREADS if read_threads is None else read_threads)
        self.read_ahead = int(tr.LOADER_READ_AHEAD if read_ahead is None else read_ahead)
        self.readers = open_shard_readers(cfg, shards)
        sampler = PairSampler(cfg, self.readers, seed)
        self.source = CropSource(self.readers, sampler.names, [sampler.crop_size] * len(self.readers))
        # a CPU graph with the GPU graph's operators (its inputs are the GPU graph's); never run
        inputs = PairGraph(self.batch_size, int(tr.EXEMPLAR_SIZE), int(tr.SEARCH_SIZE), "cpu",
                           num_threads=1, image_size=sampler.crop_size, roi_decode=False,
                           gray=bool(ds.GRAY), template_blur=bool(ds.TEMPLATE.BLUR),
                           search_blur=bool(ds.SEARCH.BLUR), kernel=False,
                           mask=bool(cfg.MASK.MASK)).inputs
        self.feed = FeedOnly()
        labels = LabelInputs(seed, 0, AnchorTargets(cfg).anchor_count, pinned=torch.cuda.is_available(),
                             masks=bool(cfg.MASK.MASK))
        self.indices = sampler.rank_indices(0, 1)
        self.preparer = BatchPreparer(sampler, self.source, self.indices, self.batch_size, inputs, labels)
        self.pool = ThreadPoolExecutor(self.read_threads) if self.read_threads > 0 else None

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def stage(self, epoch: int, first: int = 0) -> ReadAhead:
        return ReadAhead(self.preparer, self.source, epoch, first, len(self), self.run_batches,
                         self.read_ahead, self.pool, self.read_threads)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        for reader in self.readers:
            reader.close()


def _measure_host(host: HostSide, epoch: int, batches: int, warmup: int, min_seconds: float) -> dict:
    """One window of the consumer's loop on `host`: every prepared batch taken as the GPU
    loader's consumer takes it (refresh, hand-over), nothing rendered."""
    stage = host.stage(epoch)
    consumer = threading.get_ident()

    def threads():
        ids = [stage._thread.ident, consumer] + [t.ident for t in getattr(host.pool, "_threads", ())]
        return {i: _thread_cpu_seconds(i) for i in ids}

    total, taken = len(host), 0
    pairs = nbytes = 0
    try:
        while taken < min(warmup, total):
            run = host.preparer.refresh(epoch, stage.get())
            host.feed(run.values)
            taken += len(run.batches)
        first = taken
        t0, c0, th0 = time.perf_counter(), _process_cpu_seconds(), threads()
        n = 0
        while taken < total and (n < batches or time.perf_counter() - t0 < min_seconds):
            run = host.preparer.refresh(epoch, stage.get())
            host.feed(run.values)
            for prepared in run.batches:
                pairs += len(prepared.plans)
                nbytes += sum(map(len, prepared.template_jpegs)) + sum(map(len, prepared.search_jpegs))
            taken += len(run.batches)
            n += len(run.batches)
        wall, cpu, th1 = time.perf_counter() - t0, _process_cpu_seconds() - c0, threads()
    finally:
        stage.close()
    per_thread = {i: th1.get(i, 0.0) - th0.get(i, 0.0) for i in th1}
    thread_cpu = {"read_ahead": per_thread.pop(stage._thread.ident, 0.0),
                  "consumer": per_thread.pop(consumer, 0.0), "readers": sum(per_thread.values())}
    thread_cpu["dali_and_other"] = max(0.0, cpu - sum(thread_cpu.values()))  # DALI's own threads
    busiest = max(thread_cpu["read_ahead"], thread_cpu["consumer"],
                  max(per_thread.values(), default=0.0))
    us = 1e6 * cpu / pairs if pairs else float("nan")
    return {"epoch": epoch, "first_batch": first, "batches": n, "pairs": pairs,
            "jpeg_bytes": nbytes, "wall_s": wall, "cpu_s": cpu,
            "pairs_per_s": pairs / wall if wall > 0 else float("nan"),
            "cpu_cores_busy": cpu / wall if wall > 0 else float("nan"),
            "host_us_per_pair": us, "thread_cpu_s": thread_cpu,
            "busiest_thread_us_per_pair": 1e6 * busiest / pairs if pairs else float("nan"),
            "one_core_pairs_per_s": 1e6 / us if pairs and us > 0 else float("nan"),
            "two_cores_pairs_per_s": (min(2e6 / us, pairs / busiest if busiest > 0 else float("inf"))
                                      if pairs and us > 0 else float("nan"))}


def bench_host_only(cfg, shards, batch_size, batches, warmup, epoch=0, cold=False, min_seconds=5.0,
                    read_threads=None, read_ahead=None) -> dict:
    """--host-only: a warm window (and a cold one first with `cold`) of the GPU path's host work."""
    host = HostSide(cfg, shards, batch_size, read_threads, read_ahead)
    result = {"read_threads": host.read_threads, "read_ahead": host.read_ahead,
              "batches_per_run": host.run_batches,
              "label_inputs_pinned": torch.cuda.is_available(), "epoch_batches": len(host)}
    folders = _shard_folders(cfg, shards)
    try:
        if cold:
            result["evicted_bytes"] = sum(evict_page_cache(f) for f in folders)
            result["cold"] = _measure_host(host, epoch, batches, warmup, min_seconds)
        _read_files(folders)  # warm: every shard byte in the page cache
        result.update(_measure_host(host, epoch + 1, batches, warmup, min_seconds))
    finally:
        host.close()
    return result


def _print_host(label: str, r: dict) -> None:
    print(f"{label}: {r['host_us_per_pair']:7.1f} host CPU us/pair ({r['cpu_s']:.2f} CPU s, "
          f"{r['wall_s']:.2f} wall s, {r['pairs']} pairs, {r['cpu_cores_busy']:.2f} cores busy); "
          f"one core feeds {r['one_core_pairs_per_s']:8.0f} pairs/s, two cores "
          f"{r['two_cores_pairs_per_s']:8.0f} pairs/s (busiest thread {r['busiest_thread_us_per_pair']:.1f} "
          f"us/pair); measured {r['pairs_per_s']:8.0f} pairs/s", flush=True)


class _Counted(Dataset):
    """A dataset that counts the items its workers produced (shared counter)."""

    def __init__(self, dataset, counter):
        self.dataset, self.counter = dataset, counter

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        with self.counter.get_lock():
            self.counter.value += 1
        return item


def bench_reference(cfg, shards, device, batch_size, batches, warmup, workers, epoch=0,
                    min_seconds=5.0):
    readers = open_shard_readers(cfg, shards)
    produced = multiprocessing.Value("l", 0)
    dataset = _Counted(ReferenceDataset(cfg, shards, seed=0, epoch=epoch, readers=readers), produced)
    if len(dataset) < (batches + warmup) * batch_size:
        raise SystemExit(f"epoch has only {len(dataset)} pairs; lower --batches")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True)
    c_start, t_start = _cpu_seconds(), time.perf_counter()
    it = iter(loader)
    window, n = _Window(device), 0
    for i, batch in enumerate(it):
        if device.type == "cuda":
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if i == warmup - 1 or (warmup == 0 and i == 0):
            window.start()
            continue
        if i >= warmup:
            n += 1
            if n >= batches and window.elapsed() >= min_seconds:
                break
    wall, _ = window.stop()
    del it  # shuts the workers down: their CPU time is counted once they are reaped
    cpu = _cpu_seconds() - c_start  # start-up, warm-up and prefetched items included ...
    return {"pairs_per_s": n * batch_size / wall, "cpu_cores_busy": cpu / (time.perf_counter() - t_start),
            "cpu_ms_per_pair": 1e3 * cpu / produced.value,  # ... and counted in the items made
            "wall_s": wall, "batches": n, "workers": workers}


def _median_run(runs: list, key: str = "pairs_per_s") -> dict:
    """The run with the median pairs/s, plus every round's pairs/s."""
    ranked = sorted(runs, key=lambda r: r[key])
    best = dict(ranked[len(ranked) // 2])
    best[f"rounds_{key}"] = [round(r[key], 1) for r in runs]
    return best


def mask_cost_main(args, cfg, device, options, result) -> dict:
    """--mask-cost: the SiamMask config against itself as SiamRPN (MASK.MASK false).  Both
    loaders are built once and their windows alternate, the order swapped every round, so both
    see the same load; the cost is the median of the per-round ratios."""
    if not cfg.MASK.MASK:
        raise SystemExit("--mask-cost needs a SiamMask config (MASK.MASK true)")
    configs = {"siammask": cfg,
               "siamrpn": load_config(args.cfg, overrides=[*args.opts, "MASK.MASK=False"])}
    loaders = {name: build_loader(c, shards=args.shards, batch_size=args.batch_size,
                                  device=str(device), **options) for name, c in configs.items()}
    runs = {name: [] for name in loaders}
    for r in range(args.rounds):
        for name in sorted(loaders, reverse=bool(r % 2)):
            runs[name].append(_measure(loaders[name], device, args.batches, args.warmup,
                                       args.min_seconds))
        print(f"round {r}: " + ", ".join(f"{name} {runs[name][-1]['pairs_per_s']:7.1f} pairs/s "
                                         f"{runs[name][-1]['cpu_ms_per_pair']:.2f} CPU ms/pair"
                                         for name in loaders), flush=True)
    for loader in loaders.values():
        loader.close()
    ratios = {key: [m[key] / s[key] for m, s in zip(runs["siammask"], runs["siamrpn"])]
              for key in ("cpu_ms_per_pair", "pairs_per_s")}
    result.update({name: _median_run(r) for name, r in runs.items()})
    result["mask_cost"] = {key: sorted(v)[len(v) // 2] for key, v in ratios.items()}
    result["mask_cost_rounds"] = ratios
    cost = result["mask_cost"]
    print(f"SiamMask / SiamRPN, same config and shards (median of {args.rounds} rounds): CPU ms per "
          f"pair {cost['cpu_ms_per_pair']:.3f}x, pairs/s {cost['pairs_per_s']:.3f}x")
    atomic_write(args.json, json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return result


def host_only_main(args, cfg, result) -> dict:
    """--host-only rounds; the round with the median host us/pair is reported (warm, and cold)."""
    runs = []
    for r in range(args.rounds):
        runs.append(bench_host_only(cfg, args.shards, args.batch_size, args.batches, args.warmup, epoch=2 * r,
                                    cold=args.cold, min_seconds=args.min_seconds,
                                    read_threads=args.read_threads, read_ahead=args.read_ahead))
        _print_host(f"round {r} warm", runs[-1])
        if args.cold:
            _print_host(f"round {r} cold", runs[-1]["cold"])
    result["mode"] = "host-only"
    result["host_only"] = _median_run(runs, "host_us_per_pair")
    if args.cold:
        result["host_only_cold"] = _median_run([run["cold"] for run in runs], "host_us_per_pair")
    result["target"] = {"pairs_per_s": HOST_TARGET_PAIRS_S, "cores": HOST_TARGET_CORES,
                        "host_us_per_pair": 1e6 * HOST_TARGET_CORES / HOST_TARGET_PAIRS_S}
    for key in ("host_only", "host_only_cold"):
        if key in result:
            r = result[key]
            r["meets_target"] = bool(r["two_cores_pairs_per_s"] >= HOST_TARGET_PAIRS_S)
            _print_host(f"{'cold' if key.endswith('cold') else 'warm'} (median)", r)
    atomic_write(args.json, json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="cache/")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="at least this many batches a window")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="at least this long a window")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating DALI/reference rounds; medians are reported (robust "
                             "to other load on the machine)")
    parser.add_argument("--cold", action="store_true",
                        help="evict the shards from the page cache before each round and report "
                             "cold pairs/s next to warm pairs/s")
    parser.add_argument("--cfg", default=str(DEFAULT_CFG))
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides KEY=VALUE")
    parser.add_argument("--num-threads", type=int, default=None, help="DALI threads (default: auto)")
    parser.add_argument("--read-threads", type=int, default=None,
                        help="crop reader threads (default: TRAIN.LOADER_READ_THREADS)")
    parser.add_argument("--read-ahead", type=int, default=None,
                        help="batches read ahead (default: TRAIN.LOADER_READ_AHEAD)")
    parser.add_argument("--roi-decode", choices=["auto", "on", "off"], default="auto",
                        help="decode only the region a crop touches (auto: on for cpu)")
    parser.add_argument("--native-ops", action="store_true",
                        help="CPU: DALI's native operators instead of the fused crop kernel "
                             "(the GPU graph's operators; an ablation)")
    parser.add_argument("--workers", type=int, default=None, help="reference workers (default: cores)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--mask-cost", action="store_true",
                        help="a SiamMask --cfg against itself as SiamRPN (MASK.MASK false), "
                             "alternating windows: the cost of the masks")
    parser.add_argument("--json", default="runs/bench_loader.json")
    parser.add_argument("--progress", action="store_true",
                        help=f"print the window's pairs/s so far (host clock) to stderr every {PROGRESS_EVERY_S:g} s")
    parser.add_argument("--host-only", action="store_true",
                        help="the GPU path's host work alone (GPU operators replaced by nothing): host CPU "
                             "us per pair and the pairs/s one and two cores can feed")
    args = parser.parse_args(argv)

    cfg = load_config(args.cfg, overrides=args.opts)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    cores = len(os.sched_getaffinity(0))
    result = {
        "config": args.cfg, "overrides": args.opts, "datasets": list(cfg.DATASET.NAMES),
        "search_blur": cfg.DATASET.SEARCH.BLUR, "batch_size": args.batch_size,
        "min_batches": args.batches, "min_seconds": args.min_seconds, "device": args.device,
        "cpu_cores": cores, "cold": args.cold,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    if args.host_only:
        return host_only_main(args, cfg, result)
    options = dict(num_threads=args.num_threads, read_threads=args.read_threads,
                   read_ahead=args.read_ahead,
                   roi_decode={"auto": None, "on": True, "off": False}[args.roi_decode],
                   crop_kernel=False if args.native_ops else None)
    if args.mask_cost:
        return mask_cost_main(args, cfg, device, options, result)
    dali_runs, ref_runs = [], []
    for r in range(args.rounds):
        dali_runs.append(bench_dali(cfg, args.shards, device, args.batch_size, args.batches,
                                    args.warmup, epoch=r, cold=args.cold,
                                    min_seconds=args.min_seconds, progress=args.progress, **options))
        run = dali_runs[-1]
        line = f"round {r}: DALI {run['pairs_per_s']:7.1f} pairs/s ({run['cpu_cores_busy']:.2f} cores)"
        if args.cold:
            line += (f", cold {run['cold']['pairs_per_s']:7.1f} pairs/s "
                     f"({run['cold']['cpu_cores_busy']:.2f} cores)")
        if not args.skip_reference:
            ref_runs.append(bench_reference(cfg, args.shards, device, args.batch_size,
                                            args.batches, args.warmup, args.workers or cores,
                                            epoch=r, min_seconds=args.min_seconds))
            line += (f", reference {ref_runs[-1]['pairs_per_s']:7.1f} pairs/s "
                     f"({ref_runs[-1]['cpu_cores_busy']:.2f} cores)")
        print(line, flush=True)
    result["dali"] = _median_run(dali_runs)
    print(f"DALI loader:      {result['dali']['pairs_per_s']:8.1f} pairs/s, "
          f"{result['dali']['cpu_cores_busy']:.2f} CPU cores busy, "
          f"{result['dali']['cpu_ms_per_pair']:.2f} CPU ms/pair "
          f"({result['dali']['num_threads']} DALI threads, {result['dali']['read_threads']} "
          f"reader threads, {result['dali']['read_ahead']} batches read ahead)")
    if args.cold:
        cold = [run["cold"] for run in dali_runs]
        result["dali_cold"] = _median_run(cold)
        ratios = sorted(c["pairs_per_s"] / w["pairs_per_s"] for c, w in zip(cold, dali_runs))
        result["cold_over_warm"] = ratios[len(ratios) // 2]
        print(f"DALI loader cold: {result['dali_cold']['pairs_per_s']:8.1f} pairs/s, "
              f"{result['dali_cold']['cpu_cores_busy']:.2f} CPU cores busy; "
              f"cold / warm (median of rounds): {result['cold_over_warm']:.2f}")
    if ref_runs:
        result["reference"] = _median_run(ref_runs)
        result["speedup"] = result["dali"]["pairs_per_s"] / result["reference"]["pairs_per_s"]
        dali_ms = result["dali"]["cpu_ms_per_pair"]
        result["cpu_efficiency_ratio"] = (result["reference"]["cpu_ms_per_pair"] / dali_ms
                                          if dali_ms > 0 else float("nan"))
        print(f"reference loader: {result['reference']['pairs_per_s']:8.1f} pairs/s, "
              f"{result['reference']['cpu_cores_busy']:.2f} CPU cores busy, "
              f"{result['reference']['cpu_ms_per_pair']:.2f} CPU ms/pair "
              f"({result['reference']['workers']} workers)")
        print(f"speedup (median pairs/s): {result['speedup']:.2f}x; "
              f"CPU time per pair: {result['cpu_efficiency_ratio']:.2f}x less")
    if result["gpu"]:
        print(f"GPU: {result['gpu']}")
    atomic_write(args.json, json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
