"""Per-sample numpy/OpenCV execution of a `PairPlan`, exactly as PySOT's Augmentation does it,
except that colour and blur run in float32 where PySOT uses float64 (pixels differ by < 1e-4).
SiamMask's search mask and mask weight are a transcription of the SiamMask authors'
`datasets/siam_mask_dataset.py` (`render_mask`, `authors_mask_weight`).

This is the test oracle for the DALI graph and the PySOT-style baseline of the loader
benchmark (`ReferenceDataset` in a torch DataLoader with workers).
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.batch import (BBOX, LABEL_CLS, LABEL_LOC, LABEL_LOC_WEIGHT, LABEL_MASK,
                            LABEL_MASK_WEIGHT, NEG, SEARCH, TEMPLATE)
from pipeline.sampling import ImageAug, PairPlan, PairSampler
from pipeline.shards import CorruptCropError, decode_mask, open_shard_readers
from pipeline.targets import AnchorTargets

log = logging.getLogger(__name__)
PLAN_BLOCK = 32   # first-attempt plans drawn together (see ReferenceDataset.plan)


class UndecodableCrop(ValueError):
    """A crop's bytes are not a decodable image."""


def decode_crop(data: bytes) -> np.ndarray:
    """JPEG bytes -> HxWx3 uint8 BGR; raises UndecodableCrop."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UndecodableCrop(f"cannot decode a {len(data)}-byte crop")
    return image


def blur_kernel(size: int, wx: float) -> np.ndarray:
    """PySOT's cross-shaped motion-blur kernel: centre column wx/size, centre row (1-wx)/size."""
    kernel = np.zeros((size, size), dtype=np.float64)
    c = size // 2
    kernel[:, c] += wx / size
    kernel[c, :] += (1.0 - wx) / size
    return kernel


