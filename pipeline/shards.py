"""Read-only access to a dataset's LMDB crop shards (written by `pipeline.ingest`): the format, version 2.

A dataset folder (e.g. ``cache/VID``) holds:

* ``shard-NNNNN/data.mdb`` - LMDB environments of bounded size.  Key ``e/<video>/<track>/<frame>``
  holds the JPEG bytes of one 511x511 crop, followed (datasets with masks) by the PNG of its mask;
  ``v/<seq>`` (12 digits: the video's position in build
  order) the video's commit marker; ``m/bytes`` and ``m/digest`` the shard's payload bytes and its
  running digest (see `pipeline.ingest.writer`).
* ``index.arrays`` - the index arrays, raw little-endian, each at a 64-byte aligned offset.  They are
  memory-mapped read-only, so every process of a node shares one copy through the page cache.
* ``index.msgpack`` - small metadata (dataset, crop parameters, counts, shards with their recorded
  digests, the table of arrays); written last and atomically: its presence means "complete".
* ``build_params.json``, ``build_report.json``, ``build.lock`` (see `pipeline.ingest`).

Reads do not go through LMDB: the index records each crop's byte range in its shard's data.mdb
(LMDB keeps large values in overflow pages that are never moved once committed) and its CRC32,
taken from the bytes the crop worker produced.  `ShardReader.jpeg_at` is one ``os.pread`` (which
releases the GIL) plus a CRC check; a damaged or truncated file gives `CorruptCropError`, never a
SIGBUS.  Values small enough to live inside a B-tree page (offset 0 in the index) are read through
LMDB, after the same file-size check.

Masks (COCO and YouTube-VOS builds; `MASK_ARRAYS`, absent from older folders and from datasets
without masks).  The reader contract, which the data pipeline codes against:

* ``ShardReader.has_masks``: True when the index records masks;
* ``ShardReader.entry_has_mask``: bool array (E,), True where the entry has a stored mask (all
  False when `has_masks` is False);
* ``ShardReader.mask_at(e) -> (png, (x, y, w, h))``: the PNG (``cv2.imencode('.png')`` of a
  single-channel uint8 array of values {0, 255}) of the mask's tight bounding region inside the
  511 crop, and that region in crop pixels: crop pixel (x + i, y + j) is PNG pixel (i, j); every
  crop pixel outside the region is 0.  A mask that is empty after thresholding is
  ``(b"", (0, 0, 0, 0))``.  CRC32-checked like `jpeg_at` (`CorruptCropError` naming shard and key);
  `ShardError` for an entry without a mask.
* ``ShardReader.jpeg_and_mask_at(e) -> (jpeg, (png, (x, y, w, h)) or None)``: both in one read.

The PNG is stored in the same LMDB value as the crop, right after the JPEG bytes, so it lies at
``entry_offset + entry_length`` in data.mdb (one more ``pread``, or the same one as the JPEG).  Only
the mask's bounding region is stored, so decoding costs in proportion to the object, not the crop.
"""
from __future__ import annotations

import bisect
import collections
import collections.abc
import ctypes
import json
import mmap
import os
import shlex
import struct
import threading
import weakref
import zlib
from array import array
from pathlib import Path

import cv2
import lmdb
import msgpack
import numpy as np

FORMAT_VERSION = 2
INDEX_NAME = 'index.msgpack'
ARRAYS_NAME = 'index.arrays'
PARAMS_NAME = 'build_params.json'
SHARD_PREFIX = 'shard-'
DATA_FILE = 'data.mdb'
ARRAY_ALIGN = 64

# Config dataset names (PySOT's cfg.DATASET.NAMES) -> shard folder names.
CONFIG_TO_FOLDER = {'VID': 'VID', 'YOUTUBEBB': 'YTB', 'YTB': 'YTB', 'COCO': 'COCO', 'DET': 'DET',
                    'GOT10K': 'GOT10K', 'LASOT': 'LASOT', 'YTBVOS': 'YTBVOS'}
