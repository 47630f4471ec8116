"""DICOM files: single-frame and cine, every photometric interpretation ultrasound uses.

Pixel data is decoded by pydicom 3 and its plugins (pylibjpeg-libjpeg for JPEG,
pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-rle or pydicom itself for RLE); MPEG-2,
H.264 and HEVC transfer syntaxes, which pydicom cannot decode, go through PyAV.

pydicom is imported where a DICOM is read or written, not with this module: most commands never
touch a DICOM, and the import would add 0.2 s to each of them.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hico.errors import HiCoError
from hico.io.limits import ClipLimits, resolve
from hico.io.pixels import frame_indices, scale_to_uint8
from hico.io.reasons import short_reason
from hico.io.video import read_with_pyav

if TYPE_CHECKING:  # for the annotations only
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC = b"DICM"
_MAGIC_OFFSET = 128

# Values above this stay on disk when the header is read (pixel data, mostly) until decoded.
_DEFER_BYTES = 256 * 1024
# pydicom parses a data set element by element (about 4 us each) and takes what it is given: a
# 128 MB file of zeros is 16 million empty elements, a minute of parsing. Real files have a few
# hundred elements at the top level (those inside sequences are not counted here).
_MAX_ELEMENTS = 50_000
_HEAD_BYTES = 64 * 1024  # read to judge whether a file can hold a data set at all
_DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: pydicom inflates all of it
# Explicit VRs whose length takes 4 bytes (after 2 reserved ones) instead of 2.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


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


def read_dicom(path: str | os.PathLike, max_frames: int | None = None,
               limits: ClipLimits | None = None) -> np.ndarray:
    """Decode a DICOM's pixel data to uint8, shape (T, H, W) for gray or (T, H, W, 3) RGB.

    Single-frame files give T = 1. MONOCHROME1 is inverted so that high = bright;
    YBR_* come out as RGB; PALETTE COLOR goes through its lookup table. Data wider
    than 8 bits is mapped to 0..255 by the first VOI window (WindowCenter/Width) when
    present, else by the min/max of the whole clip. With `max_frames`, a longer cine
    gives `max_frames` evenly spaced frames, decoding only those. The header (pixel
    data still on disk) is checked against `limits` (None: the defaults) first, and
    the size each JPEG, JPEG-LS or JPEG 2000 frame declares, before it is decoded.
    """
    limits = resolve(limits)
    ds = _read_dataset(path, limits)
    from pydicom.pixels import apply_color_lut  # pydicom is imported by now
    from pydicom.uid import MPEGTransferSyntaxes

    total = _frame_count(ds, path)
    indices = frame_indices(total, max_frames)
    limits.check_clip(path, len(indices), int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), total)
    if _transfer_syntax(ds) in MPEGTransferSyntaxes:
        return _decode_mpeg(ds, path, max_frames, limits)
    frames = _decode(ds, path, indices, total, limits)
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
    ds = _read_dataset(path)
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


def _read_dataset(path: str | os.PathLike, limits: ClipLimits | None = None) -> Dataset:
    """Read a DICOM's header, retrying without the preamble check; HiCoError unless it has pixel data.

    Values over 256 KB (the pixel data) stay on disk until used, so reading is cheap
    and decoding reads them. A file that cannot hold a data set is refused from its
    first bytes (see _check_start), and one with more than 50,000 top-level elements
    while it is parsed.
    """
    try:  # before pydicom is imported: a file that is no DICOM is refused within milliseconds
        _check_start(path, resolve(limits))
    except OSError as error:
        raise HiCoError(f"Cannot read DICOM {path}: {short_reason(error)}.") from error
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_partial
    from pydicom.uid import UID

    forced = False
    try:
        with open(path, "rb") as handle:
            try:
                ds = read_partial(handle, _ElementCount(), defer_size=_DEFER_BYTES)
            except InvalidDicomError:
                # Old files often lack the 128-byte preamble and "DICM" marker.
                forced = True
                handle.seek(0)
                ds = read_partial(handle, _ElementCount(), defer_size=_DEFER_BYTES, force=True)
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


class _ElementCount:
    """pydicom's stop_when callback, used to count the top-level elements and give up on too many."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, tag, vr, length) -> bool:
        self.count += 1
        if self.count > _MAX_ELEMENTS:
            raise ValueError(f"it has more than {_MAX_ELEMENTS:,} data elements (a damaged or forged file)")
        return False


