"""Video files: decode with decord (random access), fall back to PyAV; write H.264 mp4 with PyAV."""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Union

import av
import numpy as np

from hico.errors import HiCoError
from hico.io.limits import MAX_FRAME_PIXELS, ClipLimits, PixelBudget, resolve
from hico.io.pixels import frame_indices
from hico.io.reasons import short_reason

log = logging.getLogger(__name__)

CLIP_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")

# A source PyAV can open: a path, or the bytes of a whole stream (e.g. MPEG in DICOM).
Source = Union[str, bytes]

_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def read_video(path: str | os.PathLike, max_frames: int | None = None,
               limits: ClipLimits | None = None) -> np.ndarray:
    """Decode a video file to uint8 RGB frames, shape (T, H, W, 3).

    With `max_frames`, a longer clip gives `max_frames` evenly spaced frames. The
    container header is read first (PyAV, nothing decoded) and the frames to decode
    (min(total, max_frames)) x height x width checked against `limits` (None: the
    defaults). decord is tried next (it seeks, so only the kept frames are decoded);
    if it is missing or fails, PyAV decodes the file, counting what it decodes.
    Raises HiCoError naming the file for a clip over the limits, or when both fail.
    """
    path = str(path)
    limits = resolve(limits)
    try:
        header = video_header(path, limits.max_frame_pixels)
    except Exception as error:  # FFmpeg errors or no video stream
        raise HiCoError(
            f"Cannot read clip {path}: PyAV could not read its header ({_reason(error)}), and without "
            f"its size neither decord nor PyAV decodes it."
        ) from error
    frames, height, width = header["frames"], header["height"], header["width"]
    limits.check_clip(path, len(frame_indices(frames, max_frames)), height, width, frames)
    decord_reason = "not tried, as the header gives no frame size"  # PyAV counts what it decodes
    if height > 0 and width > 0:
        try:
            return _read_with_decord(path, max_frames, limits, height, width)
        except HiCoError:
            raise  # over a limit: PyAV would decode the same frames
        except Exception as decord_error:  # decord raises its own types, or ImportError
            decord_reason = _reason(decord_error)
            log.debug("decord could not read %s (%s); trying PyAV", path, decord_reason)
    try:
        return read_with_pyav(path, max_frames, limits)
    except HiCoError:
        raise
    except Exception as pyav_error:  # FFmpeg errors, no video stream, odd frame sizes
        raise HiCoError(
            f"Cannot read clip {path}: decord and PyAV both failed "
            f"(decord: {decord_reason}; PyAV: {_reason(pyav_error)})."
        ) from pyav_error


def _read_with_decord(path: str, max_frames: int | None, limits: ClipLimits, height: int,
                      width: int) -> np.ndarray:
    """Decode with decord's VideoReader; (T, H, W, 3) uint8. Raises whatever decord raises.

    decord indexes the packets when it opens the file, so its frame count is checked again:
    a container header may claim fewer frames than the stream holds.
    """
    import decord  # imported lazily: it is optional and slow to import

    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    indices = frame_indices(len(reader), max_frames)
    if len(indices) == 0:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    limits.check_clip(path, len(indices), height, width, len(reader))
    batch = reader.get_batch(indices.tolist())
    # Someone may have switched decord's bridge (e.g. to torch); cope with either output.
    frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    return np.ascontiguousarray(frames, dtype=np.uint8)


def read_with_pyav(source: Source, max_frames: int | None = None, limits: ClipLimits | None = None,
                   name: str | None = None) -> np.ndarray:
    """Decode the first video stream of `source` with PyAV; (T, H, W, 3) uint8 RGB.

    Decodes sequentially (a frame needs the ones before it) and converts and keeps
    only the selected frames. The frame count used for spacing comes from the
    container, checked against the decoded count; when the header was wrong, the
    selection is redone with the true count. Every decoded frame is checked against
    `limits` (None: the defaults) and the kept ones are counted, so a stream that
    changes size or holds more frames than its header says stops with a HiCoError
    naming `name` (default: the path) instead of filling memory.
    """
    limits = resolve(limits)
    name = name or (source if isinstance(source, str) else "(video stream)")
    if max_frames is None:
        frames, _ = _decode_pyav(source, None, limits.budget(name))
        return frames
    total = _count_frames(source)
    frames, decoded = _decode_pyav(source, set(frame_indices(total, max_frames).tolist()), limits.budget(name))
    if decoded != total:
        log.debug("container said %d frames but %d decoded; reselecting", total, decoded)
        keep = set(frame_indices(decoded, max_frames).tolist())
        frames, _ = _decode_pyav(source, keep, limits.budget(name))
    return frames


def _open(source: Source, max_pixels: int) -> av.container.InputContainer:
    """Open `source`; FFmpeg decodes no frame of more than `max_pixels` while probing the streams."""
    return av.open(io.BytesIO(source) if isinstance(source, bytes) else source,
                   options={"max_pixels": str(max_pixels)})


