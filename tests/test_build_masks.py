"""Masks through the shard builder: COCO (polygons, RLE, crowd RLE, decoded by the real pycocotools),
YouTube-VOS (palette PNGs, boxes from the masks), the authors' crop511 .m.png import, damage, resume,
and datasets / folders without masks (real LMDB, real subprocess kill)."""
import json
import shutil
import signal
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from pipeline.crop import search_crop_affine
from pipeline.ingest import build_dataset, verify_shards
from pipeline.shards import INDEX_ARRAYS, INDEX_NAME, ShardReader, decode_mask, entry_key, marker_key
from pipeline.synthetic import make_dataset
from tools.build_lmdb import main as cli

from build_fixtures import kill_build_after
from shard_damage import flip_crop_byte

LEGACY = Path(__file__).resolve().parent / 'data' / 'shards_v2_coco' / 'COCO'


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    base = tmp_path_factory.mktemp('coco')
    make_dataset('COCO', base / 'raw', videos=12, seed=2)
    report = build_dataset('COCO', base / 'raw', base / 'out', workers=2, progress=False)
    return base / 'raw', report, ShardReader(base / 'out' / 'COCO')


@pytest.fixture(scope='module')
def ytbvos(tmp_path_factory):
    base = tmp_path_factory.mktemp('ytbvos')
    manifest = make_dataset('YTBVOS', base / 'raw', videos=3, frames=8, seed=2)
    report = build_dataset('YTBVOS', base / 'raw', base / 'out', workers=2, progress=False)
    return base / 'raw', manifest, report, ShardReader(base / 'out' / 'YTBVOS')


def warped(mask, box, threshold):
    """The authors' mask crop: the float mask warped like the image crop (bilinear, border 0), > threshold."""
    m = cv2.warpAffine(mask.astype(np.float32), search_crop_affine(box), (511, 511), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return m > threshold


def stored(r, e):
    return decode_mask(*r.mask_at(e), 511) > 0


def on_object(r, e, mask):
    """Fraction of the mask's inner pixels that show a saturated (synthetic) object in the crop."""
    crop = cv2.imdecode(np.frombuffer(r.jpeg_at(e), np.uint8), cv2.IMREAD_COLOR)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return float((cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)[..., 1][inner] > 100).mean())


def test_coco_masks_are_the_official_decoding_cropped_and_thresholded(coco):
    raw, report, r = coco
    api = COCO(str(raw / 'annotations/instances_train2017.json'))
    by_stem = {Path(im['file_name']).stem: im['id'] for im in api.dataset['images']}
    assert r.has_masks and r.entry_has_mask.all() and report['counts']['masks'] == len(r)
    kinds, other_threshold_differs = set(), False
    for e in range(len(r)):
        video, track, _ = r.entry_location(e)
        ann = api.imgToAnns[by_stem[video.split('/')[1]]][track]  # track = position among the image's annotations
        seg = ann['segmentation']
        kinds.add('polygons' if isinstance(seg, list) else 'crowd RLE' if ann['iscrowd'] else 'RLE')
        full = api.annToMask(ann)
        want = warped(full, r.box_at(e), 0.5)
        assert np.array_equal(stored(r, e), want), (video, track)
        other_threshold_differs |= not np.array_equal(want, warped(full, r.box_at(e), 0.2))
        assert on_object(r, e, want) > 0.9  # the mask lies on the object in the crop
    assert kinds == {'polygons', 'RLE', 'crowd RLE'} and other_threshold_differs


def test_ytbvos_boxes_are_the_masks_and_masks_are_thresholded_at_0_2(ytbvos):
    raw, manifest, report, r = ytbvos
    assert r.has_masks and r.entry_has_mask.all() and len(r) == manifest['totals']['valid_annotations']
    other_threshold_differs = False
    for e in range(len(r)):
        video, obj, frame = r.entry_location(e)
        ids = np.array(Image.open(raw / 'train/Annotations' / video / f'{frame:05d}.png'))
        full = ids == obj
        ys, xs = np.nonzero(full)
        assert full.sum() > 1000
        assert r.box_at(e) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        want = warped(full, r.box_at(e), 0.2)
        assert np.array_equal(stored(r, e), want), (video, obj, frame)
        other_threshold_differs |= not np.array_equal(want, warped(full, r.box_at(e), 0.5))
        assert on_object(r, e, want) > 0.9
    assert other_threshold_differs
    assert report['dropped']['small_mask'] == manifest['totals']['small_masks']
    listed = {(Path(b[0]).name, b[1]) for b in report['bad_inputs']}
    for item in manifest['items']:
        if item['kind'] in ('corrupt_png', 'missing_png', 'empty_mask'):
            reason = {'corrupt_png': 'corrupt_mask', 'missing_png': 'missing_mask'}.get(item['kind'], 'empty_mask')
            assert (Path(item['path']).name, reason) in listed


