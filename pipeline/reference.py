"""Per-sample numpy/OpenCV execution of a `PairPlan`, exactly as PySOT's Augmentation does it,
except that colour and blur run in float32 where PySOT uses float64 (pixels differ by < 1e-4).

This is the test oracle for the DALI graph and the PySOT-style baseline of the loader
benchmark (`ReferenceDataset` in a torch DataLoader with workers).
"""
from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.batch import BBOX, LABEL_CLS, LABEL_LOC, LABEL_LOC_WEIGHT, NEG, SEARCH, TEMPLATE
from pipeline.sampling import ImageAug, PairPlan, PairSampler
from pipeline.shards import CorruptCropError, open_shard_readers
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


def label_seed(seed: int, epoch: int, index: int) -> int:
    """Seed for the anchor-label subsampling of one sample (independent of workers)."""
    return int(np.random.SeedSequence([seed, epoch, index, 0x6C61]).generate_state(1, np.uint64)[0] >> 1)


class ReferenceDataset(Dataset):
    """PySOT-style per-sample dataset over the shards: one epoch's slice for one rank.

    Items are one sample of the batch `pipeline.batch` describes, as numpy arrays (`neg` a
    bool), like PySOT's TrkDataset items, plus `skipped` (how many undecodable pairs were
    replaced to produce this item).
    """

    def __init__(self, cfg, shards, seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 readers: list | None = None):
        self.readers = readers if readers is not None else open_shard_readers(cfg, shards)
        self.sampler = PairSampler(cfg, self.readers, seed)
        self.targets = AnchorTargets(cfg)
        self.seed, self.epoch = int(seed), int(epoch)
        self.indices = self.sampler.rank_indices(rank, world_size)
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

    def load_pair(self, index: int):
        """(plan, template, search, replaced): skips undecodable crops via attempt + 1."""
        attempt = 0
        while True:
            plan = self.plan(index, attempt)
            (dt, et), (ds, es) = plan.template_ref, plan.search_ref
            try:
                template, search = render_pair(plan, self.readers[dt].jpeg_at(et),
                                               self.readers[ds].jpeg_at(es))
                return plan, template, search, attempt
            except (UndecodableCrop, CorruptCropError) as err:  # skipped and counted alike
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
        plan, template, search, replaced = self.load_pair(index)
        generator = torch.Generator().manual_seed(label_seed(self.seed, self.epoch, index))
        box = torch.from_numpy(plan.search.box).view(1, 4)
        cls, loc, weight = self.targets(box, torch.tensor([plan.neg]), generator)
        return {
            TEMPLATE: np.ascontiguousarray(template.transpose(2, 0, 1)),
            SEARCH: np.ascontiguousarray(search.transpose(2, 0, 1)),
            LABEL_CLS: cls[0].numpy(),
            LABEL_LOC: loc[0].numpy(),
            LABEL_LOC_WEIGHT: weight[0].numpy(),
            BBOX: plan.search.box.copy(),
            NEG: plan.neg,
            'skipped': replaced,
        }
