"""Pixel helpers shared by every reader: frame selection, bit-depth scaling, gray detection."""

from __future__ import annotations

import numpy as np

# A gray source decoded to RGB is not exactly neutral: codecs quantise the flat chroma
# planes too. Measured on speckled gray clips, MPEG-4 part 2 (AVI) leaves channel
# differences of up to 4 levels and MJPEG up to 2; H.264, VP8/VP9 and FFV1 leave none.
# Colour that matters (Doppler boxes, coloured annotations) differs by tens of levels,
# so 8 keeps a 2x margin over the worst codec noise seen without hiding real colour.
GRAY_TOLERANCE = 8

# Frames inspected for gray detection; all pixels of each, so a Doppler box that
# appears in most frames cannot slip through a spatial stride.
_GRAY_CHECK_FRAMES = 8


def frame_indices(total: int, max_frames: int | None) -> np.ndarray:
    """Indices (int64, strictly increasing) of the frames to keep out of `total`.

    All frames when `max_frames` is None or not smaller than `total`; otherwise
    `max_frames` indices evenly spaced from the first frame to the last.
    """
    if max_frames is None or total <= max_frames:
        return np.arange(total, dtype=np.int64)
    return np.linspace(0, total - 1, max_frames).round().astype(np.int64)


def check_max_frames(max_frames: int | None) -> None:
    """Raise ValueError unless `max_frames` is None or a positive int (a caller's bug)."""
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 1):
        raise ValueError(f"max_frames must be None or a positive integer, got {max_frames!r}")


def scale_to_uint8(arr: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map `arr` linearly so that `low` -> 0 and `high` -> 255, clipped, as uint8.

    `arr` has any shape and a numeric dtype. `low`/`high` default to the min/max of the
    whole array (one mapping for the whole clip, so brightness stays constant over a
    cine loop). `low > high` inverts. A constant array (low == high) maps to 0.
    Returns uint8 of the same shape. Works frame by frame along axis 0 to bound memory.
    """
    if low is None:
        low = float(arr.min())
    if high is None:
        high = float(arr.max())
    out = np.zeros(arr.shape, dtype=np.uint8)
    if high == low:
        return out
    gain = 255.0 / (float(high) - float(low))
    chunks = arr if arr.ndim > 2 else arr[None]
    target = out if arr.ndim > 2 else out[None]
    for i, chunk in enumerate(chunks):
        scaled = (chunk.astype(np.float32) - np.float32(low)) * np.float32(gain)
        target[i] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def is_neutral(clip: np.ndarray, tolerance: int = GRAY_TOLERANCE) -> bool:
    """True when the RGB channels of `clip` agree within `tolerance` levels.

    `clip`: uint8 (T, H, W, 3). Checks all pixels of up to 8 evenly spaced frames.
    """
    frames = clip[frame_indices(len(clip), _GRAY_CHECK_FRAMES)].astype(np.int16)
    r, g, b = frames[..., 0], frames[..., 1], frames[..., 2]
    spread = np.maximum(np.abs(r - g), np.maximum(np.abs(g - b), np.abs(r - b)))
    return int(spread.max(initial=0)) <= tolerance


def finish_clip(clip: np.ndarray) -> np.ndarray:
    """Bring a decoded uint8 clip to (T, H, W, C) with C = 1 for gray and C = 3 for colour.

    `clip`: uint8 (T, H, W), (T, H, W, 1) or (T, H, W, 3) RGB. A 3-channel clip whose
    channels agree within GRAY_TOLERANCE becomes one channel, the rounded channel mean.
    """
    if clip.dtype != np.uint8:
        raise ValueError(f"expected a uint8 clip, got {clip.dtype}")
    if clip.ndim == 3:
        return clip[..., None]
    if clip.ndim != 4 or clip.shape[-1] not in (1, 3):
        raise ValueError(f"expected a (T, H, W[, 1|3]) clip, got shape {clip.shape}")
    if clip.shape[-1] == 3 and is_neutral(clip):
        total = clip.sum(axis=-1, dtype=np.uint16)
        return ((total + 1) // 3).astype(np.uint8)[..., None]
    return np.ascontiguousarray(clip)