def test_bad_coco_segmentations_are_dropped_and_named(tmp_path):
    make_dataset('COCO', tmp_path / 'raw', videos=4, seed=3, broken=False)
    path = tmp_path / 'raw/annotations/instances_train2017.json'
    doc = json.loads(path.read_text())
    doc['annotations'][0]['segmentation'] = [[10.0, 10.0, 'x', 12.0, 30.0, 30.0]]   # not numbers
    doc['annotations'][1]['segmentation'] = {'size': [7, 9], 'counts': [10, 3, 50]}  # not the image's size
    bad = {doc['annotations'][0]['id'], doc['annotations'][1]['id']}
    path.write_text(json.dumps(doc))
    report = build_dataset('COCO', tmp_path / 'raw', tmp_path / 'out', progress=False)
    assert report['dropped'] == {'malformed_annotation': 2}
    named = [b for b in report['bad_inputs'] if b[1] == 'malformed_annotation']
    assert {Path(b[0]).name for b in named} == {'instances_train2017.json'}
    assert sorted(int(b[2].split('annotation id ')[1].split(':')[0]) for b in named) == sorted(bad)
    assert any('9x7 for a' in b[2] for b in named)
    r = ShardReader(tmp_path / 'out/COCO')
    assert len(r) == len(doc['annotations']) - 2 and r.entry_has_mask.all()


def _export_crop511(r, crop_dir: Path) -> dict:
    """The SiamMask authors' crop511 layout of a built folder: <frame>.<track>.x.jpg and .m.png (511 x 511,
    0/255, as their par_crop writes it) + the train.json boxes."""
    anno = {}
    for e in range(len(r)):
        video, track, frame = r.entry_location(e)
        d = crop_dir / video
        d.mkdir(parents=True, exist_ok=True)
        (d / f'{frame:06d}.{track:02d}.x.jpg').write_bytes(r.jpeg_at(e))
        cv2.imwrite(str(d / f'{frame:06d}.{track:02d}.m.png'), decode_mask(*r.mask_at(e), 511))
        anno.setdefault(video, {}).setdefault(f'{track:02d}', {})[f'{frame:06d}'] = list(r.box_at(e))
    return anno


def test_crop511_import_of_the_authors_masks(coco, tmp_path, capsys):
    _, _, r = coco
    crop_dir = tmp_path / 'crop511'
    (tmp_path / 'train.json').write_text(json.dumps(_export_crop511(r, crop_dir)))
    keys = r.keys()
    absent, corrupt = keys[1], keys[2]
    (crop_dir / absent[0] / f'{absent[2]:06d}.{absent[1]:02d}.m.png').unlink()
    broken = crop_dir / corrupt[0] / f'{corrupt[2]:06d}.{corrupt[1]:02d}.m.png'
    broken.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
    args = ['--dataset', 'COCO', '--from-crop511', str(crop_dir), '--anno', str(tmp_path / 'train.json'),
            '--workers', '1', '--no-progress', '--verify']
    assert cli(args + ['--out', str(tmp_path / 'imp')]) == 0
    r2 = ShardReader(tmp_path / 'imp/COCO')
    report = json.loads((tmp_path / 'imp/COCO/build_report.json').read_text())
    assert report['dropped'] == {'corrupt_mask': 1} and [broken.as_posix(), 'corrupt_mask', 'cannot decode'] in [
        [Path(b[0]).as_posix(), *b[1:]] for b in report['bad_inputs']]
    assert set(r2.keys()) == set(keys) - {corrupt}
    assert r2.has_masks and report['counts']['masks'] == len(r2) - 1
    for k in set(keys) - {corrupt}:
        e2, e = r2.keys().index(k), keys.index(k)
        assert r2.jpeg_at(e2) == r.jpeg_at(e) and r2.box_at(e2) == r.box_at(e)
        if k == absent:
            assert not r2.entry_has_mask[e2]
        else:
            assert r2.mask_at(e2) == r.mask_at(e)
    # a mask of another size than the crops: the import stops, naming the file
    small = crop_dir / keys[3][0] / f'{keys[3][2]:06d}.{keys[3][1]:02d}.m.png'
    cv2.imwrite(str(small), np.zeros((255, 255), np.uint8))
    capsys.readouterr()
    assert cli(args + ['--out', str(tmp_path / 'imp2')]) == 2
    err = capsys.readouterr().err
    assert str(small) in err and '255x255, expected 511x511' in err


