"""Resumable, deterministic writer of per-video crop results into bounded-size LMDB shards.

Videos are committed strictly in build order, one LMDB transaction per video holding its crops, its
commit marker (``v/<video>``) and the shard's running payload counter (``m/bytes``).  A video goes
into the current shard unless the shard already holds data and the video would push its payload
past ``shard_size``; then a new shard starts.  The assignment depends only on the (deterministic)
crop bytes, so a killed and resumed build produces the same shards as an uninterrupted one.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import lmdb
import msgpack

from ..shards import (SHARD_PREFIX, entry_key, marker_key, open_shard_env, release_read_env, shard_name,
                      shared_read_env)

BYTES_KEY = b'm/bytes'
MAP_HEADROOM = 64 << 20
NEW_SHARD_RESERVE = 1 << 20  # free bytes a new shard needs beyond its payload (lock file, meta pages)


class BuildError(RuntimeError):
    """A build cannot continue (bad output folder, disk full, ...); the message says what to do."""


def is_disk_full(e: Exception, path=None, need: int = 0) -> bool:
    """True for ENOSPC, and for LMDB's EIO when `path`'s disk has less than `need` bytes free.

    LMDB turns a short write (its "filesystem full?" case, e.g. a full tmpfs) into EIO; the free
    space tells it apart from a real I/O error.
    """
    code = getattr(e, 'errno', None) or getattr(e, 'code', None)  # OSError / lmdb.Error
    if code == errno.ENOSPC or 'No space left' in str(e):
        return True
    if path is None or code != errno.EIO or not isinstance(e, lmdb.Error):
        return False
    try:
        return shutil.disk_usage(path).free < need
    except OSError:
        return False


def disk_full_error(path: Path, e: Exception) -> BuildError:
    try:
        free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free / 2**20
        free = f'{free:.0f} MiB free'
    except OSError:
        free = 'free space unknown'
    return BuildError(f'output disk full while writing {path} ({free}): {e}. Free some space and rerun the '
                      f'same command; the build resumes from the last committed video.')


class ShardSetWriter:
    """Appends video results to shards in ``out_dir``; `done` maps already committed videos to shards."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir = Path(out_dir)
        self.shard_size = int(shard_size)
        self.done = {}       # video -> shard index
        self.markers = {}    # video -> marker dict
        self.cur = 0
        self.cur_bytes = 0
        self._env = None
        self._scan()

    def shard_paths(self) -> list:
        """This build's shard folders, in shard order."""
        return sorted(p for p in self.out_dir.glob(f'{SHARD_PREFIX}*') if p.is_dir())

    def _scan(self):
        paths = self.shard_paths()
        for i, p in enumerate(paths):
            if p.name != shard_name(i):
                raise BuildError(f'{self.out_dir}: unexpected shard folder {p.name} (expected {shard_name(i)}); '
                                 f'use --overwrite to start a fresh build')
            try:
                env = shared_read_env(p)
            except lmdb.Error as e:
                if i == len(paths) - 1:  # killed while creating the newest shard: nothing committed in it
                    shutil.rmtree(p)
                    break
                raise BuildError(f'{p} is not a readable LMDB shard ({e}); use --overwrite to rebuild') from None
            with env.begin() as txn:
                raw = txn.get(BYTES_KEY)
                nbytes = int(raw.decode()) if raw else 0
                # Only the markers: seek to them rather than read every stored crop.
                cursor = txn.cursor()
                if cursor.set_range(b'v/'):
                    for k, v in cursor.iternext(keys=True, values=True):
                        if not k.startswith(b'v/'):
                            break
                        m = msgpack.unpackb(v, raw=False)
                        self.done[m['video']] = i
                        self.markers[m['video']] = m
            release_read_env(p)
            self.cur, self.cur_bytes = i, nbytes

    def _open(self, i: int, need: int):
        if self._env is not None and self.cur == i:
            return self._env
        self.close()
        path = self.out_dir / shard_name(i)
        map_size = 2 * max(self.shard_size, need) + MAP_HEADROOM
        release_read_env(path)
        # LMDB memory-maps a new shard's sparse lock file: on a full disk the first touch is a SIGBUS.
        if not path.exists() and shutil.disk_usage(self.out_dir).free < need + NEW_SHARD_RESERVE:
            raise disk_full_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        try:
            self._env = open_shard_env(path, readonly=False, map_size=map_size)
        except (lmdb.Error, OSError) as e:
            if is_disk_full(e):
                raise disk_full_error(path, e) from None
            raise
        if self._env.info()['map_size'] < map_size:
            self._env.set_mapsize(map_size)
        self.cur = i
        return self._env

    def write(self, result: dict) -> int:
        """Commit one video's crops and marker atomically; returns its shard index."""
        video = result['video']
        payload = sum(len(j) for js in result['jpegs'] for j in js)
        i = self.cur
        if self.cur_bytes > 0 and self.cur_bytes + payload > self.shard_size:
            i, self.cur_bytes = self.cur + 1, 0
        env = self._open(i, payload)
        marker = {k: result[k] for k in ('video', 'tracks', 'drops', 'files')}
        new_bytes = self.cur_bytes + payload
        while True:
            try:
                with env.begin(write=True) as txn:
                    for (tid, frames, _), js in zip(result['tracks'], result['jpegs']):
                        for f, j in zip(frames, js):
                            txn.put(entry_key(video, tid, f), j)
                    txn.put(marker_key(video), msgpack.packb(marker, use_bin_type=True))
                    txn.put(BYTES_KEY, str(new_bytes).encode())
                break
            except lmdb.MapFullError:
                env.set_mapsize(env.info()['map_size'] * 2)  # our accounting is approximate; grow and retry
            except (lmdb.Error, OSError) as e:
                path = self.out_dir / shard_name(i)
                if is_disk_full(e, path, payload):
                    raise disk_full_error(path, e) from None
                raise
        self.cur_bytes = new_bytes
        self.done[video] = i
        self.markers[video] = marker
        return i

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None


def shard_digest(path: Path) -> dict:
    """sha256 over all (key, value) pairs in key order, plus entry count and payload bytes."""
    h = hashlib.sha256()
    entries = payload = 0
    env = shared_read_env(path)
    with env.begin(buffers=True) as txn:
        for k, v in txn.cursor().iternext(keys=True, values=True):
            h.update(len(k).to_bytes(4, 'little'))
            h.update(k)
            h.update(len(v).to_bytes(8, 'little'))
            h.update(v)
            if bytes(k[:2]) == b'e/':
                entries += 1
                payload += len(v)
    return {'name': path.name, 'entries': entries, 'bytes': payload, 'sha256': h.hexdigest()}
