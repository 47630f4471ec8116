"""Decompression bombs: files small on disk and enormous decoded are refused from their headers, in one
sentence, before anything is decoded; headers that lie are caught while decoding; the limits reach
every reader, the frame cache and the CLI."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MPEG4HP41,
    RLELossless,
)

import hico.data.cache as cache_module
import hico.io.video as video_module
from hico import config
from hico.config import DataConfig
from hico.data import build_cache, load_clip_frames
from hico.errors import HiCoError
from hico.io import MAX_CLIP_PIXELS, MAX_FRAME_PIXELS, ClipLimits, read_clip, read_clip_meta, write_mp4
from hico.io.dicom import synthetic_dataset
from tests.conftest import write_class_dataset

QUICK = 5.0  # CPU seconds of this process: a refusal takes milliseconds (other work on the machine does not count)
UID_US = b"1.2.840.10008.5.1.4.1.1.6.1\x00"  # Ultrasound Image Storage, padded to even length


# ---------------------------------------------------------------- bombs, small on disk


def write_black_h264(path: Path, width: int, height: int, frames: int) -> Path:
    """Black frames as H.264 mp4 (libx264 ultrafast): a few dozen KB whatever the size."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "51"}
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane, level in zip(frame.planes, (16, 128, 128)):  # video-range black
            np.frombuffer(plane, np.uint8)[:] = level
        for index in range(frames):
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid all-black 8-bit gray PNG, compressed row by row without ever holding the image."""
    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return path


def us_dataset(syntax, rows: int, columns: int, frames: int | None = None) -> Dataset:
    """An 8-bit MONOCHROME2 ultrasound data set without pixel data."""
    return synthetic_dataset(rows, columns, frames, syntax)


def encapsulated_dicom(path: Path, ds: Dataset, fragments: list[bytes]) -> Path:
    ds.PixelData = encapsulate(fragments)  # with an empty basic offset table item
    ds["PixelData"].VR = "OB"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_rle_dicom_bomb(path: Path, side: int) -> Path:
    """A side x side RLE Lossless DICOM of zeros: one segment, each row runs of 0x81 0x00 (128 zeros)."""
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    segment = header + b"\x81\x00" * (side // 128) * side
    return encapsulated_dicom(path, us_dataset(RLELossless, side, side), [segment])


def write_zeros(path: Path, size: int = 128 << 20) -> Path:
    """`path` extended with zeros to `size` bytes (created if missing)."""
    with open(path, "ab") as handle:
        handle.truncate(size)  # sparse: instant, and no disk used
    return path


def coded_frames(frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """(T, H, W) uint8 where frame t is flat at 16 + 19 t, so frames can be told apart."""
    return np.stack([np.full((height, width), 16 + 19 * t, np.uint8) for t in range(frames)])


def codes(clip: np.ndarray) -> list[int]:
    return [int(round((float(frame.mean()) - 16) / 19)) for frame in clip]


def refused(path, pattern: str | None = None, **kwargs) -> str:
    """read_clip's HiCoError sentence for `path`, checked to come quickly and as one sentence."""
    start = time.process_time()
    with pytest.raises(HiCoError) as caught:
        read_clip(path, **kwargs)
    assert time.process_time() - start < QUICK
    message = str(caught.value)
    assert str(path) in message and message.endswith(".") and "\n" not in message
    if pattern:
        assert pattern in message, message
    return message


# ---------------------------------------------------------------- the keys and the limits object


def test_config_keys_default_to_the_module_limits_and_are_validated():
    assert (DataConfig().max_frame_pixels, DataConfig().max_clip_pixels) == (25_000_000, 300_000_000)
    assert ClipLimits() == ClipLimits(MAX_FRAME_PIXELS, MAX_CLIP_PIXELS) == ClipLimits.from_config(DataConfig())
    cfg = config.load(None, ["data.max_frame_pixels=1000", "data.max_clip_pixels=5_000"])
    assert ClipLimits.from_config(cfg.data) == ClipLimits(1000, 5000)
    assert ClipLimits.from_config(cfg.to_dict()["data"]) == ClipLimits(1000, 5000)  # a sidecar's dict
    assert ClipLimits.from_config({"size": 224}) == ClipLimits()  # a run from before the keys
    for override, reason in [("data.max_frame_pixels=0", "at least 1"), ("data.max_clip_pixels=-3", "at least 1"),
                             ("data.max_clip_pixels=1.5", "whole number")]:
        with pytest.raises(HiCoError, match=rf"Config key {override.split('=')[0]} must be .*{reason}"):
            config.load(None, [override])
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="max_clip_pixels"):
            ClipLimits(max_clip_pixels=bad)


