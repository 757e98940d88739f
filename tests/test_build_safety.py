"""Builds under misuse (issue 12): two builds into one folder, Ctrl-C / SIGTERM / a killed crop
worker, and an import of crops of the wrong size.  Real processes, real signals, real LMDB."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.ingest import verify_shards
from pipeline.shards import INDEX_NAME, ShardError, ShardReader
from build_fixtures import _box, make_raw_vid
from sampling_fixtures import VID_TRACKS, write_crop511
from shard_damage import REPO, run_build_cli

LAYOUT = {f'a/v{i:02d}': {f: [(0, _box(f, 0)), (1, _box(f, 1))] for f in range(8)} for i in range(10)}


@pytest.fixture(scope='module')
def raw(tmp_path_factory):
    return make_raw_vid(tmp_path_factory.mktemp('safety_raw'), LAYOUT, seed=7)


def _args(raw, out, *extra):
    return ['--dataset', 'VID', '--root', str(raw), '--out', str(out), '--shard-size', '150K', '--no-progress',
            *map(str, extra)]


@pytest.fixture(scope='module')
def ref(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp('safety_ref')
    proc = run_build_cli(*_args(raw, out, '--workers', '1'))
    assert proc.returncode == 0, proc.stderr
    return out / 'VID'


def _start(raw, out, *extra):
    """A build in its own session (its own process group, as a shell job), --verbose on stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.Popen([sys.executable, str(REPO / 'tools/build_lmdb.py'), *_args(raw, out, *extra), '--verbose'],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_commits(proc, n=1):
    seen = 0
    for line in proc.stdout:
        seen += line.startswith('committed')
        if seen >= n:
            return
    raise AssertionError(f'build ended before {n} commits: {proc.stderr.read()}')


def _children(pid: int) -> list:
    path = Path(f'/proc/{pid}/task/{pid}/children')
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _process_states(pid: int) -> str:
    """One line per process of the tree under `pid` and per thread: state, wait channel, signal masks."""
    lines = []
    for p in [pid] + _children(pid):
        for task in sorted(Path(f'/proc/{p}/task').glob('*')):
            try:
                status = dict(line.split(':\t', 1) for line in (task / 'status').read_text().splitlines() if ':\t' in line)
                wchan = (task / 'wchan').read_text()
            except OSError:
                continue
            lines.append(f'{p}/{task.name} {status["Name"].strip()} {status["State"].strip()} wchan={wchan} '
                         + ' '.join(f'{k}={status[k].strip()}' for k in ('SigPnd', 'ShdPnd', 'SigBlk', 'SigIgn', 'SigCgt')))
    return '\n'.join(lines)


def _alive(pid: int) -> bool:
    try:
        return Path(f'/proc/{pid}/stat').read_text().split()[2] != 'Z'
    except OSError:
        return False


def _same_as_ref(folder: Path, ref: Path):
    for name in (INDEX_NAME, 'index.arrays'):
        assert (folder / name).read_bytes() == (ref / name).read_bytes()
    assert verify_shards(folder) == []


def test_second_build_into_the_same_folder_is_refused(raw, ref, tmp_path):
    first = _start(raw, tmp_path, '--workers', '1')
    try:
        _wait_commits(first)
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-build, lock taken
        second = run_build_cli(*_args(raw, tmp_path, '--workers', '1'))
        assert second.returncode == 2 and 'Traceback' not in second.stderr
        info = second.stderr
        assert f'pid {first.pid}' in info and os.uname().nodename in info and 'build_lmdb.py' in info
        # --overwrite with other parameters must not delete a folder another build holds
        shards_before = sorted(p.name for p in (tmp_path / 'VID').glob('shard-*'))
        third = run_build_cli(*_args(raw, tmp_path, '--workers', '1', '--overwrite', '--jpeg-quality', '80'))
        assert third.returncode == 2 and f'pid {first.pid}' in third.stderr
        assert sorted(p.name for p in (tmp_path / 'VID').glob('shard-*')) == shards_before
        verify = run_build_cli('--dataset', 'VID', '--out', tmp_path, '--verify-only')
        assert verify.returncode == 2 and f'pid {first.pid}' in verify.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    _same_as_ref(tmp_path / 'VID', ref)


def _assert_one_clean_line(proc, err: str):
    assert proc.returncode not in (0, None) and proc.returncode > 0, (proc.returncode, err)
    assert 'Traceback' not in err and 'BrokenPipe' not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert 'rerun' in lines[0]


def _stalled_copy(raw, where: Path, video: int = 5) -> tuple:
    """A copy of `raw` whose video `video` starts with a named pipe instead of its first JPEG: the
    crop worker that opens it waits for a writer that never comes, so the build commits the videos
    before it and can never finish, however late a signal arrives.  Returns (root, the JPEG's path,
    its bytes) to put back before the rerun."""
    root = where / 'raw'
    shutil.copytree(raw, root)
    jpeg = sorted((root / 'Data/VID/train/a').glob(f'v{video:02d}/*.JPEG'))[0]
    data = jpeg.read_bytes()
    jpeg.unlink()
    os.mkfifo(jpeg)
    return root, jpeg, data


@pytest.mark.parametrize('how', ['ctrl-c', 'sigterm', 'worker-killed'])
def test_interrupted_build_ends_in_one_line_and_resumes(raw, ref, tmp_path, how):
    stalled, jpeg, data = _stalled_copy(raw, tmp_path)
    out = tmp_path / 'out'
    proc = _start(stalled, out, '--workers', '2')
    _wait_commits(proc)
    workers = _children(proc.pid)
    if how == 'ctrl-c':
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground job
    elif how == 'sigterm':
        os.kill(proc.pid, signal.SIGTERM)
    else:
        assert workers, 'no crop worker processes found'
        os.kill(workers[-1], signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        state = _process_states(proc.pid)  # for the next hunt: what each process waits on, its signal masks
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f'the build did not end within 120 s of the {how}:\n{state}')
    _assert_one_clean_line(proc, err)
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), 'crop workers outlived the build'
    assert not (out / 'VID' / INDEX_NAME).exists()
    jpeg.unlink()
    jpeg.write_bytes(data)
    again = run_build_cli(*_args(stalled, out, '--workers', '2'))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / 'VID/build_report.json').read_text())['videos_resumed'] >= 1
    _same_as_ref(out / 'VID', ref)


