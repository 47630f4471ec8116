"""Where a training step's time goes: host enqueue time, device kernel time, the top kernels.

On a GPU the host only queues work: a step whose host time is close to its wall time keeps the
GPU waiting (launch overhead, or a copy to the host or a data-dependent shape that makes the host
wait for the GPU). `profile_step` measures, over `steps` calls of a step function:
- host_ms: the median time the call takes to return, the queue empty at its start (no
  synchronisation inside the measurement: on a GPU, enqueue time plus any wait the step forces);
- wall_ms: the median time until the device has finished the step;
- device_ms: the device's kernel time per step (torch.profiler; None on a CPU);
- copies: `aten::copy_` and `aten::to` calls per step (autocast casts among them);
- top: the operations with the most device time per step (on a CPU, the most host time).
`python -m hico bench --profile` prints them for every setting (`table`).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from hico.inference import synchronize as _sync

TOP = 10


def _device_us(event, total: bool = False) -> float:
    """An averaged event's self (or total) device time in microseconds, across torch versions."""
    names = ("device_time_total", "cuda_time_total") if total else ("self_device_time_total", "self_cuda_time_total")
    for name in names:
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def profile_step(step: Callable[[], object], device: torch.device, steps: int = 10, warmup: int = 3) -> dict:
    """Profile `step` (one training step, run `warmup + 2 * steps` times) on `device`; see the
    module docstring for the fields. Times are per step, in milliseconds."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    for _ in range(warmup):
        step()
    _sync(device)
    host, wall = [], []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        host.append(time.perf_counter() - start)
        _sync(device)
        wall.append(time.perf_counter() - start)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    events = prof.key_averages()
    on_device = device.type == "cuda"
    copies = sum(e.count for e in events if e.key in ("aten::copy_", "aten::to"))
    if on_device:
        device_us = sum(_device_us(e) for e in events)
        ranked = sorted(events, key=_device_us, reverse=True)
        cost = _device_us
    else:
        device_us = None
        ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        cost = lambda e: float(e.self_cpu_time_total)  # noqa: E731
    top = [{"name": e.key, "ms": cost(e) / 1e3 / steps, "calls": e.count / steps}
           for e in ranked[:TOP] if cost(e) > 0]
    return {"host_ms": 1e3 * statistics.median(host), "wall_ms": 1e3 * statistics.median(wall),
            "device_ms": None if device_us is None else device_us / 1e3 / steps,
            "copies": copies / steps, "top": top, "steps": steps,
            "top_by": "device time" if on_device else "host time (no device)"}


def table(name: str, profiles: dict[str, dict]) -> str:
    """Text for one setting's profiles ({"model-only": profile, "end-to-end": profile})."""
    lines = [f"{name}"]
    for kind, p in profiles.items():
        device = "-" if p["device_ms"] is None else f"{p['device_ms']:.2f}"
        lines.append(f"  {kind:<11} host {p['host_ms']:8.2f} ms   wall {p['wall_ms']:8.2f} ms   device {device:>8} ms"
                     f"   copies {p['copies']:.0f}/step")
        lines += [f"      {t['ms']:8.3f} ms  {t['calls']:6.1f}x  {t['name'][:90]}" for t in p["top"]]
        lines.append(f"      (top by {p['top_by']})")
    return "\n".join(lines)
