"""The CPU pixel kernel: one pass from a decoded RGB region to an augmented training crop.

DALI's stock CPU operators for this job (resize -> colour conversion -> crop_mirror_normalize
-> two filters) cost ~1.8 ms per pair on the 2-core machine, more than the JPEG decode; this
numba kernel does the same work in ~0.55 ms per pair (measured on real crops; writing the
1 MB of float output alone takes ~0.15 ms).  The DALI graph runs it as a CPU operator
(`numba_function`, per sample in DALI's thread pool, no GIL) right after the decoder; the GPU
graph keeps DALI's native GPU operators.  Compiled code is cached on disk by numba (first use
in a fresh environment: ~10 s).  Semantics are PySOT's `Augmentation` as executed by `pipeline.reference`:

- crop: bilinear sampling at source points x1 + j * step_x (PySOT's `_crop_roi` warp maps
  pixel centres x1 -> 0 and x2 -> out - 1), pixels outside the 511 image are 0 (cv2's constant
  border), the result rounded to uint8 as cv2.warpAffine's is;
- gray (PySOT converts before the crop): cv2's integer BGR->GRAY formula on the source pixels;
- colour: minus the per-sample BGR offset (float);
- blur: PySOT's cross kernel == wx * vertical box mean + (1 - wx) * horizontal box mean of
  size k (reflect_101 border, as cv2.filter2D), computed with running sums: O(1) per pixel
  whatever k is; with no colour offset PySOT blurs uint8 and rounds, and so does this;
- flip: the output columns reversed (the cross kernel and its border are mirror-symmetric,
  so flipping before or after the blur is the same).

Output: (3, S, S) float32 BGR, CHW.  Pixels agree with the reference to within one grey level
(cv2 quantises bilinear weights to 1/32 pixel and 15-bit coefficients).

`render_mask` does the same crop for a SiamMask search mask (the SiamMask authors'
`siam_mask_dataset.py`): the stored {0, 255} mask read as {0, 1}, bilinear at the same sample
points as the search image (zero outside the stored region and the 511 crop), flipped with it,
then `> 0.5` -> +1, else -1; no gray, colour or blur.  The weights are exact (cv2 rounds the
sample points to 1/32 pixel), so a pixel can differ from the authors' only where the
interpolated value lies within 1/32 of 0.5, on the object's outline.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from pipeline.sampling import AugBatch

# Layout of the per-sample float32 parameter vector (`crop_params`).
PARAMS = ("x1", "y1", "step_x", "step_y", "flip", "gray", "offset_b", "offset_g", "offset_r",
          "blur_size", "blur_wx")
_X1, _Y1, _SX, _SY, _FLIP, _GRAY, _OFF, _BLUR, _WX = 0, 1, 2, 3, 4, 5, 6, 9, 10
NUM_PARAMS = len(PARAMS)

# cv2's fixed-point RGB->gray weights (R, G, B; 14 fractional bits, rounded).
_GRAY_R, _GRAY_G, _GRAY_B = 4899, 9617, 1868


def crop_params(augs, gray, origins) -> np.ndarray:
    """(N, NUM_PARAMS) float32 kernel parameters of N images: `augs` an AugBatch (or ImageAugs
    of one output size), `gray` (N,) bools, `origins` (N, 2) the (x, y) of each decoded
    region's top-left pixel in the crop."""
    augs = AugBatch.stack(augs)
    n = len(augs)
    crops = augs.crop
    origins = np.asarray(origins, np.float64).reshape(n, 2)
    params = np.empty((n, NUM_PARAMS), np.float64)
    params[:, _X1] = crops[:, 0] - origins[:, 0]
    params[:, _Y1] = crops[:, 1] - origins[:, 1]
    params[:, _SX] = (crops[:, 2] - crops[:, 0]) / (augs.out_size - 1)
    params[:, _SY] = (crops[:, 3] - crops[:, 1]) / (augs.out_size - 1)
    params[:, _FLIP] = augs.flip
    params[:, _GRAY] = np.asarray(gray, bool).reshape(n)
    params[:, _OFF:_OFF + 3] = augs.color_offset
    params[:, _BLUR] = augs.blur_size
    params[:, _WX] = augs.blur_wx
    return params.astype(np.float32)