# Arrays of index.arrays with their dtypes (V videos, T tracks, E entries, N name bytes).
INDEX_ARRAYS = {
    'video_track_start': '<i8',   # V+1: tracks of video v are [start[v], start[v+1])
    'track_entry_start': '<i8',   # T+1: entries of track t, frames ascending
    'track_ids': '<i4',           # T: object id of each track (one id can have several runs)
    'entry_frame': '<i4',         # E
    'entry_box': '<f4',           # E x 4: original-image x1, y1, x2, y2
    'entry_shard': '<u2',         # E
    'entry_offset': '<u8',        # E: byte offset of the JPEG in its shard's data.mdb; 0 = inside a B-tree page
    'entry_length': '<u4',        # E: JPEG bytes
    'entry_crc': '<u4',           # E: CRC32 of the JPEG bytes, taken when the crop was made
    'video_name_start': '<i8',    # V+1: name of video v is name_bytes[start[v]:start[v+1]] (UTF-8)
    'video_name_bytes': '|u1',    # N
    'video_name_order': '<i4',    # V: video indices sorted by the bytes of their names (lookup by name)
}
# Optional arrays of datasets with masks: all present or none (then the folder has no masks).  The
# mask's PNG follows the JPEG in the entry's LMDB value.
MASK_ARRAYS = {
    'entry_has_mask': '|u1',      # E: 1 where the entry has a stored mask
    'entry_mask_length': '<u4',   # E: PNG bytes (0: the mask is empty after thresholding, or no mask)
    'entry_mask_crc': '<u4',      # E: CRC32 of the PNG bytes, taken when the mask was made
    'entry_mask_box': '<u2',      # E x 4: x, y, w, h of the PNG's region in the crop
}

# Kernel readahead on the shard files.  'random': a read fetches its crop's pages and nothing more.
# Measured (tools/bench_shards.py, 20k realistic crops, cold, ext4 with read_ahead_kb 8192): as fast as
# 'normal' (+5%) with 9% fewer bytes from storage; 'normal' can read up to read_ahead_kb past a crop
# when reads look sequential.  Read-ahead of what training will need is done with prefetch() instead.
READ_ADVICE = 'random'
_ADVICE = {'normal': 'POSIX_FADV_NORMAL', 'random': 'POSIX_FADV_RANDOM', 'sequential': 'POSIX_FADV_SEQUENTIAL'}

# LMDB on-disk layout (0.9.x, 64-bit): a 16-byte page header (pgno u64, pad u16, flags u16, pages u32);
# meta pages 0 and 1 hold magic, version, ..., the free DB (whose md_pad stores the page size),
# the main DB, last_pgno and txnid.
_PAGE_HEADER = 16
_META_MAGIC = 0xBEEFC0DE
_META_MAGIC_AT, _META_PSIZE_AT, _META_LAST_AT = 16, 16 + 24, 16 + 120
_P_OVERFLOW, _P_DIRTY = 0x04, 0x10
_NODE_HEADER = 8


class ShardError(RuntimeError):
    """A shard folder or its index is missing, incomplete, damaged or of an unknown format."""


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


def marker_key(seq: int) -> bytes:
    """LMDB key of the commit marker of the video at position `seq` of the build order."""
    return f'v/{int(seq):012d}'.encode()


def shard_name(i: int) -> str:
    return f'{SHARD_PREFIX}{i:05d}'


# ---- the mask codec (see the module docstring) ------------------------------------------------------
def encode_mask(mask: np.ndarray) -> tuple[bytes, tuple[int, int, int, int]]:
    """(PNG, (x, y, w, h)) of a crop's binary mask (2-D, nonzero = object): the tight bounding region
    of the nonzero pixels as a {0, 255} uint8 PNG; ``(b'', (0, 0, 0, 0))`` for an empty mask."""
    on = np.asarray(mask) != 0
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    if rows.size == 0:
        return b'', (0, 0, 0, 0)
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    good, buf = cv2.imencode('.png', on[y0:y1, x0:x1].astype(np.uint8) * np.uint8(255))
    if not good:
        raise RuntimeError('PNG encoding of a mask failed')
    return buf.tobytes(), (x0, y0, x1 - x0, y1 - y0)


def decode_mask(png: bytes, region, size: int) -> np.ndarray:
    """The full size x size uint8 {0, 255} mask of a crop from `mask_at`'s (PNG, region).  ValueError
    if the PNG does not decode to the region's size inside the crop."""
    out = np.zeros((size, size), np.uint8)
    x, y, w, h = (int(v) for v in region)
    if not png:
        return out
    m = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if m is None or m.shape != (h, w) or x + w > size or y + h > size:
        got = 'nothing' if m is None else 'x'.join(str(v) for v in m.shape[::-1])
        raise ValueError(f'mask PNG decodes to {got}, expected {w}x{h} at ({x}, {y}) in a {size}x{size} crop')
    out[y:y + h, x:x + w] = m
    return out


