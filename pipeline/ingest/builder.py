"""Build orchestration: parse -> crop in a process pool -> ordered shard writes -> index + report.

Memory: the parsed dataset is a compact `VideoTable`; at most 2 x workers videos are in flight
(submitted or cropped, not yet committed); committed videos are not kept (their markers are in the
shards); the index is assembled from the markers, streaming.  Peak memory is the table plus a
constant plus the videos in flight.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import cv2
from tqdm import tqdm

from .. import fileio
from ..shards import FORMAT_VERSION, INDEX_NAME, PARAMS_NAME
from .crop_worker import CropParams, crop_video, crop_video_task
from .index import PARTS_NAME, assemble_index
from .lock import LOCK_NAME, FolderLock
from .parsers import parse_crop511, parse_raw, read_exclude_file
from .pool import OrderedPool, WorkerDied
from .spec import BuildError, Exclusion, ParseResult
from .writer import ShardSetWriter, disk_full_error, is_disk_full

REPORT_NAME = 'build_report.json'


class BuildInterrupted(BuildError):
    """The build was stopped (Ctrl-C, SIGTERM); what is committed stays and a rerun resumes."""


def atomic_write(path: Path, data: bytes):
    """`pipeline.fileio.atomic_write`, with a full disk raised as BuildError."""
    try:
        fileio.atomic_write(path, data)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise


def _clear(out_dir: Path):
    """Delete a dataset folder's contents but its lock file (held by this build)."""
    for p in out_dir.iterdir():
        if p.name == LOCK_NAME:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _prepare_out_dir(out_dir: Path, params: dict, overwrite: bool):
    if overwrite:
        _clear(out_dir)
    shutil.rmtree(out_dir / PARTS_NAME, ignore_errors=True)  # left by a killed index assembly
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


def _check_resume(writer: ShardSetWriter, names, out_dir: Path):
    """The committed videos must be the first videos of the current input, in order."""
    for seq, name in enumerate(writer.scan()):
        if seq >= len(names) or names[seq] != name:
            raise BuildError(f'{out_dir} holds a partial build whose videos do not match the current input '
                             f'(committed video {seq} is {name!r}, the input has '
                             f'{names[seq] if seq < len(names) else "fewer videos"!r}); the raw data changed since '
                             f'it started. Pass --overwrite to rebuild')


