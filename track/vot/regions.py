"""VOT regions: parsing and writing, PySOT's initial box, and overlap as vot-toolkit computes it.

A region is either a special code (an int: 0 unknown/skipped, 1 initialisation, 2 failure, as in
vot-toolkit's result files) or a float64 array: 4 values are a rectangle x,y,w,h, 2N values
(N >= 3) a polygon x1,y1,...,xN,yN.

Overlap (vot-toolkit 0.7.4, `vot/region/raster.py`): both regions are stored as float32 and their
coordinates rounded half-to-even to whole pixels; a rectangle covers columns x..x+w-1 and rows
y..y+h-1, a polygon is scan-line filled row by row (nodes truncated toward zero); the two masks
are rasterised over the union of their bounding boxes clipped to the image and overlap =
|A and B| / |A or B|.  Two toolkit conventions are kept: a union box with no width or height
gives 1, and a union box outside the image gives 0.  A special region counts as empty with
bounds (0, 0, 0, 0).  Always bounded by the image, as the toolkit's supervised experiment and
analyses are (its unbounded mode clips rectangles wrongly when the union box starts left of or
above the origin; we do not offer it).
"""
from __future__ import annotations

import math

import numba
import numpy as np

UNKNOWN, INITIALIZATION, FAILURE = 0, 1, 2
_EMPTY = np.zeros(0, np.float64)


def is_special(region) -> bool:
    return isinstance(region, (int, np.integer))


def parse_region(text: str, where: str = 'region'):
    """A region from one line of a VOT file ('1', 'x,y,w,h' or 'x1,y1,...'); NaN values give
    UNKNOWN, as in vot-toolkit.  `where` names the file and line in errors."""
    text = text.strip()
    if text.startswith('m'):
        raise ValueError(f'{where}: mask regions (VOT2020 and later) are not supported: {text[:40]!r}')
    try:
        values = [float(t) for t in text.split(',')]
    except ValueError:
        raise ValueError(f'{where}: not a VOT region (comma-separated numbers): {text[:80]!r}') from None
    if len(values) == 1:
        if not values[0].is_integer():
            raise ValueError(f'{where}: a one-number region must be a code 0, 1 or 2, got {text!r}')
        return int(values[0])
    if len(values) == 4 or (len(values) >= 6 and len(values) % 2 == 0):
        if any(math.isnan(v) for v in values):
            return UNKNOWN
        return np.asarray(values, np.float64)
    raise ValueError(f'{where}: {len(values)} numbers; a region has 1 (code), 4 (x,y,w,h) or '
                     f'an even number >= 6 (polygon x1,y1,...)')


def format_region(region) -> str:
    """One result-file line: the code, or the values with full precision (reads back exactly)."""
    if is_special(region):
        return str(int(region))
    return ','.join(repr(float(v)) for v in region)


def init_box(region) -> list:
    """PySOT's initial box [x, y, w, h] for a ground-truth region.

    A 4-point polygon becomes the axis-aligned box with the same centre (mean of the points) whose
    sides are the polygon's bounding box scaled to the area |p1-p2|*|p2-p3|, plus one pixel
    (`get_axis_aligned_bbox`), placed as x = cx - (w-1)/2.  A rectangle is used as it is (PySOT's
    test.py first turns it into its 4 corners, which maps back to the same box).  Other polygons
    use their shoelace area (PySOT handles 4 points only).
    """
    if is_special(region):
        raise ValueError(f'cannot initialise on a special region (code {region})')
    r = np.asarray(region, np.float64)
    if r.size == 4:
        if not (np.all(np.isfinite(r)) and r[2] > 0 and r[3] > 0):
            raise ValueError(f'box {",".join(f"{v:g}" for v in r)} cannot start a tracker (w and h must be > 0)')
        return [float(v) for v in r]
    xs, ys = r[0::2], r[1::2]
    if r.size == 8:
        area = np.linalg.norm(r[0:2] - r[2:4]) * np.linalg.norm(r[2:4] - r[4:6])
    else:
        area = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
    bw, bh = xs.max() - xs.min(), ys.max() - ys.min()
    if not bw > 0 or not bh > 0:
        raise ValueError(f'degenerate polygon (no width or height): {format_region(r)}')
    s = math.sqrt(area / (bw * bh))
    w, h = s * bw + 1, s * bh + 1
    cx, cy = xs.mean(), ys.mean()
    return [float(cx - (w - 1) / 2), float(cy - (h - 1) / 2), float(w), float(h)]


