"""SiamRPN training losses, matching PySOT's ``models/loss.py`` and ``ModelBuilder.log_softmax``.

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
"""
import torch
import torch.nn.functional as F

__all__ = ['log_softmax_cls', 'select_cross_entropy_loss', 'weight_l1_loss']


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
