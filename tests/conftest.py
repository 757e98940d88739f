"""Fixtures shared by several test modules: small real file systems and synthetic VID shards."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.fileio import DISK_LIMIT_ENV, open_for_write

ROOT = Path(__file__).resolve().parents[1]


def run_quiet(cmd, **kw):
    """subprocess.run with the output captured as text."""
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _mount_tmpfs(where: Path, size: int, remount: bool = False):
    opts = f'remount,size={size}' if remount else f'size={size}'
    return run_quiet(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(where)])


def skip_unless_ci(reason: str):
    """Skip, except under CI (the CI environment variable set): there a test that cannot run fails."""
    if os.environ.get('CI'):
        pytest.fail(f'{reason} (a skip under CI is a failure)', pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=['tmpfs', 'injected'])
def small_disk(request, tmp_path, monkeypatch):
    """size -> a folder on a file system of `size` bytes in all (called again: resized in place).

    tmpfs: a real small tmpfs (needs mount rights; without them the test is skipped, and fails
    under CI); injected: the disk simulated at the write seam of pipeline/fileio.py
    (SIAMTRAIN_DISK_LIMIT, inherited by subprocesses): the project's own writes (shard
    transactions, index, checkpoints, atomic files) fail with ENOSPC past `size`; runs anywhere.
    """
    where = tmp_path / request.param
    where.mkdir()
    mounted = []

    def injected(size: int) -> Path:
        monkeypatch.setenv(DISK_LIMIT_ENV, f'{int(size)}:{where}')
        return where

    def mount(size: int) -> Path:
        if shutil.which('mount') is None:
            skip_unless_ci('no mount command: cannot make a small real filesystem')
        r = _mount_tmpfs(where, size, remount=bool(mounted))
        if r.returncode != 0:
            if not mounted:
                skip_unless_ci(f'cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}')
            raise RuntimeError(f'tmpfs resize failed: {r.stderr.strip()}')
        mounted.append(size)
        return where

    yield mount if request.param == 'tmpfs' else injected
    if mounted:
        r = run_quiet(['umount', str(where)])
        if r.returncode != 0:
            run_quiet(['umount', '-l', str(where)])


def fill_disk(folder: Path) -> Path:
    """Use up every free byte of the (real or simulated) small disk at `folder`; returns the filler."""
    filler = folder / 'filler'
    with open_for_write(filler, buffering=0) as f:
        with pytest.raises(OSError, match='No space left'):
            while True:
                f.write(b'\0' * (1 << 16))
    return filler


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    """Synthetic VID shards built with the project's own tools."""
    base = tmp_path_factory.mktemp('shards')
    raw, out = base / 'raw', base / 'cache'
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'make_synthetic.py'), '--dataset', 'VID', '--out',
                    str(raw), '--videos', '6', '--frames', '20', '--no-broken'], check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_lmdb.py'), '--dataset', 'VID', '--root', str(raw),
                    '--out', str(out), '--workers', '2', '--no-progress'], check=True, capture_output=True)
    return out


@pytest.fixture(scope='session')
def mask_shards(tmp_path_factory):
    """VID, COCO and YTBVOS shards with COCO's and YTBVOS's masks (mask_fixtures.build_mask_shards),
    built once a session: the loader, GPU-loader and SiamMask training tests only read them."""
    from mask_fixtures import build_mask_shards

    return build_mask_shards(tmp_path_factory.mktemp('mask_shards'))


@pytest.fixture(autouse=True, scope='session')
def sigint_as_in_a_terminal():
    """The Ctrl-C tests send SIGINT to tools started here, which must start as a terminal's job does:
    with SIGINT's default action. A suite started from a script's background job (``cmd &`` without
    job control, under nohup) inherits SIGINT ignored, every child would inherit that too (Python
    leaves an inherited SIG_IGN alone) and those tests would fail for a reason that is not theirs."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
