"""Training-pair sampling and augmentation parameters: PySOT's TrkDataset, pixel-free.

Every decision about a training pair (which 511 crops, gray, negative, and each image's
shift/scale/colour/blur/flip) is made here in numpy as a pure function of
(seed, epoch, global index, attempt), vectorised over a batch (`PairSampler.plan_batch`).
The DALI graph (`pipeline/dali_graph.py`) and the OpenCV reference (`pipeline/reference.py`)
only execute the plans.

Semantics follow PySOT (`pysot/datasets/dataset.py`, `augmentation.py`):

- Per dataset, a fixed pick list of video slots: permutations of all videos concatenated
  until NUM_USE is reached, then truncated (NUM_USE = -1: every video once). Drawn once
  from `seed`, as PySOT draws it once at start-up.
- The training stream is an endless sequence of "rounds"; each round is the concatenation of
  all datasets' pick lists, shuffled. Epoch e is positions [e*N, (e+1)*N) of that stream,
  N = VIDEOS_PER_EPOCH (or the total of NUM_USE if <= 0). This is PySOT's single
  EPOCH*N pick list (what a one-GPU PySOT run iterates), except that each round is drawn from
  the seed alone (`_rounds`), so any epoch's order is computable on its own from (seed, epoch)
  and the stream does not end after TRAIN.EPOCH epochs. (Multi-GPU PySOT additionally
  permutes its whole list with torch's DistributedSampler; we slice each epoch across ranks.)
- Positive pair: a random object track of the video; template position uniform over the
  track's sorted frame list; search position uniform over list positions within
  +-FRAME_RANGE (it may equal the template). The shard index splits tracks into
  consecutive-frame runs; runs of one object (same track id, increasing frames) are merged
  back here so the choice is uniform over objects and the window spans gaps, as in PySOT.
- Negative pair (probability NEG): template = random track and frame of this video; search
  = random frame of a random track of a random video of a dataset chosen uniformly.
- Gray (probability GRAY) applies to both images of the pair.
- Box on the 511 crop: `pipeline.crop.box_on_crop` (PySOT's `_get_bbox`).
- SiamMask (cfg.MASK.MASK): `search_mask` marks the positive pairs whose search entry has a
  stored mask (the SiamMask authors' `dataset.has_mask and not neg`, per entry here); those
  pairs get the mask crop and a mask weight, the others an empty mask and zero weight.
- Augmentation (`draw_image_augs`): nominal crop box of side out-1 centred at (crop//2, crop//2);
  scale_x, scale_y = 1 + U(-1,1)*SCALE independently (capped at crop/side, as PySOT);
  shift U(-1,1)*SHIFT each, clamped so the box stays within [0, crop-1]; target box
  (box - crop.x1) / scale; colour with probability COLOR: offset = (rgbVar @ N(0, I3))
  reversed to BGR, subtracted; blur with probability BLUR: odd size uniform in 5..45 and
  wx ~ U(0,1); flip with probability FLIP, box x -> out-1-x.

Deliberate difference: PySOT draws all of these from one global np.random stream in its
own order; we draw a fixed layout of 28 uniforms and 6 normals per sample from a
counter-based generator keyed by (seed, epoch, index, attempt) (`sample_draws`: SplitMix64
over the key, normals by Box-Muller), vectorised over a batch. The distributions are PySOT's,
the numbers are not, and nothing depends on threads, workers, ranks or batch composition.
"""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import numpy as np

from pipeline.crop import CROP_SIZE, boxes_on_crop, shard_crop_geometry

# rgbVar of PySOT's colour augmentation (PCA of ImageNet RGB, rows scaled).
RGB_VAR = np.array([[-0.55919361, 0.98062831, -0.41940627],
                    [1.72091413, 0.19879334, -1.82968581],
                    [4.64467907, 4.73710203, 4.88324118]], dtype=np.float32)

BLUR_SIZES = np.arange(5, 46, 2)    # PySOT's kernel sizes, drawn uniformly
_BLUR_CHOICES = len(BLUR_SIZES)
_RGB_VAR64 = RGB_VAR.astype(np.float64)

_TAG_PICK = 0x7069636B    # seeds for the per-dataset pick lists
_TAG_ROUND = 0x726F756E   # seeds for the rounds of the pick stream
_TAG_PAIR = 0x70616972    # key of the per-sample draws

