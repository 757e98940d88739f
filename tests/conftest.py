"""Fixtures shared by several test modules: small real file systems and synthetic VID shards."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quiet(cmd, **kw):
    """subprocess.run with the output captured as text."""
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _mount_tmpfs(where: Path, size: int, remount: bool = False):
    opts = f'remount,size={size}' if remount else f'size={size}'
    return run_quiet(['mount', '-t', 'tmpfs', '-o', opts, 'tmpfs', str(where)])


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) mounts a tmpfs of `size` bytes (again: resizes it in place); unmounted at teardown."""
    where = tmp_path / 'tmpfs'
    where.mkdir()
    mounted = []

    def mount(size: int) -> Path:
        if shutil.which('mount') is None:
            pytest.skip('no mount command: cannot make a small real filesystem')
        r = _mount_tmpfs(where, size, remount=bool(mounted))
        if r.returncode != 0:
            if not mounted:
                pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}')
            raise RuntimeError(f'tmpfs resize failed: {r.stderr.strip()}')
        mounted.append(size)
        return where

    yield mount
    if mounted:
        r = run_quiet(['umount', str(where)])
        if r.returncode != 0:
            run_quiet(['umount', '-l', str(where)])


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