def test_sentences_round_alike_or_give_exact_counts():
    limits = ClipLimits()
    with pytest.raises(HiCoError) as caught:
        limits.check_clip("a.mp4", 1000, 548, 548)  # 300,304,000: "300 million" both ways
    assert "(300,304,000 pixels to decode), more than data.max_clip_pixels (300,000,000)" in str(caught.value)
    limits.check_clip("a.mp4", 1000, 547, 547)  # 299,209,000 fits
    with pytest.raises(HiCoError, match=r"a frame of 3840 x 2160 \(8.3 million pixels\), more than "
                                        r"data.max_frame_pixels \(8 million\)"):
        ClipLimits(8_000_000).check_frame("4k.mp4", 2160, 3840)


# ---------------------------------------------------------------- the four bombs, through read_clip


def test_h264_bomb_is_refused_from_the_container_header(tmp_path):
    # 4096 x 4096 x 20 frames = 336 M pixels (1 GB as RGB) over the default 300 M; encodes in about
    # a second, where a 2048 x 2048 x 300 bomb would take a few.
    path = write_black_h264(tmp_path / "bomb.mp4", 4096, 4096, 20)
    assert path.stat().st_size < 200_000
    message = refused(path, "data.max_clip_pixels")
    assert "holds 20 frames of 4096 x 4096 (336 million pixels to decode), more than " \
           "data.max_clip_pixels (300 million); keep fewer frames (--max-frames" in message
    # --max-frames shrinks what is decoded, so the same clip passes the header check with 10 frames
    # (not decoded here: that would be 500 MB); a lower limit names what the kept frames come to.
    message = refused(path, "the 10 kept are 168 million pixels", max_frames=10,
                      limits=ClipLimits(max_clip_pixels=10**8))
    assert "holds 20 frames of 4096 x 4096" in message


def test_png_bomb_is_refused_from_its_header_without_pillow_warnings(tmp_path):
    path = write_png_bomb(tmp_path / "bomb.png", 16000, 10000)
    assert path.stat().st_size < 400_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        assert read_clip_meta(path) | {"fps": 0} == {"kind": "image", "frames": 1, "height": 10000,
                                                     "width": 16000, "fps": 0}
        message = refused(path, "data.max_frame_pixels")
    assert "holds a frame of 16000 x 10000 (160 million pixels), more than data.max_frame_pixels " \
           "(25 million); raise data.max_frame_pixels" in message


def test_image_pillow_refuses_becomes_one_sentence(tmp_path):
    # Past twice Image.MAX_IMAGE_PIXELS Pillow itself refuses to open, whatever HiCo's limits allow.
    path = write_png_bomb(tmp_path / "huge.png", 20000, 10000)
    roomy = ClipLimits(max_frame_pixels=300_000_000)
    message = refused(path, "it holds 200,000,000 pixels, more than Pillow opens", limits=roomy)
    assert message.startswith(f"Cannot read image {path}")


def test_rle_dicom_bomb_is_refused_from_its_header(tmp_path):
    path = write_rle_dicom_bomb(tmp_path / "bomb.dcm", 16384)
    assert path.stat().st_size < 5_000_000
    assert read_clip_meta(path)["rows"] == 16384  # the header is read, the 268 M pixels are not
    message = refused(path, "data.max_frame_pixels")
    assert "holds a frame of 16384 x 16384 (268 million pixels), more than data.max_frame_pixels" in message


def test_zero_filled_dcm_is_not_a_dicom_and_refused_at_once(tmp_path):
    path = write_zeros(tmp_path / "x.dcm")
    start = time.process_time()
    message = refused(path, "it is not a DICOM file")
    assert time.process_time() - start < 1.0
    assert "its first bytes cannot start a data set" in message
    with pytest.raises(HiCoError, match="not a DICOM file"):
        read_clip_meta(path)


# ---------------------------------------------------------------- other DICOM headers pydicom would parse for long


def file_meta_bytes(syntax) -> bytes:
    """The 128-byte preamble, "DICM" and a file meta header (with its group length), nothing after."""
    meta = us_dataset(syntax, 1, 1).file_meta
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def test_zeros_after_a_file_meta_header_are_refused_at_once(tmp_path):
    path = tmp_path / "meta_then_zeros.dcm"
    head = file_meta_bytes(ExplicitVRLittleEndian)
    path.write_bytes(head)
    write_zeros(path, len(head) + (128 << 20))
    refused(path, "the bytes after its file meta header cannot start a data set")


