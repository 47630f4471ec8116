"""One entry point for every clip format: what a path is, its frames, and its cheap facts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hico.errors import HiCoError
from hico.io.dicom import is_dicom, read_dicom, read_dicom_meta
from hico.io.images import IMAGE_SUFFIXES, image_size, is_image_file, list_frames, read_frame_folder, read_image
from hico.io.limits import ClipLimits, resolve
from hico.io.pixels import check_max_frames, finish_clip
from hico.io.video import CLIP_VIDEO_SUFFIXES, read_video, read_video_meta

_KINDS = "a video (" + ", ".join(CLIP_VIDEO_SUFFIXES) + "), a DICOM, an image or a folder of frame images"


def clip_kind(path: str | os.PathLike) -> str | None:
    """"video", "dicom", "image", "frames" (a folder directly holding images), or None.

    Suffixes decide first (case-insensitive); a file without a known suffix is a
    DICOM when it carries the "DICM" marker (except a DICOMDIR index). Missing
    paths give None.
    """
    path = Path(path)
    if path.is_dir():
        return "frames" if any(is_image_file(p) for p in path.iterdir()) else None
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix in CLIP_VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if path.name.upper() == "DICOMDIR":  # a media index with "DICM" magic but no pixels
        return None
    return "dicom" if is_dicom(path) else None


def read_clip(path: str | os.PathLike, max_frames: int | None = None,
              limits: ClipLimits | None = None) -> np.ndarray:
    """Read any clip as uint8 (T, H, W, C): C = 1 for gray, C = 3 for RGB colour.

    A colour source whose channels agree within GRAY_TOLERANCE counts as gray. Still
    images give T = 1. With `max_frames`, a longer clip gives `max_frames` frames
    evenly spaced over it (np.linspace indices), and only those are decoded.

    Before decoding, the header (what read_clip_meta reads: the container, the DICOM
    header with the pixel data left on disk, the image header, the first frame of a
    folder) is checked against `limits` (ClipLimits; None: the defaults, never
    unlimited): the frame size against max_frame_pixels and the frames that will be
    decoded (min(total, max_frames)) x height x width against max_clip_pixels. Where a
    header can lie, decoding counts too (PyAV, the size inside each JPEG/JPEG 2000 DICOM
    frame, every image of a folder). HiCoError, naming the file, for a clip over a limit
    (with the config key to change), a missing path, an unknown format, an unreadable
    file or a clip with no frames.
    """
    check_max_frames(max_frames)
    limits = resolve(limits)
    kind = _require_kind(path)
    if kind == "video":
        clip = read_video(path, max_frames, limits)
    elif kind == "dicom":
        clip = read_dicom(path, max_frames, limits)
    elif kind == "image":
        clip = read_image(path, limits)
    else:
        clip = read_frame_folder(path, max_frames, limits)
    if len(clip) == 0:
        raise HiCoError(f"Cannot read clip {path}: it has no frames.")
    return finish_clip(clip)


def read_clip_meta(path: str | os.PathLike) -> dict:
    """Cheap facts about a clip without decoding its frames.

    Returns at least {"kind": str, "frames": int, "height": int, "width": int,
    "fps": float | None}; DICOM and video add format-specific keys. Video frame
    counts come from the container (by packet count where it has none).
    """
    kind = _require_kind(path)
    if kind == "video":
        return read_video_meta(path)
    if kind == "dicom":
        return read_dicom_meta(path)
    if kind == "image":
        width, height = image_size(path)
        return {"kind": "image", "frames": 1, "height": height, "width": width, "fps": None}
    frames = list_frames(path)
    width, height = image_size(frames[0])
    return {"kind": "frames", "frames": len(frames), "height": height, "width": width, "fps": None}


def _require_kind(path: str | os.PathLike) -> str:
    if not Path(path).exists():
        raise HiCoError(f"Cannot read clip {path}: no such file or folder.")
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise HiCoError(f"Cannot read clip {path}: the file is empty (0 bytes).")
    kind = clip_kind(path)
    if kind is None:
        raise HiCoError(f"Cannot read clip {path}: it is not {_KINDS}.")
    return kind
