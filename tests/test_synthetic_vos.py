"""Synthetic YouTube-VOS and DAVIS: layouts, palette PNG annotations, masks that follow the rendered
objects (occlusion, void borders), faults, determinism.

Read the way the official layouts are documented (PIL for the palette PNGs, as the DAVIS toolkit
reads them), independently of pipeline/synthetic/.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import synthetic
from pipeline.ingest.spec import YTBVOS_MIN_MASK_PIXELS

from test_synthetic import _saturation, _tree_digest


@pytest.fixture(scope='module')
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp('davis') / 'DAVIS'
    return root, synthetic.make_dataset('DAVIS', root, videos=4, frames=10, seed=3, size=(320, 180))


@pytest.fixture(scope='module')
def ytbvos(tmp_path_factory):
    root = tmp_path_factory.mktemp('ytbvos') / 'YTBVOS'
    return root, synthetic.make_dataset('YTBVOS', root, videos=4, frames=10, seed=3)


def _ids(path):
    img = Image.open(path)
    assert img.mode == 'P', f'{path} is not a palette PNG ({img.mode})'
    return np.array(img)


def _broken(manifest):
    """Paths of unreadable files (an empty_mask PNG is readable: one object lost its pixels)."""
    return {item['path'] for item in manifest['items'] if item['kind'] != 'empty_mask'}


def _on_object(img, mask):
    """Fraction of a mask's inner pixels (one pixel in from its border) that show a saturated object."""
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return float((_saturation(img)[inner] > 100).mean()) if inner.any() else 1.0


