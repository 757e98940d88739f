"""The shard reader at scale (issue 11): a memory-mapped index shared by the processes of a node and
loaded once per process, lazy lookup by name, small pickles, thread-safe CRC-checked reads,
read-ahead, and old (v1) indexes refused with the command that rebuilds them."""
import ctypes
import json
import mmap
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
import pytest

from pipeline.ingest import build_dataset
from pipeline.shards import (FORMAT_VERSION, INDEX_NAME, ShardError, ShardReader, entry_key, evict_page_cache,
                             open_shard_readers)
from pipeline.synthetic import make_shards
from sampling_fixtures import VID_TRACKS, write_crop511
from shard_damage import REPO


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('shards')
    anno = write_crop511(tmp / 'crop511', VID_TRACKS, seed=3)
    build_dataset('VID', out_root=tmp / 'out', from_crop511=tmp / 'crop511', anno=anno, shard_size=150 * 1024,
                  progress=False)
    return tmp / 'out' / 'VID'


@pytest.fixture(scope='module')
def big(tmp_path_factory):
    """60k index entries over 40 realistic (~30-35 KB) values: one value under many index entries."""
    out = tmp_path_factory.mktemp('big')
    make_shards(out, entries=60_000, distinct=40, alias=True, seed=1)
    return out / 'VID'


def test_v2_index_round_trip(built):
    r = ShardReader(built)
    assert r.meta['format_version'] == FORMAT_VERSION == 2 and r.meta['counts']['shards'] >= 3
    assert len(r.keys()) == len(r) == r.meta['counts']['entries']
    for name, dtype in (('entry_offset', np.uint64), ('entry_length', np.uint32), ('entry_crc', np.uint32),
                        ('entry_frame', np.int32), ('entry_box', np.float32), ('entry_shard', np.uint16)):
        a = getattr(r, name)
        assert a.dtype == dtype and len(a) == len(r) and not a.flags.writeable
    for e in range(len(r)):
        data = r.jpeg_at(e)
        assert len(data) == r.entry_length[e] and zlib.crc32(data) == r.entry_crc[e]
        assert r.entry_offset[e] > 0  # read by byte range
    names = list(r.video_names)
    assert names == sorted({v for v, _, _ in VID_TRACKS}) and r.video_names[-1] == names[-1]
    assert r.video_names[1:3] == names[1:3] and len(r.video_names) == len(names)


def test_lookup_by_name_matches_index_order(built):
    r = ShardReader(built)
    for e, key in enumerate(r.keys()):
        assert r.box(*key) == r.box_at(e)
    assert r.jpeg('v2', 3, 8) == r.jpeg_at(r.keys().index(('v2', 3, 8)))
    for missing in (('v0', 1, 9), ('v9', 0, 0), ('v0', 7, 0)):
        with pytest.raises(KeyError, match=missing[0]):
            r.box(*missing)


def test_lookup_by_name_is_lazy(big):
    r = ShardReader(big)  # cached index: the second open below costs nothing of its own
    keys = [r.entry_location(e) for e in (0, 12_345, len(r) - 1)]
    tracemalloc.start()
    try:
        r2 = ShardReader(big)
        for e, key in zip((0, 12_345, len(r) - 1), keys):
            assert r2.box(*key) == r2.box_at(e)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f'lookup by name allocated {peak} bytes for {len(r)} entries'


def test_pickle_holds_only_what_reopens_it(big):
    r = ShardReader(big)
    blob = pickle.dumps(r)
    assert len(blob) < 1024 and r.entry_crc.nbytes > 100_000
    r2 = pickle.loads(blob)
    assert r2.jpeg_at(777) == r.jpeg_at(777) and len(r2) == len(r)


def test_index_loaded_once_per_process(built):
    """Preflight, the loader and any other reader of the folder share one loaded index."""
    from train.config import load_config
    from train.preflight import check_shards
    cfg = load_config(None, overrides=['DATASET.NAMES=[VID]'])
    assert check_shards(cfg, built.parent) == {'VID': len(ShardReader(built))}
    a = ShardReader(built)
    (b,) = open_shard_readers(cfg, built.parent)
    for name in ('entry_frame', 'entry_box', 'entry_offset', 'track_entry_start'):
        assert np.shares_memory(getattr(a, name), getattr(b, name))
    assert a._index is b._index


SMAPS_CHILD = '''
import sys
import numpy as np
from pipeline.shards import ShardReader
r = ShardReader(sys.argv[1])
total = sum(int(np.asarray(getattr(r, k)).sum() % 7) for k in
            ('video_track_start', 'track_entry_start', 'track_ids', 'entry_frame', 'entry_shard',
             'entry_offset', 'entry_length', 'entry_crc'))
total += int(np.isfinite(r.entry_box).sum())
print('ready', total, flush=True)
sys.stdin.readline()
'''


def _mapping(pid: int, name: str) -> dict:
    """smaps fields of the mapping of file `name` in process `pid` (summed over its regions)."""
    out, inside = {}, False
    for line in Path(f'/proc/{pid}/smaps').read_text().splitlines():
        head = line.split()
        if head and '-' in head[0] and len(head) >= 5 and not head[0].endswith(':'):
            inside = line.endswith('/' + name)
        elif inside and head[0].endswith(':') and len(head) >= 2 and head[1].isdigit():
            out[head[0][:-1]] = out.get(head[0][:-1], 0) + int(head[1])
    return out


