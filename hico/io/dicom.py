"""DICOM files: single-frame and cine, every photometric interpretation ultrasound uses.

Pixel data is decoded by pydicom 3 and its plugins (pylibjpeg-libjpeg for JPEG,
pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-rle or pydicom itself for RLE); MPEG-2,
H.264 and HEVC transfer syntaxes, which pydicom cannot decode, go through PyAV.

pydicom is imported where a DICOM is read or written, not with this module: most commands never
touch a DICOM, and the import would add 0.2 s to each of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hico.errors import HiCoError
from hico.io.pixels import frame_indices, scale_to_uint8
from hico.io.reasons import short_reason
from hico.io.video import read_with_pyav

if TYPE_CHECKING:  # for the annotations only
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC = b"DICM"
_MAGIC_OFFSET = 128


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a DICOM suffix, or a file with the b"DICM" marker after its 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(_MAGIC_OFFSET)
            return handle.read(len(_MAGIC)) == _MAGIC
    except OSError:  # a folder, a missing or unreadable file
        return False


def read_dicom(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """Decode a DICOM's pixel data to uint8, shape (T, H, W) for gray or (T, H, W, 3) RGB.

    Single-frame files give T = 1. MONOCHROME1 is inverted so that high = bright;
    YBR_* come out as RGB; PALETTE COLOR goes through its lookup table. Data wider
    than 8 bits is mapped to 0..255 by the first VOI window (WindowCenter/Width) when
    present, else by the min/max of the whole clip. With `max_frames`, a longer cine
    gives `max_frames` evenly spaced frames, decoding only those.
    """
    from pydicom.pixels import apply_color_lut
    from pydicom.uid import MPEGTransferSyntaxes

    ds = _read_dataset(path, header_only=False)
    if _transfer_syntax(ds) in MPEGTransferSyntaxes:
        return _decode_mpeg(ds, path, max_frames)
    total = _frame_count(ds, path)
    frames = _decode(ds, path, frame_indices(total, max_frames), total)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frames, ds)
        # Palette entries are 16-bit (0..65535) unless the descriptor says 8.
        return (rgb >> 8).astype(np.uint8) if rgb.dtype != np.uint8 else rgb
    if frames.ndim == 4:  # colour, already RGB
        return frames if frames.dtype == np.uint8 else scale_to_uint8(frames)
    gray = frames if frames.dtype == np.uint8 else _window_to_uint8(frames, ds)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def read_dicom_meta(path: str | os.PathLike) -> dict:
    """Header facts without decoding pixels.

    Returns {"kind": "dicom", "frames", "rows", "columns", "height", "width": int,
    "photometric_interpretation": str, "samples_per_pixel", "bits_stored": int,
    "transfer_syntax": str (UID), "fps": float | None}. fps comes from FrameTime
    (ms per frame), else CineRate, else RecommendedDisplayFrameRate.
    """
    ds = _read_dataset(path, header_only=True)
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    return {
        "kind": "dicom",
        "frames": _frame_count(ds, path),
        "rows": rows,
        "columns": columns,
        "height": rows,
        "width": columns,
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")),
        "samples_per_pixel": int(ds.get("SamplesPerPixel") or 1),
        "bits_stored": int(ds.get("BitsStored") or 0),
        "transfer_syntax": str(_transfer_syntax(ds)),
        "fps": _fps(ds),
    }


def _read_dataset(path: str | os.PathLike, header_only: bool) -> Dataset:
    """Read a DICOM, retrying without the preamble check; HiCoError unless it has pixel data.

    With `header_only`, pixel data is left on disk (deferred) so only its presence is known.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    defer = "256 KB" if header_only else None
    forced = False
    try:
        try:
            ds = pydicom.dcmread(path, defer_size=defer)
        except InvalidDicomError:
            # Old files often lack the 128-byte preamble and "DICM" marker.
            forced = True
            ds = pydicom.dcmread(path, defer_size=defer, force=True)
    except Exception as error:  # pydicom raises many types on malformed files
        raise HiCoError(f"Cannot read DICOM {path}: {short_reason(error)}.") from error
    has_body = any(element.tag.group != 0x0002 for element in ds)
    # A forced read of a non-DICOM file yields a few garbage elements, never these.
    looks_real = "SOPClassUID" in ds or "PixelData" in ds
    if not has_body or (forced and not looks_real):
        raise HiCoError(
            f"Cannot read DICOM {path}: it holds no readable data elements (not a DICOM file, or truncated)."
        )
    if "PixelData" not in ds:
        has_float = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        what = "float pixel data, which is not supported" if has_float else "no pixel data"
        sop = ds.get("SOPClassUID")
        kind = f" (SOP class {sop.name})" if isinstance(sop, UID) else ""
        raise HiCoError(f"Cannot read DICOM {path}: it has {what}{kind}.")
    return ds


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax, inferred from how it was read when the meta header lacks one."""
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = ds.get("file_meta")
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        if not little:
            syntax = UID("1.2.840.10008.1.2.2")  # Explicit VR Big Endian
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = syntax
    return UID(str(syntax))


def _frame_count(ds: Dataset, path: str | os.PathLike) -> int:
    try:
        count = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as error:
        raise HiCoError(f"Cannot read DICOM {path}: NumberOfFrames is not a number ({error}).") from error
    if count < 1:
        raise HiCoError(f"Cannot read DICOM {path}: it has no frames.")
    return count


def _fps(ds: Dataset) -> float | None:
    """Frames per second from FrameTime (ms per frame), CineRate or RecommendedDisplayFrameRate."""
    for keyword in ("FrameTime", "CineRate", "RecommendedDisplayFrameRate"):
        try:
            value = _first_value(ds.get(keyword))
        except (TypeError, ValueError):  # a malformed header value: no rate rather than no clip
            continue
        if value and value > 0:
            return 1000.0 / value if keyword == "FrameTime" else value
    return None


def _decode(ds: Dataset, path: str | os.PathLike, indices: np.ndarray, total: int) -> np.ndarray:
    """Decoded frames (T, H, W) or (T, H, W, 3) in pydicom's native dtype, colour as RGB."""
    from pydicom.pixels import get_decoder, iter_pixels, pixel_array

    syntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise HiCoError(
            f"Cannot decode {path}: pydicom has no decoder for transfer syntax {syntax.name} ({syntax})."
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise HiCoError(
            f"Cannot decode {path}: transfer syntax {syntax.name} ({syntax}) needs a plugin "
            f"that is not installed ({needs})."
        )
    try:
        # as_rgb (pydicom's default) converts YBR_FULL, YBR_FULL_422, YBR_ICT... to RGB.
        if len(indices) == total:
            frames = pixel_array(ds, as_rgb=True)
            if total == 1:
                frames = frames[None]
        else:
            frames = np.stack(list(iter_pixels(ds, indices=indices.tolist(), as_rgb=True)))
    except Exception as error:  # decoder plugins raise assorted types on bad data
        raise HiCoError(
            f"Cannot decode {path} (transfer syntax {syntax.name}): {short_reason(error)}."
        ) from error
    return frames


def _window_to_uint8(frames: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values (T, H, W), any int dtype, to uint8 by the first VOI window, else clip min/max."""
    center, width = _first_value(ds.get("WindowCenter")), _first_value(ds.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return scale_to_uint8(frames)
    # The window is in rescaled (modality) units; move its ends back to stored values.
    slope = _first_value(ds.get("RescaleSlope")) or 1.0
    intercept = _first_value(ds.get("RescaleIntercept")) or 0.0
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    return scale_to_uint8(frames, (low - intercept) / slope, (high - intercept) / slope)


def _first_value(value) -> float | None:
    from pydicom.multival import MultiValue

    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return float(value[0]) if len(value) else None
    return float(value)


def _decode_mpeg(ds: Dataset, path: str | os.PathLike, max_frames: int | None) -> np.ndarray:
    """MPEG-2/H.264/HEVC pixel data: the fragments together are one video stream; (T, H, W, 3)."""
    from pydicom.encaps import generate_fragments

    try:
        stream = b"".join(generate_fragments(ds.PixelData))
        return read_with_pyav(stream, max_frames)
    except Exception as error:  # malformed encapsulation or FFmpeg errors
        syntax = _transfer_syntax(ds)
        raise HiCoError(f"Cannot decode {path} (transfer syntax {syntax.name}): {short_reason(error)}.") from error



def write_dicom_cine(path: str | os.PathLike, frames: np.ndarray, fps: float = 15.0, rle: bool = True,
                     description: str = "HiCo synthetic cine") -> Path:
    """Write gray uint8 frames (T, H, W) as a multi-frame MONOCHROME2 ultrasound DICOM.

    RLE Lossless compressed when `rle` (pydicom encodes it natively), else uncompressed.
    For examples and tests: the patient fields say it is synthetic.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundMultiFrameImageStorage, generate_uid

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 3:
        raise ValueError(f"frames must be T x H x W uint8, got shape {frames.shape}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.StudyDescription = "US", "SYNTHETIC^EXAMPLE", description
    ds.Rows, ds.Columns, ds.NumberOfFrames = frames.shape[1], frames.shape[2], frames.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = 1000.0 / fps
    if rle:
        ds.compress(RLELossless, frames)
    else:
        ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
