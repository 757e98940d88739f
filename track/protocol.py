"""Evaluation protocols as per-sequence state machines, so one engine can run many at once.

A protocol decides, frame by frame, what the tracker must do with one sequence: initialise on a
box, track, or skip the frame; it receives each tracking result and records what the benchmark
needs.  The one-pass protocol (OTB, LaSOT, GOT-10k) initialises on frame 0 and tracks the rest;
VOT's supervised protocol re-initialises after failures.  `run_sequential` drives one protocol
with one tracker; the batched engine drives many protocols with one network forward per step.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Request", "Protocol", "run_sequential"]


@dataclass(frozen=True)
class Request:
    """What a protocol asks of the tracker for one frame: kind 'init' (with `box`, x,y,w,h) or 'track'."""
    kind: str
    frame: int
    box: tuple | None = None


class Protocol:
    """One sequence's protocol.  Subclasses implement `next_request` and `report`."""

    def next_request(self) -> Request | None:
        """The next frame to process, or None when the sequence is done (frames not asked are skipped)."""
        raise NotImplementedError

    def report(self, request: Request, result: dict | None) -> None:
        """The outcome of `request`: the tracker's output dict for 'track' ({'bbox', 'best_score'}),
        None for 'init'."""
        raise NotImplementedError


def run_sequential(protocol: Protocol, tracker, read_frame) -> Protocol:
    """Drive `protocol` with `tracker` (init/track API); `read_frame(i)` returns frame i (BGR uint8)."""
    while (req := protocol.next_request()) is not None:
        img = read_frame(req.frame)
        if req.kind == "init":
            tracker.init(img, req.box)
            protocol.report(req, None)
        elif req.kind == "track":
            protocol.report(req, tracker.track(img))
        else:
            raise ValueError(f"unknown request kind {req.kind!r}")
    return protocol
