"""Still images (one-frame clips) and frame folders (one image per frame, US-4 layout)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from hico.errors import HiCoError
from hico.io.pixels import frame_indices, scale_to_uint8
from hico.io.reasons import short_reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Pillow modes that hold more than 8 bits per sample; scaled to uint8 by min/max.
_WIDE_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def is_image_file(path: Path) -> bool:
    """An image suffix and not a hidden file (skips macOS "._frame1.png" forks)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: "frame2" < "frame10"."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts)


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside `folder`, in natural order."""
    return sorted((p for p in Path(folder).iterdir() if is_image_file(p)), key=lambda p: natural_key(p.name))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A still image as a one-frame clip: uint8 (1, H, W) gray or (1, H, W, 3) RGB.

    16-bit and float images are scaled by their min/max; alpha is dropped; palette
    images are expanded to RGB.
    """
    pixels = _load_pixels(Path(path))
    return (pixels if pixels.dtype == np.uint8 else scale_to_uint8(pixels))[None]


def read_frame_folder(folder: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """A folder of frame images as one clip: uint8 (T, H, W) gray or (T, H, W, 3) RGB.

    Frames are taken in natural file-name order; with `max_frames`, a longer folder
    gives `max_frames` evenly spaced frames and only those are decoded. Every frame
    must have the size of the first (HiCoError naming the odd one). If any frame is
    colour all become RGB; wide (16-bit) frames are scaled by the min/max of the clip.
    """
    folder = Path(folder)
    paths = list_frames(folder)
    _check_sizes(folder, paths)
    chosen = [paths[i] for i in frame_indices(len(paths), max_frames)]
    frames = [_load_pixels(p) for p in chosen]
    if not frames:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    if any(f.ndim == 3 for f in frames):
        frames = [np.repeat(f[..., None], 3, axis=-1) if f.ndim == 2 else f for f in frames]
    clip = np.stack(frames)
    return clip if clip.dtype == np.uint8 else scale_to_uint8(clip)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the image header, without decoding pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as error:  # Pillow raises OSError, UnidentifiedImageError, ValueError...
        raise HiCoError(f"Cannot read image {path}: {short_reason(error)}.") from error


def _check_sizes(folder: Path, paths: list[Path]) -> None:
    if not paths:
        return
    first = image_size(paths[0])
    for path in paths[1:]:
        size = image_size(path)
        if size != first:
            raise HiCoError(
                f"Frames in folder {folder} differ in size: {path.name} is {size[0]}x{size[1]} "
                f"but {paths[0].name} is {first[0]}x{first[1]}."
            )


def _load_pixels(path: Path) -> np.ndarray:
    """One image as (H, W) or (H, W, 3); uint8, or a wider dtype for 16-bit/float modes."""
    try:
        with Image.open(path) as image:
            if image.mode in _WIDE_MODES:
                return np.asarray(image).copy()
            if image.mode in ("1", "L", "LA", "La"):
                return np.asarray(image.convert("L"))
            if image.mode in ("P", "PA"):
                # Via RGBA so palette transparency is handled, then the alpha dropped.
                image = image.convert("RGBA")
            return np.asarray(image.convert("RGB"))
    except Exception as error:  # Pillow raises OSError, UnidentifiedImageError, ValueError...
        raise HiCoError(f"Cannot read image {path}: {short_reason(error)}.") from error

