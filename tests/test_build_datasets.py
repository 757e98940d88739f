"""All seven training datasets build from the synthetic raw layouts (pipeline.synthetic), with every
deliberate fault of broken.json skipped, counted and listed, and the kept crops matching the manifest
totals; --exclude on synthetic LaSOT."""
import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.ingest import build_dataset
from pipeline.ingest.spec import Exclusion
from pipeline.shards import ShardReader
from pipeline.synthetic import make_dataset
from tools.build_lmdb import main as cli

DATASETS = ('VID', 'COCO', 'DET', 'YTB', 'GOT10K', 'LASOT', 'YTBVOS')
REASON = {'truncated_jpeg': 'corrupt_image', 'corrupt_jpeg': 'corrupt_image', 'empty_jpeg': 'corrupt_image',
          'missing_image': 'missing_image', 'malformed_xml': 'malformed_annotation_file',
          'malformed_csv_row': 'malformed_annotation', 'box_outside_frame': 'outside_frame',
          'degenerate_box': 'degenerate_box', 'corrupt_png': 'corrupt_mask', 'missing_png': 'missing_mask',
          'empty_mask': 'empty_mask'}


@pytest.fixture(scope='module')
def builds(tmp_path_factory):
    base = tmp_path_factory.mktemp('six')
    out = {}
    for d in DATASETS:
        manifest = make_dataset(d, base / 'raw' / d, seed=1)
        report = build_dataset(d, base / 'raw' / d, base / 'cache', workers=1, progress=False)
        out[d] = (base / 'raw' / d, manifest, report, ShardReader(base / 'cache' / d))
    return out


