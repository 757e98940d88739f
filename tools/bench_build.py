"""Benchmark: our shard builder vs a straightforward PySOT-style crop-and-write baseline, per core.

    python tools/bench_build.py [--videos 6 --frames 20 --size 640x360] [--root RAW_VID] [--json runs/bench_build.json]
    python tools/bench_build.py --masks [--images 120 --size 640x480] [--json runs/bench_build_masks.json]

Both run in this process on one core (cv2.setNumThreads(1)) over the same synthetic raw VID:
* baseline = PySOT's par_crop per frame: parse the XML, cv2.imread, np.mean padding colour, for
  every object the 127 "z" and 511 "x" crops with warpAffine, cv2.imwrite both as files;
* baseline_x_only = the same writing only the 511 "x" crop (what training reads);
* ours = pipeline.ingest.build_dataset(workers=1) into LMDB shards.
Reports crops/s (511 crops) and the ratio ours / baseline.

--masks: the cost of masks, on synthetic COCO (and YouTube-VOS for the mask sizes): the same parsed
COCO built with its masks (pycocotools decoding, the mask crop, PNG) and without (boxes only), one
core each, alternating; reports crops/s of both, their ratio and the stored mask bytes per entry.
"""
import argparse
import json
import math
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.ingest import build_dataset  # noqa: E402


def _warp(image, cx, cy, side, out, padding):
    a = (out - 1) / side
    m = np.array([[a, 0, -a * (cx - side / 2)], [0, a, -a * (cy - side / 2)]], dtype=np.float64)
    return cv2.warpAffine(image, m, (out, out), borderMode=cv2.BORDER_CONSTANT, borderValue=padding)


def baseline(root: Path, out: Path, write_z: bool) -> int:
    """PySOT par_crop-style loop; returns the number of 511 crops written."""
    n = 0
    ann = root / 'Annotations/VID/train'
    for xml in sorted(ann.rglob('*.xml')):
        rel = xml.relative_to(ann)
        im = cv2.imread(str(root / 'Data/VID/train' / rel.with_suffix('.JPEG')))
        if im is None:
            continue
        avg = np.mean(im, axis=(0, 1))
        dst = out / rel.parent
        dst.mkdir(parents=True, exist_ok=True)
        for obj in ET.parse(xml).findall('object'):
            bb = obj.find('bndbox')
            x1, y1, x2, y2 = (int(float(bb.find(k).text)) for k in ('xmin', 'ymin', 'xmax', 'ymax'))
            tid = int(obj.find('trackid').text)
            w, h = x2 - x1, y2 - y1
            s_z = math.sqrt((w + 0.5 * (w + h)) * (h + 0.5 * (w + h)))
            s_x = s_z * 511 / 127
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            if write_z:
                cv2.imwrite(str(dst / f'{int(xml.stem):06d}.{tid:02d}.z.jpg'), _warp(im, cx, cy, s_z, 127, avg))
            cv2.imwrite(str(dst / f'{int(xml.stem):06d}.{tid:02d}.x.jpg'), _warp(im, cx, cy, s_x, 511, avg))
            n += 1
    return n


