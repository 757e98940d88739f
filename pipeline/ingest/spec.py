"""In-memory description of a parsed raw dataset: videos -> tracks -> frames (box + image path).

Parsers hand each video to a `VideoTableBuilder`, which keeps the whole dataset in compact arrays
(`VideoTable`: about 45 bytes per entry plus one path template per track); the builder turns one
video at a time back into a `VideoSpec` for the crop workers.
"""
from __future__ import annotations

import math
import os
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..shards import StringTableBuilder

# Video datasets whose single-frame runs are dropped: PySOT's VID gen_json drops them; its YTB
# gen_json and siamban's GOT-10k / LaSOT gen_json keep every valid frame.
DROPS_SINGLE_RUNS = ('VID',)
DATASETS = ('VID', 'COCO', 'DET', 'YTB', 'GOT10K', 'LASOT', 'YTBVOS')
# Datasets whose crops carry masks; thresholds of the warped float mask, as the SiamMask authors'
# data/coco/par_crop.py (> 0.5) and data/ytb_vos/par_crop.py (> 0.2) take them.
MASK_THRESHOLDS = {'COCO': 0.5, 'YTBVOS': 0.2}
# The authors' data/ytb_vos/parse_ytb_vos.py keeps an object in a frame only with more pixels than this.
YTBVOS_MIN_MASK_PIXELS = 1000
# Frame-number step between consecutive annotated frames (YouTube-VOS: every 5th frame, 00000, 00005, ...):
# the crop worker splits a track into runs of frames this far apart.
FRAME_STEPS = {'YTBVOS': 5}

# Drop reasons (counted per object-frame entry unless the name says file/row).
DEGENERATE = 'degenerate_box'
OUTSIDE = 'outside_frame'
ABSENT = 'absent'
INVISIBLE = 'invisible'
MALFORMED = 'malformed_annotation'
MALFORMED_FILE = 'malformed_annotation_file'
MISSING_IMAGE = 'missing_image'
CORRUPT_IMAGE = 'corrupt_image'
SINGLE_RUN = 'single_frame_run'
MISSING_MASK = 'missing_mask'      # an annotation PNG / crop511 .m.png that is not there
CORRUPT_MASK = 'corrupt_mask'      # one that cannot be read, or of another size than its image
EMPTY_MASK = 'empty_mask'          # YouTube-VOS: listed in meta.json, no pixel in the annotation
SMALL_MASK = 'small_mask'          # YouTube-VOS: YTBVOS_MIN_MASK_PIXELS pixels or fewer (the authors' filter)


@dataclass
class TrackSpec:
    """One object's annotated frames (sorted), boxes (x1,y1,x2,y2) and image path per frame; for a
    dataset with masks, the mask's source per frame (see `VideoSpec.mask_kind`)."""
    track_id: int
    frames: list
    boxes: list
    images: list
    masks: list | None = None


@dataclass
class VideoSpec:
    """A video (or a single image for COCO/DET) with its tracks.

    `normalized`: boxes are in [0,1] and are converted to pixels with the decoded image's size.
    `precropped`: images are already 511 crops (crop511 import); their bytes are stored as-is.
    `mask_kind`: None (no masks), 'coco' (each track's masks are JSON [annotation id, image height,
    image width, segmentation] of `mask_source`, the annotation file), 'palette' (paths of palette
    PNGs whose pixel value is the object id = the track id; boxes are the masks' bounding boxes) or
    'crop511' (paths of the authors' 511 ``.m.png`` crops, which may be absent).
    `mask_threshold`: the warped float mask is thresholded with ``> mask_threshold``.
    `frame_step`: frame numbers this far apart are consecutive (a run of a track).
    """
    name: str
    tracks: list
    normalized: bool = False
    precropped: bool = False
    mask_kind: str | None = None
    mask_source: str = ''
    mask_threshold: float = 0.5
    frame_step: int = 1

    def num_entries(self) -> int:
        return sum(len(t.frames) for t in self.tracks)


@dataclass
class DropLog:
    """Counts of dropped entries per reason plus the offending files."""
    counts: Counter = field(default_factory=Counter)
    files: list = field(default_factory=list)

    def drop(self, reason: str, n: int = 1, path=None, detail: str = ''):
        self.counts[reason] += n
        if path is not None:
            self.files.append([str(path), reason, detail] if detail else [str(path), reason])


class BuildError(RuntimeError):
    """A build cannot continue (bad output folder, disk full, bad input, ...); the message says what to do."""


def valid_frame(frame) -> bool:
    """Frame numbers are stored as int32."""
    return 0 <= frame < 2 ** 31


