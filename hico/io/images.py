"""Still images (one-frame clips) and frame folders (one image per frame, US-4 layout)."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from hico.errors import HiCoError
from hico.io.limits import ClipLimits, resolve
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


def read_image(path: str | os.PathLike, limits: ClipLimits | None = None) -> np.ndarray:
    """A still image as a one-frame clip: uint8 (1, H, W) gray or (1, H, W, 3) RGB.

    16-bit and float images are scaled by their min/max; alpha is dropped; palette
    images are expanded to RGB. The header's size is checked against `limits` (None:
    the defaults) before the pixels are decoded.
    """
    width, height = image_size(path)
    resolve(limits).check_clip(path, 1, height, width)
    pixels = _load_pixels(Path(path))
    return (pixels if pixels.dtype == np.uint8 else scale_to_uint8(pixels))[None]


def read_frame_folder(folder: str | os.PathLike, max_frames: int | None = None,
                      limits: ClipLimits | None = None) -> np.ndarray:
    """A folder of frame images as one clip: uint8 (T, H, W) gray or (T, H, W, 3) RGB.

    Frames are taken in natural file-name order; with `max_frames`, a longer folder
    gives `max_frames` evenly spaced frames and only those are decoded. The first
    frame's header and the number kept are checked against `limits` (None: the
    defaults), then every frame's header must give the size of the first (HiCoError
    naming the odd one), so no frame decodes to more than was checked. If any frame is
    colour all become RGB; wide (16-bit) frames are scaled by the min/max of the clip.
    """
    folder = Path(folder)
    paths = list_frames(folder)
    chosen = [paths[i] for i in frame_indices(len(paths), max_frames)]
    if chosen:
        width, height = image_size(paths[0])
        resolve(limits).check_clip(folder, len(chosen), height, width, len(paths))
    _check_sizes(folder, paths)
    frames = [_load_pixels(p) for p in chosen]
    if not frames:
        return np.zeros((0, 0, 0), dtype=np.uint8)
    if any(f.ndim == 3 for f in frames):
        frames = [np.repeat(f[..., None], 3, axis=-1) if f.ndim == 2 else f for f in frames]
    clip = np.stack(frames)
    return clip if clip.dtype == np.uint8 else scale_to_uint8(clip)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the image header, without decoding pixels."""
    with _open_image(path) as image:
        return image.size


@contextlib.contextmanager
def _open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Image.open, and what is done with the image, with every Pillow failure as one HiCoError
    sentence naming the file.

    Pillow's own guard (Image.MAX_IMAGE_PIXELS: a warning above 89 M pixels, an error
    above twice that) would print a DecompressionBombWarning, or refuse an image that
    data.max_frame_pixels allows; HiCo checks header sizes against its own limits before
    decoding, so the warning is silenced here and the error given as that sentence. (Two
    threads in catch_warnings at once can leave the silencing filter in place: harmless.)
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            yield image
    except HiCoError:
        raise
    except Exception as error:  # Pillow raises OSError, UnidentifiedImageError, ValueError...
        raise HiCoError(f"Cannot read image {path}: {_pillow_reason(error)}.") from error


def _pillow_reason(error: Exception) -> str:
    """A short clause; Pillow's "Image size (N pixels) exceeds limit of M pixels..." reworded."""
    if not isinstance(error, Image.DecompressionBombError):
        return short_reason(error)
    found = re.search(r"\((\d+) pixels\)", str(error))
    held = f"{int(found.group(1)):,} pixels" if found else "more pixels"
    most = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return f"it holds {held}, more than Pillow opens ({most:,}, PIL.Image.MAX_IMAGE_PIXELS x 2)"


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
    with _open_image(path) as image:
        if image.mode in _WIDE_MODES:
            return np.asarray(image).copy()
        if image.mode in ("1", "L", "LA", "La"):
            return np.array(image.convert("L"))  # a writable copy, as every reader returns
        if image.mode in ("P", "PA"):
            # Via RGBA so palette transparency is handled, then the alpha dropped.
            image = image.convert("RGBA")
        return np.array(image.convert("RGB"))
