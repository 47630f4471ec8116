"""hico.io: every clip format reads back to the right uint8 (T, H, W, C) values; mp4 writing round-trips."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MPEG4HP41,
    RLELossless,
    generate_uid,
)

import hico.io.video as video_module
from hico.errors import HiCoError
from hico.io import (
    GRAY_TOLERANCE,
    ClipLimits,
    clip_kind,
    is_dicom,
    natural_key,
    read_clip,
    read_clip_meta,
    read_dicom_meta,
    write_mp4,
)
from hico.io.pixels import finish_clip, frame_indices

RED = (220, 20, 30)


# ---------------------------------------------------------------- synthetic clips


def gray_clip(frames: int = 8, height: int = 48, width: int = 64) -> np.ndarray:
    """(T, H, W) uint8: a horizontal gradient with a bright square moving right."""
    x = np.linspace(30, 200, width, dtype=np.float32)
    clip = np.repeat(np.tile(x, (height, 1))[None], frames, axis=0)
    for t in range(frames):
        clip[t, 12:24, 4 + 4 * t : 16 + 4 * t] = 250
    return clip.round().astype(np.uint8)


def coded_clip(frames: int = 12, height: int = 32, width: int = 32) -> np.ndarray:
    """(T, H, W) uint8 where frame t is flat at level code(t), so frames can be told apart."""
    return np.stack([np.full((height, width), code(t), np.uint8) for t in range(frames)])


def code(t: int) -> int:
    return 16 + 19 * t


def decode_codes(clip: np.ndarray) -> list[int]:
    """The frame index each frame of a coded clip carries."""
    return [int(round((float(frame.mean()) - 16) / 19)) for frame in clip]


def colour_clip(frames: int = 6, height: int = 32, width: int = 64) -> np.ndarray:
    """(T, H, W, 3) uint8: a red block on the left, a gray gradient elsewhere."""
    clip = np.repeat(gray_clip(frames, height, width)[..., None], 3, axis=-1)
    clip[:, 4:20, 2:18] = RED
    return clip


def write_with_pyav(path: Path, frames: np.ndarray, codec: str, pix_fmt: str = "yuv420p", **options) -> Path:
    """Encode (T, H, W) gray or (T, H, W, 3) RGB frames with any PyAV codec/container."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {k: str(v) for k, v in options.items()}
        for array in frames:
            rgb = array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=-1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# ---------------------------------------------------------------- mp4 writing and video reading


def test_write_mp4_gray_round_trip(tmp_path):
    frames = gray_clip()
    path = write_mp4(tmp_path / "gray.mp4", frames, fps=12.5)
    assert path == tmp_path / "gray.mp4"
    clip = read_clip(path)
    assert clip.dtype == np.uint8 and clip.shape == (8, 48, 64, 1)
    assert mean_abs_error(clip[..., 0], frames) < 6
    # The moving square is where it was written, frame by frame.
    assert clip[5, 14:22, 26:34].mean() > 230
    assert read_clip_meta(path) | {"codec": None} == {
        "kind": "video", "frames": 8, "height": 48, "width": 64, "fps": 12.5, "codec": None
    }


def test_write_mp4_colour_round_trip(tmp_path):
    frames = colour_clip()
    clip = read_clip(write_mp4(tmp_path / "colour.mp4", frames))
    assert clip.shape == (6, 32, 64, 3)
    red = clip[:, 8:16, 6:14].reshape(-1, 3).mean(axis=0)
    assert red[0] > 190 and red[1] < 50 and red[2] < 60
    assert mean_abs_error(clip, frames) < 6


def test_write_mp4_accepts_channel_axis_and_streams_from_the_start(tmp_path):
    frames = gray_clip(5)[..., None]
    path = write_mp4(tmp_path / "sub" / "c1.mp4", frames)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart: index before media
    assert [p.name for p in path.parent.iterdir()] == ["c1.mp4"]  # no temp file left
    assert read_clip(path).shape == (5, 48, 64, 1)


