"""Small synthetic tracking datasets written in each dataset's OFFICIAL raw layout (docs/datasets.md).

They are the embedded demo data and the test data of the shard builder (`tools/build_lmdb.py`,
`pipeline.ingest`), which parses exactly these layouts, with a few deliberately broken files.
One module per concern:

* `scene`: the renderer (textures, trajectories, objects, painting), the determinism rule and the
  box convention of every dataset;
* `faults`: the deliberately broken files and their ``broken.json`` manifest;
* `imagenet` (VID, DET), `coco`, `youtube_bb` (YTB), `got10k_lasot` (GOT10K, LASOT): the layout
  writers, each with what it chooses beyond the layout (tracks, gaps, empty images);
* `datasets`: `make_dataset` / `make_all`, names and defaults;
* `eval_sequences`: `make_eval`, held-out OTB-layout sequences;
* `benchmark_shards`: `make_shards` / `realistic_crops` / `realistic_masks`, built shard folders of realistic
  crops (and masks).
"""
from .benchmark_shards import make_shards, realistic_crops, realistic_masks
from .datasets import DATASETS, DEFAULTS, MARKERS, canonical_name, make_all, make_dataset, parse_size
from .eval_sequences import make_eval
from .faults import BOX_FAULTS, IMAGE_FAULTS

__all__ = ['make_dataset', 'make_all', 'make_eval', 'make_shards', 'realistic_crops', 'realistic_masks', 'canonical_name',
           'parse_size', 'DATASETS', 'DEFAULTS', 'MARKERS', 'IMAGE_FAULTS', 'BOX_FAULTS']
