"""Shard folders with realistic values, for benchmarks of the read path and the index: `make_shards`
over `realistic_crops`."""
from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..fileio import atomic_write
from ..ingest.crop_worker import CropParams
from ..ingest.index import assemble_index, write_index
from ..ingest.writer import ShardSetWriter
from ..crop import box_on_crop
from ..shards import ShardIndex, encode_mask
from .datasets import canonical_name


def realistic_crops(n: int, seed: int = 0, size: int = 511) -> list:
    """`n` distinct size x size JPEGs (quality 95) of about 30-35 KB, the size of real training crops:
    a smooth colour field with faint luminance noise (flat synthetic crops are 5-10x smaller)."""
    rng = np.random.default_rng([seed, 0x5EED])
    out = []
    for _ in range(int(n)):
        field = cv2.resize(rng.integers(0, 256, (4, 4, 3)).astype(np.uint8), (size, size),
                           interpolation=cv2.INTER_CUBIC).astype(np.float32)
        noise = rng.normal(0, rng.uniform(0.4, 0.6), (size, size, 1)).astype(np.float32)
        img = np.clip(field + noise, 0, 255).astype(np.uint8)
        out.append(cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return out


def realistic_masks(n: int, seed: int = 0, size: int = 511) -> list:
    """`n` distinct (PNG, region) masks as `pipeline.shards.encode_mask` stores them: an irregular
    blob centred in the crop, as large as an object of 20-300 px per side is in a SiamFC crop
    (`box_on_crop`), its outline an ellipse with a wavy radius."""
    rng = np.random.default_rng([seed, 0x3A5C])
    out = []
    for _ in range(int(n)):
        w, h = rng.uniform(20, 300, 2)
        x1, y1, x2, y2 = box_on_crop((0, 0, w, h), size)
        angle = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        radius = 1 + 0.12 * np.sin(rng.integers(2, 6) * angle + rng.uniform(0, 2 * np.pi))
        pts = np.stack([(x1 + x2) / 2 + (x2 - x1) / 2 * radius * np.cos(angle),
                        (y1 + y2) / 2 + (y2 - y1) / 2 * radius * np.sin(angle)], 1)
        mask = np.zeros((size, size), np.uint8)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, cv2.LINE_AA, 4)
        out.append(encode_mask(mask))
    return out