def _check_start(path: str | os.PathLike, limits: ClipLimits) -> None:
    """Refuse from its first bytes a file that pydicom would parse for a minute or inflate without bound.

    Without the "DICM" marker pydicom's forced read takes any bytes as elements, so the
    first ones must be able to start a data set (an all-zero file cannot). After a file
    meta header the same goes for the data set's first bytes, and a deflated data set
    (which pydicom inflates whole into memory) may not inflate beyond what the clip
    limit allows.
    """
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
        if head[_MAGIC_OFFSET:_MAGIC_OFFSET + len(_MAGIC)] != _MAGIC:
            if not _can_start_data_set(head, 0):
                raise HiCoError(f"Cannot read DICOM {path}: it is not a DICOM file (no DICM marker, "
                                f"and its first bytes cannot start a data set).")
            return
        start = _data_set_offset(head)
        if start is None:  # an odd meta header: pydicom makes what it can of it
            return
        if _DEFLATED in head[:start]:
            _check_inflated_size(handle, start, path, limits)
        elif start < len(head) and not _can_start_data_set(head, start):
            raise HiCoError(f"Cannot read DICOM {path}: the bytes after its file meta header cannot start "
                            f"a data set (a damaged or forged file).")


def _data_set_offset(head: bytes) -> int | None:
    """Where the data set begins: after the file meta elements (group 2, explicit VR little endian)
    that follow "DICM", walked as pydicom reads them; None where they cannot be walked in `head`."""
    offset = _MAGIC_OFFSET + len(_MAGIC)
    while head[offset:offset + 2] == b"\x02\x00":
        vr = head[offset + 4:offset + 6]
        if len(head) < offset + 12 or not (vr.isalpha() and vr.isupper()):
            return None
        if vr in _LONG_VRS:  # 2 reserved bytes, then a 4-byte length
            offset += 12 + struct.unpack("<I", head[offset + 8:offset + 12])[0]
        else:
            offset += 8 + struct.unpack("<H", head[offset + 6:offset + 8])[0]
    return offset if offset <= len(head) else None


def _can_start_data_set(head: bytes, offset: int, command_set: bool = True) -> bool:
    """Whether the element tag at `offset` can be a data set's first (little- or big-endian).

    Group 0 (zeros, as in an empty file) only as a command set's (0000,0000) group
    length followed by a data set's first tag; groups 1, 3, 5, 7 and the item and
    padding groups never start one.
    """
    if len(head) < offset + 8:
        return False
    group, element = struct.unpack("<HH", head[offset:offset + 4])
    if group != 0:
        return 0x0002 <= group < 0xFFFC and group not in (0x0003, 0x0005, 0x0007)
    if not command_set or element != 0 or len(head) < offset + 12:
        return False
    explicit = head[offset + 4:offset + 6] == b"UL"
    length = struct.unpack("<H" if explicit else "<I", head[offset + 4 + 2 * explicit:offset + 8])[0]
    end = offset + 12 + struct.unpack("<I", head[offset + 8:offset + 12])[0]
    return length == 4 and _can_start_data_set(head, end, command_set=False)


def _check_inflated_size(handle, start: int, path: str | os.PathLike, limits: ClipLimits) -> None:
    """Inflate a deflated data set as a stream, keeping nothing, to refuse one that grows too big."""
    cap = limits.max_clip_pixels + (16 << 20)  # 8-bit gray at the clip limit, and a header
    handle.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    while not inflater.eof:
        data = inflater.unconsumed_tail or handle.read(1 << 20)
        if not data:
            break
        try:
            size += len(inflater.decompress(data, 1 << 24))
        except zlib.error:
            return  # pydicom gives the reason
        if size > cap:
            raise HiCoError(
                f"Cannot read DICOM {path}: its deflated data set inflates to more than {cap:,} bytes, more "
                f"than data.max_clip_pixels ({limits.max_clip_pixels:,}) allows; raise data.max_clip_pixels."
            )


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


def _decode(ds: Dataset, path: str | os.PathLike, indices: np.ndarray, total: int,
            limits: ClipLimits) -> np.ndarray:
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
    _check_codestreams(ds, path, indices, total, limits)
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


