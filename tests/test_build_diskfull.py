"""Shard builder on a full disk (a small tmpfs, and the same disk simulated at the write seam where
no tmpfs can be mounted): a clear error instead of a traceback, and "free space and rerun" resumes
into shards identical to an uninterrupted build."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from pipeline.ingest import verify_shards
from pipeline.shards import INDEX_NAME, ShardError, ShardReader
from conftest import fill_disk as _fill, run_quiet as _run
from pipeline.synthetic import make_dataset

REPO = Path(__file__).resolve().parents[1]
VIDEOS = 6


@pytest.fixture(scope='module')
def raw_and_ref(tmp_path_factory):
    """Synthetic raw VID and its uninterrupted build on a normal disk."""
    base = tmp_path_factory.mktemp('diskfull')
    raw = Path(make_dataset('VID', base / 'raw', videos=VIDEOS, frames=24, seed=5)['root'])
    r = _build(raw, base / 'ref')
    assert r.returncode == 0, r.stderr
    return raw, base / 'ref' / 'VID'


def _build(raw: Path, out: Path):
    return _run([sys.executable, str(REPO / 'tools/build_lmdb.py'), '--dataset', 'VID', '--root', str(raw),
                 '--out', str(out)], cwd=REPO)


def _du(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())


def _all_crops(folder: Path) -> dict:
    r = ShardReader(folder)
    try:
        return {k: r.jpeg(*k) for k in r.keys()}
    finally:
        r.close()


def _assert_clean_disk_full_error(r, out_dir: Path):
    assert r.returncode != 0
    assert 'Traceback' not in r.stderr, r.stderr
    err = r.stderr.lower()
    assert 'disk full' in err and 'free' in err and 'rerun' in err, r.stderr
    assert str(out_dir) in r.stderr, r.stderr


def _assert_same_as_ref(out_dir: Path, ref: Path):
    assert (out_dir / INDEX_NAME).read_bytes() == (ref / INDEX_NAME).read_bytes()
    assert _all_crops(out_dir) == _all_crops(ref)
    assert verify_shards(out_dir) == []
    assert not list(out_dir.rglob('*.tmp'))


def test_disk_full_mid_build_then_free_space_and_rerun(raw_and_ref, small_disk):
    raw, ref = raw_and_ref
    mnt = small_disk(_du(ref) // 2)  # room for part of the shard data only
    out_dir = mnt / 'VID'
    r = _build(raw, mnt)
    _assert_clean_disk_full_error(r, out_dir)
    assert not (out_dir / INDEX_NAME).exists()
    with pytest.raises(ShardError, match='incomplete'):
        ShardReader(out_dir)

    small_disk(4 * _du(ref))  # free space (grow the same filesystem), then rerun the same command
    r = _build(raw, mnt)
    assert r.returncode == 0, r.stderr
    report = json.loads((out_dir / 'build_report.json').read_text())
    assert 0 < report['videos_resumed'] < report['videos_parsed'] == VIDEOS  # it really stopped midway
    _assert_same_as_ref(out_dir, ref)


def test_disk_full_when_a_new_shard_starts(raw_and_ref, small_disk):
    """LMDB maps a new shard's lock file: on a full disk that must be a clear error, not a SIGBUS."""
    raw, ref = raw_and_ref
    mnt = small_disk(4 * _du(ref))
    out_dir = mnt / 'VID'
    out_dir.mkdir()
    shutil.copy(ref / 'build_params.json', out_dir)  # the build started, then the disk filled up
    filler = _fill(mnt)
    r = _build(raw, mnt)
    _assert_clean_disk_full_error(r, out_dir)

    filler.unlink()
    r = _build(raw, mnt)
    assert r.returncode == 0, r.stderr
    _assert_same_as_ref(out_dir, ref)


def test_disk_full_at_index_write_then_rerun(raw_and_ref, small_disk):
    """All videos committed, but the disk fills up before the index is written."""
    raw, ref = raw_and_ref
    mnt = small_disk(4 * _du(ref))
    out_dir = mnt / 'VID'
    shutil.copytree(ref, out_dir, ignore=shutil.ignore_patterns(INDEX_NAME, 'build_report.json'))
    filler = _fill(mnt)
    r = _build(raw, mnt)
    _assert_clean_disk_full_error(r, out_dir)
    assert not (out_dir / INDEX_NAME).exists()
    assert not list(out_dir.rglob('*.tmp'))  # no half-written temp file left taking space

    filler.unlink()
    r = _build(raw, mnt)
    assert r.returncode == 0, r.stderr
    _assert_same_as_ref(out_dir, ref)
