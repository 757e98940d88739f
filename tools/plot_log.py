"""Plot a training run's loss, learning rate and throughput curves from its metrics.jsonl.

    python tools/plot_log.py runs/NAME [--out runs/NAME/curves.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.plotting import plot_run  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="run folder holding metrics.jsonl")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    args = p.parse_args(argv)
    try:
        path = plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