# ---- compact string lists -----------------------------------------------------------------------
class StringTable(collections.abc.Sequence):
    """Read-only list of str stored as UTF-8 bytes + offsets (numpy arrays, e.g. memory-mapped).

    With `order` (indices sorted by the encoded names) `find` is a binary search, no dict built.
    """

    def __init__(self, data: np.ndarray, starts: np.ndarray, order: np.ndarray | None = None):
        self._data, self._starts, self._order = data, starts, order

    def __len__(self) -> int:
        return len(self._starts) - 1

    def encoded(self, i: int) -> bytes:
        return self._data[int(self._starts[i]):int(self._starts[i + 1])].tobytes()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        i = int(i) + (n if i < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f'name index {i} out of range [0, {n})')
        return self.encoded(i).decode()

    def find(self, name: str) -> int:
        """Index of `name`, or -1."""
        want = name.encode()
        if self._order is None:
            return next((i for i in range(len(self)) if self.encoded(i) == want), -1)
        order = self._order
        k = bisect.bisect_left(range(len(order)), want, key=lambda j: self.encoded(order[j]))
        return int(order[k]) if k < len(order) and self.encoded(order[k]) == want else -1

    def index(self, name, start=0, stop=None):
        i = self.find(name)
        if i < start or (stop is not None and i >= stop):
            raise ValueError(f'{name!r} is not in the list')
        return i

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self.find(name) >= 0

    def sorted_order(self) -> np.ndarray:
        """Indices sorted by the encoded names (what `order` must be)."""
        return np.array(sorted(range(len(self)), key=self.encoded), dtype=np.int64)


class StringTableBuilder:
    """Appends strings into one growing UTF-8 buffer; `finish` -> StringTable (no copy)."""

    def __init__(self):
        self._data = bytearray()
        self._starts = array('q', [0])

    def __len__(self) -> int:
        return len(self._starts) - 1

    def append(self, s: str) -> int:
        self._data += s.encode()
        self._starts.append(len(self._data))
        return len(self._starts) - 2

    def finish(self) -> StringTable:
        return StringTable(np.frombuffer(self._data, np.uint8), np.frombuffer(self._starts, np.int64))


# ---- LMDB file checks (no mapping, so no SIGBUS) --------------------------------------------------
def rebuild_command(folder) -> str:
    """The build_lmdb.py command that built `folder` (from its build_params.json), or a placeholder."""
    folder = Path(folder)
    try:
        p = json.loads((folder / PARAMS_NAME).read_text())
        args = ['python', 'tools/build_lmdb.py', '--dataset', p['dataset']]
        if p.get('mode') == 'crop511':
            args += ['--from-crop511', p['crop511'], '--anno', p['anno']]
        else:
            args += ['--root', p['root']]
        args += ['--out', str(folder.parent)]
        if int(p.get('shard_size', 4 << 30)) != 4 << 30:
            args += ['--shard-size', str(p['shard_size'])]
        quality = p.get('crop', {}).get('jpeg_quality', 95)
        if quality != 95:
            args += ['--jpeg-quality', str(quality)]
        cmd = shlex.join(args)
        if p.get('exclude'):
            cmd += f' --exclude FILE  # FILE: the {len(p["exclude"])} names under "exclude" in {folder / PARAMS_NAME}'
        return cmd
    except (OSError, ValueError, KeyError, TypeError):
        return f'python tools/build_lmdb.py --dataset {folder.name} --root <raw root> --out {folder.parent}'


def repair_hint(shard) -> str:
    shard = Path(shard)
    cmd = rebuild_command(shard.parent)
    return (f'repair: delete {shard} and every later {SHARD_PREFIX}* folder, then rerun `{cmd}` (it rebuilds from '
            f'that shard on), or rebuild everything with `{cmd} --overwrite`')


def _read_meta(fd: int, at: int):
    head = os.pread(fd, _META_LAST_AT + 16, at)
    if len(head) < _META_LAST_AT + 16 or struct.unpack_from('<I', head, _META_MAGIC_AT)[0] != _META_MAGIC:
        return None
    psize = struct.unpack_from('<I', head, _META_PSIZE_AT)[0]
    last, txnid = struct.unpack_from('<QQ', head, _META_LAST_AT)
    return psize, last, txnid