@pytest.mark.parametrize('dataset', DATASETS)
def test_dataset_builds_and_reads(builds, dataset):
    _, manifest, report, r = builds[dataset]
    assert r.meta['dataset'] == dataset and len(r) == report['counts']['entries'] > 0
    # every valid annotation is kept (COCO's crowd ones too, as PySOT and the SiamMask authors keep
    # them), or, for VID only (PySOT's VID gen_json), dropped as part of a single-frame run; YTB (PySOT)
    # and GOT10K / LaSOT (siamban) keep singletons; YTBVOS drops masks of 1000 pixels or fewer
    assert 'crowd' not in report['dropped'] and manifest['totals'].get('crowd_annotations', 1) > 0
    singles = report['dropped'].get('single_frame_run', 0)
    if dataset != 'VID':
        assert singles == 0
    assert report['dropped'].get('small_mask', 0) == manifest['totals'].get('small_masks', 0)
    assert len(r) + singles == manifest['totals']['valid_annotations']
    # COCO and YouTube-VOS crops carry their masks, the other datasets none (their index as before)
    assert r.has_masks == (dataset in ('COCO', 'YTBVOS')) and r.entry_has_mask.all() == r.has_masks
    for e in (0, len(r) // 2, len(r) - 1):
        crop = cv2.imdecode(np.frombuffer(r.jpeg_at(e), np.uint8), cv2.IMREAD_COLOR)
        assert crop.shape == (511, 511, 3)
        x1, y1, x2, y2 = r.box_at(e)
        assert x2 > x1 and y2 > y1
    for v in range(len(r.video_names)):
        for t in range(r.video_track_start[v], r.video_track_start[v + 1]):
            fr = r.entry_frame[r.track_entry_start[t]:r.track_entry_start[t + 1]]
            if dataset in ('COCO', 'DET'):
                assert len(fr) == 1
            else:  # a track is one consecutive run (YouTube-VOS: annotated every 5th frame), >= 2 frames for VID
                assert len(fr) >= (2 if dataset == 'VID' else 1) and np.all(np.diff(fr) == (5 if dataset == 'YTBVOS' else 1))


@pytest.mark.parametrize('dataset', DATASETS)
def test_every_fault_is_reported(builds, dataset):
    root, manifest, report, r = builds[dataset]
    keys = set(r.keys())
    listed = {(Path(b[0]).resolve(), b[1]) for b in report['bad_inputs']}
    details = ' '.join(str(b) for b in report['bad_inputs'])
    expected = {}
    for item in manifest['items']:
        reason = REASON[item['kind']]
        expected[reason] = expected.get(reason, 0) + 1
        if item['kind'] in ('box_outside_frame', 'degenerate_box'):
            if 'video' in item:  # the faulty box is not in the index (GOT10K keys are 'train/<seq>')
                video = f"train/{item['video']}" if dataset == 'GOT10K' else item['video']
                assert any(k[0] == video for k in keys)
                assert not any(k[0] == video and k[2] == item['frame'] for k in keys
                               if 'track' not in item or k[1] == item['track'])
                if item['kind'] == 'box_outside_frame':
                    assert f'video {video} ' in details
        elif item['kind'] == 'malformed_csv_row':
            assert (Path(f"{root / item['path']}:{item['line']}").resolve(), reason) in listed
        else:
            assert ((root / item['path']).resolve(), reason) in listed
    files_reported = {}
    for b in report['bad_inputs']:
        files_reported[b[1]] = files_reported.get(b[1], 0) + 1
    for reason, n in expected.items():  # one listing per faulty file / row (an image may hold several objects)
        assert files_reported.get(reason, 0) >= n, (reason, files_reported)


def test_ytb_boxes_are_pixels_of_the_real_frame(builds):
    root, _, _, r = builds['YTB']
    rows = {}
    for row in csv.reader(open(root / 'yt_bb_detection_train.csv')):
        if len(row) == 10 and row[5] == 'present' and row[1].isdigit():
            rows[(f'{row[2]}/{row[0]}', int(row[4]), int(row[1]) // 1000)] = (row, [float(v) for v in row[6:10]])
    checked = 0
    for e, key in enumerate(r.keys()):
        row, (xmin, xmax, ymin, ymax) = rows[key]
        img = cv2.imread(str(root / 'yt_bb_detection_train' / row[2] / f'{row[0]}_{row[1]}_{row[2]}_{row[4]}.jpg'))
        h, w = img.shape[:2]
        assert w != h  # 16:9 frames: normalised boxes would distort the aspect ratio
        assert r.box_at(e) == pytest.approx((xmin * w, ymin * h, xmax * w, ymax * h), abs=1e-3)
        checked += 1
    assert checked == len(r)


@pytest.mark.parametrize('dataset,flag_files', [('GOT10K', ('absence.label',)),
                                                ('LASOT', ('full_occlusion.txt', 'out_of_view.txt'))])
def test_invisible_frames_not_used(builds, dataset, flag_files):
    root, _, report, r = builds[dataset]
    hidden_total = 0
    for video in r.video_names:
        seq = root / video
        hidden = set()
        for name in flag_files:
            vals = (seq / name).read_text().replace(',', '\n').split()
            hidden |= {i for i, v in enumerate(vals) if int(v)}
        hidden_total += len(hidden)
        frames = {k[2] for k in r.keys() if k[0] == video}
        assert frames and not frames & hidden
    assert hidden_total > 0
    assert report['dropped'].get('absent' if dataset == 'GOT10K' else 'invisible', 0) > 0


def test_exclusion_matches_key_or_last_component():
    ex = Exclusion(['airplane-1', ' bear/bear-2 ', '', 'nosuch-7'])
    assert ex('airplane/airplane-1') and ex('bear/bear-2')
    assert not ex('airplane/airplane-10') and not ex('bear/bear-1') and not ex('airplane')
    assert ex.excluded == {'airplane/airplane-1', 'bear/bear-2'} and ex.unmatched() == ['nosuch-7']


def test_lasot_exclude(builds, tmp_path, capsys):
    root, _, full_report, full = builds['LASOT']
    victim = full.video_names[0]
    victim_entries = sum(1 for k in full.keys() if k[0] == victim)
    test_set = tmp_path / 'testing_set.txt'
    test_set.write_text(f"{victim.split('/')[-1]}\nnosuch-9\n")  # LaSOT's testing_set.txt names, one a line
    args = ['--dataset', 'LASOT', '--root', str(root), '--out', str(tmp_path / 'cache'), '--workers', '1',
            '--no-progress']
    assert cli(args + ['--exclude', str(test_set)]) == 0
    assert '1 --exclude name(s) matched no video of LASOT: nosuch-9' in capsys.readouterr().err
    r = ShardReader(tmp_path / 'cache/LASOT')
    report = json.loads((tmp_path / 'cache/LASOT/build_report.json').read_text())
    assert victim not in r.video_names and not any(k[0] == victim for k in r.keys())
    assert set(r.video_names) == set(full.video_names) - {victim}
    assert len(r) == len(full) - victim_entries
    assert report['excluded_videos'] == 1 and report['excluded'] == [victim]
    assert report['exclude_unmatched'] == ['nosuch-9']
    # not even parsed or cropped: the faults of the excluded sequence are not reported
    assert any(f'/{victim}/' in b[0] for b in full_report['bad_inputs'])
    assert not any(f'/{victim}/' in b[0] for b in report['bad_inputs'])
    # the exclusion is a build parameter: the same list resumes, another one (or none) is refused
    assert cli(args + ['--exclude', str(test_set)]) == 0
    other = tmp_path / 'other.txt'
    other.write_text(full.video_names[1] + '\n')  # a full video key also matches
    assert cli(args + ['--exclude', str(other)]) == 2
    err = capsys.readouterr().err
    assert 'different parameters' in err and "'exclude'" in err
    assert cli(args) == 2
    assert cli(args + ['--exclude', str(tmp_path / 'missing.txt')]) == 2
    assert 'missing.txt' in capsys.readouterr().err