def test_write_mp4_pads_odd_sizes_by_edge_replication(tmp_path):
    frames = colour_clip(5, height=31, width=45)
    clip = read_clip(write_mp4(tmp_path / "odd.mp4", frames))
    assert clip.shape == (5, 32, 46, 3)
    assert mean_abs_error(clip[:, :31, :45], frames) < 6
    assert mean_abs_error(clip[:, 31, :45], frames[:, 30]) < 6  # replicated last row


def test_write_mp4_mpeg4_fallback_encoder_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(video_module, "h264_encoder", lambda: "mpeg4")
    path = write_mp4(tmp_path / "m4.mp4", gray_clip(6))
    assert read_clip_meta(path)["codec"] == "mpeg4"
    assert mean_abs_error(read_clip(path)[..., 0], gray_clip(6)) < 8


def test_write_mp4_rejects_float_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "f.mp4", np.zeros((2, 8, 8), np.float32))


CONTAINERS = [
    ("clip.avi", "mpeg4", "yuv420p"),
    ("clip.avi", "mjpeg", "yuvj420p"),
    ("clip.mkv", "libx264", "yuv420p"),
    ("clip.webm", "libvpx", "yuv420p"),
    ("clip.mov", "mjpeg", "yuvj420p"),
]


@pytest.mark.parametrize(("name", "codec", "pix_fmt"), CONTAINERS, ids=[f"{n}-{c}" for n, c, _ in CONTAINERS])
def test_other_containers_read_back_every_frame(tmp_path, name, codec, pix_fmt):
    frames = coded_clip(9)
    path = write_with_pyav(tmp_path / name, frames, codec, pix_fmt)
    assert clip_kind(path) == "video"
    clip = read_clip(path)
    # Gray survives each codec's chroma noise (MPEG-4 part 2 leaves up to 4 levels).
    assert clip.shape == (9, 32, 32, 1)
    assert decode_codes(clip) == list(range(9))
    assert read_clip_meta(path)["frames"] == 9


def test_pyav_fallback_gives_the_same_frames(tmp_path, monkeypatch):
    path = write_mp4(tmp_path / "a.mp4", gray_clip())
    with_decord = read_clip(path)

    def broken(*args, **kwargs):
        raise RuntimeError("decord exploded")

    monkeypatch.setattr(video_module, "_read_with_decord", broken)
    with_pyav = read_clip(path)
    assert with_pyav.shape == with_decord.shape
    assert np.abs(with_pyav.astype(int) - with_decord).max() <= 1
    assert np.array_equal(read_clip(path, max_frames=3), with_decord[[0, 4, 7]])


