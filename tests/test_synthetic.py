"""Synthetic raw datasets: layouts, annotation formats, box accuracy, faults, determinism.

The parsers here are deliberately independent of pipeline/synthetic/: they read the
files the way the official formats are documented, so a layout mistake fails here.
"""
import csv
import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline import synthetic

REPO = Path(__file__).resolve().parents[1]
SIZES = {'VID': dict(videos=3, frames=12), 'COCO': dict(videos=12), 'DET': dict(videos=12),
         'YTB': dict(videos=3, frames=10), 'GOT10K': dict(videos=3, frames=12),
         'LASOT': dict(videos=3, frames=12)}
IMAGE_FAULTS = {'truncated_jpeg', 'corrupt_jpeg', 'empty_jpeg', 'missing_image'}
BOX_FAULTS = {'box_outside_frame', 'degenerate_box'}


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    base = tmp_path_factory.mktemp('synthetic')
    out = {}
    for name, kw in SIZES.items():
        manifest = synthetic.make_dataset(name, base / name, seed=5, **kw)
        out[name] = (base / name, manifest)
    return out


# ----------------------------------------------------------------------------
# independent readers: each returns records (image_rel, box x1y1x2y2, key) and
# the keys of annotation files that failed to parse
# ----------------------------------------------------------------------------
def _xml_int(node, tag):
    text = node.find(tag).text
    assert re.fullmatch(r'-?\d+', text), f'{tag}={text!r} is not an int'
    return int(text)


def _read_voc(root, xml_rel, *, tracks):
    tree = ET.parse(root / xml_rel).getroot()
    assert tree.tag == 'annotation'
    size = tree.find('size')
    w, h = _xml_int(size, 'width'), _xml_int(size, 'height')
    assert tree.find('filename').text == Path(xml_rel).stem
    assert tree.find('source/database').text.startswith('ILSVRC_')
    objects = []
    for k, obj in enumerate(tree.findall('object')):
        assert re.fullmatch(r'n\d{8}', obj.find('name').text)
        b = obj.find('bndbox')
        box = [_xml_int(b, t) for t in ('xmin', 'ymin', 'xmax', 'ymax')]
        if tracks:
            assert obj.find('occluded').text in ('0', '1') and obj.find('generated').text == '0'
            objects.append((_xml_int(obj, 'trackid'), box))
        else:
            assert obj.find('trackid') is None
            objects.append((k, box))
    return tree.find('folder').text, (w, h), objects


def read_vid(root):
    records, unparsed = [], set()
    xmls = sorted(root.glob('Annotations/VID/train/ILSVRC2015_VID_train_*/*/*.xml'))
    assert xmls
    for xml in xmls:
        rel = xml.relative_to(root).as_posix()
        subset, video = xml.parts[-3], xml.parts[-2]
        try:
            folder, _, objects = _read_voc(root, rel, tracks=True)
        except ET.ParseError:
            unparsed.add(rel)
            continue
        assert folder == f'{subset}/{video}'
        assert re.fullmatch(r'\d{6}', xml.stem)
        img = f'Data/VID/train/{subset}/{video}/{xml.stem}.JPEG'
        for track, box in objects:
            records.append((img, box, (rel, track)))
    return records, unparsed


def read_det(root):
    records, unparsed = [], set()
    xmls = (sorted(root.glob('Annotations/DET/train/ILSVRC2014_train_0000/*.xml'))
            + sorted(root.glob('Annotations/DET/train/ILSVRC2013_train/*/*.xml')))
    for xml in xmls:
        rel = xml.relative_to(root).as_posix()
        try:
            folder, _, objects = _read_voc(root, rel, tracks=False)
        except ET.ParseError:
            unparsed.add(rel)
            continue
        assert folder == xml.parent.name
        img = rel.replace('Annotations/', 'Data/', 1)[:-4] + '.JPEG'
        if 'ILSVRC2013_train' in rel:   # class subfolder: folder is the synset
            assert img.split('/')[-2] == folder and re.fullmatch(r'n\d{8}', folder)
        for k, box in objects:
            records.append((img, box, (rel, k)))
    return records, unparsed


