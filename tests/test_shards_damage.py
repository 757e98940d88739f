"""Damaged shards (issue 12): a truncated data.mdb, overwritten B-tree pages and flipped crop bytes
end in a message that names the shard, never in a signal, a traceback or an approval."""
import shutil

import pytest

from pipeline.ingest import build_dataset
from pipeline.shards import CorruptCropError, ShardError, ShardReader
from sampling_fixtures import VID_TRACKS, write_crop511
from shard_damage import flip_crop_byte, overwrite_btree_root, run_build_cli, run_python, truncate_shard

SHARD_SIZE = 200 * 1024


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('damage_src')
    anno = write_crop511(tmp / 'crop511', VID_TRACKS, seed=4)
    return tmp / 'crop511', anno


def _import_args(source, out):
    crop_dir, anno = source
    return ['--dataset', 'VID', '--from-crop511', crop_dir, '--anno', anno, '--out', out, '--workers', '1',
            '--shard-size', str(SHARD_SIZE), '--no-progress']


@pytest.fixture(scope='module')
def built(source, tmp_path_factory):
    out = tmp_path_factory.mktemp('damage_ref')
    build_dataset('VID', out_root=out, from_crop511=source[0], anno=source[1], shard_size=SHARD_SIZE, progress=False)
    assert ShardReader(out / 'VID').meta['counts']['shards'] >= 3
    return out


@pytest.fixture
def copy(built, tmp_path):
    shutil.copytree(built, tmp_path / 'out')
    return tmp_path / 'out'


READ_ALL = '''
import sys
from pipeline.shards import CorruptCropError, ShardError, ShardReader
try:
    r = ShardReader(sys.argv[1] if len(sys.argv) > 1 else {folder!r})
    bad = 0
    for e in range(len(r)):
        try:
            r.jpeg_at(e)
        except CorruptCropError as err:
            bad += 1
            last = str(err)
    print('read', len(r), 'bad', bad, last if bad else '')
except ShardError as err:
    print('stopped:', err, file=sys.stderr)
    sys.exit(3)
'''


def _no_signal_no_traceback(proc):
    assert proc.returncode >= 0, f'killed by signal {-proc.returncode}: {proc.stderr[-2000:]}'
    assert 'Traceback' not in proc.stderr, proc.stderr


def test_truncated_shard_is_named_in_every_path(copy, source):
    folder = copy / 'VID'
    truncate_shard(folder, 1)
    # training side: the reader refuses the folder before any read
    proc = run_python(READ_ALL.format(folder=str(folder)))
    _no_signal_no_traceback(proc)
    assert proc.returncode == 3
    assert 'shard-00001' in proc.stderr and 'truncated' in proc.stderr and '--overwrite' in proc.stderr
    # verify-only
    proc = run_build_cli('--dataset', 'VID', '--out', copy, '--verify-only')
    _no_signal_no_traceback(proc)
    assert proc.returncode == 1 and 'shard-00001' in proc.stderr and 'truncated' in proc.stderr
    # the rebuild (resume scan) of the same command
    proc = run_build_cli(*_import_args(source, copy), '--verify')
    _no_signal_no_traceback(proc)
    assert proc.returncode != 0 and 'shard-00001' in proc.stderr and 'truncated' in proc.stderr


def test_truncated_shard_repair_as_the_message_says(copy, source, built):
    """The message's cheap repair (delete the shard and later ones, rerun) rebuilds the same index."""
    folder = copy / 'VID'
    truncate_shard(folder, 1)
    proc = run_build_cli(*_import_args(source, copy))
    assert 'delete' in proc.stderr
    for p in sorted(folder.glob('shard-*'))[1:]:
        shutil.rmtree(p)
    proc = run_build_cli(*_import_args(source, copy), '--verify')
    assert proc.returncode == 0, proc.stderr
    for name in ('index.msgpack', 'index.arrays'):
        assert (folder / name).read_bytes() == (built / 'VID' / name).read_bytes()


