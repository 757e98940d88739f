"""Tracking and evaluation, in the order the data flows:

- trackers: `tracker` (PySOT's SiamRPN / long-term / SiamMask semantics, batched), `snapshots`
  (trackers from checkpoints, the baselines);
- datasets: `datasets` (OTB / GOT-10k / LaSOT layouts and PySOT index files → `Sequence`);
- protocol and engine: `protocol` (what the tracker does on each frame of a sequence),
  `engine` (many protocols through one network forward per step);
- results: `results` (the public one-pass result files, GOT-10k's submission zip);
- metrics: `metrics` (OPE success / precision and GOT-10k AO / SR as the official toolkits,
  a tracker's scores over a dataset), `plots`;
- experiments: `ope` (one-pass evaluation, tools/eval.py), `vot/` (VOT's reset-based
  experiment, tools/eval_vot.py; the same steps in VOT's formats), `tune` (hyper-parameter
  search, tools/tune.py).

Sits above `model/` and `pipeline/` and never imports `train/`: configs arrive as arguments.
"""
