"""The loader's background stage and its robustness (CPU, real LMDB shards): concurrent reads,
prefetch hints, unusable crops of every kind, errors reaching the consumer, clean shutdown."""
import shutil
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline import build_loader
from pipeline.ingest import build_dataset
from pipeline.ingest.writer import BuildError
from pipeline.crop_source import CropSource
from pipeline.shards import (CorruptCropError, ShardReader, release_read_env,
                             shard_dir)
from shard_damage import fit_jpeg
from test_loader import (BATCH, COCO_TRACKS, _corrupt, assert_same, batches, make_cfg,  # noqa: F401
                         shards, undecodable_jpeg, write_crop511)

REPO = Path(__file__).resolve().parents[1]
COCO_FIRST = {"DATASET.NAMES": "[COCO,VID]", "DATASET.NEG": 0.0}   # dataset 0 = COCO


def readers_for(cfg, root, cls=ShardReader, **kw):
    return [cls(shard_dir(root, name), **kw) for name in cfg.DATASET.NAMES]


def coco_copy(shards, tmp_path) -> Path:  # noqa: F811
    root = tmp_path / "cache"
    shutil.copytree(shards, root)
    return root


def test_concurrent_reads_equal_serial_reads(shards):  # noqa: F811
    cfg = make_cfg()
    readers = readers_for(cfg, shards)
    source = CropSource(readers, list(cfg.DATASET.NAMES), [511, 511])
    refs = [(d, e) for d, r in enumerate(readers) for e in range(len(r))]
    serial = [readers[d].jpeg_at(e) for d, e in refs]
    results = [None] * 4

    def work(k):
        results[k] = source.read_many(refs[k:] + refs[:k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, got in enumerate(results):
        assert got == serial[k:] + serial[:k]
    assert not source.bad


def test_crop_source_rejects_crops_of_another_size(shards, caplog):  # noqa: F811
    cfg = make_cfg()
    source = CropSource(readers_for(cfg, shards), ["VID", "COCO"], [271, 511])
    with caplog.at_level("WARNING", logger="pipeline.loader"):
        assert source.read((0, 3)) is None and source.read((1, 0)) is not None
        assert source.read((0, 3)) is None   # known bad: not read, not logged again
    assert source.bad == {(0, 3)}
    assert caplog.text.count("dataset VID entry 3 (crop is 511x511 px, the shard's crop size "
                             "is 271x271)") == 1


def _shards_with_small_coco(shards, tmp_path):  # noqa: F811
    """A copy of the shards whose COCO crops are 271 px while its metadata says 511."""
    root = coco_copy(shards, tmp_path)
    crop511 = tmp_path / "coco271"
    anno = write_crop511(crop511, COCO_TRACKS, seed=2)
    for path in crop511.rglob("*.jpg"):
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (271, 271)))
    shutil.rmtree(shard_dir(root, "COCO"))
    with pytest.raises(BuildError, match="271x271, expected 511x511"):  # the importer refuses them
        build_dataset("COCO", out_root=root, from_crop511=crop511, anno=anno, progress=False)
    # so put them in by hand, each vouched for by its recorded checksum: only the size is wrong
    shutil.rmtree(shard_dir(root, "COCO"), ignore_errors=True)
    shutil.copytree(shard_dir(shards, "COCO"), shard_dir(root, "COCO"))
    reader = ShardReader(shard_dir(root, "COCO"))
    small = cv2.imencode(".jpg", np.full((271, 271, 3), 90, np.uint8))[1].tobytes()
    for e in range(len(reader)):
        _corrupt(shard_dir(root, "COCO"), reader, e, fit_jpeg(small, int(reader.entry_length[e])), vouch=True)
    release_read_env(shard_dir(root, "COCO"))
    return root


def test_crops_of_the_wrong_size_are_skipped_not_crashed_on(shards, tmp_path, caplog):  # noqa: F811
    root = _shards_with_small_coco(shards, tmp_path)
    cfg = make_cfg(**COCO_FIRST)
    assert ShardReader(shard_dir(root, "COCO")).meta["crop"]["crop_size"] == 511
    loader = build_loader(cfg, shards=root, batch_size=BATCH, device="cpu", seed=0)
    with caplog.at_level("WARNING", logger="pipeline.loader"):
        out = batches(loader)
    assert len(out) == len(loader) and loader.skipped >= len(loader.bad_entries) > 0
    assert {d for d, _ in loader.bad_entries} == {0}
    assert "dataset COCO entry" in caplog.text and "271x271" in caplog.text
    for b in out:
        assert torch.isfinite(b["search"]).all() and b["search"].shape[-1] == 255


