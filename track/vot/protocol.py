"""VOT's supervised (reset-based) experiment for one sequence, as a `track.protocol.Protocol`.

The rules are vot-toolkit's `SupervisedExperiment` (and PySOT's test.py, which does the same):
initialise on frame 0; track each following frame; a frame whose region overlaps the ground truth
by 0 (`region_overlap`, bounded by the image) is a failure, the tracker is re-initialised on the
ground truth `skip_initialize` (5) frames later and the frames between are skipped.  The record
is vot-toolkit's trajectory: 1 on initialisation frames, 2 on failures, 0 on skipped frames, the
tracker's region elsewhere, plus the seconds each frame took (`times`, None where skipped), as
the driver measures them (`timed`: under the batched engine, the frame's share of its step).

The region scored is the tracker's `polygon` (SiamMask) when it returns one, else its `bbox`.
Initialisation boxes come from the ground truth by PySOT's rule (`regions.init_box`).
"""
from __future__ import annotations

import numpy as np

from track.protocol import Protocol, Request
from track.vot.regions import FAILURE, INITIALIZATION, UNKNOWN, init_box, region_overlap


def tracked_region(result: dict) -> np.ndarray:
    """The region a tracker output dict reports: 'polygon' if present, else 'bbox' (x, y, w, h)."""
    region = result.get('polygon')
    if region is None:
        region = result['bbox']
    return np.asarray(region, np.float64).ravel()


class SupervisedProtocol(Protocol):
    """Reset-based protocol over one `VOTSequence` (its ground truth, image size and name; its
    frames are read by the driver).  A frame that cannot be read stops the run with an error
    naming it (vot-toolkit has no rule for it); so does an initialisation region without area,
    named by the file and line it was read from (`VOTSequence.sources`)."""

    def __init__(self, sequence, skip_initialize: int = 5, failure_overlap: float = 0.0):
        if skip_initialize < 1:
            raise ValueError(f'skip_initialize must be >= 1, got {skip_initialize}')
        self.sequence = sequence
        self.groundtruth = list(sequence.groundtruth)
        self.size = tuple(sequence.size)
        self.skip_initialize = skip_initialize
        self.failure_overlap = failure_overlap
        self.name = sequence.name
        self.sources = list(getattr(sequence, 'sources', ()))
        self.regions = [UNKNOWN] * len(self.groundtruth)
        self.times = [None] * len(self.groundtruth)
        self._frame = 0
        self._initialised = False
        self._pending = None

    def next_request(self) -> Request | None:
        if self._frame >= len(self.groundtruth):
            return None
        if self._pending is None:
            f = self._frame
            if self._initialised:
                self._pending = Request('track', f)
            else:
                try:
                    box = tuple(init_box(self.groundtruth[f]))
                except ValueError as e:
                    where = f'{self.sources[f]}: ' if f < len(self.sources) else ''
                    when = 'the first frame' if f == 0 else 'a re-initialisation'
                    raise ValueError(f'{where}sequence {self.name!r}, frame {f} ({when}): {e}') from None
                self._pending = Request('init', f, box)
        return self._pending

    def report(self, request: Request, result: dict | None) -> None:
        if request != self._pending:
            raise ValueError(f'sequence {self.name!r}: report for {request}, '
                             f'but the pending request is {self._pending}')
        f = request.frame
        self._pending = None
        if request.kind == 'init':
            self.regions[f] = INITIALIZATION
            self._initialised = True
            self._frame = f + 1
            return
        region = tracked_region(result)
        if region_overlap(region, self.groundtruth[f], self.size) <= self.failure_overlap:
            self.regions[f] = FAILURE
            self._initialised = False
            self._frame = f + self.skip_initialize
        else:
            self.regions[f] = region
            self._frame = f + 1

    def unreadable(self, request: Request) -> None:
        frames = self.sequence.frames
        where = f' ({frames[request.frame]})' if request.frame < len(frames) else ''
        raise ValueError(f'sequence {self.name!r}: cannot read frame {request.frame}{where}')

    def timed(self, request: Request, seconds: float) -> None:
        self.times[request.frame] = seconds
