"""The DALI graph that renders training pairs: one definition for the GPU and the CPU.

Every random decision is made beforehand in numpy (`pipeline.sampling.ImageAug`); the graph
only executes it, with explicit per-sample arguments fed through `fn.external_source`.
Per image (template 'z', search 'x'):

    JPEG bytes --decode RGB (on the CPU: only the region the crop can touch)--> uint8 HWC
      then, on the CPU (kernel=True, the default there):
      --fused crop kernel (`pipeline.crop_kernel`, a numba_function operator): crop warp,
        gray, colour, blur, flip, BGR, CHW float in one pass--> (3, S, S) float32 BGR
      or with DALI's native operators (kernel=False; the GPU graph):
      --resize over a per-sample source window (= PySOT's _crop_roi warp, bilinear; a flip
        is a reversed window)--> uint8 S x S
      --[gray pairs only (DALI conditional): RGB->GRAY->BGR] else RGB->BGR-->
      --crop_mirror_normalize(mean = colour offset, std 1, CHW, float32)-->
      --[blur: filter(column kernel) + filter(row kernel)]--> (3, S, S) float32 BGR

Why two variants: DALI's CPU resize, colour conversion, normalisation and filters cost
~1.8 ms per pair on a 2-core machine, more than the JPEG decode; the fused kernel does the
same in ~0.55 ms (measured; docs/architecture.md).  On the GPU the native operators are
cheap, and numba would need a CUDA toolchain.  Both variants are tested on the CPU against
the OpenCV reference, so the GPU graph's logic is checked without a GPU.

Equivalences of the native variant with PySOT's order (gray -> crop -> colour -> blur -> flip):
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
(docs: dali-notes); the channel swap happens after the crop.
"""
from __future__ import annotations

import collections
import functools
from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import do_not_convert
from nvidia.dali.tensors import TensorListCPU

from pipeline.crop_kernel import crop_params, render_crop
from pipeline.sampling import AugBatch, PlanBatch

IMAGES = ("z", "x")  # template, search
FIELDS = ("jpeg", "roi_anchor", "roi_shape", "roi_start", "roi_end", "gray", "blur",
          "col_kernel", "row_kernel", "offset", "params")
_KERNEL_FIELDS = {"jpeg", "roi_anchor", "roi_shape", "params"}


def input_name(image: str, field: str) -> str:
    """Name of the external_source feeding `field` of `image` ('z' or 'x')."""
    return f"{image}_{field}"


def decode_regions(crops, image_size: int, roi: bool) -> tuple:
    """(anchors (N, 2), shapes (N, 2)) int64, (x, y) and (w, h) of the source pixels the
    bilinear warp of each crop box (N, 4) can read.

    The output pixel centres map onto [crop x1, x2] x [y1, y2]; bilinear sampling reads
    floor(s) and floor(s) + 1; one pixel of slack on each side.  With roi=False: the whole
    image.  Decoding only this region halves the CPU decode cost (measured: 1.0 vs 1.9 ms
    per pair on 2 cores); libjpeg-turbo still entropy-decodes the rows above it.
    """
    crops = np.asarray(crops, np.float64).reshape(-1, 4)
    if not roi:
        return (np.zeros((len(crops), 2), np.int64),
                np.full((len(crops), 2), image_size, np.int64))
    lo = np.clip(np.floor(crops[:, :2]).astype(np.int64) - 1, 0, image_size - 1)
    hi = np.maximum(np.minimum(np.floor(crops[:, 2:]).astype(np.int64) + 3, image_size), lo + 1)
    return lo, hi - lo


