"""Window means of the training loss terms, read off the device without stalling it.

The loop adds each step's terms (scalar tensors on the device) to a running sum there; at a log
point `close` snapshots the sum and the window's clock. On a GPU the snapshot is an asynchronous
copy into pinned host memory plus a CUDA event, and the line is handed out by `ready()` once the
GPU has passed that event: usually at the next log point, so the loop never waits for the GPU
and never drains its queue. Throughput is then timed by CUDA events (the GPU's own clock).
`flush()` waits for every open snapshot: at epoch ends, checkpoints and the end of the run.
On the CPU every snapshot is ready at once.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch


@dataclass
class _Snapshot:
    step: int
    steps: int  # steps in the window
    fields: dict  # values known on the host when the window closed (epoch, lr, ...)
    sums: torch.Tensor  # on the host (pinned on a GPU run)
    seconds: float | None = None  # the window's duration, CPU clock (None: timed by events)
    start_event: object | None = None
    end_event: object | None = None  # CUDA event after the copy: the values are on the host once it is done


class MetricWindow:
    """Running sums of named scalar terms on `device`, resolved into per-window means.

    add(terms) adds one step; close(step, **fields) ends the window; ready() returns the finished
    windows, oldest first, as dicts {step, <name>: mean, seconds, steps, **fields}; flush()
    waits for all of them. On CUDA a window is handed out by ready() only once its copy is done.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = tuple(names)
        self.device = torch.device(device)
        self.sums = torch.zeros(len(self.names), device=self.device)
        self.steps = 0
        self.pending: deque[_Snapshot] = deque()
        self._cuda = self.device.type == "cuda"
        self._start_wall = time.perf_counter()
        self._start_event = self._event() if self._cuda else None

    def _event(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        self.sums += torch.stack([terms[k].float() for k in self.names])
        self.steps += 1

    def close(self, step: int, **fields) -> None:
        """End the window at `step`; its means become available through ready()/flush()."""
        if self.steps == 0:
            return
        snap = _Snapshot(step, self.steps, fields, self.sums)
        if self._cuda:
            snap.sums = torch.empty(len(self.names), pin_memory=True)
            snap.sums.copy_(self.sums, non_blocking=True)
            snap.start_event, snap.end_event = self._start_event, self._event()
            self._start_event = snap.end_event
        else:
            snap.sums = self.sums.clone()
            now = time.perf_counter()
            snap.seconds, self._start_wall = now - self._start_wall, now
        self.pending.append(snap)
        self.sums = torch.zeros_like(self.sums)  # a fresh buffer: the copy above may still be reading the old one
        self.steps = 0

    def restart_clock(self) -> None:
        """Start the next window's clock now (after a pause the loop should not be charged for)."""
        self._start_wall = time.perf_counter()
        if self._cuda:
            self._start_event = self._event()

    def ready(self) -> list[dict]:
        """The closed windows whose values are on the host, oldest first (on the CPU, all of them)."""
        out = []
        while self.pending and (self.pending[0].end_event is None or self.pending[0].end_event.query()):
            out.append(self._resolve(self.pending.popleft()))
        return out

    def flush(self) -> list[dict]:
        """Every closed window, waiting for the device where needed."""
        out = []
        while self.pending:
            snap = self.pending.popleft()
            if snap.end_event is not None:
                snap.end_event.synchronize()
            out.append(self._resolve(snap))
        return out

    def _resolve(self, snap: _Snapshot) -> dict:
        seconds = snap.seconds
        if seconds is None:
            seconds = snap.start_event.elapsed_time(snap.end_event) / 1000.0
        means = (snap.sums / snap.steps).tolist()
        return {"step": snap.step, **dict(zip(self.names, means)), "seconds": seconds, "steps": snap.steps,
                **snap.fields}