class _FailingReader(ShardReader):
    """A real shard reader whose `jpeg_at` raises `error(entry)` for the entries in `failing`
    when called by the loader's background threads (today's reader cannot produce
    CorruptCropError, the contract the loader codes against); the main thread's reads, the
    loader opening each shard, succeed."""

    def __init__(self, folder, failing=(), error=None):
        super().__init__(folder)
        self.failing, self.error = set(failing), error

    def jpeg_at(self, e):
        if e in self.failing and threading.current_thread() is not threading.main_thread():
            raise self.error(e)
        return super().jpeg_at(e)


def test_corrupt_crop_errors_are_skipped_and_counted(shards, caplog):  # noqa: F811
    cfg = make_cfg(**COCO_FIRST)
    coco = ShardReader(shard_dir(shards, "COCO"))
    failing = set(range(0, len(coco), 2))
    error = lambda e: CorruptCropError(f"COCO/shard-00000: crop e{e} fails its CRC")  # noqa: E731

    def run(read_threads):
        readers = readers_for(cfg, shards, _FailingReader, failing=failing, error=error)
        loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=3,
                              readers=readers, read_threads=read_threads)
        return loader, batches(loader)

    with caplog.at_level("WARNING", logger="pipeline.loader"):
        loader, out = run(read_threads=3)
    assert len(out) == len(loader) and loader.skipped >= 1
    assert loader.bad_entries and {e for _, e in loader.bad_entries} <= failing
    assert loader.state_dict()["skipped"] == loader.skipped
    assert "fails its CRC" in caplog.text
    again, out_again = run(read_threads=0)
    assert again.skipped == loader.skipped
    for a, b in zip(out, out_again):
        assert_same(a, b)


def test_other_reader_errors_reach_the_consumer(shards):  # noqa: F811
    cfg = make_cfg()
    readers = readers_for(cfg, shards, _FailingReader, failing=range(100),
                          error=lambda e: OSError(f"disk on fire at entry {e}"))
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=0,
                          readers=readers)
    with pytest.raises(OSError, match="disk on fire at entry"):
        batches(loader)
    loader.close()


