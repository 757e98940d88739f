"""Masks in the shard format: the reader contract (`has_masks`, `entry_has_mask`, `mask_at`), the codec,
checksums, and folders written before masks existed (tests/data/shards_v2_coco: a COCO build of the
format-2 code without masks, kept as it was written)."""
import shutil
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import synthetic
from pipeline.ingest import verify_shards
from pipeline.shards import (CorruptCropError, ShardError, ShardReader, decode_mask, encode_mask, entry_key,
                             read_index_meta)

from shard_damage import flip_crop_byte

LEGACY = Path(__file__).resolve().parent / 'data' / 'shards_v2_coco' / 'COCO'


@pytest.fixture(scope='module')
def masked(tmp_path_factory):
    out = synthetic.make_shards(tmp_path_factory.mktemp('masked'), entries=40, distinct=4, per_track=10,
                                dataset='COCO', masks=True, seed=2)
    return Path(out['folder'])


def test_codec_round_trip_is_tight_and_lossless():
    rng = np.random.default_rng(0)
    mask = np.zeros((511, 511), np.uint8)
    mask[100:180, 300:340] = rng.integers(0, 2, (80, 40))
    mask[100, 300] = mask[179, 339] = 1  # the corners of the region are on
    png, region = encode_mask(mask)
    assert region == (300, 100, 40, 80)
    small = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert small.shape == (80, 40) and small.dtype == np.uint8 and set(np.unique(small)) == {0, 255}
    assert np.array_equal(decode_mask(png, region, 511), mask * 255)
    assert encode_mask(np.zeros((511, 511), bool)) == (b'', (0, 0, 0, 0))
    assert not decode_mask(b'', (0, 0, 0, 0), 511).any()
    with pytest.raises(ValueError, match='expected 41x80'):
        decode_mask(png, (300, 100, 41, 80), 511)


def test_reader_contract(masked):
    r = ShardReader(masked)
    assert r.has_masks and r.entry_has_mask.dtype == np.bool_ and r.entry_has_mask.shape == (len(r),)
    assert r.entry_has_mask.all() and r.meta['counts']['masks'] == len(r)
    values = synthetic.realistic_masks(4, seed=2)
    for e in range(len(r)):
        png, region = r.mask_at(e)
        assert (png, region) == values[e % 4]
        x, y, w, h = region
        full = decode_mask(png, region, 511)
        assert full[y:y + h, x:x + w].any() and full.sum() == full[y:y + h, x:x + w].sum()
    assert r.mask(*r.entry_location(7)) == r.mask_at(7)
    assert all(r.jpeg_and_mask_at(e) == (r.jpeg_at(e), r.mask_at(e)) for e in range(len(r)))
    # the JPEG read is the crop alone, without the PNG that follows it in the value
    crop = cv2.imdecode(np.frombuffer(r.jpeg_at(3), np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (511, 511, 3) and zlib.crc32(r.jpeg_at(3)) == int(r.entry_crc[3])
    assert verify_shards(masked) == []


def test_old_folder_reads_as_without_masks(tmp_path):
    folder = tmp_path / 'COCO'
    shutil.copytree(LEGACY, folder)
    meta = read_index_meta(folder)
    assert meta['format_version'] == 2 and 'masks' not in meta and 'entry_has_mask' not in meta['arrays']
    r = ShardReader(folder)
    assert not r.has_masks and len(r) == meta['counts']['entries'] > 0
    assert r.entry_has_mask.shape == (len(r),) and not r.entry_has_mask.any()
    for e in range(len(r)):
        assert cv2.imdecode(np.frombuffer(r.jpeg_at(e), np.uint8), cv2.IMREAD_COLOR).shape == (511, 511, 3)
        with pytest.raises(ShardError, match='has no mask.*built without masks'):
            r.mask_at(e)
        assert r.jpeg_and_mask_at(e) == (r.jpeg_at(e), None)
    assert verify_shards(folder) == []


def test_damaged_mask_fails_its_checksum_and_verify(masked, tmp_path):
    folder = tmp_path / 'COCO'
    shutil.copytree(masked, folder)
    r = ShardReader(folder)
    key = entry_key(*r.entry_location(5)).decode()
    flip_crop_byte(r, 5, mask=True)
    assert r.jpeg_at(5) and r.mask_at(4)  # the crop itself and the other masks are intact
    for read in (r.mask_at, r.jpeg_and_mask_at):
        with pytest.raises(CorruptCropError, match=f'shard-00000: crop {key} .*mask checksum mismatch'):
            read(5)
    problems = verify_shards(folder)
    assert any(f'mask of crop {key}' in p and 'recorded at build' in p for p in problems), problems


def test_masks_of_values_inside_btree_pages_are_read_through_lmdb(tmp_path):
    """A crop and mask small enough to live inside a B-tree page (offset 0) are read by key, then split."""
    from pipeline.ingest import build_parsed
    from pipeline.ingest.crop_worker import CropParams
    from pipeline.ingest.spec import DropLog, ParseResult, TrackSpec, VideoTableBuilder
    image, mask = tmp_path / 'tiny.x.jpg', tmp_path / 'tiny.m.png'
    image.write_bytes(cv2.imencode('.jpg', np.full((8, 8, 3), 90, np.uint8))[1].tobytes())
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 3:7] = 255
    cv2.imwrite(str(mask), m)
    b = VideoTableBuilder()
    for v in range(2):
        b.add(f'v{v}', [TrackSpec(0, [0, 1], [(1.0, 2.0, 5.0, 6.0)] * 2, [str(image)] * 2, [str(mask)] * 2)])
    parsed = ParseResult('COCO', str(tmp_path), b.finish(precropped=True, mask_kind='crop511'), DropLog(), 1)
    build_parsed(parsed, {'mode': 'test'}, tmp_path / 'out', CropParams(crop_size=8), progress=False)
    r = ShardReader(tmp_path / 'out' / 'COCO')
    assert len(r) == 4 and not r.entry_offset.any() and r.has_masks
    for e in range(4):
        jpeg, (png, region) = r.jpeg_and_mask_at(e)
        assert jpeg == r.jpeg_at(e) == image.read_bytes() and (png, region) == r.mask_at(e)
        assert region == (3, 2, 4, 3) and np.array_equal(decode_mask(png, region, 8), m)
    assert verify_shards(tmp_path / 'out' / 'COCO') == []
    r.close()
