"""In-memory description of a parsed raw dataset: videos -> tracks -> frames (box + image path)."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

# Video datasets whose single-frame runs are dropped: PySOT's VID gen_json drops them; its YTB
# gen_json and siamban's GOT-10k / LaSOT gen_json keep every valid frame.
DROPS_SINGLE_RUNS = ('VID',)
DATASETS = ('VID', 'COCO', 'DET', 'YTB', 'GOT10K', 'LASOT')

# Drop reasons (counted per object-frame entry unless the name says file/row).
CROWD = 'crowd'
DEGENERATE = 'degenerate_box'
OUTSIDE = 'outside_frame'
ABSENT = 'absent'
INVISIBLE = 'invisible'
MALFORMED = 'malformed_annotation'
MALFORMED_FILE = 'malformed_annotation_file'
MISSING_IMAGE = 'missing_image'
CORRUPT_IMAGE = 'corrupt_image'
SINGLE_RUN = 'single_frame_run'


@dataclass
class TrackSpec:
    """One object's annotated frames (sorted), boxes (x1,y1,x2,y2) and image path per frame."""
    track_id: int
    frames: list
    boxes: list
    images: list


@dataclass
class VideoSpec:
    """A video (or a single image for COCO/DET) with its tracks.

    `normalized`: boxes are in [0,1] and are converted to pixels with the decoded image's size.
    `precropped`: images are already 511 crops (crop511 import); their bytes are stored as-is.
    """
    name: str
    tracks: list
    normalized: bool = False
    precropped: bool = False

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


@dataclass
class ParseResult:
    dataset: str
    root: str
    videos: list
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


def split_runs(frames) -> list:
    """Split sorted frame ids into lists of index positions of consecutive-frame runs."""
    runs, cur = [], []
    for i, f in enumerate(frames):
        if cur and f != frames[cur[-1]] + 1:
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
                     [track.images[i] for i in keep])


def make_track(track_id: int, rows, min_run: int, drops: DropLog):
    """TrackSpec from (frame, box, image) rows: sorted, deduplicated, short runs removed; None if empty."""
    rows = sorted(rows, key=lambda r: r[0])
    seen, uniq = set(), []
    for r in rows:
        if r[0] in seen:
            drops.drop(MALFORMED, 1, r[2], 'duplicate frame for the same track')
            continue
        seen.add(r[0])
        uniq.append(r)
    track = TrackSpec(track_id, [r[0] for r in uniq], [tuple(map(float, r[1])) for r in uniq],
                      [str(r[2]) for r in uniq])
    track = drop_short_runs(track, min_run, drops)
    return track if track.frames else None