def read_coco(root):
    doc = json.loads((root / 'annotations/instances_train2017.json').read_text())
    assert set(doc) >= {'images', 'annotations', 'categories', 'info', 'licenses'}
    images = {im['id']: im for im in doc['images']}
    cats = {c['id'] for c in doc['categories']}
    records = []
    for a in doc['annotations']:
        assert set(a) >= {'id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd', 'segmentation'}
        assert a['category_id'] in cats and a['iscrowd'] in (0, 1)
        im = images[a['image_id']]
        assert im['file_name'] == f"{im['id']:012d}.jpg"
        x, y, w, h = a['bbox']
        records.append((f"train2017/{im['file_name']}", [x, y, x + w, y + h], a['id']))
    return records, set()


def read_ytb(root):
    records, unparsed = [], set()
    with open(root / 'yt_bb_detection_train.csv', newline='') as fh:
        rows = list(csv.reader(fh))
    for line, row in enumerate(rows, 1):
        try:
            ytid, ts, cid, cname, obj, presence = row[:6]
            coords = [float(v) for v in row[6:10]]
            int(ts), int(cid), int(obj)
            assert len(row) == 10
        except (ValueError, AssertionError):
            unparsed.add(line)
            continue
        assert re.fullmatch(r'[A-Za-z0-9_-]{11}', ytid) and presence in ('present', 'absent')
        img = f'yt_bb_detection_train/{cid}/{ytid}_{ts}_{cid}_{obj}.jpg'
        if presence == 'absent':
            assert coords == [-1.0] * 4
            continue
        xmin, xmax, ymin, ymax = coords
        w, h = synthetic.DEFAULTS['YTB'][2]     # every frame is this size (checked below)
        records.append((img, [xmin * w, ymin * h, xmax * w, ymax * h], line))
    return records, unparsed


def _read_xywh(path, parse):
    return [[parse(v) for v in line.split(',')] for line in path.read_text().splitlines()]


def read_got10k(root):
    names = (root / 'train/list.txt').read_text().split()
    assert names and all(re.fullmatch(r'GOT-10k_Train_\d{6}', n) for n in names)
    records = []
    for name in names:
        seq = root / 'train' / name
        gt = _read_xywh(seq / 'groundtruth.txt', float)
        absence = [int(v) for v in (seq / 'absence.label').read_text().split()]
        cover = [int(v) for v in (seq / 'cover.label').read_text().split()]
        cut = [int(v) for v in (seq / 'cut_by_image.label').read_text().split()]
        assert len(gt) == len(absence) == len(cover) == len(cut)
        assert set(absence) <= {0, 1} and set(cut) <= {0, 1} and all(0 <= c <= 8 for c in cover)
        assert all((a == 1) == (c == 0) for a, c in zip(absence, cover))
        assert '[METAINFO]' in (seq / 'meta_info.ini').read_text()
        for f, ((x, y, w, h), a) in enumerate(zip(gt, absence)):
            if not a:
                records.append((f'train/{name}/{f + 1:08d}.jpg', [x, y, x + w, y + h],
                                (f'train/{name}/groundtruth.txt', f + 1)))
    return records, set()


def read_lasot(root):
    records = []
    seqs = sorted(p.parent for p in root.glob('*/*/groundtruth.txt'))
    assert seqs
    for seq in seqs:
        cls = seq.parent.name
        assert re.fullmatch(rf'{cls}-\d+', seq.name)
        gt = _read_xywh(seq / 'groundtruth.txt', int)
        occ = [int(v) for v in (seq / 'full_occlusion.txt').read_text().strip().split(',')]
        oov = [int(v) for v in (seq / 'out_of_view.txt').read_text().strip().split(',')]
        assert len(gt) == len(occ) == len(oov)
        rel = seq.relative_to(root).as_posix()
        for f, (box, o, v) in enumerate(zip(gt, occ, oov)):
            if v:
                assert box == [0, 0, 0, 0]
            if not (o or v):
                x, y, w, h = box
                records.append((f'{rel}/img/{f + 1:08d}.jpg', [x, y, x + w, y + h],
                                (f'{rel}/groundtruth.txt', f + 1)))
    return records, set()


READERS = {'VID': read_vid, 'COCO': read_coco, 'DET': read_det, 'YTB': read_ytb,
           'GOT10K': read_got10k, 'LASOT': read_lasot}


