"""Turn one VideoSpec into encoded 511 crops (runs in pool workers; pure function of its inputs)."""
from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..crop import CONTEXT_AMOUNT, CROP_SIZE, EXEMPLAR_SIZE, crop_search, mean_colour
from ..crop_check import jpeg_size
from .masks import coco_mask, crop_mask, encoded, mask_box, read_crop511_mask, read_palette_png
from .spec import (CORRUPT_IMAGE, CORRUPT_MASK, DEGENERATE, EMPTY_MASK, MALFORMED, MISSING_IMAGE, MISSING_MASK, OUTSIDE,
                   SINGLE_RUN, SMALL_MASK, YTBVOS_MIN_MASK_PIXELS, BuildError, DropLog, VideoSpec, split_runs,
                   valid_wh)

NO_MASK = (None, (0, 0, 0, 0), 0)  # an entry without a mask: (PNG, region, crc32)


@dataclass(frozen=True)
class CropParams:
    context_amount: float = CONTEXT_AMOUNT
    exemplar_size: int = EXEMPLAR_SIZE
    crop_size: int = CROP_SIZE
    jpeg_quality: int = 95

    def to_dict(self) -> dict:
        return {'context_amount': self.context_amount, 'exemplar_size': self.exemplar_size,
                'crop_size': self.crop_size, 'jpeg_quality': self.jpeg_quality,
                'affine': 'square side s_z*crop_size/exemplar_size mapped onto crop_size-1 px (PySOT crop_hwc)',
                'padding': 'per-frame mean colour (BGR)'}


