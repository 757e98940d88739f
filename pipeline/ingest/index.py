"""The index (format version 2, see `pipeline.shards`) from the shards' commit markers.

`assemble_index` reads the markers only (never a crop), one shard at a time, in build order, and
streams each index array into its own temporary file, so its memory does not grow with the dataset
(the names are sorted at the end: one string per video).  Each shard's markers are checked against
the digest recorded when they were committed; a mismatch stops the build (the shard is damaged).
`write_index` packs the arrays into ``index.arrays`` (64-byte aligned) and writes ``index.msgpack``
last, both atomically.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np

from .. import fileio
from ..shards import (ARRAY_ALIGN, ARRAYS_NAME, FORMAT_VERSION, INDEX_ARRAYS, INDEX_NAME, MASK_ARRAYS, StringTable,
                      repair_hint)
from .spec import BuildError
from .writer import chain_digest, disk_full_error, is_disk_full, read_commits

PARTS_NAME = 'index.parts.tmp'
CHECKSUMS = {'crc32': 'per crop, of the JPEG bytes the crop worker produced, taken before writing',
             'shard_digest': "sha256 chain over the shard's commit markers, recorded in each commit"}
MASK_CHECKSUM = 'per mask, of the PNG bytes the crop worker produced, taken before writing'
ALL_ARRAYS = {**INDEX_ARRAYS, **MASK_ARRAYS}
_COPY_CHUNK = 16 << 20


class ArraySpool:
    """One append-only temporary file per index array (constant memory, whatever the dataset size).
    The mask arrays are opened by `start_masks`, at the first video with masks."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.counts = dict.fromkeys(INDEX_ARRAYS, 0)
        self._files = {}
        for name in INDEX_ARRAYS:
            self._files[name] = fileio.open_for_write(folder / name, buffering=1 << 20)

    @property
    def has_masks(self) -> bool:
        return 'entry_has_mask' in self._files

    def start_masks(self, entries: int):
        """Open the mask arrays, with `entries` entries without a mask before this point."""
        for name in MASK_ARRAYS:
            self._files[name] = fileio.open_for_write(self.folder / name, buffering=1 << 20)
            self.counts[name] = 0
        self.append_no_masks(entries)

    def append_no_masks(self, n: int):
        for name in ('entry_has_mask', 'entry_mask_length', 'entry_mask_crc'):
            self.append(name, np.zeros(n, ALL_ARRAYS[name]))
        self.append('entry_mask_box', np.zeros(4 * n, ALL_ARRAYS['entry_mask_box']))

    def append(self, name: str, data):
        a = np.asarray(data, dtype=np.dtype(ALL_ARRAYS[name]))
        self._files[name].write(memoryview(np.ascontiguousarray(a)).cast('B'))
        self.counts[name] += a.size

    def close(self):
        for f in self._files.values():
            f.close()

    def array(self, name: str) -> np.ndarray:
        """A spooled array read back (for the small ones: the names)."""
        return np.fromfile(self.folder / name, dtype=np.dtype(ALL_ARRAYS[name]))


