"""The out-of-distribution evaluation set: clips a model trained on synthetic ultrasound must flag.

Every case is built on this machine from files that installed packages ship (no download):

- `real`: the ultrasound DICOMs in pydicom's test data, as they are and as users bring them:
  a GE power-Doppler lymph node in two views (JPEG 2000 and uncompressed RGB), a Philips
  obstetric screen (palette colour, a text banner at the top), a 30-frame cardiac cine (JPEG,
  YBR) and a tiny echo still; the cine re-encoded as mp4, avi, mov, webm and mkv, every still
  written as PNG and JPEG, the imaging sector cropped out without its text (an anonymised
  export), and mirrored.
- `modality`: CT, MR (one with a graphics overlay) and nuclear-medicine images from pydicom's test
  data; `natural`: photographs shipped with Gradio and scikit-learn.
- `synthetic`: edits of unseen synthetic clips that no longer look like them: noise, inverted
  intensities, upside down, colour Doppler painted into the sector, dual and quad views, a
  text-only screen, a grey ramp, moving squares.

`cases(in_distribution, workdir)` returns them as `Case`s; the in-distribution clips are the
caller's (held-out and unseen-seed synthetic clips). Video re-encodings are written to and read
back from `workdir` through `hico.io.read_clip`, the reader Diagnose uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REAL_DICOMS = {  # pydicom test file -> what it is
    "examples_jpeg2k.dcm": "GE lymph node, power Doppler, dual view (JPEG 2000)",
    "examples_rgb_color.dcm": "GE lymph node, power Doppler, dual view (RGB)",
    "examples_palette.dcm": "Philips obstetric screen, text banner (palette colour)",
    "examples_ybr_color.dcm": "cardiac cine, 30 frames (JPEG, YBR)",
    "ExplVR_BigEnd.dcm": "echo still, 80 x 60 (big endian)",
}
OTHER_MODALITIES = {
    "CT_small.dcm": "CT", "693_J2KI.dcm": "CT (JPEG 2000)", "MR_small.dcm": "MR",
    "examples_overlay.dcm": "MR with an overlay", "JPEG2000.dcm": "NM (JPEG 2000)",
}
VIDEO_FORMATS = {"mp4": "libx264", "avi": "mpeg4", "mov": "libx264", "webm": "libvpx-vp9", "mkv": "libx264"}


@dataclass(frozen=True)
class Case:
    """name; kind: real | modality | natural | synthetic | in-distribution; frames: T x H x W x C uint8."""

    name: str
    kind: str
    frames: np.ndarray


def pydicom_file(name: str) -> Path:
    """A file of pydicom's own test data (installed with it; nothing is downloaded)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files" / name


def natural_images() -> list[Path]:
    """Photographs installed with Gradio and scikit-learn."""
    import gradio
    import sklearn

    found = [Path(sklearn.__file__).parent / "datasets" / "images" / f for f in ("china.jpg", "flower.jpg")]
    found += [Path(gradio.__file__).parent / "media_assets" / "images" / f for f in ("cheetah.jpg", "lion.jpg", "tower.jpg")]
    return [p for p in found if p.is_file()]


def real_cases(workdir: Path) -> list[Case]:
    """Real scanner files and the ways users bring them (see the module docstring)."""
    from hico.io import read_clip

    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, what in REAL_DICOMS.items():
        clip = read_clip(pydicom_file(name))
        stem = Path(name).stem
        out.append(Case(f"{stem} ({what})", "real", clip))
        if len(clip) > 1:
            for suffix in VIDEO_FORMATS:
                out.append(Case(f"{stem}.{suffix}", "real", read_clip(write_video(workdir / f"{stem}.{suffix}", clip))))
        for suffix in ("png", "jpg"):
            out.append(Case(f"{stem} frame.{suffix}", "real", read_clip(write_still(workdir / f"{stem}.{suffix}", clip[0]))))
        crop = sector_crop(clip)
        if crop is not None:
            out.append(Case(f"{stem} sector only", "real", crop))
        out.append(Case(f"{stem} mirrored", "real", np.ascontiguousarray(clip[:, :, ::-1])))
    return out


def other_cases() -> list[Case]:
    from hico.io import read_clip

    out = [Case(f"{Path(n).stem} ({what})", "modality", read_clip(pydicom_file(n))) for n, what in OTHER_MODALITIES.items()]
    out += [Case(p.stem, "natural", read_clip(p)) for p in natural_images()]
    return out


