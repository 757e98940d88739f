"""PySOT anchor sizes and grids.

The expected sizes and grid positions are those of PySOT's `pysot/utils/anchor.py` (`Anchors`:
ws = int(sqrt(stride^2 / r)), hs = int(ws * r), times the scale) and of its `AnchorTarget`, whose
grid starts at search_size // 2 - (output_size // 2) * stride: written out below, not read from
this implementation."""
import numpy as np

from pipeline.anchors import anchor_grid, anchor_grid_from_cfg, anchor_sizes, tracker_anchors
from train.config import load_config

RATIOS = [0.33, 0.5, 1, 2, 3]
PYSOT_SIZES = [(104, 32), (88, 40), (64, 64), (40, 80), (32, 96)]


def test_sizes_are_pysots_integer_truncated_sizes():
    assert anchor_sizes(8, RATIOS, [8]).tolist() == [list(s) for s in PYSOT_SIZES]


def test_sizes_ratio_major_scale_minor():
    sizes = anchor_sizes(8, [0.5, 1], [4, 8])
    # ratio 0.5: ws = int(sqrt(128)) = 11, hs = int(5.5) = 5; ratio 1: 8 x 8
    assert sizes.tolist() == [[44, 20], [88, 40], [32, 32], [64, 64]]


def test_training_grid_centres_and_corners():
    cfg = load_config(None)
    corners, centres = anchor_grid_from_cfg(cfg)
    assert corners.shape == centres.shape == (4, 5, 25, 25)
    assert corners.dtype == centres.dtype == np.float32
    # PySOT's AnchorTarget: the grid starts at search_size // 2 - (output_size // 2) * stride
    # and steps by the stride (255 // 2 - 12 * 8 = 31 for the R50 recipe)
    stride, size = cfg.ANCHOR.STRIDE, cfg.TRAIN.OUTPUT_SIZE
    expected = cfg.TRAIN.SEARCH_SIZE // 2 - (size // 2) * stride + stride * np.arange(size)
    for a, (w, h) in enumerate(PYSOT_SIZES):
        assert np.array_equal(centres[0, a], np.broadcast_to(expected[None, :], (25, 25)))
        assert np.array_equal(centres[1, a], np.broadcast_to(expected[:, None], (25, 25)))
        assert np.all(centres[2, a] == w) and np.all(centres[3, a] == h)
        assert np.array_equal(corners[0, a], centres[0, a] - w / 2)
        assert np.array_equal(corners[3, a], centres[1, a] + h / 2)


def test_grid_origin_for_other_sizes():
    # AlexNet recipe: 255 search, 17x17 map -> origin 127 - 8 * 8 = 63
    _, centres = anchor_grid(8, RATIOS, [8], 255, 17)
    assert centres[0, 0, 0, 0] == 63 and centres[0, 0, 0, -1] == 63 + 16 * 8
    # odd search size 287 -> im_c = 143
    _, centres = anchor_grid(8, RATIOS, [8], 287, 21)
    assert centres[1, 0, 10, 0] == 143


def test_tracker_anchors_flattened_anchor_major_and_centred():
    anchors = tracker_anchors(8, RATIOS, [8], 25)
    assert anchors.shape == (5 * 625, 4) and anchors.dtype == np.float32
    for a, (w, h) in enumerate(PYSOT_SIZES):
        for y, x in [(0, 0), (3, 17), (12, 12), (24, 24)]:
            assert anchors[a * 625 + y * 25 + x].tolist() == [-96 + 8 * x, -96 + 8 * y, w, h]
    assert anchors[:, 0].min() == -96 and anchors[:, 0].max() == 96