def bench_masks(a) -> dict:
    """Crops/s of a COCO build with and without its masks, and mask bytes per entry (COCO, YTBVOS)."""
    import copy

    from pipeline.ingest import build_parsed, parse_raw
    from pipeline.ingest.crop_worker import CropParams
    from pipeline.shards import ShardReader
    from pipeline.synthetic import make_dataset

    size = tuple(int(v) for v in a.size.lower().split('x'))
    res = {'with_masks': [], 'without_masks': []}
    sizes = {}
    with tempfile.TemporaryDirectory(prefix='bench_build_masks_') as tmp:
        tmp = Path(tmp)
        make_dataset('COCO', tmp / 'coco', videos=a.images, seed=0, size=size, broken=False)
        make_dataset('YTBVOS', tmp / 'ytbvos', videos=max(2, a.images // 20), frames=10, seed=0, broken=False,
                     size=(size[0], size[0] * 9 // 16))
        parsed = parse_raw('COCO', tmp / 'coco')
        boxes_only = copy.copy(parsed)
        boxes_only.table = copy.copy(parsed.table)
        boxes_only.table.mask_kind = None
        for r in range(a.repeats):
            for name, p in (('with_masks', parsed), ('without_masks', boxes_only)):
                out = tmp / f'{name}{r}'
                res[name].append(timed(lambda: build_parsed(p, {'mode': 'raw', 'root': str(tmp / 'coco')}, out,
                                                            CropParams(), progress=False)['crops_written_this_run']))
        build_parsed(parse_raw('YTBVOS', tmp / 'ytbvos'), {'mode': 'raw', 'root': str(tmp / 'ytbvos')}, tmp / 'y',
                     CropParams(), progress=False)
        for name, folder in (('COCO', tmp / 'with_masks0/COCO'), ('YTBVOS', tmp / 'y/YTBVOS')):
            reader = ShardReader(folder)
            n = np.asarray(reader.entry_mask_length, np.float64)
            sizes[name] = {'entries': len(reader), 'mask_bytes_mean': round(float(n.mean()), 1),
                           'mask_bytes_p95': round(float(np.percentile(n, 95)), 1),
                           'jpeg_bytes_mean': round(float(np.mean(reader.entry_length)), 1)}
            reader.close()
    rate = {k: max(n / t for n, t in v) for k, v in res.items()}
    out = {'crops': res['with_masks'][0][0], 'crops_per_s_per_core': {k: round(v, 1) for k, v in rate.items()},
           'ratio_with_vs_without_masks': round(rate['with_masks'] / rate['without_masks'], 3),
           'stored': sizes, 'source': f'synthetic COCO images={a.images} size={a.size}'}
    for k, v in out['crops_per_s_per_core'].items():
        print(f'{k:>14}: {v:8.1f} crops/s/core (COCO)')
    print(f'with / without masks: {out["ratio_with_vs_without_masks"]:.3f}x')
    for name, v in sizes.items():
        print(f'{name}: {v["mask_bytes_mean"]:.0f} B of mask PNG per entry (p95 {v["mask_bytes_p95"]:.0f}), '
              f'JPEG {v["jpeg_bytes_mean"]:.0f} B')
    return out


def timed(fn):
    t = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', help='existing raw VID root (default: generate synthetic raw VID)')
    p.add_argument('--videos', type=int, default=6)
    p.add_argument('--frames', type=int, default=20)
    p.add_argument('--size', default='640x360', help='synthetic frame size WxH (real VID: mostly 1280x720, 500x375)')
    p.add_argument('--repeats', type=int, default=2, help='alternating repeats; best time of each is used')
    p.add_argument('--json', default=None, help='default runs/bench_build.json (--masks: runs/bench_build_masks.json)')
    p.add_argument('--masks', action='store_true', help='measure the cost of masks (COCO with / without masks)')
    p.add_argument('--images', type=int, default=120, help='--masks: synthetic COCO images')
    a = p.parse_args(argv)
    cv2.setNumThreads(1)
    if a.masks:
        if a.size == '640x360':
            a.size = '640x480'  # COCO's usual frame
        out = bench_masks(a)
        path = Path(a.json or 'runs/bench_build_masks.json')
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        return out
    a.json = a.json or 'runs/bench_build.json'
    with tempfile.TemporaryDirectory(prefix='bench_build_') as tmp:
        tmp = Path(tmp)
        root = Path(a.root) if a.root else tmp / 'raw'
        if not a.root:
            from pipeline.synthetic import make_dataset
            size = tuple(int(v) for v in a.size.lower().split('x'))
            make_dataset('VID', root, videos=a.videos, frames=a.frames, seed=0, size=size, broken=False)
        res = {'baseline': [], 'baseline_x_only': [], 'ours': []}
        for r in range(a.repeats):
            res['baseline'].append(timed(lambda: baseline(root, tmp / f'b{r}', True)))
            res['baseline_x_only'].append(timed(lambda: baseline(root, tmp / f'bx{r}', False)))
            res['ours'].append(timed(lambda: build_dataset('VID', root, tmp / f'o{r}', workers=1, progress=False)
                                     ['crops_written_this_run']))
    rate = {k: max(n / t for n, t in v) for k, v in res.items()}
    out = {'crops': res['ours'][0][0], 'baseline_crops': res['baseline'][0][0],
           'crops_per_s_per_core': {k: round(v, 1) for k, v in rate.items()},
           'ratio_vs_baseline': round(rate['ours'] / rate['baseline'], 3),
           'ratio_vs_baseline_x_only': round(rate['ours'] / rate['baseline_x_only'], 3),
           'source': a.root or f'synthetic VID videos={a.videos} frames={a.frames} size={a.size}'}
    for k, v in out['crops_per_s_per_core'].items():
        print(f'{k:>16}: {v:8.1f} crops/s/core')
    print(f'ours / baseline (PySOT par_crop, z+x files): {out["ratio_vs_baseline"]:.2f}x; '
          f'ours / x-only baseline: {out["ratio_vs_baseline_x_only"]:.2f}x')
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == '__main__':
    main()
