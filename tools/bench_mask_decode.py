"""CPU cost of decoding SiamMask search masks, three ways, in the same run.

    python tools/bench_mask_decode.py [--masks 256] [--rounds 5] [--json runs/bench_mask_decode.json]

The masks are `pipeline.synthetic.realistic_masks` (PNG of the object's tight region, as the
shards store them).  Per mask, CPU time of:
- cv2: `pipeline.crop_source.decode_mask_region` (cv2.imdecode + the {0, 1} view), what the
  loader's reader threads do;
- dali: DALI's CPU decoder (`fn.decoders.image`, GRAY) in a one-thread pipeline, batches of 64;
- inflate: zlib's inflate of the PNG's IDAT data alone (no PNG parsing, no row filters): a
  lower bound for decoding inside the numba crop kernel, which would need both.
Prints per-round figures and medians, and the ratios to cv2 (ratios hold under load).
"""
import argparse
import json
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from pipeline.crop_source import decode_mask_region  # noqa: E402
from pipeline.fileio import atomic_write  # noqa: E402
from pipeline.synthetic.benchmark_shards import realistic_masks  # noqa: E402

DALI_BATCH = 64


def idat(png: bytes) -> bytes:
    """The concatenated IDAT chunk data of a PNG (the zlib stream)."""
    pos, out = 8, []
    while pos < len(png):
        (n,) = struct.unpack(">I", png[pos:pos + 4])
        if png[pos + 4:pos + 8] == b"IDAT":
            out.append(png[pos + 8:pos + 8 + n])
        pos += 12 + n
    return b"".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--masks", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10, help="passes over the masks per round and way")
    parser.add_argument("--json", default="runs/bench_mask_decode.json")
    args = parser.parse_args(argv)
    masks = realistic_masks(args.masks - args.masks % DALI_BATCH or DALI_BATCH)
    streams = [idat(png) for png, _ in masks]

    @pipeline_def
    def dali_decoder():
        return fn.decoders.image(fn.external_source(name="png"), output_type=types.GRAY)

    pipe = dali_decoder(batch_size=DALI_BATCH, num_threads=1, device_id=None, prefetch_queue_depth=1)
    pipe.build()

    def cv2_way():
        for png, box in masks:
            decode_mask_region(png, box, 511)

    def dali_way():
        for k in range(0, len(masks), DALI_BATCH):
            pipe.feed_input("png", [np.frombuffer(png, np.uint8) for png, _ in masks[k:k + DALI_BATCH]])
            pipe.schedule_run()
            pipe.outputs()

    def inflate_way():
        for stream in streams:
            zlib.decompress(stream)

    ways = {"cv2": cv2_way, "dali": dali_way, "inflate": inflate_way}
    rounds = {name: [] for name in ways}
    for way in ways.values():   # warm-up (DALI's first run allocates)
        way()
    for r in range(args.rounds):
        for name, way in ways.items():
            start = time.process_time()
            for _ in range(args.repeat):
                way()
            rounds[name].append(1e6 * (time.process_time() - start) / (args.repeat * len(masks)))
        print(f"round {r}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in rounds.items()) + " CPU us/mask")
    medians = {name: float(np.median(v)) for name, v in rounds.items()}
    ratios = {name: float(np.median(np.array(v) / np.array(rounds["cv2"]))) for name, v in rounds.items()}
    result = {"masks": len(masks), "png_bytes_mean": float(np.mean([len(p) for p, _ in masks])),
              "region_pixels_mean": float(np.mean([b[2] * b[3] for _, b in masks])),
              "cpu_us_per_mask": medians, "ratio_to_cv2": ratios, "rounds": rounds}
    print("median CPU us per mask: " + ", ".join(f"{n} {v:.1f} ({ratios[n]:.2f}x cv2)" for n, v in medians.items()))
    atomic_write(args.json, json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