def test_missing_decord_falls_back_to_pyav(tmp_path, monkeypatch):
    path = write_with_pyav(tmp_path / "c.mkv", coded_clip(7), "libx264")
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` fail
    assert decode_codes(read_clip(path)) == list(range(7))


def test_corrupt_video_names_the_file_and_both_readers(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(HiCoError, match="corrupt.mp4") as caught:
        read_clip(path)
    assert "decord" in str(caught.value) and "PyAV" in str(caught.value)
    with pytest.raises(HiCoError, match="corrupt.mp4"):
        read_clip_meta(path)


def test_video_without_frames_is_an_error(tmp_path):
    path = tmp_path / "empty.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 16
    with pytest.raises(HiCoError, match="empty.mp4"):
        read_clip(path)


@pytest.mark.parametrize("reader", ["decord", "pyav"])
@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm"])
def test_max_frames_takes_evenly_spaced_frames(tmp_path, monkeypatch, reader, name):
    frames = coded_clip(12)
    path = write_mp4(tmp_path / name, frames) if name.endswith("mp4") else write_with_pyav(tmp_path / name, frames, "libvpx")
    if reader == "pyav":
        monkeypatch.setattr(video_module, "_read_with_decord", lambda *a: 1 / 0)
    # np.linspace(0, 11, 4) rounds to 0, 4, 7, 11
    assert decode_codes(read_clip(path, max_frames=4)) == [0, 4, 7, 11]
    assert decode_codes(read_clip(path, max_frames=1)) == [0]
    assert decode_codes(read_clip(path, max_frames=50)) == list(range(12))


def test_pyav_reselects_when_the_container_frame_count_is_wrong(tmp_path, monkeypatch):
    path = write_mp4(tmp_path / "a.mp4", coded_clip(12))
    monkeypatch.setattr(video_module, "_read_with_decord", lambda *a: 1 / 0)
    monkeypatch.setattr(video_module, "_count_frames", lambda source: 20)  # a lying header
    assert decode_codes(read_clip(path, max_frames=4)) == [0, 4, 7, 11]


def test_widths_decord_cannot_copy_are_read_by_pyav(tmp_path):
    # decord 0.6 raises "DECORDArrayCopyFromTo: The size must exactly match" for
    # widths such as 16, 24 and 48; the PyAV fallback must take over silently.
    frames = colour_clip(4, height=16, width=48)
    path = write_mp4(tmp_path / "w48.mp4", frames)
    with pytest.raises(Exception, match="size must exactly match"):
        video_module._read_with_decord(str(path), None, ClipLimits(), 16, 48)
    clip = read_clip(path)
    assert clip.shape == (4, 16, 48, 3) and mean_abs_error(clip, frames) < 6


def test_frame_indices_are_even_and_unique():
    assert frame_indices(12, 4).tolist() == [0, 4, 7, 11]
    assert frame_indices(5, None).tolist() == [0, 1, 2, 3, 4]
    picked = frame_indices(101, 100)
    assert len(set(picked.tolist())) == 100 and picked[0] == 0 and picked[-1] == 100


def test_max_frames_must_be_positive(tmp_path):
    path = write_mp4(tmp_path / "a.mp4", gray_clip(3))
    with pytest.raises(ValueError):
        read_clip(path, max_frames=0)


# ---------------------------------------------------------------- gray detection


def test_gray_detection_tolerance():
    base = np.repeat(gray_clip(3)[..., None], 3, axis=-1).astype(np.int16)
    jitter = np.random.default_rng(1).integers(-GRAY_TOLERANCE // 2, GRAY_TOLERANCE // 2 + 1, base.shape)
    noisy = np.clip(base + jitter, 0, 255).astype(np.uint8)
    gray = finish_clip(noisy)
    assert gray.shape == (3, 48, 64, 1)
    assert np.abs(gray[..., 0].astype(int) - gray_clip(3)).max() <= GRAY_TOLERANCE // 2
    tinted = base.astype(np.uint8).copy()
    tinted[1, 5, 5] = (100, 100, 100 + GRAY_TOLERANCE + 1)  # one coloured pixel is enough
    assert finish_clip(tinted).shape == (3, 48, 64, 3)


# ---------------------------------------------------------------- images and frame folders


def test_frame_folder_in_natural_order(tmp_path):
    folder = tmp_path / "case01"
    folder.mkdir()
    frames = coded_clip(12, 24, 40)
    for t in [5, 0, 11, 9, 1, 10, 2, 3, 8, 4, 7, 6]:
        Image.fromarray(frames[t]).save(folder / f"frame{t + 1}.png")
    (folder / "._frame1.png").write_bytes(b"macOS resource fork, not an image")
    (folder / "notes.txt").write_text("not a frame")
    assert clip_kind(folder) == "frames"
    clip = read_clip(folder)
    assert clip.shape == (12, 24, 40, 1)
    assert decode_codes(clip) == list(range(12))
    assert decode_codes(read_clip(folder, max_frames=4)) == [0, 4, 7, 11]
    assert read_clip_meta(folder) == {"kind": "frames", "frames": 12, "height": 24, "width": 40, "fps": None}


def test_natural_key_orders_numbers_by_value():
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame2b.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "Frame1.png", "frame2.png", "frame2b.png", "frame10.png"]


def test_frame_folder_with_mixed_sizes_names_the_odd_frame(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(1, 4):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / f"f{i}.png")
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(folder / "f4.png")
    with pytest.raises(HiCoError, match=r"mixed.*f4\.png"):
        read_clip(folder)


def test_folder_without_images_is_not_a_clip(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert clip_kind(tmp_path) is None
    with pytest.raises(HiCoError, match="not a video"):
        read_clip(tmp_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_still_gray_image_is_a_one_frame_clip(tmp_path, suffix):
    image = gray_clip(1, 32, 48)[0]
    path = tmp_path / f"still{suffix}"
    Image.fromarray(image).save(path)
    clip = read_clip(path)
    assert clip_kind(path) == "image" and clip.shape == (1, 32, 48, 1)
    assert mean_abs_error(clip[0, ..., 0], image) < (3 if suffix == ".jpg" else 0.01)
    assert read_clip_meta(path)["frames"] == 1


def test_still_colour_images_rgb_rgba_and_palette(tmp_path):
    rgb = colour_clip(1)[0]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).quantize(16).save(tmp_path / "pal.png")
    for name in ["rgb.png", "rgba.png", "pal.png"]:
        clip = read_clip(tmp_path / name)
        assert clip.shape == (1, 32, 64, 3), name
        assert np.abs(clip[0, 10, 10].astype(int) - RED).max() <= 12, name


def test_16_bit_png_is_scaled_by_min_max(tmp_path):
    image = np.linspace(1000, 4000, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(image).save(path)
    clip = read_clip(path)
    assert clip.shape == (1, 32, 32, 1)
    assert clip[0, 0, 0, 0] == 0 and clip[0, -1, -1, 0] == 255
    assert abs(int(clip[0, 16, 0, 0]) - round((image[16, 0] - 1000) / 3000 * 255)) <= 1


def test_unknown_and_missing_paths_are_user_errors(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    assert clip_kind(tmp_path / "a.txt") is None
    with pytest.raises(HiCoError, match="a.txt"):
        read_clip(tmp_path / "a.txt")
    with pytest.raises(HiCoError, match="nope.mp4"):
        read_clip(tmp_path / "nope.mp4")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(HiCoError, match="bad.png"):
        read_clip(tmp_path / "bad.png")


# ---------------------------------------------------------------- DICOM


def make_dicom(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    frames: int | None = None,
    bits_stored: int | None = None,
    planar: int = 0,
    **elements,
) -> Dataset:
    """An uncompressed US dataset holding `pixels`: (H, W[, 3]) or (T, H, W[, 3]) when `frames` is set."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.3.1")  # US Multi-frame Image
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    colour = pixels.shape[-1] == 3 and photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    frame_shape = pixels.shape[1:] if frames else pixels.shape
    ds.Rows, ds.Columns = frame_shape[0], frame_shape[1]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = planar
    if frames:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    stored = np.moveaxis(pixels, -1, -3) if colour and planar == 1 else pixels
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def encapsulated(ds: Dataset, syntax: UID, fragments: list[bytes]) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    return ds


def test_dicom_monochrome2_8_bit(tmp_path):
    image = gray_clip(1, 24, 32)[0]
    path = save(make_dicom(image), tmp_path / "m2.dcm")
    clip = read_clip(path)
    assert clip_kind(path) == "dicom" and clip.shape == (1, 24, 32, 1)
    assert np.array_equal(clip[0, ..., 0], image)


def test_dicom_monochrome1_is_inverted(tmp_path):
    image = gray_clip(1, 24, 32)[0]
    clip = read_clip(save(make_dicom(image, "MONOCHROME1"), tmp_path / "m1.dcm"))
    assert np.array_equal(clip[0, ..., 0], 255 - image)


def test_dicom_12_bit_scaled_by_clip_min_max(tmp_path):
    cine = np.stack([np.full((8, 8), v, np.uint16) for v in (100, 1100, 2100, 4095)])
    cine[0, 0, 0] = 3000  # min/max are taken over the whole clip, not per frame
    clip = read_clip(save(make_dicom(cine, frames=4, bits_stored=12), tmp_path / "d12.dcm"))
    expected = np.rint((np.array([100, 1100, 2100, 4095]) - 100) / 3995 * 255)
    assert clip[:, 4, 4, 0].tolist() == expected.tolist()
    assert clip[0, 0, 0, 0] == round((3000 - 100) / 3995 * 255)


def test_dicom_12_bit_uses_the_window_when_present(tmp_path):
    image = np.array([[0, 1000, 1500, 2000, 2047, 3000, 4095, 500]], np.uint16).repeat(4, axis=0)
    ds = make_dicom(image, bits_stored=12, WindowCenter=1500, WindowWidth=1001)
    clip = read_clip(save(ds, tmp_path / "win.dcm"))
    # window [999.5, 1999.5]: below -> 0, above -> 255, centre -> mid gray
    assert clip[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255, 255, 255, 0]


def test_dicom_cine_frames_values_meta_and_max_frames(tmp_path):
    cine = coded_clip(6, 16, 24)
    path = save(make_dicom(cine, frames=6, FrameTime=40.0), tmp_path / "cine.dcm")
    clip = read_clip(path)
    assert clip.shape == (6, 16, 24, 1)
    assert clip[:, 3, 3, 0].tolist() == [code(t) for t in range(6)]
    assert decode_codes(read_clip(path, max_frames=3)) == [0, 2, 5]
    meta = read_clip_meta(path)
    assert (meta["frames"], meta["height"], meta["width"], meta["fps"]) == (6, 16, 24, 25.0)
    assert read_dicom_meta(path)["photometric_interpretation"] == "MONOCHROME2"


@pytest.mark.parametrize("planar", [0, 1])
def test_dicom_rgb_planar_configurations(tmp_path, planar):
    rgb = colour_clip(2, 16, 24)
    clip = read_clip(save(make_dicom(rgb, "RGB", frames=2, planar=planar), tmp_path / "rgb.dcm"))
    assert clip.shape == (2, 16, 24, 3)
    assert np.array_equal(clip, rgb)


def test_dicom_rgb_with_equal_channels_is_gray(tmp_path):
    rgb = np.repeat(gray_clip(1, 16, 24)[0][..., None], 3, axis=-1)
    clip = read_clip(save(make_dicom(rgb, "RGB"), tmp_path / "g.dcm"))
    assert clip.shape == (1, 16, 24, 1) and np.array_equal(clip[0, ..., 0], rgb[..., 0])


def test_dicom_ybr_full_comes_out_as_rgb(tmp_path):
    rgb = colour_clip(1, 16, 24)[0]
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    clip = read_clip(save(make_dicom(ybr, "YBR_FULL"), tmp_path / "ybr.dcm"))
    assert clip.shape == (1, 16, 24, 3)
    assert np.abs(clip[0, 8, 8].astype(int) - RED).max() <= 2
    assert np.abs(clip[0].astype(int) - rgb).max() <= 2


def test_dicom_palette_color_applies_the_lut(tmp_path):
    indices = np.array([[0, 1], [2, 3]], np.uint8).repeat(4, axis=0).repeat(4, axis=1)
    ds = make_dicom(indices, "PALETTE COLOR")
    lut = {"Red": (255, 0, 0, 128), "Green": (0, 255, 0, 128), "Blue": (0, 0, 255, 128)}
    for colour, entries in lut.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (np.array(entries, np.uint16) * 257).tobytes())
    clip = read_clip(save(ds, tmp_path / "pal.dcm"))
    assert clip.shape == (1, 8, 8, 3)
    assert [clip[0, y, x].tolist() for y, x in [(0, 0), (0, 5), (5, 0), (5, 5)]] == [
        [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]
    ]


def test_dicom_rle_lossless(tmp_path):
    rgb = colour_clip(3, 16, 24)
    ds = make_dicom(rgb, "RGB", frames=3)
    ds.compress(RLELossless, rgb)
    path = save(ds, tmp_path / "rle.dcm")
    assert read_dicom_meta(path)["transfer_syntax"] == RLELossless
    assert np.array_equal(read_clip(path), rgb)


def test_dicom_jpeg2000_lossless(tmp_path):
    cine = (np.arange(3 * 32 * 32).reshape(3, 32, 32) % 251).astype(np.uint8)  # openjpeg needs >= 32 px
    ds = make_dicom(cine, frames=3)
    ds.compress(JPEG2000Lossless, cine)
    assert np.array_equal(read_clip(save(ds, tmp_path / "j2k.dcm"))[..., 0], cine)


def jpeg_bytes(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_dicom_jpeg_baseline_colour_and_gray(tmp_path):
    rgb = colour_clip(2, 16, 24)
    ds = encapsulated(make_dicom(rgb, "YBR_FULL_422", frames=2), JPEGBaseline8Bit, [jpeg_bytes(f) for f in rgb])
    clip = read_clip(save(ds, tmp_path / "jpeg_rgb.dcm"))
    assert clip.shape == (2, 16, 24, 3)
    assert np.abs(clip[:, 8, 8].astype(int) - RED).max() <= 8
    assert mean_abs_error(clip, rgb) < 6

    gray = coded_clip(3, 16, 16)
    ds = encapsulated(make_dicom(gray, frames=3), JPEGBaseline8Bit, [jpeg_bytes(f) for f in gray])
    clip = read_clip(save(ds, tmp_path / "jpeg_gray.dcm"))
    assert clip.shape == (3, 16, 16, 1) and decode_codes(clip) == [0, 1, 2]


def test_dicom_h264_video_transfer_syntax(tmp_path):
    stream = io.BytesIO()
    with av.open(stream, "w", format="h264") as container:
        encoder = container.add_stream("libx264", rate=10)
        encoder.width = encoder.height = 16
        encoder.pix_fmt = "yuv420p"
        for frame in coded_clip(7, 16, 16):
            container.mux(encoder.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(encoder.encode(None))
    ds = make_dicom(np.zeros((7, 16, 16, 3), np.uint8), "YBR_PARTIAL_420", frames=7)
    path = save(encapsulated(ds, MPEG4HP41, [stream.getvalue()]), tmp_path / "h264.dcm")
    assert decode_codes(read_clip(path)) == list(range(7))
    assert decode_codes(read_clip(path, max_frames=3)) == [0, 3, 6]


def test_dicom_without_pixel_data_is_a_user_error(tmp_path):
    ds = make_dicom(np.zeros((4, 4), np.uint8))
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.11")
    path = save(ds, tmp_path / "report.dcm")
    with pytest.raises(HiCoError, match=r"report\.dcm.*no pixel data"):
        read_clip(path)
    with pytest.raises(HiCoError, match="no pixel data"):
        read_dicom_meta(path)


def test_dicom_with_undecodable_transfer_syntax_names_it(tmp_path):
    part2 = UID("1.2.840.10008.1.2.4.92")  # JPEG 2000 Part 2: no pydicom decoder
    ds = encapsulated(make_dicom(np.zeros((4, 4), np.uint8)), part2, [b"\xff\x4f\xff\x51"])
    with pytest.raises(HiCoError, match=r"p2\.dcm.*1\.2\.840\.10008\.1\.2\.4\.92"):
        read_clip(save(ds, tmp_path / "p2.dcm"))


def test_dicom_detected_by_magic_without_suffix(tmp_path):
    image = gray_clip(1, 8, 8)[0]
    path = save(make_dicom(image), tmp_path / "IM0001")
    assert is_dicom(path) and clip_kind(path) == "dicom"
    assert np.array_equal(read_clip(path)[0, ..., 0], image)
    (tmp_path / "README").write_text("x" * 200)
    assert not is_dicom(tmp_path / "README") and clip_kind(tmp_path / "README") is None
    save(make_dicom(image), tmp_path / "DICOMDIR")  # the index file of a DICOM CD is no clip
    assert clip_kind(tmp_path / "DICOMDIR") is None


def test_dicom_without_preamble_or_meta_header(tmp_path):
    image = gray_clip(1, 8, 8)[0]
    ds = make_dicom(image)
    del ds.file_meta  # old-style file: bare implicit-VR dataset, no "DICM" marker
    path = tmp_path / "old.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    assert np.array_equal(read_clip(path)[0, ..., 0], image)
    assert read_clip_meta(path)["transfer_syntax"] == "1.2.840.10008.1.2"


def test_garbage_with_dicom_suffix_is_a_user_error(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(np.random.default_rng(2).bytes(3000))
    with pytest.raises(HiCoError, match="junk.dcm"):
        read_clip(path)


def test_dicom_meta_reads_cine_rate_without_pixels(tmp_path):
    ds = make_dicom(coded_clip(4, 8, 8), frames=4, CineRate=30)
    meta = read_dicom_meta(save(ds, tmp_path / "c.dcm"))
    assert (meta["frames"], meta["rows"], meta["columns"], meta["fps"]) == (4, 8, 8, 30.0)
    assert pydicom.dcmread(tmp_path / "c.dcm").NumberOfFrames == 4
