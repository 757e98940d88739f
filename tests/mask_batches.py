"""SiamMask training batches built in the tests, with the keys, shapes and value conventions
the loader documents (pipeline/batch.py), until the loader renders masks itself.

Each pair shows one ellipse of random colour, size and aspect on a noise background: centred in
the template, shifted in the search image, with its mask in {-1, +1}; labels from the real
``pipeline.targets.AnchorTargets``; the mask weight is the positive-anchor map (0 for negative
pairs, whose search image shows another object and whose mask is -1 everywhere). Everything is a
function of (seed, epoch, batch, rank), so runs, resumed runs and ranks see fixed data.
"""
import torch

from pipeline.targets import AnchorTargets

BACKGROUND_NOISE = 40.0


def _ellipses(g, n):
    """n objects: (colour (n, 3), half-axes (n, 2)) at the SiamFC scale (about 64 px in a 127 template)."""
    colour = torch.rand(n, 3, generator=g) * 255
    area = 63.5 * (0.9 + 0.2 * torch.rand(n, generator=g))  # PySOT's _get_bbox: sqrt(w h) about 63.5
    aspect = 0.5 + torch.rand(n, generator=g)  # w / h
    w, h = area * aspect.sqrt(), area / aspect.sqrt()
    return colour, torch.stack([w, h], dim=1) / 2


def _render(g, size, centre, colour, axes):
    """(n, 3, size, size) images and (n, size, size) bool masks of the ellipses at ``centre``."""
    n = centre.shape[0]
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing='ij')
    dx = (xx - centre[:, 0, None, None]) / axes[:, 0, None, None]
    dy = (yy - centre[:, 1, None, None]) / axes[:, 1, None, None]
    inside = dx ** 2 + dy ** 2 <= 1
    background = 128 + torch.randn(n, 3, size, size, generator=g) * BACKGROUND_NOISE
    image = torch.where(inside[:, None], colour[:, :, None, None].expand(n, 3, size, size), background)
    return image.clamp(0, 255), inside


def mask_batch(cfg, batch_size, seed, neg_every=4):
    """One batch (dict of CPU tensors) for ``cfg`` (TRAIN.EXEMPLAR_SIZE / SEARCH_SIZE / OUTPUT_SIZE);
    every ``neg_every``-th pair (from the second) is negative."""
    g = torch.Generator().manual_seed(int(seed))
    tz, tx, shift = int(cfg.TRAIN.EXEMPLAR_SIZE), int(cfg.TRAIN.SEARCH_SIZE), float(cfg.DATASET.SEARCH.SHIFT)
    colour, axes = _ellipses(g, batch_size)
    template, _ = _render(g, tz, torch.full((batch_size, 2), tz // 2, dtype=torch.float32), colour, axes)
    centre = tx // 2 + (torch.rand(batch_size, 2, generator=g) * 2 - 1) * shift * tx / 255
    neg = torch.zeros(batch_size, dtype=torch.bool)
    neg[1::neg_every] = True
    other_colour, other_axes = _ellipses(g, batch_size)  # the object a negative pair's search image shows
    colour = torch.where(neg[:, None], other_colour, colour)
    axes = torch.where(neg[:, None], other_axes, axes)
    search, inside = _render(g, tx, centre, colour, axes)
    boxes = torch.cat([centre - axes, centre + axes], dim=1)
    label_cls, label_loc, label_loc_weight = AnchorTargets(cfg)(boxes, neg, generator=g)
    label_mask = torch.where(inside & ~neg[:, None, None], 1.0, -1.0).unsqueeze(1)
    label_mask_weight = (label_cls == 1).any(dim=1, keepdim=True).float()
    return {'template': template, 'search': search, 'label_cls': label_cls, 'label_loc': label_loc,
            'label_loc_weight': label_loc_weight, 'bbox': boxes, 'neg': neg,
            'label_mask': label_mask, 'label_mask_weight': label_mask_weight}


class MaskBatches:
    """A stand-in for ``pipeline.loader.PairLoader`` (same interface: len, set_epoch, state_dict,
    load_state_dict, skipped, iteration from the saved position) yielding :func:`mask_batch`es."""

    def __init__(self, cfg, batch_size, seed=0, rank=0, world_size=1):
        self.cfg, self.batch_size, self.seed, self.rank, self.world_size = cfg, batch_size, seed, rank, world_size
        self.epoch, self.next_batch, self.skipped = 0, 0, 0

    def __len__(self):
        return int(self.cfg.DATASET.VIDEOS_PER_EPOCH) // (self.batch_size * self.world_size)

    def set_epoch(self, epoch):
        self.epoch, self.next_batch = int(epoch), 0

    def state_dict(self):
        return {'epoch': self.epoch, 'next_batch': self.next_batch, 'seed': self.seed}

    def load_state_dict(self, state):
        self.epoch, self.next_batch = int(state['epoch']), int(state['next_batch'])

    def __iter__(self):
        epoch, total = self.epoch, len(self)
        for b in range(self.next_batch, total):
            seed = ((self.seed * 1000 + epoch) * 100000 + b) * 64 + self.rank
            batch = mask_batch(self.cfg, self.batch_size, seed)
            self.next_batch = b + 1
            if self.next_batch == total:
                self.epoch, self.next_batch = epoch + 1, 0
            yield batch


# A small SiamMask for CPU tests: ResNet-18 up to layer2 (whose levels have ResNet-50's strides),
# 64-channel neck and heads. Overrides for configs/siammask_r50_l3_{base,refine}.yaml.
SMALL_MASK = [
    'BACKBONE.TYPE=resnet18', 'BACKBONE.KWARGS={used_layers: [0, 1, 2, 2]}', 'BACKBONE.PRETRAINED=',
    'BACKBONE.TRAIN_LAYERS=[layer2]',
    'ADJUST.KWARGS={in_channels: [128], out_channels: [64]}',
    'RPN.KWARGS={anchor_num: 5, in_channels: 64, out_channels: 64}',
    'MASK.KWARGS={in_channels: 64, hidden: 64, out_channels: 3969}',
    'REFINE.KWARGS={channels: [64, 64, 128], corr_channels: 64}',
]