def synthetic_cases(clips: list[np.ndarray], seed: int = 0) -> list[Case]:
    """Edits of in-distribution clips (each T x H x W x C uint8, same size) that are no longer like them."""
    rng = np.random.default_rng(seed)
    a, b, c, d = (gray3(clips[i % len(clips)]) for i in range(4))
    t, h, w, _ = a.shape
    out = [
        Case("uniform noise", "synthetic", rng.integers(0, 256, a.shape, dtype=np.uint8)),
        Case("gaussian noise", "synthetic", np.clip(rng.normal(100, 50, a.shape), 0, 255).astype(np.uint8)),
        Case("inverted intensities", "synthetic", 255 - a),
        Case("inverted, second clip", "synthetic", 255 - b),
        Case("upside down", "synthetic", np.ascontiguousarray(a[:, ::-1])),
        Case("colour Doppler", "synthetic", paint_doppler(a, rng)),
        Case("dual view", "synthetic", np.concatenate([a, b], axis=2)),
        Case("quad view", "synthetic", np.concatenate([np.concatenate([a, b], 2), np.concatenate([c, d], 2)], 1)),
        Case("text-only screen", "synthetic", text_screen(t, h, w)),
        Case("grey ramp", "synthetic", np.broadcast_to(np.linspace(0, 255, w, dtype=np.uint8)[None, None, :, None],
                                                       (t, h, w, 3)).copy()),
        Case("moving squares", "synthetic", moving_squares(t, h, w)),
    ]
    return out


def cases(workdir: str | os.PathLike, in_distribution: list[np.ndarray]) -> list[Case]:
    """Every out-of-distribution case (real, other modalities, natural, synthetic edits of the given clips)."""
    return real_cases(Path(workdir)) + other_cases() + synthetic_cases(in_distribution)


# ---- building blocks ---------------------------------------------------------------------------
def gray3(clip: np.ndarray) -> np.ndarray:
    return np.repeat(clip, 3, axis=-1) if clip.shape[-1] == 1 else clip


def write_video(path: Path, clip: np.ndarray, fps: int = 15) -> Path:
    """Encode a clip with the codec usual for its container (VIDEO_FORMATS), as a scanner export would."""
    import av

    clip = gray3(clip)[:, : clip.shape[1] // 2 * 2, : clip.shape[2] // 2 * 2]
    codec = VIDEO_FORMATS[path.suffix[1:]]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        for frame in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_still(path: Path, frame: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame).save(path, quality=90)
    return path


def sector_crop(clip: np.ndarray) -> np.ndarray | None:
    """The bounding box of the largest imaging region hico.screen finds, cropped (no text around it)."""
    from hico.screen import detect_screen

    mask = detect_screen(clip)
    if mask.method == "none":
        return None
    rows, cols = np.flatnonzero(mask.sector.any(axis=1)), np.flatnonzero(mask.sector.any(axis=0))
    crop = clip[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return np.ascontiguousarray(crop) if min(crop.shape[1:3]) >= 32 else None


def paint_doppler(clip: np.ndarray, rng) -> np.ndarray:
    """A red-to-yellow flow blob over a third of the frame's middle, moving a little each frame."""
    t, h, w, _ = clip.shape
    out = clip.copy()
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(t):
        cy, cx = h * (0.5 + 0.05 * np.sin(i)), w * (0.5 + 0.05 * np.cos(i))
        blob = np.exp(-(((yy - cy) / (0.18 * h)) ** 2 + ((xx - cx) / (0.15 * w)) ** 2))
        flow = (blob > 0.3) & (rng.random((h, w)) < 0.8)
        out[i][flow] = np.stack([np.full(flow.sum(), 230), (200 * blob[flow]).astype(np.uint8),
                                 np.full(flow.sum(), 20)], axis=1).astype(np.uint8)
    return out


def text_screen(t: int, h: int, w: int) -> np.ndarray:
    """A black screen with lines of white text and a changing clock: a scanner's menu or report page."""
    from PIL import Image, ImageDraw

    frames = []
    for i in range(t):
        image = Image.new("RGB", (w, h))
        draw = ImageDraw.Draw(image)
        for row, y in enumerate(range(4, h - 10, max(10, h // 12))):
            draw.text((4, y), f"PATIENT {row:02d}  ABD  GEN  12:{i:02d}  MI 0.{row}", fill=(235, 235, 235))
        frames.append(np.asarray(image))
    return np.stack(frames)


def moving_squares(t: int, h: int, w: int) -> np.ndarray:
    out = np.zeros((t, h, w, 3), np.uint8)
    s = max(4, min(h, w) // 6)
    for i in range(t):
        for k in range(3):
            y, x = (7 * i + 23 * k) % (h - s), (11 * i + 31 * k) % (w - s)
            out[i, y:y + s, x:x + s] = 200
    return out