def path_template(paths: list) -> tuple:
    """(prefix, suffix, middles) with path == prefix + middle + suffix, where every middle is '' or
    ASCII digits (so it is stored as an integer and its width); middles are None when the paths do
    not follow one numbered pattern."""
    if len(paths) == 1:
        return paths[0], '', ['']
    prefix = os.path.commonprefix(paths)
    rests = [p[len(prefix):] for p in paths]
    suffix = os.path.commonprefix([r[::-1] for r in rests])[::-1]
    middles = [r[:len(r) - len(suffix)] for r in rests]
    if all(m == '' or (m.isascii() and m.isdigit() and len(m) <= 18) for m in middles):
        return prefix, suffix, middles
    return '', '', [None] * len(paths)


class VideoTableBuilder:
    """Collects parsed videos into typed arrays; parsers call `add` once per video (in build order)."""

    def __init__(self):
        self.names = StringTableBuilder()
        self.video_track_start = array('q', [0])
        self.track_ids = array('q')
        self.track_entry_start = array('q', [0])
        self.prefix, self.suffix = StringTableBuilder(), StringTableBuilder()
        self.frames, self.boxes = array('i'), array('d')
        self.tokens, self.widths = array('q'), array('b')
        self.paths = {}  # entry -> image path, for tracks whose images follow no numbered pattern
        self.masks = StringTableBuilder()  # entry -> mask source, for datasets with masks

    def add(self, name: str, tracks: list):
        """One video's tracks (TrackSpec: frames ascending, boxes, image paths, mask sources if any)."""
        self.names.append(name)
        for t in tracks:
            if t.masks is not None:
                if len(self.masks) != len(self.frames):
                    raise ValueError('VideoTableBuilder: every track or none must have masks')
                for m in t.masks:
                    self.masks.append(m)
            self.track_ids.append(int(t.track_id))
            prefix, suffix, middles = path_template([str(p) for p in t.images])
            self.prefix.append(prefix)
            self.suffix.append(suffix)
            for f, box, mid, image in zip(t.frames, t.boxes, middles, t.images):
                self.frames.append(int(f))
                self.boxes.extend(box)
                if mid is None:
                    self.paths[len(self.tokens)] = str(image)
                self.tokens.append(int(mid) if mid else 0)
                self.widths.append(-1 if mid is None else len(mid))
            self.track_entry_start.append(len(self.frames))
        self.video_track_start.append(len(self.track_ids))

    def finish(self, normalized: bool = False, precropped: bool = False, mask_kind: str | None = None,
               mask_source: str = '', mask_threshold: float = 0.5, frame_step: int = 1) -> 'VideoTable':
        if mask_kind is not None and len(self.masks) != len(self.frames):
            raise ValueError('VideoTableBuilder: every track or none must have masks')
        return VideoTable(self, normalized, precropped, mask_kind, mask_source, mask_threshold, frame_step)


class VideoTable:
    """A parsed dataset in compact arrays: videos -> tracks -> entries (frame, box, image path).

    `normalized`, `precropped`, `mask_kind`, `mask_source`, `mask_threshold`, `frame_step`: as
    `VideoSpec`'s; with a mask kind, one mask source (str) per entry.
    """

    def __init__(self, b: VideoTableBuilder, normalized: bool, precropped: bool, mask_kind: str | None = None,
                 mask_source: str = '', mask_threshold: float = 0.5, frame_step: int = 1):
        self.names = b.names.finish()
        self.video_track_start = np.frombuffer(b.video_track_start, np.int64)
        self.track_ids = np.frombuffer(b.track_ids, np.int64)
        self.track_entry_start = np.frombuffer(b.track_entry_start, np.int64)
        self.track_prefix, self.track_suffix = b.prefix.finish(), b.suffix.finish()
        self.entry_frame = np.frombuffer(b.frames, np.int32)
        self.entry_box = np.frombuffer(b.boxes, np.float64).reshape(-1, 4)
        self.entry_token = np.frombuffer(b.tokens, np.int64)
        self.entry_width = np.frombuffer(b.widths, np.int8)
        self.paths = b.paths
        self.normalized, self.precropped = normalized, precropped
        self.masks = b.masks.finish() if mask_kind is not None else None
        self.mask_kind, self.mask_source, self.mask_threshold = mask_kind, mask_source, mask_threshold
        self.frame_step = frame_step

    def __len__(self) -> int:
        return len(self.names)

    def entry_start(self, v: int) -> int:
        """First entry of video v (== number of entries of the videos before it)."""
        return int(self.track_entry_start[self.video_track_start[v]])

    def num_entries(self, v: int | None = None) -> int:
        if v is None:
            return len(self.entry_frame)
        return self.entry_start(v + 1) - self.entry_start(v)

    def nbytes(self) -> int:
        arrays = (self.video_track_start, self.track_ids, self.track_entry_start, self.entry_frame, self.entry_box,
                  self.entry_token, self.entry_width, self.names._data, self.names._starts, self.track_prefix._data,
                  self.track_prefix._starts, self.track_suffix._data, self.track_suffix._starts)
        if self.masks is not None:
            arrays += (self.masks._data, self.masks._starts)
        return sum(a.nbytes for a in arrays)

    def _image(self, e: int, prefix: str, suffix: str) -> str:
        width = int(self.entry_width[e])
        if width < 0:
            return self.paths[e]
        return prefix + (f'{int(self.entry_token[e]):0{width}d}' if width else '') + suffix

    def video(self, v: int) -> 'VideoSpec':
        """Video v as a VideoSpec (what the crop workers take)."""
        tracks = []
        for t in range(int(self.video_track_start[v]), int(self.video_track_start[v + 1])):
            e0, e1 = int(self.track_entry_start[t]), int(self.track_entry_start[t + 1])
            prefix, suffix = self.track_prefix[t], self.track_suffix[t]
            tracks.append(TrackSpec(int(self.track_ids[t]), self.entry_frame[e0:e1].tolist(),
                                    [tuple(b) for b in self.entry_box[e0:e1].tolist()],
                                    [self._image(e, prefix, suffix) for e in range(e0, e1)],
                                    None if self.masks is None else self.masks[e0:e1]))
        return VideoSpec(self.names[v], tracks, self.normalized, self.precropped, self.mask_kind,
                         self.mask_source, self.mask_threshold, self.frame_step)


