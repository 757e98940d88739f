"""Training losses: SiamRPN's (PySOT's ``models/loss.py`` and ``ModelBuilder.log_softmax``) and
SiamMask's mask loss (the authors' ``select_mask_logistic_loss``, foolwood/SiamMask).

Classification: ``log_softmax_cls`` reshapes cls (B, 2A, H, W) to (B, 2, A, H, W) — channels
0..A-1 are class 0 (background), A..2A-1 class 1 (object) — and moves the class to the last
dim. ``select_cross_entropy_loss`` = 0.5·mean NLL over positive anchors + 0.5·mean NLL over
negative anchors, each mean pooled over the whole batch; label -1 anchors are ignored.
Regression: ``weight_l1_loss`` = Σ |pred − target| over the 4 coords × weight, summed over
everything and divided by the batch size (plain L1, not smooth-L1).

Computed with masks instead of PySOT's ``nonzero``/``index_select`` so shapes stay static
(torch.compile friendly); the values are the same up to float summation order.

PySOT quirks and our choices
----------------------------
* **Exactly one selected anchor** (one positive, or one negative, in the whole batch): PySOT's
  ``nonzero().squeeze()`` yields a 0-d index and ``get_cls_loss`` returns 0 for that term.
  We REPRODUCE this by default (``single_anchor_quirk=True``) so training matches PySOT (up to
  float summation order); pass ``False`` to use that anchor's NLL instead. It only matters for
  tiny batches (with PySOT's labels a positive pair has up to 16 positives and every pair up to
  48 negatives).
* **No selected anchor** (e.g. a batch of negative pairs has no positive): the term is 0, as in
  PySOT's current ``get_cls_loss`` (its ``select.size() == torch.Size([0])`` check, added for
  STVIR/pysot issue #101), so the other term still trains. Same in both modes.

Mask loss (SiamMask, :func:`select_mask_logistic_loss`)
-------------------------------------------------------
The authors' definition (``models/siammask.py`` base stage, ``models/siammask_sharp.py`` refine
stage): the prediction of every score-map location is a mask (63×63 logits, bilinearly upsampled
to 127×127 with ``align_corners=True``; or 127×127 logits straight from ``Refine``); its label is
the 127×127 window of the search mask ({-1, +1}) centred on that location, i.e.
``F.unfold(label_mask, 127, padding=p, stride=8)`` with p = 32 for a 255 search and a 25×25 map,
p = 0 for the refine stage's 143 search and 3×3 map (:func:`mask_label_padding`); the loss is
``F.soft_margin_loss`` (mean over pixels) over the locations whose ``label_mask_weight`` is 1,
and 0 (still in the graph) when there is none. Logged with it, as the authors'
``iou_measure``: over those locations, the mean IoU of ``pred >= 0`` with ``label == 1`` and the
fractions of IoU > 0.5 and > 0.7.

Without a host sync: the authors select locations with ``nonzero``/``index_select`` (a
data-dependent shape); here the positive locations are the first ``max_positions`` of a per-pair
``topk`` of the weight (a static shape) with a validity mask. That is every positive location as
long as no pair has more than ``max_positions``: the model passes TRAIN.POS_NUM, and a location
is positive only if one of its anchors is, of which the anchor labels keep at most POS_NUM per
pair. Only the selected locations are upsampled and only their label windows are cut (by index,
not by unfolding all 625), so the base stage costs B·POS_NUM maps, not B·625.
Deliberate difference: a window whose label and thresholded prediction are both empty has IoU 1
(the authors' code divides 0 by 0 there and logs NaN).
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

__all__ = ['log_softmax_cls', 'select_cross_entropy_loss', 'weight_l1_loss', 'MaskLoss',
           'select_mask_logistic_loss', 'mask_label_padding', 'MASK_WINDOW']

MASK_WINDOW = 127  # side of a location's mask and label window (the exemplar size)


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    # Upcast half/bf16 (e.g. under autocast) but keep float64 as it is, as PySOT would.
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def log_softmax_cls(cls: torch.Tensor) -> torch.Tensor:
    """cls logits (B, 2A, H, W) → log-probabilities (B, A, H, W, 2)."""
    b, a2, h, w = cls.shape
    # float32 even under CPU autocast (which would keep bf16 and sum thousands of anchors in it).
    cls = _at_least_float32(cls)
    return F.log_softmax(cls.reshape(b, 2, a2 // 2, h, w).permute(0, 2, 3, 4, 1), dim=4)


def _mean_nll(neg_log_prob: torch.Tensor, selected: torch.Tensor,
              single_anchor_quirk: bool) -> torch.Tensor:
    count = selected.sum()
    total = torch.where(selected, neg_log_prob, torch.zeros_like(neg_log_prob)).sum()
    mean = total / count.clamp(min=1)
    if single_anchor_quirk:
        mean = torch.where(count == 1, torch.zeros_like(mean), mean)
    return mean


def select_cross_entropy_loss(pred: torch.Tensor, label: torch.Tensor,
                              single_anchor_quirk: bool = True) -> torch.Tensor:
    """0.5·NLL(positives) + 0.5·NLL(negatives) pooled over the batch.

    ``pred``: log-probabilities (..., 2), e.g. from :func:`log_softmax_cls`; ``label``: the
    matching leading shape (B, A, H, W) with 1 positive, 0 negative, -1 ignored.
    """
    pred = _at_least_float32(pred.reshape(-1, 2))
    label = label.reshape(-1)
    if pred.shape[0] != label.shape[0]:
        raise ValueError(f'select_cross_entropy_loss: {pred.shape[0]} predictions for '
                         f'{label.shape[0]} labels')
    loss_pos = _mean_nll(-pred[:, 1], label == 1, single_anchor_quirk)
    loss_neg = _mean_nll(-pred[:, 0], label == 0, single_anchor_quirk)
    return loss_pos * 0.5 + loss_neg * 0.5


def weight_l1_loss(pred_loc: torch.Tensor, label_loc: torch.Tensor,
                   loss_weight: torch.Tensor) -> torch.Tensor:
    """Σ_b Σ_anchors weight · Σ_coords |pred − label| / B.

    ``pred_loc`` (B, 4A, H, W) (channel = coord·A + anchor), ``label_loc`` (B, 4, A, H, W),
    ``loss_weight`` (B, A, H, W) (1/num_pos on a sample's positive anchors, else 0).
    """
    b, _, h, w = pred_loc.shape
    pred_loc = _at_least_float32(pred_loc)
    diff = (pred_loc.reshape(b, 4, -1, h, w) - label_loc).abs().sum(dim=1)
    return (diff * loss_weight).sum() / b


class MaskLoss(NamedTuple):
    """The mask loss and the authors' three IoU figures (0-dim tensors, on the prediction's device)."""
    loss: torch.Tensor
    iou_mean: torch.Tensor
    iou_at_5: torch.Tensor
    iou_at_7: torch.Tensor


def mask_label_padding(search_size: int, output_size: int, stride: int, window: int = MASK_WINDOW) -> int:
    """Padding of the label unfold that centres location l's window on its anchor centre
    (PySOT's grid: location 0 at ``search_size//2 - (output_size//2)*stride``): 32 for 255/25,
    0 for 143/3. ValueError if the windows do not line up with the score map."""
    origin = search_size // 2 - (output_size // 2) * stride
    padding = window // 2 - origin
    if padding < 0 or (search_size + 2 * padding - window) // stride + 1 != output_size:
        raise ValueError(f'mask labels: {window}x{window} windows at stride {stride} cannot be centred on a '
                         f'{output_size}x{output_size} score map over a {search_size} search image')
    return padding


def _selected_locations(weight: torch.Tensor, max_positions: Optional[int]):
    """(index (B, K) or None for all locations in order, valid (B, K) bool): the locations whose
    weight is 1, the first ``max_positions`` of each pair (static shapes, no host sync)."""
    positive = weight.reshape(weight.shape[0], -1) == 1
    if max_positions is None or max_positions >= positive.shape[1]:
        return None, positive
    top, index = positive.to(torch.float32).topk(int(max_positions), dim=1)
    return index, top > 0


def _location_masks(pred: torch.Tensor, index: Optional[torch.Tensor], window: int) -> torch.Tensor:
    """Each selected location's mask logits as (B, K, window²) float32.

    ``pred``: (B, o², H, W) (o×o logits per location, upsampled bilinearly with align_corners)
    or (B, H·W, window²) (already window×window, e.g. from ``Refine``)."""
    b = pred.shape[0]
    if pred.dim() == 3:
        if index is not None:
            pred = pred.gather(1, index.unsqueeze(2).expand(-1, -1, pred.shape[2]))
        return _at_least_float32(pred)
    channels = pred.shape[1]
    side = int(round(channels ** 0.5))
    if side * side != channels:
        raise ValueError(f'mask prediction has {channels} channels per location, not a square o*o map')
    flat = pred.reshape(b, channels, -1)
    if index is not None:
        flat = flat.gather(2, index.unsqueeze(1).expand(-1, channels, -1))
    maps = _at_least_float32(flat.transpose(1, 2)).reshape(-1, 1, side, side)
    up = F.interpolate(maps, size=(window, window), mode='bilinear', align_corners=True)
    return up.reshape(b, -1, window * window)


def _label_windows(label: torch.Tensor, index: Optional[torch.Tensor], output_size: int, padding: int,
                   stride: int, window: int) -> torch.Tensor:
    """The window×window label windows of the selected locations, (B, K, window²): those of
    ``F.unfold(label, window, padding=padding, stride=stride)``, zero-padded like it, cut by index."""
    b = label.shape[0]
    device = label.device
    if index is None:
        index = torch.arange(output_size * output_size, device=device).expand(b, -1)
    offsets = torch.arange(window, device=device)
    rows = (index // output_size * stride).unsqueeze(-1) + offsets  # (B, K, window)
    cols = (index % output_size * stride).unsqueeze(-1) + offsets
    padded = F.pad(label.reshape(b, label.shape[-2], label.shape[-1]), (padding,) * 4)
    batch = torch.arange(b, device=device).view(b, 1, 1, 1)
    windows = padded[batch, rows.unsqueeze(-1), cols.unsqueeze(-2)]  # (B, K, window, window)
    return windows.reshape(b, index.shape[1], window * window).to(torch.float32)


def select_mask_logistic_loss(pred_mask: torch.Tensor, label_mask: torch.Tensor, label_mask_weight: torch.Tensor,
                              padding: int, stride: int = 8, max_positions: Optional[int] = None,
                              window: int = MASK_WINDOW) -> MaskLoss:
    """SiamMask's mask loss and IoU figures over the locations whose weight is 1 (see the module doc).

    ``pred_mask``: (B, o², S, S) per-location o×o logits (MaskCorr, base stage) or (B, S·S, 127²)
    logits (Refine, refine stage); ``label_mask`` (B, 1, X, X) in {-1, +1}; ``label_mask_weight``
    (B, 1, S, S); ``padding``: :func:`mask_label_padding`; ``max_positions``: at most this many
    positive locations per pair are scored (None: all locations are candidates).
    """
    b, s = label_mask_weight.shape[0], label_mask_weight.shape[-1]
    if pred_mask.shape[0] != b or label_mask.shape[0] != b:
        raise ValueError(f'mask loss: batch sizes differ: prediction {tuple(pred_mask.shape)}, label '
                         f'{tuple(label_mask.shape)}, weight {tuple(label_mask_weight.shape)}')
    locations = pred_mask.shape[1] if pred_mask.dim() == 3 else pred_mask.shape[-2] * pred_mask.shape[-1]
    if locations != s * s:
        raise ValueError(f'mask loss: the prediction has {locations} locations, the weight {s}x{s}')
    index, valid = _selected_locations(label_mask_weight, max_positions)
    pred = _location_masks(pred_mask, index, window)
    target = _label_windows(label_mask, index, s, padding, stride, window)

    per_location = F.soft_margin_loss(pred, target, reduction='none').sum(dim=2)
    count = valid.sum()
    pixels = count.clamp(min=1) * (window * window)
    loss = torch.where(valid, per_location, torch.zeros_like(per_location)).sum() / pixels

    with torch.no_grad():
        predicted, truth = pred >= 0, target == 1
        inter = (predicted & truth).sum(dim=2).float()
        union = (predicted | truth).sum(dim=2).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        n = count.clamp(min=1).float()
        iou_mean = torch.where(valid, iou, torch.zeros_like(iou)).sum() / n
        iou_at_5 = (valid & (iou > 0.5)).sum().float() / n
        iou_at_7 = (valid & (iou > 0.7)).sum().float() / n
    return MaskLoss(loss, iou_mean, iou_at_5, iou_at_7)