def _all_values(folder):
    r = ShardReader(folder)
    return {k: (r.jpeg(*k), r.mask(*k)) for k in r.keys()}


def test_kill_and_resume_with_masks_equals_uninterrupted(tmp_path):
    make_dataset('YTBVOS', tmp_path / 'raw', videos=8, frames=5, seed=4, broken=False)
    args = ['--dataset', 'YTBVOS', '--root', str(tmp_path / 'raw'), '--workers', '2', '--shard-size', '60K',
            '--no-progress']
    assert cli(args + ['--out', str(tmp_path / 'ref')]) == 0
    assert kill_build_after(args + ['--out', tmp_path / 'k'], 3) == -signal.SIGKILL
    assert not (tmp_path / 'k/YTBVOS' / INDEX_NAME).exists()
    assert cli(args + ['--out', str(tmp_path / 'k')]) == 0
    ref, got = tmp_path / 'ref/YTBVOS', tmp_path / 'k/YTBVOS'
    report = json.loads((got / 'build_report.json').read_text())
    assert report['videos_resumed'] >= 3 and ShardReader(ref).meta['counts']['shards'] > 1
    for name in (INDEX_NAME, 'index.arrays'):
        assert (ref / name).read_bytes() == (got / name).read_bytes()
    assert _all_values(ref) == _all_values(got)
    assert ShardReader(got).has_masks and verify_shards(got) == []


def test_verify_names_a_damaged_mask(coco, tmp_path, capsys):
    folder = tmp_path / 'COCO'
    shutil.copytree(coco[2].folder, folder)
    r = ShardReader(folder)
    e = next(e for e in range(len(r)) if r.entry_offset[e] and r.entry_mask_length[e])
    flip_crop_byte(r, e, mask=True)
    assert cli(['--dataset', 'COCO', '--out', str(tmp_path), '--verify-only']) == 1
    err = capsys.readouterr().err
    assert 'FAILED' in err and f'mask of crop {entry_key(*r.entry_location(e)).decode()}' in err


def test_old_coco_folder_reads_and_a_rerun_asks_for_overwrite(tmp_path, capsys):
    raw = tmp_path / 'raw'
    make_dataset('COCO', raw, videos=3, broken=False)  # the data the old folder was built from
    folder = tmp_path / 'cache/COCO'
    shutil.copytree(LEGACY, folder)
    params = json.loads((folder / 'build_params.json').read_text())
    (folder / 'build_params.json').write_text(json.dumps({**params, 'root': str(raw.resolve())}))
    args = ['--dataset', 'COCO', '--root', str(raw), '--out', str(tmp_path / 'cache'), '--jpeg-quality', '30',
            '--workers', '1', '--no-progress']
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert 'different parameters' in err and "'masks'" in err and '--overwrite' in err
    old = ShardReader(folder)
    assert not old.has_masks and len(old) > 0 and verify_shards(folder) == []
    old.close()
    assert cli(args + ['--overwrite']) == 0
    new = ShardReader(folder)
    assert new.has_masks and set(new.keys()) == set(old.keys())  # same crops, now with their masks


def test_datasets_without_masks_keep_their_format(tmp_path):
    make_dataset('VID', tmp_path / 'raw', videos=2, frames=6, seed=1, broken=False)
    build_dataset('VID', tmp_path / 'raw', tmp_path / 'out', progress=False)
    folder = tmp_path / 'out/VID'
    legacy = msgpack.unpackb((LEGACY / INDEX_NAME).read_bytes(), raw=False)
    meta = msgpack.unpackb((folder / INDEX_NAME).read_bytes(), raw=False)
    assert set(meta) == set(legacy) and list(meta['arrays']) == list(INDEX_ARRAYS) == list(legacy['arrays'])
    assert meta['checksums'] == legacy['checksums'] and set(meta['counts']) == set(legacy['counts'])
    assert 'masks' not in json.loads((folder / 'build_params.json').read_text())
    import lmdb
    env = lmdb.open(str(folder / 'shard-00000'), readonly=True, lock=False)
    with env.begin() as txn:
        marker = msgpack.unpackb(txn.get(marker_key(0)), raw=False)
    env.close()
    assert not any(k.startswith('mask') for k in marker)
    r = ShardReader(folder)
    assert not r.has_masks and not r.entry_has_mask.any()