def _synthetic_layout(entries: int, per_track: int, tracks_per_video: int):
    """(video_track_start, track_entry_start) of `entries` entries in tracks of `per_track`."""
    n_tracks = -(-entries // per_track)
    track_start = np.minimum(np.arange(n_tracks + 1, dtype=np.int64) * per_track, entries)
    n_videos = -(-n_tracks // tracks_per_video)
    video_start = np.minimum(np.arange(n_videos + 1, dtype=np.int64) * tracks_per_video, n_tracks)
    return video_start, track_start


def make_shards(out_dir, entries: int, dataset: str = 'VID', distinct: int = 256, alias: bool = False,
                per_track: int = 50, tracks_per_video: int = 2, shard_size: int = 4 << 30, seed: int = 0,
                overwrite: bool = False, progress: bool = False, masks: bool = False) -> dict:
    """A complete shard folder ``out_dir/<dataset>/`` (format of `pipeline.shards`) of `entries` crops
    whose values are `distinct` realistic 511 JPEGs (`realistic_crops`) repeated: videos of
    `tracks_per_video` tracks of `per_track` frames, random boxes.

    alias=False: every entry is its own LMDB key and value, written by the real shard writer and indexed
    by the real index assembly (100k entries = about 3.3 GB).  alias=True: only the `distinct` values
    are stored and the index's entries point at them (byte ranges and CRCs of those values): a
    10M-entry index in seconds, for measuring the index and the reader; `--verify` does not apply.
    masks=True: every entry also has a mask (`realistic_masks`, the one of its value), as COCO and
    YouTube-VOS folders do (alias=False only).  Returns {'folder', 'entries', 'bytes', 'seconds'}.
    """
    start = time.perf_counter()
    name = canonical_name(dataset)
    folder = Path(out_dir) / name
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f'{folder} is not empty (pass overwrite=True / --force to replace it)')
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, distinct = int(entries), max(1, min(int(distinct), int(entries)))
    rng = np.random.default_rng([seed, entries])
    if masks and alias:
        raise ValueError('make_shards: masks=True needs alias=False')
    crops = realistic_crops(distinct, seed)
    crcs = [zlib.crc32(c) for c in crops]
    mask_values = realistic_masks(distinct, seed) if masks else None
    video_start, track_start = _synthetic_layout(entries, per_track, tracks_per_video)
    videos = len(video_start) - 1
    names = [f'synth/{v:08d}' for v in range(videos)]
    wh = rng.uniform(20, 300, (entries, 2))
    xy = rng.uniform(0, 1000, (entries, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    params = {'format_version': 2, 'dataset': name, 'mode': 'synthetic', 'entries': entries, 'distinct': distinct,
              'alias': bool(alias), 'seed': int(seed)}
    if masks:
        params['masks'] = True
    atomic_write(folder / 'build_params.json', json.dumps(params, indent=1))
    meta = {'dataset': name, 'crop': CropParams().to_dict(), 'synthetic': params}
    writer = ShardSetWriter(folder, shard_size)
    bar = tqdm(total=entries if not alias else distinct, unit='crop', desc=f'{name} shards',
               disable=not progress, leave=False)
    try:
        if alias:
            writer.write({'video': 'pool', 'tracks': [[0, list(range(distinct)), [0.0, 0.0, 1.0, 1.0] * distinct]],
                          'jpegs': [crops], 'crcs': [crcs], 'drops': {}, 'files': []})
            bar.update(distinct)
        else:
            for v in range(videos):
                tracks, jpegs, tcrcs = [], [], []
                for t in range(int(video_start[v]), int(video_start[v + 1])):
                    e0, e1 = int(track_start[t]), int(track_start[t + 1])
                    tracks.append([t - int(video_start[v]), list(range(e1 - e0)), boxes[e0:e1].ravel().tolist()])
                    jpegs.append([crops[e % distinct] for e in range(e0, e1)])
                    tcrcs.append([crcs[e % distinct] for e in range(e0, e1)])
                result = {'video': names[v], 'tracks': tracks, 'jpegs': jpegs, 'crcs': tcrcs, 'drops': {}, 'files': []}
                if masks:
                    values = [[mask_values[e % distinct] for e in range(int(track_start[t]), int(track_start[t + 1]))]
                              for t in range(int(video_start[v]), int(video_start[v + 1]))]
                    result.update(masks=[[m[0] for m in ms] for ms in values],
                                  mask_boxes=[[m[1] for m in ms] for ms in values],
                                  mask_crcs=[[zlib.crc32(m[0]) for m in ms] for ms in values])
                writer.write(result)
                bar.update(int(track_start[video_start[v + 1]] - track_start[video_start[v]]))
    finally:
        writer.close()
        bar.close()
    if not alias:
        index, _, _ = assemble_index(folder, writer.shard_paths(), meta, names,
                                     masks={'source': 'synthetic (realistic_masks)'} if masks else None)
        return dict(folder=str(folder), entries=entries, bytes=index['counts']['bytes'],
                    seconds=time.perf_counter() - start)
    # alias: the pool's byte ranges from its (real) index, then entries that point at them
    pool, _, _ = assemble_index(folder, writer.shard_paths(), meta, ['pool'])
    pool_index = ShardIndex(folder)
    value = np.arange(entries) % distinct
    offsets = pool_index.arrays['entry_offset'][value]
    lengths = pool_index.arrays['entry_length'][value]
    n_tracks = len(track_start) - 1
    name_bytes = np.frombuffer(''.join(names).encode(), np.uint8)
    arrays = {
        'video_track_start': video_start, 'track_entry_start': track_start,
        'track_ids': np.arange(n_tracks) - np.repeat(video_start[:-1], np.diff(video_start)),
        'entry_frame': np.arange(entries) - np.repeat(track_start[:-1], np.diff(track_start)),
        'entry_box': boxes, 'entry_shard': np.zeros(entries, np.uint16), 'entry_offset': offsets,
        'entry_length': lengths, 'entry_crc': np.asarray(crcs, np.uint32)[value],
        'video_name_start': np.arange(videos + 1) * len(names[0]), 'video_name_bytes': name_bytes,
        'video_name_order': np.arange(videos)}
    del pool_index
    counts = {'videos': videos, 'tracks': n_tracks, 'entries': entries, 'shards': 1, 'bytes': int(lengths.sum())}
    write_index(folder, {**meta, 'counts': counts, 'shards': pool['shards']}, arrays)
    return dict(folder=str(folder), entries=entries, bytes=counts['bytes'], seconds=time.perf_counter() - start)
