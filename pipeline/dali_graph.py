"""The DALI graph that renders training pairs: one definition for the GPU and the CPU.

Every random decision is made beforehand in numpy (`pipeline.sampling.ImageAug`); the graph
only executes it, with explicit per-sample arguments fed through `fn.external_source`.
Per image (template 'z', search 'x'):

    JPEG bytes --decode RGB (only the region the crop can touch, on the CPU)--> uint8 HWC
      --resize over a per-sample source window (= PySOT's _crop_roi warp, bilinear; a flip
        is a reversed window)--> uint8 S x S
      --[gray pairs only (DALI conditional): RGB->GRAY->BGR] else RGB->BGR-->
      --crop_mirror_normalize(mean = colour offset, std 1, CHW, float32)-->
      --[blur: filter(column kernel) + filter(row kernel)]--> (3, S, S) float32 BGR

Equivalences with PySOT's order (gray -> crop -> colour -> blur -> flip):
- crop: PySOT's cv2.warpAffine is axis-aligned (scale + shift), so it is a resize of the
  source window that maps pixel centres x1 -> 0, x2 -> out-1 (`resize_window`); the sample
  points are identical.  DALI's CPU warp_affine costs ~3.7x more than resize (measured), so
  the graph uses resize.  Border: resize clamps where cv2 fills 0, which differs only if the
  crop leaves the 511 image; PySOT's shift clamping keeps it inside, so it never does.
- flip after the crop == the crop over a mirrored window (same sample points);
- gray before the crop == gray after it (both linear per pixel; cv2 rounds gray to uint8
  before the warp, we round after it: differences of at most one grey level);
- the cross kernel is the sum of its centre column and centre row, so filter2D(kernel)
  == filter(column) + filter(row) (DALI's CPU filter wraps cv2.filter2D with the same
  reflect_101 border), and the order colour -> blur is PySOT's.
Decoding is to RGB because libjpeg-turbo's BGR output is ~2.8x slower on the CPU
(docs: dali-notes); the channel swap happens on the small uint8 crop.
"""
from __future__ import annotations

import math

import numpy as np
from nvidia.dali import fn, pipeline_def, types

IMAGES = ("z", "x")  # template, search
FIELDS = ("jpeg", "roi_anchor", "roi_shape", "roi_start", "roi_end", "gray", "blur",
          "col_kernel", "row_kernel", "offset")
_IDENTITY_COL = np.ones((1, 1), np.float32)
_IDENTITY_ROW = np.zeros((1, 1), np.float32)


def input_name(image: str, field: str) -> str:
    """Name of the external_source feeding `field` of `image` ('z' or 'x')."""
    return f"{image}_{field}"


def decode_region(aug, image_size: int, roi: bool) -> tuple:
    """(anchor (x, y), shape (w, h)) int of the source pixels the bilinear warp can read.

    The output pixel centres map onto [crop x1, x2] x [y1, y2]; bilinear sampling reads
    floor(s) and floor(s) + 1; one pixel of slack on each side.  With roi=False: the whole
    image.  Decoding only this region halves the CPU decode cost (measured: 1.0 vs 1.9 ms
    per pair on 2 cores); libjpeg-turbo still entropy-decodes the rows above it.
    """
    if not roi:
        return (0, 0), (image_size, image_size)
    x1, y1, x2, y2 = (float(v) for v in aug.crop)
    lo_x = min(max(int(math.floor(x1)) - 1, 0), image_size - 1)
    lo_y = min(max(int(math.floor(y1)) - 1, 0), image_size - 1)
    hi_x = max(min(int(math.floor(x2)) + 3, image_size), lo_x + 1)
    hi_y = max(min(int(math.floor(y2)) + 3, image_size), lo_y + 1)
    return (lo_x, lo_y), (hi_x - lo_x, hi_y - lo_y)


