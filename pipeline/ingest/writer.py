"""Resumable, deterministic writer of per-video crop results into bounded-size LMDB shards.

Videos are committed strictly in build order, one LMDB transaction per video holding its crops, its
commit marker (``v/<seq>``: the video's tracks, frames, boxes and, per crop, its byte range in
data.mdb and the CRC32 the crop worker took; for a dataset with masks also each mask's flag, PNG
length, CRC32 and region, the PNG stored right after the JPEG in the crop's value) and the shard's running payload counter (``m/bytes``)
and digest (``m/digest`` = sha256(previous digest + marker bytes)).  Checksums are recorded here,
once, and only ever compared afterwards.  A video goes into the current shard unless the shard
already holds data and the video would push its payload past ``shard_size``; then a new shard
starts.  The assignment depends only on the (deterministic) crop bytes, and LMDB allocates pages
deterministically for the same sequence of commits, so a killed and resumed build produces the same
shards, offsets and index as an uninterrupted one.  Nothing is kept in memory per committed video.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import struct
import zlib
from array import array
from contextlib import contextmanager
from pathlib import Path

import lmdb
import msgpack

from .. import fileio
from ..shards import (DATA_FILE, SHARD_PREFIX, ShardError, check_shard_file, entry_key, lmdb_value_offset,
                      marker_key, open_shard_env, release_read_env, repair_hint, shard_name, shared_read_env)
from .spec import BuildError

BYTES_KEY = b'm/bytes'
DIGEST_KEY = b'm/digest'
MARKER_PREFIX = b'v/'
META_KEYS = 2  # m/bytes, m/digest
MAP_HEADROOM = 64 << 20
NEW_SHARD_RESERVE = 1 << 20  # free bytes a new shard needs beyond its payload (lock file, meta pages)
# what reading a damaged shard's LMDB records and markers raises (bad pages, bytes, missing or bad fields)
DAMAGE_ERRORS = (lmdb.Error, msgpack.UnpackException, ValueError, KeyError, TypeError)

__all__ = ['BuildError', 'ShardSetWriter', 'chain_digest', 'entry_values', 'iter_markers', 'mask_marker_fields',
           'read_commits', 'is_disk_full', 'disk_full_error']


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
        return fileio.free_bytes(path) < need
    except OSError:
        return False


def disk_full_error(path: Path, e: Exception) -> BuildError:
    try:
        free = f'{fileio.free_bytes(path) / 2**20:.0f} MiB free'
    except OSError:
        free = 'free space unknown'
    return BuildError(f'output disk full while writing {path} ({free}): {e}. Free some space and rerun the '
                      f'same command; the build resumes from the last committed video.')


def entry_values(result: dict) -> list:
    """The LMDB value of each crop of a video result, in entry order: the JPEG bytes, followed by the
    PNG of its mask when the result has masks (None or b'' adds nothing)."""
    jpegs = [j for js in result['jpegs'] for j in js]
    if 'masks' not in result:
        return jpegs
    return [j + (m or b'') for j, m in zip(jpegs, (m for ms in result['masks'] for m in ms))]


def mask_marker_fields(result: dict) -> dict:
    """The commit-marker fields of a video result with masks (see `pipeline.shards.MASK_ARRAYS`):
    per entry a flag (has a mask), the PNG length, its CRC32 and its region x, y, w, h in the crop."""
    masks = [m for ms in result['masks'] for m in ms]
    return {'mask_flags': bytes(int(m is not None) for m in masks),
            'mask_lengths': array('I', [len(m or b'') for m in masks]).tobytes(),
            'mask_crcs': array('I', [c for cs in result['mask_crcs'] for c in cs]).tobytes(),
            'mask_boxes': array('H', [v for bs in result['mask_boxes'] for b in bs for v in b]).tobytes()}


def chain_digest(previous: bytes, marker: bytes) -> bytes:
    """A shard's running digest after committing `marker` (sha256 chain over its markers)."""
    return hashlib.sha256(previous + marker).digest()