@njit(cache=True, nogil=True, error_model="numpy")
def _taps(start, step, n, flip):
    """Left tap index and weight of the right tap for n sample points start + j * step."""
    index = np.empty(n, np.int64)
    weight = np.empty(n, np.float32)
    for j in range(n):
        s = start + j * step
        f = math.floor(s)
        k = n - 1 - j if flip else j
        index[k] = int(f)
        weight[k] = np.float32(s - f)
    return index, weight


@njit(cache=True, nogil=True, error_model="numpy")
def _gray(row, a):
    return np.float32((np.int32(row[a, 0]) * _GRAY_R + np.int32(row[a, 1]) * _GRAY_G
                       + np.int32(row[a, 2]) * _GRAY_B + 8192) >> 14)


@njit(cache=True, nogil=True, error_model="numpy")
def _horizontal(out, row, index, weight, gray, scratch):
    """Interpolate one source row (W, 3) uint8 RGB along x into out (C, S): BGR or gray."""
    width = row.shape[0]
    if not gray:  # widen the row to float once (contiguous, vectorised), then gather
        flat = row.reshape(width * 3)
        for q in range(width * 3):
            scratch[q] = flat[q]
    for j in range(index.shape[0]):
        a = index[j]
        w = weight[j]
        if 0 <= a and a + 1 < width:
            if gray:
                v0 = _gray(row, a)
                out[0, j] = v0 + w * (_gray(row, a + 1) - v0)
            else:
                k = 3 * a
                r0, g0, b0 = scratch[k], scratch[k + 1], scratch[k + 2]
                out[0, j] = b0 + w * (scratch[k + 5] - b0)
                out[1, j] = g0 + w * (scratch[k + 4] - g0)
                out[2, j] = r0 + w * (scratch[k + 3] - r0)
        else:  # a tap outside the image reads cv2's constant border, 0
            for c in range(out.shape[0]):
                v0 = np.float32(0.0)
                v1 = np.float32(0.0)
                if 0 <= a < width:
                    v0 = _gray(row, a) if gray else np.float32(row[a, 2 - c])
                if 0 <= a + 1 < width:
                    v1 = _gray(row, a + 1) if gray else np.float32(row[a + 1, 2 - c])
                out[c, j] = v0 + w * (v1 - v0)


@njit(cache=True, nogil=True, error_model="numpy")
def _vertical(out, top, bottom, w, offset):
    """out = round(lerp(top, bottom, w)) - offset over one output row."""
    for j in range(out.shape[0]):
        out[j] = math.floor(top[j] + w * (bottom[j] - top[j]) + np.float32(0.5)) - offset


