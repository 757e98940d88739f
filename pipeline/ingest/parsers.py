"""Raw-dataset parsers: official layouts -> ParseResult (videos -> tracks -> frames), with counted drops.

The layouts are described in docs/datasets.md; `LAYOUTS` is the short form that `--help` and
LayoutError print. Each parser validates the layout first and raises LayoutError explaining what
was expected.
Image-level problems (missing/corrupt image, box outside the decoded frame) are found later by the
cropping worker; everything found here is counted in the DropLog and never raises.
"""
from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from array import array
from collections import defaultdict
from pathlib import Path

import numpy as np

from .spec import (ABSENT, DATASETS, DEGENERATE, DROPS_SINGLE_RUNS, FRAME_STEPS, INVISIBLE, MALFORMED, MALFORMED_FILE,
                   MASK_THRESHOLDS, DropLog, Exclusion, ParseResult, VideoTableBuilder, make_track, valid_frame,
                   valid_wh)

LAYOUTS = {
    'VID': """ILSVRC2015 VID:  ROOT/Data/VID/train/<subset>/<video>/<frame>.JPEG
      ROOT/Annotations/VID/train/<subset>/<video>/<frame>.xml  (<object> with <trackid> and
      <bndbox> xmin/ymin/xmax/ymax in pixels).  Video key '<subset>/<video>', frame = int(<frame>).""",
    'COCO': """COCO 2017:  ROOT/train2017/<file_name>.jpg + ROOT/annotations/instances_train2017.json.
      Each annotation (crowd ones too, as PySOT and the SiamMask authors) is a one-frame track (track
      id = its position among the image's annotations) with its mask (polygons, RLE or crowd RLE,
      decoded by pycocotools).  Video key 'train2017/<image basename>', frame 0.""",
    'DET': """ILSVRC2015 DET:  ROOT/Data/DET/train/<subdirs...>/<name>.JPEG
      + ROOT/Annotations/DET/train/<subdirs...>/<name>.xml.  Each <object> is a one-frame track
      (track id = object position).  Video key '<subdirs...>/<name>', frame 0.""",
    'YTB': """YouTube-BB detection:  ROOT/yt_bb_detection_train.csv (no header; youtube_id, timestamp_ms,
      class_id, class_name, object_id, object_presence, xmin, xmax, ymin, ymax normalised to [0,1])
      + frames ROOT/yt_bb_detection_train/<class_id>/<youtube_id>_<timestamp_ms>_<class_id>_<object_id>.jpg.
      Video key '<class_id>/<youtube_id>', track = object_id, frame = timestamp_ms // 1000;
      boxes converted to pixels with each frame's decoded size; 'absent' rows dropped.""",
    'GOT10K': """GOT-10k:  ROOT/train/<sequence>/00000001.jpg ... + groundtruth.txt (x,y,w,h per line)
      + absence.label (1 = target absent, those frames dropped).  Video key 'train/<sequence>',
      track 0, frame = line number - 1.""",
    'LASOT': """LaSOT:  ROOT/<class>/<class>-<n>/img/00000001.jpg ... + groundtruth.txt (x,y,w,h per line)
      + full_occlusion.txt and out_of_view.txt (one line of comma-separated 0/1; 1 frames dropped).
      Video key '<class>/<class>-<n>', track 0, frame = line number - 1.""",
    'YTBVOS': """YouTube-VOS:  ROOT/train/JPEGImages/<video>/<frame>.jpg + ROOT/train/Annotations/<video>/<frame>.png
      (palette PNG, pixel value = object id) + ROOT/train/meta.json ({"videos": {<video>: {"objects":
      {"<id>": {"category", "frames": [<frame>...]}}}}}).  Video key '<video>', track = object id,
      frame = int(<frame>); box = the bounding box of the object's mask.""",
}


class LayoutError(ValueError):
    """The raw root does not have the expected layout."""


def _expect(path: Path, dataset: str, what: str):
    if not path.exists():
        raise LayoutError(f'{dataset}: expected {what} at {path} (not found).\nExpected layout: {LAYOUTS[dataset]}')