def _decode_pyav(source: Source, keep: set[int] | None, budget: PixelBudget) -> tuple[np.ndarray, int]:
    """Frames whose index is in `keep` (all when None) and the number decoded."""
    frames = []
    decoded = 0
    with _open(source, budget.limits.max_frame_pixels) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # FFmpeg's own guard, for a frame far larger than the header said (up to 64K x 64K in
        # VP9 or AV1): it refuses to allocate one over the clip limit, so the check below,
        # which names the key to change, sees any frame up to that size.
        stream.codec_context.options = {"max_pixels": str(budget.limits.max_clip_pixels)}
        for frame in container.decode(stream):
            kept = keep is None or decoded in keep
            budget.add(frame.height, frame.width, kept)  # a frame not kept is decoded to reach the next
            if kept:
                frames.append(frame.to_ndarray(format="rgb24"))
            decoded += 1
    if not frames:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8), decoded
    return np.stack(frames), decoded


def _count_frames(source: Source) -> int:
    """Frame count from the container header, else by counting packets (no decoding)."""
    return video_header(source)["frames"]


def video_header(source: Source, max_pixels: int = MAX_FRAME_PIXELS) -> dict:
    """The first video stream's header facts; PyAV's errors pass through.

    {"kind": "video", "frames", "height", "width": int, "fps": float | None, "codec": str}.
    `frames` comes from the container header, or from counting packets where it has none
    (mkv, webm). Opening a file makes FFmpeg decode a frame or two to probe the stream,
    unless that frame is over `max_pixels`; the size then comes from the container or
    the stream's parameter sets, or is 0 where they have none.
    """
    with _open(source, max_pixels) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        frames = stream.frames
        if frames <= 0:
            frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
        return {
            "kind": "video",
            "frames": frames,
            "height": stream.height,
            "width": stream.width,
            "fps": float(rate) if rate else None,
            "codec": stream.codec_context.name,
        }


def read_video_meta(path: str | os.PathLike) -> dict:
    """Cheap facts about a video file without decoding frames (see video_header).

    Returns {"kind": "video", "frames": int, "height": int, "width": int,
    "fps": float | None, "codec": str}. `frames` comes from the container header, or
    from counting packets where the header has none (mkv, webm).
    """
    path = str(path)
    try:
        return video_header(path)
    except Exception as error:  # FFmpeg errors or no video stream
        raise HiCoError(f"Cannot read clip {path}: PyAV could not open it ({_reason(error)}).") from error


def _reason(error: BaseException) -> str:
    if isinstance(error, IndexError):
        return "no video stream"
    if isinstance(error, av.FFmpegError) and error.strerror:
        return error.strerror  # without PyAV's errno and repeated path
    # decord prefixes messages with "[hh:mm:ss] /src/file.cc:123: "; drop that.
    return _DECORD_PREFIX.sub("", short_reason(error, 240))[:160]


@functools.lru_cache(maxsize=1)
def h264_encoder() -> str:
    """The encoder write_mp4 uses: libx264 when the PyAV wheel has it (it does as of
    PyAV 14-18), else any other H.264 encoder, else mpeg4 (MPEG-4 part 2 in mp4:
    larger files, and browsers may not play it, but every FFmpeg build has it)."""
    for name in ("libx264", "h264", "libopenh264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # not in this build
            continue
        return name
    raise RuntimeError("this PyAV build has neither an H.264 nor an MPEG-4 encoder")


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 15.0) -> Path:
    """Write frames as an H.264 (yuv420p) mp4 that browsers can stream (moov atom first).

    `frames`: uint8 (T, H, W), (T, H, W, 1) gray or (T, H, W, 3) RGB, T >= 1. Odd
    heights/widths are padded by one replicated edge row/column, since yuv420p needs
    even sizes. The file is written to a temporary name in the same folder and then
    renamed, so readers never see half a file. Returns the path written.
    """
    frames = _even_frames(_check_frames(frames))
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    path = Path(path)
    # A unique name rather than mkstemp: FFmpeg creates it, so it gets the usual
    # permissions instead of mkstemp's owner-only ones.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _encode(str(tmp), frames, Fraction(fps).limit_denominator(1001))
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) or (isinstance(error, av.FFmpegError) and error.errno):
            raise HiCoError(f"Cannot write video {path}: {error.strerror or error}.") from error
        raise
    return path


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"write_mp4 needs uint8 frames, got {frames.dtype}")
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    if not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)) or len(frames) == 0:
        raise ValueError(f"write_mp4 needs (T, H, W[, 1|3]) frames with T >= 1, got shape {frames.shape}")
    return frames


def _even_frames(frames: np.ndarray) -> np.ndarray:
    pad = [(0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2)] + [(0, 0)] * (frames.ndim - 3)
    return np.pad(frames, pad, mode="edge") if any(p[1] for p in pad) else frames


def _encode(target: str, frames: np.ndarray, rate: Fraction) -> None:
    encoder = h264_encoder()
    pixel_format = "gray" if frames.ndim == 3 else "rgb24"
    with av.open(target, "w", format="mp4", container_options={"movflags": "+faststart"}) as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if encoder == "mpeg4":
            stream.bit_rate = int(max(1_000_000, frames.shape[1] * frames.shape[2] * float(rate)))
        else:
            # crf 18 keeps speckle visually intact; x264's default (23) smears it. The veryfast
            # preset encoded a 64-frame overlay video 2.4 times faster than x264's default, and smaller.
            stream.options = {"crf": "18", "preset": "veryfast"}
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=pixel_format)
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