def _touching(ids, a, b):
    """Whether objects a and b share a border (occlusion: one is drawn over the other)."""
    grown = cv2.dilate((ids == a).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return bool(np.any(grown & (ids == b)))


def test_davis_layout_sets_and_first_frame(davis):
    root, manifest = davis
    sets = {(y, s): (root / 'ImageSets' / y / f'{s}.txt').read_text().split() for y in ('2016', '2017')
            for s in ('train', 'val')}
    seqs = sorted(p.name for p in (root / 'JPEGImages/480p').iterdir())
    assert sorted(sets['2017', 'train'] + sets['2017', 'val']) == seqs and len(seqs) == 4
    assert sets['2017', 'val'] and sets['2016', 'val'] and set(sets['2016', 'val']) <= set(sets['2017', 'val'])
    objects = 0
    for seq in seqs:
        frames = sorted((root / 'JPEGImages/480p' / seq).glob('*.jpg'))
        assert [f.name for f in frames] == [f'{i:05d}.jpg' for i in range(10)]
        first = _ids(root / 'Annotations/480p' / seq / '00000.png')
        n = int(first[first != 255].max())  # the official toolkit: objects = largest id in frame 0
        assert set(np.unique(first)) == set(range(n + 1)) | {255}
        single = n == 1
        assert (seq in sets['2016', 'train'] + sets['2016', 'val']) == single
        objects += n
    assert manifest['totals']['objects'] == objects
    palette = Image.open(root / 'Annotations/480p' / seqs[0] / '00000.png').getpalette()
    assert palette[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0] and palette[3 * 255:3 * 256] == [224, 224, 192]


def test_masks_follow_objects_with_void_borders_and_occlusion(davis, ytbvos):
    checked, moved, touching = 0, 0, 0
    for root, manifest, images, annotations in ((*davis, 'JPEGImages/480p', 'Annotations/480p'),
                                               (*ytbvos, 'train/JPEGImages', 'train/Annotations')):
        broken = _broken(manifest)
        for png in sorted((root / annotations).rglob('*.png')):
            rel = png.relative_to(root).as_posix()
            jpg = root / images / png.parent.name / f'{png.stem}.jpg'
            if rel in broken or jpg.relative_to(root).as_posix() in broken:
                continue
            ids, img = _ids(png), cv2.imread(str(jpg))
            assert ids.shape == img.shape[:2]
            objs = [k for k in np.unique(ids) if k not in (0, 255)]
            for k in objs:
                assert _on_object(img, ids == k) > 0.95, (rel, k)
                shifted = np.roll(ids == k, int(0.5 * np.sqrt((ids == k).sum())) + 3, axis=1)
                checked += 1
                moved += _on_object(img, shifted) > 0.95  # the check can fail
            touching += any(_touching(ids, a, b) for a in objs for b in objs if a < b)
            void = ids == 255
            if root == davis[0]:
                assert void.any() == bool(objs)  # DAVIS: a void band along every object border, nowhere else
                k3 = np.ones((3, 3), np.uint8)
                for k in [0] + objs:  # every label is ringed by void where it meets another one
                    ring = (cv2.dilate((ids == k).astype(np.uint8), k3) > 0) & (ids != k)
                    assert np.all(void[ring])
                assert not cv2.erode(void.astype(np.uint8), np.ones((5, 5), np.uint8)).any()  # a thin band
            else:
                assert not void.any()
    assert checked > 50 and moved < 0.3 * checked and touching > 0


def test_davis_faults(davis):
    root, manifest = davis
    kinds = {i['kind']: root / i['path'] for i in manifest['items']}
    assert set(kinds) == {'truncated_jpeg', 'corrupt_png', 'missing_png'}
    assert b'\xff\xd9' not in kinds['truncated_jpeg'].read_bytes()[-2:]
    with pytest.raises(Exception):
        Image.open(kinds['corrupt_png']).load()
    assert not kinds['missing_png'].exists() and kinds['missing_png'].with_suffix('.jpg').name
    assert all(i['frame'] > 0 for i in manifest['items'])
    clean = synthetic.make_dataset('DAVIS', root.parent / 'clean', videos=2, frames=4, broken=False)
    assert clean['items'] == []


def test_ytbvos_meta_lists_the_frames_with_pixels(ytbvos):
    root, manifest = ytbvos
    meta = json.loads((root / 'train/meta.json').read_text())['videos']
    assert len(meta) == 4 and all(len(v) == 10 and int(v, 16) >= 0 for v in meta)
    broken = _broken(manifest)
    empty = {(i['video'], i['frame'], i['object']) for i in manifest['items'] if i['kind'] == 'empty_mask'}
    listed = usable = small = 0
    for video, entry in meta.items():
        names = sorted(p.stem for p in (root / 'train/JPEGImages' / video).glob('*.jpg'))
        names += [Path(i['path']).stem for i in manifest['items']
                  if i['kind'] == 'missing_image' and i['video'] == video]
        assert sorted(names) == [f'{5 * f:05d}' for f in range(10)]  # every 5th frame
        for obj, o in entry['objects'].items():
            assert o['category'] and o['frames'] == sorted(o['frames'])
            for name in o['frames']:
                listed += 1
                png = f'train/Annotations/{video}/{name}.png'
                jpg = f'train/JPEGImages/{video}/{name}.jpg'
                if png in broken and (video, int(name), int(obj)) not in empty:
                    continue
                pixels = int(np.count_nonzero(_ids(root / png) == int(obj)))
                assert (pixels == 0) == ((video, int(name), int(obj)) in empty)
                if jpg not in broken and pixels:
                    usable += pixels > YTBVOS_MIN_MASK_PIXELS
                    small += pixels <= YTBVOS_MIN_MASK_PIXELS
        for png in (root / 'train/Annotations' / video).glob('*.png'):  # ids present are listed
            if png.relative_to(root).as_posix() not in broken:
                for k in np.unique(_ids(png)):
                    assert k == 0 or png.stem in entry['objects'][str(k)]['frames']
    totals = manifest['totals']
    assert (listed, usable, small) == (totals['annotations'], totals['valid_annotations'], totals['small_masks'])
    assert {i['kind'] for i in manifest['items']} == {'truncated_jpeg', 'corrupt_jpeg', 'empty_jpeg',
                                                      'missing_image', 'corrupt_png', 'missing_png', 'empty_mask'}
    gaps = [o['frames'] for e in meta.values() for o in e['objects'].values()
            if len(o['frames']) < 10 and o['frames']]
    assert any(int(b) - int(a) > 5 for fr in gaps for a, b in zip(fr, fr[1:]))  # objects leave and return


@pytest.mark.parametrize('name', ['YTBVOS', 'DAVIS'])
def test_vos_deterministic_for_a_seed(tmp_path, name):
    digests = [_tree_digest(synthetic.make_dataset(name, tmp_path / f'{name}{k}', videos=2, frames=4, seed=s)['root'])
               for k, s in enumerate((3, 3, 4))]
    assert digests[0] == digests[1] != digests[2]