def _xml_objects(xml_path: Path, drops: DropLog):
    """[(trackid or None, box)] of an ILSVRC XML file; None if the file is malformed."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        drops.drop(MALFORMED_FILE, 1, xml_path, str(e))
        return None
    out = []
    for obj in root.findall('object'):
        try:
            bb = obj.find('bndbox')
            box = tuple(float(bb.find(k).text) for k in ('xmin', 'ymin', 'xmax', 'ymax'))
            tid = obj.find('trackid')
            tid = int(tid.text) if tid is not None else None
        except (AttributeError, TypeError, ValueError) as e:
            drops.drop(MALFORMED, 1, xml_path, f'bad <object>: {e}')
            continue
        out.append((tid, box))
    return out


def _keep_box(box, path, drops: DropLog) -> bool:
    if not valid_wh(box):
        drops.drop(DEGENERATE, 1, path, f'box {list(box)}')
        return False
    return True


def parse_vid(root: Path, min_run: int, exclude: Exclusion) -> ParseResult:
    ann, data = root / 'Annotations/VID/train', root / 'Data/VID/train'
    _expect(ann, 'VID', 'the annotation folder Annotations/VID/train')
    _expect(data, 'VID', 'the image folder Data/VID/train')
    drops, videos = DropLog(), VideoTableBuilder()
    video_dirs = sorted(p for sub in sorted(ann.iterdir()) if sub.is_dir() for p in sub.iterdir() if p.is_dir())
    for vdir in video_dirs:
        name = f'{vdir.parent.name}/{vdir.name}'
        if exclude(name):
            continue
        rows = defaultdict(list)
        for xml in sorted(vdir.glob('*.xml')):
            if not (xml.stem.isascii() and xml.stem.isdigit() and valid_frame(int(xml.stem))):
                drops.drop(MALFORMED_FILE, 1, xml, 'file name is not a frame number')
                continue
            frame = int(xml.stem)
            objs = _xml_objects(xml, drops)
            image = data / name / f'{xml.stem}.JPEG'
            for tid, box in objs or []:
                if tid is None:
                    drops.drop(MALFORMED, 1, xml, '<object> without <trackid>')
                elif _keep_box(box, xml, drops):
                    rows[tid].append((frame, box, image))
        tracks = [t for tid in sorted(rows) if (t := make_track(tid, rows[tid], min_run, drops))]
        if tracks:
            videos.add(name, tracks)
    return ParseResult('VID', str(root), videos.finish(), drops, min_run)


def parse_det(root: Path, min_run: int, exclude: Exclusion) -> ParseResult:
    ann, data = root / 'Annotations/DET/train', root / 'Data/DET/train'
    _expect(ann, 'DET', 'the annotation folder Annotations/DET/train')
    _expect(data, 'DET', 'the image folder Data/DET/train')
    drops, videos = DropLog(), VideoTableBuilder()
    for xml in sorted(ann.rglob('*.xml')):
        rel = xml.relative_to(ann).with_suffix('')
        if exclude(rel.as_posix()):
            continue
        objs = _xml_objects(xml, drops)
        image = data / rel.parent / f'{rel.name}.JPEG'
        tracks = [make_track(i, [(0, box, image)], 1, drops)
                  for i, (_, box) in enumerate(objs or []) if _keep_box(box, xml, drops)]
        if tracks:
            videos.add(rel.as_posix(), tracks)
    return ParseResult('DET', str(root), videos.finish(), drops, min_run)


def parse_coco(root: Path, min_run: int, exclude: Exclusion) -> ParseResult:
    anno, images = root / 'annotations/instances_train2017.json', root / 'train2017'
    _expect(anno, 'COCO', 'the annotation file annotations/instances_train2017.json')
    _expect(images, 'COCO', 'the image folder train2017')
    drops = DropLog()
    try:
        coco = json.loads(anno.read_text())
        img_list, ann_list = coco['images'], coco['annotations']
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LayoutError(f'COCO: {anno} is not a valid COCO instances file ({e!r})') from None
    files = {}
    for im in img_list:
        try:
            files[im['id']] = (im['file_name'], im.get('height'), im.get('width'))
        except (KeyError, TypeError, AttributeError):
            drops.drop(MALFORMED, 1, anno, f'bad image record {str(im)[:80]}')
    per_image = defaultdict(list)
    for i, a in enumerate(ann_list):
        try:
            per_image[a['image_id']].append(a)
        except (KeyError, TypeError):
            drops.drop(MALFORMED, 1, anno, f'annotation #{i} without image_id')
    videos = VideoTableBuilder()
    for image_id in sorted(per_image, key=lambda k: files.get(k, ('',))[0]):
        if image_id not in files:
            drops.drop(MALFORMED, len(per_image[image_id]), anno, f'annotations of unknown image_id {image_id}')
            continue
        fname, height, width = files[image_id]
        name = f'train2017/{Path(fname).stem}'
        if exclude(name):
            continue
        tracks = []
        for idx, a in enumerate(per_image[image_id]):
            try:
                x, y, w, h = (float(v) for v in a['bbox'])
            except (KeyError, TypeError, ValueError):
                drops.drop(MALFORMED, 1, anno, f'annotation id {a.get("id")}: bad bbox {a.get("bbox")!r}')
                continue
            box = (x, y, x + w, y + h)
            if _keep_box(box, f'{anno}#ann{a.get("id")}', drops):
                mask = json.dumps([a.get('id'), height, width, a.get('segmentation')], separators=(',', ':'))
                tracks.append(make_track(idx, [(0, box, images / fname, mask)], 1, drops))
        if tracks:
            videos.add(name, tracks)
    return ParseResult('COCO', str(root), videos.finish(mask_kind='coco', mask_source=str(anno),
                                                       mask_threshold=MASK_THRESHOLDS['COCO']), drops, min_run)


def parse_ytb(root: Path, min_run: int, exclude: Exclusion) -> ParseResult:
    """YouTube-BB's CSV (millions of rows) read into typed columns, then sorted and grouped with numpy:
    no Python object per row survives the read."""
    csv_path, frames = root / 'yt_bb_detection_train.csv', root / 'yt_bb_detection_train'
    _expect(csv_path, 'YTB', 'the annotation file yt_bb_detection_train.csv')
    _expect(frames, 'YTB', 'the frame folder yt_bb_detection_train/')
    drops = DropLog()
    video_ids = {}  # (class_id, youtube_id) -> video number
    col_video, col_obj, col_ts, col_box = array('i'), array('q'), array('q'), array('d')
    with open(csv_path, newline='') as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            where = f'{csv_path}:{lineno}'
            try:
                ytid, ts, cls, _, obj, presence = (row[0], int(row[1]), int(row[2]), row[3], int(row[4]), row[5])
                xmin, xmax, ymin, ymax = (float(v) for v in row[6:10])
                if not (valid_frame(ts // 1000) and abs(obj) < 2 ** 31 and abs(cls) < 2 ** 31):
                    raise ValueError
            except (IndexError, ValueError):
                drops.drop(MALFORMED, 1, where, f'row {row[:10]!r}')
                continue
            if exclude(f'{cls}/{ytid}'):
                continue
            if presence != 'present':
                drops.drop(ABSENT, 1)
                continue
            box = (xmin, ymin, xmax, ymax)
            if min(box) < 0 or not all(math.isfinite(v) for v in box) or not valid_wh(box):
                drops.drop(DEGENERATE, 1, where, f'box {list(box)}')
                continue
            col_video.append(video_ids.setdefault((cls, ytid), len(video_ids)))
            col_obj.append(obj)
            col_ts.append(ts)
            col_box.extend(box)
    keys = list(video_ids)
    del video_ids
    names = [f'{cls}/{ytid}' for cls, ytid in keys]
    rank = np.empty(len(names), np.int64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    video, obj = np.frombuffer(col_video, np.int32), np.frombuffer(col_obj, np.int64)
    ts, box = np.frombuffer(col_ts, np.int64), np.frombuffer(col_box, np.float64).reshape(-1, 4)
    # videos by name, tracks by object id, rows by frame and then file order (PySOT's sorted rows)
    order = np.lexsort((np.arange(len(video)), ts // 1000, obj, rank[video]))
    videos = VideoTableBuilder()
    bounds = np.flatnonzero(np.diff(video[order])) + 1
    for rows in np.split(order, bounds) if len(order) else []:
        cls, ytid = keys[int(video[rows[0]])]
        tracks = []
        for track_rows in np.split(rows, np.flatnonzero(np.diff(obj[rows])) + 1):
            o = int(obj[track_rows[0]])
            t = make_track(o, [(int(ts[i]) // 1000, box[i].tolist(),
                                f'{frames}/{cls}/{ytid}_{int(ts[i])}_{cls}_{o}.jpg') for i in track_rows],
                           min_run, drops)
            if t:
                tracks.append(t)
        if tracks:
            videos.add(f'{cls}/{ytid}', tracks)
    return ParseResult('YTB', str(root), videos.finish(normalized=True), drops, min_run)


def _read_xywh(path: Path, drops: DropLog):
    """Rows of x,y,w,h (comma/space/tab separated) -> list of box tuples or None for bad rows."""
    boxes = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        try:
            vals = [float(v) for v in line.replace(',', ' ').replace('\t', ' ').split()]
            if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
                raise ValueError
            x, y, w, h = vals
            boxes.append((x, y, x + w, y + h))
        except ValueError:
            drops.drop(MALFORMED, 1, f'{path}:{lineno}', f'row {line[:60]!r}')
            boxes.append(None)
    return boxes


def _read_flags(path: Path, n: int, drops: DropLog, one_line: bool):
    """0/1 flags (one per line, or one comma-separated line); all-zero with a note if missing/bad."""
    try:
        text = path.read_text()
        flags = [int(float(v)) for v in (text.replace('\n', ',').split(',') if one_line else text.split()) if v.strip()]
        if len(flags) < n:
            raise ValueError(f'{len(flags)} flags for {n} frames')
        return flags
    except (OSError, ValueError) as e:
        drops.drop(MALFORMED_FILE, 1, path, f'visibility flags unreadable ({e}); frames assumed visible')
        return [0] * n


def _parse_sequences(seq_dirs, img_sub, flag_files, one_line, min_run, drops) -> VideoTableBuilder:
    videos = VideoTableBuilder()
    for name, seq in seq_dirs:
        gt = seq / 'groundtruth.txt'
        if not gt.is_file():
            drops.drop(MALFORMED_FILE, 1, gt, 'missing groundtruth.txt; sequence skipped')
            continue
        boxes = _read_xywh(gt, drops)
        hidden = [0] * len(boxes)
        for fname, reason in flag_files:
            flags = _read_flags(seq / fname, len(boxes), drops, one_line)
            for i in range(len(boxes)):
                if flags[i] and not hidden[i]:
                    hidden[i] = reason
        rows = []
        for i, box in enumerate(boxes):
            if box is None:
                continue
            if hidden[i]:
                drops.drop(hidden[i], 1)
            elif _keep_box(box, f'{gt}:{i + 1}', drops):
                rows.append((i, box, seq / img_sub / f'{i + 1:08d}.jpg'))
        t = make_track(0, rows, min_run, drops)
        if t:
            videos.add(name, [t])
    return videos


def parse_got10k(root: Path, min_run: int, exclude: Exclusion) -> ParseResult:
    train = root / 'train'
    _expect(train, 'GOT10K', 'the folder train/ with one folder per sequence')
    drops = DropLog()
    seqs = [(f'train/{p.name}', p) for p in sorted(train.iterdir()) if p.is_dir()]
    seqs = [(name, p) for name, p in seqs if not exclude(name)]
    videos = _parse_sequences(seqs, '.', [('absence.label', ABSENT)], False, min_run, drops)
    return ParseResult('GOT10K', str(root), videos.finish(), drops, min_run)


def parse_lasot(root: Path, min_run: int, exclude: Exclusion) -> ParseResult:
    seqs = [(f'{c.name}/{s.name}', s) for c in sorted(root.iterdir()) if c.is_dir()
            for s in sorted(c.iterdir()) if s.is_dir() and (s / 'img').is_dir()]
    if not seqs:
        raise LayoutError(f'LASOT: no sequences with an img/ folder under {root}.\nExpected layout: {LAYOUTS["LASOT"]}')
    seqs = [(name, s) for name, s in seqs if not exclude(name)]
    drops = DropLog()
    videos = _parse_sequences(seqs, 'img', [('full_occlusion.txt', INVISIBLE), ('out_of_view.txt', INVISIBLE)],
                              True, min_run, drops)
    return ParseResult('LASOT', str(root), videos.finish(), drops, min_run)


def parse_ytbvos(root: Path, min_run: int, exclude: Exclusion) -> ParseResult:
    """YouTube-VOS train: the objects and frames of meta.json; boxes come from the masks (crop worker)."""
    train = root / 'train'
    meta_path = train / 'meta.json'
    _expect(meta_path, 'YTBVOS', 'the object list train/meta.json')
    _expect(train / 'JPEGImages', 'YTBVOS', 'the frame folder train/JPEGImages')
    _expect(train / 'Annotations', 'YTBVOS', 'the annotation folder train/Annotations')
    try:
        meta = json.loads(meta_path.read_text())['videos']
        if not isinstance(meta, dict):
            raise TypeError('"videos" is not an object')
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LayoutError(f'YTBVOS: {meta_path} is not a YouTube-VOS meta.json ({e!r}).\n'
                          f'Expected layout: {LAYOUTS["YTBVOS"]}') from None
    drops, videos = DropLog(), VideoTableBuilder()
    unknown = (math.nan,) * 4  # the mask's bounding box, found by the crop worker
    for video in sorted(meta):
        if exclude(video):
            continue
        objects = meta[video].get('objects') if isinstance(meta[video], dict) else None
        if not isinstance(objects, dict):
            drops.drop(MALFORMED, 1, f'{meta_path}:{video}', 'video entry without an "objects" object')
            continue
        tracks = []
        for key in sorted(objects, key=lambda k: (len(k), k)):
            try:
                obj = int(key)
                names = objects[key]['frames']
                if not 0 < obj < 256 or not isinstance(names, list):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                drops.drop(MALFORMED, 1, f'{meta_path}:{video}/{key}', 'bad object entry')
                continue
            rows = []
            for name in names:
                if not (isinstance(name, str) and name.isascii() and name.isdigit() and valid_frame(int(name))):
                    drops.drop(MALFORMED, 1, f'{meta_path}:{video}/{key}', f'bad frame name {name!r}')
                    continue
                rows.append((int(name), unknown, train / 'JPEGImages' / video / f'{name}.jpg',
                             train / 'Annotations' / video / f'{name}.png'))
            if (t := make_track(obj, rows, min_run, drops)):
                tracks.append(t)
        if tracks:
            videos.add(video, tracks)
    table = videos.finish(mask_kind='palette', mask_threshold=MASK_THRESHOLDS['YTBVOS'], frame_step=FRAME_STEPS['YTBVOS'])
    return ParseResult('YTBVOS', str(root), table, drops, min_run)


PARSERS = {'VID': parse_vid, 'COCO': parse_coco, 'DET': parse_det, 'YTB': parse_ytb,
           'GOT10K': parse_got10k, 'LASOT': parse_lasot, 'YTBVOS': parse_ytbvos}


def min_run_for(dataset: str) -> int:
    """Shortest kept consecutive-frame run: 2 for VID (PySOT's gen_json drops single frames), else 1
    (PySOT's YouTube-BB and siamban's GOT-10k / LaSOT gen_json keep every valid frame)."""
    return 2 if dataset in DROPS_SINGLE_RUNS else 1


def read_exclude_file(path) -> list:
    """Video names from a text file, one a line (blank lines ignored), e.g. LaSOT's testing_set.txt."""
    path = Path(path)
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise LayoutError(f'exclusion list {path} is not a readable text file ({e})') from None


def _finish(parsed: ParseResult, exclude: Exclusion) -> ParseResult:
    parsed.excluded = sorted(exclude.excluded)
    parsed.exclude_unmatched = exclude.unmatched()
    return parsed


def parse_raw(dataset: str, root, exclude=()) -> ParseResult:
    """Parse a raw dataset root in its official layout (see LAYOUTS), leaving out the videos that
    `exclude` (names, see spec.Exclusion) matches."""
    dataset = dataset.upper()
    if dataset not in PARSERS:
        raise LayoutError(f'unknown dataset {dataset!r}; expected one of {", ".join(DATASETS)}')
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f'{dataset}: raw root {root} does not exist or is not a folder.\n'
                          f'Expected layout: {LAYOUTS[dataset]}')
    exclude = Exclusion(exclude)
    return _finish(PARSERS[dataset](root, min_run_for(dataset), exclude), exclude)