def render_image(image: np.ndarray, aug: ImageAug, gray: bool) -> np.ndarray:
    """Apply one image's augmentation to a 511 BGR uint8 crop -> out x out x 3 float32 BGR."""
    if gray:
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    out = aug.out_size
    image = cv2.warpAffine(image, aug.affine(np.float64), (out, out), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    # PySOT's image only becomes float when the colour offset is applied; with no colour aug
    # the blur below runs on uint8 (and rounds), as in PySOT.
    if np.any(aug.color_offset != 0):
        image = image.astype(np.float32) - aug.color_offset.astype(np.float32)
    if aug.blur_size:
        image = cv2.filter2D(image, -1, blur_kernel(aug.blur_size, aug.blur_wx))
    if aug.flip:
        image = cv2.flip(image, 1)
    return image.astype(np.float32, copy=False)


def render_pair(plan: PairPlan, template_jpeg: bytes, search_jpeg: bytes):
    """(template HWC float32 BGR, search HWC float32 BGR) for a plan and its two crops' JPEGs."""
    template = render_image(decode_crop(template_jpeg), plan.template, plan.gray)
    search = render_image(decode_crop(search_jpeg), plan.search, plan.gray)
    return template, search


def render_mask(mask: np.ndarray, aug: ImageAug) -> np.ndarray:
    """The SiamMask authors' search-mask augmentation of a crop's mask (H x W, nonzero =
    object, their `.m.png`) -> (1, S, S) float32 in {-1, +1}: read as `> 0` -> float32, warped
    with the search image's crop (cv2.warpAffine, bilinear, constant border 0), flipped with
    it, then `(mask > 0.5) * 2 - 1`.  No gray, colour or blur (the authors apply them to the
    image only)."""
    out = aug.out_size
    warped = cv2.warpAffine((mask > 0).astype(np.float32), aug.affine(np.float64), (out, out),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if aug.flip:
        warped = cv2.flip(warped, 1)
    return ((warped[None] > 0.5) * 2 - 1).astype(np.float32)


def authors_mask_weight(label_cls: np.ndarray, has_mask: bool) -> np.ndarray:
    """The SiamMask authors' mask weight (1, S, S) of a label_cls (A, S, S): `label_cls.max`
    over the anchors (-1, 0 or 1) for a positive pair from a dataset with masks, else zeros.
    Their loss uses the positions equal to 1; the loader's weight is 1 there and 0 elsewhere
    (`pipeline.targets.mask_weight`)."""
    if not has_mask:
        return np.zeros((1,) + label_cls.shape[1:], np.float32)
    return label_cls.max(axis=0, keepdims=True).astype(np.float32)


def label_seed(seed: int, epoch: int, index: int) -> int:
    """Seed for the anchor-label subsampling of one sample (independent of workers)."""
    return int(np.random.SeedSequence([seed, epoch, index, 0x6C61]).generate_state(1, np.uint64)[0] >> 1)


class ReferenceDataset(Dataset):
    """PySOT-style per-sample dataset over the shards: one epoch's slice for one rank.

    Items are one sample of the batch `pipeline.batch` describes, as numpy arrays (`neg` a
    bool), like PySOT's TrkDataset items (with cfg.MASK.MASK, like the SiamMask authors'
    items: the search mask and its weight too), plus `skipped` (how many undecodable pairs
    were replaced to produce this item).
    """

    def __init__(self, cfg, shards, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 readers: list | None = None):
        self.readers = readers if readers is not None else open_shard_readers(cfg, shards)
        self.sampler = PairSampler(cfg, self.readers, seed)
        self.targets = AnchorTargets(cfg)
        self.seed, self.epoch = int(seed), int(epoch)
        self.indices = self.sampler.rank_indices(rank, world_size)
        self.masks = bool(cfg.MASK.MASK)
        self.skipped = 0   # replaced pairs seen by this process
        self._block = (-1, None)   # (block number, PlanBatch) of the last first-attempt plans

    def plan(self, index: int, attempt: int = 0) -> PairPlan:
        """The sampler's plan for `index`; first attempts are planned PLAN_BLOCK at a time
        (vectorised, ~7 us a pair) because one plan alone costs ~0.2 ms of numpy overhead,
        which would slow this baseline for no reason of its own."""
        i = int(np.searchsorted(self.indices, index))
        if attempt or i >= len(self.indices) or self.indices[i] != index:
            return self.sampler.plan(self.epoch, index, attempt)
        block = i // PLAN_BLOCK
        if self._block[0] != block:
            rows = self.indices[block * PLAN_BLOCK:(block + 1) * PLAN_BLOCK]
            self._block = (block, self.sampler.plan_batch(self.epoch, rows))
        return self._block[1][i - block * PLAN_BLOCK]

    def __len__(self) -> int:
        return len(self.indices)

    def search_mask(self, plan: PairPlan) -> np.ndarray:
        """The full mask of the plan's search crop (the authors' `.m.png`; zeros for a pair
        whose search mask is not a label); ValueError / CorruptCropError if it is unusable."""
        size = self.sampler.crop_size
        if not plan.search_mask:
            return np.zeros((size, size), np.uint8)
        ds, es = plan.search_ref
        return decode_mask(*self.readers[ds].mask_at(es), size)

    def load_pair(self, index: int):
        """(plan, template, search, search mask or None, replaced): skips undecodable crops
        (and masks) via attempt + 1."""
        attempt = 0
        while True:
            plan = self.plan(index, attempt)
            (dt, et), (ds, es) = plan.template_ref, plan.search_ref
            try:
                template, search = render_pair(plan, self.readers[dt].jpeg_at(et),
                                               self.readers[ds].jpeg_at(es))
                mask = render_mask(self.search_mask(plan), plan.search) if self.masks else None
                return plan, template, search, mask, attempt
            except (UndecodableCrop, CorruptCropError, ValueError) as err:  # skipped and counted alike
                self.skipped += 1
                log.warning("epoch %d index %d attempt %d: %s (template %s, search %s); "
                            "replacing the pair", self.epoch, index, attempt, err,
                            plan.template_ref, plan.search_ref)
                attempt += 1
                if attempt > 100:
                    raise RuntimeError(f"epoch {self.epoch} index {index}: 100 replacement pairs "
                                       f"in a row were undecodable; the shards look corrupt") from err

    def __getitem__(self, i: int) -> dict:
        index = int(self.indices[i])
        plan, template, search, mask, replaced = self.load_pair(index)
        generator = torch.Generator().manual_seed(label_seed(self.seed, self.epoch, index))
        box = torch.from_numpy(plan.search.box).view(1, 4)
        cls, loc, weight = self.targets(box, torch.tensor([plan.neg]), generator)
        masks = {}
        if self.masks:
            authors = authors_mask_weight(cls[0].numpy(), plan.search_mask)
            masks = {LABEL_MASK: mask, LABEL_MASK_WEIGHT: (authors == 1).astype(np.float32)}
        return {
            TEMPLATE: np.ascontiguousarray(template.transpose(2, 0, 1)),
            SEARCH: np.ascontiguousarray(search.transpose(2, 0, 1)),
            LABEL_CLS: cls[0].numpy(),
            LABEL_LOC: loc[0].numpy(),
            LABEL_LOC_WEIGHT: weight[0].numpy(),
            BBOX: plan.search.box.copy(),
            NEG: plan.neg,
            **masks,
            'skipped': replaced,
        }