def fault_key(name, item):
    """The reader's record key that a broken.json box fault refers to."""
    if name == 'VID':
        return (item['path'], item['track'])
    if name == 'DET':
        return (item['path'], item['object'])
    if name == 'COCO':
        return item['annotation_id']
    if name == 'YTB':
        return item['line']
    return (item['path'], item['line'])


# ----------------------------------------------------------------------------
# box-on-object check: objects are saturated, backgrounds are not. Rectangles and
# ellipses both touch their box at the middle of each side, so just inside each
# side's middle is object and just outside is background (unless another object).
# ----------------------------------------------------------------------------
def _saturation(img):
    return cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[..., 1].astype(np.float32)


def _patch_mean(sat, x1, y1, x2, y2):
    h, w = sat.shape
    x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
    if x1 < 0 or y1 < 0 or x2 > w or y2 > h or x2 <= x1 or y2 <= y1:
        return None
    return float(sat[y1:y2, x1:x2].mean())


def box_fits(sat, box, others):
    """True if the box centre and the inner sides are object and the outer sides background."""
    x1, y1, x2, y2 = box
    cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    ax, ay = max(0.1 * bw, 1), max(0.1 * bh, 1)
    centre = _patch_mean(sat, cx - bw / 4, cy - bh / 4, cx + bw / 4, cy + bh / 4)
    if centre is None or centre <= 100:
        return False
    sides = [((x1 + 2, cy - ay, x1 + 4, cy + ay), (x1 - 6, cy - ay, x1 - 3, cy + ay)),
             ((x2 - 4, cy - ay, x2 - 2, cy + ay), (x2 + 3, cy - ay, x2 + 6, cy + ay)),
             ((cx - ax, y1 + 2, cx + ax, y1 + 4), (cx - ax, y1 - 6, cx + ax, y1 - 3)),
             ((cx - ax, y2 - 4, cx + ax, y2 - 2), (cx - ax, y2 + 3, cx + ax, y2 + 6))]
    for inner, outer in sides:
        mean = _patch_mean(sat, *inner)
        if mean is not None and mean <= 100:
            return False
        near_other = any(outer[0] < o[2] + 3 and outer[2] > o[0] - 3 and outer[1] < o[3] + 3
                         and outer[3] > o[1] - 3 for o in others)
        mean = _patch_mean(sat, *outer)
        if mean is not None and not near_other and mean >= 60:
            return False
    return True


def fit_fraction(root, by_image, move=lambda b: b):
    """Fraction of boxes (sides >= 12 px) that fit their object after `move`; and their number."""
    fits, n = 0, 0
    for img_rel, boxes in by_image.items():
        img = cv2.imread(str(root / img_rel))
        assert img is not None, f'{img_rel} should be readable'
        sat = _saturation(img)
        for k, box in enumerate(boxes):
            if min(box[2] - box[0], box[3] - box[1]) < 12:
                continue
            n += 1
            fits += box_fits(sat, move(box), [b for j, b in enumerate(boxes) if j != k])
    return fits / max(n, 1), n


def _shifted(box):
    d = 0.3 * (box[2] - box[0])
    return [box[0] + d, box[1], box[2] + d, box[3]]


def _inflated(box):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = 1.3 * (box[2] - box[0]), 1.3 * (box[3] - box[1])
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


