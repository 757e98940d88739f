"""The Siamese tracking network (SiamRPN / SiamRPN++ / SiamMask), state_dict-compatible with
PySOT's ``ModelBuilder``: submodules ``backbone``, ``neck`` (if ADJUST.ADJUST), ``rpn_head``,
and ``mask_head`` / ``refine_head`` (if MASK.MASK / REFINE.REFINE), with PySOT's key names.

Inputs are BGR float images in 0..255 without normalisation: template (B,3,127,127), search
(B,3,255,255). Training (``forward``) computes the RPN losses only; **SiamMask mask training is
not implemented** (PySOT leaves it as a TODO too): ``forward`` raises for MASK configs, which
are supported for tracking (``template``/``track``/``mask_refine``) only.
"""
import torch
import torch.nn as nn

from pipeline.batch import MODEL_INPUTS

from .backbone import get_backbone
from .heads import get_mask_head, get_refine_head, get_rpn_head
from .loss import log_softmax_cls, select_cross_entropy_loss, weight_l1_loss
from .neck import get_neck

__all__ = ['SiamRPN', 'build_model']


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t if t.device == device else t.to(device, non_blocking=True)


class SiamRPN(nn.Module):
    """Backbone → (neck) → RPN head, plus the SiamMask heads when the config asks for them.

    Tracking API (as PySOT): ``template(z)`` caches the template features, then ``track(x)``
    returns {'cls' (B,2A,H,W), 'loc' (B,4A,H,W)} and, for SiamMask, 'mask' (B,3969,H,W);
    ``mask_refine((row, col))`` then gives the refined (B, 127*127) mask logits at that position.
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
        self.single_anchor_quirk = bool(single_anchor_quirk)

        self.backbone = get_backbone(cfg.BACKBONE.TYPE, **dict(cfg.BACKBONE.KWARGS))
        if self.has_neck:
            self.neck = get_neck(cfg.ADJUST.TYPE, **dict(cfg.ADJUST.KWARGS))
        self.rpn_head = get_rpn_head(cfg.RPN.TYPE, **dict(cfg.RPN.KWARGS))
        if self.has_mask:
            self.mask_head = get_mask_head(cfg.MASK.TYPE, **dict(cfg.MASK.KWARGS))
            if self.has_refine:
                self.refine_head = get_refine_head(cfg.REFINE.TYPE)

        # Tracking state (plain attributes, never part of the state_dict).
        self.zf = None
        self.xf = None
        self.mask_corr_feature = None

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _features(self, img: torch.Tensor):
        """Backbone (+neck) features; for SiamMask also the shallow levels kept for Refine."""
        feats = self.backbone(img)
        shallow = None
        if self.has_mask:
            shallow, feats = feats[:-1], feats[-1]
        if self.has_neck:
            feats = self.neck(feats)
        return feats, shallow

    def template(self, z: torch.Tensor) -> None:
        """Compute and cache the template features of ``z`` (B,3,127,127)."""
        self.zf, _ = self._features(_to_device(z, self._device()))

    def track(self, x: torch.Tensor) -> dict:
        """Head outputs for search images ``x`` (B,3,H,W) against the cached template."""
        if self.zf is None:
            raise RuntimeError('track() called before template()')
        xf, self.xf = self._features(_to_device(x, self._device()))
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
        """Training losses {'total_loss', 'cls_loss', 'loc_loss'} for a training batch
        (``pipeline.batch``: the images and the three label tensors are read).
        total = TRAIN.CLS_WEIGHT·cls + TRAIN.LOC_WEIGHT·loc. Tensors are moved to the model's
        device only when they are elsewhere."""
        if self.has_mask:
            raise NotImplementedError('SiamMask training (mask loss) is not implemented; '
                                      'MASK configs can only be used for tracking')
        missing = [k for k in MODEL_INPUTS if k not in batch]
        if missing:
            raise KeyError(f'training batch lacks {missing}; it has {sorted(batch)}')
        device = self._device()
        template, search, label_cls, label_loc, label_loc_weight = (
            _to_device(batch[k], device) for k in MODEL_INPUTS)

        zf, _ = self._features(template)
        xf, _ = self._features(search)
        cls, loc = self.rpn_head(zf, xf)

        cls_loss = select_cross_entropy_loss(log_softmax_cls(cls), label_cls,
                                             self.single_anchor_quirk)
        loc_loss = weight_l1_loss(loc, label_loc, label_loc_weight)
        return {
            'total_loss': self.cls_weight * cls_loss + self.loc_weight * loc_loss,
            'cls_loss': cls_loss,
            'loc_loss': loc_loss,
        }


def build_model(cfg, single_anchor_quirk=None) -> SiamRPN:
    """Build the network described by ``cfg`` (PySOT key names; see :class:`SiamRPN`).

    ``single_anchor_quirk``: reproduce PySOT's zero loss term for exactly one selected anchor
    (see :mod:`model.loss`); None takes cfg.TRAIN.LOSS_SINGLE_ANCHOR_QUIRK (default True)."""
    return SiamRPN(cfg, single_anchor_quirk=single_anchor_quirk)