def _check_codestreams(ds: Dataset, path: str | os.PathLike, indices: np.ndarray, total: int,
                       limits: ClipLimits) -> None:
    """Check the size each JPEG, JPEG-LS or JPEG 2000 frame to decode declares against `limits`.

    Those decoders allocate what the codestream says, not what Rows and Columns say: an
    8000 x 8000 JPEG in a 128 x 128 DICOM would be decoded whole before pydicom noticed.
    """
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    syntax = _transfer_syntax(ds)
    j2k = syntax in JPEG2000TransferSyntaxes
    if len(indices) == 0 or not (j2k or syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes):
        return
    budget = limits.budget(path)
    wanted, last = set(indices.tolist()), int(indices[-1])
    try:
        for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=total)):
            size = _codestream_size(frame, j2k) if index in wanted else None
            if size is not None:
                budget.add(*size)
            if index >= last:
                break
    except HiCoError:
        raise
    except Exception:  # malformed encapsulation: the decoder gives the reason
        return


# JPEG start-of-frame markers (SOF0..SOF15 but DHT, JPG and DAC) and JPEG-LS's SOF55.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def _codestream_size(data: bytes, j2k: bool) -> tuple[int, int] | None:
    """(height, width) a JPEG 2000 SIZ or a JPEG / JPEG-LS SOF segment declares; None if not found."""
    if j2k:  # SOC, SIZ: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz (big-endian)
        siz = data.find(b"\xff\x4f\xff\x51")
        if siz < 0 or len(data) < siz + 24:
            return None
        x, y, x0, y0 = struct.unpack(">4I", data[siz + 8:siz + 24])
        return max(y - y0, 0), max(x - x0, 0)
    if data[:2] != b"\xff\xd8":  # SOI
        return None
    offset = 2
    while offset + 9 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
        elif marker in _SOF_MARKERS:  # marker, length, precision, height, width
            return struct.unpack(">HH", data[offset + 5:offset + 9])
        else:
            offset += 2 + struct.unpack(">H", data[offset + 2:offset + 4])[0]
    return None


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


def _decode_mpeg(ds: Dataset, path: str | os.PathLike, max_frames: int | None,
                 limits: ClipLimits) -> np.ndarray:
    """MPEG-2/H.264/HEVC pixel data: the fragments together are one video stream; (T, H, W, 3)."""
    from pydicom.encaps import generate_fragments

    try:
        stream = b"".join(generate_fragments(ds.PixelData))
        return read_with_pyav(stream, max_frames, limits, name=str(path))
    except HiCoError:
        raise  # over a limit while decoding
    except Exception as error:  # malformed encapsulation or FFmpeg errors
        syntax = _transfer_syntax(ds)
        raise HiCoError(f"Cannot decode {path} (transfer syntax {syntax.name}): {short_reason(error)}.") from error


def write_dicom_cine(path: str | os.PathLike, frames: np.ndarray, fps: float = 15.0, rle: bool = True,
                     description: str = "HiCo synthetic cine") -> Path:
    """Write gray uint8 frames (T, H, W) as a multi-frame MONOCHROME2 ultrasound DICOM.

    RLE Lossless compressed when `rle` (pydicom encodes it natively), else uncompressed.
    For examples and tests: the patient fields say it is synthetic.
    """
    from pydicom.uid import RLELossless

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 3:
        raise ValueError(f"frames must be T x H x W uint8, got shape {frames.shape}")
    ds = synthetic_dataset(frames.shape[1], frames.shape[2], frames.shape[0], description=description)
    ds.FrameTime = 1000.0 / fps
    if rle:
        ds.compress(RLELossless, frames)
    else:
        ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def synthetic_dataset(rows: int, columns: int, frames: int | None = None, syntax: str | None = None,
                      description: str = "HiCo synthetic cine") -> Dataset:
    """An 8-bit MONOCHROME2 ultrasound data set with file meta and no pixel data yet.

    `frames` sets NumberOfFrames (a multi-frame SOP class either way); `syntax` is the transfer
    syntax UID, Explicit VR Little Endian by default. The patient fields say it is synthetic.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax) if syntax else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.StudyDescription = "US", "SYNTHETIC^EXAMPLE", description
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds
