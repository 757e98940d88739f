"""Read-only access to a dataset's LMDB crop shards (written by `pipeline.build`).

A dataset folder (e.g. ``cache/VID``) holds:

* ``index.msgpack`` - written atomically at the end of a build; its presence means "complete".
  A msgpack map with ``format_version``, ``dataset``, ``crop`` (crop parameters), ``counts``,
  ``shards`` (name, entries, bytes, sha256 per shard), ``video_names`` and ``arrays``: compact
  numpy arrays stored as ``{'dtype', 'shape', 'data'}`` with raw little-endian bytes, loaded
  zero-copy with ``np.frombuffer``.
* ``shard-NNNNN/`` - LMDB environments of bounded size.  Key ``e/<video>/<track>/<frame>`` holds
  the JPEG bytes of one 511x511 crop; ``v/<video>`` the per-video commit marker; ``m/...`` meta.
"""
from __future__ import annotations

import os
from pathlib import Path

import lmdb
import msgpack
import numpy as np

FORMAT_VERSION = 1
INDEX_NAME = 'index.msgpack'
SHARD_PREFIX = 'shard-'

# Config dataset names (PySOT's cfg.DATASET.NAMES) -> shard folder names.
CONFIG_TO_FOLDER = {'VID': 'VID', 'YOUTUBEBB': 'YTB', 'YTB': 'YTB', 'COCO': 'COCO', 'DET': 'DET',
                    'GOT10K': 'GOT10K', 'LASOT': 'LASOT'}
# Arrays the index must hold, with their dtypes (the reader's contract).
INDEX_ARRAYS = {'video_track_start': '<i8', 'track_entry_start': '<i8', 'track_ids': '<i4',
                'entry_frame': '<i4', 'entry_box': '<f4', 'entry_shard': '<u2'}


class ShardError(RuntimeError):
    """A shard folder or its index is missing, incomplete or of an unknown format."""


class CorruptCropError(ShardError):
    """One crop cannot be used: its value is missing, short, fails its checksum, or its shard is
    unreadable.  The loader skips and counts such a crop; the message names the shard and the key."""


def shard_dir(root, cfg_name: str) -> Path:
    """Folder of a dataset's shards under `root` for a config dataset name (YOUTUBEBB -> YTB)."""
    try:
        return Path(root) / CONFIG_TO_FOLDER[cfg_name.upper()]
    except KeyError:
        raise ShardError(f'unknown dataset name {cfg_name!r}; expected one of {sorted(CONFIG_TO_FOLDER)}') from None


def entry_key(video: str, track: int, frame: int) -> bytes:
    """LMDB key of one crop."""
    return f'e/{video}/{int(track)}/{int(frame)}'.encode()


def marker_key(video: str) -> bytes:
    """LMDB key of a video's commit marker."""
    return f'v/{video}'.encode()


def shard_name(i: int) -> str:
    return f'{SHARD_PREFIX}{i:05d}'


def pack_array(a: np.ndarray, dtype: str) -> dict:
    """Array -> msgpack-able {'dtype', 'shape', 'data'} (raw bytes, C order)."""
    a = np.ascontiguousarray(a, dtype=np.dtype(dtype))
    return {'dtype': a.dtype.str, 'shape': list(a.shape), 'data': a.tobytes()}


def unpack_array(d: dict) -> np.ndarray:
    """Inverse of `pack_array`, zero-copy (read-only view on the msgpack bytes)."""
    return np.frombuffer(d['data'], dtype=np.dtype(d['dtype'])).reshape(d['shape'])


def open_shard_env(path, readonly: bool = True, map_size: int = 1 << 24) -> lmdb.Environment:
    """Open one shard environment; readers are read-only, lock-free and without readahead."""
    if readonly:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=2048, subdir=True)
    return lmdb.open(str(path), map_size=map_size, subdir=True, readahead=False, meminit=False,
                     max_dbs=0)


def load_index(folder) -> dict:
    """Load and validate ``index.msgpack`` of a shard folder (raises ShardError with the reason)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ShardError(f'shard folder {folder} does not exist; build it with tools/build_lmdb.py')
    path = folder / INDEX_NAME
    if not path.is_file():
        partial = any(p.name.startswith(SHARD_PREFIX) for p in folder.iterdir())
        hint = ('the build is incomplete (shards but no index): rerun the same build_lmdb.py command to resume'
                if partial else 'no build found: run tools/build_lmdb.py')
        raise ShardError(f'{path} is missing; {hint}')
    try:
        index = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types for truncated/garbled input
        raise ShardError(f'{path} is not a valid msgpack index ({e}); rebuild with --overwrite') from None
    if not isinstance(index, dict) or index.get('format_version') != FORMAT_VERSION:
        got = index.get('format_version') if isinstance(index, dict) else type(index).__name__
        raise ShardError(f'{path}: unknown shard format version {got!r}; this code reads version {FORMAT_VERSION}')
    missing = [k for k in ('dataset', 'crop', 'counts', 'shards', 'video_names', 'arrays') if k not in index]
    missing += [f'arrays.{k}' for k in INDEX_ARRAYS if k not in index.get('arrays', {})]
    if missing:
        raise ShardError(f'{path} is incomplete: missing {", ".join(missing)}')
    for s in index['shards']:
        if not (folder / s['name']).is_dir():
            raise ShardError(f'{path} lists shard {s["name"]} but {folder / s["name"]} is missing')
    return index


# LMDB refuses to open the same environment twice in one process, so all readers in a process share
# one read-only handle per shard.  After fork the inherited handles are closed (read-only and
# lock-free, so this touches only the child's mapping) and reopened.
_READ_ENVS = {}  # realpath -> (pid, Environment)


def shared_read_env(path) -> lmdb.Environment:
    """Process-wide read-only, lock-free handle of one shard environment (fork-safe)."""
    pid = os.getpid()
    hit = _READ_ENVS.get(path) if isinstance(path, str) else None  # already-resolved fast path
    if hit is not None and hit[0] == pid:
        return hit[1]
    key = os.path.realpath(path)
    hit = _READ_ENVS.get(key)
    if hit is not None and hit[0] == pid:
        return hit[1]
    stale = [k for k, (p, _) in _READ_ENVS.items() if p != pid]
    for k in stale:  # first use after a fork: drop every inherited handle
        try:
            _READ_ENVS.pop(k)[1].close()
        except lmdb.Error:
            pass
    env = open_shard_env(key)
    _READ_ENVS[key] = (pid, env)
    return env


def release_read_env(path):
    """Close this process's shared handle of a shard (e.g. before deleting or rewriting it)."""
    hit = _READ_ENVS.pop(os.path.realpath(path), None)
    if hit is not None and hit[0] == os.getpid():
        hit[1].close()