def read_image_bytes(path: str):
    """File bytes, or (None, reason) if missing/unreadable or an obviously truncated JPEG."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        return None, (MISSING_IMAGE, e.strerror or str(e))
    if not data:
        return None, (CORRUPT_IMAGE, 'empty file')
    # libjpeg decodes truncated files with a grey tail and only a warning: require the EOI marker.
    if data[:2] == b'\xff\xd8' and b'\xff\xd9' not in data[-4096:]:
        return None, (CORRUPT_IMAGE, 'truncated JPEG (no end-of-image marker)')
    return data, None


def decode(data: bytes):
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def _outside(box, w, h) -> bool:
    return box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h


def _where(video: VideoSpec, ti: int, k: int) -> str:
    t = video.tracks[ti]
    return f'video {video.name} track {t.track_id} frame {t.frames[k]}'


def check_crop_size(data: bytes, path, size: int):
    """An imported crop must be size x size (BuildError naming the file and both sizes)."""
    wh = jpeg_size(data)
    if wh is None:  # not a JPEG: measure the decoded image
        img = decode(data)
        wh = None if img is None else (img.shape[1], img.shape[0])
    if wh != (size, size):
        found = 'not measurable' if wh is None else f'{wh[0]}x{wh[1]}'
        raise BuildError(f'{path}: the crop is {found}, expected {size}x{size}; --from-crop511 imports PySOT '
                         f'crop511 folders (511x511 search crops) only. Nothing after the last committed video was '
                         f'imported: fix or remove the file, then rerun')


def crop_video(video: VideoSpec, params: CropParams, min_run: int) -> dict:
    """Crop every entry of a video.  Returns a msgpack-able result:
    {'video', 'tracks': [[track_id, frames, boxes(flat x1,y1,x2,y2...)], ...], 'jpegs': [[bytes...], ...],
     'crcs': [[crc32 of each JPEG, taken here from the bytes produced]], 'drops': {reason: n},
     'files': [[path, reason, detail], ...]}; runs split into separate tracks.  A video with masks
    (`VideoSpec.mask_kind`), when some entry has one, adds 'masks' ([[PNG bytes, or None for an entry
    without a mask]]),
    'mask_boxes' ([[(x, y, w, h)]]) and 'mask_crcs' ([[crc32 of each PNG, taken here]]).  Raises
    BuildError for an imported (precropped) crop or mask of the wrong size.
    """
    drops = DropLog()
    by_image = defaultdict(list)  # image path -> [(track index, position)]
    for ti, t in enumerate(video.tracks):
        for k, path in enumerate(t.images):
            by_image[path].append((ti, k))
    ok = [dict() for _ in video.tracks]  # position -> (box, jpeg, crc32, (png, region, crc32))
    enc = [int(cv2.IMWRITE_JPEG_QUALITY), int(params.jpeg_quality)]
    for path in sorted(by_image):
        users = by_image[path]
        data, err = read_image_bytes(path)
        if data is not None:
            # precropped bytes are stored as-is and only checked to decode
            image = decode_check(data) if video.precropped else decode(data)
            if image is None:
                err = (CORRUPT_IMAGE, 'cannot decode')
        if err is not None:
            drops.drop(err[0], len(users), path, err[1])
            continue
        if video.precropped:
            check_crop_size(data, path, params.crop_size)
            crc = zlib.crc32(data)
            for ti, k in users:
                mask = _imported_mask(video, ti, k, params.crop_size, drops)
                if mask is not None:
                    ok[ti][k] = (video.tracks[ti].boxes[k], data, crc, mask)
            continue
        h, w = image.shape[:2]
        padding = mean_colour(image)
        ids = _palette(video, users, image.shape, drops) if video.mask_kind == 'palette' else None
        if video.mask_kind == 'palette' and ids is None:
            continue
        for ti, k in users:
            box, full = video.tracks[ti].boxes[k], None
            if ids is not None:  # YouTube-VOS: the box is the mask's
                full = ids == video.tracks[ti].track_id
                box = _palette_box(full, video, ti, k, drops)
                if box is None:
                    continue
            if video.normalized:
                box = (box[0] * w, box[1] * h, box[2] * w, box[3] * h)
                if not valid_wh(box):
                    drops.drop(DEGENERATE, 1, path, f'{_where(video, ti, k)}: box {list(box)}')
                    continue
            if _outside(box, w, h):
                drops.drop(OUTSIDE, 1, path, f'{_where(video, ti, k)}: box {[round(v, 2) for v in box]} '
                                             f'outside the {w}x{h} image')
                continue
            if video.mask_kind == 'coco':
                full, why = coco_mask(video.tracks[ti].masks[k], image.shape)
                if full is None:
                    drops.drop(MALFORMED, 1, video.mask_source, f'{_where(video, ti, k)}: {why}')
                    continue
            crop = crop_search(image, box, padding, params.context_amount, params.exemplar_size, params.crop_size)
            good, buf = cv2.imencode('.jpg', crop, enc)
            if not good:
                raise RuntimeError(f'JPEG encoding failed for {path}')
            jpeg = buf.tobytes()
            mask = NO_MASK if full is None else crop_mask(full, box, video.mask_threshold, params)
            ok[ti][k] = (box, jpeg, zlib.crc32(jpeg), mask)
    tracks, jpegs, crcs, masks = [], [], [], []
    for ti, t in enumerate(video.tracks):
        pos = sorted(ok[ti])
        frames = [t.frames[k] for k in pos]
        for run in split_runs(frames, video.frame_step):
            if len(run) < min_run:
                drops.drop(SINGLE_RUN, len(run))
                continue
            sel = [pos[i] for i in run]
            tracks.append([t.track_id, [t.frames[k] for k in sel],
                           [float(v) for k in sel for v in ok[ti][k][0]]])
            jpegs.append([ok[ti][k][1] for k in sel])
            crcs.append([ok[ti][k][2] for k in sel])
            masks.append([ok[ti][k][3] for k in sel])
    result = {'video': video.name, 'tracks': tracks, 'jpegs': jpegs, 'crcs': crcs,
              'drops': dict(drops.counts), 'files': drops.files}
    if any(m[0] is not None for ms in masks for m in ms):  # else no mask fields: the marker stays as without masks
        result.update(masks=[[m[0] for m in ms] for ms in masks], mask_boxes=[[m[1] for m in ms] for ms in masks],
                      mask_crcs=[[m[2] for m in ms] for ms in masks])
    return result


def _palette(video: VideoSpec, users, shape, drops: DropLog):
    """The object ids of the frame `users` share (YouTube-VOS annotation PNG), or None after
    dropping every user (missing, unreadable, or of another size than the image)."""
    ti, k = users[0]
    png = video.tracks[ti].masks[k]
    ids, why = read_palette_png(png)
    if ids is None:
        missing = not Path(png).exists()
        drops.drop(MISSING_MASK if missing else CORRUPT_MASK, len(users), png, why)
        return None
    if ids.shape != tuple(shape[:2]):
        drops.drop(CORRUPT_MASK, len(users), png, f'annotation of {ids.shape[1]}x{ids.shape[0]} for a '
                                                  f'{shape[1]}x{shape[0]} image')
        return None
    return ids


def _palette_box(full, video: VideoSpec, ti: int, k: int, drops: DropLog):
    """The box of a YouTube-VOS object's mask, or None after dropping an empty or small mask (the
    authors keep an object in a frame only with more than YTBVOS_MIN_MASK_PIXELS pixels)."""
    pixels = int(np.count_nonzero(full))
    if pixels == 0:
        drops.drop(EMPTY_MASK, 1, video.tracks[ti].masks[k], f'{_where(video, ti, k)}: meta.json lists the object, '
                                                             f'its annotation has no pixel')
        return None
    if pixels <= YTBVOS_MIN_MASK_PIXELS:
        drops.drop(SMALL_MASK, 1)
        return None
    return mask_box(full)


def _imported_mask(video: VideoSpec, ti: int, k: int, size: int, drops: DropLog):
    """(PNG, region, crc32) of a crop511 entry's .m.png, NO_MASK if there is none, or None after
    dropping an unreadable one; BuildError for a mask that is not size x size."""
    if video.mask_kind != 'crop511':
        return NO_MASK
    path = video.tracks[ti].masks[k]
    mask, why = read_crop511_mask(path)
    if why is not None:
        drops.drop(CORRUPT_MASK, 1, path, why)
        return None
    if mask is None:
        return NO_MASK
    if mask.shape != (size, size):
        raise BuildError(f'{path}: the mask is {mask.shape[1]}x{mask.shape[0]}, expected {size}x{size} like its '
                         f'crop; --from-crop511 imports the SiamMask authors\' crop511 masks (<frame>.<track>.m.png) '
                         f'only. Nothing after the last committed video was imported: fix or remove the file, then '
                         f'rerun')
    return encoded(mask)


def decode_check(data: bytes):
    """Cheap validity check of an encoded crop (reduced-size decode)."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)


def crop_video_task(args):
    """Pool entry point."""
    return crop_video(*args)
