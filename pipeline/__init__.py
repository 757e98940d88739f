"""Data side of the tracker: raw parsing, 511 crops, LMDB shards, pair sampling, DALI loader.

`from pipeline import build_loader` is resolved lazily so that light users of the package
(e.g. `pipeline.crop` in the tracker) do not import DALI.
"""


def __getattr__(name):
    if name in ("build_loader", "PairLoader"):
        from pipeline import loader
        return getattr(loader, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


__all__ = ["build_loader", "PairLoader"]
