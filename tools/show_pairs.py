"""Draw a grid of augmented training pairs from the DALI loader, for checking by eye.

    python tools/show_pairs.py --shards cache/ --out pairs.png [--n 8] [--cfg CFG] [--seed S]

Each row: the template (127) and the search image (255) with the target box (green) and the
centres of the positive anchors (red dots, labels == 1) and their count; negative pairs get
a red frame and "NEG".
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.anchors import anchor_grid_from_cfg  # noqa: E402
from pipeline.batch import BBOX, LABEL_CLS, NEG, SEARCH, TEMPLATE  # noqa: E402
from pipeline.loader import build_loader  # noqa: E402
from train.config import load_config  # noqa: E402


def to_image(chw) -> np.ndarray:
    """CHW float BGR (colour offset may push values outside 0..255) -> HWC uint8."""
    return np.ascontiguousarray(np.clip(chw.transpose(1, 2, 0), 0, 255).astype(np.uint8))


def draw_pair(batch: dict, i: int, centres: np.ndarray) -> np.ndarray:
    """One row: template | search with box and positive anchor centres."""
    template = to_image(batch[TEMPLATE][i].cpu().numpy())
    search = to_image(batch[SEARCH][i].cpu().numpy())
    x1, y1, x2, y2 = (float(v) for v in batch[BBOX][i])
    cv2.rectangle(search, (round(x1), round(y1)), (round(x2), round(y2)), (0, 255, 0), 1)
    positive = batch[LABEL_CLS][i].cpu().numpy() == 1          # (A, S, S)
    for cx, cy in zip(centres[0][positive], centres[1][positive]):
        cv2.circle(search, (round(float(cx)), round(float(cy))), 2, (0, 0, 255), -1)
    h = search.shape[0]
    row = np.zeros((h, template.shape[1] + 8 + search.shape[1], 3), np.uint8)
    row[:template.shape[0], :template.shape[1]] = template
    row[:, template.shape[1] + 8:] = search
    if bool(batch[NEG][i]):
        cv2.rectangle(row, (0, 0), (row.shape[1] - 1, h - 1), (0, 0, 255), 3)
        cv2.putText(row, "NEG", (4, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 255), 2)
    n_pos = int(positive.sum())
    cv2.putText(row, f"pos {n_pos}", (4, h - 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="cache/")
    parser.add_argument("--out", default="pairs.png")
    parser.add_argument("--n", type=int, default=8, help="pairs to draw")
    parser.add_argument("--cfg", default=None, help="config YAML (default: PySOT defaults)")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--columns", type=int, default=2)
    args = parser.parse_args(argv)

    cfg = load_config(args.cfg, overrides=args.opts)
    loader = build_loader(cfg, shards=args.shards, batch_size=args.n, device="cpu", seed=args.seed)
    loader.set_epoch(args.epoch)
    batch = next(iter(loader))
    _, centres = anchor_grid_from_cfg(cfg)
    rows = [draw_pair(batch, i, centres) for i in range(args.n)]
    cols = max(1, args.columns)
    rows += [np.zeros_like(rows[0])] * (-len(rows) % cols)
    grid = np.vstack([np.hstack([r for r in rows[k:k + cols]]) for k in range(0, len(rows), cols)])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), grid):
        raise SystemExit(f"could not write {args.out}")
    print(f"wrote {args.out}: {args.n} pairs ({int(batch[NEG].sum())} negative)")


if __name__ == "__main__":
    main()
