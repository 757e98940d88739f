"""Build orchestration: parse -> crop in a process pool -> ordered shard writes -> index + report."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import cv2
import msgpack
import numpy as np
from tqdm import tqdm

from .. import fileio
from ..shards import FORMAT_VERSION, INDEX_ARRAYS, INDEX_NAME, pack_array
from .crop_worker import CropParams, crop_video_task
from .parsers import parse_crop511, parse_raw, read_exclude_file
from .spec import Exclusion, ParseResult
from .writer import BuildError, ShardSetWriter, disk_full_error, is_disk_full, shard_digest

PARAMS_NAME = 'build_params.json'
REPORT_NAME = 'build_report.json'


def atomic_write(path: Path, data: bytes):
    """`pipeline.fileio.atomic_write`, with a full disk raised as BuildError."""
    try:
        fileio.atomic_write(path, data)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise


def _prepare_out_dir(out_dir: Path, params: dict, overwrite: bool):
    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pfile = out_dir / PARAMS_NAME
    if pfile.exists():
        old = json.loads(pfile.read_text())
        if old != params:
            diff = {k: (_short(old.get(k)), _short(params.get(k)))
                    for k in sorted(set(old) | set(params)) if old.get(k) != params.get(k)}
            raise BuildError(f'{out_dir} holds a build with different parameters {diff} (old, new); '
                             f'rerun with the same arguments to resume, or pass --overwrite to rebuild')
    else:
        atomic_write(pfile, json.dumps(params, indent=1, sort_keys=True).encode())


def _short(value, limit: int = 120):
    """`value`, or a truncated rendering of it if long (e.g. a 280-name exclusion list)."""
    text = json.dumps(value)
    if len(text) <= limit:
        return value
    return text[:limit] + (f'... ({len(value)} items)' if isinstance(value, list) else '...')


def exclude_names(exclude) -> list:
    """Sorted, cleaned video names from a names file (str / PathLike) or an iterable of names."""
    if exclude is None:
        return []
    if isinstance(exclude, (str, os.PathLike)):
        exclude = read_exclude_file(exclude)
    return sorted(Exclusion(exclude).names)


def _check_resume(writer: ShardSetWriter, order: list, out_dir: Path):
    done = writer.done
    if not done:
        return
    unknown = sorted(set(done) - set(order))
    n = len(done)
    if unknown or set(order[:n]) != set(done):
        raise BuildError(f'{out_dir} holds a partial build whose videos do not match the current input '
                         f'({len(unknown)} unknown videos, e.g. {unknown[:3]}); the raw data changed since it started. '
                         f'Pass --overwrite to rebuild')


def build_index(parsed: ParseResult, writer: ShardSetWriter, shards: list, params: CropParams) -> dict:
    """The msgpack index (see pipeline.shards) from the commit markers, in build order."""
    names, vstart, tstart, tids, frames, boxes, eshard = [], [0], [0], [], [], [], []
    for v in parsed.videos:
        m = writer.markers[v.name]
        if not m['tracks']:
            continue
        names.append(v.name)
        for tid, fr, bx in m['tracks']:
            tids.append(tid)
            frames.extend(fr)
            boxes.extend(bx)
            eshard.extend([writer.done[v.name]] * len(fr))
            tstart.append(len(frames))
        vstart.append(len(tids))
    arrays = {'video_track_start': vstart, 'track_entry_start': tstart, 'track_ids': tids,
              'entry_frame': frames, 'entry_box': np.asarray(boxes, np.float64).reshape(-1, 4),
              'entry_shard': eshard}
    return {
        'format_version': FORMAT_VERSION,
        'dataset': parsed.dataset,
        'crop': params.to_dict(),
        'counts': {'videos': len(names), 'tracks': len(tids), 'entries': len(frames), 'shards': len(shards),
                   'bytes': sum(s['bytes'] for s in shards)},
        'shards': shards,
        'video_names': names,
        'arrays': {k: pack_array(np.asarray(arrays[k]), INDEX_ARRAYS[k]) for k in INDEX_ARRAYS},
    }


def _init_worker():
    cv2.setNumThreads(1)


def _results(pending, params, min_run, workers):
    tasks = ((v, params, min_run) for v in pending)
    if workers <= 1:
        old = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for t in tasks:
                yield crop_video_task(t)
        finally:
            cv2.setNumThreads(old)
        return
    # spawn, not fork: a parent that already used OpenCV's thread pool deadlocks forked children.
    with mp.get_context('spawn').Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(crop_video_task, tasks, chunksize=1)


def build_dataset(dataset: str, root=None, out_root='cache', workers: int = 1, shard_size: int = 4 << 30,
                  jpeg_quality: int = 95, overwrite: bool = False, from_crop511=None, anno=None,
                  verbose: bool = False, progress: bool = True, exclude=None) -> dict:
    """Build (or resume) cache/<DATASET>/ from a raw root or a PySOT crop511 folder; returns the report.

    `exclude`: a text file of video names, one a line (or an iterable of names); matching videos
    (full key or last path component, e.g. LaSOT's testing_set.txt) are left out and reported.
    """
    t0 = time.time()
    dataset = dataset.upper()
    if not 1 <= jpeg_quality <= 100:
        raise BuildError(f'--jpeg-quality must be in 1..100, got {jpeg_quality}')
    if shard_size <= 0:
        raise BuildError(f'--shard-size must be positive, got {shard_size}')
    excluded_names = exclude_names(exclude)
    if from_crop511 is not None:
        parsed = parse_crop511(dataset, from_crop511, anno, excluded_names)
        source = {'mode': 'crop511', 'crop511': str(Path(from_crop511).resolve()), 'anno': str(Path(anno).resolve())}
    else:
        parsed = parse_raw(dataset, root, excluded_names)
        source = {'mode': 'raw', 'root': str(Path(root).resolve())}
    params = CropParams(jpeg_quality=jpeg_quality)
    out_dir = Path(out_root) / dataset
    build_params = {'format_version': FORMAT_VERSION, 'dataset': dataset, **source, 'crop': params.to_dict(),
                    'shard_size': int(shard_size)}
    if excluded_names:  # absent when empty, so builds from before --exclude existed still resume
        build_params['exclude'] = excluded_names
    _prepare_out_dir(out_dir, build_params, overwrite)
    writer = ShardSetWriter(out_dir, shard_size)
    order = [v.name for v in parsed.videos]
    _check_resume(writer, order, out_dir)
    resumed = len(writer.done)
    pending = [v for v in parsed.videos if v.name not in writer.done]
    written = 0
    bar = tqdm(total=sum(v.num_entries() for v in pending), unit='crop', desc=f'{dataset} crops',
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        for res in _results(pending, params, parsed.min_run, workers):
            writer.write(res)
            n = sum(len(t[1]) for t in res['tracks'])
            written += n
            bar.update(n + sum(res['drops'].values()))
            if verbose:
                tqdm.write(f'committed {res["video"]} ({n} crops) -> {writer.cur}')
    finally:
        bar.close()
        writer.close()
    shards = [shard_digest(p) for p in writer.shard_paths()]
    index = build_index(parsed, writer, shards, params)
    atomic_write(out_dir / INDEX_NAME, msgpack.packb(index, use_bin_type=True))
    drops = Counter(parsed.drops.counts)
    files = list(parsed.drops.files)
    for name in order:
        m = writer.markers[name]
        drops.update(m['drops'])
        files.extend(m['files'])
    elapsed = time.time() - t0
    report = {'dataset': dataset, **source, 'out_dir': str(out_dir), 'counts': index['counts'],
              'videos_parsed': len(order), 'videos_resumed': resumed,
              'excluded_videos': len(parsed.excluded), 'excluded': parsed.excluded,
              'exclude_unmatched': parsed.exclude_unmatched, 'crops_written_this_run': written,
              'elapsed_s': round(elapsed, 3), 'crops_per_s': round(written / elapsed, 1) if elapsed > 0 else None,
              'workers': workers, 'dropped': dict(sorted(drops.items())), 'dropped_total': sum(drops.values()),
              'bad_inputs': files, 'shards': shards}
    atomic_write(out_dir / REPORT_NAME, json.dumps(report, indent=1).encode())
    return report


def format_summary(report: dict, max_files: int = 10) -> str:
    """Human-readable build summary."""
    c = report['counts']
    lines = [f"{report['dataset']}: kept {c['entries']} crops in {c['videos']} videos / {c['tracks']} tracks, "
             f"{c['shards']} shard(s), {c['bytes'] / 2**20:.1f} MiB -> {report['out_dir']}",
             f"  this run: {report['crops_written_this_run']} crops in {report['elapsed_s']:.1f} s "
             f"({report['crops_per_s']} crops/s, {report['workers']} workers; {report['videos_resumed']} videos resumed)"]
    if report.get('excluded_videos'):
        lines.append(f"  excluded {report['excluded_videos']} videos (--exclude; listed in {REPORT_NAME})")
    if report['dropped_total']:
        why = ', '.join(f'{k} {v}' for k, v in report['dropped'].items())
        lines.append(f"  dropped {report['dropped_total']}: {why}")
    bad = report['bad_inputs']
    if bad:
        lines.append(f'  bad inputs ({len(bad)}; all listed in {REPORT_NAME}):')
        lines += [f'    {": ".join(str(x) for x in b)}' for b in bad[:max_files]]
    return '\n'.join(lines)


def exclude_warning(report: dict, show: int = 5) -> str:
    """Warning line for --exclude names that matched no video ('' if none)."""
    missed = report.get('exclude_unmatched') or []
    if not missed:
        return ''
    more = ', ...' if len(missed) > show else ''
    return (f"warning: {len(missed)} --exclude name(s) matched no video of {report['dataset']}: "
            f"{', '.join(missed[:show])}{more}")