@dataclass
class ParseResult:
    dataset: str
    root: str
    table: VideoTable
    drops: DropLog
    min_run: int
    excluded: list = field(default_factory=list)           # video keys left out by --exclude
    exclude_unmatched: list = field(default_factory=list)  # --exclude names that matched no video


class Exclusion:
    """Video names to leave out of a build (e.g. LaSOT's testing_set.txt).

    A video key matches when the key itself or its last path component is one of the names
    ('airplane/airplane-1' matches 'airplane-1'). Remembers what matched, for the report.
    """

    def __init__(self, names=()):
        self.names = frozenset(n for n in (_clean_name(x) for x in names) if n)
        self.excluded = set()   # video keys left out
        self._hit = set()       # names that matched at least one key

    def __bool__(self):
        return bool(self.names)

    def __call__(self, key: str) -> bool:
        """True if video `key` is excluded."""
        if not self.names:
            return False
        hits = {key, key.rsplit('/', 1)[-1]} & self.names
        if hits:
            self.excluded.add(key)
            self._hit |= hits
        return bool(hits)

    def unmatched(self) -> list:
        return sorted(self.names - self._hit)


def _clean_name(name) -> str:
    name = str(name).strip().strip('/')
    return name[2:] if name.startswith('./') else name


def valid_wh(box) -> bool:
    """PySOT's _filter_zero: keep only boxes with finite w > 0 and h > 0."""
    w, h = box[2] - box[0], box[3] - box[1]
    return math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0


def split_runs(frames, step: int = 1) -> list:
    """Split sorted frame ids into lists of index positions of consecutive-frame runs (frames `step` apart)."""
    runs, cur = [], []
    for i, f in enumerate(frames):
        if cur and f != frames[cur[-1]] + step:
            runs.append(cur)
            cur = []
        cur.append(i)
    if cur:
        runs.append(cur)
    return runs


def drop_short_runs(track: TrackSpec, min_run: int, drops: DropLog) -> TrackSpec:
    """Remove frames that belong to consecutive runs shorter than min_run (counted as SINGLE_RUN)."""
    keep = [i for run in split_runs(track.frames) if len(run) >= min_run for i in run]
    if len(keep) < len(track.frames):
        drops.drop(SINGLE_RUN, len(track.frames) - len(keep))
    return TrackSpec(track.track_id, [track.frames[i] for i in keep], [track.boxes[i] for i in keep],
                     [track.images[i] for i in keep], None if track.masks is None else [track.masks[i] for i in keep])


def make_track(track_id: int, rows, min_run: int, drops: DropLog):
    """TrackSpec from (frame, box, image) or (frame, box, image, mask source) rows: sorted, deduplicated,
    short runs removed; None if empty."""
    rows = sorted(rows, key=lambda r: r[0])
    seen, uniq = set(), []
    for r in rows:
        if r[0] in seen:
            drops.drop(MALFORMED, 1, r[2], 'duplicate frame for the same track')
            continue
        seen.add(r[0])
        uniq.append(r)
    track = TrackSpec(track_id, [r[0] for r in uniq], [tuple(map(float, r[1])) for r in uniq],
                      [str(r[2]) for r in uniq], [str(r[3]) for r in uniq] if uniq and len(uniq[0]) > 3 else None)
    track = drop_short_runs(track, min_run, drops)
    return track if track.frames else None
