"""Test-only transcription of the SiamMask authors' mask loss (foolwood/SiamMask,
``models/siammask.py`` and ``models/siammask_sharp.py``: ``select_mask_logistic_loss`` and
``iou_measure``), with their host-synchronising ``nonzero``/``index_select`` selection, as the
oracle the project's sync-free loss is compared with. Not used outside the tests.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def authors_iou_measure(pred, label):
    """Per selected window: IoU of ``pred >= 0`` with ``label == 1``; mean, share > 0.5, share > 0.7."""
    hit = pred.ge(0).long() + label.eq(1).long()
    inter = (hit == 2).sum(dim=1).float()
    union = (hit > 0).sum(dim=1).float()
    iou = inter / union
    n = iou.shape[0]
    return iou.mean(), (iou > 0.5).sum().float() / n, (iou > 0.7).sum().float() / n


def authors_mask_loss(p_m, mask, weight, padding, o_sz=63, g_sz=127):
    """(loss, iou mean, iou > 0.5, iou > 0.7) as the authors compute them.

    ``p_m``: (B, o_sz², H, W) (base stage) or (B·H·W, g_sz²) (refine stage); ``padding``: 32 in
    the base stage (``siammask.py``), 0 in the refine stage (``siammask_sharp.py``).
    """
    weight = weight.reshape(-1)
    pos = weight.eq(1).nonzero().squeeze()
    if pos.nelement() == 0:
        zero = p_m.sum() * 0
        return zero, zero, zero, zero
    if p_m.dim() == 4:
        p_m = p_m.permute(0, 2, 3, 1).contiguous().view(-1, 1, o_sz, o_sz)
        p_m = torch.index_select(p_m, 0, pos)
        p_m = nn.UpsamplingBilinear2d(size=[g_sz, g_sz])(p_m)
        p_m = p_m.view(-1, g_sz * g_sz)
    else:
        p_m = torch.index_select(p_m, 0, pos)
    windows = F.unfold(mask, (g_sz, g_sz), padding=padding, stride=8)
    windows = torch.transpose(windows, 1, 2).contiguous().view(-1, g_sz * g_sz)
    windows = torch.index_select(windows, 0, pos)
    loss = F.soft_margin_loss(p_m, windows)
    return (loss, *authors_iou_measure(p_m, windows))


def _decode(refine, p0, p1, p2, p3):
    """Refine's decoder as PySOT and the authors write it (nearest-neighbour F.upsample)."""
    out = refine.deconv(p3)
    out = refine.post0(F.interpolate(refine.h2(out) + refine.v2(p2), size=(31, 31)))
    out = refine.post1(F.interpolate(refine.h1(out) + refine.v1(p1), size=(61, 61)))
    out = refine.post2(F.interpolate(refine.h0(out) + refine.v0(p0), size=(127, 127)))
    return out.view(-1, 127 * 127)


def pysot_refine_at(refine, f, corr_feature, pos):
    """PySOT's ``Refine.forward`` (= the authors' ``test=True`` path): the window at ``pos``."""
    r, c = pos
    p0 = F.pad(f[0], [16, 16, 16, 16])[:, :, 4 * r:4 * r + 61, 4 * c:4 * c + 61]
    p1 = F.pad(f[1], [8, 8, 8, 8])[:, :, 2 * r:2 * r + 31, 2 * c:2 * c + 31]
    p2 = F.pad(f[2], [4, 4, 4, 4])[:, :, r:r + 15, c:c + 15]
    p3 = corr_feature[:, :, r, c].reshape(-1, corr_feature.shape[1], 1, 1)
    return _decode(refine, p0, p1, p2, p3)


def authors_refine_training(refine, f, corr_feature):
    """The authors' ``Refine.forward(f, corr_feature)`` of the refine stage (pos None): every
    location, windows unfolded without padding; (B·H·W, 127²)."""
    c0, c1, c2 = f[0].shape[1], f[1].shape[1], f[2].shape[1]
    p0 = F.unfold(f[0], (61, 61), padding=0, stride=4).permute(0, 2, 1).contiguous().view(-1, c0, 61, 61)
    p1 = F.unfold(f[1], (31, 31), padding=0, stride=2).permute(0, 2, 1).contiguous().view(-1, c1, 31, 31)
    p2 = F.unfold(f[2], (15, 15), padding=0, stride=1).permute(0, 2, 1).contiguous().view(-1, c2, 15, 15)
    p3 = corr_feature.permute(0, 2, 3, 1).contiguous().view(-1, corr_feature.shape[1], 1, 1)
    return _decode(refine, p0, p1, p2, p3)
