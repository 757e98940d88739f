"""VOT short-term, reset-based evaluation, equal to the official vot-toolkit (0.7.4).

regions (parsing, PySOT's initial box, the toolkit's overlap) → datasets (VOT folders) →
protocol (`SupervisedProtocol`, a `track.protocol.Protocol`) → results (the toolkit's files) →
analysis (accuracy, robustness, EAO; PySOT's EAO by option) → evaluate (the experiment: runs,
stored runs reused, report); trax_server lets the toolkit run our tracker (`tools/trax_tracker.py`).
"""
