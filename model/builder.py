"""The Siamese tracking network (SiamRPN / SiamRPN++ / SiamMask), state_dict-compatible with
PySOT's ``ModelBuilder``: submodules ``backbone``, ``neck`` (if ADJUST.ADJUST), ``rpn_head``,
and ``mask_head`` / ``refine_head`` (if MASK.MASK / REFINE.REFINE), with PySOT's key names.

Inputs are BGR float images in 0..255 without normalisation: template (B,3,127,127), search
(B,3,X,X). ``forward(batch)`` computes the training losses:

* SiamRPN / SiamRPN++: PySOT's cls and loc losses.
* SiamMask, base stage (MASK.MASK, no REFINE): the RPN losses plus the authors' mask loss on
  MaskCorr's 63×63 maps at the positive locations of the 25×25 map (``model.loss``).
* SiamMask, refine stage (MASK.MASK and REFINE.REFINE, 143 search, 3×3 map): Refine's 127×127
  masks at every location, the mask loss over the positive ones; the RPN losses are computed
  and logged (the authors weight them 0). What trains in which stage is ``train/freeze.py``'s.

Total = TRAIN.CLS_WEIGHT·cls + TRAIN.LOC_WEIGHT·loc (+ TRAIN.MASK_WEIGHT·mask). PySOT leaves the
mask loss as a TODO; the SiamMask authors' recipe is followed instead (foolwood/SiamMask).
"""
import torch
import torch.nn as nn

from pipeline.batch import LABEL_MASK, LABEL_MASK_WEIGHT, MASK_LABELS, MODEL_INPUTS

from .backbone import get_backbone
from .heads import get_mask_head, get_refine_head, get_rpn_head
from .loss import (log_softmax_cls, mask_label_padding, select_cross_entropy_loss, select_mask_logistic_loss,
                   weight_l1_loss)
from .neck import CROP_BELOW_WIDTH, get_neck

__all__ = ['SiamRPN', 'build_model', 'RPN_LOSSES', 'MASK_LOSSES', 'MASK_FIGURES']

RPN_LOSSES = ('total_loss', 'cls_loss', 'loc_loss')
MASK_LOSSES = ('mask_loss',)
MASK_FIGURES = ('mask_iou_mean', 'mask_iou_at_5', 'mask_iou_at_7')  # the authors' names in their log
AUTHORS_SEARCH_TRIM = 4  # px a side the authors' neck trims off search maps narrower than 20 px


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device, non_blocking=True)