def test_a_plausible_start_then_zeros_stops_at_the_element_cap(tmp_path):
    path = tmp_path / "start_then_zeros.dcm"  # implicit VR (0008,0016) SOP Class UID, then zeros
    path.write_bytes(struct.pack("<HHI", 0x0008, 0x0016, len(UID_US)) + UID_US)
    write_zeros(path, 128 << 20)
    refused(path, "it has more than 50,000 data elements")


def test_deflated_data_set_inflating_past_the_limit_is_refused(tmp_path):
    limits = ClipLimits(max_frame_pixels=1000, max_clip_pixels=1_000_000)  # inflate cap: 1 M + 16 MiB
    element = b"\x08\x00\x16\x00UI" + struct.pack("<H", len(UID_US)) + UID_US
    blob = b"\x09\x00\x00\x10OB\x00\x00" + struct.pack("<I", 24 << 20)  # a 24 MiB private OB of zeros
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = packer.compress(element + blob) + b"".join(packer.compress(bytes(1 << 20)) for _ in range(24))
    path = tmp_path / "deflated.dcm"
    path.write_bytes(file_meta_bytes(DeflatedExplicitVRLittleEndian) + body + packer.flush())
    assert path.stat().st_size < 100_000
    refused(path, "its deflated data set inflates to more than 17,777,216 bytes", limits=limits)


def test_small_deflated_dicom_still_reads(tmp_path):
    ds = us_dataset(DeflatedExplicitVRLittleEndian, 16, 24)
    frame = coded_frames(1, 16, 24)[0]
    ds.PixelData = frame.tobytes()
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert np.array_equal(read_clip(path)[0, ..., 0], frame)


# ---------------------------------------------------------------- every path applies the limits


def gray_video(path: Path, frames: int = 12) -> Path:
    return write_mp4(path, coded_frames(frames), fps=10)