def _shape(name: str, count: int) -> list:
    return [count // 4, 4] if name in ('entry_box', 'entry_mask_box') else [count]


def write_index(folder: Path, meta: dict, sources: dict) -> dict:
    """Write ``index.arrays`` from `sources` ({name: ndarray, or Path of a raw file of that dtype}:
    every INDEX_ARRAYS name, plus the MASK_ARRAYS for a folder with masks, which come after them) and
    then ``index.msgpack`` (meta + the table of arrays), both atomically; returns the full meta."""
    folder = Path(folder)
    (folder / INDEX_NAME).unlink(missing_ok=True)  # never an old index.msgpack next to new arrays
    path = folder / ARRAYS_NAME
    tmp = path.with_name(path.name + '.tmp')
    table, offset, digest = {}, 0, hashlib.sha256()
    try:
        with fileio.open_for_write(tmp) as f:
            for name, dtype in ALL_ARRAYS.items():
                if name not in sources and name in MASK_ARRAYS:
                    continue
                pad = -offset % ARRAY_ALIGN
                f.write(b'\0' * pad)
                digest.update(b'\0' * pad)
                offset += pad
                src = sources[name]
                itemsize = np.dtype(dtype).itemsize
                if isinstance(src, (str, os.PathLike)):
                    nbytes = 0
                    with open(src, 'rb') as part:
                        while chunk := part.read(_COPY_CHUNK):
                            f.write(chunk)
                            digest.update(chunk)
                            nbytes += len(chunk)
                else:
                    buf = memoryview(np.ascontiguousarray(src, dtype=np.dtype(dtype))).cast('B')
                    f.write(buf)
                    digest.update(buf)
                    nbytes = buf.nbytes
                table[name] = {'dtype': np.dtype(dtype).str, 'shape': _shape(name, nbytes // itemsize),
                               'offset': offset}
                offset += nbytes
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    meta = {'format_version': FORMAT_VERSION, **meta, 'checksums': meta.get('checksums', CHECKSUMS),
            'arrays_file': ARRAYS_NAME, 'arrays_bytes': offset, 'arrays_sha256': digest.hexdigest(), 'arrays': table}
    try:
        fileio.atomic_write(folder / INDEX_NAME, msgpack.packb(meta, use_bin_type=True))
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(folder / INDEX_NAME, e) from None
        raise
    return meta


def _spool_video(spool: ArraySpool, m: dict, shard: int, totals: dict):
    track_ids = np.frombuffer(m['track_ids'], np.int32)
    track_len = np.frombuffer(m['track_len'], np.int32)
    n = int(track_len.sum())
    spool.append('track_ids', track_ids)
    spool.append('track_entry_start', totals['entries'] + np.cumsum(track_len))
    spool.append('entry_frame', np.frombuffer(m['frames'], np.int32))
    spool.append('entry_box', np.frombuffer(m['boxes'], np.float32))
    spool.append('entry_shard', np.full(n, shard, np.uint16))
    spool.append('entry_offset', np.frombuffer(m['offsets'], np.uint64))
    spool.append('entry_length', np.frombuffer(m['lengths'], np.uint32))
    spool.append('entry_crc', np.frombuffer(m['crcs'], np.uint32))
    if 'mask_flags' in m:
        if not spool.has_masks:
            spool.start_masks(totals['entries'])
        spool.append('entry_has_mask', np.frombuffer(m['mask_flags'], np.uint8))
        spool.append('entry_mask_length', np.frombuffer(m['mask_lengths'], np.uint32))
        spool.append('entry_mask_crc', np.frombuffer(m['mask_crcs'], np.uint32))
        spool.append('entry_mask_box', np.frombuffer(m['mask_boxes'], np.uint16))
    elif spool.has_masks:
        spool.append_no_masks(n)
    name = m['video'].encode()
    totals['entries'] += n
    totals['tracks'] += len(track_ids)
    totals['name_bytes'] += len(name)
    spool.append('video_name_bytes', np.frombuffer(name, np.uint8))
    spool.append('video_name_start', [totals['name_bytes']])
    spool.append('video_track_start', [totals['tracks']])


def assemble_index(out_dir: Path, shard_paths: list, meta: dict, expected_names=None, masks=None) -> tuple:
    """Build the index of `out_dir` from its shards' markers.  `expected_names[seq]` (optional) is the
    video each marker must hold.  `masks`: what the masks are (a dict for index.msgpack's 'masks'),
    recorded when some marker holds masks; the mask arrays exist then only.  Returns (index meta,
    Counter of drops, list of bad-input files)."""
    parts = out_dir / PARTS_NAME
    shutil.rmtree(parts, ignore_errors=True)
    try:
        return _assemble(out_dir, parts, shard_paths, meta, expected_names, masks)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(parts, e) from None
        raise
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def _assemble(out_dir: Path, parts: Path, shard_paths: list, meta: dict, expected_names, masks) -> tuple:
    drops, files, shards = Counter(), [], []
    totals = {'entries': 0, 'tracks': 0, 'name_bytes': 0, 'videos': 0}
    seq = 0
    parts.mkdir()
    spool = ArraySpool(parts)
    try:
        for name in ('video_track_start', 'track_entry_start', 'video_name_start'):
            spool.append(name, [0])
        for i, path in enumerate(shard_paths):
            first_entry = totals['entries']
            digest = b''
            with read_commits(path) as (payload, recorded, markers):
                for raw, m in markers:
                    digest = chain_digest(digest, raw)
                    if m['seq'] != seq or (expected_names is not None and m['video'] != expected_names[seq]):
                        raise BuildError(f'{path}: commit marker {m["seq"]} ({m["video"]}) is not video {seq} '
                                         f'of this build: the shard is damaged; {repair_hint(path)}')
                    seq += 1
                    drops.update(m['drops'])
                    files.extend(m['files'])
                    if m['track_ids']:
                        _spool_video(spool, m, i, totals)
                        totals['videos'] += 1
            if digest != recorded:
                raise BuildError(f'shard {path}: its commit markers do not match the digest recorded when they '
                                 f'were committed: the shard is damaged; {repair_hint(path)}')
            shards.append({'name': Path(path).name, 'entries': totals['entries'] - first_entry,
                           'bytes': payload, 'digest': recorded.hex()})
    finally:
        spool.close()
    if expected_names is not None and seq != len(expected_names):
        raise BuildError(f'{out_dir}: {seq} of {len(expected_names)} videos are committed; rerun the build')
    names = StringTable(spool.array('video_name_bytes'), spool.array('video_name_start'))
    sources = {name: parts / name for name in INDEX_ARRAYS}
    sources['video_name_order'] = names.sorted_order()
    del names
    counts = {'videos': totals['videos'], 'tracks': totals['tracks'], 'entries': totals['entries'],
              'shards': len(shards), 'bytes': sum(s['bytes'] for s in shards)}
    meta = {**meta, 'counts': counts, 'shards': shards, 'checksums': CHECKSUMS}
    if spool.has_masks:
        sources.update({name: parts / name for name in MASK_ARRAYS})
        counts['masks'] = int(np.count_nonzero(spool.array('entry_has_mask')))
        meta['masks'] = dict(masks or {})
        meta['checksums'] = {**CHECKSUMS, 'mask_crc32': MASK_CHECKSUM}
    full = write_index(out_dir, meta, sources)
    return full, drops, files
