"""The training batch: the keys of the dict the loader yields and the model's ``forward`` reads.

B pairs per batch, A anchors per position (len(ANCHOR.RATIOS) x len(ANCHOR.SCALES)), S the score
map side (TRAIN.OUTPUT_SIZE), Tz / Tx the template / search side (TRAIN.EXEMPLAR_SIZE /
TRAIN.SEARCH_SIZE).  PySOT's ``TrkDataset`` items carry the same names.

==================  ===============================================================================
key                 holds
==================  ===============================================================================
TEMPLATE            (B, 3, Tz, Tz) float32: BGR, 0-255, CHW, no normalisation
SEARCH              (B, 3, Tx, Tx) float32: the same for the search image
LABEL_CLS           (B, A, S, S) int64: 1 positive, 0 negative, -1 ignored anchor
LABEL_LOC           (B, 4, A, S, S) float32: (dx, dy, dw, dh) of the target from every anchor (0: negative pair)
LABEL_LOC_WEIGHT    (B, A, S, S) float32: 1 / (positives of the pair + 1e-6) on positives, else 0
BBOX                (B, 4) float32: the target's x1, y1, x2, y2 on the augmented search image
NEG                 (B,) bool: a negative pair (search image from another object)
LABEL_MASK          (B, 1, Tx, Tx) float32 in {-1, +1}: the search object's mask with the search
                    image's crop, scale and flip (no gray, colour or blur), +1 on the object
                    (SiamMask only; -1 everywhere for negative pairs and pairs whose search entry
                    has no stored mask)
LABEL_MASK_WEIGHT   (B, 1, S, S) float32: 1 where any anchor of that position is positive in
                    LABEL_CLS, for non-negative pairs whose search entry has a stored mask; else
                    0 (SiamMask only; the SiamMask authors' `label_cls.max` there, whose loss
                    uses only the positions equal to 1)
==================  ===============================================================================

SiamMask batches (MASK.MASK configs) carry the two mask keys as well; SiamRPN batches do not.

``pipeline.loader.PairLoader`` yields these tensors on its device; ``pipeline.reference``
returns one sample's arrays under the same keys (without the batch axis).
"""

TEMPLATE = "template"
SEARCH = "search"
LABEL_CLS = "label_cls"
LABEL_LOC = "label_loc"
LABEL_LOC_WEIGHT = "label_loc_weight"
BBOX = "bbox"
NEG = "neg"
LABEL_MASK = "label_mask"
LABEL_MASK_WEIGHT = "label_mask_weight"

IMAGES = (TEMPLATE, SEARCH)
LABELS = (LABEL_CLS, LABEL_LOC, LABEL_LOC_WEIGHT, BBOX, NEG)
MODEL_INPUTS = (TEMPLATE, SEARCH, LABEL_CLS, LABEL_LOC, LABEL_LOC_WEIGHT)  # what the RPN losses need
MASK_LABELS = (LABEL_MASK, LABEL_MASK_WEIGHT)  # what the SiamMask mask loss needs on top

__all__ = ["TEMPLATE", "SEARCH", "LABEL_CLS", "LABEL_LOC", "LABEL_LOC_WEIGHT", "BBOX", "NEG", "LABEL_MASK",
           "LABEL_MASK_WEIGHT", "IMAGES", "LABELS", "MODEL_INPUTS", "MASK_LABELS"]