def raster_data(region) -> np.ndarray:
    """The toolkit's stored coordinates: float32, rounded half-to-even (empty for a special, and
    for non-finite values, which overlap nothing: the toolkit's result there is undefined)."""
    if is_special(region):
        return _EMPTY
    data = np.round(np.asarray(region, np.float32)).astype(np.float64)
    return data if np.isfinite(data).all() else _EMPTY


def region_overlap(a, b, size) -> float:
    """vot-toolkit's overlap of two regions inside an image of `size` (width, height)."""
    return _overlap(raster_data(a), raster_data(b), int(size[0]), int(size[1]))


def overlaps(regions, groundtruth, size) -> np.ndarray:
    """Per-frame `region_overlap` of a trajectory with the ground truth."""
    if len(regions) != len(groundtruth):
        raise ValueError(f'{len(regions)} regions but {len(groundtruth)} ground-truth regions')
    return np.array([region_overlap(a, b, size) for a, b in zip(regions, groundtruth)], np.float64)


@numba.njit(cache=True)
def _bounds(r):
    """Inclusive pixel bounds (left, top, right, bottom) of rounded coordinates."""
    n = r.shape[0]
    if n == 0:
        return 0, 0, 0, 0
    if n == 4:
        return int(r[0]), int(r[1]), int(r[0] + r[2] - 1), int(r[1] + r[3] - 1)
    left, top, right, bottom = r[0], r[1], r[0], r[1]
    for k in range(1, n // 2):
        left = min(left, r[2 * k])
        right = max(right, r[2 * k])
        top = min(top, r[2 * k + 1])
        bottom = max(bottom, r[2 * k + 1])
    return int(left), int(top), int(right), int(bottom)


@numba.njit(cache=True)
def _rasterize(r, left, top, mask):
    """Set the pixels of region `r` in `mask`, whose pixel (0, 0) is image pixel (left, top)."""
    height, width = mask.shape
    n = r.shape[0]
    if n == 0:
        return
    if n == 4:
        x0 = max(int(r[0]) - left, 0)
        y0 = max(int(r[1]) - top, 0)
        x1 = min(int(r[0] + r[2] - 1) - left, width - 1)
        y1 = min(int(r[1] + r[3] - 1) - top, height - 1)
        for y in range(y0, y1 + 1):
            for x in range(x0, x1 + 1):
                mask[y, x] = 1
        return
    count = n // 2
    nodes = np.empty(count, np.int64)
    for y in range(height):
        found = 0
        j = count - 1
        for i in range(count):
            yi = r[2 * i + 1] - top
            yj = r[2 * j + 1] - top
            if min(yi, yj) <= y <= max(yi, yj):  # the edge j->i meets this row (ends included)
                xi = r[2 * i] - left
                if yj != yi:
                    x = xi + (y - yi) / (yj - yi) * (r[2 * j] - left - xi)
                else:
                    x = xi
                nodes[found] = int(x)
                found += 1
            j = i
        row = np.sort(nodes[:found])
        i = 0
        while i < found - 1:
            if row[i] >= width:
                break
            if row[i] == row[i + 1] and i < found - 2:  # a vertex met twice: skip one copy
                i += 1
                continue
            if row[i + 1] >= 0:
                for x in range(max(row[i], 0), min(row[i + 1], width - 1) + 1):
                    mask[y, x] = 1
            i += 2


@numba.njit(cache=True)
def _overlap(a, b, width, height):
    al, at, ar, ab = _bounds(a)
    bl, bt, br, bb = _bounds(b)
    left, top, right, bottom = min(al, bl), min(at, bt), max(ar, br), max(ab, bb)
    if left >= right or top >= bottom:
        return 1.0  # the toolkit's rule for a union box without extent
    left, top = max(0, left), max(0, top)
    right, bottom = min(width - 1, right), min(height - 1, bottom)
    if left >= right or top >= bottom:
        return 0.0
    ma = np.zeros((bottom - top + 1, right - left + 1), np.uint8)
    mb = np.zeros_like(ma)
    _rasterize(a, left, top, ma)
    _rasterize(b, left, top, mb)
    inter = 0
    union = 0
    for y in range(ma.shape[0]):
        for x in range(ma.shape[1]):
            if ma[y, x] or mb[y, x]:
                union += 1
                if ma[y, x] and mb[y, x]:
                    inter += 1
    return inter / union if union > 0 else 0.0