def _die_with_parent():
    """Linux: have the kernel end this worker when the build process dies, even by SIGKILL."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker():
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole job: the build process decides
    _die_with_parent()


def _results(table, pending: range, params: CropParams, min_run: int, workers: int):
    """Crop results of the `pending` videos, in order; at most 2 x workers videos in flight."""
    if workers <= 1:
        old = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for v in pending:
                yield crop_video(table.video(v), params, min_run)
        finally:
            cv2.setNumThreads(old)
        return
    pool = OrderedPool(crop_video_task, workers, initializer=_init_worker)
    try:
        yield from pool.imap(((table.video(v), params, min_run) for v in pending), window=2 * workers)
    except BaseException:
        pool.close(terminate=True)
        raise
    pool.close()


def build_dataset(dataset: str, root=None, out_root='cache', workers: int = 1, shard_size: int = 4 << 30,
                  jpeg_quality: int = 95, overwrite: bool = False, from_crop511=None, anno=None,
                  verbose: bool = False, progress: bool = True, exclude=None) -> dict:
    """Build (or resume) cache/<DATASET>/ from a raw root or a PySOT crop511 folder; returns the report.

    `exclude`: a text file of video names, one a line (or an iterable of names); matching videos
    (full key or last path component, e.g. LaSOT's testing_set.txt) are left out and reported.
    Holds the folder's build lock throughout (BuildError naming the holder if another build has it).
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
    return build_parsed(parsed, source, out_root, CropParams(jpeg_quality=jpeg_quality), workers=workers,
                        shard_size=shard_size, overwrite=overwrite, verbose=verbose, progress=progress,
                        exclude=excluded_names, started=t0)


def mask_description(table) -> dict | None:
    """What a build's masks are (build_params.json and index.msgpack 'masks'); None without masks."""
    kind = table.mask_kind
    if kind is None:
        return None
    if kind == 'crop511':
        return {'source': "the SiamMask authors' crop511 <frame>.<track>.m.png, read as > 0 (absent: no mask)"}
    source = {'coco': 'segmentation decoded by pycocotools (frPyObjects, merge, decode: COCO.annToMask)',
              'palette': 'palette PNG annotation, pixels == object id; box = the mask\'s bounding box'}[kind]
    return {'source': source, 'crop': 'the image crop\'s warp of the float mask (bilinear, border 0)',
            'threshold': table.mask_threshold, 'stored': 'PNG {0,255} of the tight region in the crop'}


def build_parsed(parsed: ParseResult, source: dict, out_root, params: CropParams, workers: int = 1,
                 shard_size: int = 4 << 30, overwrite: bool = False, verbose: bool = False, progress: bool = True,
                 exclude=(), started: float | None = None) -> dict:
    """Crop, write and index an already parsed dataset into out_root/<dataset>/ (see build_dataset)."""
    t0 = time.time() if started is None else started
    dataset, table = parsed.dataset, parsed.table
    out_dir = Path(out_root) / dataset
    build_params = {'format_version': FORMAT_VERSION, 'dataset': dataset, **source, 'crop': params.to_dict(),
                    'shard_size': int(shard_size)}
    if exclude:  # absent when empty, so builds from before --exclude existed still resume
        build_params['exclude'] = list(exclude)
    masks = mask_description(table)
    if masks is not None:  # absent without masks: such builds keep their parameters (and resume)
        build_params['masks'] = masks
    with FolderLock(out_dir):
        _prepare_out_dir(out_dir, build_params, overwrite)
        writer = ShardSetWriter(out_dir, shard_size)
        _check_resume(writer, table.names, out_dir)
        resumed = writer.committed
        pending = range(resumed, len(table))
        if len(pending):
            (out_dir / INDEX_NAME).unlink(missing_ok=True)  # the folder is incomplete until the end
        written = 0
        bar = tqdm(total=table.num_entries() - table.entry_start(resumed),
                   unit='crop', desc=f'{dataset} crops', disable=not progress, dynamic_ncols=True, smoothing=0.1)
        results = _results(table, pending, params, parsed.min_run, workers)
        try:
            for v, res in zip(pending, results):
                if res['video'] != table.names[v]:
                    raise BuildError(f'internal: result for {res["video"]!r} where {table.names[v]!r} was expected')
                writer.write(res)
                n = sum(len(t[1]) for t in res['tracks'])
                written += n
                bar.update(table.num_entries(v))
                if verbose:
                    tqdm.write(f'committed {res["video"]} ({n} crops) -> {writer.cur}')
        except KeyboardInterrupt:
            raise BuildInterrupted(f'interrupted: {writer.committed} of {len(table)} videos of {dataset} are committed '
                                   f'in {out_dir}; rerun the same command to resume') from None
        except WorkerDied as e:
            raise BuildError(f'a crop {e}: {writer.committed} of '
                             f'{len(table)} videos of {dataset} are committed in {out_dir}; rerun the same command '
                             f'to resume') from None
        finally:
            results.close()
            bar.close()
            writer.close()
        meta = {'dataset': dataset, 'crop': params.to_dict()}
        index, marker_drops, marker_files = assemble_index(out_dir, writer.shard_paths(), meta, table.names, masks)
        drops = Counter(parsed.drops.counts) + marker_drops
        elapsed = time.time() - t0
        report = {'dataset': dataset, **source, 'out_dir': str(out_dir), 'counts': index['counts'],
                  'videos_parsed': len(table), 'videos_resumed': resumed,
                  'excluded_videos': len(parsed.excluded), 'excluded': parsed.excluded,
                  'exclude_unmatched': parsed.exclude_unmatched, 'crops_written_this_run': written,
                  'elapsed_s': round(elapsed, 3), 'crops_per_s': round(written / elapsed, 1) if elapsed > 0 else None,
                  'workers': workers, 'dropped': dict(sorted(drops.items())), 'dropped_total': sum(drops.values()),
                  'bad_inputs': list(parsed.drops.files) + marker_files, 'shards': index['shards']}
        atomic_write(out_dir / REPORT_NAME, json.dumps(report, indent=1).encode())
    return report


def format_summary(report: dict, max_files: int = 10) -> str:
    """Human-readable build summary."""
    c = report['counts']
    masks = f", {c['masks']} with a mask" if 'masks' in c else ''
    lines = [f"{report['dataset']}: kept {c['entries']} crops{masks} in {c['videos']} videos / {c['tracks']} tracks, "
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
