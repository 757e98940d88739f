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
from nvidia.dali.tensors import TensorCPU, TensorListCPU

from pipeline.crop_kernel import crop_params, render_crop, render_mask
from pipeline.sampling import AugBatch, PlanBatch

IMAGES = ("z", "x")  # template, search
# Every input is fed as one batch of 2N samples, the N templates then the N search images (DALI
# wants one batch size from all its inputs), and split into the two images in the graph.
# Inputs of the one decoder:
DECODE_FIELDS = ("jpeg", "roi_anchor", "roi_shape")
# Inputs of the pixel work of each image:
FIELDS = ("roi_start", "roi_end", "gray", "blur", "col_kernel", "row_kernel", "offset", "params")
_KERNEL_FIELDS = {"params"}
# Inputs of the search mask's crop (SiamMask graphs; placeholders in the template rows):
MASK_FIELDS = ("mask", "mask_params", "mask_matrix")
IS_SEARCH = "is_search"   # the per-sample flag the graph splits the batch by


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


def blur_kernels(augs, taps: int = 1) -> tuple:
    """(column (N, k, 1), row (N, 1, k)) float32 whose filter sums are PySOT's cross kernels.

    Every kernel is centred in k taps, the batch's largest size (odd; at least `taps`), zero
    outside its own size: zero taps add exact zeros, so the filter result is the same as
    with the sample's own size, and the batch is one dense array (cheap to feed).  Samples
    that are not blurred get zeros: the graph routes them around the filters.
    """
    augs = AugBatch.stack(augs)
    sizes = augs.blur_size
    k = max(1, int(taps), int(sizes.max(initial=1)))
    inside = np.abs(np.arange(k) - k // 2)[None, :] <= (sizes // 2)[:, None]
    inside &= (sizes > 0)[:, None]
    per_tap = np.where(sizes > 0, 1.0 / np.maximum(sizes, 1), 0.0)
    col = (inside * (augs.blur_wx * per_tap)[:, None]).astype(np.float32)
    row = (inside * ((1.0 - augs.blur_wx) * per_tap)[:, None]).astype(np.float32)
    return col[:, :, None], row[:, None, :]


def image_inputs(augs, gray, anchors, fields=FIELDS, blur_taps: int = 1) -> dict:
    """Field -> batch of external_source values for one image ('z' or 'x') of every pair.

    `augs`: an AugBatch (or ImageAugs); `anchors`: the (N, 2) origins of the decoded regions
    (`decode_regions`); `blur_taps`: the least size of the blur kernels (`blur_kernels`).
    Dense arrays (much cheaper for DALI to take than lists of small arrays), computed
    vectorised over the batch.
    """
    augs = AugBatch.stack(augs)
    gray = np.asarray(gray, bool).reshape(len(augs))
    out = {}
    if "params" in fields:
        out["params"] = crop_params(augs, gray, anchors)
    if "roi_start" in fields:
        start, end = resize_windows(augs, anchors)
        col, row = blur_kernels(augs, blur_taps)
        out.update({"roi_start": start, "roi_end": end, "gray": gray.copy(),
                    "blur": augs.blur_size > 0, "col_kernel": col, "row_kernel": row,
                    "offset": augs.color_offset})
    return {field: out[field] for field in fields}


def mask_inputs(augs, masks, fields=MASK_FIELDS) -> dict:
    """Field -> (N-sample) external_source values for the search masks of every pair.

    `augs`: the search images' AugBatch; `masks`: one `(region, (x, y))` per pair, region an
    (h, w, 1) uint8 array (nonzero = object) whose top-left pixel is (x, y) of the 511
    crop (`pipeline.crop_source.NO_MASK` where the pair has none).  The mask is cropped at the
    search image's sample points: 'mask_params' for the fused kernel, 'mask_matrix' (the
    destination -> source affine map of `fn.warp_affine`, pixel centres at +0.5, a flip
    included) for the native operators: the same map as the image's `resize_windows`.
    """
    augs = AugBatch.stack(augs)
    origins = np.array([origin for _, origin in masks], np.float64).reshape(len(augs), 2)
    out = {"mask": [region for region, _ in masks]}
    if "mask_params" in fields:
        out["mask_params"] = crop_params(augs, np.zeros(len(augs), bool), origins)
    if "mask_matrix" in fields:
        start, end = resize_windows(augs, origins)      # (y, x)
        scale = (end - start) / augs.out_size
        matrix = np.zeros((len(augs), 2, 3), np.float32)
        matrix[:, 0, 0], matrix[:, 0, 2] = scale[:, 1], start[:, 1]
        matrix[:, 1, 1], matrix[:, 1, 2] = scale[:, 0], start[:, 0]
        out["mask_matrix"] = matrix
    return {field: out[field] for field in fields}


def _fields(roi: bool, gray: bool, blur: bool, kernel: bool) -> tuple:
    """The per-image fields an image's rendering reads."""
    if kernel:
        skip = set(FIELDS) - _KERNEL_FIELDS
    else:
        skip = {"params"}
        if not gray:
            skip.add("gray")
        if not blur:
            skip |= {"blur", "col_kernel", "row_kernel"}
    return tuple(f for f in FIELDS if f not in skip)


def graph_fields(roi: bool, gray: bool, template_blur: bool, search_blur: bool, kernel: bool,
                 mask: bool = False) -> dict:
    """What a graph reads: 'decode', 'z', 'x', 'mask' -> field names ('mask' empty without
    masks); 'inputs' -> every external_source, in feeding order (`IS_SEARCH` included)."""
    decode = DECODE_FIELDS if roi else ("jpeg",)
    z, x = _fields(roi, gray, template_blur, kernel), _fields(roi, gray, search_blur, kernel)
    masks = ("mask", "mask_params" if kernel else "mask_matrix") if mask else ()
    inputs = decode + tuple(f for f in FIELDS if f in z or f in x) + masks + (IS_SEARCH,)
    return {"decode": decode, "z": z, "x": x, "mask": masks, "inputs": inputs}


def _run_crop_kernel(out, image, params):
    # DALI's wrapper passes Optional-typed arrays; a full slice unwraps them, so render_crop
    # runs (and is cached on disk) for plain C-contiguous arrays.
    render_crop(out[:], image[:], params[:])


def _run_mask_kernel(out, mask, params):
    render_mask(out[:], mask[:], params[:])


@do_not_convert
def _chw_shape(channels: int, size: int):
    """numba_function setup: every output sample is (channels, size, size)."""
    def setup(outs, ins):
        shapes = outs[0]
        for i in range(len(shapes)):
            shapes[i][0] = channels
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
    return NumbaFunction(run_fn=_run_crop_kernel, setup_fn=_chw_shape(3, size),
                         in_types=[types.UINT8, types.FLOAT], ins_ndim=[3, 1],
                         out_types=[types.FLOAT], outs_ndim=[3], batch_processing=False)


@functools.lru_cache(maxsize=None)
def _mask_operator(size: int):
    """The search-mask crop operator (`pipeline.crop_kernel.render_mask`) for side `size`."""
    from nvidia.dali.plugin.numba.experimental import NumbaFunction
    return NumbaFunction(run_fn=_run_mask_kernel, setup_fn=_chw_shape(1, size),
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


def _render(img, src: dict, out_size: int, gray: bool, blur: bool, kernel: bool):
    """One image of every pair from its decoded regions `img` and its inputs `src`:
    (N, 3, S, S) float32 BGR."""
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


def _render_mask(src: dict, out_size: int, device: str, kernel: bool):
    """The search mask of every pair from its inputs `src`: (N, 1, S, S) float32, +1 object,
    -1 elsewhere."""
    if kernel:
        return _mask_operator(out_size)(src["mask"], src["mask_params"])
    mask = src["mask"].gpu() if device == "gpu" else src["mask"]
    mask = fn.cast(mask > 0, dtype=types.UINT8)   # the authors read the mask as > 0: {0, 1}
    # bilinear at the search image's sample points, 0 outside the stored region and the crop
    mask = fn.warp_affine(mask, matrix=src["mask_matrix"], size=[out_size, out_size],
                          fill_value=0, inverse_map=True, interp_type=types.INTERP_LINEAR,
                          dtype=types.FLOAT)
    mask = fn.cast(mask > 0.5, dtype=types.FLOAT) * 2.0 - 1.0
    return fn.reshape(mask, shape=[1, out_size, out_size], layout="CHW")


@pipeline_def(enable_conditionals=True)
def _pair_graph(fields, template_size, search_size, device, roi, gray, template_blur,
                search_blur, kernel, decoder):
    # The JPEG bytes are not copied by DALI (no_copy): whoever feeds them keeps them alive and
    # unchanged until the run's outputs are taken (on a GPU: until the outputs are copied).
    src = {f: fn.external_source(name=f, no_copy=f == "jpeg") for f in fields["inputs"]}
    is_search = src.pop(IS_SEARCH)
    # One decoder call for both images of every pair (one thread pool and one set of buffers,
    # batches of 2N for the hardware decoder); then every batch is split into the template
    # and the search half by the per-sample flag, with the operator DALI's own `if`
    # statements are lowered to.
    src["image"] = decode_image(src, device, roi, **decoder)
    halves = {f: fn._conditional.split(v, predicate=is_search) for f, v in src.items()
              if f not in fields["decode"]}
    x_src, z_src = ({f: h[k] for f, h in halves.items()} for k in (0, 1))
    z = _render(z_src["image"], z_src, template_size, gray, template_blur, kernel)
    x = _render(x_src["image"], x_src, search_size, gray, search_blur, kernel)
    if fields["mask"]:
        return z, x, _render_mask(x_src, search_size, device, kernel)
    return z, x


@dataclass(frozen=True, eq=False)
class GraphInputs:
    """How a batch of plans, JPEG bytes and (SiamMask) search masks becomes the graph's
    external_source values (each a batch of 2N: templates, then search images).

    Pure and thread-safe (no pipeline involved): the loader's read-ahead thread prepares
    runs with it while the graph renders earlier ones.
    """
    fields: dict        # `graph_fields`
    image_size: int
    roi: bool

    @property
    def masks(self) -> bool:
        """Whether the graph crops search masks (and wants them in `values`)."""
        return bool(self.fields["mask"])

    def values(self, plans, template_jpegs, search_jpegs, masks=None) -> dict:
        """external_source name -> batch values for a PlanBatch (or PairPlans), its bytes and,
        for a mask graph, its search masks (`mask_inputs`)."""
        plans = PlanBatch.stack(plans)
        n = len(plans)
        wanted = self.fields["inputs"]
        anchors, shapes = decode_regions(np.concatenate([plans.template.crop, plans.search.crop]),
                                         self.image_size, self.roi)
        # One TensorListCPU for the bytes: built here (in the loader's read-ahead thread) it
        # leaves the feeding thread ~1 us a crop against ~5 us for a list of arrays (measured).
        # Non-contiguous: its samples are the bytes objects themselves (each TensorCPU keeps
        # its bytes alive), not a copy of them (~6 us a 33 KB crop, measured).
        out = {"jpeg": TensorListCPU([TensorCPU(j) for j in (*template_jpegs, *search_jpegs)],
                                     contiguous=False),
               "roi_anchor": anchors.astype(np.float32), "roi_shape": shapes.astype(np.float32),
               IS_SEARCH: np.arange(2 * n) >= n}
        image_fields = [f for f in FIELDS if f in wanted]
        taps = int(max(plans.template.blur_size.max(initial=1), plans.search.blur_size.max(initial=1)))
        z = image_inputs(plans.template, plans.gray, anchors[:n], image_fields, taps)
        x = image_inputs(plans.search, plans.gray, anchors[n:], image_fields, taps)
        out.update((f, np.concatenate([z[f], x[f]])) for f in image_fields)
        if self.masks:
            if masks is None or len(masks) != n:
                raise ValueError(f"a mask graph needs one search mask per pair ({n}), got "
                                 f"{None if masks is None else len(masks)}")
            values = mask_inputs(plans.search, masks, self.fields["mask"])
            no_region = TensorCPU(_NO_REGION)
            out["mask"] = TensorListCPU([no_region] * n + [TensorCPU(m) for m in values.pop("mask")],
                                        layout="HWC", contiguous=False)
            out.update((f, np.concatenate([np.zeros_like(v), v])) for f, v in values.items())
        return {f: out[f] for f in wanted}


_NO_REGION = np.zeros((1, 1, 1), np.uint8)   # the template rows' mask placeholder


class PairGraph:
    """The built pair-rendering pipeline plus the knowledge of how to feed it.

    Outputs per run: template (B, 3, Tz, Tz) and search (B, 3, Tx, Tx), CHW float32 BGR, and
    with `mask` the search mask (B, 1, Tx, Tx) float32 in {-1, +1} (SiamMask).
    device 'cpu' runs CPU operators only (device_id None); 'gpu' decodes with 'mixed' and
    does the pixel work on GPU `device_id`.  Both images of a pair are decoded by one decoder
    call (2B samples).  `gray`, `template_blur`, `search_blur` drop operators statically when
    the config never uses them (the graph is otherwise the same).
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
                 hw_decoder_load: float | None = None, fancy_upsampling: bool | None = None,
                 mask: bool = False):
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
        self.mask = bool(mask)
        fields = graph_fields(roi_decode, gray, template_blur, search_blur, kernel, self.mask)
        self.inputs = GraphInputs(fields, int(image_size), bool(roi_decode))
        # DALI's batch size bounds every operator's batch: the decoder's is 2 x batch_size.
        self.pipe = _pair_graph(fields, template_size, search_size, device,
                                roi_decode, gray, template_blur, search_blur, kernel,
                                {"hw_decoder_load": hw_decoder_load,
                                 "fancy_upsampling": fancy_upsampling},
                                batch_size=2 * batch_size, num_threads=num_threads,
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
        """(template, search[, mask]) TensorLists of the oldest scheduled batch.

        With DALI's default (dynamic) executor every output batch is a fresh allocation that
        stays valid while referenced.  `cuda_stream` (GPU): the stream that will read the
        outputs; DALI orders them before that stream's later work instead of making the
        host wait for the rendering.
        """
        outputs = (self.pipe.outputs() if cuda_stream is None
                   else self.pipe.outputs(cuda_stream=cuda_stream))
        self._fed.popleft()
        return outputs
