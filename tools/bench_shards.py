"""Benchmark the shard index and read path at scale, each next to the format-1 way in the same run.

    python tools/bench_shards.py [--sizes 10000,1000000,10000000] [--procs 4] [--read-entries 100000]
                                 [--reads 3000] [--build-entries 1000000,10000000] [--work DIR] [--json FILE]

* index (per size, synthetic aliased index, `pipeline.synthetic.make_shards(alias=True)`): seconds to
  open what a training process needs (ShardReader + the sampler's view of it) in a fresh process,
  and the memory each extra process adds: --procs processes open the same index and touch every
  array; /proc/<pid>/smaps_rollup gives their private (unshared) memory above an interpreter with the
  same imports, and their PSS.  Baseline: the same arrays as a format-1 index.msgpack, unpacked
  privately by each process (what pipeline.shards did before).
* reads (--read-entries realistic ~33 KB crops, built by the real writer): single-threaded
  `jpeg_at` of --reads random entries, warm and cold (page cache evicted with
  `shards.evict_page_cache`), with the default descriptor advice (`shards.READ_ADVICE`: RANDOM, no
  kernel readahead), with posix_fadvise NORMAL, and with `prefetch()` of the next window; 4 threads cold; baseline: an LMDB
  get through the memory map with readahead off (the format-1 read).
* build (per --build-entries): peak memory (VmHWM) of a real build (`build_parsed`, 2 crop workers)
  over a synthetic parse of that many tiny precropped entries (8x8 JPEGs, so the disk holds it),
  above the same process before the parse; the workers' peak; the parse table's size.
Writes JSON (default runs/bench_shards.json).  Machine load makes timings noisy: compare ratios.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.fileio import write_json  # noqa: E402

V1_NAME = 'index_v1.msgpack'
V1_ARRAYS = ('video_track_start', 'track_entry_start', 'track_ids', 'entry_frame', 'entry_box', 'entry_shard')


# ---- helpers run in child processes -------------------------------------------------------------------
def _status(pid='self') -> dict:
    out = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        k, _, v = line.partition(':')
        if v.strip().endswith('kB'):
            out[k] = int(v.split()[0]) * 1024
    return out


def _rollup(pid: int) -> dict:
    out = {}
    for line in Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines()[1:]:
        k, _, v = line.partition(':')
        out[k] = int(v.split()[0]) * 1024
    out['Private'] = out.get('Private_Clean', 0) + out.get('Private_Dirty', 0)
    return out


class _V1Reader:
    """The format-1 way: unpack the whole msgpack index privately (pipeline.shards before format 2)."""

    def __init__(self, folder):
        index = msgpack.unpackb((Path(folder) / V1_NAME).read_bytes(), raw=False, strict_map_key=False)
        self.video_names = list(index['video_names'])
        for k in V1_ARRAYS:
            d = index['arrays'][k]
            setattr(self, k, np.frombuffer(d['data'], np.dtype(d['dtype'])).reshape(d['shape']))


def _open(folder, fmt):
    from pipeline.sampling import _DatasetIndex
    from pipeline.shards import ShardReader
    t0 = time.perf_counter()
    reader = ShardReader(folder) if fmt == 'v2' else _V1Reader(folder)
    t1 = time.perf_counter()
    view = _DatasetIndex(reader)
    return reader, view, t1 - t0, time.perf_counter() - t0


def child_open(folder, fmt):
    _, _, t_open, t_all = _open(folder, fmt)
    print(json.dumps({'open_s': t_open, 'open_and_sampler_s': t_all}))


def child_hold(folder, fmt):
    """Open (or not, fmt 'none'), touch every index array, report ready, wait for stdin to close."""
    import pipeline.sampling  # noqa: F401  the same imports in every variant
    import pipeline.shards  # noqa: F401
    keep = None
    if fmt != 'none':
        reader, view, _, _ = _open(folder, fmt)
        names = V1_ARRAYS + (('entry_offset', 'entry_length', 'entry_crc') if fmt == 'v2' else ())
        total = sum(float(np.asarray(getattr(reader, k)).sum()) for k in names)
        keep = (reader, view, total)
    print('ready', flush=True)
    sys.stdin.read()
    del keep


def child_build(entries: int, work: str, shard_size: int):
    """A real build over a synthetic compact parse of `entries` tiny precropped entries."""
    import cv2
    from pipeline.ingest import build_parsed
    from pipeline.ingest.crop_worker import CropParams
    from pipeline.ingest.spec import DropLog, ParseResult, TrackSpec, VideoTableBuilder
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    image = work / 'tiny.jpg'
    image.write_bytes(cv2.imencode('.jpg', np.full((8, 8, 3), 100, np.uint8))[1].tobytes())
    before, anon_before = _status()['VmHWM'], _status()['RssAnon']
    per_video, per_track = 100, 50
    b = VideoTableBuilder()
    box = (10.0, 20.0, 110.0, 220.0)
    for v in range(-(-entries // per_video)):
        n = min(per_video, entries - v * per_video)
        tracks = []
        for t in range(-(-n // per_track)):
            m = min(per_track, n - t * per_track)
            tracks.append(TrackSpec(t, list(range(m)), [box] * m, [str(image)] * m))
        b.add(f'synth/{v:08d}', tracks)
    table = b.finish(precropped=True)
    t0 = time.perf_counter()
    parsed = ParseResult('VID', str(work), table, DropLog(), 1)
    peaks, stop = {'RssAnon': 0, 'RssFile': 0, 'worker': 0}, threading.Event()

    def sample():  # VmHWM counts mapped file pages too: follow anonymous and file-backed memory apart
        me = os.getpid()
        while not stop.wait(0.05):
            st = _status()
            for k in ('RssAnon', 'RssFile'):
                peaks[k] = max(peaks[k], st.get(k, 0))
            for task in Path(f'/proc/{me}/task').iterdir():  # the crop workers (getrusage's figure for
                try:                                          # children counts the parent's pages at spawn)
                    for child in (task / 'children').read_text().split():
                        peaks['worker'] = max(peaks['worker'], _status(child).get('VmRSS', 0))
                except OSError:
                    pass
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    report = build_parsed(parsed, {'mode': 'synthetic'}, work / 'out', CropParams(crop_size=8), workers=2,
                          shard_size=shard_size, progress=False)
    stop.set()
    sampler.join()
    after = _status()
    du = sum(p.stat().st_size for p in (work / 'out').rglob('*') if p.is_file())
    print(json.dumps({'entries': report['counts']['entries'], 'interpreter_peak_bytes': before,
                      'peak_bytes': after['VmHWM'], 'peak_above_interpreter_bytes': after['VmHWM'] - before,
                      'interpreter_anon_bytes': anon_before, 'peak_anon_above_interpreter_bytes': peaks['RssAnon'] - anon_before,
                      'peak_file_mapped_bytes': peaks['RssFile'], 'shard_size': shard_size,
                      'table_bytes': table.nbytes(), 'build_s': time.perf_counter() - t0,
                      'worker_peak_bytes': peaks['worker'],
                      'disk_bytes': du}))


# ---- the parent -------------------------------------------------------------------------------------------
def _run_child(*args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, __file__, '--child', *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True, input=stdin)


def _write_v1(folder: Path):
    """The same index as a format-1 index.msgpack (arrays as raw bytes + a list of names)."""
    from pipeline.shards import ShardReader
    r = ShardReader(folder)
    arrays = {}
    for k in V1_ARRAYS:
        a = np.ascontiguousarray(getattr(r, k))
        arrays[k] = {'dtype': a.dtype.str, 'shape': list(a.shape), 'data': a.tobytes()}
    index = {'format_version': 1, 'dataset': r.meta['dataset'], 'crop': r.meta['crop'], 'counts': r.meta['counts'],
             'shards': r.meta['shards'], 'video_names': list(r.video_names), 'arrays': arrays}
    (folder / V1_NAME).write_bytes(msgpack.packb(index, use_bin_type=True))


def _index_folder(work: Path, entries: int) -> Path:
    from pipeline.synthetic import make_shards
    folder = work / f'index_{entries}' / 'VID'
    if not (folder / V1_NAME).exists():
        make_shards(folder.parent, entries, distinct=64, alias=True, overwrite=True, progress=True)
        _write_v1(folder)
    return folder


def bench_index(folder: Path, procs: int, repeats: int) -> dict:
    out = {'index_arrays_bytes': (folder / 'index.arrays').stat().st_size,
           'v1_index_bytes': (folder / V1_NAME).stat().st_size}
    for fmt in ('v2', 'v1'):
        runs = [json.loads(_run_child('open', folder, fmt).stdout) for _ in range(repeats)]
        out[fmt] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    for fmt in ('none', 'v2', 'v1'):
        n = 1 if fmt == 'none' else procs
        ps = [subprocess.Popen([sys.executable, __file__, '--child', 'hold', str(folder), fmt], cwd=REPO, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        try:
            for p in ps:
                assert p.stdout.readline().startswith('ready')
            roll = [_rollup(p.pid) for p in ps]
        finally:
            for p in ps:
                p.stdin.close()
                p.wait()
        if fmt == 'none':
            base = roll[0]
            out['interpreter'] = {'rss_bytes': base['Rss'], 'private_bytes': base['Private']}
            continue
        added = [r['Private'] - base['Private'] for r in roll]
        out[fmt].update({'procs': n, 'private_added_per_process_bytes': statistics.median(added),
                         'rss_per_process_bytes': statistics.median(r['Rss'] for r in roll),
                         'pss_per_process_bytes': statistics.median(r['Pss'] for r in roll),
                         'node_bytes_added_for_n_processes': sum(r['Pss'] - base['Pss'] for r in roll)})
    out['ratio_open_v1_over_v2'] = out['v1']['open_and_sampler_s'] / out['v2']['open_and_sampler_s']
    return out


def _reads_folder(work: Path, entries: int) -> Path:
    from pipeline.synthetic import make_shards
    folder = work / f'reads_{entries}' / 'VID'
    if not (folder / 'index.msgpack').exists():
        make_shards(folder.parent, entries, distinct=512, alias=False, overwrite=True, progress=True)
    return folder


def _storage_read_bytes() -> int:
    """Bytes this process made the kernel fetch from storage (incl. readahead), /proc/self/io."""
    for line in Path('/proc/self/io').read_text().splitlines():
        if line.startswith('read_bytes:'):
            return int(line.split()[1])
    return 0


def _timed_reads(read, entries, prefetch=None, window=64, threads=1) -> dict:
    io0 = _storage_read_bytes()
    t0 = time.perf_counter()
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(threads) as pool:
            nbytes = sum(len(b) for b in pool.map(read, entries))
    else:
        nbytes = 0
        for i, e in enumerate(entries):
            if prefetch is not None and i % window == 0:
                prefetch(entries[i + window:i + 2 * window] if i else entries[:2 * window])
            nbytes += len(read(e))
    dt = time.perf_counter() - t0
    return {'reads_per_s': len(entries) / dt, 'mb_per_s': nbytes / dt / 1e6,
            'storage_bytes_per_crop_byte': (_storage_read_bytes() - io0) / nbytes}


def bench_reads(folder: Path, reads: int, repeats: int) -> dict:
    from pipeline.shards import READ_ADVICE, ShardReader, entry_key, evict_page_cache, open_shard_env
    r = ShardReader(folder)
    rng = random.Random(0)
    envs = {}

    def lmdb_read(e):  # the format-1 read: a get through the memory map, readahead off, bytes copied
        s = int(r.entry_shard[e])
        if s not in envs:
            envs[s] = open_shard_env(folder / r.meta['shards'][s]['name'])
        with envs[s].begin() as txn:
            return txn.get(entry_key(*r.entry_location(e)))

    modes = {
        'warm': dict(read=r.jpeg_at, cold=False),
        'cold': dict(read=r.jpeg_at, cold=True),
        'cold_fadvise_normal': dict(read=r.jpeg_at, cold=True, advice='normal'),
        'cold_prefetch_window64': dict(read=r.jpeg_at, cold=True, prefetch=r.prefetch),
        'cold_4_threads': dict(read=r.jpeg_at, cold=True, threads=4),
        'v1_lmdb_mmap_warm': dict(read=lmdb_read, cold=False),
        'v1_lmdb_mmap_cold': dict(read=lmdb_read, cold=True),
    }
    results = {m: [] for m in modes}
    for _ in range(repeats):
        for mode, opt in modes.items():  # alternating, so load drifts hit every mode alike
            entries = rng.sample(range(len(r)), reads)
            r.set_read_advice(opt.get('advice', READ_ADVICE))
            if opt['cold']:
                evict_page_cache(folder)
            else:
                for e in entries:
                    opt['read'](e)
            results[mode].append(_timed_reads(opt['read'], entries, opt.get('prefetch'), threads=opt.get('threads', 1)))
    r.set_read_advice(READ_ADVICE)
    out = {m: {k: statistics.median(x[k] for x in v) for k in v[0]} for m, v in results.items()}
    warm = out['warm']['reads_per_s']
    out['ratios_vs_warm'] = {m: round(v['reads_per_s'] / warm, 3) for m, v in out.items()}
    out['entries'], out['reads'], out['repeats'] = len(r), reads, repeats
    out['mean_value_bytes'] = float(np.mean(r.entry_length))
    return out


def bench_build(entries: int, work: Path, shard_size: int) -> dict:
    tmp = work / f'build_{entries}'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return json.loads(_run_child('build', entries, tmp, shard_size).stdout)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == '--child':
        what, *args = sys.argv[2:]
        if what == 'open':
            return child_open(*args)
        if what == 'hold':
            return child_hold(*args)
        return child_build(int(args[0]), args[1], int(args[2]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', default='10000,1000000,10000000', help='index sizes (entries); empty: skip')
    p.add_argument('--procs', type=int, default=4, help='processes sharing one index')
    p.add_argument('--read-entries', type=int, default=100000, help='realistic entries for the read test; 0: skip')
    p.add_argument('--reads', type=int, default=3000, help='random reads per round')
    p.add_argument('--build-entries', default='1000000,10000000', help='build sizes (entries); empty: skip')
    p.add_argument('--build-shard-size', type=int, default=64 << 20,
                   help='payload bytes per shard of the build test (default 64 MiB: the tiny values sit in LMDB\'s '
                        'leaf pages, which the writer maps; real 35 KB crops sit in overflow pages it never maps)')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--work', help='folder for the generated shards, kept for reuse (default: a temp folder)')
    p.add_argument('--json', default='runs/bench_shards.json')
    a = p.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='bench_shards_'))
    out = {'load': os.getloadavg(), 'index': {}, 'build': {}}
    try:
        for n in [int(x) for x in a.sizes.split(',') if x]:
            out['index'][n] = res = bench_index(_index_folder(work, n), a.procs, a.repeats)
            print(f"index {n:>9}: open+sampler v2 {res['v2']['open_and_sampler_s']:.3f} s "
                  f"(v1 {res['v1']['open_and_sampler_s']:.3f} s); private memory added per process "
                  f"v2 {res['v2']['private_added_per_process_bytes'] / 2**20:.1f} MiB "
                  f"(v1 {res['v1']['private_added_per_process_bytes'] / 2**20:.1f} MiB)", flush=True)
        if a.read_entries:
            out['reads'] = res = bench_reads(_reads_folder(work, a.read_entries), a.reads, a.repeats)
            for m, v in res.items():
                if isinstance(v, dict) and 'reads_per_s' in v:
                    print(f"reads {m:>24}: {v['reads_per_s']:8.0f} reads/s {v['mb_per_s']:7.1f} MB/s "
                          f"({res['ratios_vs_warm'][m]:.2f} x warm; storage read {v['storage_bytes_per_crop_byte']:.2f} "
                          f"x the crop bytes)", flush=True)
        for n in [int(x) for x in a.build_entries.split(',') if x]:
            out['build'][n] = res = bench_build(n, work, a.build_shard_size)
            print(f"build {n:>9}: peak {res['peak_above_interpreter_bytes'] / 2**20:.0f} MiB above the interpreter, "
                  f"of which anonymous {res['peak_anon_above_interpreter_bytes'] / 2**20:.0f} MiB (mapped shard pages "
                  f"peak {res['peak_file_mapped_bytes'] / 2**20:.0f} MiB; table {res['table_bytes'] / 2**20:.0f} MiB; "
                  f"workers {res['worker_peak_bytes'] / 2**20:.0f} MiB); {res['build_s']:.0f} s", flush=True)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    out['load_after'] = os.getloadavg()
    write_json(a.json, out)
    print(f'wrote {a.json}')
    return out


if __name__ == '__main__':
    main()