def evict_page_cache(folder) -> int:
    """Drop the cached pages of every file under `folder` (posix_fadvise DONTNEED), so the next
    reads come from storage: a cold-cache measurement.  Returns the bytes advised."""
    total = 0
    for path in sorted(Path(folder).rglob('*')):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages cannot be dropped: write them first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


class ShardReader:
    """Read-only view of one dataset's shards: index arrays plus lazily opened LMDB environments.

    Safe to share across fork: environments are (re)opened on first use in each process.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        index = load_index(self.folder)
        self.video_names = list(index['video_names'])
        arrays = {k: unpack_array(index['arrays'][k]) for k in INDEX_ARRAYS}
        self.video_track_start = arrays['video_track_start']
        self.track_entry_start = arrays['track_entry_start']
        self.track_ids = arrays['track_ids']
        self.entry_frame = arrays['entry_frame']
        self.entry_box = arrays['entry_box']
        self.entry_shard = arrays['entry_shard']
        self.meta = {k: index[k] for k in ('format_version', 'dataset', 'crop', 'counts', 'shards')}
        self._shard_names = [s['name'] for s in index['shards']]
        # resolved once: realpath's syscalls per read cost more than the LMDB get itself
        self._shard_paths = [os.path.realpath(self.folder / n) for n in self._shard_names]
        self._lookup = None

    def __len__(self) -> int:
        return len(self.entry_frame)

    def __getstate__(self):  # picklable (spawn workers); environments are opened lazily per process
        state = self.__dict__.copy()
        state['_lookup'] = None
        return state

    def _txn_env(self, shard: int) -> lmdb.Environment:
        return shared_read_env(self._shard_paths[shard])

    def entry_location(self, e: int) -> tuple:
        """(video, track_id, frame) of entry e."""
        t = int(np.searchsorted(self.track_entry_start, e, side='right')) - 1
        v = int(np.searchsorted(self.video_track_start, t, side='right')) - 1
        return self.video_names[v], int(self.track_ids[t]), int(self.entry_frame[e])

    def jpeg_at(self, e: int) -> bytes:
        """JPEG bytes of the 511x511 crop of entry e."""
        if not 0 <= e < len(self.entry_frame):
            raise IndexError(f'entry {e} out of range [0, {len(self.entry_frame)})')
        key = entry_key(*self.entry_location(e))
        with self._txn_env(int(self.entry_shard[e])).begin(buffers=False) as txn:
            data = txn.get(key)
        if data is None:
            raise ShardError(f'{self.folder}: key {key.decode()} listed in the index is missing from its shard')
        return data

    def box_at(self, e: int) -> tuple:
        """Original-image box (x1, y1, x2, y2) of entry e."""
        return tuple(float(v) for v in self.entry_box[e])

    def _entry(self, video: str, track: int, frame: int) -> int:
        if self._lookup is None:  # keys() lists the entries in index order (CSR arrays from 0)
            self._lookup = {key: e for e, key in enumerate(self.keys())}
        try:
            return self._lookup[(video, int(track), int(frame))]
        except KeyError:
            raise KeyError(f'{self.folder}: no crop for video={video!r} track={track} frame={frame}') from None

    def keys(self) -> list:
        """All (video, track, frame) keys in index order."""
        out = []
        for v, name in enumerate(self.video_names):
            for t in range(self.video_track_start[v], self.video_track_start[v + 1]):
                tid = int(self.track_ids[t])
                out.extend((name, tid, int(f)) for f in
                           self.entry_frame[self.track_entry_start[t]:self.track_entry_start[t + 1]])
        return out

    def box(self, video: str, track: int, frame: int) -> tuple:
        """Original-image box (x1, y1, x2, y2) of one crop."""
        return self.box_at(self._entry(video, track, frame))

    def jpeg(self, video: str, track: int, frame: int) -> bytes:
        """JPEG bytes of one 511x511 crop."""
        return self.jpeg_at(self._entry(video, track, frame))

    def close(self):
        """Release this process's shard handles (shared with other readers of the same folder)."""
        for name in self._shard_names:
            release_read_env(self.folder / name)


def open_shard_readers(cfg, root) -> list:
    """One ShardReader per cfg.DATASET.NAMES entry under the shard root; clear error for a missing folder."""
    readers = []
    for name in cfg.DATASET.NAMES:
        folder = shard_dir(root, name)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"no shards for dataset {name} (cfg.DATASET.NAMES) in {folder}; build them with "
                f"`python tools/build_lmdb.py --dataset {name} --out {root}`")
        readers.append(ShardReader(folder))
    return readers
