"""Offline stage: raw tracking datasets -> 511 SiamFC crops in LMDB shards (see docs/datasets.md)."""
from .builder import build_dataset, exclude_warning, format_summary
from .parsers import LAYOUTS, LayoutError, parse_crop511, parse_raw
from .spec import DATASETS
from .verify import verify_shards
from .writer import BuildError

__all__ = ['build_dataset', 'exclude_warning', 'format_summary', 'LAYOUTS', 'LayoutError', 'parse_crop511', 'parse_raw',
           'DATASETS', 'verify_shards', 'BuildError']
