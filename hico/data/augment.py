"""Batch augmentation on the device: random resized crop, flip, colour jitter, normalisation.

Every random number comes from a numpy Generator on the host (a few per frame), so a step's
augmentation is the same on CPU and GPU and a resumed run replays it exactly. The pixels never
leave the device.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from hico.config import DataConfig

MEAN, STD = 0.5, 0.25  # per channel, as the published HiCo code normalises its input
# RGB -> YIQ and back: hue jitter is a rotation of the chroma plane (I, Q).
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@functools.lru_cache(maxsize=8)
def _yiq(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB -> YIQ, YIQ -> RGB) on a device, copied there once rather than every step."""
    return _YIQ.to(device, dtype), torch.linalg.inv(_YIQ).to(device, dtype)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> model input (x - 0.5) / 0.25."""
    return (x - MEAN) / STD


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x S x S -> float32 in [0, 1]."""
    return frames.float().div_(255.0)


def draw_params(rng: np.random.Generator, n: int, cfg: DataConfig) -> np.ndarray:
    """n x 9 float32: crop w, h, centre x, y (fractions of the side), flip sign (+1 or -1),
    brightness, contrast and saturation factors, and hue shift (in turns)."""
    area = rng.uniform(cfg.crop_scale[0], cfg.crop_scale[1], n)
    log_r = rng.uniform(math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), n)
    ratio = np.exp(log_r)
    w = np.minimum(np.sqrt(area * ratio), 1.0)
    h = np.minimum(np.sqrt(area / ratio), 1.0)
    cx = w / 2 + rng.uniform(0, 1, n) * (1 - w)
    cy = h / 2 + rng.uniform(0, 1, n) * (1 - h)
    flip = np.where(rng.uniform(0, 1, n) < cfg.flip, -1.0, 1.0)
    bright = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness, n)
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast, n)
    sat = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation, n)
    hue = rng.uniform(-cfg.hue, cfg.hue, n)
    return np.stack([w, h, cx, cy, flip, bright, contrast, sat, hue], axis=1).astype(np.float32)


def crop_flip(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Random resized crop and horizontal flip as one affine resample.

    x: N x C x S x S float; p: N x 9 from draw_params (columns 0-4 used). Returns N x C x S x S.
    """
    n = x.shape[0]
    theta = x.new_zeros(n, 2, 3)
    theta[:, 0, 0] = p[:, 0] * p[:, 4]
    theta[:, 0, 2] = 2 * p[:, 2] - 1
    theta[:, 1, 1] = p[:, 1]
    theta[:, 1, 2] = 2 * p[:, 3] - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def colour_jitter(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue (columns 5-8 of p), in that order, clamped to [0, 1].

    On one-channel (gray) frames saturation and hue change nothing, exactly as on a gray RGB frame.
    """
    col = lambda k: p[:, k].view(-1, 1, 1, 1)  # noqa: E731
    x = (x * col(5)).clamp_(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * col(6) + mean).clamp_(0, 1)
    if x.shape[1] == 3:
        g = _gray(x)
        x = ((x - g) * col(7) + g).clamp_(0, 1)
        to_yiq, to_rgb = _yiq(x.device, x.dtype)
        yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
        angle = p[:, 8] * 2 * math.pi
        cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
        x = torch.einsum("ij,njhw->nihw", to_rgb, yiq).clamp_(0, 1)
    return x


def augment(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x: N x C x S x S in [0, 1]; p: N x 9 parameters on x's device. Returns augmented, in [0, 1]."""
    return colour_jitter(crop_flip(x, p), p)