def resize_windows(augs, anchors) -> tuple:
    """(roi_start, roi_end), each (N, 2) float32 (y, x), of `fn.resize` equal to PySOT's crop
    warp, for an AugBatch and the (N, 2) (x, y) origins of the decoded regions.

    PySOT's `_crop_roi` maps source pixel centres x1 -> 0 and x2 -> out-1 (cv2 convention,
    integer centres) with bilinear sampling.  DALI's resize maps the output's pixel-corner
    range [0, out] linearly onto [roi_start, roi_end] (the first pixel's corner at 0), so
    with k = (x2 - x1) / (out - 1): roi_start = x1 + .5 - .5 k, roi_end = x1 + .5 + (out - .5) k.
    The sample points are then identical.  A flip swaps start and end (resize flips a
    reversed window).  Coordinates are relative to the decoded region's origin.
    """
    augs = AugBatch.stack(augs)
    out = augs.out_size
    anchors = np.asarray(anchors, np.float64).reshape(len(augs), 2)
    lo, hi = augs.crop[:, :2], augs.crop[:, 2:]          # (x1, y1), (x2, y2)
    k = (hi - lo) / (out - 1)
    start = lo + 0.5 - 0.5 * k - anchors
    end = lo + 0.5 + (out - 0.5) * k - anchors
    flip = augs.flip
    start[:, 0], end[:, 0] = np.where(flip, end[:, 0], start[:, 0]), np.where(flip, start[:, 0], end[:, 0])
    return start[:, ::-1].astype(np.float32), end[:, ::-1].astype(np.float32)


def resize_window(aug, roi_anchor=(0, 0)) -> tuple:
    """`resize_windows` for one ImageAug: (roi_start, roi_end), each (2,) float32 (y, x)."""
    start, end = resize_windows([aug], [roi_anchor])
    return start[0], end[0]


