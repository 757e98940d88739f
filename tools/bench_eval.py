"""Benchmark tracking throughput: the batched engine against the sequential tracker, and a
hyper-parameter search with its settings batched against one setting at a time, in one run
(same sequences, same model).

    python tools/bench_eval.py --cfg configs/demo_cpu.yaml [--snapshot X.pth] [--dataset DIR]
        [--videos 8 --frames 40] [--settings 6] [--device cpu|cuda] [--json results/bench_eval.json]

Without --snapshot the network is randomly initialised (the speed does not depend on the
weights); without --dataset, synthetic OTB-layout sequences are written to a temporary folder.
Modes (wall-clock time of the whole run, frame decoding included):
  sequential      one sequence at a time, frame by frame (PySOT's way; `tools/eval.py --sequential`)
  batched         the batched engine with its defaults (`tools/eval.py`)
  batched_1stream the same with one CPU stream (what the streams add)
  batched_dense   the same with the backbone in plain NCHW tensors (what the blocked layout adds)
  batched_fast    the engine plus channels_last crops and BatchNorm folding (EngineOptions.fast)
  tune_batched    S settings x the sequences as one batched run (`tools/tune.py`)
  tune_one_by_one one setting at a time, each a batched run over the sequences
Each tracking mode also reports its largest box difference from `sequential` (px).
`compute_bound` sets the ceiling of any exact-arithmetic speed-up: the FLOPs of one search
forward, the fastest rate any of the model's own (ungrouped) convolutions reaches here at the
engine's batch, and so the least time a frame could take if every convolution ran at that rate
and nothing else cost anything; `ceiling_vs_sequential` is the sequential time over that.  With
--repeat R every mode runs R times, interleaved, and keeps its best time.  Prints the times as
they come and writes JSON with the ratios and the load average before and after.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from model import build_model  # noqa: E402
from pipeline.fileio import write_json  # noqa: E402
from pipeline.synthetic import make_eval  # noqa: E402
from tools.eval import add_engine_options  # noqa: E402
from train.eval_setup import eval_setup  # noqa: E402
from track.engine import EngineOptions, Job, default_batch_size, run_batched  # noqa: E402
from track.datasets import load_sequences  # noqa: E402
from track.ope import run_tracker  # noqa: E402
from track.protocol import OnePassProtocol  # noqa: E402
from track.snapshots import load_snapshot  # noqa: E402
from track.tracker import build_tracker  # noqa: E402
from track.tune import setting_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default='configs/demo_cpu.yaml')
    p.add_argument('--opts', nargs='*', default=[], help='config overrides KEY=VALUE')
    p.add_argument('--snapshot', help='checkpoint (default: random weights, seed 0)')
    p.add_argument('--dataset', help='OTB-layout sequences (default: synthetic, written to a temp folder)')
    p.add_argument('--videos', type=int, default=8, help='synthetic sequences')
    p.add_argument('--frames', type=int, default=40, help='frames per synthetic sequence')
    p.add_argument('--settings', type=int, default=6, help='tracker settings in the tuning comparison (0: skip)')
    p.add_argument('--device', default='cpu')
    add_engine_options(p)
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave default)')
    p.add_argument('--skip', nargs='*', default=[], help='modes to leave out')
    p.add_argument('--repeat', type=int, default=1, help='rounds over all modes; the best of each is kept')
    p.add_argument('--json', default='results/bench_eval.json')
    return p.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def compute_bound(model, cfg, batch: int, device: str) -> dict:
    """The FLOPs of one search forward and the fastest rate of the model's ungrouped
    convolutions at `batch` (each timed alone on its own input shape): the least time a frame
    could take with every convolution at that rate and nothing else."""
    size = cfg.TRACK.INSTANCE_SIZE
    convs = []
    hooks = [m.register_forward_hook(lambda m, inp, out: convs.append((m, inp[0].shape)))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    z = torch.zeros(1, 3, cfg.TRACK.EXEMPLAR_SIZE, cfg.TRACK.EXEMPLAR_SIZE, device=device)
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad():
        model.template(z)
        del convs[:]
        counter = FlopCounterMode(display=False)
        with counter:
            model.track(x)
    for h in hooks:
        h.remove()
    rates = []
    with torch.no_grad():
        for conv, shape in convs:
            inp = torch.rand(batch, *shape[1:], device=device)
            with FlopCounterMode(display=False) as c:
                conv(inp[:1])
            conv(inp)
            _, seconds = timed(lambda: [conv(inp) for _ in range(5)])
            rates.append(batch * c.get_total_flops() * 5 / seconds)
    flops = counter.get_total_flops()
    return {'search_gflop_per_frame': flops / 1e9, 'fastest_conv_gflops': max(rates) / 1e9,
            'least_ms_per_frame': 1e3 * flops / max(rates), 'batch': batch}


def max_diff(a: dict, b: dict) -> float:
    return float(max(np.abs(a[k]['boxes'] - b[k]['boxes']).max() for k in a))


def main(argv=None):
    args = parse_args(argv)
    setup = eval_setup(args.cfg, args.opts, [args.snapshot] if args.snapshot else [], None, args.device, args.threads)
    cfg = setup.cfg
    if args.snapshot:
        model = load_snapshot(cfg, setup.snapshots[0], args.device)
    else:
        torch.manual_seed(0)
        model = build_model(cfg).to(args.device).eval()
    tracker = build_tracker(cfg, model, args.device)
    with tempfile.TemporaryDirectory(prefix='bench_eval_') as tmp:
        root = args.dataset
        if root is None:
            root = Path(tmp) / 'sequences'
            make_eval(root, videos=args.videos, frames=args.frames, seed=7)
        seqs = load_sequences(root, 'otb')
        frames = sum(len(s) for s in seqs)
        load_before = os.getloadavg()
        run_tracker(tracker, seqs[:1], 'warm-up', progress=False)  # first-call costs out of the figures
        engine = EngineOptions(batch_size=args.batch_size, streams=args.streams)
        modes = {
            'sequential': None,
            'batched': engine,
            'batched_1stream': EngineOptions(batch_size=args.batch_size, streams=1),
            'batched_dense': EngineOptions(batch_size=args.batch_size, streams=args.streams, blocked=False),
            'batched_fast': EngineOptions.fast(batch_size=args.batch_size, streams=args.streams),
        }
        rows, tracks = {}, {}
        for round_ in range(args.repeat):
            for name, options in modes.items():
                if name in args.skip:
                    continue
                tracks[name], seconds = timed(lambda: run_tracker(tracker, seqs, name, progress=False, engine=options))
                print(f'{name:<16} {frames / seconds:8.1f} frames/s  ({seconds:.1f} s)', flush=True)
                if name in rows and rows[name]['seconds'] <= seconds:
                    continue
                rows[name] = {'frames': frames, 'seconds': seconds, 'fps': frames / seconds}
                if 'sequential' in tracks:
                    rows[name]['max_box_diff_px'] = max_diff(tracks[name], tracks['sequential'])
        if args.settings:
            ks = np.linspace(0.5, 1.5, args.settings) * cfg.TRACK.PENALTY_K
            settings = [setting_config(cfg, {'PENALTY_K': round(float(k), 6)}).TRACK for k in ks]

            def jobs(variants):
                return [Job(OnePassProtocol(s), s.read_frame, s.name, v, len(s)) for s in seqs for v in variants]

            for round_ in range(args.repeat):
                for name, runs in (('tune_batched', [settings]), ('tune_one_by_one', [[v] for v in settings])):
                    if name in args.skip:
                        continue
                    _, seconds = timed(lambda: [run_batched(jobs(v), tracker, engine) for v in runs])
                    n = frames * len(settings)
                    print(f'{name:<16} {n / seconds:8.1f} setting x frames/s  ({seconds:.1f} s)', flush=True)
                    if name not in rows or seconds < rows[name]['seconds']:
                        rows[name] = {'setting_frames': n, 'settings': len(settings), 'seconds': seconds,
                                      'setting_frames_per_s': n / seconds}
        load_after = os.getloadavg()
    bound = compute_bound(model, cfg, args.batch_size or default_batch_size(args.device), args.device)
    ratios = {}
    if 'sequential' in rows:
        bound['ceiling_vs_sequential'] = 1e3 / rows['sequential']['fps'] / bound['least_ms_per_frame']
        ratios.update({f'{k}_vs_sequential': rows[k]['fps'] / rows['sequential']['fps']
                       for k in ('batched', 'batched_1stream', 'batched_dense', 'batched_fast') if k in rows})
    if 'tune_batched' in rows and 'tune_one_by_one' in rows:
        ratios['tune_batched_vs_one_by_one'] = (rows['tune_batched']['setting_frames_per_s']
                                                / rows['tune_one_by_one']['setting_frames_per_s'])
    report = {
        'command': ' '.join(sys.argv), 'config': args.cfg, 'snapshot': args.snapshot or 'random init',
        'device': torch.cuda.get_device_name() if args.device.startswith('cuda') else platform.processor() or 'cpu',
        'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(), 'torch': torch.__version__,
        'load_average_before': load_before, 'load_average_after': load_after,
        'sequences': len(seqs), 'frames': frames, 'repeat': args.repeat, 'engine': vars(engine),
        'results': rows, 'ratios': ratios, 'compute_bound': bound,
    }
    for k, v in ratios.items():
        print(f'{k}: {v:.2f}x')
    print(f"compute bound: {bound['search_gflop_per_frame']:.2f} GFLOP per frame, fastest convolution "
          f"{bound['fastest_conv_gflops']:.0f} GFLOP/s -> at least {bound['least_ms_per_frame']:.1f} ms "
          f"per frame" + (f", at most {bound['ceiling_vs_sequential']:.2f}x sequential"
                          if 'ceiling_vs_sequential' in bound else ''))
    print(f'load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs)')
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, report, indent=2)
    print(f'wrote {args.json}')
    return report


if __name__ == '__main__':
    main()
