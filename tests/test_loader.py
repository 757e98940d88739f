"""The DALI loader on real LMDB shards (CPU): content, labels, determinism, DDP, resume, skips."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from crop511_fixtures import write_crop511
from pipeline import build_loader
from pipeline.anchors import anchor_grid_from_cfg
from pipeline.ingest import build_dataset
from pipeline.reference import render_pair
from pipeline.shards import ShardReader, shard_dir
from shard_damage import overwrite_crop, vouch_for_crop
from train.config import load_config

BATCH = 4
# (video, track id, frames): VID videos, and COCO images with one-frame tracks.
VID_TRACKS = [("a/v0", 0, range(12)), ("a/v0", 1, range(3, 10)), ("a/v1", 0, range(8)),
              ("a/v2", 0, range(10)), ("a/v3", 2, range(6)), ("a/v4", 0, range(9))]
COCO_TRACKS = [(f"train2017/img{i}", t, [0]) for i in range(10) for t in range(1 + i % 2)]
EPOCH_PAIRS = 16  # >= the 15 video slots (5 VID videos + 10 COCO images): every slot appears


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader_shards")
    out = tmp / "cache"
    for name, tracks, seed in (("VID", VID_TRACKS, 1), ("COCO", COCO_TRACKS, 2)):
        anno = write_crop511(tmp / f"{name}_crop511", tracks, seed)
        build_dataset(name, out_root=out, from_crop511=tmp / f"{name}_crop511", anno=anno,
                      progress=False)
    return out


def make_cfg(**extra):
    base = {"DATASET.NAMES": "[VID,COCO]", "DATASET.VID.NUM_USE": -1, "DATASET.COCO.NUM_USE": -1,
            "DATASET.VID.FRAME_RANGE": 3, "DATASET.VIDEOS_PER_EPOCH": EPOCH_PAIRS,
            "DATASET.NEG": 0.25, "DATASET.SEARCH.BLUR": 0.2}
    base.update(extra)
    return load_config(None, overrides=[f"{k}={v}" for k, v in base.items()])


@pytest.fixture(scope="module")
def cfg():
    return make_cfg()


def batches(loader, n=None):
    out = []
    for i, b in enumerate(loader):
        out.append(b)
        if n is not None and i + 1 == n:
            break
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_batch_shapes_dtypes_and_ranges(shards, cfg):
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=0)
    assert len(loader) == EPOCH_PAIRS // BATCH
    b = next(iter(loader))
    a, s = cfg.ANCHOR.ANCHOR_NUM, cfg.TRAIN.OUTPUT_SIZE
    expect = {"template": ((BATCH, 3, 127, 127), torch.float32),
              "search": ((BATCH, 3, 255, 255), torch.float32),
              "label_cls": ((BATCH, a, s, s), torch.int64),
              "label_loc": ((BATCH, 4, a, s, s), torch.float32),
              "label_loc_weight": ((BATCH, a, s, s), torch.float32),
              "bbox": ((BATCH, 4), torch.float32), "neg": ((BATCH,), torch.bool)}
    for key, (shape, dtype) in expect.items():
        assert tuple(b[key].shape) == shape and b[key].dtype == dtype, key
        assert b[key].device.type == "cpu"
    for key in ("template", "search"):
        # BGR 0..255 minus a colour offset of a few grey levels (unclipped, as PySOT)
        assert -60 < float(b[key].min()) and float(b[key].max()) < 320
        assert float(b[key].std()) > 5
    assert set(torch.unique(b["label_cls"]).tolist()) <= {-1, 0, 1}


def test_held_batches_stay_valid(shards, cfg):
    """Batches are handed over without copies; holding them across iterations must be safe."""
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=6)
    held, copies = [], []
    for b in loader:
        held.append(b)
        copies.append({k: v.clone() for k, v in b.items()})
    for b, c in zip(held, copies):
        assert_same(b, c)
    assert not torch.equal(held[0]["search"], held[-1]["search"])


def test_images_match_reference_for_the_same_plans(shards, cfg):
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=3)
    loader.set_epoch(1)
    first = next(iter(loader))
    indices = loader.sampler.rank_indices()[:BATCH]
    for i, index in enumerate(indices):
        plan = loader.sampler.plan(1, int(index))
        (dz, ez), (dx, ex) = plan.template_ref, plan.search_ref
        z, x = render_pair(plan, loader.readers[dz].jpeg_at(ez), loader.readers[dx].jpeg_at(ex))
        for ref, out in ((z, first["template"][i]), (x, first["search"][i])):
            diff = np.abs(out.numpy().transpose(1, 2, 0) - ref)
            assert diff.mean() < 0.3 and np.percentile(diff, 99.9) <= 1.5
        assert torch.equal(first["bbox"][i], torch.from_numpy(plan.search.box))
        assert bool(first["neg"][i]) == plan.neg


def test_label_statistics(shards):
    cfg = make_cfg(**{"DATASET.NEG": 0.3, "DATASET.VIDEOS_PER_EPOCH": 48})
    loader = build_loader(cfg, shards=shards, batch_size=8, device="cpu", seed=1)
    t = cfg.TRAIN
    pos_pairs = with_pos = neg_pairs = 0
    _, centres = (torch.from_numpy(c) for c in anchor_grid_from_cfg(cfg))
    for b in loader:
        cls = b["label_cls"].flatten(1)
        n_pos, n_neg = (cls == 1).sum(1), (cls == 0).sum(1)
        for i in range(cls.shape[0]):
            if b["neg"][i]:
                neg_pairs += 1
                assert n_pos[i] == 0 and 0 < n_neg[i] <= t.NEG_NUM
                assert float(b["label_loc_weight"][i].sum()) == 0
                continue
            pos_pairs += 1
            assert n_pos[i] <= t.POS_NUM and n_neg[i] <= t.TOTAL_NUM - t.POS_NUM
            if n_pos[i] > 0:
                with_pos += 1
                assert float(b["label_loc_weight"][i].sum()) == pytest.approx(1.0, abs=1e-4)
                # deltas at a positive anchor decode back to the target box
                a, y, x = (int(v) for v in torch.nonzero(b["label_cls"][i] == 1)[0])
                dx, dy, dw, dh = b["label_loc"][i, :, a, y, x]
                acx, acy, aw, ah = centres[:, a, y, x]
                cx, cy = acx + dx * aw, acy + dy * ah
                w, h = aw * torch.exp(dw), ah * torch.exp(dh)
                decoded = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                assert torch.allclose(decoded, b["bbox"][i], atol=1e-3)
    assert neg_pairs > 0 and pos_pairs > 0
    assert with_pos >= 0.7 * pos_pairs


def test_deterministic_and_independent_of_threads_and_runs(shards, cfg):
    one = batches(build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=7,
                               num_threads=1))
    two = batches(build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=7,
                               num_threads=2))
    # CPU loaders render several batches per DALI run; one run per batch gives the same batches
    per_batch = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=7)
    assert per_batch.run_batches > 1
    per_batch.run_batches = 1
    single = batches(per_batch)
    assert len(one) == len(two) == len(single) == EPOCH_PAIRS // BATCH
    for a, b, c in zip(one, two, single):
        assert_same(a, b)
        assert_same(a, c)
    other = batches(build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=8), 1)
    assert not torch.equal(one[0]["search"], other[0]["search"])


def _fingerprints(batch_list):
    return sorted(round(float(s.double().sum()), 2) for b in batch_list for s in b["search"])


def test_ddp_slices_are_disjoint_and_complete(shards, cfg):
    whole = batches(build_loader(cfg, shards=shards, batch_size=2, device="cpu", seed=2))
    parts = [batches(build_loader(cfg, shards=shards, batch_size=2, device="cpu", seed=2,
                                  rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) // 2
    fp0, fp1 = _fingerprints(parts[0]), _fingerprints(parts[1])
    assert not set(fp0) & set(fp1)
    assert sorted(fp0 + fp1) == _fingerprints(whole)


def test_resume_from_state_dict_mid_epoch(shards, cfg):
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=4)
    loader.set_epoch(2)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state["epoch"] == 2 and state["next_batch"] == 2
    rest = list(it)
    assert loader.state_dict()["epoch"] == 3 and loader.state_dict()["next_batch"] == 0

    resumed = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=4)
    resumed.load_state_dict(state)
    again = batches(resumed)
    assert len(again) == len(rest) == len(loader) - 2
    for a, b in zip(rest, again):
        assert_same(a, b)
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(cfg, shards=shards, batch_size=2, device="cpu", seed=4).load_state_dict(state)


def test_leaving_an_iteration_early_resumes_at_the_next_batch(shards, cfg):
    expected = batches(build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=5))
    loader = build_loader(cfg, shards=shards, batch_size=BATCH, device="cpu", seed=5)
    first = iter(loader)
    assert_same(next(first), expected[0])   # batch 1 is now in flight inside DALI
    second = iter(loader)                    # a new pass continues at batch 1
    assert_same(next(second), expected[1])
    del first                                # the abandoned pass must not disturb the new one
    assert_same(next(second), expected[2])


def _corrupt(folder: Path, reader: ShardReader, entry: int, value: bytes, vouch: bool = False):
    """Damage a stored crop in place in data.mdb (cut or zero-padded to its stored length), as a
    disk error would.  vouch=True also records the damaged bytes' CRC in the index, as if they had
    been stored that way at build time: the checksum passes and a later check must catch it."""
    assert reader.folder == Path(folder)
    overwrite_crop(reader, entry, value)
    if vouch:
        vouch_for_crop(reader, entry)


def undecodable_jpeg(jpeg: bytes) -> bytes:
    """`jpeg` with its first component pointed at quantisation table 3 (never defined): the
    headers, size and markers are intact; libjpeg-turbo and nvJPEG refuse to decode it."""
    data = bytearray(jpeg)
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 12] = 3   # SOF0: FF C0, length (2), precision, height (2), width (2), count, then (id, sampling, table)
    return bytes(data)


def test_undecodable_crops_are_skipped_and_counted(shards, cfg, tmp_path, caplog):
    root = tmp_path / "cache"
    shutil.copytree(shards, root)
    coco = shard_dir(root, "COCO")
    reader = ShardReader(coco)
    # Every COCO image is a video slot of the epoch, so its crops are certainly read. Each crop is
    # damaged in place; a third fails its recorded checksum, a third passes it (the index vouches
    # for the damaged bytes) but fails the cheap JPEG check, and a third passes both but only fails
    # in the DALI decoder: a valid 511x511 frame header whose first component uses a quantisation
    # table never defined.
    for e in range(len(reader)):
        value = reader.jpeg_at(e)
        if e % 3 == 0:
            _corrupt(coco, reader, e, value[:500])
        elif e % 3 == 1:
            _corrupt(coco, reader, e, value[:500], vouch=True)
        else:
            _corrupt(coco, reader, e, undecodable_jpeg(value), vouch=True)
    cfg_coco = make_cfg(**{"DATASET.NAMES": "[COCO,VID]", "DATASET.NEG": 0.0})
    loader = build_loader(cfg_coco, shards=root, batch_size=BATCH, device="cpu", seed=0)
    with caplog.at_level("WARNING", logger="pipeline.loader"):
        out = batches(loader)
    assert len(out) == len(loader)
    assert "checksum mismatch" in caplog.text              # caught by the recorded CRC
    assert "not a complete JPEG" in caplog.text            # caught before DALI
    assert "rejected by the DALI decoder" in caplog.text   # caught after a DALI failure
    assert loader.skipped >= 1
    assert all(ref[0] == 0 for ref in loader.bad_entries)  # dataset 0 = COCO
    # every COCO crop is unusable, so each delivered pair is the first replacement attempt whose
    # crops are both VID (dataset 1): the same images and box as the reference renders for it
    indices = loader.sampler.rank_indices()[:len(out) * BATCH]
    coco_planned = 0
    for n, index in enumerate(indices):
        attempt = 0
        while {(plan := loader.sampler.plan(0, int(index), attempt)).template_ref[0],
               plan.search_ref[0]} != {1}:
            attempt += 1
        coco_planned += attempt > 0
        (dz, ez), (dx, ex) = plan.template_ref, plan.search_ref
        z, x = render_pair(plan, loader.readers[dz].jpeg_at(ez), loader.readers[dx].jpeg_at(ex))
        b, i = out[n // BATCH], n % BATCH
        for ref, got in ((z, b["template"][i]), (x, b["search"][i])):
            assert np.abs(got.numpy().transpose(1, 2, 0) - ref).mean() < 0.3
        assert torch.equal(b["bbox"][i], torch.from_numpy(plan.search.box))
    assert coco_planned > 0  # some first plans were COCO pairs, so replacement really happened


def test_clear_errors(shards, cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="YOUTUBEBB|YTB"):
        build_loader(make_cfg(**{"DATASET.NAMES": "[VID,YOUTUBEBB]"}), shards=shards,
                     batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        build_loader(cfg, shards=shards, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="pin_memory"):
        build_loader(cfg, shards=shards, batch_size=2, device="cuda", pin_memory=True)
    with pytest.raises(ValueError, match="crop"):
        # shards were cut for a 127 exemplar; this config wants 135 (search 263 keeps 25x25)
        build_loader(make_cfg(**{"TRAIN.EXEMPLAR_SIZE": 135, "TRAIN.SEARCH_SIZE": 263}),
                     shards=shards, batch_size=2, device="cpu")