def resize_window(aug, roi_anchor=(0, 0)) -> tuple:
    """(roi_start, roi_end), each float32 (y, x), of `fn.resize` equal to PySOT's crop warp.

    PySOT's `_crop_roi` maps source pixel centres x1 -> 0 and x2 -> out-1 (cv2 convention,
    integer centres) with bilinear sampling.  DALI's resize maps the output's pixel-corner
    range [0, out] linearly onto [roi_start, roi_end] (the first pixel's corner at 0), so
    with k = (x2 - x1) / (out - 1): roi_start = x1 + .5 - .5 k, roi_end = x1 + .5 + (out - .5) k.
    The sample points are then identical.  A flip swaps start and end (resize flips a
    reversed window).  Coordinates are relative to the decoded region's origin.
    """
    out = aug.out_size
    x1, y1, x2, y2 = (float(v) for v in aug.crop)
    kx, ky = (x2 - x1) / (out - 1), (y2 - y1) / (out - 1)
    sx = (x1 + 0.5 - 0.5 * kx - roi_anchor[0], x1 + 0.5 + (out - 0.5) * kx - roi_anchor[0])
    sy = (y1 + 0.5 - 0.5 * ky - roi_anchor[1], y1 + 0.5 + (out - 0.5) * ky - roi_anchor[1])
    if aug.flip:
        sx = sx[::-1]
    return np.array([sy[0], sx[0]], np.float32), np.array([sy[1], sx[1]], np.float32)


def blur_kernels(aug) -> tuple:
    """(column (k, 1), row (1, k)) float32 whose filter sum is PySOT's cross kernel.

    1x1 placeholders (identity) for an image that is not blurred: the graph routes such
    samples around the filters, but external_source needs a value for every sample.
    """
    if not aug.blur_size:
        return _IDENTITY_COL, _IDENTITY_ROW
    k = int(aug.blur_size)
    col = np.full((k, 1), aug.blur_wx / k, np.float32)
    row = np.full((1, k), (1.0 - aug.blur_wx) / k, np.float32)
    return col, row


def image_inputs(aug, jpeg: bytes, gray: bool, image_size: int, roi: bool) -> dict:
    """Per-sample external_source values (field -> numpy array) for one image."""
    anchor, shape = decode_region(aug, image_size, roi)
    col, row = blur_kernels(aug)
    start, end = resize_window(aug, anchor)
    return {
        "jpeg": np.frombuffer(jpeg, np.uint8),
        "roi_anchor": np.asarray(anchor, np.float32),
        "roi_shape": np.asarray(shape, np.float32),
        "roi_start": start,
        "roi_end": end,
        "gray": np.array(bool(gray)),
        "blur": np.array(bool(aug.blur_size)),
        "col_kernel": col,
        "row_kernel": row,
        "offset": np.asarray(aug.color_offset, np.float32).reshape(3),
    }


def batch_inputs(augs, jpegs, gray, image_size: int, roi: bool) -> dict:
    """Field -> batch (dense array where shapes agree, else a list) for one image of a batch.

    Same values as `image_inputs` per sample, built with one array per field: feeding DALI
    dense arrays is much cheaper than lists of small per-sample arrays.
    """
    samples = [image_inputs(a, j, g, image_size, roi) for a, j, g in zip(augs, jpegs, gray)]
    out = {}
    for field in FIELDS:
        column = [s[field] for s in samples]
        if field in ("jpeg", "col_kernel", "row_kernel"):
            out[field] = column
        else:
            out[field] = np.stack(column)
    return out


def _fields(roi: bool, gray: bool, blur: bool) -> tuple:
    skip = set()
    if not roi:
        skip |= {"roi_anchor", "roi_shape"}
    if not gray:
        skip.add("gray")
    if not blur:
        skip |= {"blur", "col_kernel", "row_kernel"}
    return tuple(f for f in FIELDS if f not in skip)


def _render(image: str, fields: tuple, out_size: int, device: str, roi: bool, gray: bool,
            blur: bool):
    src = {f: fn.external_source(name=input_name(image, f)) for f in fields}
    decoder_device = "mixed" if device == "gpu" else "cpu"
    if roi:
        img = fn.decoders.image_slice(src["jpeg"], src["roi_anchor"], src["roi_shape"],
                                      device=decoder_device, output_type=types.RGB,
                                      axis_names="WH", normalized_anchor=False,
                                      normalized_shape=False)
    else:
        img = fn.decoders.image(src["jpeg"], device=decoder_device, output_type=types.RGB)
    img = fn.resize(img, size=[out_size, out_size], roi_start=src["roi_start"],
                    roi_end=src["roi_end"], roi_relative=False, antialias=False,
                    interp_type=types.INTERP_LINEAR)
    if gray and src["gray"]:  # per-sample branch (DALI conditionals); `gray` is static
        img = fn.color_space_conversion(img, image_type=types.RGB, output_type=types.GRAY)
        img = fn.color_space_conversion(img, image_type=types.GRAY, output_type=types.BGR)
    else:
        img = fn.color_space_conversion(img, image_type=types.RGB, output_type=types.BGR)
    img = fn.crop_mirror_normalize(img, mean=src["offset"], std=1.0, output_layout="CHW",
                                   dtype=types.FLOAT)
    # Blurred samples only (DALI conditional: the others skip the filters), on float CHW
    # planes (cv2's float filters are vectorised, its uint8->float ones are not).
    if blur and src["blur"]:
        col, row = src["col_kernel"], src["row_kernel"]
        img = (fn.filter(img, col, border="reflect_101")
               + fn.filter(img, row, border="reflect_101"))
    return img


@pipeline_def(enable_conditionals=True)
def _pair_graph(fields, template_size, search_size, device, roi, gray, template_blur,
                search_blur):
    z = _render("z", fields["z"], template_size, device, roi, gray, template_blur)
    x = _render("x", fields["x"], search_size, device, roi, gray, search_blur)
    return z, x


class PairGraph:
    """The built pair-rendering pipeline plus the knowledge of how to feed it.

    Outputs per run: template (B, 3, Tz, Tz) and search (B, 3, Tx, Tx), CHW float32 BGR.
    device 'cpu' runs CPU operators only (device_id None); 'gpu' decodes with 'mixed' and
    does the pixel work on GPU `device_id`.  `gray`, `template_blur`, `search_blur` drop
    operators statically when the config never uses them (the graph is otherwise the same).
    The graph has no random operators, so results do not depend on `num_threads`.
    Batches may be smaller than `batch_size` (external_source accepts partial batches).
    """

    def __init__(self, batch_size: int, template_size: int = 127, search_size: int = 255,
                 device: str = "cpu", num_threads: int = 2, device_id: int = 0,
                 image_size: int = 511, roi_decode: bool = True, gray: bool = True,
                 template_blur: bool = True, search_blur: bool = True,
                 prefetch_queue_depth: int = 1):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"DALI device must be 'cpu' or 'gpu', got {device!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        self.image_size = image_size
        self.roi = roi_decode
        self.fields = {"z": _fields(roi_decode, gray, template_blur),
                       "x": _fields(roi_decode, gray, search_blur)}
        self.pipe = _pair_graph(self.fields, template_size, search_size, device, roi_decode,
                                gray, template_blur, search_blur, batch_size=batch_size,
                                num_threads=num_threads,
                                device_id=device_id if device == "gpu" else None,
                                prefetch_queue_depth=prefetch_queue_depth)
        self.pipe.build()

    def feed(self, plans, template_jpegs, search_jpegs) -> None:
        """Feed one batch of PairPlans with their JPEG bytes (schedule it with `schedule`)."""
        gray = np.array([bool(p.gray) for p in plans])
        for image, augs, jpegs in (("z", [p.template for p in plans], template_jpegs),
                                   ("x", [p.search for p in plans], search_jpegs)):
            values = batch_inputs(augs, jpegs, gray, self.image_size, self.roi)
            for field in self.fields[image]:
                self.pipe.feed_input(input_name(image, field), values[field])

    def schedule(self) -> None:
        """Start rendering the batch fed last (runs asynchronously in DALI's threads)."""
        self.pipe.schedule_run()

    def outputs(self):
        """(template, search) TensorLists of the oldest scheduled batch.

        With DALI's default (dynamic) executor every output batch is a fresh allocation that
        stays valid while referenced; the loader relies on that for zero-copy CPU batches.
        """
        return self.pipe.outputs()

    def run(self, plans, template_jpegs, search_jpegs):
        """Synchronous helper: feed, render and return (template, search) as numpy arrays."""
        self.feed(plans, template_jpegs, search_jpegs)
        self.schedule()
        z, x = self.outputs()
        if self.device == "gpu":
            z, x = z.as_cpu(), x.as_cpu()
        return np.array(z.as_tensor()), np.array(x.as_tensor())