def native_dicom(path: Path, frames: int = 12) -> Path:
    ds = us_dataset(ExplicitVRLittleEndian, 48, 64, frames)
    ds.PixelData = coded_frames(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def rle_dicom(path: Path, frames: int = 12) -> Path:
    ds = us_dataset(ExplicitVRLittleEndian, 48, 64, frames)
    ds.compress(RLELossless, coded_frames(frames))
    ds.save_as(path, enforce_file_format=True)
    return path


def frame_folder(path: Path, frames: int = 12) -> Path:
    path.mkdir()
    for t, frame in enumerate(coded_frames(frames)):
        Image.fromarray(frame).save(path / f"frame{t}.png")
    return path


MAKERS = {"video-decord": gray_video, "video-pyav": gray_video, "dicom": native_dicom, "dicom-rle": rle_dicom,
          "frames": frame_folder}
SUFFIX = {"video-decord": ".mp4", "video-pyav": ".mp4", "dicom": ".dcm", "dicom-rle": ".dcm", "frames": ""}
FRAME = 48 * 64


def make_clip(tmp_path, kind, monkeypatch, frames: int = 12) -> Path:
    if kind == "video-pyav":
        monkeypatch.setattr(video_module, "_read_with_decord", lambda *a: 1 / 0)
    return MAKERS[kind](tmp_path / f"clip{SUFFIX[kind]}", frames)


@pytest.mark.parametrize("kind", list(MAKERS))
def test_a_clip_exactly_at_the_limits_reads_and_one_pixel_less_refuses(tmp_path, monkeypatch, kind):
    path = make_clip(tmp_path, kind, monkeypatch)
    exact = ClipLimits(max_frame_pixels=FRAME, max_clip_pixels=12 * FRAME)
    clip = read_clip(path, limits=exact)
    assert clip.shape == (12, 48, 64, 1) and codes(clip) == list(range(12))
    message = refused(path, "data.max_clip_pixels", limits=ClipLimits(FRAME, 12 * FRAME - 1))
    assert "holds 12 frames of 64 x 48 (36,864 pixels to decode), more than data.max_clip_pixels (36,863)" in message
    refused(path, "holds a frame of 64 x 48 (3,072 pixels), more than data.max_frame_pixels (3,071)",
            limits=ClipLimits(FRAME - 1, 12 * FRAME))


@pytest.mark.parametrize("kind", list(MAKERS))
def test_max_frames_lets_a_long_clip_through_since_only_kept_frames_count(tmp_path, monkeypatch, kind):
    path = make_clip(tmp_path, kind, monkeypatch)
    four = ClipLimits(max_frame_pixels=FRAME, max_clip_pixels=4 * FRAME)
    refused(path, "holds 12 frames of 64 x 48", limits=four)
    assert codes(read_clip(path, max_frames=4, limits=four)) == [0, 4, 7, 11]
    refused(path, "; the 5 kept are 15,360 pixels to decode, more than data.max_clip_pixels (12,288)",
            max_frames=5, limits=four)


def test_a_still_image_over_a_lowered_limit_is_refused(tmp_path):
    path = tmp_path / "still.png"
    Image.fromarray(coded_frames(1)[0]).save(path)
    assert read_clip(path, limits=ClipLimits(FRAME, FRAME)).shape == (1, 48, 64, 1)
    refused(path, "more than data.max_frame_pixels (3,071)", limits=ClipLimits(FRAME - 1))
    refused(path, "holds 1 frame of 64 x 48 (3,072 pixels to decode), more than data.max_clip_pixels (3,071); "
                  "raise data.max_clip_pixels", limits=ClipLimits(FRAME, FRAME - 1))


# ---------------------------------------------------------------- headers that lie


@pytest.mark.parametrize("reader", ["decord", "pyav"])
def test_a_container_claiming_fewer_frames_is_caught_while_decoding(tmp_path, monkeypatch, reader):
    path = gray_video(tmp_path / "liar.mp4")
    honest = video_module.video_header(str(path))
    monkeypatch.setattr(video_module, "video_header", lambda *args: honest | {"frames": 2})
    if reader == "pyav":
        monkeypatch.setattr(video_module, "_read_with_decord", lambda *a: 1 / 0)
    four = ClipLimits(max_frame_pixels=FRAME, max_clip_pixels=4 * FRAME)
    if reader == "decord":  # decord counts the packets itself: the 12 frames are seen before decoding
        refused(path, "holds 12 frames of 64 x 48 (36,864 pixels to decode)", limits=four)
    else:  # PyAV counts what it decodes and stops after the fifth frame
        refused(path, "decodes to more than its header says: 5 frames (15,360 pixels) so far, more than "
                      "data.max_clip_pixels (12,288)", limits=four)


def h264_stream(side: int, frames: int) -> bytes:
    stream = io.BytesIO()
    with av.open(stream, "w", format="h264") as container:
        encoder = container.add_stream("libx264", rate=10)
        encoder.width = encoder.height = side
        encoder.pix_fmt = "yuv420p"
        for frame in coded_frames(frames, side, side):
            container.mux(encoder.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(encoder.encode(None))
    return stream.getvalue()


def test_a_video_stream_that_grows_mid_way_is_stopped_by_pyav(tmp_path):
    # H.264 in DICOM: the header says 16 x 16 (as do the stream's first frames), then 64 x 64 frames follow.
    ds = us_dataset(MPEG4HP41, 16, 16, frames=6)
    path = encapsulated_dicom(tmp_path / "grows.dcm", ds, [h264_stream(16, 3) + h264_stream(64, 3)])
    refused(path, "holds a frame of 64 x 64 (4,096 pixels), more than data.max_frame_pixels (1,000)",
            limits=ClipLimits(max_frame_pixels=1000))


def test_ffmpeg_itself_refuses_frames_past_the_clip_limit(tmp_path):
    # A frame too big even to hold for the check above (VP9 and AV1 allow 65536 x 65536) is
    # refused by FFmpeg's max_pixels before it is allocated: a plain read error, but bounded.
    ds = us_dataset(MPEG4HP41, 16, 16, frames=6)
    path = encapsulated_dicom(tmp_path / "grows.dcm", ds, [h264_stream(16, 3) + h264_stream(64, 3)])
    refused(path, "Cannot decode", limits=ClipLimits(max_frame_pixels=256, max_clip_pixels=2000))


def test_probing_a_video_decodes_no_frame_over_the_limit_yet_gives_its_size(tmp_path):
    path = gray_video(tmp_path / "clip.mp4")
    header = video_module.video_header(str(path), max_pixels=100)  # FFmpeg may not decode a frame
    assert (header["frames"], header["height"], header["width"]) == (12, 48, 64)


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, JPEG2000Lossless], ids=["jpeg", "j2k"])
def test_a_dicom_frame_bigger_than_rows_and_columns_is_refused_before_decoding(tmp_path, syntax):
    big = coded_frames(2, 64, 64)
    path = tmp_path / "big.dcm"
    if syntax == JPEGBaseline8Bit:
        jpegs = []
        for frame in big:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, "JPEG", quality=95)
            jpegs.append(buffer.getvalue())
        encapsulated_dicom(path, us_dataset(syntax, 64, 64, frames=2), jpegs)
    else:
        ds = us_dataset(ExplicitVRLittleEndian, 64, 64, frames=2)
        ds.compress(syntax, big)
        ds.save_as(path, enforce_file_format=True)
    assert read_clip(path).shape == (2, 64, 64, 1)
    lying = pydicom.dcmread(path)
    lying.Rows = lying.Columns = 32  # the header now says less than each codestream holds
    lying.save_as(path)
    refused(path, "holds a frame of 64 x 64 (4,096 pixels), more than data.max_frame_pixels (1,024)",
            limits=ClipLimits(max_frame_pixels=32 * 32))


