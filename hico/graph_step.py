"""The training step captured in one CUDA graph, so the host no longer holds the GPU back.

An eager step queues several hundred kernels (convolutions, batch norms, the loss's small ops,
autocast's casts, the optimizer) one Python call at a time. At batch 32 on an H100/H200 that
takes the host about as long as the GPU takes to run them, so the GPU idles between kernels.
A captured graph is queued by one call (`replay`), whatever the step holds.

How (PyTorch's whole-network capture, as its CUDA-graphs notes describe it):
- The step's inputs live in static buffers: each call copies its new tensors into them (a copy
  on the device) and replays the graph, which reads them.
- The first `warmup` calls run the step eagerly on a side stream. They are real steps (they
  train), and they let cuDNN pick its algorithms and Adam allocate its state before capture.
- The next call captures the step (forward, loss, backward, optimizer step) and replays it once;
  every later call only copies and replays. The outputs are the graph's own tensors, rewritten
  by each replay: read or copy them before the next call. Should capture fail (an operation it
  does not allow, on some torch version), a warning says why and every step runs eagerly.

What the step must be, and `hico.train.Trainer` makes sure it is: the same input shapes every
call; no copy to or from the host and no data-dependent shape inside it; its gradients set to
None before capture (backward then writes them afresh each replay rather than accumulating);
Adam built with `capturable=True` and its learning rate a device tensor that the host changes
in place (a Python float would be frozen into the graph); autocast without its weight cache.
Eager and captured steps compute the same thing, so a run gives the same losses either way
(tests/test_gpu.py checks 20 steps).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)
WARMUP = 3  # eager steps before capture


class CapturedStep:
    """Calls `step(*inputs) -> dict of tensors` eagerly `warmup` times, then through a CUDA graph.

    step: one whole training step on CUDA tensors (it zeroes nothing: `CapturedStep` sets the
        gradients to None before each eager call and before capture).
    optimizer: the optimizer the step calls (capturable=True).
    Each call's inputs must have the shapes, dtypes and device of the first call's.
    """

    def __init__(self, step: Callable[..., dict[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                 warmup: int = WARMUP):
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 eager step before capture, got {warmup}")
        if not all(group.get("capturable") for group in optimizer.param_groups):
            raise ValueError("a captured step needs an optimizer built with capturable=True")
        self.step, self.optimizer, self.warmup = step, optimizer, warmup
        self.calls = 0
        self.failed = False  # capture failed once: every later call steps eagerly
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.outputs: dict[str, torch.Tensor] = {}

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.cuda.device(inputs[0].device):  # streams and capture on the inputs' GPU (cuda:N)
            return self._call(inputs)

    def _call(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        if self.graph is not None:
            for static, new in zip(self.inputs, inputs):
                if new.shape != static.shape or new.dtype != static.dtype:
                    raise ValueError(f"a captured step takes inputs of one shape: got {tuple(new.shape)} "
                                     f"{new.dtype} for {tuple(static.shape)} {static.dtype}")
                static.copy_(new, non_blocking=True)
            self.graph.replay()
            return self.outputs
        self.calls += 1
        if self.calls <= self.warmup or self.failed:
            return self._eager(inputs)
        self.inputs = [x.clone() for x in inputs]
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.outputs = self.step(*self.inputs)
        except Exception as exc:  # an operation capture does not allow: the run goes on eagerly
            # nothing captured has run, so the weights and Adam's state are as the last step left them
            log.warning("capturing the training step as a CUDA graph failed (%s: %s); stepping eagerly",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            self.failed, self.inputs, self.outputs = True, [], {}
            torch.cuda.synchronize()
            return self._eager(inputs)
        self.graph = graph
        graph.replay()  # capture only records: this runs the step
        return self.outputs

    def _eager(self, inputs) -> dict[str, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.step(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        for x in inputs:  # made on the main stream, read on the side one: freed once both are done
            x.record_stream(side)
        for x in outputs.values():  # the other way round
            x.record_stream(torch.cuda.current_stream())
        return outputs