def check_shard_file(shard) -> int:
    """Raise ShardError unless ``shard/data.mdb`` holds every page its LMDB meta pages reference (a
    truncated file would make LMDB touch pages past its end: SIGBUS).  Returns the page size.
    Reads the two meta pages with pread; maps nothing."""
    shard = Path(shard)
    path = shard / DATA_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ShardError(f'shard {shard} is unreadable: {path}: {e.strerror}; {repair_hint(shard)}') from None
    try:
        size = os.fstat(fd).st_size
        first = _read_meta(fd, 0)
        metas = [m for m in (first, _read_meta(fd, first[0]) if first else None) if m]
    except OSError as e:
        raise ShardError(f'shard {shard} is unreadable: {path}: {e.strerror}; {repair_hint(shard)}') from None
    finally:
        os.close(fd)
    if not metas:
        raise ShardError(f'shard {shard} is damaged: {path} ({size} bytes) has no valid LMDB header; '
                         f'{repair_hint(shard)}')
    psize = metas[0][0]
    need = (max(m[1] for m in metas) + 1) * psize
    if size < need:
        raise ShardError(f'shard {shard} is truncated: {path} has {size} bytes, but its LMDB header says it '
                         f'holds {need} ({need // psize} pages of {psize}); {repair_hint(shard)}')
    return psize