def test_a_frame_folder_whose_later_image_is_huge_is_refused_from_headers(tmp_path):
    folder = frame_folder(tmp_path / "case", frames=3)
    write_png_bomb(folder / "frame3.png", 16000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(folder, "differ in size: frame3.png is 16000x10000")


# ---------------------------------------------------------------- the frame cache (training, embedding)


def test_build_cache_and_load_clip_frames_apply_the_limits(tmp_path):
    path = gray_video(tmp_path / "clip.mp4")
    four = ClipLimits(max_frame_pixels=FRAME, max_clip_pixels=4 * FRAME)
    with pytest.raises(HiCoError, match=r"clip\.mp4 holds 12 frames .* data\.max_clip_pixels"):
        build_cache([path], 16, progress=False, limits=four)
    with pytest.raises(HiCoError, match="data.max_clip_pixels"):
        load_clip_frames(path, 16, cache_dir=tmp_path / "cache", limits=four)
    assert build_cache([path], 16, max_frames=4, progress=False, limits=four).frames.shape == (4, 1, 16, 16)
    assert load_clip_frames(path, 16, cache_dir=tmp_path / "cache").shape == (12, 1, 16, 16)  # defaults


def test_resizing_in_steps_gives_the_same_frames(monkeypatch):
    frames = np.random.default_rng(0).integers(0, 256, (7, 40, 56, 3), dtype=np.uint8)
    whole = cache_module.resize_frames(frames, 24)
    monkeypatch.setattr(cache_module, "_RESIZE_PIXELS", 2 * 40 * 56 * 3)  # two frames a step
    assert np.array_equal(cache_module.resize_frames(frames, 24), whole)
    assert whole.shape == (7, 3, 24, 24)


# ---------------------------------------------------------------- the CLI: one sentence, exit 2, little memory


@pytest.fixture(scope="module")
def run_dir(module_tmp):
    """A one-step run with a classifier, trained in-process (a few seconds)."""
    from hico.train import train

    base = module_tmp("limits")
    data = write_class_dataset(base / "data", per_class=3, frames=4, size=32)
    cfg = config.load(None, [f"data.root={data}", "data.size=32", "train.batch_size=4", "train.max_steps=1",
                             "train.warmup_epochs=0", "device=cpu", "data.cache_dir=" + str(base / "cache")])
    train(cfg, base / "run", progress=False)
    return base / "run"


# Runs `python -m hico ARGS` as a grandchild and prints its peak RSS. Linux counts the memory of
# the process a child was forked from into the child's peak, so the child is forked from this
# small wrapper rather than from the test process (which holds torch, and perhaps an app).
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.executable, [sys.executable, "-m", "hico", *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status) & 255)
"""


def run_measured(args: list[str]) -> tuple[int, str, int]:
    """(exit status, stderr, peak RSS in bytes) of `python -m hico ARGS` (ru_maxrss, KB on Linux)."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)
    return done.returncode, done.stderr, int(done.stdout.split()[-1]) * 1024


BOMBS = {
    "h264": (lambda d: write_black_h264(d / "bomb.mp4", 4096, 4096, 20), "data.max_clip_pixels (300 million)"),
    "png": (lambda d: write_png_bomb(d / "bomb.png", 16000, 10000), "data.max_frame_pixels (25 million)"),
    "rle-dicom": (lambda d: write_rle_dicom_bomb(d / "bomb.dcm", 16384), "data.max_frame_pixels (25 million)"),
    "zeros-dcm": (lambda d: write_zeros(d / "x.dcm"), "it is not a DICOM file"),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_predict_cli_refuses_each_bomb_in_one_sentence_and_little_memory(tmp_path, run_dir, bomb):
    make, sentence = BOMBS[bomb]
    path = make(tmp_path)
    status, stderr, peak = run_measured(["predict", str(run_dir), str(path)])
    assert status == 2, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    assert str(path) in stderr and sentence in stderr
    assert peak < 1 << 30, f"peak RSS {peak / 2**20:.0f} MB"  # decoding any of these took 9.9 to 16 GB
