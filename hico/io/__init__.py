"""Reading clips of every format users have (video files, DICOM, images, frame folders) and writing mp4.

Every reader returns uint8 frames shaped (T, H, W, C), C = 1 for gray and 3 for RGB.
"""

from hico.io.clips import clip_kind, read_clip, read_clip_meta
from hico.io.dicom import DICOM_SUFFIXES, is_dicom, read_dicom_meta, write_dicom_cine
from hico.io.images import IMAGE_SUFFIXES, natural_key
from hico.io.limits import MAX_CLIP_PIXELS, MAX_FRAME_PIXELS, ClipLimits
from hico.io.pixels import GRAY_TOLERANCE
from hico.io.video import CLIP_VIDEO_SUFFIXES, write_mp4

__all__ = [
    "CLIP_VIDEO_SUFFIXES",
    "ClipLimits",
    "DICOM_SUFFIXES",
    "GRAY_TOLERANCE",
    "IMAGE_SUFFIXES",
    "MAX_CLIP_PIXELS",
    "MAX_FRAME_PIXELS",
    "clip_kind",
    "is_dicom",
    "natural_key",
    "read_clip",
    "read_clip_meta",
    "read_dicom_meta",
    "write_dicom_cine",
    "write_mp4",
]
