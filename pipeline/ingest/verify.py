"""Re-read a built shard folder and compare it with what was recorded when it was built.

Nothing is recomputed to agree: each shard's commit markers are chained and compared with the
digest recorded in the shard (``m/digest``) and in the index; every crop is read back through its
LMDB key, must sit at the byte range the index records and match the CRC32 the crop worker took; the
index arrays must match the markers and the sha256 recorded for ``index.arrays``.  A damaged shard
(truncated file, overwritten pages) is named with how to repair it; checking goes on with the next.
"""
from __future__ import annotations

import hashlib
import random
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..shards import (ARRAYS_NAME, CorruptCropError, ShardError, ShardIndex, ShardReader, decode_mask, entry_key,
                      lmdb_value_offset, read_index_meta, release_read_env, repair_hint, shared_read_env)
from .crop_worker import decode
from .writer import BYTES_KEY, DAMAGE_ERRORS, DIGEST_KEY, META_KEYS, chain_digest, iter_markers

MAX_PER_SHARD = 10  # problems listed per shard (the rest are counted)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Cursor:
    """Walks the index in build order alongside the shards' markers."""

    def __init__(self, arrays: dict):
        self.a = arrays
        self.video = 0

    def seek_shard(self, shard: int):
        """Position at the first video of `shard` (so a damaged shard does not shift the next ones)."""
        a = self.a
        e = int(np.searchsorted(a['entry_shard'], shard))
        if e < len(a['entry_shard']):
            t = int(np.searchsorted(a['track_entry_start'], e, side='right')) - 1
            self.video = int(np.searchsorted(a['video_track_start'], t, side='right')) - 1

    def compare(self, m: dict, shard: int) -> list:
        """Fields of marker `m` (a video with tracks) that differ from the index; advances."""
        a, v = self.a, self.video
        if v + 1 >= len(a['video_track_start']):
            return ['the index has fewer videos than the shards']
        self.video += 1
        t0, t1 = int(a['video_track_start'][v]), int(a['video_track_start'][v + 1])
        e0, e1 = int(a['track_entry_start'][t0]), int(a['track_entry_start'][t1])
        name = a['video_name_bytes'][int(a['video_name_start'][v]):int(a['video_name_start'][v + 1])].tobytes()
        wrong = [] if name == m['video'].encode() else ['video name']
        got = {'track_ids': a['track_ids'][t0:t1], 'track_len': np.diff(a['track_entry_start'][t0:t1 + 1]),
               'frames': a['entry_frame'][e0:e1], 'boxes': a['entry_box'][e0:e1].ravel(),
               'offsets': a['entry_offset'][e0:e1], 'lengths': a['entry_length'][e0:e1], 'crcs': a['entry_crc'][e0:e1]}
        dtypes = {'track_ids': np.int32, 'track_len': np.int32, 'frames': np.int32, 'boxes': np.float32,
                  'offsets': np.uint64, 'lengths': np.uint32, 'crcs': np.uint32}
        if 'entry_has_mask' in a:
            got.update({'mask_flags': a['entry_has_mask'][e0:e1], 'mask_lengths': a['entry_mask_length'][e0:e1],
                        'mask_crcs': a['entry_mask_crc'][e0:e1], 'mask_boxes': a['entry_mask_box'][e0:e1].ravel()})
            dtypes.update({'mask_flags': np.uint8, 'mask_lengths': np.uint32, 'mask_crcs': np.uint32,
                           'mask_boxes': np.uint16})
        elif 'mask_flags' in m:
            wrong.append('masks (the index has none)')
        for k, dt in dtypes.items():
            if k not in m:  # a video without masks in a folder with masks: all zero in the index
                want = np.zeros(len(got[k]), dt)
            else:
                want = np.frombuffer(m[k], dt)
            if len(want) != len(got[k]) or not np.array_equal(want, got[k].astype(dt)):
                wrong.append(k)
        if not np.all(a['entry_shard'][e0:e1] == shard):
            wrong.append('shard')
        return wrong