@njit(cache=True, nogil=True, error_model="numpy")
def _reflect(i, n):
    """cv2's BORDER_REFLECT_101 index (valid for |overshoot| < n)."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * n - 2 - i
    return i


@njit(cache=True, nogil=True, error_model="numpy")
def _cross_blur(out, image, size, wx, round_uint8):
    """out = PySOT's cross-kernel filter2D of image (C, S, S): wx * vertical box mean +
    (1 - wx) * horizontal box mean, both of `size` taps, reflect_101 border."""
    channels, n = image.shape[0], image.shape[1]
    r = size // 2
    col_w = wx / size
    row_w = (1.0 - wx) / size
    column_sum = np.empty(n, np.float64)
    prefix = np.empty(n + 2 * r + 1, np.float64)
    for c in range(channels):
        src = image[c]
        dst = out[c]
        column_sum[:] = 0.0
        for dy in range(-r, r + 1):
            line = src[_reflect(dy, n)]
            for j in range(n):
                column_sum[j] += line[j]
        for i in range(n):
            line = src[i]
            prefix[0] = 0.0
            for q in range(n + 2 * r):
                prefix[q + 1] = prefix[q] + line[_reflect(q - r, n)]
            o = dst[i]
            for j in range(n):
                v = col_w * column_sum[j] + row_w * (prefix[j + 2 * r + 1] - prefix[j])
                if round_uint8:
                    v = min(max(math.floor(v + 0.5), 0.0), 255.0)
                o[j] = v
            if i + 1 < n:  # slide the vertical window down one row
                enter = src[_reflect(i + 1 + r, n)]
                leave = src[_reflect(i - r, n)]
                for j in range(n):
                    column_sum[j] += enter[j] - leave[j]


@njit(cache=True, nogil=True, error_model="numpy")
def render_crop(out, image, params):
    """Render one augmented crop: out (3, S, S) float32 BGR from image (H, W, 3) uint8 RGB
    (the decoded region) and the `crop_params` vector."""
    size = out.shape[1]
    height = image.shape[0]
    flip = params[_FLIP] > 0.5
    gray = params[_GRAY] > 0.5
    blur = int(params[_BLUR])
    x_index, x_weight = _taps(np.float64(params[_X1]), np.float64(params[_SX]), size, flip)
    y_index, y_weight = _taps(np.float64(params[_Y1]), np.float64(params[_SY]), size, False)
    channels = 1 if gray else 3
    # Horizontally interpolated source rows, two at a time: row y_index[i] and the one below
    # (source rows off the image stay 0, cv2's constant border).
    lines = np.zeros((2, channels, size), np.float32)
    held = np.array([-(2 ** 40), -(2 ** 40)], np.int64)  # source row held in each slot
    target = np.empty((3, size, size), np.float32) if blur > 0 else out
    scratch = np.empty(image.shape[1] * 3, np.float32)
    for i in range(size):
        for k in range(2):
            r = y_index[i] + k
            slot = r & 1
            if held[slot] != r:
                if 0 <= r < height:
                    _horizontal(lines[slot], image[r], x_index, x_weight, gray, scratch)
                else:
                    lines[slot, :, :] = 0.0
                held[slot] = r
        top = y_index[i] & 1
        for c in range(3):
            s = 0 if gray else c
            _vertical(target[c, i], lines[top, s], lines[1 - top, s], y_weight[i],
                      params[_OFF + c])
    if blur > 0:
        no_colour = params[_OFF] == 0 and params[_OFF + 1] == 0 and params[_OFF + 2] == 0
        _cross_blur(out, target, blur, np.float64(params[_WX]), no_colour)


@njit(cache=True, nogil=True, error_model="numpy")
def _inside(index, width):
    """[first, last) of the output positions whose two taps (index, index + 1) are not both
    outside [0, width) (a contiguous run: the taps are monotonic)."""
    first, last = index.shape[0], 0
    for j in range(index.shape[0]):
        if index[j] + 1 >= 0 and index[j] < width:
            first = min(first, j)
            last = j + 1
    return first, max(first, last)


@njit(cache=True, nogil=True, error_model="numpy")
def render_mask(out, mask, params):
    """Render one search mask: out (1, S, S) float32 in {-1, +1} from mask (h, w, 1) uint8
    (the stored region of the object's mask, HWC; nonzero = object) and the `crop_params`
    vector of the search image taken with the region's top-left pixel as origin (gray, colour
    and blur are ignored)."""
    size = out.shape[1]
    height, width = mask.shape[0], mask.shape[1]
    flip = params[_FLIP] > 0.5
    x_index, x_weight = _taps(np.float64(params[_X1]), np.float64(params[_SX]), size, flip)
    y_index, y_weight = _taps(np.float64(params[_Y1]), np.float64(params[_SY]), size, False)
    plane = out[0]
    plane[:, :] = -1.0
    # The region as {0, 1} floats with a zero border of one pixel: every tap of an output
    # position inside [first, last) then reads inside it, without bounds checks.
    padded = np.zeros((height + 2, width + 2), np.float32)
    for r in range(height):
        for c in range(width):
            if mask[r, c, 0] > 0:
                padded[r + 1, c + 1] = 1.0
    col_first, col_last = _inside(x_index, width)
    row_first, row_last = _inside(y_index, height)
    for i in range(row_first, row_last):
        top_row = padded[y_index[i] + 1]
        bottom_row = padded[y_index[i] + 2]
        wy = y_weight[i]
        line = plane[i]
        for j in range(col_first, col_last):
            a = x_index[j] + 1
            wx = x_weight[j]
            top = top_row[a] + wx * (top_row[a + 1] - top_row[a])
            bottom = bottom_row[a] + wx * (bottom_row[a + 1] - bottom_row[a])
            if top + wy * (bottom - top) > 0.5:
                line[j] = 1.0