def blur_kernels(augs) -> tuple:
    """(column (N, k, 1), row (N, 1, k)) float32 whose filter sums are PySOT's cross kernels.

    Every kernel is centred in the batch's largest size k (odd), zero outside its own
    size: zero taps add exact zeros, so the filter result is the same as with the sample's
    own size, and the batch is one dense array (cheap to feed).  Samples that are not
    blurred get zeros: the graph routes them around the filters.
    """
    augs = AugBatch.stack(augs)
    sizes = augs.blur_size
    k = max(1, int(sizes.max(initial=1)))
    inside = np.abs(np.arange(k) - k // 2)[None, :] <= (sizes // 2)[:, None]
    inside &= (sizes > 0)[:, None]
    per_tap = np.where(sizes > 0, 1.0 / np.maximum(sizes, 1), 0.0)
    col = (inside * (augs.blur_wx * per_tap)[:, None]).astype(np.float32)
    row = (inside * ((1.0 - augs.blur_wx) * per_tap)[:, None]).astype(np.float32)
    return col[:, :, None], row[:, None, :]


def _native_inputs(augs, gray, anchors) -> dict:
    """Batch values of the native-operator fields for one image of every pair (vectorised)."""
    start, end = resize_windows(augs, anchors)
    col, row = blur_kernels(augs)
    return {"roi_start": start, "roi_end": end, "gray": np.asarray(gray, bool).copy(),
            "blur": augs.blur_size > 0, "col_kernel": col, "row_kernel": row,
            "offset": augs.color_offset}


def batch_inputs(augs, jpegs, gray, image_size: int, roi: bool, fields=FIELDS) -> dict:
    """Field -> batch of external_source values for one image ('z' or 'x') of a batch.

    `augs`: an AugBatch (or ImageAugs).  Dense arrays for everything but the JPEG bytes (much
    cheaper for DALI to take than lists of small arrays), computed vectorised over the batch.
    """
    augs = AugBatch.stack(augs)
    gray = np.asarray(gray, bool).reshape(len(augs))
    anchors, shapes = decode_regions(augs.crop, image_size, roi)
    # One TensorListCPU for the bytes: built here (in the loader's read-ahead thread) it leaves
    # the feeding thread ~1 us a crop against ~5 us for a list of arrays (measured).
    out = {"jpeg": TensorListCPU([np.frombuffer(j, np.uint8) for j in jpegs]),
           "roi_anchor": anchors.astype(np.float32), "roi_shape": shapes.astype(np.float32)}
    if "params" in fields:
        out["params"] = crop_params(augs, gray, anchors)
    if "roi_start" in fields:
        out.update(_native_inputs(augs, gray, anchors))
    return {field: out[field] for field in fields}


def _fields(roi: bool, gray: bool, blur: bool, kernel: bool) -> tuple:
    if kernel:
        skip = set(FIELDS) - _KERNEL_FIELDS
    else:
        skip = {"params"}
        if not gray:
            skip.add("gray")
        if not blur:
            skip |= {"blur", "col_kernel", "row_kernel"}
    if not roi:
        skip |= {"roi_anchor", "roi_shape"}
    return tuple(f for f in FIELDS if f not in skip)


def _run_crop_kernel(out, image, params):
    # DALI's wrapper passes Optional-typed arrays; a full slice unwraps them, so render_crop
    # runs (and is cached on disk) for plain C-contiguous arrays.
    render_crop(out[:], image[:], params[:])


@do_not_convert
def _chw_shape(size: int):
    """numba_function setup: every output sample is (3, size, size)."""
    def setup(outs, ins):
        shapes = outs[0]
        for i in range(len(shapes)):
            shapes[i][0] = 3
            shapes[i][1] = size
            shapes[i][2] = size
    return setup


@functools.lru_cache(maxsize=None)
def _crop_operator(size: int):
    """The fused crop operator for output side `size`, compiled once per process.

    DALI compiles a numba_function's C callbacks (~3 s) each time one is constructed; the
    operator object only carries their addresses, so one instance serves every graph.
    """
    from nvidia.dali.plugin.numba.experimental import NumbaFunction
    return NumbaFunction(run_fn=_run_crop_kernel, setup_fn=_chw_shape(size),
                         in_types=[types.UINT8, types.FLOAT], ins_ndim=[3, 1],
                         out_types=[types.FLOAT], outs_ndim=[3], batch_processing=False)


def decode_image(src, device: str, roi: bool, hw_decoder_load: float | None = None,
                 fancy_upsampling: bool | None = None):
    """The graph's JPEG decoder (RGB; 'mixed' on the GPU): the region src['roi_anchor'],
    src['roi_shape'] of src['jpeg'] when `roi`, else the whole crop.  GPU only:
    `hw_decoder_load` is the share of images for the hardware JPEG decoder and
    `fancy_upsampling` makes nvJPEG interpolate chroma as libjpeg-turbo does (None: DALI's
    defaults, 0.65 and off)."""
    options = {"device": "mixed" if device == "gpu" else "cpu", "output_type": types.RGB}
    if device == "gpu" and hw_decoder_load is not None:
        options["hw_decoder_load"] = float(hw_decoder_load)
    if device == "gpu" and fancy_upsampling is not None:
        options["jpeg_fancy_upsampling"] = bool(fancy_upsampling)
    if roi:
        return fn.decoders.image_slice(src["jpeg"], src["roi_anchor"], src["roi_shape"],
                                       axis_names="WH", normalized_anchor=False,
                                       normalized_shape=False, **options)
    return fn.decoders.image(src["jpeg"], **options)


def _render(image: str, fields: tuple, out_size: int, device: str, roi: bool, gray: bool,
            blur: bool, kernel: bool, decoder: dict):
    # The JPEG bytes are not copied by DALI (no_copy): whoever feeds them keeps them alive and
    # unchanged until the run's outputs are taken (on a GPU: until the outputs are copied).
    src = {f: fn.external_source(name=input_name(image, f), no_copy=f == "jpeg") for f in fields}
    img = decode_image(src, device, roi, **decoder)
    if kernel:  # CPU: all pixel work in one fused operator (pipeline.crop_kernel)
        return _crop_operator(out_size)(img, src["params"])
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
                search_blur, kernel, decoder):
    z = _render("z", fields["z"], template_size, device, roi, gray, template_blur, kernel, decoder)
    x = _render("x", fields["x"], search_size, device, roi, gray, search_blur, kernel, decoder)
    return z, x