def _check_shard(i: int, s: dict, path: Path, cursor: _Cursor, bar, damaged: set) -> list:
    """Problems of one shard (markers vs digests vs index, every crop vs its CRC and byte range);
    the keys of damaged crops are added to `damaged`."""
    problems = []
    extra = 0

    def problem(text):
        nonlocal extra
        if len(problems) < MAX_PER_SHARD:
            problems.append(text)
        else:
            extra += 1

    env = shared_read_env(path)  # ShardError for a truncated or headerless file
    psize = env.stat()['psize']
    cursor.seek_shard(i)
    with env.begin(buffers=True) as txn:
        recorded = bytes(txn.get(DIGEST_KEY) or b'')
        payload = int(bytes(txn.get(BYTES_KEY) or b'0').decode())
        chain, markers, entries = b'', 0, 0
        for raw, m in iter_markers(txn):
            chain = chain_digest(chain, raw)
            markers += 1
            if not m['track_ids']:
                continue
            wrong = cursor.compare(m, i)
            if wrong:
                problem(f'{path.name}: video {m["video"]}: the index differs from its commit marker in {", ".join(wrong)}')
            tids = np.frombuffer(m['track_ids'], np.int32)
            lens = np.frombuffer(m['track_len'], np.int32)
            frames = np.frombuffer(m['frames'], np.int32)
            offsets, lengths = np.frombuffer(m['offsets'], np.uint64), np.frombuffer(m['lengths'], np.uint32)
            crcs = np.frombuffer(m['crcs'], np.uint32)
            masks = 'mask_flags' in m
            if masks:
                mask_lengths, mask_crcs = np.frombuffer(m['mask_lengths'], np.uint32), np.frombuffer(m['mask_crcs'], np.uint32)
            k = 0
            for tid, n in zip(tids.tolist(), lens.tolist()):
                for f in frames[k:k + n].tolist():
                    key = entry_key(m['video'], tid, f)
                    value = txn.get(key)
                    if value is None:
                        damaged.add(key)
                        problem(f'{path.name}: crop {key.decode()} is missing')
                    else:
                        if lmdb_value_offset(value, len(key), psize) != int(offsets[k]):
                            problem(f'{path.name}: crop {key.decode()} is not at the byte range its index records '
                                    f'(the value was rewritten after the build)')
                        n = int(lengths[k])
                        crc = zlib.crc32(value[:n])
                        tail = len(value) - n
                        if tail != (int(mask_lengths[k]) if masks else 0) or crc != int(crcs[k]):
                            damaged.add(key)
                            problem(f'{path.name}: crop {key.decode()}: crc32 {crc:08x} / {min(len(value), n)} bytes '
                                    f'(+{tail}), but {int(crcs[k]):08x} / {n} bytes were recorded at build (damaged data)')
                        elif masks and zlib.crc32(value[n:]) != int(mask_crcs[k]):
                            damaged.add(key)
                            problem(f'{path.name}: mask of crop {key.decode()}: crc32 {zlib.crc32(value[n:]):08x}, but '
                                    f'{int(mask_crcs[k]):08x} was recorded at build (damaged data)')
                        bar.update(len(value))
                    k += 1
            entries += k
    stored = env.stat()['entries']
    if chain != recorded:
        problem(f'{path.name}: its commit markers do not match the digest recorded at commit (damaged markers)')
    if recorded.hex() != s.get('digest'):
        problem(f'{path.name}: digest {recorded.hex()[:16]}... differs from the index\'s {str(s.get("digest"))[:16]}...')
    for what, got, want in (('entries', entries, s.get('entries')), ('payload bytes', payload, s.get('bytes')),
                            ('LMDB records', stored, entries + markers + META_KEYS)):
        if got != want:
            problem(f'{path.name}: {what} {got}, expected {want}')
    if extra:
        problems.append(f'{path.name}: ... and {extra} more problems')
    if problems:
        problems[-1] += f'; {repair_hint(path)}'
    return problems


def verify_shards(folder, sample: int = 64, seed: int = 0, progress: bool = False) -> list:
    """Return a list of problems (empty = OK)."""
    folder = Path(folder)
    try:
        meta = read_index_meta(folder)
        index = ShardIndex(folder, check_shards=False)
    except ShardError as e:
        return [str(e)]
    problems = []
    if _file_sha256(folder / ARRAYS_NAME) != meta.get('arrays_sha256'):
        problems.append(f'{folder / ARRAYS_NAME}: sha256 differs from the one recorded in the index (damaged index)')
    a = index.arrays
    c = meta['counts']
    for name, n in (('entries', len(a['entry_frame'])), ('tracks', len(a['track_ids'])),
                    ('videos', len(a['video_track_start']) - 1)):
        if c[name] != n:
            problems.append(f'counts.{name} is {c[name]} but the index arrays hold {n}')
    cursor = _Cursor(a)
    damaged, damaged_crops = False, set()
    with tqdm(total=int(c.get('bytes', 0)), unit='B', unit_scale=True, desc=f'verify {folder.name}',
              disable=not progress, dynamic_ncols=True) as bar:
        for i, s in enumerate(meta['shards']):
            path = folder / s['name']
            try:
                problems += _check_shard(i, s, path, cursor, bar, damaged_crops)
            except ShardError as e:
                problems.append(str(e))
                damaged = True
            except DAMAGE_ERRORS as e:
                problems.append(f'shard {path} is damaged ({type(e).__name__}: {e}); {repair_hint(path)}')
                damaged = True
            finally:
                release_read_env(path)
    if not damaged and cursor.video != len(a['video_track_start']) - 1:
        problems.append(f'the index lists {len(a["video_track_start"]) - 1} videos, the shards hold {cursor.video}')
    if not damaged:
        problems += _decode_sample(folder, sample, seed, damaged_crops)
    return problems


def _decode_sample(folder: Path, sample: int, seed: int, known: set = frozenset()) -> list:
    """Read (CRC-checked) and decode a random sample of crops, and their masks, as training does;
    crops whose keys are in `known` (reported already) are left out."""
    r = ShardReader(folder)
    size = r.meta['crop']['crop_size']
    problems = []
    for e in random.Random(seed).sample(range(len(r)), min(sample, len(r))):
        if entry_key(*r.entry_location(e)) in known:
            continue
        try:
            img = decode(r.jpeg_at(e))
            mask = r.mask_at(e) if r.entry_has_mask[e] else None
        except CorruptCropError as err:
            problems.append(str(err))
            continue
        key = entry_key(*r.entry_location(e)).decode()
        if img is None or img.shape != (size, size, 3):
            problems.append(f'crop {key} does not decode to {size}x{size}x3')
        if mask is not None and not mask_fits(*mask, size):
            problems.append(f'mask of crop {key} does not decode to a {{0, 255}} image of its region {mask[1]} '
                            f'inside the {size}x{size} crop')
    return problems


def mask_fits(png: bytes, region: tuple, size: int) -> bool:
    """A stored mask decodes to a {0, 255} image of its region's size inside the crop, the region
    touching the mask's pixels on every side (a tight box); an empty mask has no bytes and region 0."""
    if not png:
        return tuple(region) == (0, 0, 0, 0)
    try:
        full = decode_mask(png, region, size)
    except ValueError:
        return False
    x, y, w, h = region
    m = full[y:y + h, x:x + w]
    on = m > 0
    return bool(np.all((m == 0) | (m == 255)) and on[0].any() and on[-1].any() and on[:, 0].any()
                and on[:, -1].any())