def iter_markers(txn):
    """(raw bytes, unpacked marker) of a shard's commit markers, in commit order."""
    cursor = txn.cursor()
    if cursor.set_range(MARKER_PREFIX):
        for k, v in cursor.iternext(keys=True, values=True):
            if not bytes(k).startswith(MARKER_PREFIX):
                break
            raw = bytes(v)
            yield raw, msgpack.unpackb(raw, raw=False)


@contextmanager
def read_commits(path):
    """The committed state of one shard: ``(payload bytes, recorded digest, iter_markers)``.

    Damage found while the caller reads (a truncated file, LMDB or msgpack errors, missing or bad
    marker fields) is raised as BuildError naming the shard and its repair; the shard's shared read
    handle is released at the end.
    """
    try:
        with shared_read_env(path).begin() as txn:  # checks the file against truncation first
            yield int((txn.get(BYTES_KEY) or b'0').decode()), txn.get(DIGEST_KEY) or b'', iter_markers(txn)
    except ShardError as e:
        raise BuildError(str(e)) from None
    except DAMAGE_ERRORS as e:
        raise BuildError(f'shard {path} is damaged ({type(e).__name__}: {e}); {repair_hint(path)}') from None
    finally:
        release_read_env(path)


def _unborn(shard: Path) -> bool:
    """A shard folder whose data.mdb never got its LMDB header (killed while being created)."""
    try:
        with open(shard / DATA_FILE, 'rb') as f:
            head = f.read(20)
    except FileNotFoundError:
        return True
    return len(head) < 20 or struct.unpack_from('<I', head, 16)[0] != 0xBEEFC0DE


