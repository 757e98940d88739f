"""Semi-supervised video object segmentation on DAVIS 2016 / 2017, scored as the official
DAVIS evaluation (davisvideochallenge/davis2017-evaluation) scores it.

png (indexed PNGs as the official code reads them) → datasets (the DAVIS layout, splits) →
protocol (`VOSProtocol`: one object of one sequence, started from its first mask's box) →
results (`MaskMerger`: objects merged by score, palette PNGs in DAVIS's layout) → metrics
(J, F, mean / recall / decay) → experiment (run trackers, score stored results, report).
"""
