"""What a training run will hold in memory, estimated before it starts, and what the machine has.

A run that does not fit is refused before it starts (the app does this for every run a client asks
for), rather than found out when the kernel kills it with the host's memory gone. The estimate is
the sum of four parts, each measured (README, "Running it for others"):

- frames: the decoded frame cache, every kept frame at data.size x data.size x 3 bytes (a gray
  dataset takes a third of that: the estimate assumes colour). On the host it is counted twice:
  the cache is packed from memory-mapped per-clip files, whose pages count while they are copied.
  On a GPU it is counted on the device when data.cache_on puts it there (auto: as hico.train does).
- activations: ACTIVATION_BYTES[device type] per pixel of each video in a step (two views, both
  passes, the FPN's maps). On a CPU, peak RSS of `hico train` on the demo's 3,200 frames at nine
  settings from 64 px batch 8 to 320 px batch 16 (224 px batch 32: 3.43 GB; 128 px batch 64:
  2.36 GB) fits 1,456 bytes with the frames counted once at their real channel count; with 1,000
  bytes and the frames counted as below, the estimate is 1.01 to 1.44 times the measured peak,
  never under it. On an H200 (bf16 autocast, CUDA graph), 224 px at batch 32 and 128 gave 810 to
  935 bytes.
- model: weights, gradients and Adam's two moments in float32 (16 bytes a parameter), counted on
  a model built on the meta device (flatten heads grow with the square of the input size).
- runtime: what a training process holds before any of this (torch, its libraries, the reader).

Frame counts come from the clips' headers (hico.io.read_clip_meta), read for at most
FRAME_SAMPLE clips and scaled to the dataset: nothing is decoded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hico.config import Config
from hico.data.dataset import Dataset
from hico.data.splits import assign_splits

GB = 1e9
FRAME_SAMPLE = 256  # clips whose headers are read to count frames; the rest are scaled from them
ACTIVATION_BYTES = {"cpu": 1000, "cuda": 1000}  # per pixel of a video in one step (see the docstring)
RUNTIME_BYTES = {"cpu": 800e6, "cuda": 600e6}  # a training process before its data and model
HOST_FRAME_COPIES = 2  # the packed cache plus the mapped pages it is copied from
FIT_SHARE = 0.9  # a run may plan on this share of what is available (the rest is slack)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs on its device, by part (on a GPU, a frame cache kept on the host is not
    counted)."""

    device: str  # "cpu" or "cuda"
    frames: float  # the decoded frame cache (all copies on the side it lives)
    activations: float
    model: float
    runtime: float
    frame_count: int  # frames the cache will hold
    batch: int  # videos per step, after the dataset's size bounds it

    @property
    def total(self) -> float:
        return self.frames + self.activations + self.model + self.runtime

    def describe(self) -> str:
        parts = [("frames", self.frames), ("activations", self.activations), ("model", self.model),
                 ("runtime", self.runtime)]
        return f"about {_gb(self.total)} ({', '.join(f'{name} {_gb(v)}' for name, v in parts)})"


def count_frames(dataset: Dataset, max_frames: int = 0, sample: int = FRAME_SAMPLE, seed: int = 0) -> int:
    """Frames the cache of `dataset` will hold (each clip capped at max_frames; 0: all), from the
    headers of at most `sample` clips chosen at random and scaled to every clip. A clip whose
    header cannot be read counts as the mean of the others (training then refuses it by name)."""
    from hico.io.clips import read_clip_meta
    from hico.errors import HiCoError

    clips = dataset.clips
    if not clips:
        return 0
    chosen = np.random.default_rng(seed).permutation(len(clips))[:sample]
    counts = []
    for i in chosen:
        try:
            n = int(read_clip_meta(clips[i].path)["frames"])
        except (HiCoError, OSError, ValueError, KeyError):
            continue
        counts.append(min(n, max_frames) if max_frames else n)
    if not counts:
        return 0
    return int(math.ceil(float(np.mean(counts)) * len(clips)))


def model_parameters(cfg: Config, num_classes: int) -> int:
    """Parameters of cfg's model, counted on the meta device (no memory, no time)."""
    from hico.model import build_model

    with torch.device("meta"):
        model = build_model(cfg, num_classes)
    return sum(p.numel() for p in model.parameters())


def estimate(cfg: Config, dataset: Dataset, device: torch.device | str, frames: int | None = None) -> MemoryEstimate:
    """What training cfg on `dataset` needs on `device` (see the module docstring). `frames`: the
    cache's frame count if known (else count_frames)."""
    kind = torch.device(device).type
    kind = "cuda" if kind == "cuda" else "cpu"
    d = cfg.data
    frames = count_frames(dataset, d.max_frames) if frames is None else frames
    splits = assign_splits(dataset, d.val_fraction, cfg.train.seed)
    n_train = max(sum(s == "train" for s in splits), 1)
    batch = min(cfg.train.batch_size, n_train)
    frame_bytes = float(frames) * 3 * d.size * d.size
    if kind == "cpu":
        cache = HOST_FRAME_COPIES * frame_bytes
    else:  # on the GPU when asked, or (auto) as hico.train places it: under CACHE_SHARE of its free memory
        from hico.train import CACHE_SHARE

        on_device = d.cache_on == "device" or (
            d.cache_on == "auto" and frame_bytes <= CACHE_SHARE * available_bytes(device))
        cache = frame_bytes if on_device else 0.0  # else it is in host memory, with the host's room
    return MemoryEstimate(
        device=kind,
        frames=cache,
        activations=float(ACTIVATION_BYTES[kind]) * batch * d.size * d.size,
        model=16.0 * model_parameters(cfg, len(dataset.classes)),
        runtime=RUNTIME_BYTES[kind],
        frame_count=frames, batch=batch)


def available_bytes(device: torch.device | str = "cpu") -> float:
    """Memory a new process could take now: on a CPU the kernel's MemAvailable, lowered to what is
    left under the cgroup's limit where one is set (a container); on a GPU its free memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    known = [v for v in (_meminfo_available(), _cgroup_left()) if v is not None]
    return min(known) if known else math.inf


def _meminfo_available() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_left() -> float | None:
    """Bytes left under this process's cgroup v2 memory limit, or None where there is none."""
    group = Path("/sys/fs/cgroup")
    try:
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return float(limit) - float((group / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def _gb(value: float) -> str:
    if value >= GB:
        return f"{value / GB:.1f} GB"
    return f"{value / 1e6:.0f} MB" if value >= 1e6 else "under 1 MB"


def refusal(need: MemoryEstimate, available: float, cap: float | None = None) -> str | None:
    """The sentence refusing a run that needs more than FIT_SHARE of `available` bytes (or more
    than the operator's `cap`), or None when it fits."""
    where = "the GPU" if need.device == "cuda" else "this machine"
    if cap is not None and need.total > cap:
        limit = f"this server allows a run {_gb(cap)}"
    elif need.total > FIT_SHARE * available:
        limit = f"{where} has {_gb(available)} available"
    else:
        return None
    return (f"This run needs {need.describe()} and {limit}; lower the input size or the batch size "
            f"({need.batch} videos a step), or keep fewer frames per clip (data.max_frames).")
