"""Positive pairs from videos: three frames, frame mixup around a shared anchor (HiCo's pairs, as
in its published code).

For each video with L frames:
    L >= 3: distinct frames a, b, c; v1 = lam * aug(a) + (1 - lam) * aug(b), v2 = lam * aug(c) + (1 - lam) * aug(b)
    L == 2: v1 = aug(a), v2 = aug(b)       (no mixup)
    L == 1: v1, v2 = two augmentations of the one frame
with lam ~ Beta(alpha, alpha). All of it runs on whole batches on the cache's device.
"""

from __future__ import annotations

import numpy as np
import torch

from hico.config import DataConfig
from hico.data.augment import augment, draw_params, normalise, to_unit
from hico.data.cache import FrameCache


def draw_frames(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Frame indices a, b, c (B x 3) for videos of the given lengths (B).

    Three distinct indices are drawn uniformly without rejection: a from L, b from the L - 1
    others, c from the L - 2 left. Shorter videos fall back as the module docstring says.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    u = rng.uniform(0, 1, (len(lengths), 3))
    a = np.floor(u[:, 0] * lengths).astype(np.int64)
    b = np.floor(u[:, 1] * np.maximum(lengths - 1, 1)).astype(np.int64)
    b = b + (b >= a)
    c = np.floor(u[:, 2] * np.maximum(lengths - 2, 1)).astype(np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    c = c + (c >= lo)
    c = c + (c >= hi)
    two, one = lengths == 2, lengths == 1
    c = np.where(two, b, c)
    a, b, c = (np.where(one, 0, v) for v in (a, b, c))
    return np.stack([a, b, c], axis=1)


def gather_frames(cache: FrameCache, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """Frames `rows` (indices into cache.frames) as uint8 len(rows) x C x S x S on `device`.

    A cache on the device is indexed there. A cache in host memory (too big for the device, or
    data.cache_on=host) is gathered on the host into pinned memory and copied without blocking,
    so the copy overlaps the device's work; torch's pinned-memory pool reuses a staging buffer
    only once its copy is done.
    """
    frames, index = cache.frames, torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
    here = frames.device
    if here.type == device.type and (here.index is None or device.index is None or here.index == device.index):
        return frames.index_select(0, host_to_device(index, here))
    if here.type != "cpu":
        return frames.index_select(0, host_to_device(index, here)).to(device)
    return stage_rows(frames, index, pinned=device.type == "cuda").to(device, non_blocking=True)


def host_to_device(x: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A small host array (indices, augmentation parameters, labels) on `device`, the host not kept
    waiting: for a GPU it is staged through pinned memory, since a copy from pageable memory may
    wait until the GPU has finished all the work queued before it."""
    x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)


def stage_rows(frames: torch.Tensor, index: torch.Tensor, pinned: bool) -> torch.Tensor:
    """Rows `index` of a host tensor, gathered straight into a new (pinned, for a GPU) host tensor."""
    staged = torch.empty((len(index), *frames.shape[1:]), dtype=frames.dtype, pin_memory=pinned)
    return torch.index_select(frames, 0, index, out=staged)


def sample_views(cache: FrameCache, videos: np.ndarray, rng: np.random.Generator, cfg: DataConfig,
                 augmented: bool = True, part: tuple[int, int] = (0, 1),
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two normalised views per video, each B x C x S x S float32 on `device` (default: the cache's).

    videos: B indices into the cache. `augmented=False` gives the unaugmented views used to
    score held-out videos (same frames and mixup, no crop, flip or jitter). `part=(rank, ranks)`
    draws the random numbers of the whole batch and returns only that rank's equal share of it,
    so that ranks together make exactly the views one process would.
    """
    videos = np.asarray(videos, dtype=np.int64)
    lengths = cache.lengths[videos]
    idx = draw_frames(rng, lengths)
    lam = rng.beta(cfg.mixup_alpha, cfg.mixup_alpha, len(videos))
    lam = np.where(lengths >= 3, lam, 1.0).astype(np.float32)
    params = draw_params(rng, 3 * len(videos), cfg)
    rank, ranks = part
    if ranks > 1:
        share = len(videos) // ranks
        keep = slice(rank * share, (rank + 1) * share)
        params = np.concatenate([p[keep] for p in np.split(params, 3)])
        videos, idx, lam = videos[keep], idx[keep], lam[keep]
    device = cache.frames.device if device is None else torch.device(device)
    offsets = cache.offsets[videos]
    x = to_unit(gather_frames(cache, (offsets[:, None] + idx).T.reshape(-1), device))  # 3B: all a, then all b, then all c
    if augmented:
        x = augment(x, host_to_device(params, device))
    x = normalise(x)
    b = len(videos)
    fa, fb, fc = x[:b], x[b:2 * b], x[2 * b:]
    w = host_to_device(lam, device).view(-1, 1, 1, 1)
    return w * fa + (1 - w) * fb, w * fc + (1 - w) * fb
