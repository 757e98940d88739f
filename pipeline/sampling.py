"""Training-pair sampling and augmentation parameters: PySOT's TrkDataset, pixel-free.

Every decision about a training pair (which 511 crops, gray, negative, and each image's
shift/scale/colour/blur/flip) is made here in numpy as a pure function of
(seed, epoch, global index, attempt). The DALI graph (`pipeline/dali_graph.py`) and the
OpenCV reference (`pipeline/reference.py`) only execute a `PairPlan`.

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
- Augmentation (`ImageAug`): nominal crop box of side out-1 centred at (crop//2, crop//2);
  scale_x, scale_y = 1 + U(-1,1)*SCALE independently (capped at crop/side, as PySOT);
  shift U(-1,1)*SHIFT each, clamped so the box stays within [0, crop-1]; target box
  (box - crop.x1) / scale; colour with probability COLOR: offset = (rgbVar @ N(0, I3))
  reversed to BGR, subtracted; blur with probability BLUR: odd size uniform in 5..45 and
  wx ~ U(0,1); flip with probability FLIP, box x -> out-1-x.

Deliberate difference: PySOT draws all of these from one global np.random stream in its
own order; we draw a fixed layout of uniforms and normals from a per-sample Generator
seeded by (seed, epoch, index, attempt). The distributions are PySOT's, the numbers are not,
and nothing depends on threads, workers or ranks.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from pipeline.crop import CONTEXT_AMOUNT, CROP_SIZE, box_on_crop

# rgbVar of PySOT's colour augmentation (PCA of ImageNet RGB, rows scaled).
RGB_VAR = np.array([[-0.55919361, 0.98062831, -0.41940627],
                    [1.72091413, 0.19879334, -1.82968581],
                    [4.64467907, 4.73710203, 4.88324118]], dtype=np.float32)

BLUR_SIZES = np.arange(5, 46, 2)    # PySOT's kernel sizes, drawn uniformly
_BLUR_CHOICES = len(BLUR_SIZES)
_RGB_VAR64 = RGB_VAR.astype(np.float64)

_TAG_PICK = 0x7069636B    # seeds for the per-dataset pick lists
_TAG_ROUND = 0x726F756E   # seeds for the rounds of the pick stream

# Layout of the per-sample uniforms (u) and normals (z).
_U_GRAY, _U_NEG, _U_SLOT, _U_TRACK, _U_TFRAME, _U_SFRAME = 0, 1, 2, 3, 4, 5
_U_NEG_DATASET, _U_NEG_VIDEO, _U_NEG_TRACK, _U_NEG_FRAME = 6, 7, 8, 9
_U_TEMPLATE_AUG, _U_SEARCH_AUG, _AUG_SLOTS = 10, 19, 9
_U_COUNT = 28
_Z_COUNT = 6


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


def _uniform_int(u: float, n: int) -> int:
    """Uniform integer in [0, n) from u ~ U[0, 1)."""
    return min(int(u * n), n - 1)


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


def draw_image_aug(u, z, box, aug_cfg, out_size: int, crop_size: int = CROP_SIZE) -> ImageAug:
    """PySOT's `Augmentation` parameters for one image.

    u: 9 uniforms in [0, 1) (scale x/y, shift x/y, colour coin, blur coin, blur size, blur wx,
    flip coin); z: 3 standard normals (colour); box: (4,) target box on the crop;
    aug_cfg: cfg.DATASET.TEMPLATE / .SEARCH or an AugParams.
    """
    u = [float(v) for v in u]
    centre = crop_size // 2
    side = out_size - 1
    scale_x = scale_y = 1.0
    if aug_cfg.SCALE:
        scale_x = min(1.0 + (2 * u[0] - 1) * aug_cfg.SCALE, crop_size / side)
        scale_y = min(1.0 + (2 * u[1] - 1) * aug_cfg.SCALE, crop_size / side)
    w, h = side * scale_x, side * scale_y
    x1, y1, x2, y2 = centre - w * 0.5, centre - h * 0.5, centre + w * 0.5, centre + h * 0.5
    if aug_cfg.SHIFT:
        sx = (2 * u[2] - 1) * aug_cfg.SHIFT
        sy = (2 * u[3] - 1) * aug_cfg.SHIFT
        sx = max(-x1, min(crop_size - 1 - x2, sx))
        sy = max(-y1, min(crop_size - 1 - y2, sy))
        x1, y1, x2, y2 = x1 + sx, y1 + sy, x2 + sx, y2 + sy

    bx1, by1, bx2, by2 = (float(v) for v in box)
    out_box = [(bx1 - x1) / scale_x, (by1 - y1) / scale_y, (bx2 - x1) / scale_x, (by2 - y1) / scale_y]

    if aug_cfg.COLOR > u[4]:
        color_offset = (_RGB_VAR64 @ np.asarray(z[:3], dtype=np.float64))[::-1].astype(np.float32)
    else:
        color_offset = np.zeros(3, dtype=np.float32)

    blur_size, blur_wx = 0, 0.0
    if aug_cfg.BLUR > u[5]:
        blur_size = 5 + 2 * _uniform_int(u[6], _BLUR_CHOICES)
        blur_wx = u[7]

    flip = bool(aug_cfg.FLIP and aug_cfg.FLIP > u[8])
    if flip:
        out_box = [out_size - 1 - out_box[2], out_box[1], out_size - 1 - out_box[0], out_box[3]]
    return ImageAug(crop=np.array([x1, y1, x2, y2], dtype=np.float64), out_size=int(out_size),
                    color_offset=color_offset, blur_size=blur_size, blur_wx=blur_wx, flip=flip,
                    box=np.array(out_box, dtype=np.float32))


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

    def __len__(self):
        return len(self.videos)

    def random_entry(self, video: int, u_track: float, u_frame: float) -> int:
        """Entry of a uniformly random object of `video`, uniformly random frame."""
        start, entries = self.object_entries(video, u_track)
        return start + _uniform_int(u_frame, entries)

    def object_entries(self, video: int, u_track: float):
        """(first entry, number of entries) of a uniformly random object of `video`."""
        o0, o1 = self.video_object_start[video], self.video_object_start[video + 1]
        obj = o0 + _uniform_int(u_track, int(o1 - o0))
        start = int(self.object_entry_start[obj])
        return start, int(self.object_entry_start[obj + 1]) - start


def _check_crop_meta(reader, name: str, cfg):
    crop = dict(reader.meta.get('crop', {}))
    expected = {'exemplar_size': int(cfg.TRAIN.EXEMPLAR_SIZE), 'crop_size': CROP_SIZE,
                'context_amount': CONTEXT_AMOUNT}
    wrong = {k: (crop.get(k), v) for k, v in expected.items() if crop.get(k) != v}
    if wrong:
        where = getattr(reader, 'folder', name)
        details = ', '.join(f"{k}={got!r} (config needs {want!r})" for k, (got, want) in wrong.items())
        raise ValueError(f"shards in {where} (dataset {name}) were built with other crop "
                         f"parameters: {details}; rebuild them with tools/build_lmdb.py")


class PairSampler:
    """PySOT's TrkDataset sampling, as pure functions of (seed, epoch, index, attempt).

    readers: ShardReader objects in cfg.DATASET.NAMES order.
    """

    def __init__(self, cfg, readers: list, seed: int):
        names = list(cfg.DATASET.NAMES)
        if len(readers) != len(names):
            raise ValueError(f"PairSampler needs one reader per cfg.DATASET.NAMES entry "
                             f"({names}), got {len(readers)}")
        self.cfg = cfg
        self.names = names
        self.seed = int(seed)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.readers = list(readers)
        for reader, name in zip(self.readers, names):
            _check_crop_meta(reader, name, cfg)
        self.crop_size = CROP_SIZE
        self.datasets = [_DatasetIndex(r) for r in self.readers]
        self.frame_range = [int(getattr(cfg.DATASET, n).FRAME_RANGE) for n in names]
        self.neg_prob = float(cfg.DATASET.NEG)
        self.gray_prob = float(cfg.DATASET.GRAY)
        self.template_aug = AugParams.from_cfg(cfg.DATASET.TEMPLATE)
        self.search_aug = AugParams.from_cfg(cfg.DATASET.SEARCH)
        self.exemplar_size = int(cfg.TRAIN.EXEMPLAR_SIZE)
        self.search_size = int(cfg.TRAIN.SEARCH_SIZE)

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
        self.neg_datasets = [d for d, ds in enumerate(self.datasets) if len(ds) > 0]
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

    def epoch_indices(self, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's global indices of `epoch`: strided, disjoint, equal length.

        The last len(self) % world_size indices are dropped so every rank has the same count.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        per_rank = len(self) // world_size
        return rank + world_size * np.arange(per_rank, dtype=np.int64)

    def _video(self, slot: int):
        d = int(np.searchsorted(self.dataset_offsets, slot, side='right')) - 1
        return d, int(self.datasets[d].videos[slot - self.dataset_offsets[d]])

    def plan(self, epoch: int, index: int, attempt: int = 0) -> PairPlan:
        """The pair at `index` of `epoch`; attempt > 0 gives a replacement pair (a random
        other slot of the epoch) for one whose crop could not be decoded."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside epoch of {len(self)} pairs")
        rng = np.random.default_rng([self.seed, int(epoch), int(index), int(attempt)])
        u = rng.random(_U_COUNT).tolist()   # Python floats: much faster scalar arithmetic
        z = rng.standard_normal(_Z_COUNT)
        order = self.epoch_order(epoch)
        slot = order[index] if attempt == 0 else order[_uniform_int(u[_U_SLOT], len(order))]
        d, video = self._video(int(slot))
        ds = self.datasets[d]
        gray = bool(self.gray_prob and self.gray_prob > u[_U_GRAY])
        neg = bool(self.neg_prob and self.neg_prob > u[_U_NEG])
        if neg:
            t_ref = (d, ds.random_entry(video, u[_U_TRACK], u[_U_TFRAME]))
            d2 = self.neg_datasets[_uniform_int(u[_U_NEG_DATASET], len(self.neg_datasets))]
            ds2 = self.datasets[d2]
            video2 = int(ds2.videos[_uniform_int(u[_U_NEG_VIDEO], len(ds2))])
            s_ref = (d2, ds2.random_entry(video2, u[_U_NEG_TRACK], u[_U_NEG_FRAME]))
        else:
            start, n = ds.object_entries(video, u[_U_TRACK])
            t = _uniform_int(u[_U_TFRAME], n)
            r = self.frame_range[d]
            lo, hi = max(t - r, 0), min(t + r, n - 1)
            s = lo + _uniform_int(u[_U_SFRAME], hi - lo + 1)
            t_ref, s_ref = (d, start + t), (d, start + s)

        template = draw_image_aug(u[_U_TEMPLATE_AUG:_U_TEMPLATE_AUG + _AUG_SLOTS], z[:3],
                                  self._crop_box(t_ref), self.template_aug, self.exemplar_size,
                                  self.crop_size)
        search = draw_image_aug(u[_U_SEARCH_AUG:_U_SEARCH_AUG + _AUG_SLOTS], z[3:],
                                self._crop_box(s_ref), self.search_aug, self.search_size,
                                self.crop_size)
        return PairPlan(template_ref=t_ref, search_ref=s_ref, neg=neg, gray=gray,
                        template=template, search=search)

    def _crop_box(self, ref) -> tuple:
        d, e = ref
        return box_on_crop(self.datasets[d].entry_box[e].tolist(), crop_size=self.crop_size,
                           exemplar=self.exemplar_size, context=CONTEXT_AMOUNT)
