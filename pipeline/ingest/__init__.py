"""Offline stage: raw tracking datasets -> 511 SiamFC crops in LMDB shards (see docs/datasets.md)."""
from .builder import BuildInterrupted, build_dataset, build_parsed, exclude_warning, format_summary
from .lock import FolderLock
from .parsers import LAYOUTS, LayoutError, parse_crop511, parse_raw
from .spec import DATASETS, BuildError
from .verify import verify_shards

__all__ = ['build_dataset', 'build_parsed', 'exclude_warning', 'format_summary', 'LAYOUTS', 'LayoutError',
           'parse_crop511', 'parse_raw', 'DATASETS', 'verify_shards', 'BuildError', 'BuildInterrupted', 'FolderLock']
