"""How many pixels HiCo decodes at most, so that a small file cannot make it decode something enormous.

A 35 KB H.264 file can hold 300 black frames of 2048 x 2048 (1.3 G pixels, 3.8 GB as RGB), a
155 KB PNG a 16000 x 10000 image. Every reader checks the header (container, DICOM header, image
header) against these limits before decoding, and counts what it decodes where a header can lie.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hico.config import DataConfig
from hico.errors import HiCoError

# The config's defaults (data.max_frame_pixels, data.max_clip_pixels): one place for both.
MAX_FRAME_PIXELS: int = DataConfig.max_frame_pixels
MAX_CLIP_PIXELS: int = DataConfig.max_clip_pixels

_FEWER = "keep fewer frames (--max-frames or data.max_frames) or raise data.max_clip_pixels"


@dataclass(frozen=True)
class ClipLimits:
    """The largest frame (height x width) and clip (height x width x frames decoded) HiCo decodes."""

    max_frame_pixels: int = MAX_FRAME_PIXELS
    max_clip_pixels: int = MAX_CLIP_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_frame_pixels", "max_clip_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"ClipLimits.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_config(cls, data_cfg: DataConfig | Mapping[str, Any]) -> ClipLimits:
        """The limits a config's `data` section sets: a DataConfig, or the dict a run's config.yaml
        or checkpoint sidecar holds (a run made before these keys existed gets the defaults)."""
        if isinstance(data_cfg, Mapping):
            return cls(data_cfg.get("max_frame_pixels", MAX_FRAME_PIXELS),
                       data_cfg.get("max_clip_pixels", MAX_CLIP_PIXELS))
        return cls(data_cfg.max_frame_pixels, data_cfg.max_clip_pixels)

    def check_frame(self, path: str | os.PathLike, height: int, width: int) -> None:
        """HiCoError when one frame of height x width is more than max_frame_pixels."""
        pixels = int(height) * int(width)
        if pixels > self.max_frame_pixels:
            amount, limit = _amounts(pixels, self.max_frame_pixels)
            raise HiCoError(
                f"Clip {path} holds a frame of {width} x {height} ({amount} pixels), more than "
                f"data.max_frame_pixels ({limit}); raise data.max_frame_pixels to read it."
            )

    def check_clip(self, path: str | os.PathLike, frames: int, height: int, width: int,
                   total: int | None = None) -> None:
        """HiCoError unless `frames` frames of height x width (of `total` in the clip) fit both limits."""
        self.check_frame(path, height, width)
        pixels = int(frames) * int(height) * int(width)
        if pixels <= self.max_clip_pixels:
            return
        amount, limit = _amounts(pixels, self.max_clip_pixels)
        total = frames if total is None else total
        held = f"Clip {path} holds {_frames(total)} of {width} x {height}"
        decoded = (f" ({amount} pixels to decode)," if frames == total
                   else f"; the {frames} kept are {amount} pixels to decode,")
        advice = _FEWER if total > 1 else "raise data.max_clip_pixels to read it"
        raise HiCoError(f"{held}{decoded} more than data.max_clip_pixels ({limit}); {advice}.")

    def budget(self, path: str | os.PathLike) -> PixelBudget:
        """A counter of the frames a decoder actually produces, for headers that may lie."""
        return PixelBudget(self, str(path))


DEFAULT_LIMITS = ClipLimits()


def resolve(limits: ClipLimits | None) -> ClipLimits:
    """`limits`, or the defaults for None (never "unlimited")."""
    return DEFAULT_LIMITS if limits is None else limits


class PixelBudget:
    """Counts decoded frames against the limits, in case a header said less than the data holds."""

    def __init__(self, limits: ClipLimits, path: str) -> None:
        self.limits, self.path = limits, path
        self.frames = self.pixels = 0

    def add(self, height: int, width: int, kept: bool = True) -> None:
        """Count one decoded frame; HiCoError once a frame or the kept frames are over a limit.

        A frame decoded only to reach a later one (`kept` False) is checked but not counted.
        """
        self.limits.check_frame(self.path, height, width)
        if not kept:
            return
        self.frames += 1
        self.pixels += int(height) * int(width)
        if self.pixels > self.limits.max_clip_pixels:
            amount, limit = _amounts(self.pixels, self.limits.max_clip_pixels)
            raise HiCoError(
                f"Clip {self.path} decodes to more than its header says: {_frames(self.frames)} "
                f"({amount} pixels) so far, more than data.max_clip_pixels ({limit}); {_FEWER}."
            )


def _frames(count: int) -> str:
    return "1 frame" if count == 1 else f"{count:,} frames"


def _amount(pixels: int) -> str:
    """1,258 million / 8.3 million / 24,576."""
    if pixels >= 10_000_000:
        return f"{pixels / 1e6:,.0f} million"
    if pixels >= 1_000_000:
        return f"{pixels / 1e6:.1f}".rstrip("0").rstrip(".") + " million"
    return f"{pixels:,}"


def _amounts(pixels: int, limit: int) -> tuple[str, str]:
    """Both counts rounded alike, or exact where rounding would make them read the same."""
    amount, bound = _amount(pixels), _amount(limit)
    return (amount, bound) if amount != bound else (f"{pixels:,}", f"{limit:,}")