# ----------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------
@pytest.mark.parametrize('name', list(SIZES))  # YTBVOS and DAVIS: tests/test_synthetic_vos.py
def test_layout_boxes_and_faults(made, name):
    root, manifest = made[name]
    disk = json.loads((root / 'broken.json').read_text())
    assert disk['dataset'] == name and disk['items'] == manifest['items']
    records, unparsed = READERS[name](root)
    items = manifest['items']
    kinds = {i['kind'] for i in items}
    expected = IMAGE_FAULTS | BOX_FAULTS
    expected |= {'VID': {'malformed_xml'}, 'DET': {'malformed_xml'}, 'YTB': {'malformed_csv_row'}}.get(name, set())
    assert kinds == expected
    assert manifest['counts'] == {k: sum(i['kind'] == k for i in items) for k in kinds}

    # every listed fault is real
    bad_images = set()
    for item in items:
        path = root / item['path']
        if item['kind'] == 'missing_image':
            assert not path.exists()
        elif item['kind'] == 'empty_jpeg':
            assert path.stat().st_size == 0
        elif item['kind'] in ('truncated_jpeg', 'corrupt_jpeg'):
            data = path.read_bytes()
            # a truncated JPEG may still decode partially (libjpeg only warns): no end marker
            assert data[:2] == b'\xff\xd8' and not data.endswith(b'\xff\xd9')
            if item['kind'] == 'corrupt_jpeg':
                assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None
        elif item['kind'] == 'malformed_xml':
            assert item['path'] in unparsed
        elif item['kind'] == 'malformed_csv_row':
            assert item['line'] in unparsed
        if item['kind'] in IMAGE_FAULTS:
            bad_images.add(item['path'])
    assert len(unparsed) == sum(i['kind'] in ('malformed_xml', 'malformed_csv_row') for i in items)

    # annotated images exist unless listed missing; invalid boxes are exactly the listed ones
    img_size = {}
    for img_rel, _, _ in records:
        if img_rel not in bad_images and img_rel not in img_size:
            img = cv2.imread(str(root / img_rel))
            assert img is not None, f'{img_rel} referenced but unreadable and not in broken.json'
            img_size[img_rel] = (img.shape[1], img.shape[0])
    assert {i['path'] for i in items if i['kind'] == 'missing_image'} <= {r[0] for r in records}
    listed = {fault_key(name, i): i['kind'] for i in items if i['kind'] in BOX_FAULTS}
    invalid = {}
    for img_rel, (x1, y1, x2, y2), key in records:
        w, h = img_size.get(img_rel, (10 ** 6, 10 ** 6))
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            invalid[key] = 'degenerate_box'
        elif x1 >= w or y1 >= h or x2 <= 0 or y2 <= 0:
            invalid[key] = 'box_outside_frame'
        else:
            assert -1e-6 <= x1 and x2 <= w + 1e-6 and -1e-6 <= y1 and y2 <= h + 1e-6, (img_rel, key)
    assert invalid == listed

    good = {}
    for img_rel, box, key in records:
        if img_rel not in bad_images and key not in invalid:
            good.setdefault(img_rel, []).append(box)
    assert manifest['totals']['annotations'] == len(records)
    assert manifest['totals']['valid_annotations'] == sum(map(len, good.values()))
    # a broken box leaves its object unannotated, which would confuse its neighbours' check;
    # YTB has one file per (frame, object), so boxes are checked among all boxes of the frame
    frame_of = (lambda rel: rel.rsplit('_', 1)[0]) if name == 'YTB' else (lambda rel: rel)
    faulty = {frame_of(r[0]) for r in records if r[2] in invalid}
    frame_boxes = {}
    for img_rel, boxes in good.items():
        frame_boxes.setdefault(frame_of(img_rel), []).extend(boxes)
    fit_images = {img_rel: frame_boxes[frame_of(img_rel)] for img_rel in good
                  if frame_of(img_rel) not in faulty}
    fit, n = fit_fraction(root, fit_images)
    shifted, _ = fit_fraction(root, fit_images, _shifted)
    inflated, _ = fit_fraction(root, fit_images, _inflated)
    assert n >= 8
    assert fit >= 0.85 and shifted < 0.3 and inflated < 0.3, (fit, shifted, inflated)


def test_vid_tracks_have_gaps_and_single_frame_runs(made):
    root, _ = made['VID']
    records, _ = read_vid(root)
    frames = {}
    for _, _, (xml_rel, track) in records:
        video = xml_rel.split('/')[-2]
        frames.setdefault((video, track), []).append(int(Path(xml_rel).stem))
    tracks_per_video = {}
    run_lengths = []
    for (video, track), fs in frames.items():
        tracks_per_video[video] = tracks_per_video.get(video, 0) + 1
        fs = sorted(fs)
        splits = np.flatnonzero(np.diff(fs) > 1)
        run_lengths += np.diff(np.concatenate([[0], splits + 1, [len(fs)]])).tolist()
    assert min(tracks_per_video.values()) >= 2
    assert len(run_lengths) > len(frames)      # some track is split into several runs
    assert 1 in run_lengths                    # and some run has a single frame
    subsets = {p.name for p in (root / 'Data/VID/train').iterdir()}
    assert subsets == {'ILSVRC2015_VID_train_0000', 'ILSVRC2015_VID_train_0001'}