def test_overwritten_btree_pages_are_named(copy):
    folder = copy / 'VID'
    overwrite_btree_root(folder, 0)
    proc = run_build_cli('--dataset', 'VID', '--out', copy, '--verify-only')
    _no_signal_no_traceback(proc)
    assert proc.returncode == 1 and 'FAILED' in proc.stderr
    assert 'shard-00000' in proc.stderr
    # reads go by the recorded byte range, not through the damaged B-tree: still served, CRC-checked
    proc = run_python(READ_ALL.format(folder=str(folder)))
    _no_signal_no_traceback(proc)
    assert proc.returncode == 0 and 'bad 0' in proc.stdout


def test_flipped_crop_byte_fails_its_checksum_on_read(copy):
    folder = copy / 'VID'
    r = ShardReader(folder)
    good = r.jpeg_at(3)
    flip_crop_byte(r, 5)
    assert r.jpeg_at(3) == good
    with pytest.raises(CorruptCropError) as err:
        r.jpeg_at(5)
    msg = str(err.value)
    video, track, frame = r.entry_location(5)
    assert str(folder) in msg and f'e/{video}/{track}/{frame}' in msg and 'checksum' in msg
    assert isinstance(err.value, ShardError)


def test_rerun_of_a_finished_build_does_not_approve_damage(copy, source):
    folder = copy / 'VID'
    flip_crop_byte(ShardReader(folder), 7)
    proc = run_build_cli(*_import_args(source, copy), '--verify')
    _no_signal_no_traceback(proc)
    assert proc.returncode == 1 and 'FAILED' in proc.stderr
    shard = f'shard-{int(ShardReader(folder).entry_shard[7]):05d}'
    assert shard in proc.stderr and 'crc' in proc.stderr.lower()


def test_altered_commit_marker_is_caught(copy, source):
    """A marker changed after its commit (here a box, rewritten through LMDB itself) no longer matches
    the shard's recorded digest: the rerun refuses to index it and verify names it."""
    import lmdb
    import msgpack
    import numpy as np
    shard = copy / 'VID' / 'shard-00001'
    env = lmdb.open(str(shard), map_size=1 << 26)
    with env.begin(write=True) as txn:
        key, raw = next((bytes(k), bytes(v)) for k, v in txn.cursor() if bytes(k).startswith(b'v/'))
        m = msgpack.unpackb(raw, raw=False)
        boxes = np.frombuffer(m['boxes'], np.float32).copy()
        boxes[0] += 1
        m['boxes'] = boxes.tobytes()
        txn.put(key, msgpack.packb(m, use_bin_type=True))
    env.close()
    proc = run_build_cli('--dataset', 'VID', '--out', copy, '--verify-only')
    _no_signal_no_traceback(proc)
    assert proc.returncode == 1 and 'shard-00001' in proc.stderr and 'digest' in proc.stderr
    proc = run_build_cli(*_import_args(source, copy))
    _no_signal_no_traceback(proc)
    assert proc.returncode == 2 and 'shard-00001' in proc.stderr and 'digest' in proc.stderr


def test_verify_lists_each_damaged_crop_once(copy):
    """Crops whose bytes fail their checksum are found by the crop walk and again by the decode
    sample; each is listed once (here the sample takes every crop)."""
    from pipeline.ingest import verify_shards
    from pipeline.shards import entry_key, release_read_env
    from shard_damage import overwrite_crop

    folder = copy / 'VID'
    reader = ShardReader(folder)
    damaged = [3, 10, 11]
    keys = [entry_key(*reader.entry_location(e)).decode() for e in damaged]
    for e in damaged:
        overwrite_crop(reader, e, b'\xff\xd8 damaged on disk')
    total = len(reader)
    reader.close()
    release_read_env(folder)
    problems = verify_shards(folder, sample=total)
    def mentions(text, key):  # 'crop KEY: ...' (the crop walk) or 'crop KEY (entry N)' (a read)
        return text.count(f'crop {key}:') + text.count(f'crop {key} (')

    for key in keys:
        assert sum(mentions(p, key) for p in problems) == 1, (key, problems)
    proc = run_build_cli('--dataset', 'VID', '--out', copy, '--verify-only')
    assert proc.returncode == 1
    for key in keys:
        assert mentions(proc.stderr, key) == 1, proc.stderr