def _garble(folder: Path, reader: ShardReader, entry: int) -> None:
    """Overwrite bytes of one crop inside data.mdb, in place: its JPEG markers, size and
    structure stay intact, its entropy-coded data decodes to garbage."""
    value = reader.jpeg_at(entry)
    shard = folder / reader.meta["shards"][int(reader.entry_shard[entry])]["name"] / "data.mdb"
    raw = bytearray(shard.read_bytes())
    at = raw.find(value)
    assert at > 0 and raw.find(value, at + 1) == -1
    for p in range(at + len(value) // 2, at + len(value) // 2 + 400, 3):
        if raw[p] != 0xFF and raw[p - 1] != 0xFF and raw[p] ^ 0x5A != 0xFF:
            raw[p] ^= 0x5A
    shard.write_bytes(bytes(raw))


def test_garbled_crops_are_skipped(shards, tmp_path):  # noqa: F811
    root = coco_copy(shards, tmp_path)
    folder = shard_dir(root, "COCO")
    reader = ShardReader(folder)
    garbled = set(range(len(reader)))
    for e in garbled:
        _garble(folder, reader, e)
    reader.close()
    loader = build_loader(make_cfg(**COCO_FIRST), shards=root, batch_size=BATCH, device="cpu")
    out = batches(loader)
    assert len(out) == len(loader) and loader.skipped >= 1
    # every COCO crop is garbled, and every COCO image is a video slot of the epoch
    assert {(0, e) for e in garbled} & loader.bad_entries


def test_batches_do_not_depend_on_reader_threads_or_read_ahead(shards, tmp_path):  # noqa: F811
    root = coco_copy(shards, tmp_path)
    folder = shard_dir(root, "COCO")
    reader = ShardReader(folder)
    for e in range(0, len(reader), 3):     # rejected before DALI and by DALI, interleaved
        value = reader.jpeg_at(e)
        _corrupt(folder, reader, e, value[:700] if e % 2 else undecodable_jpeg(value), vouch=True)
    release_read_env(folder)
    cfg = make_cfg(**COCO_FIRST)
    runs = []
    for read_threads, read_ahead in ((0, 1), (3, 2), (4, 8)):
        loader = build_loader(cfg, shards=root, batch_size=BATCH, device="cpu", seed=9,
                              read_threads=read_threads, read_ahead=read_ahead)
        runs.append((loader, batches(loader)))
    first, expected = runs[0]
    assert first.skipped > 0
    for loader, out in runs[1:]:
        assert loader.skipped == first.skipped and loader.bad_entries == first.bad_entries
        for a, b in zip(expected, out):
            assert_same(a, b)


class _HintedReader(ShardReader):
    """Records prefetch hints and reads in one shared log."""

    def __init__(self, folder, log):
        super().__init__(folder)
        self.log = log

    def prefetch(self, entries):
        self.log.extend(("hint", self.folder.name, int(e)) for e in entries)

    def jpeg_at(self, e):
        self.log.append(("read", self.folder.name, int(e)))
        return super().jpeg_at(e)


def test_reads_are_hinted_before_they_happen(shards):  # noqa: F811
    cfg = make_cfg()
    events = []
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=4,
                          readers=readers_for(cfg, shards, _HintedReader, log=events),
                          read_ahead=1)
    events.clear()   # the loader opened every shard with one read each
    batches(loader)
    first_hint = {}
    for i, (kind, ds, e) in enumerate(events):
        if kind == "hint":
            first_hint.setdefault((ds, e), i)
    reads = [(i, (ds, e)) for i, (kind, ds, e) in enumerate(events) if kind == "read"]
    assert reads and all(first_hint.get(ref, len(events)) < i for i, ref in reads)


def _new_threads(before: set) -> set:
    return {t for t in threading.enumerate() if t not in before and t.is_alive()}


def test_threads_stop_when_done_abandoned_or_closed(shards):  # noqa: F811
    before = set(threading.enumerate())
    # 10 batches in runs of 2, two runs rendering and one read ahead: the stage is still
    # working after the first batch
    loader = build_loader(make_cfg(**{"DATASET.VIDEOS_PER_EPOCH": 320}), shards=shards,
                          batch_size=32, device="cpu", seed=1, read_threads=2, read_ahead=1)
    batches(loader)                                   # a whole pass: its stage ends
    assert {t.name for t in _new_threads(before)} <= {"crop-reader_0", "crop-reader_1"}
    it = iter(loader)
    next(it)
    assert "pair-read-ahead" in {t.name for t in _new_threads(before)}
    del it                                            # abandoned: its stage is closed
    assert "pair-read-ahead" not in {t.name for t in _new_threads(before)}
    it = iter(loader)
    next(it)
    loader.close()                                    # stops the stage and the readers
    assert not _new_threads(before)
    assert len(batches(loader, 2)) == 2               # and the loader still works
    loader.close()
    del it


def test_a_dropped_loader_is_freed_at_once(shards):  # noqa: F811
    """No reference cycle keeps a loader (and its DALI pipeline and threads) alive until the
    garbage collector runs, which might be in a forked child (a DataLoader worker), where
    destroying a DALI pipeline crashes."""
    loader = build_loader(make_cfg(), shards=shards, batch_size=BATCH, device="cpu", seed=2)
    batches(loader)
    it = iter(loader)
    next(it)
    ref = weakref.ref(loader)
    del loader, it
    assert ref() is None


def test_interpreter_exit_with_an_iteration_in_progress(shards, tmp_path):  # noqa: F811
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        from pipeline import build_loader
        from test_loader import make_cfg
        loader = build_loader(make_cfg(), shards={str(shards)!r}, batch_size=2, device="cpu",
                              read_threads=2, read_ahead=4)
        it = iter(loader)
        next(it)
        print("left with an iteration in progress")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "left with an iteration in progress" in res.stdout
    assert "Traceback" not in res.stderr and "Exception" not in res.stderr
