"""Re-read a built shard folder: checksums, counts, index/shard consistency and a decoded sample."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..shards import ShardError, ShardReader, entry_key
from .crop_worker import decode
from .writer import shard_digest


def verify_shards(folder, sample: int = 64, seed: int = 0) -> list:
    """Return a list of problems (empty = OK)."""
    folder = Path(folder)
    try:
        r = ShardReader(folder)
    except ShardError as e:
        return [str(e)]
    problems = []
    listed = r.meta['shards']
    for i, s in enumerate(listed):
        got = shard_digest(folder / s['name'])
        for k in ('entries', 'bytes', 'sha256'):
            if got[k] != s[k]:
                problems.append(f'{s["name"]}: {k} is {got[k]} but the index says {s[k]}')
        n_index = int(np.sum(r.entry_shard == i))
        if got['entries'] != n_index:
            problems.append(f'{s["name"]}: holds {got["entries"]} crops, the index assigns {n_index} to it')
    c = r.meta['counts']
    for name, n in (('entries', len(r.entry_frame)), ('tracks', len(r.track_ids)), ('videos', len(r.video_names))):
        if c[name] != n:
            problems.append(f'counts.{name} is {c[name]} but the index arrays hold {n}')
    rng = random.Random(seed)
    picks = rng.sample(range(len(r)), min(sample, len(r))) if len(r) else []
    size = r.meta['crop']['crop_size']
    for e in picks:
        try:
            data = r.jpeg_at(e)
        except (ShardError, KeyError) as err:
            problems.append(str(err))
            continue
        img = decode(data)
        if img is None or img.shape != (size, size, 3):
            problems.append(f'crop {entry_key(*r.entry_location(e)).decode()} does not decode to {size}x{size}x3')
    r.close()
    return problems