def parse_crop511(dataset: str, crop_dir, anno, exclude=()) -> ParseResult:
    """Describe an already-cropped PySOT dataset: crop_dir/<video>/<frame:06d>.<track:02d>.x.jpg + train.json;
    for COCO and YTBVOS also the SiamMask authors' masks <frame:06d>.<track:02d>.m.png where present."""
    dataset = dataset.upper()
    if dataset not in PARSERS:
        raise LayoutError(f'unknown dataset {dataset!r}; expected one of {", ".join(DATASETS)}')
    crop_dir, anno = Path(crop_dir), Path(anno)
    if not crop_dir.is_dir():
        raise LayoutError(f'crop511 folder {crop_dir} does not exist')
    if not anno.is_file():
        raise LayoutError(f'annotation json {anno} does not exist (PySOT train.json: {{video: {{track: {{frame: [x1,y1,x2,y2]}}}}}})')
    try:
        meta = json.loads(anno.read_text())
        if not isinstance(meta, dict):
            raise ValueError('top level is not an object')
    except ValueError as e:
        raise LayoutError(f'{anno} is not a PySOT train.json ({e})') from None
    min_run, drops, videos, exclude = min_run_for(dataset), DropLog(), VideoTableBuilder(), Exclusion(exclude)
    masks = dataset in MASK_THRESHOLDS
    for video in sorted(meta):
        name = video[2:] if video.startswith('./') else video
        if exclude(name):
            continue
        tracks = []
        vtracks = meta[video] if isinstance(meta[video], dict) else {}
        if not vtracks:
            drops.drop(MALFORMED, 1, f'{anno}:{video}', 'video entry is not a non-empty object')
        for tkey in sorted(vtracks, key=lambda k: (len(k), k)):
            frames = vtracks[tkey]
            try:
                tid = int(tkey)
                if not isinstance(frames, dict):
                    raise ValueError
            except ValueError:
                drops.drop(MALFORMED, 1, f'{anno}:{video}/{tkey}', 'bad track entry')
                continue
            rows = []
            for fkey, box in frames.items():
                if not (fkey.isascii() and fkey.isdigit()):
                    continue  # PySOT ignores non-digit keys (e.g. 'frames')
                if not valid_frame(int(fkey)):
                    drops.drop(MALFORMED, 1, f'{anno}:{video}/{tkey}/{fkey}', 'frame number out of range')
                    continue
                try:
                    box = tuple(float(v) for v in box)
                    if len(box) == 2:
                        box = (0.0, 0.0) + box
                    if len(box) != 4:
                        raise ValueError
                except (TypeError, ValueError):
                    drops.drop(MALFORMED, 1, f'{anno}:{video}/{tkey}/{fkey}', f'bad box {box!r}')
                    continue
                if _keep_box(box, f'{anno}:{video}/{tkey}/{fkey}', drops):
                    stem = crop_dir / video / f'{int(fkey):06d}.{tid:02d}'
                    rows.append((int(fkey), box, f'{stem}.x.jpg') + ((f'{stem}.m.png',) if masks else ()))
            t = make_track(tid, rows, min_run, drops)
            if t:
                tracks.append(t)
        if tracks:
            videos.add(name, tracks)
    table = videos.finish(precropped=True, mask_kind='crop511' if masks else None, frame_step=FRAME_STEPS.get(dataset, 1))
    return _finish(ParseResult(dataset, str(crop_dir), table, drops, min_run), exclude)
