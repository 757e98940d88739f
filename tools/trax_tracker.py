"""TraX entry point: lets the official VOT toolkit (`vot evaluate`) run our tracker.

List it in a VOT workspace's trackers.ini (the toolkit runs `python -m tools.trax_tracker` with
PYTHONPATH = paths; env_* keys become environment variables of the tracker process):

  [siamrpn]
  label = siamrpn
  protocol = traxpython
  command = tools.trax_tracker
  paths = /path/to/siamtrain
  env_SIAMTRAIN_CFG = /path/to/configs/siamrpn_r50_l234_dwxcorr.yaml
  env_SIAMTRAIN_SNAPSHOT = /path/to/model.pth

Settings (command-line option, else environment variable): --cfg / SIAMTRAIN_CFG (default: the
config saved in the snapshot), --snapshot / SIAMTRAIN_SNAPSHOT (required), --device /
SIAMTRAIN_DEVICE (default cuda if cfg.CUDA and available, else cpu), --opts / SIAMTRAIN_OPTS
(KEY=VALUE overrides, space separated), --threads / SIAMTRAIN_THREADS (torch CPU threads).
"""
import argparse
import contextlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.eval_setup import eval_setup  # noqa: E402
from track.snapshots import load_snapshot  # noqa: E402
from track.tracker import build_tracker  # noqa: E402
from track.vot.trax_server import serve  # noqa: E402


def parse_args(argv=None, environ=os.environ):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--cfg', default=environ.get('SIAMTRAIN_CFG'))
    p.add_argument('--snapshot', default=environ.get('SIAMTRAIN_SNAPSHOT'))
    p.add_argument('--device', default=environ.get('SIAMTRAIN_DEVICE'))
    p.add_argument('--opts', nargs='*', default=environ.get('SIAMTRAIN_OPTS', '').split())
    p.add_argument('--threads', type=int, default=int(environ.get('SIAMTRAIN_THREADS', '0') or 0))
    args = p.parse_args(argv)
    if not args.snapshot:
        p.error('no checkpoint: give --snapshot or set SIAMTRAIN_SNAPSHOT')
    return args


def build(args):
    """The tracker the settings name (a SiamRPN/SiamMask tracker on a loaded checkpoint)."""
    setup = eval_setup(args.cfg, args.opts, [args.snapshot], None, args.device, args.threads)
    return build_tracker(setup.cfg, load_snapshot(setup.cfg, setup.snapshots[0], setup.device))


def main(argv=None):
    args = parse_args(argv)
    # stdout carries the TraX protocol: anything printed while loading goes to stderr instead
    with contextlib.redirect_stdout(sys.stderr):
        tracker = build(args)
    serve(tracker)


if __name__ == '__main__':
    main()
