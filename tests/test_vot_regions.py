"""VOT regions: overlap equal to vot-toolkit's on the same regions, PySOT's initial box, parsing."""
import math

import numpy as np
import pytest
from vot.region import Polygon, Rectangle, Special, calculate_overlap

from track.vot.regions import (FAILURE, UNKNOWN, format_region, init_box, parse_region,
                               region_overlap)


def random_region(rng, near=None):
    """(our region, the toolkit's) — rectangles and 3-6 point polygons, some on half pixels (where
    the toolkit's half-to-even rounding matters), some outside the image, some degenerate; with
    `near` (x, y), one placed close to that point."""
    kind = rng.integers(0, 10)
    if kind == 0:
        return 1, Special(1)
    if kind < 5:
        x, y = rng.uniform(-30, 130, 2) if near is None else np.asarray(near) + rng.uniform(-25, 5, 2)
        w, h = rng.uniform(-2, 60, 2)
        if rng.random() < 0.5:
            x, y, w, h = np.round(np.array([x, y, w, h]) * 2) / 2
        return np.array([x, y, w, h]), Rectangle(x, y, w, h)
    n = rng.choice([3, 4, 4, 4, 5, 6])
    centre = rng.uniform(-20, 120, 2) if near is None else np.asarray(near) + rng.uniform(-10, 10, 2)
    radius = rng.uniform(1, 40)
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    pts = np.stack([centre[0] + radius * np.cos(angles),
                    centre[1] + radius * np.sin(angles) * rng.uniform(0.3, 1)], 1)
    if rng.random() < 0.5:
        pts = np.round(pts * 2) / 2
    return pts.ravel(), Polygon([tuple(p) for p in pts])


def test_overlap_equals_vot_toolkit_on_random_regions():
    rng = np.random.default_rng(7)
    worst, nonzero = 0.0, 0
    for _ in range(3000):
        a, ta = random_region(rng)
        b, tb = random_region(rng, near=None if np.size(a) == 1 or rng.random() < 0.2 else a[:2])
        size = (int(rng.integers(20, 120)), int(rng.integers(20, 120)))
        ours, theirs = region_overlap(a, b, size), calculate_overlap(ta, tb, size)
        worst = max(worst, abs(ours - theirs))
        nonzero += 0 < theirs < 1
    assert worst < 1e-12
    assert nonzero > 300  # the comparison covers partial overlaps, not only 0 and 1


def test_overlap_by_hand():
    size = (100, 100)
    assert region_overlap([10, 10, 10, 10], [10, 10, 10, 10], size) == 1.0
    assert region_overlap([10, 10, 10, 10], [15, 10, 10, 10], size) == pytest.approx(50 / 150)
    assert region_overlap([10, 10, 10, 10], [40, 40, 10, 10], size) == 0.0
    assert region_overlap(FAILURE, [40, 40, 10, 10], size) == 0.0
    assert region_overlap([np.nan, 40, 10, 10], [40, 40, 10, 10], size) == 0.0  # a broken output fails
    # bounded by the image: the part left of x = 0 does not count
    assert region_overlap([-5, 0, 10, 10], [0, 0, 5, 10], size) == 1.0
    # the same square as a rectangle and as a polygon through its pixel corners
    assert region_overlap([20, 20, 11, 11], [20, 20, 30, 20, 30, 30, 20, 30], size) == 1.0
    # coordinates are rounded half to even (10.5 -> 10, 11.5 -> 12): 10 columns vs 12 columns
    assert region_overlap([10.5, 0, 10, 10], [10, 0, 10, 10], size) == 1.0
    assert region_overlap([11.5, 0, 10, 10], [10, 0, 10, 10], size) == pytest.approx(80 / 120)


def test_init_box_is_pysots_axis_aligned_box_of_the_same_area():
    assert init_box(np.array([3.5, 4.0, 20.0, 10.0])) == [3.5, 4.0, 20.0, 10.0]
    # a square of side 20 rotated by 45 degrees around (50, 40): same centre, side 20 (+1 pixel)
    d = 20 / math.sqrt(2)
    box = init_box(np.array([50 - d, 40, 50, 40 - d, 50 + d, 40, 50, 40 + d]))
    np.testing.assert_allclose(box, [50 - 10, 40 - 10, 21, 21], atol=1e-9)
    # an axis-aligned polygon through pixel corners x..x+w: PySOT's box is one pixel wider
    np.testing.assert_allclose(init_box(np.array([10, 10, 30, 10, 30, 20, 10, 20.0])), [10, 10, 21, 11])
    with pytest.raises(ValueError, match='special'):
        init_box(UNKNOWN)
    with pytest.raises(ValueError, match='degenerate'):
        init_box(np.array([1, 1, 1, 1, 1, 5, 1, 5.0]))


def test_parse_and_format_regions():
    assert parse_region('2') == FAILURE and parse_region('nan,nan,nan,nan') == UNKNOWN
    np.testing.assert_array_equal(parse_region('1,2,3,4'), [1, 2, 3, 4])
    poly = np.array([0.1, 0.2, 3.123456789012, 4, 5, 6])
    np.testing.assert_array_equal(parse_region(format_region(poly)), poly)  # full precision
    assert format_region(FAILURE) == '2'
    with pytest.raises(ValueError, match='gt.txt:3.*mask'):
        parse_region('m1,2,3,4,5', 'gt.txt:3')
    with pytest.raises(ValueError, match='gt.txt:1: 3 numbers'):
        parse_region('1,2,3', 'gt.txt:1')
    with pytest.raises(ValueError, match='gt.txt:1: not a VOT region'):
        parse_region('1,a,3,4', 'gt.txt:1')