def test_index_is_one_shared_file_mapping_per_node(big):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    procs = [subprocess.Popen([sys.executable, '-c', SMAPS_CHILD, str(big)], cwd=REPO, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in procs:
            assert p.stdout.readline().startswith('ready')
        maps = [_mapping(p.pid, 'index.arrays') for p in procs]
        size = (big / 'index.arrays').stat().st_size // 1024
        for m in maps:
            assert m, 'index.arrays is not memory-mapped'
            assert m['Rss'] >= 0.9 * size  # every array touched
            assert m['Shared_Clean'] >= 0.9 * size and m['Private_Dirty'] == 0 and m['Anonymous'] == 0
            assert m['Pss'] <= 0.6 * m['Rss']  # the pages are counted once for both processes
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)


def test_concurrent_reads_equal_serial_reads(big):
    r = ShardReader(big)
    entries = random.Random(0).sample(range(len(r)), 3000)
    serial = [r.jpeg_at(e) for e in entries]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(r.jpeg_at, entries))
        r.prefetch(entries[:100])  # from another thread while reads run
    assert parallel == serial


def _resident_pages(path: Path) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    with open(path, 'rb') as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
        view = np.frombuffer(m, np.uint8)
        ptr = ctypes.c_void_p(view.ctypes.data)
        vec = (ctypes.c_ubyte * ((size + 4095) // 4096))()
        failed = libc.mincore(ptr, ctypes.c_size_t(size), vec) != 0
        del view
    if failed:
        pytest.skip('mincore unavailable')
    return sum(v & 1 for v in vec)


def test_prefetch_reads_ahead_the_given_entries(tmp_path):
    make_shards(tmp_path, entries=300, distinct=300, seed=2)
    folder = tmp_path / 'VID'
    r = ShardReader(folder)
    data = folder / 'shard-00000' / 'data.mdb'
    evict_page_cache(folder)
    before = _resident_pages(data)
    if before > 0.2 * data.stat().st_size / 4096:
        pytest.skip('this filesystem does not drop cached pages on request')
    wanted = list(range(0, 300, 3))
    r.prefetch(np.array(wanted))
    need = sum(int(r.entry_length[e]) for e in wanted) // 4096
    deadline = time.time() + 10
    while _resident_pages(data) < before + need and time.time() < deadline:
        time.sleep(0.05)
    assert _resident_pages(data) >= before + need
    r.prefetch([])


def test_v1_index_is_refused_with_the_command_that_rebuilds_it(built, tmp_path):
    folder = tmp_path / 'VID'
    shutil.copytree(built, folder)
    old = {'format_version': 1, 'dataset': 'VID', 'crop': {}, 'counts': {}, 'shards': [], 'video_names': [],
           'arrays': {}}
    (folder / INDEX_NAME).write_bytes(msgpack.packb(old, use_bin_type=True))
    (folder / 'index.arrays').unlink()
    params = json.loads((folder / 'build_params.json').read_text())
    with pytest.raises(ShardError) as err:
        ShardReader(folder)
    msg = str(err.value)
    assert 'version 1' in msg and 'tools/build_lmdb.py --dataset VID' in msg and '--overwrite' in msg
    assert f"--from-crop511 {params['crop511']}" in msg and f'--out {tmp_path}' in msg


def test_key_helpers():
    assert entry_key('a/b', 3, 12) == b'e/a/b/3/12'


def test_bench_shards_tool_runs(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, 'tools/bench_shards.py', '--sizes', '3000', '--procs', '2',
                           '--read-entries', '300', '--reads', '60', '--build-entries', '2000', '--repeats', '1',
                           '--work', str(tmp_path / 'work'), '--json', str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    idx = res['index']['3000']
    assert idx['v2']['procs'] == 2 and idx['v2']['open_and_sampler_s'] > 0 and idx['v1']['open_s'] > 0
    assert {'warm', 'cold', 'cold_prefetch_window64', 'v1_lmdb_mmap_cold'} <= set(res['reads'])
    assert res['build']['2000']['entries'] == 2000 and res['build']['2000']['peak_above_interpreter_bytes'] > 0
    assert not (tmp_path / 'work' / 'build_2000').exists()


def test_values_inside_btree_pages_are_read_through_lmdb(tmp_path):
    """Values below LMDB's overflow threshold (~2 KB) move with every write: the index records offset 0
    and the reader gets them by key, with the same CRC check."""
    import cv2
    from pipeline.ingest import build_parsed, verify_shards
    from pipeline.ingest.crop_worker import CropParams
    from pipeline.ingest.spec import DropLog, ParseResult, TrackSpec, VideoTableBuilder
    image = tmp_path / 'tiny.jpg'
    image.write_bytes(cv2.imencode('.jpg', np.full((8, 8, 3), 90, np.uint8))[1].tobytes())
    b = VideoTableBuilder()
    for v in range(3):
        b.add(f'v{v}', [TrackSpec(0, [0, 1, 2], [(1.0, 2.0, 5.0, 6.0)] * 3, [str(image)] * 3)])
    parsed = ParseResult('VID', str(tmp_path), b.finish(precropped=True), DropLog(), 1)
    build_parsed(parsed, {'mode': 'test'}, tmp_path / 'out', CropParams(crop_size=8), progress=False)
    r = ShardReader(tmp_path / 'out' / 'VID')
    assert len(r) == 9 and not r.entry_offset.any()
    assert all(r.jpeg_at(e) == image.read_bytes() for e in range(9)) and r.jpeg('v2', 0, 1) == image.read_bytes()
    assert verify_shards(tmp_path / 'out' / 'VID') == []
    r.close()
