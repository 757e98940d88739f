"""Tracking and evaluation: the trackers (`track.tracker`), sequence readers, the runner, metrics
with the official toolkits' conventions, reports and plots.

Sits above `model/` and `pipeline/` and never imports `train/`: configs arrive as arguments.
"""