def test_coco_special_annotations(made):
    root, _ = made['COCO']
    doc = json.loads((root / 'annotations/instances_train2017.json').read_text())
    crowd = [a for a in doc['annotations'] if a['iscrowd'] == 1]
    assert crowd
    for a in crowd:
        im = next(i for i in doc['images'] if i['id'] == a['image_id'])
        counts = a['segmentation']['counts']
        assert a['segmentation']['size'] == [im['height'], im['width']]
        assert sum(counts) == im['height'] * im['width'] and sum(counts[1::2]) == a['area']
    assert any(a['bbox'][2] == 0 for a in doc['annotations'])
    annotated = {a['image_id'] for a in doc['annotations']}
    assert any(im['id'] not in annotated for im in doc['images'])
    assert len({(im['width'], im['height']) for im in doc['images']}) > 1
    for im in doc['images']:
        img = cv2.imread(str(root / 'train2017' / im['file_name']))
        if img is not None:
            assert img.shape[:2] == (im['height'], im['width'])


def test_det_has_both_subset_layouts(made):
    root, _ = made['DET']
    assert list((root / 'Data/DET/train/ILSVRC2014_train_0000').glob('*.JPEG'))
    class_dirs = list((root / 'Data/DET/train/ILSVRC2013_train').iterdir())
    assert class_dirs and all(re.fullmatch(r'n\d{8}', d.name) for d in class_dirs)
    for xml in (root / 'Annotations/DET/train/ILSVRC2013_train').glob('*/*.xml'):
        assert (root / 'Data/DET/train/ILSVRC2013_train' / xml.parent.name / (xml.stem + '.JPEG')).exists()


def test_ytb_frames_are_16_9_and_absent_rows_exist(made):
    root, _ = made['YTB']
    rows = list(csv.reader(open(root / 'yt_bb_detection_train.csv', newline='')))
    assert any(len(r) == 10 and r[5] == 'absent' for r in rows)
    frames = list((root / 'yt_bb_detection_train').glob('*/*.jpg'))
    assert frames
    for f in frames[:20]:
        img = cv2.imread(str(f))
        if img is not None:
            assert img.shape[:2] == (216, 384)
            ytid, ts, cid, obj = f.stem.rsplit('_', 3)
            assert f.parent.name == cid and int(ts) % 1000 == 0


def test_eval_sequences(tmp_path):
    summary = synthetic.make_eval(tmp_path / 'eval', videos=2, frames=20, seed=5)
    root = Path(summary['root'])
    index = json.loads((root / 'SYNTH.json').read_text())
    assert sorted(index) == ['Synth01', 'Synth02']
    by_image = {}
    for seq, entry in index.items():
        gt = _read_xywh(root / seq / 'groundtruth_rect.txt', int)
        assert entry['gt_rect'] == gt and entry['init_rect'] == gt[0]
        assert entry['img_names'] == [f'{seq}/img/{f:04d}.jpg' for f in range(1, 21)]
        for name, (x, y, w, h) in zip(entry['img_names'], gt):
            img = cv2.imread(str(root / name))
            assert img is not None and w > 0 and h > 0
            assert 0 <= x and x + w <= img.shape[1] and 0 <= y and y + h <= img.shape[0]
            by_image[name] = [[x, y, x + w, y + h]]
        centres = np.array([[x + w / 2, y + h / 2] for x, y, w, h in gt])
        assert np.abs(np.diff(centres, axis=0)).max() < 0.05 * 320   # slow, smooth motion
    fit, _ = fit_fraction(root, by_image)
    assert fit >= 0.85


def _tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob('*') if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize('name', ['VID', 'YTB'])
def test_deterministic_for_a_seed(tmp_path, name):
    digests = [_tree_digest(synthetic.make_dataset(name, tmp_path / f'{name}{k}', videos=2,
                                                   frames=6, seed=s)['root'])
               for k, s in enumerate((3, 3, 4))]
    assert digests[0] == digests[1] != digests[2]