def test_import_of_crops_of_another_size_is_refused(tmp_path):
    crop_dir = tmp_path / 'crop271'
    anno = write_crop511(crop_dir, VID_TRACKS[:2], seed=1)
    first = sorted(crop_dir.rglob('*.x.jpg'))[3]
    for p in sorted(crop_dir.rglob('*.x.jpg')):
        img = cv2.imread(str(p))
        cv2.imwrite(str(p), cv2.resize(img, (271, 271)))
    proc = run_build_cli('--dataset', 'VID', '--from-crop511', crop_dir, '--anno', anno, '--out', tmp_path / 'o',
                         '--workers', '1', '--no-progress')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    assert '271x271' in proc.stderr and '511x511' in proc.stderr and str(first.parent) in proc.stderr
    assert not (tmp_path / 'o/VID' / INDEX_NAME).exists()


def test_import_with_one_odd_crop_names_it(tmp_path):
    crop_dir = tmp_path / 'crop511'
    anno = write_crop511(crop_dir, VID_TRACKS[:2], seed=1)
    odd = sorted(crop_dir.rglob('*.x.jpg'))[5]
    cv2.imwrite(str(odd), np.zeros((511, 400, 3), np.uint8))
    proc = run_build_cli('--dataset', 'VID', '--from-crop511', crop_dir, '--anno', anno, '--out', tmp_path / 'o',
                         '--workers', '1', '--no-progress')
    assert proc.returncode == 2 and str(odd) in proc.stderr and '400x511' in proc.stderr, proc.stderr
    with pytest.raises(ShardError, match='missing'):
        ShardReader(tmp_path / 'o/VID')