class SiamRPN(nn.Module):
    """Backbone → (neck) → RPN head, plus the SiamMask heads when the config asks for them.

    Tracking API (as PySOT): ``template(z)`` caches the template features, then ``track(x)``
    returns {'cls' (B,2A,H,W), 'loc' (B,4A,H,W)} and, for SiamMask, 'mask' (B,3969,H,W);
    ``mask_refine((row, col))`` then gives the refined (B, 127*127) mask logits at that position.
    ``loss_keys`` / ``figure_keys``: what ``forward`` returns (losses; figures that are logged
    but are no loss).
    """

    def __init__(self, cfg, single_anchor_quirk=None):
        super().__init__()
        if single_anchor_quirk is None:
            single_anchor_quirk = getattr(cfg.TRAIN, 'LOSS_SINGLE_ANCHOR_QUIRK', True)
        self.has_mask = bool(cfg.MASK.MASK)
        self.has_refine = self.has_mask and bool(cfg.REFINE.REFINE)
        self.has_neck = bool(cfg.ADJUST.ADJUST)
        self.cls_weight = float(cfg.TRAIN.CLS_WEIGHT)
        self.loc_weight = float(cfg.TRAIN.LOC_WEIGHT)
        self.mask_weight = float(cfg.TRAIN.MASK_WEIGHT)
        self.anchor_stride = int(cfg.ANCHOR.STRIDE)
        # A location is positive only through a positive anchor, of which a pair has at most POS_NUM.
        self.mask_max_positions = int(cfg.TRAIN.POS_NUM)
        self.single_anchor_quirk = bool(single_anchor_quirk)
        self.loss_keys = RPN_LOSSES + (MASK_LOSSES if self.has_mask else ())
        self.figure_keys = MASK_FIGURES if self.has_mask else ()

        self.backbone = get_backbone(cfg.BACKBONE.TYPE, **dict(cfg.BACKBONE.KWARGS))
        if self.has_neck:
            self.neck = get_neck(cfg.ADJUST.TYPE, **dict(cfg.ADJUST.KWARGS))
        self.rpn_head = get_rpn_head(cfg.RPN.TYPE, **dict(cfg.RPN.KWARGS))
        if self.has_mask:
            self.mask_head = get_mask_head(cfg.MASK.TYPE, **dict(cfg.MASK.KWARGS))
            if self.has_refine:
                self.refine_head = get_refine_head(cfg.REFINE.TYPE, **dict(getattr(cfg.REFINE, 'KWARGS', {})))

        # Tracking state (plain attributes, never part of the state_dict).
        self.zf = None
        self.xf = None
        self.mask_corr_feature = None

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _features(self, img: torch.Tensor, search: bool = False):
        """Backbone (+neck) features; for SiamMask also the shallow levels kept for Refine.

        SiamMask search maps narrower than 20 px (the refine stage's 143 search: 17×17) are
        trimmed as the authors' neck does (4 px a side, 9×9), not to PySOT's centre 7."""
        feats = self.backbone(img)
        shallow = None
        if self.has_mask:
            shallow, feats = feats[:-1], feats[-1]
        if self.has_neck:
            center_size = None
            if search and self.has_mask and feats.shape[-1] < CROP_BELOW_WIDTH:
                center_size = feats.shape[-1] - 2 * AUTHORS_SEARCH_TRIM
            feats = self.neck(feats, center_size)
        return feats, shallow

    def template(self, z: torch.Tensor) -> None:
        """Compute and cache the template features of ``z`` (B,3,127,127)."""
        self.zf, _ = self._features(_to_device(z, self._device()))

    def track(self, x: torch.Tensor) -> dict:
        """Head outputs for search images ``x`` (B,3,H,W) against the cached template."""
        if self.zf is None:
            raise RuntimeError('track() called before template()')
        xf, self.xf = self._features(_to_device(x, self._device()), search=True)
        cls, loc = self.rpn_head(self.zf, xf)
        out = {'cls': cls, 'loc': loc}
        if self.has_mask:
            out['mask'], self.mask_corr_feature = self.mask_head(self.zf, xf)
        return out

    def mask_refine(self, pos) -> torch.Tensor:
        """Refined mask logits (B, 127*127) at score-map position ``pos`` = (row, col) of the
        last ``track`` call, or at a (row, col) per sample (SiamMask with REFINE only)."""
        if not self.has_refine:
            raise RuntimeError('mask_refine() needs a SiamMask model with REFINE.REFINE')
        if self.mask_corr_feature is None:
            raise RuntimeError('mask_refine() called before track()')
        return self.refine_head(self.xf, self.mask_corr_feature, pos)

    def forward(self, batch: dict) -> dict:
        """Training losses for a training batch (``pipeline.batch``): {'total_loss', 'cls_loss',
        'loc_loss'} and, for SiamMask, 'mask_loss' and the figures 'mask_iou_mean',
        'mask_iou_at_5', 'mask_iou_at_7' (the authors' IoU of the positive locations' masks).
        Tensors are moved to the model's device only when they are elsewhere. No host sync."""
        needed = MODEL_INPUTS + (MASK_LABELS if self.has_mask else ())
        missing = [k for k in needed if k not in batch]
        if missing:
            what = 'SiamMask training batch' if self.has_mask else 'training batch'
            raise KeyError(f'{what} lacks {missing}; it has {sorted(batch)}')
        device = self._device()
        template, search, label_cls, label_loc, label_loc_weight = (
            _to_device(batch[k], device) for k in MODEL_INPUTS)

        zf, _ = self._features(template)
        xf, shallow = self._features(search, search=True)
        cls, loc = self.rpn_head(zf, xf)

        cls_loss = select_cross_entropy_loss(log_softmax_cls(cls), label_cls,
                                             self.single_anchor_quirk)
        loc_loss = weight_l1_loss(loc, label_loc, label_loc_weight)
        out = {
            'total_loss': self.cls_weight * cls_loss + self.loc_weight * loc_loss,
            'cls_loss': cls_loss,
            'loc_loss': loc_loss,
        }
        if self.has_mask:
            mask = self._mask_loss(zf, xf, shallow, _to_device(batch[LABEL_MASK], device),
                                   _to_device(batch[LABEL_MASK_WEIGHT], device), search.shape[-1])
            out['total_loss'] = out['total_loss'] + self.mask_weight * mask.loss
            out.update(zip(MASK_LOSSES + MASK_FIGURES, mask))
        return out

    def _mask_loss(self, zf, xf, shallow, label_mask, label_mask_weight, search_size):
        """The base stage's MaskCorr maps, or the refine stage's Refine masks at every location, scored
        against the label windows (``model.loss.select_mask_logistic_loss``)."""
        if self.has_refine:
            pred = self.refine_head.forward_all(shallow, self.mask_head.correlate(zf, xf))
        else:
            pred, _ = self.mask_head(zf, xf)
        out_size = label_mask_weight.shape[-1]
        padding = mask_label_padding(search_size, out_size, self.anchor_stride)
        return select_mask_logistic_loss(pred, label_mask, label_mask_weight, padding, self.anchor_stride,
                                         self.mask_max_positions)


def build_model(cfg, single_anchor_quirk=None) -> SiamRPN:
    """Build the network described by ``cfg`` (PySOT key names; see :class:`SiamRPN`).

    ``single_anchor_quirk``: reproduce PySOT's zero loss term for exactly one selected anchor
    (see :mod:`model.loss`); None takes cfg.TRAIN.LOSS_SINGLE_ANCHOR_QUIRK (default True)."""
    return SiamRPN(cfg, single_anchor_quirk=single_anchor_quirk)
