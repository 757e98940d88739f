"""Evaluation protocols as per-sequence state machines, so one engine can run many at once.

A protocol decides, frame by frame, what the tracker must do with one sequence: initialise on a
box, track, or skip the frame; it receives each tracking result and records what the benchmark
needs.  The one-pass protocol (OTB, LaSOT, GOT-10k) initialises on frame 0 and tracks the rest;
VOT's supervised protocol re-initialises after failures.  `run_sequential` drives one protocol
with one tracker; the batched engine (`track.engine.run_batched`) drives many protocols with one
network forward per step.  Both call, for each request, exactly one of `report` (the frame was
read and processed) or `unreadable` (the frame could not be read), then `timed`.

The driver owns the clock: `timed` gets the seconds the tracker spent on the request (in a batch,
the step's time divided by the frames it served), so every protocol reports frame times the
same way under either driver.  Both drivers take `clock` (default `time.perf_counter`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Request", "Protocol", "OnePassProtocol", "run_sequential"]


@dataclass(frozen=True)
class Request:
    """What a protocol asks of the tracker for one frame: kind 'init' (with `box`, x,y,w,h) or 'track'."""
    kind: str
    frame: int
    box: tuple | None = None


class Protocol:
    """One sequence's protocol.  Subclasses implement `next_request` and `report`; they may
    override `unreadable` (default: an error) and `timed` (default: ignored)."""

    def next_request(self) -> Request | None:
        """The next frame to process, or None when the sequence is done (frames not asked are skipped)."""
        raise NotImplementedError

    def report(self, request: Request, result: dict | None) -> None:
        """The outcome of `request`: the tracker's output dict for 'track' ({'bbox', 'best_score'}),
        None for 'init'."""
        raise NotImplementedError

    def unreadable(self, request: Request) -> None:
        """Frame `request.frame` could not be read; the tracker was not called.  Default: an error."""
        raise ValueError(f"{type(self).__name__}: frame {request.frame} could not be read")

    def timed(self, request: Request, seconds: float) -> None:
        """Tracker time spent on `request` (in a batch: the step's time shared by its frames)."""


class OnePassProtocol(Protocol):
    """One-pass evaluation (OPE): initialise on the first ground-truth box, track every other frame.

    Records `boxes` (N, 4; frame 0 is the initial box), `scores` (N,; the tracker's best score,
    NaN where it was not called), `times` (N,) and `skipped`: a frame that cannot be read repeats
    the previous box (the tracker is not called); the first frame must read.
    """

    def __init__(self, sequence):
        self.sequence = sequence
        n = len(sequence)
        self.boxes = np.zeros((n, 4))
        self.scores = np.full(n, np.nan)
        self.times = np.zeros(n)
        self.skipped = 0
        self._next = 0

    def next_request(self):
        i = self._next
        if i >= len(self.sequence):
            return None
        if i == 0:
            return Request("init", 0, tuple(float(v) for v in self.sequence.init_box))
        return Request("track", i)

    def report(self, request, result):
        if request.kind == "init":
            self.boxes[request.frame] = request.box
        else:
            self.boxes[request.frame] = result["bbox"]
            self.scores[request.frame] = result.get("best_score", np.nan)
        self._next = request.frame + 1

    def unreadable(self, request):
        if request.kind == "init":
            raise ValueError(f"cannot read the first frame of {self.sequence.name!r}: "
                             f"{self.sequence.frames[request.frame]}")
        self.boxes[request.frame] = self.boxes[request.frame - 1]
        self.skipped += 1
        self._next = request.frame + 1

    def timed(self, request, seconds):
        self.times[request.frame] = seconds

    def result(self) -> dict:
        """{'boxes', 'scores', 'times', 'skipped'} of the finished sequence."""
        return {"boxes": self.boxes, "scores": self.scores, "times": self.times, "skipped": self.skipped}


def run_sequential(protocol: Protocol, tracker, read_frame, clock=time.perf_counter) -> Protocol:
    """Drive `protocol` with `tracker` (init/track API); `read_frame(i)` returns frame i (BGR
    uint8), or None when it cannot be read.  Each request is timed with `clock` (frame reading
    excluded)."""
    while (req := protocol.next_request()) is not None:
        img = read_frame(req.frame)
        start = clock()
        if img is None:
            protocol.unreadable(req)
        elif req.kind == "init":
            tracker.init(img, req.box)
            protocol.report(req, None)
        elif req.kind == "track":
            protocol.report(req, tracker.track(img))
        else:
            raise ValueError(f"unknown request kind {req.kind!r}")
        protocol.timed(req, clock() - start)
    return protocol