@dataclass(frozen=True, eq=False)
class GraphInputs:
    """How a batch of plans and JPEG bytes becomes the graph's external_source values.

    Pure and thread-safe (no pipeline involved): the loader's read-ahead thread prepares
    runs with it while the graph renders earlier ones.
    """
    fields: dict        # 'z' / 'x' -> the fields the graph reads
    image_size: int
    roi: bool

    def values(self, plans, template_jpegs, search_jpegs) -> dict:
        """external_source name -> batch values for a PlanBatch (or PairPlans) and its bytes."""
        plans = PlanBatch.stack(plans)
        out = {}
        for image, augs, jpegs in (("z", plans.template, template_jpegs),
                                   ("x", plans.search, search_jpegs)):
            values = batch_inputs(augs, jpegs, plans.gray, self.image_size, self.roi,
                                  self.fields[image])
            out.update((input_name(image, f), v) for f, v in values.items())
        return out


class PairGraph:
    """The built pair-rendering pipeline plus the knowledge of how to feed it.

    Outputs per run: template (B, 3, Tz, Tz) and search (B, 3, Tx, Tx), CHW float32 BGR.
    device 'cpu' runs CPU operators only (device_id None); 'gpu' decodes with 'mixed' and
    does the pixel work on GPU `device_id`.  `gray`, `template_blur`, `search_blur` drop
    operators statically when the config never uses them (the graph is otherwise the same).
    The graph has no random operators, so results do not depend on `num_threads`.
    Batches may be smaller than `batch_size` (external_source accepts partial batches).
    `prefetch_queue_depth`: DALI's queue depth (the first `schedule` then runs that many fed
    batches; the loader keeps 1 and schedules two runs, which DALI's dynamic executor renders
    concurrently); `hw_decoder_load`,
    `fancy_upsampling`: the GPU decoder's options (`decode_image`).
    """

    def __init__(self, batch_size: int, template_size: int = 127, search_size: int = 255,
                 device: str = "cpu", num_threads: int = 2, device_id: int = 0,
                 image_size: int = 511, roi_decode: bool = True, gray: bool = True,
                 template_blur: bool = True, search_blur: bool = True,
                 prefetch_queue_depth: int = 1, kernel: bool | None = None,
                 hw_decoder_load: float | None = None, fancy_upsampling: bool | None = None):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"DALI device must be 'cpu' or 'gpu', got {device!r}")
        kernel = device == "cpu" if kernel is None else bool(kernel)
        if kernel and device != "cpu":
            raise ValueError("the fused crop kernel is a CPU operator; use kernel=False on 'gpu'")
        if hw_decoder_load is not None and not 0.0 <= float(hw_decoder_load) <= 1.0:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load}")
        self.kernel = kernel
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        self.inputs = GraphInputs({"z": _fields(roi_decode, gray, template_blur, kernel),
                                   "x": _fields(roi_decode, gray, search_blur, kernel)},
                                  int(image_size), bool(roi_decode))
        self.pipe = _pair_graph(self.inputs.fields, template_size, search_size, device,
                                roi_decode, gray, template_blur, search_blur, kernel,
                                {"hw_decoder_load": hw_decoder_load,
                                 "fancy_upsampling": fancy_upsampling},
                                batch_size=batch_size, num_threads=num_threads,
                                device_id=device_id if device == "gpu" else None,
                                prefetch_queue_depth=prefetch_queue_depth)
        self.pipe.build()
        self._fed = collections.deque()   # values of the runs fed and not yet output

    def feed_values(self, values: dict) -> None:
        """Feed values made by `self.inputs.values` (schedule them with `schedule`).  The
        bytes are not copied: the graph holds `values` until that run's outputs are taken."""
        for name, value in values.items():
            self.pipe.feed_input(name, value)
        self._fed.append(values)

    def schedule(self) -> None:
        """Start rendering the batch fed last (runs asynchronously in DALI's threads)."""
        self.pipe.schedule_run()

    def outputs(self, cuda_stream=None):
        """(template, search) TensorLists of the oldest scheduled batch.

        With DALI's default (dynamic) executor every output batch is a fresh allocation that
        stays valid while referenced.  `cuda_stream` (GPU): the stream that will read the
        outputs; DALI orders them before that stream's later work instead of making the
        host wait for the rendering.
        """
        outputs = (self.pipe.outputs() if cuda_stream is None
                   else self.pipe.outputs(cuda_stream=cuda_stream))
        self._fed.popleft()
        return outputs
