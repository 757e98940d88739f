"""Shard builder on a small hand-made raw VID with known defects: filtering, runs, report, resume,
crop511 import, --verify and error handling (real LMDB, real subprocess kill)."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import lmdb
import msgpack
import numpy as np
import pytest

from pipeline.ingest import build_dataset, verify_shards
from pipeline.crop import crop_search
from pipeline.shards import INDEX_NAME, ShardError, ShardReader, entry_key, shard_dir
from tools.build_lmdb import main as cli

from build_fixtures import _box, kill_build_after, make_raw_vid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
    return make_raw_vid(tmp_path_factory.mktemp('raw'))


@pytest.fixture(scope='module')
def built(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp('out')
    report = build_dataset('VID', raw, out, workers=2, progress=False)
    return out, report


def runs_of(r):
    out = {}
    for v in range(len(r.video_names)):
        for t in range(r.video_track_start[v], r.video_track_start[v + 1]):
            fr = [int(x) for x in r.entry_frame[r.track_entry_start[t]:r.track_entry_start[t + 1]]]
            out.setdefault((r.video_names[v], int(r.track_ids[t])), []).append(fr)
    return out


def test_runs_and_filtering(built):
    out, report = built
    r = ShardReader(out / 'VID')
    assert runs_of(r) == {
        ('a/vid0', 0): [[0, 1, 2, 3, 4, 5]], ('a/vid0', 1): [[0, 1, 2]], ('a/vid0', 2): [[1, 2, 3, 4, 5]],
        ('a/vid1', 0): [[0, 1], [3, 4, 5]], ('a/vid1', 1): [[0, 1], [3, 4, 5]], ('a/vid1', 3): [[0, 1], [3, 4]],
        ('b/vid2', 0): [[0, 1, 2], [4, 5]]}
    assert report['dropped'] == {'corrupt_image': 3, 'degenerate_box': 1, 'malformed_annotation_file': 1,
                                 'missing_image': 1, 'outside_frame': 1, 'single_frame_run': 1}
    bad = {(Path(b[0]).name, b[1]) for b in report['bad_inputs']}
    assert {('000002.JPEG', 'corrupt_image'), ('000003.xml', 'malformed_annotation_file'),
            ('000006.JPEG', 'missing_image'), ('000005.JPEG', 'outside_frame'),
            ('000000.xml', 'degenerate_box')} <= bad
    assert report['counts'] == {**report['counts'], 'videos': 3, 'tracks': 11, 'entries': 33}
    saved = json.loads((out / 'VID/build_report.json').read_text())
    assert saved['dropped'] == report['dropped']


def test_reader_round_trip(built, raw):
    out, _ = built
    r = ShardReader(shard_dir(out, 'VID'))
    assert r.meta['format_version'] == 2 and r.meta['crop']['crop_size'] == 511
    assert r.meta['crop']['context_amount'] == 0.5 and r.meta['crop']['exemplar_size'] == 127
    keys = r.keys()
    assert len(keys) == len(r) == r.meta['counts']['entries'] == len(set(keys))
    assert r.entry_box.dtype == np.float32 and r.entry_box.shape == (len(r), 4)
    assert r.track_ids.dtype == np.int32 and r.entry_frame.dtype == np.int32
    assert r.video_track_start.dtype == np.int64 and r.track_entry_start.dtype == np.int64
    assert not r.entry_box.flags.owndata and not r.entry_box.flags.writeable  # zero-copy view on the index
    for e in (0, 7, len(r) - 1):
        video, track, frame = keys[e]
        assert r.box(video, track, frame) == r.box_at(e) == pytest.approx(_box(frame, 2 if track == 3 else track))
        assert r.jpeg(video, track, frame) == r.jpeg_at(e)
        crop = cv2.imdecode(np.frombuffer(r.jpeg_at(e), np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (511, 511, 3)
        img = cv2.imread(str(raw / 'Data/VID/train' / video / f'{frame:06d}.JPEG'))
        ref = crop_search(img, r.box_at(e)).astype(float)
        assert np.abs(crop - ref).mean() < 2.0  # JPEG q95 round trip of the exact crop
    with pytest.raises(KeyError, match='vid0'):
        r.jpeg('a/vid0', 1, 4)  # the dropped singleton


def test_reader_fork_safe(built):
    import multiprocessing as mp
    r = ShardReader(built[0] / 'VID')
    first = r.jpeg_at(0)  # opens the environment in the parent
    with mp.get_context('fork').Pool(1) as pool:
        child = pool.apply(r.jpeg_at, (0,))
    assert child == first


def test_reader_errors(tmp_path, built):
    with pytest.raises(ShardError, match='does not exist'):
        ShardReader(tmp_path / 'nope')
    (tmp_path / 'X/shard-00000').mkdir(parents=True)
    with pytest.raises(ShardError, match='incomplete'):
        ShardReader(tmp_path / 'X')
    idx = msgpack.unpackb((built[0] / 'VID' / INDEX_NAME).read_bytes(), raw=False)
    idx['format_version'] = 99
    (tmp_path / 'X' / INDEX_NAME).write_bytes(msgpack.packb(idx, use_bin_type=True))
    with pytest.raises(ShardError, match='unknown shard format version 99'):
        ShardReader(tmp_path / 'X')
    with pytest.raises(ShardError, match='unknown dataset'):
        shard_dir('cache', 'IMAGENET')
    assert shard_dir('cache', 'YOUTUBEBB') == Path('cache/YTB')


def _all_crops(folder):
    r = ShardReader(folder)
    return {k: r.jpeg(*k) for k in r.keys()}


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    layout = {f'a/v{i:02d}': {f: [(0, _box(f, 0)), (1, _box(f, 1))] for f in range(8)} for i in range(12)}
    raw = make_raw_vid(tmp_path / 'raw', layout, seed=3)
    args = ['--dataset', 'VID', '--root', str(raw), '--workers', '2', '--shard-size', '150K', '--no-progress']
    assert cli(args + ['--out', str(tmp_path / 'ref')]) == 0
    assert kill_build_after(args + ['--out', tmp_path / 'k'], 3) == -signal.SIGKILL
    assert not (tmp_path / 'k/VID' / INDEX_NAME).exists()
    with pytest.raises(ShardError, match='incomplete'):
        ShardReader(tmp_path / 'k/VID')
    rep = build_dataset('VID', raw, tmp_path / 'k', workers=2, shard_size=150 * 1024, progress=False)
    assert rep['videos_resumed'] >= 3
    ref, got = tmp_path / 'ref/VID', tmp_path / 'k/VID'
    assert ShardReader(ref).meta['counts']['shards'] > 1
    assert (ref / INDEX_NAME).read_bytes() == (got / INDEX_NAME).read_bytes()
    assert _all_crops(ref) == _all_crops(got)
    # an identical rerun of a complete build changes nothing
    assert cli(args + ['--out', str(tmp_path / 'k')]) == 0
    assert (ref / INDEX_NAME).read_bytes() == (got / INDEX_NAME).read_bytes()


def test_crop511_import(built, tmp_path):
    r = ShardReader(built[0] / 'VID')
    crop_dir, anno = tmp_path / 'crop511', {}
    for video, track, frame in r.keys():
        p = crop_dir / video / f'{frame:06d}.{track:02d}.x.jpg'
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(r.jpeg(video, track, frame))
        anno.setdefault(video, {}).setdefault(f'{track:02d}', {})[f'{frame:06d}'] = list(r.box(video, track, frame))
    anno['a/vid0']['00']['000009'] = [1, 1, 1, 5]                      # degenerate
    anno['a/vid0']['05'] = {'000000': [1, 1, 9, 9], '000001': [1, 1, 9, 9]}  # crops missing
    (crop_dir / 'a/vid0/000000.01.x.jpg').write_bytes(b'\xff\xd8garbage\xff\xd9')  # corrupt crop
    (tmp_path / 'train.json').write_text(json.dumps(anno))
    assert cli(['--dataset', 'VID', '--from-crop511', str(crop_dir), '--anno', str(tmp_path / 'train.json'),
                '--out', str(tmp_path / 'imp'), '--workers', '1', '--no-progress', '--verify']) == 0
    r2 = ShardReader(tmp_path / 'imp/VID')
    rep = json.loads((tmp_path / 'imp/VID/build_report.json').read_text())
    assert rep['dropped'] == {'degenerate_box': 1, 'missing_image': 2, 'corrupt_image': 1}
    expected = set(r.keys()) - {('a/vid0', 1, 0)}
    assert set(r2.keys()) == expected
    for k in expected:
        assert r2.jpeg(*k) == r.jpeg(*k) and r2.box(*k) == r.box(*k)


def test_verify_detects_corruption(built, tmp_path, capsys):
    import shutil
    folder = tmp_path / 'VID'
    shutil.copytree(built[0] / 'VID', folder)
    assert verify_shards(folder) == []
    assert cli(['--dataset', 'VID', '--out', str(tmp_path), '--verify-only']) == 0
    r = ShardReader(folder)
    key = entry_key(*r.keys()[5])
    r.close()  # LMDB allows one handle per environment and process
    env = lmdb.open(str(folder / 'shard-00000'), map_size=1 << 26)
    with env.begin(write=True) as txn:
        data = bytearray(txn.get(key))
        data[len(data) // 2] ^= 0xFF
        txn.put(key, bytes(data))
    env.close()
    problems = verify_shards(folder)  # the stored bytes no longer match what was recorded at build
    assert any(p.startswith('shard-00000: crop ' + key.decode()) and 'recorded at build' in p for p in problems)
    assert cli(['--dataset', 'VID', '--out', str(tmp_path), '--verify-only']) == 1
    assert 'FAILED' in capsys.readouterr().err


def _build_as_typed(cwd: Path):
    """`python tools/build_lmdb.py --dataset VID` typed in `cwd` (no --root, no --out)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, str(REPO / 'tools/build_lmdb.py'), '--dataset', 'VID', '--workers', '1',
                           '--no-progress'], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_root_defaults_to_data_dataset(raw, built, tmp_path):
    """Without --root the raw dataset is data/<DATASET> in the working directory; when it is not there
    the one-line error names that path and --root."""
    proc = _build_as_typed(tmp_path)
    assert proc.returncode != 0 and not (tmp_path / 'cache').exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(Path('data') / 'VID') in lines[0] and '--root' in lines[0], proc.stderr
    shutil.copytree(raw, tmp_path / 'data' / 'VID')
    proc = _build_as_typed(tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / 'cache' / 'VID'
    assert json.loads((out / 'build_params.json').read_text())['root'] == str((tmp_path / 'data' / 'VID').resolve())
    assert (out / 'index.arrays').read_bytes() == (built[0] / 'VID' / 'index.arrays').read_bytes()


def test_clear_errors(raw, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(['--dataset', 'IMAGENET', '--root', str(raw)])
    assert 'unknown dataset' in capsys.readouterr().err
    assert cli(['--dataset', 'VID', '--root', str(tmp_path / 'missing'), '--out', str(tmp_path)]) == 2
    assert 'does not exist' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert cli(['--dataset', 'VID', '--root', str(tmp_path / 'empty'), '--out', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'Annotations/VID/train' in err and 'Expected layout' in err
    assert cli(['--dataset', 'COCO', '--root', str(raw), '--out', str(tmp_path)]) == 2
    assert 'instances_train2017.json' in capsys.readouterr().err
    # a build whose every image is unusable: nothing produced -> exit 1
    bad = make_raw_vid(tmp_path / 'bad', {'a/v': {0: [(0, _box(0, 0))], 1: [(0, _box(1, 0))]}})
    for jpg in (bad / 'Data/VID/train/a/v').iterdir():
        jpg.write_bytes(b'not a jpeg')
    assert cli(['--dataset', 'VID', '--root', str(bad), '--out', str(tmp_path / 'o'), '--no-progress']) == 1
    out = capsys.readouterr()
    assert 'nothing usable' in out.err and 'corrupt_image 2' in out.out
    # rerunning into the same folder with different parameters is refused with a hint
    assert cli(['--dataset', 'VID', '--root', str(bad), '--out', str(tmp_path / 'o'), '--jpeg-quality', '80',
                '--no-progress']) == 2
    assert '--overwrite' in capsys.readouterr().err