class ShardSetWriter:
    """Appends video results to shards in ``out_dir``; `committed` counts the videos already there."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir = Path(out_dir)
        self.shard_size = int(shard_size)
        self.committed = 0    # videos committed = the build-order position of the next one
        self.cur = 0
        self.cur_bytes = 0
        self.cur_digest = b''
        self._env = None
        self._psize = 0

    def shard_paths(self) -> list:
        """This build's shard folders, in shard order."""
        return sorted(p for p in self.out_dir.glob(f'{SHARD_PREFIX}*') if p.is_dir())

    def scan(self):
        """Yield the names of the committed videos in build order, shard by shard (one shard's
        markers mapped at a time), and set the state to continue after the last one."""
        paths = self.shard_paths()
        for i, p in enumerate(paths):
            if p.name != shard_name(i):
                raise BuildError(f'{self.out_dir}: unexpected shard folder {p.name} (expected {shard_name(i)}); '
                                 f'use --overwrite to start a fresh build')
            if i == len(paths) - 1 and _unborn(p):  # killed while creating the newest shard: nothing in it
                shutil.rmtree(p)
                break
            with read_commits(p) as (nbytes, digest, markers):
                for _, m in markers:
                    if m.get('seq') != self.committed:
                        raise BuildError(f'{p}: commit marker {m.get("seq")} where {self.committed} was expected: '
                                         f'the shard is damaged; {repair_hint(p)}')
                    yield m['video']
                    self.committed += 1
            self.cur, self.cur_bytes, self.cur_digest = i, nbytes, digest

    def _open(self, i: int, need: int):
        if self._env is not None and self.cur == i:
            return self._env
        self.close()
        path = self.out_dir / shard_name(i)
        map_size = 2 * max(self.shard_size, need) + MAP_HEADROOM
        release_read_env(path)
        if path.exists():
            try:
                check_shard_file(path)
            except ShardError as e:
                raise BuildError(str(e)) from None
        # LMDB memory-maps a new shard's sparse lock file: on a full disk the first touch is a SIGBUS.
        elif fileio.free_bytes(self.out_dir) < need + NEW_SHARD_RESERVE:
            raise disk_full_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        try:
            self._env = open_shard_env(path, readonly=False, map_size=map_size)
        except (lmdb.Error, OSError) as e:
            if is_disk_full(e):
                raise disk_full_error(path, e) from None
            raise
        if self._env.info()['map_size'] < map_size:
            self._env.set_mapsize(map_size)
        self._psize = self._env.stat()['psize']
        self.cur = i
        return self._env

    def write(self, result: dict) -> int:
        """Commit one video's crops (each LMDB value: the JPEG, then its mask's PNG if any) and marker
        atomically; returns its shard index."""
        video = result['video']
        values = entry_values(result)
        payload = sum(len(v) for v in values)
        i, digest = self.cur, self.cur_digest
        if self.cur_bytes > 0 and self.cur_bytes + payload > self.shard_size:
            i, self.cur_bytes, digest = self.cur + 1, 0, b''
        env = self._open(i, payload)
        tracks = result['tracks']
        marker = {'video': video, 'seq': self.committed,
                  'track_ids': array('i', [t[0] for t in tracks]).tobytes(),
                  'track_len': array('i', [len(t[1]) for t in tracks]).tobytes(),
                  'frames': array('i', [f for t in tracks for f in t[1]]).tobytes(),
                  'boxes': array('f', [b for t in tracks for b in t[2]]).tobytes(),
                  'lengths': array('I', [len(j) for js in result['jpegs'] for j in js]).tobytes(),
                  'crcs': array('I', [c for cs in result['crcs'] for c in cs]).tobytes(),
                  'offsets': b'', 'drops': result['drops'], 'files': result['files']}
        if 'masks' in result:  # only then: markers of datasets without masks stay as they were
            marker.update(mask_marker_fields(result))
        new_bytes = self.cur_bytes + payload
        keys = [entry_key(video, tid, f) for tid, frames, _ in tracks for f in frames]
        while True:
            try:
                fileio.check_room(self.out_dir / shard_name(i) / DATA_FILE, payload)
                with env.begin(write=True, buffers=True) as txn:
                    offsets = array('Q')
                    for key, value in zip(keys, values):
                        txn.put(key, value)
                        offsets.append(lmdb_value_offset(txn.get(key), len(key), self._psize))
                    marker['offsets'] = offsets.tobytes()
                    raw = msgpack.packb(marker, use_bin_type=True)
                    new_digest = chain_digest(digest, raw)
                    txn.put(marker_key(self.committed), raw)
                    txn.put(BYTES_KEY, str(new_bytes).encode())
                    txn.put(DIGEST_KEY, new_digest)
                break
            except lmdb.MapFullError:
                env.set_mapsize(env.info()['map_size'] * 2)  # our accounting is approximate; grow and retry
            except (lmdb.Error, OSError) as e:
                path = self.out_dir / shard_name(i)
                if is_disk_full(e, path, payload):
                    raise disk_full_error(path, e) from None
                raise
        self._check_readback(i, offsets, values, result)
        self.cur_bytes, self.cur_digest = new_bytes, new_digest
        self.committed += 1
        return i

    def _check_readback(self, i: int, offsets: array, values: list, result: dict):
        """The first value stored at a byte range, read back from there, must be the value written,
        and its JPEG part must match the worker's CRC."""
        jpegs = [(len(j), c) for js, cs in zip(result['jpegs'], result['crcs']) for j, c in zip(js, cs)]
        for off, value, (n, c) in zip(offsets, values, jpegs):
            if off:
                fd = os.open(self.out_dir / shard_name(i) / DATA_FILE, os.O_RDONLY)
                try:
                    ok = os.pread(fd, len(value), off) == value and zlib.crc32(value[:n]) == c
                finally:
                    os.close(fd)
                if not ok:
                    raise BuildError(f'{self.out_dir / shard_name(i)}: video {result["video"]} cannot be read back at '
                                     f'its recorded offset {off}; this LMDB build lays values out differently')
                return

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None
