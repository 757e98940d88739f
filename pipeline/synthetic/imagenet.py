"""Synthetic VID and DET (ILSVRC2015) in their raw layouts, with ImageNet (VOC-style) XML
annotations. The layouts themselves: docs/datasets.md.

VID: the first half of the videos is in subset ``ILSVRC2015_VID_train_0000``, the rest in ``_0001``
(the real data has ``_0000`` .. ``_0003``); 2-3 tracks per video, each with a VID synset as its
``name``; some tracks leave and re-enter (frames without the object: several consecutive runs) and
one track of video 1 has an isolated single visible frame (a run of length 1). ``bndbox`` children
are in the order of the real files (xmax, xmin, ymax, ymin); ``occluded`` is 1 when a later-drawn
object covers over 25 % of the box; ``generated`` is 0.

DET: images ``ILSVRC2014_train_0000/ILSVRC2014_train_{i:08d}`` plus three in
``ILSVRC2013_train/<synset>/`` (whose objects are all of that synset); 1-4 objects an image, sizes
within ±20 % of ``size``; image index 2 has no objects.
"""
from __future__ import annotations

from xml.sax.saxutils import escape

from .faults import BOX_FAULTS, IMAGE_FAULT_AT, IMAGE_FAULTS, break_box, faults_for_video, video_faults
from .scene import Scene, image_scene, int_box, jittered_size, random_stream, track_schedules

_VID_SYNSETS = ('n02691156', 'n02419796', 'n02131653', 'n02834778', 'n01503061',
                'n02924116', 'n02958343', 'n02084071', 'n02121808', 'n02503517',
                'n02374451', 'n03790512', 'n02324045', 'n04468005', 'n04530566',
                'n02391049')
_DET_SYNSETS = ('n01503061', 'n02958343', 'n02084071', 'n02691156', 'n03790512',
                'n02834778', 'n02374451', 'n04530566')


def _voc_xml(folder, filename, size, database, objects):
    """ImageNet (VID/DET) annotation XML; objects are lists of (tag, value|list)."""
    def emit(tag, value, depth):
        pad = '\t' * depth
        if isinstance(value, list):
            inner = ''.join(emit(t, v, depth + 1) for t, v in value)
            return f'{pad}<{tag}>\n{inner}{pad}</{tag}>\n'
        return f'{pad}<{tag}>{escape(str(value))}</{tag}>\n'

    body = [('folder', folder), ('filename', filename),
            ('source', [('database', database)]),
            ('size', [('width', size[0]), ('height', size[1])])]
    body += [('object', obj) for obj in objects]
    return '<annotation>\n' + ''.join(emit(t, v, 1) for t, v in body) + '</annotation>\n'


def write_vid(out, videos, frames, seed, size, broken, bar):
    n_sub = 2 if videos >= 2 else 1
    for v in range(videos):
        rng = random_stream(seed, 'VID', v)
        subset = f'ILSVRC2015_VID_train_{(v * n_sub) // videos:04d}'
        name = f'ILSVRC2015_train_{v:08d}'
        n_tracks = int(rng.integers(2, 4))
        synsets = rng.choice(_VID_SYNSETS, n_tracks)
        scene = Scene(rng, size, frames, n_tracks, decimals=0,
                      schedules=track_schedules(v, n_tracks))
        faults = video_faults(scene, faults_for_video(
            v, videos, broken, IMAGE_FAULTS, ('malformed_xml',) + BOX_FAULTS))
        for f in range(frames):
            fault = faults.get(f)
            key = dict(video=f'{subset}/{name}', frame=f)
            rel = f'Data/VID/train/{subset}/{name}/{f:06d}.JPEG'
            xml_rel = f'Annotations/VID/train/{subset}/{name}/{f:06d}.xml'
            readable = out.image(rel, scene.frame(f), fault, **key)
            objects = []
            anns = scene.annotations(f)
            for k, ann in enumerate(anns):
                box = int_box(ann.box)
                if fault in BOX_FAULTS and k == 0:
                    box = break_box(fault, box, *size)
                    out.fault(fault, xml_rel, track=ann.track, **key)
                objects.append([('trackid', ann.track), ('name', synsets[ann.track]),
                                ('bndbox', [('xmax', box[2]), ('xmin', box[0]),
                                            ('ymax', box[3]), ('ymin', box[1])]),
                                ('occluded', int(ann.occluded)), ('generated', 0)])
            xml = _voc_xml(f'{subset}/{name}', f'{f:06d}', size, 'ILSVRC_2015', objects)
            if fault == 'malformed_xml':
                xml = xml[:len(xml) // 2]
                out.fault(fault, xml_rel, **key)
            out.text(xml_rel, xml)
            if fault != 'malformed_xml':
                out.count(len(anns), len(anns) - int(fault in BOX_FAULTS) if readable else 0)
        out.totals['videos'] += 1
        bar.update()


def write_det(out, videos, frames, seed, size, broken, bar):
    jobs = [('ILSVRC2014_train_0000', f'ILSVRC2014_train_{i:08d}', i) for i in range(videos)]
    for k, synset in enumerate(('n01503061', 'n01503061', 'n02958343')):
        jobs.append((f'ILSVRC2013_train/{synset}', f'{synset}_{1000 + k}', videos + k))
    for folder_rel, name, i in jobs:
        rng = random_stream(seed, 'DET', i)
        wh = jittered_size(rng, size)
        in_2013 = folder_rel.startswith('ILSVRC2013')
        scene = image_scene(rng, wh, i == 2 and not in_2013, decimals=0)
        fault = IMAGE_FAULT_AT.get(i) if broken and not in_2013 else None
        rel = f'Data/DET/train/{folder_rel}/{name}.JPEG'
        xml_rel = f'Annotations/DET/train/{folder_rel}/{name}.xml'
        readable = out.image(rel, scene.frame(0), fault, image=name)
        anns = scene.annotations(0)
        names = rng.choice(_DET_SYNSETS, max(len(anns), 1))
        if in_2013:
            names[:] = folder_rel.split('/')[-1]
        objects = []
        for k, ann in enumerate(anns):
            box = int_box(ann.box)
            if fault in BOX_FAULTS and k == 0:
                box = break_box(fault, box, *wh)
                out.fault(fault, xml_rel, image=name, object=0)
            objects.append([('name', names[k]),
                            ('bndbox', [('xmin', box[0]), ('ymin', box[1]),
                                        ('xmax', box[2]), ('ymax', box[3])])])
        folder = folder_rel.split('/')[-1]
        xml = _voc_xml(folder, name, wh, 'ILSVRC_2014' if not in_2013 else 'ILSVRC_2013', objects)
        if fault == 'malformed_xml':
            xml = xml[:len(xml) // 2]
            out.fault(fault, xml_rel, image=name)
        out.text(xml_rel, xml)
        if fault != 'malformed_xml':
            out.count(len(anns), len(anns) - int(fault in BOX_FAULTS) if readable else 0)
        out.totals['videos'] += 1
        bar.update()