def test_no_broken_writes_only_valid_data(tmp_path):
    manifest = synthetic.make_dataset('VID', tmp_path / 'VID', videos=2, frames=8, broken=False)
    assert manifest['items'] == [] and manifest['counts'] == {}
    assert manifest['totals']['annotations'] == manifest['totals']['valid_annotations'] > 0


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match='KITTI'):
        synthetic.make_dataset('KITTI', tmp_path / 'x')
    with pytest.raises(ValueError, match='320by240'):
        synthetic.parse_size('320by240')
    with pytest.raises(ValueError, match='frames'):
        synthetic.make_dataset('VID', tmp_path / 'y', frames=1)
    (tmp_path / 'z').mkdir()
    (tmp_path / 'z' / 'precious.txt').write_text('keep')
    with pytest.raises(FileExistsError, match='not empty'):
        synthetic.make_dataset('VID', tmp_path / 'z', videos=1, frames=4)
    with pytest.raises(FileExistsError, match='refusing'):
        synthetic.make_dataset('VID', tmp_path / 'z', videos=1, frames=4, overwrite=True)
    assert (tmp_path / 'z' / 'precious.txt').exists()


def test_cli_all_and_eval(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, 'tools/make_synthetic.py', *args], cwd=REPO,
                              capture_output=True, text=True)

    res = run('--dataset', 'all', '--out', str(tmp_path / 'all'), '--videos', '2', '--frames', '6',
              '--size', '160x120')
    assert res.returncode == 0, res.stderr
    for name in synthetic.DATASETS:
        assert (tmp_path / 'all' / name / 'broken.json').exists()
        assert name in res.stdout
    res = run('--eval', '--out', str(tmp_path / 'eval'), '--videos', '1', '--frames', '5')
    assert res.returncode == 0 and 'EVAL' in res.stdout, res.stderr
    assert len(list((tmp_path / 'eval' / 'Synth01' / 'img').glob('*.jpg'))) == 5
    res = run('--dataset', 'VID', '--out', str(tmp_path / 'eval'))
    assert res.returncode != 0 and 'not empty' in res.stderr


def test_realistic_crops_have_the_size_of_real_ones():
    crops = synthetic.realistic_crops(12, seed=3)
    assert len(set(crops)) == 12
    for c in crops:
        assert 28_000 <= len(c) <= 37_000
        assert cv2.imdecode(np.frombuffer(c, np.uint8), cv2.IMREAD_COLOR).shape == (511, 511, 3)


def test_realistic_shards_built_and_aliased(tmp_path):
    from pipeline.ingest import verify_shards
    from pipeline.shards import ShardReader
    built = synthetic.make_shards(tmp_path / 'b', entries=230, distinct=7, per_track=20, seed=1)
    r = ShardReader(built['folder'])
    assert len(r) == 230 and len(r.video_names) == 6 and r.meta['counts']['shards'] == 1
    assert len({r.jpeg_at(e) for e in range(len(r))}) == 7 and verify_shards(built['folder']) == []
    assert 28_000 * 230 <= built['bytes'] <= 37_000 * 230
    aliased = synthetic.make_shards(tmp_path / 'a', entries=5000, distinct=7, per_track=20, alias=True, seed=1)
    a = ShardReader(aliased['folder'])
    assert len(a) == 5000 and len(a.video_names) == 125
    assert (Path(aliased['folder']) / 'shard-00000' / 'data.mdb').stat().st_size < 7 * 40_000 + (1 << 20)
    assert [a.jpeg_at(e) for e in (0, 7, 4999)] == [r.jpeg_at(0), r.jpeg_at(0), r.jpeg_at(4999 % 7)]
    assert a.box('synth/00000124', 1, 19) == a.box_at(4999) and a.entry_location(4999) == ('synth/00000124', 1, 19)
    with pytest.raises(FileExistsError):
        synthetic.make_shards(tmp_path / 'a', entries=10, distinct=2)


def test_cli_shards(tmp_path):
    res = subprocess.run([sys.executable, 'tools/make_synthetic.py', '--shards', '40', '--distinct', '3',
                          '--out', str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and 'SHARDS' in res.stdout and '40 entries' in res.stdout, res.stderr
    assert (tmp_path / 'VID' / 'index.msgpack').exists()
    res = subprocess.run([sys.executable, 'tools/make_synthetic.py', '--shards', '12', '--distinct', '3', '--masks',
                          '--shard-dataset', 'COCO', '--out', str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0 and 'with masks' in res.stdout, res.stderr
    from pipeline.shards import ShardReader
    r = ShardReader(tmp_path / 'COCO')
    assert r.has_masks and r.entry_has_mask.all() and 150 < len(r.mask_at(5)[0]) < 600