# Layout of the per-sample uniforms (u) and normals (z).
_U_GRAY, _U_NEG, _U_SLOT, _U_TRACK, _U_TFRAME, _U_SFRAME = 0, 1, 2, 3, 4, 5
_U_NEG_DATASET, _U_NEG_VIDEO, _U_NEG_TRACK, _U_NEG_FRAME = 6, 7, 8, 9
_U_TEMPLATE_AUG, _U_SEARCH_AUG, _AUG_SLOTS = 10, 19, 9
_U_COUNT = 28
_Z_COUNT = 6

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)   # SplitMix64's increment
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a uint64 array (a bijection; wraps modulo 2**64)."""
    x = (x ^ (x >> _S30)) * _MIX1
    x = (x ^ (x >> _S27)) * _MIX2
    return x ^ (x >> _S31)


def sample_draws(seed: int, epoch: int, indices, attempts, n_uniform: int = _U_COUNT,
                 n_normal: int = _Z_COUNT) -> tuple:
    """(u (N, n_uniform) in [0, 1), z (N, n_normal) standard normal) float64 per sample.

    Sample i's numbers are the SplitMix64 stream of a 64-bit key chained from
    (seed, epoch, indices[i], attempts[i]): a pure function of those four integers.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    attempts = np.broadcast_to(np.asarray(attempts, np.int64), indices.shape)
    key = _mix64(np.array([_TAG_PAIR], np.uint64))
    for value in (np.array([seed]), np.array([epoch]), indices, attempts):
        key = _mix64(key + (value.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    counters = np.arange(1, n_uniform + 2 * ((n_normal + 1) // 2) + 1, dtype=np.uint64) * _GOLDEN
    bits = _mix64(key[:, None] + counters[None, :])
    draws = (bits >> _S11).astype(np.float64) * (1.0 / (1 << 53))
    u = draws[:, :n_uniform]
    pairs = draws[:, n_uniform:]
    half = pairs.shape[1] // 2
    radius = np.sqrt(-2.0 * np.log1p(-pairs[:, :half]))   # 1 - u in (0, 1]: finite
    angle = 2.0 * np.pi * pairs[:, half:]
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :n_normal]
    return u, z


@dataclass(frozen=True)
class ImageAug:
    """One image's augmentation, in 511-crop pixel coordinates."""
    crop: np.ndarray            # (4,) float64 x1,y1,x2,y2 of the crop region mapped onto the output
    out_size: int               # output side (127 or 255)
    color_offset: np.ndarray    # (3,) float32 BGR, subtracted from the image (zeros: no colour aug)
    blur_size: int              # 0 = no blur, else odd 5..45
    blur_wx: float              # weight of the centre column; 1 - wx on the centre row
    flip: bool
    box: np.ndarray             # (4,) float32 target x1,y1,x2,y2 on the output image after all aug

    def affine(self, dtype=np.float32) -> np.ndarray:
        """(2, 3) map from 511-crop pixels to output pixels, as PySOT's `_crop_roi`."""
        x1, y1, x2, y2 = (float(v) for v in self.crop)
        a = (self.out_size - 1) / (x2 - x1)
        b = (self.out_size - 1) / (y2 - y1)
        return np.array([[a, 0.0, -a * x1], [0.0, b, -b * y1]], dtype=dtype)


@dataclass(frozen=True)
class PairPlan:
    """Everything about one training pair except pixels."""
    template_ref: tuple   # (dataset index in cfg.DATASET.NAMES order, entry index in its reader)
    search_ref: tuple
    neg: bool
    gray: bool
    template: ImageAug
    search: ImageAug
    search_mask: bool = False   # SiamMask: the search entry's stored mask is a training label


class _Rows:
    """Row operations of a frozen dataclass whose array fields share their first axis."""

    def __len__(self) -> int:
        return len(getattr(self, dataclasses.fields(self)[0].name))

    def take(self, rows):
        """The rows `rows` (an index array), as a new batch."""
        return type(self)(**{f.name: _take(getattr(self, f.name), rows)
                             for f in dataclasses.fields(self)})

    @classmethod
    def concat(cls, parts: list):
        """Batches of the same kind, one after the other."""
        return cls(**{f.name: _concat([getattr(p, f.name) for p in parts])
                      for f in dataclasses.fields(cls)})


def _take(value, rows):
    if isinstance(value, _Rows):
        return value.take(rows)
    return value if isinstance(value, int) else value[rows]


def _concat(values: list):
    if isinstance(values[0], _Rows):
        return type(values[0]).concat(values)
    if isinstance(values[0], int):
        if any(v != values[0] for v in values):
            raise ValueError(f"cannot join batches of different output sizes {sorted(set(values))}")
        return values[0]
    return np.concatenate(values)


@dataclass(frozen=True)
class AugBatch(_Rows):
    """The augmentations of N images of one output size (the arrays of N ImageAugs)."""
    crop: np.ndarray            # (N, 4) float64
    out_size: int
    color_offset: np.ndarray    # (N, 3) float32
    blur_size: np.ndarray       # (N,) int64, 0 = no blur
    blur_wx: np.ndarray         # (N,) float64
    flip: np.ndarray            # (N,) bool
    box: np.ndarray             # (N, 4) float32

    def __getitem__(self, i: int) -> ImageAug:
        return ImageAug(crop=self.crop[i].copy(), out_size=self.out_size,
                        color_offset=self.color_offset[i].copy(), blur_size=int(self.blur_size[i]),
                        blur_wx=float(self.blur_wx[i]), flip=bool(self.flip[i]),
                        box=self.box[i].copy())

    @classmethod
    def stack(cls, augs) -> "AugBatch":
        """ImageAugs of one output size -> AugBatch (an AugBatch is returned as it is)."""
        if isinstance(augs, AugBatch):
            return augs
        augs = list(augs)
        sizes = {int(a.out_size) for a in augs}
        if len(sizes) != 1:
            raise ValueError(f"an AugBatch holds images of one output size, got {sorted(sizes)}")
        n = len(augs)
        return cls(crop=np.array([a.crop for a in augs], np.float64).reshape(n, 4),
                   out_size=sizes.pop(),
                   color_offset=np.array([a.color_offset for a in augs], np.float32).reshape(n, 3),
                   blur_size=np.array([int(a.blur_size) for a in augs], np.int64),
                   blur_wx=np.array([float(a.blur_wx) for a in augs], np.float64),
                   flip=np.array([bool(a.flip) for a in augs], bool),
                   box=np.array([a.box for a in augs], np.float32).reshape(n, 4))


@dataclass(frozen=True)
class PlanBatch(_Rows):
    """N PairPlans as arrays (what the loader and the DALI graph consume)."""
    template_ref: np.ndarray    # (N, 2) int64: dataset, entry
    search_ref: np.ndarray      # (N, 2) int64
    neg: np.ndarray             # (N,) bool
    gray: np.ndarray            # (N,) bool
    template: AugBatch
    search: AugBatch
    search_mask: np.ndarray     # (N,) bool: PairPlan.search_mask

    def __getitem__(self, i: int) -> PairPlan:
        return PairPlan(template_ref=tuple(int(v) for v in self.template_ref[i]),
                        search_ref=tuple(int(v) for v in self.search_ref[i]),
                        neg=bool(self.neg[i]), gray=bool(self.gray[i]),
                        template=self.template[i], search=self.search[i],
                        search_mask=bool(self.search_mask[i]))

    @classmethod
    def stack(cls, plans) -> "PlanBatch":
        """PairPlans -> PlanBatch (a PlanBatch is returned as it is)."""
        if isinstance(plans, PlanBatch):
            return plans
        plans = list(plans)
        n = len(plans)
        return cls(template_ref=np.array([p.template_ref for p in plans], np.int64).reshape(n, 2),
                   search_ref=np.array([p.search_ref for p in plans], np.int64).reshape(n, 2),
                   neg=np.array([bool(p.neg) for p in plans], bool),
                   gray=np.array([bool(p.gray) for p in plans], bool),
                   template=AugBatch.stack([p.template for p in plans]),
                   search=AugBatch.stack([p.search for p in plans]),
                   search_mask=np.array([bool(p.search_mask) for p in plans], bool))


def _uniform_ints(u, n):
    """Uniform integers in [0, n) from u ~ U[0, 1) (arrays; n >= 1)."""
    return np.minimum((u * n).astype(np.int64), np.asarray(n, np.int64) - 1)


@dataclass(frozen=True)
class AugParams:
    """One image's augmentation settings (cfg.DATASET.TEMPLATE or .SEARCH) as plain floats."""
    SHIFT: float
    SCALE: float
    BLUR: float
    FLIP: float
    COLOR: float

    @classmethod
    def from_cfg(cls, node) -> "AugParams":
        return cls(*(float(getattr(node, k)) for k in ('SHIFT', 'SCALE', 'BLUR', 'FLIP', 'COLOR')))


def draw_image_augs(u, z, boxes, aug_cfg, out_size: int, crop_size: int = CROP_SIZE) -> AugBatch:
    """PySOT's `Augmentation` parameters for N images.

    u: (N, 9) uniforms in [0, 1) (scale x/y, shift x/y, colour coin, blur coin, blur size,
    blur wx, flip coin); z: (N, 3) standard normals (colour); boxes: (N, 4) target boxes on
    the crop; aug_cfg: cfg.DATASET.TEMPLATE / .SEARCH or an AugParams.
    """
    u = np.asarray(u, np.float64).reshape(-1, _AUG_SLOTS)
    z = np.asarray(z, np.float64).reshape(len(u), 3)
    boxes = np.asarray(boxes, np.float64).reshape(len(u), 4)
    centre = crop_size // 2
    side = out_size - 1
    scale_x = scale_y = np.ones(len(u))
    if aug_cfg.SCALE:
        scale_x = np.minimum(1.0 + (2 * u[:, 0] - 1) * aug_cfg.SCALE, crop_size / side)
        scale_y = np.minimum(1.0 + (2 * u[:, 1] - 1) * aug_cfg.SCALE, crop_size / side)
    w, h = side * scale_x, side * scale_y
    x1, y1, x2, y2 = centre - w * 0.5, centre - h * 0.5, centre + w * 0.5, centre + h * 0.5
    if aug_cfg.SHIFT:
        sx = np.maximum(-x1, np.minimum(crop_size - 1 - x2, (2 * u[:, 2] - 1) * aug_cfg.SHIFT))
        sy = np.maximum(-y1, np.minimum(crop_size - 1 - y2, (2 * u[:, 3] - 1) * aug_cfg.SHIFT))
        x1, y1, x2, y2 = x1 + sx, y1 + sy, x2 + sx, y2 + sy

    out_box = np.stack([(boxes[:, 0] - x1) / scale_x, (boxes[:, 1] - y1) / scale_y,
                        (boxes[:, 2] - x1) / scale_x, (boxes[:, 3] - y1) / scale_y], axis=1)
    coloured = aug_cfg.COLOR > u[:, 4]
    color_offset = np.where(coloured[:, None], (z @ _RGB_VAR64.T)[:, ::-1], 0.0).astype(np.float32)
    blurred = aug_cfg.BLUR > u[:, 5]
    blur_size = np.where(blurred, 5 + 2 * _uniform_ints(u[:, 6], _BLUR_CHOICES), 0)
    blur_wx = np.where(blurred, u[:, 7], 0.0)
    flip = (aug_cfg.FLIP > u[:, 8]) if aug_cfg.FLIP else np.zeros(len(u), bool)
    flipped = np.stack([out_size - 1 - out_box[:, 2], out_box[:, 1],
                        out_size - 1 - out_box[:, 0], out_box[:, 3]], axis=1)
    out_box = np.where(flip[:, None], flipped, out_box)
    return AugBatch(crop=np.stack([x1, y1, x2, y2], axis=1), out_size=int(out_size),
                    color_offset=color_offset, blur_size=blur_size.astype(np.int64),
                    blur_wx=blur_wx, flip=flip, box=out_box.astype(np.float32))


def draw_image_aug(u, z, box, aug_cfg, out_size: int, crop_size: int = CROP_SIZE) -> ImageAug:
    """`draw_image_augs` for one image: u (9,), z (3,), box (4,)."""
    return draw_image_augs(np.reshape(u, (1, _AUG_SLOTS)), np.reshape(z, (1, 3)),
                           np.reshape(box, (1, 4)), aug_cfg, out_size, crop_size)[0]


class _DatasetIndex:
    """Sampling view of one ShardReader: videos -> objects -> sorted entries."""

    def __init__(self, reader):
        track_start = np.asarray(reader.video_track_start, dtype=np.int64)
        entry_start = np.asarray(reader.track_entry_start, dtype=np.int64)
        track_ids = np.asarray(reader.track_ids)
        frames = np.asarray(reader.entry_frame)
        n_videos = len(track_start) - 1
        n_tracks = len(entry_start) - 1
        track_video = np.repeat(np.arange(n_videos), np.diff(track_start))
        # Merge consecutive runs of one object (same video and id, frames increasing).
        new_object = np.ones(n_tracks, dtype=bool)
        if n_tracks > 1:
            first_frame = frames[entry_start[1:-1]]
            prev_last_frame = frames[entry_start[1:-1] - 1]
            new_object[1:] = ((track_video[1:] != track_video[:-1])
                              | (track_ids[1:] != track_ids[:-1])
                              | (first_frame <= prev_last_frame))
        first_track = np.flatnonzero(new_object)
        self.object_entry_start = np.append(entry_start[first_track], entry_start[-1])
        object_video = track_video[first_track]
        self.video_object_start = np.searchsorted(object_video, np.arange(n_videos + 1))
        has_objects = np.diff(self.video_object_start) > 0
        self.videos = np.flatnonzero(has_objects)   # PySOT drops videos without tracks
        self.entry_box = reader.entry_box
        # entries whose stored mask is a SiamMask label (None: the dataset has no masks)
        self.entry_has_mask = (np.asarray(reader.entry_has_mask, bool)
                               if getattr(reader, "has_masks", False) else None)

    def __len__(self):
        return len(self.videos)


class _SlotTable:
    """Every dataset's sampleable videos and objects in one numbering, for batched lookups.

    Global video slot s (datasets in cfg order, videos with objects only) -> its dataset,
    its objects' range [slot_object_start, + slot_object_count), and each global object's
    first entry (in its own reader) and entry count.
    """

    def __init__(self, datasets: list):
        self.slot_dataset = _join([np.full(len(ds), d) for d, ds in enumerate(datasets)])
        starts, counts, entry_start, entry_count = [], [], [], []
        object_base = 0
        for ds in datasets:
            first = ds.video_object_start[ds.videos]
            starts.append(object_base + first)
            counts.append(ds.video_object_start[ds.videos + 1] - first)
            entry_start.append(ds.object_entry_start[:-1])
            entry_count.append(np.diff(ds.object_entry_start))
            object_base += len(ds.object_entry_start) - 1
        self.slot_object_start, self.slot_object_count = _join(starts), _join(counts)
        self.object_entry_start, self.object_entry_count = _join(entry_start), _join(entry_count)

    def random_object(self, slots, u_object):
        """(first entry, entry count) of a uniformly random object of each video slot."""
        obj = self.slot_object_start[slots] + _uniform_ints(u_object, self.slot_object_count[slots])
        return self.object_entry_start[obj], self.object_entry_count[obj]


def _join(parts: list) -> np.ndarray:
    return np.concatenate(list(parts) + [np.zeros(0, np.int64)]).astype(np.int64)


def _shards_geometry(readers: list, names: list, cfg):
    """The one crop geometry of every dataset's shards, each checked against the config."""
    geometries = [shard_crop_geometry(r.meta.get('crop'), cfg, f"{getattr(r, 'folder', name)} (dataset {name})")
                  for r, name in zip(readers, names)]
    if len(set(geometries)) > 1:
        sizes = ', '.join(f"{name} {g.crop_size} px" for name, g in zip(names, geometries))
        raise ValueError(f"the shards of one run must share one crop size, got {sizes}; "
                         f"rebuild them with tools/build_lmdb.py")
    return geometries[0]


class PairSampler:
    """PySOT's TrkDataset sampling, as pure functions of (seed, epoch, index, attempt).

    readers: ShardReader objects in cfg.DATASET.NAMES order.  Their crops are taken as cut with
    the geometry their metadata records (`pipeline.crop.shard_crop_geometry` checks it against
    `cfg`); `geometry` and `crop_size` say which.  With cfg.MASK.MASK, plans mark the pairs
    whose search mask is a label (`PairPlan.search_mask`); `masks` says whether any dataset has
    masks to give.
    """

    def __init__(self, cfg, readers: list, seed: int):
        names = list(cfg.DATASET.NAMES)
        if len(readers) != len(names):
            raise ValueError(f"PairSampler needs one reader per cfg.DATASET.NAMES entry "
                             f"({names}), got {len(readers)}")
        self.names = names
        self.seed = int(seed)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.readers = list(readers)
        self.geometry = _shards_geometry(self.readers, names, cfg)  # raises on a mismatch
        self.crop_size = self.geometry.crop_size
        self.datasets = [_DatasetIndex(r) for r in self.readers]
        self.slots = _SlotTable(self.datasets)
        self.frame_range = np.array([int(getattr(cfg.DATASET, n).FRAME_RANGE) for n in names],
                                    np.int64)
        self.neg_prob = float(cfg.DATASET.NEG)
        self.gray_prob = float(cfg.DATASET.GRAY)
        self.template_aug = AugParams.from_cfg(cfg.DATASET.TEMPLATE)
        self.search_aug = AugParams.from_cfg(cfg.DATASET.SEARCH)
        self.exemplar_size = int(cfg.TRAIN.EXEMPLAR_SIZE)
        self.search_size = int(cfg.TRAIN.SEARCH_SIZE)
        self.mask_datasets = ([d for d, ds in enumerate(self.datasets) if ds.entry_has_mask is not None]
                              if bool(cfg.MASK.MASK) else [])
        self.masks = bool(self.mask_datasets)

        picks, offsets = [], [0]
        for d, (name, ds) in enumerate(zip(names, self.datasets)):
            num_use = int(getattr(cfg.DATASET, name).NUM_USE)
            num_use = len(ds) if num_use == -1 else num_use
            picks.append(offsets[-1] + self._pick_list(d, len(ds), num_use))
            offsets.append(offsets[-1] + len(ds))
        self.dataset_offsets = np.asarray(offsets, dtype=np.int64)   # global video slot -> dataset
        self.round_picks = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        if len(self.round_picks) == 0:
            raise ValueError(f"no videos to sample from in datasets {names}")
        self.neg_datasets = np.array([d for d, ds in enumerate(self.datasets) if len(ds) > 0],
                                     np.int64)
        per_epoch = int(cfg.DATASET.VIDEOS_PER_EPOCH)
        self.per_epoch = per_epoch if per_epoch > 0 else len(self.round_picks)
        self._block = max(1, (1 << 20) // len(self.round_picks))   # rounds drawn together
        self._orders = {}
        self._lock = threading.Lock()

    def _pick_list(self, d: int, num: int, num_use: int) -> np.ndarray:
        """PySOT SubDataset.shuffle: reshuffled copies of range(num) until num_use, truncated."""
        if num == 0 or num_use <= 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng([self.seed, _TAG_PICK, d])
        copies = -(-num_use // num)
        return np.concatenate([rng.permutation(num) for _ in range(copies)])[:num_use]

    def __len__(self) -> int:
        return self.per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global video slots of every index of `epoch` (cached for the two latest epochs)."""
        with self._lock:
            order = self._orders.get(epoch)
        if order is not None:
            return order
        m, n = len(self.round_picks), self.per_epoch
        begin, end = epoch * n, (epoch + 1) * n
        rounds = np.concatenate([self._rounds(b) for b in
                                 range(begin // m // self._block, (end - 1) // m // self._block + 1)])
        first = (begin // m // self._block) * self._block * m
        order = rounds[begin - first:end - first].copy()
        order.setflags(write=False)
        with self._lock:
            self._orders[epoch] = order
            for old in sorted(self._orders)[:-2]:
                del self._orders[old]
        return order

    def _rounds(self, block: int) -> np.ndarray:
        """Rounds block*B .. block*B+B-1 of the pick stream, concatenated (B = self._block).

        Small rounds are drawn in blocks (one Generator per block, keyed by (seed, block)) so an
        epoch of many tiny rounds stays cheap; every round is still a function of the seed only.
        """
        rng = np.random.default_rng([self.seed, _TAG_ROUND, block])
        keys = rng.random((self._block, len(self.round_picks)))
        return self.round_picks[np.argsort(keys, axis=1)].reshape(-1)

    def rank_indices(self, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's global indices of every epoch: strided, disjoint, equal length.

        The same for every epoch (an epoch's order is applied per index by `plan_batch`). The
        last len(self) % world_size indices are dropped so every rank has the same count.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        per_rank = len(self) // world_size
        return rank + world_size * np.arange(per_rank, dtype=np.int64)

    def plan(self, epoch: int, index: int, attempt: int = 0) -> PairPlan:
        """The pair at `index` of `epoch`; attempt > 0 gives a replacement pair (a random
        other slot of the epoch) for one whose crop could not be decoded."""
        return self.plan_batch(epoch, [index], [attempt])[0]

    def plan_batch(self, epoch: int, indices, attempts=0) -> PlanBatch:
        """The pairs at `indices` of `epoch` (each with its attempt number), as one PlanBatch.

        Row i equals `plan(epoch, indices[i], attempts[i])`: no row depends on the others.
        """
        indices = np.asarray(indices, np.int64).reshape(-1)
        attempts = np.broadcast_to(np.asarray(attempts, np.int64), indices.shape)
        bad = (indices < 0) | (indices >= len(self))
        if bad.any():
            raise IndexError(f"index {int(indices[bad][0])} outside epoch of {len(self)} pairs")
        u, z = sample_draws(self.seed, int(epoch), indices, attempts)
        order = self.epoch_order(epoch)
        slot = np.where(attempts == 0, order[indices],
                        order[_uniform_ints(u[:, _U_SLOT], len(order))]).astype(np.int64)
        d = self.slots.slot_dataset[slot]
        gray = (u[:, _U_GRAY] < self.gray_prob) if self.gray_prob else np.zeros(len(u), bool)
        neg = (u[:, _U_NEG] < self.neg_prob) if self.neg_prob else np.zeros(len(u), bool)

        # Template: a random frame of a random object of the video (positive and negative pairs).
        start, count = self.slots.random_object(slot, u[:, _U_TRACK])
        t = _uniform_ints(u[:, _U_TFRAME], count)
        # Positive search: list positions within +-FRAME_RANGE of the template's.
        r = self.frame_range[d]
        lo, hi = np.maximum(t - r, 0), np.minimum(t + r, count - 1)
        s = lo + _uniform_ints(u[:, _U_SFRAME], hi - lo + 1)
        search_entry, search_dataset = start + s, d
        if neg.any():
            # Negative search: a random frame of a random object of a random video of a
            # uniformly chosen dataset.
            d2 = self.neg_datasets[_uniform_ints(u[:, _U_NEG_DATASET], len(self.neg_datasets))]
            n_videos = np.diff(self.dataset_offsets)[d2]
            slot2 = self.dataset_offsets[d2] + _uniform_ints(u[:, _U_NEG_VIDEO], n_videos)
            start2, count2 = self.slots.random_object(slot2, u[:, _U_NEG_TRACK])
            search_entry = np.where(neg, start2 + _uniform_ints(u[:, _U_NEG_FRAME], count2),
                                    search_entry)
            search_dataset = np.where(neg, d2, d)
        t_ref = np.stack([d, start + t], axis=1)
        s_ref = np.stack([search_dataset, search_entry], axis=1)

        template = draw_image_augs(u[:, _U_TEMPLATE_AUG:_U_TEMPLATE_AUG + _AUG_SLOTS], z[:, :3],
                                   self._crop_boxes(t_ref), self.template_aug, self.exemplar_size,
                                   self.crop_size)
        search = draw_image_augs(u[:, _U_SEARCH_AUG:_U_SEARCH_AUG + _AUG_SLOTS], z[:, 3:],
                                 self._crop_boxes(s_ref), self.search_aug, self.search_size,
                                 self.crop_size)
        return PlanBatch(template_ref=t_ref, search_ref=s_ref, neg=neg, gray=gray,
                         template=template, search=search,
                         search_mask=self._search_masks(s_ref) & ~neg)

    def _search_masks(self, refs) -> np.ndarray:
        """(N,) bool: the entries `refs` (N, 2) have a stored mask that SiamMask trains on."""
        out = np.zeros(len(refs), bool)
        for d in self.mask_datasets:
            rows = refs[:, 0] == d
            out[rows] = self.datasets[d].entry_has_mask[refs[rows, 1]]
        return out

    def _crop_boxes(self, refs) -> np.ndarray:
        """(N, 4) boxes on the 511 crop (PySOT's `_get_bbox`) of the entries `refs` (N, 2)."""
        g = self.geometry
        boxes = np.empty((len(refs), 4), np.float64)
        for d in np.unique(refs[:, 0]).tolist():
            rows = refs[:, 0] == d
            boxes[rows] = self.datasets[d].entry_box[refs[rows, 1]]
        return boxes_on_crop(boxes, crop_size=g.crop_size, exemplar=g.exemplar_size,
                             context=g.context_amount)