def lmdb_value_offset(value: memoryview, key_len: int, psize: int) -> int:
    """Byte offset in data.mdb of a value LMDB keeps in overflow pages, from a buffer that LMDB
    returned for it (``begin(buffers=True)``; a committed page or a dirty page of the current write
    transaction): the value follows the 16-byte header of its first overflow page, which records the
    page number.  0 for a value stored inside a B-tree leaf page (its place moves with every write)."""
    n = len(value)
    nodemax = (((psize - _PAGE_HEADER) // 2) & ~1) - 2
    if _NODE_HEADER + key_len + n + 2 <= nodemax:  # LMDB's own rule: small nodes stay in the leaf
        return 0
    addr = np.frombuffer(value, np.uint8).ctypes.data
    pgno, _, flags, pages = struct.unpack('<QHHI', ctypes.string_at(addr - _PAGE_HEADER, _PAGE_HEADER))
    if flags & ~_P_DIRTY != _P_OVERFLOW or pages != (_PAGE_HEADER - 1 + n) // psize + 1:
        raise ShardError(f'unexpected LMDB page layout (flags {flags:#x}, {pages} pages for {n} bytes): '
                         f'this LMDB build stores values differently; reads by offset are not possible')
    return pgno * psize + _PAGE_HEADER


# ---- the index (loaded once per process, shared by the node through the page cache) -------------------
def _index_identity(path: Path):
    # ctime too: a folder replaced by a copy that keeps mtimes (shutil.copytree) can reuse the old
    # index file's inode, and only ctime then tells the new file from the one the cache holds.
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size


def _require_index(folder: Path) -> Path:
    if not folder.is_dir():
        raise ShardError(f'shard folder {folder} does not exist; build it with tools/build_lmdb.py')
    path = folder / INDEX_NAME
    if not path.is_file():
        partial = any(p.name.startswith(SHARD_PREFIX) for p in folder.iterdir())
        hint = ('the build is incomplete (shards but no index): rerun the same build_lmdb.py command to resume'
                if partial else 'no build found: run tools/build_lmdb.py')
        raise ShardError(f'{path} is missing; {hint}')
    return path


def read_index_meta(folder) -> dict:
    """index.msgpack of a shard folder, validated (ShardError with the reason and the repair)."""
    folder = Path(folder)
    path = _require_index(folder)
    try:
        meta = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types for truncated/garbled input
        raise ShardError(f'{path} is not a valid msgpack index ({e}); rebuild: {rebuild_command(folder)} '
                         f'--overwrite') from None
    version = meta.get('format_version') if isinstance(meta, dict) else type(meta).__name__
    if version == 1:
        raise ShardError(f'{path}: shard format version 1 (built by an older siamtrain); this code reads version '
                         f'{FORMAT_VERSION} (memory-mapped index with per-crop checksums). Rebuild the dataset: '
                         f'{rebuild_command(folder)} --overwrite')
    if version != FORMAT_VERSION:
        raise ShardError(f'{path}: unknown shard format version {version!r}; this code reads version {FORMAT_VERSION}')
    missing = [k for k in ('dataset', 'crop', 'counts', 'shards', 'arrays', 'arrays_bytes') if k not in meta]
    missing += [f'arrays.{k}' for k in INDEX_ARRAYS if k not in meta.get('arrays', {})]
    masks = [k for k in MASK_ARRAYS if k in meta.get('arrays', {})]
    if masks:
        missing += [f'arrays.{k}' for k in MASK_ARRAYS if k not in masks]
    if missing:
        raise ShardError(f'{path} is incomplete: missing {", ".join(missing)}')
    return meta


class ShardIndex:
    """One folder's index: metadata, the memory-mapped arrays and one file descriptor per shard.
    Shared by every ShardReader of the folder in this process (see `load_index`)."""

    def __init__(self, folder: Path, check_shards: bool = True):
        self.folder = folder
        meta = read_index_meta(folder)
        path = folder / ARRAYS_NAME
        try:
            with open(path, 'rb') as f:
                size = os.fstat(f.fileno()).st_size
                if size != meta['arrays_bytes']:
                    raise ShardError(f'{path} has {size} bytes, the index says {meta["arrays_bytes"]}: the file is '
                                     f'damaged; rebuild: {rebuild_command(folder)} --overwrite')
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ShardError(f'{path} is unreadable ({e.strerror}); rebuild: {rebuild_command(folder)} '
                             f'--overwrite') from None
        self.arrays = {}
        try:
            for name, spec in meta['arrays'].items():
                shape = tuple(spec['shape'])
                count = int(np.prod(shape))
                self.arrays[name] = np.frombuffer(self._map, np.dtype(spec['dtype']), count,
                                                  spec['offset']).reshape(shape)
        except (ValueError, KeyError, TypeError) as e:
            raise ShardError(f'{folder / INDEX_NAME}: its table of arrays does not fit {path} ({e}); rebuild: '
                             f'{rebuild_command(folder)} --overwrite') from None
        self._check_shapes(meta)
        self.meta = {k: meta[k] for k in ('format_version', 'dataset', 'crop', 'counts', 'shards')}
        self.meta['checksums'] = meta.get('checksums', {})
        if 'masks' in meta:
            self.meta['masks'] = meta['masks']
        self.names = StringTable(self.arrays['video_name_bytes'], self.arrays['video_name_start'],
                                 self.arrays['video_name_order'])
        self.shard_paths = []
        for s in meta['shards']:
            p = folder / s['name']
            if not p.is_dir():
                raise ShardError(f'{folder / INDEX_NAME} lists shard {s["name"]} but {p} is missing; rebuild: '
                                 f'{rebuild_command(folder)} --overwrite')
            self.shard_paths.append(os.path.realpath(p))
        self.fds = {}
        weakref.finalize(self, _close_fds, self.fds)
        if check_shards:  # every shard checked (and opened) before any read
            for i in range(len(self.shard_paths)):
                self.fd(i)

    def _check_shapes(self, meta):
        a = self.arrays
        v, t, e = len(a['video_track_start']) - 1, len(a['track_entry_start']) - 1, len(a['entry_frame'])
        c = meta['counts']
        ok = (c.get('videos') == v and c.get('tracks') == t and c.get('entries') == e and
              len(a['track_ids']) == t and a['entry_box'].shape == (e, 4) and len(a['video_name_start']) == v + 1
              and len(a['video_name_order']) == v and
              all(len(a[k]) == e for k in ('entry_shard', 'entry_offset', 'entry_length', 'entry_crc')))
        if 'entry_has_mask' in a:
            ok = ok and a['entry_mask_box'].shape == (e, 4) and all(
                len(a[k]) == e for k in ('entry_has_mask', 'entry_mask_length', 'entry_mask_crc'))
        if not ok:
            raise ShardError(f'{self.folder / INDEX_NAME}: the index arrays do not agree with its counts {c}; '
                             f'rebuild: {rebuild_command(self.folder)} --overwrite')

    def fd(self, shard: int) -> int:
        """Read-only descriptor of a shard's data.mdb, checked against truncation when opened."""
        fd = self.fds.get(shard)
        if fd is None:
            path = self.shard_paths[shard]
            check_shard_file(path)
            fd = os.open(os.path.join(path, DATA_FILE), os.O_RDONLY)
            if hasattr(os, 'posix_fadvise'):  # training reads are random: no kernel readahead (see READ_ADVICE)
                os.posix_fadvise(fd, 0, 0, getattr(os, _ADVICE[READ_ADVICE]))
            kept = self.fds.setdefault(shard, fd)  # atomic: a racing thread's descriptor wins or loses whole
            if kept != fd:
                os.close(fd)
            fd = kept
        return fd


def _close_fds(fds: dict):
    while fds:
        try:
            os.close(fds.popitem()[1])
        except OSError:
            pass


_INDEX_CACHE = collections.OrderedDict()  # realpath -> (identity of index.msgpack, ShardIndex)
_INDEX_CACHE_SIZE = 16
_INDEX_LOCK = threading.Lock()


def load_index(folder) -> ShardIndex:
    """The folder's index, loaded once per process: later calls return the same object while
    index.msgpack is unchanged (a rebuild replaces it, so the next call loads the new one).  The
    cache keeps the last 16 folders; an index stays alive while a reader uses it."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    path = _require_index(folder)
    ident = _index_identity(path)
    with _INDEX_LOCK:
        hit = _INDEX_CACHE.get(key)
        if hit is not None and hit[0] == ident:
            _INDEX_CACHE.move_to_end(key)
            return hit[1]
        index = ShardIndex(folder)
        _INDEX_CACHE[key] = (ident, index)
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
        return index


# ---- LMDB handles for values stored inside B-tree pages -------------------------------------------------
# LMDB refuses to open the same environment twice in one process, so all readers in a process share
# one read-only handle per shard.  After fork the inherited handles are closed (read-only and
# lock-free, so this touches only the child's mapping) and reopened.
_READ_ENVS = {}  # realpath -> (pid, Environment)
_ENV_LOCK = threading.Lock()


def _reset_locks_in_child():
    global _ENV_LOCK, _INDEX_LOCK
    _ENV_LOCK, _INDEX_LOCK = threading.Lock(), threading.Lock()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_reset_locks_in_child)


def open_shard_env(path, readonly: bool = True, map_size: int = 1 << 24) -> lmdb.Environment:
    """Open one shard environment; readers are read-only, lock-free and without readahead."""
    if readonly:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=2048, subdir=True)
    return lmdb.open(str(path), map_size=map_size, subdir=True, readahead=False, meminit=False, max_dbs=0)


def shared_read_env(path) -> lmdb.Environment:
    """Process-wide read-only, lock-free handle of one shard environment (fork-safe, thread-safe).
    The file is checked against truncation before LMDB maps it (ShardError)."""
    pid = os.getpid()
    key = os.path.realpath(path)
    hit = _READ_ENVS.get(key)
    if hit is not None and hit[0] == pid:
        return hit[1]
    with _ENV_LOCK:
        hit = _READ_ENVS.get(key)
        if hit is not None and hit[0] == pid:
            return hit[1]
        for k in [k for k, (p, _) in _READ_ENVS.items() if p != pid]:  # first use after a fork
            try:
                _READ_ENVS.pop(k)[1].close()
            except lmdb.Error:
                pass
        check_shard_file(key)
        env = open_shard_env(key)
        _READ_ENVS[key] = (pid, env)
        return env


def release_read_env(path):
    """Close this process's shared handle of a shard (e.g. before deleting or rewriting it)."""
    with _ENV_LOCK:
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


# ---- the reader ----------------------------------------------------------------------------------------
class ShardReader:
    """Read-only view of one dataset's shards: the memory-mapped index arrays and CRC-checked reads.

    Opening costs a msgpack of metadata and one mmap (the index is shared by all readers of the
    folder in this process and by all processes through the page cache).  Safe to share across
    fork; pickles as its folder only (the unpickled reader reopens the index in its process).
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        index = load_index(self.folder)
        self._index = index
        self.meta = index.meta
        for name in ('video_track_start', 'track_entry_start', 'track_ids', 'entry_frame', 'entry_box',
                     'entry_shard', 'entry_offset', 'entry_length', 'entry_crc'):
            setattr(self, name, index.arrays[name])
        self.video_names = index.names
        self.has_masks = 'entry_has_mask' in index.arrays
        if self.has_masks:
            self.entry_has_mask = index.arrays['entry_has_mask'].view(np.bool_)
            self.entry_mask_length = index.arrays['entry_mask_length']
            self.entry_mask_crc = index.arrays['entry_mask_crc']
            self.entry_mask_box = index.arrays['entry_mask_box']
        else:  # read-only views without memory: no entry has a mask
            self.entry_has_mask = np.broadcast_to(np.False_, self.entry_frame.shape)

    def __reduce__(self):
        return ShardReader, (os.path.abspath(self.folder),)

    def __len__(self) -> int:
        return len(self.entry_frame)

    def entry_location(self, e: int) -> tuple:
        """(video, track_id, frame) of entry e."""
        t = int(np.searchsorted(self.track_entry_start, e, side='right')) - 1
        v = int(np.searchsorted(self.video_track_start, t, side='right')) - 1
        return self.video_names[v], int(self.track_ids[t]), int(self.entry_frame[e])

    def _corrupt(self, e: int, shard: int, why: str) -> CorruptCropError:
        key = entry_key(*self.entry_location(e)).decode()
        return CorruptCropError(f'{self._index.shard_paths[shard]}: crop {key} (entry {e}): {why}')

    def jpeg_at(self, e: int) -> bytes:
        """JPEG bytes of the crop of entry e, checked against the CRC32 recorded at build time;
        CorruptCropError (naming shard and key) for a short, damaged or unreadable value.  Whether
        the bytes are a usable crop (complete JPEG, crop size) is `pipeline.crop_check`'s question.
        Thread-safe; the read releases the GIL."""
        e = self._check_entry(e)
        return self._read_part(e, 0, int(self.entry_length[e]), int(self.entry_crc[e]), '')

    def mask_at(self, e: int) -> tuple[bytes, tuple[int, int, int, int]]:
        """(PNG bytes, (x, y, w, h)) of entry e's mask: the single-channel {0, 255} PNG of the mask's
        tight region in the crop and that region in crop pixels (outside it the mask is 0); an empty
        mask is ``(b'', (0, 0, 0, 0))``.  Checked against the CRC32 recorded at build time like
        `jpeg_at` (CorruptCropError naming shard and key); ShardError if the entry has no mask.
        Thread-safe; the read releases the GIL."""
        e = self._check_entry(e)
        if not self.entry_has_mask[e]:
            key = entry_key(*self.entry_location(e)).decode()
            why = 'this entry' if self.has_masks else 'this folder (built without masks)'
            raise ShardError(f'{self.folder}: crop {key} (entry {e}) has no mask: {why} records none')
        size = int(self.entry_mask_length[e])
        box = tuple(int(v) for v in self.entry_mask_box[e])
        if size == 0:
            return b'', box
        return self._read_part(e, int(self.entry_length[e]), size, int(self.entry_mask_crc[e]), 'mask '), box

    def jpeg_and_mask_at(self, e: int) -> tuple:
        """`jpeg_at` and `mask_at` of entry e in one read (the PNG follows the JPEG in data.mdb):
        ``(jpeg, (png, (x, y, w, h)))``, or ``(jpeg, None)`` for an entry without a mask.  Both parts
        CRC-checked (CorruptCropError naming shard and key).  Thread-safe; the read releases the GIL."""
        e = self._check_entry(e)
        if not self.entry_has_mask[e]:
            return self.jpeg_at(e), None
        n, m = int(self.entry_length[e]), int(self.entry_mask_length[e])
        data = self._read_range(e, 0, n + m, '')
        box = tuple(int(v) for v in self.entry_mask_box[e])
        return (self._checked(e, data[:n], int(self.entry_crc[e]), ''),
                (self._checked(e, data[n:], int(self.entry_mask_crc[e]), 'mask '), box))

    def _check_entry(self, e) -> int:
        e = int(e)
        if not 0 <= e < len(self.entry_frame):
            raise IndexError(f'entry {e} out of range [0, {len(self.entry_frame)})')
        return e

    def _read_part(self, e: int, start: int, size: int, crc: int, what: str) -> bytes:
        """Bytes [start, start + size) of entry e's LMDB value (the JPEG at 0, a mask's PNG after it),
        checked against `crc`."""
        return self._checked(e, self._read_range(e, start, size, what), crc, what)

    def _read_range(self, e: int, start: int, size: int, what: str) -> bytes:
        """Bytes [start, start + size) of entry e's LMDB value: one pread at the recorded offset, or
        through LMDB for a value inside a B-tree page."""
        shard, offset = int(self.entry_shard[e]), int(self.entry_offset[e])
        if not offset:
            return self._lmdb_value(e, shard)[start:start + size]
        try:
            data = os.pread(self._index.fd(shard), size, offset + start)
        except (OSError, ShardError) as err:
            raise self._corrupt(e, shard, f'{what}unreadable: {err}') from None
        if len(data) != size:
            raise self._corrupt(e, shard, f'{what}short read: {len(data)} of {size} bytes at offset '
                                          f'{offset + start} (data.mdb is shorter than the index says: truncated?)')
        return data

    def _checked(self, e: int, data: bytes, crc: int, what: str) -> bytes:
        got = zlib.crc32(data)
        if got != crc:
            raise self._corrupt(e, int(self.entry_shard[e]), f'{what}checksum mismatch: crc32 {got:08x}, '
                                                             f'recorded at build {crc:08x}')
        return data

    def _lmdb_value(self, e: int, shard: int) -> bytes:
        key = entry_key(*self.entry_location(e))
        try:
            with shared_read_env(self._index.shard_paths[shard]).begin() as txn:
                data = txn.get(key)
        except (lmdb.Error, ShardError) as err:
            raise self._corrupt(e, shard, f'unreadable shard: {type(err).__name__}: {err}') from None
        if data is None:
            raise self._corrupt(e, shard, 'listed in the index but missing from its shard')
        return data

    def prefetch(self, entries) -> None:
        """Advise the kernel to read these entries' byte ranges ahead (posix_fadvise WILLNEED):
        asynchronous, cheap, callable from any thread; a no-op where unsupported."""
        if not hasattr(os, 'posix_fadvise'):
            return
        e = np.asarray(entries, dtype=np.int64).ravel()
        e = e[(e >= 0) & (e < len(self))]
        if e.size == 0:
            return
        lengths = self.entry_length[e].astype(np.int64)
        if self.has_masks:  # the mask's PNG follows the JPEG
            lengths += self.entry_mask_length[e]
        for s, off, n in zip(self.entry_shard[e].tolist(), self.entry_offset[e].tolist(), lengths.tolist()):
            if off:
                try:
                    os.posix_fadvise(self._index.fd(s), off, n, os.POSIX_FADV_WILLNEED)
                except (OSError, ShardError):
                    pass

    def set_read_advice(self, advice: str) -> None:
        """posix_fadvise on this process's shard descriptors: 'random' (no kernel readahead: the default,
        READ_ADVICE), 'normal' or 'sequential'.  Shared by all readers of the folder in this process."""
        if not hasattr(os, 'posix_fadvise'):
            return
        flag = getattr(os, _ADVICE[advice])
        for s in range(len(self._index.shard_paths)):
            os.posix_fadvise(self._index.fd(s), 0, 0, flag)

    def box_at(self, e: int) -> tuple:
        """Original-image box (x1, y1, x2, y2) of entry e."""
        return tuple(float(v) for v in self.entry_box[e])

    def _entry(self, video: str, track: int, frame: int) -> int:
        """Entry of (video, track, frame) by binary searches: no table of all keys is built."""
        v = self.video_names.find(video)
        if v >= 0:
            for t in range(int(self.video_track_start[v]), int(self.video_track_start[v + 1])):
                if int(self.track_ids[t]) != int(track):
                    continue
                e0, e1 = int(self.track_entry_start[t]), int(self.track_entry_start[t + 1])
                k = e0 + int(np.searchsorted(self.entry_frame[e0:e1], int(frame)))
                if k < e1 and int(self.entry_frame[k]) == int(frame):
                    return k
        raise KeyError(f'{self.folder}: no crop for video={video!r} track={track} frame={frame}')

    def keys(self) -> list:
        """All (video, track, frame) keys in index order (materialises E tuples: for small sets and tools)."""
        out = []
        for v in range(len(self.video_names)):
            name = self.video_names[v]
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

    def mask(self, video: str, track: int, frame: int) -> tuple:
        """`mask_at` of one crop, by name."""
        return self.mask_at(self._entry(video, track, frame))

    def close(self):
        """Release this process's LMDB handles of the shards (the index mapping and the shard
        descriptors are shared by the folder's readers and freed with the last of them)."""
        for path in self._index.shard_paths:
            release_read_env(path)


def open_shard_readers(cfg, root) -> list:
    """One ShardReader per cfg.DATASET.NAMES entry under the shard root (each index loaded once per
    process: readers of a folder share it); clear error for a missing folder."""
    readers = []
    for name in cfg.DATASET.NAMES:
        folder = shard_dir(root, name)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"no shards for dataset {name} (cfg.DATASET.NAMES) in {folder}; build them with "
                f"`python tools/build_lmdb.py --dataset {name} --out {root}`")
        readers.append(ShardReader(folder))
    return readers
