"""Procedural B-mode-like ultrasound clips, labelled, with classes that differ at different scales.

No real ultrasound can be downloaded where this project runs, so first runs and tests use
these clips. Each clip is made the way a scanner makes an image:

1. Anatomy is described as echogenicity (dB), attenuation (dB/cm/MHz) and presence maps on
   a polar (depth along the beam, lateral) grid, in *layers* that move independently: the
   body wall moves with the probe; the organ below moves with breathing and slides under it
   (lung sliding); a compressed lung flaps inside an effusion.
2. Speckle is the magnitude of a complex Gaussian scatterer field convolved with an
   anisotropic point-spread function (longer laterally than axially). The field is kept in
   the Fourier domain, so moving it with its layer is an exact phase ramp, and it
   decorrelates gradually from frame to frame (``s_t = rho s_{t-1} + sqrt(1 - rho^2) n_t``).
   On the convex probe's polar grid a fixed lateral blur in angle becomes a lateral blur in
   centimetres that grows with depth, as on a real scanner.
3. Attenuation is integrated along each beam (so ribs cast shadows and fluid enhances what
   lies behind it), time-gain compensation corrects it imperfectly, a focal zone is a little
   brighter, electronic noise shows where the signal is weak, and the envelope is
   log-compressed to 8 bits.
4. The polar image is scan-converted to a convex fan (or a linear rectangle), and screen
   overlays with random content (text, frame counter, depth scale, grey bar) are burned in
   with the same style for every class.

Which scale separates the classes is in :data:`CLASS_SCALES`: the liver grades differ in
texture (local / medium), the lung patterns in the arrangement of large structures
(medium / global).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree

from hico.errors import HiCoError

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = (
    "lung_a_lines",
    "lung_b_lines",
    "lung_consolidation",
    "lung_effusion",
    "liver_f0",
    "liver_f1",
    "liver_f2",
    "liver_f3",
)

# The scale at which each class differs from its siblings (the reason for a multi-scale model).
CLASS_SCALES: dict[str, str] = {
    "lung_a_lines": "global",  # horizontal repetitions of the pleura across the whole depth
    "lung_b_lines": "medium",  # a few narrow vertical comet tails from pleura to bottom
    "lung_consolidation": "medium",  # a tissue-like patch with branching bright dots under the pleura
    "lung_effusion": "global",  # a large black fluid region with a floating compressed lung
    "liver_f0": "local",  # fine homogeneous speckle
    "liver_f1": "local",  # slightly coarser texture, faint strands
    "liver_f2": "medium",  # coarse heterogeneous texture, partial fibrous septa
    "liver_f3": "medium",  # nodular: hypoechoic nodules framed by bright septa, bumpy capsule
}

MIN_SIZE = 32
_ASSUMED_FPS = 15.0  # motion speeds are set per second; render_clip has no frame rate of its own
_RENDER_MIN = 96  # smaller outputs are rendered at a multiple of their size and area-averaged
_OVERLAY_MIN = 360  # overlays are drawn at least this tall, then scaled to the render size
_LIVER_SEVERITY = {  # fibrosis severity drawn per clip; the ranges do not overlap
    "liver_f0": (0.0, 0.12),
    "liver_f1": (0.28, 0.45),
    "liver_f2": (0.55, 0.72),
    "liver_f3": (0.85, 1.0),
}
_POOL_MIN_PIXELS = 8_000_000  # below this much work, starting worker processes costs more than it saves
_ALPHA_SOFT = 0.6  # dB/cm/MHz of average soft tissue in the layers' units
_GENERATOR_VERSION = 1  # bump when the pictures change, so old dataset folders are not reused


# --------------------------------------------------------------------------------------------
# public API


@dataclass(frozen=True)
class SynthSample:
    """A rendered clip with what a test or a figure needs to know about it."""

    frames: np.ndarray  # uint8 (T, H, W)
    fan_mask: np.ndarray  # bool (H, W): pixels that show tissue (any coverage)
    overlay_mask: np.ndarray  # bool (H, W): pixels touched by the screen overlays
    label: str
    probe: str  # "convex" or "linear"
    params: dict = field(default_factory=dict)


def render_clip(
    label: str, frames: int = 16, size: int | tuple[int, int] = 128, seed: int = 0
) -> np.ndarray:
    """Render one synthetic B-mode clip of class ``label`` as uint8 (T, H, W), deterministic in ``seed``."""
    return render_sample(label, frames=frames, size=size, seed=seed).frames


def render_sample(
    label: str, frames: int = 16, size: int | tuple[int, int] = 128, seed: int = 0
) -> SynthSample:
    """Like :func:`render_clip`, and also return the fan and overlay masks and the drawn parameters."""
    if label not in CLASSES:
        raise HiCoError(f"Unknown synthetic class {label!r}; choose one of {', '.join(CLASSES)}.")
    frames = _check_int("frames", frames, 1)
    height, width = _check_size(size)
    rng = np.random.default_rng(_check_int("seed", seed, 0))

    scale = max(1, math.ceil(_RENDER_MIN / min(height, width)))
    render_hw = (height * scale, width * scale)
    organ = "lung" if label.startswith("lung") else "liver"
    probe = _draw_probe(rng, organ)
    layout = _draw_layout(probe, render_hw)
    grid_shape = _polar_shape(probe, layout)
    motion = _draw_motion(rng, probe, frames)
    builder = _LUNG_BUILDERS[label] if organ == "lung" else _build_liver
    layers_motion = _layer_motion(label, probe, motion, grid_shape)
    pad_y = int(math.ceil(max(np.abs(s[:, 0]).max() for s in layers_motion))) + 2
    pad_x = int(math.ceil(max(np.abs(s[:, 1]).max() for s in layers_motion))) + 2
    grid = _make_grid(probe, layout, grid_shape, pad_y, pad_x)
    image_params = _draw_imaging(rng, probe, grid)
    layers = builder(rng, grid, label, layers_motion)
    for layer in layers:  # echoes are blurred by the beam before speckle is formed on them
        layer.amp = ndimage.gaussian_filter(
            layer.amp, (0.7 * image_params.sigma_axial, 0.7 * image_params.sigma_lateral), mode="nearest")
    polar = _render_polar(rng, grid, layers, image_params, frames)
    conv = _scan_converter(probe, layout, grid_shape, render_hw)
    overlay = _Overlay(rng, probe, layout, render_hw, frames, image_params)

    out = np.empty((frames,) + render_hw, np.float32)
    for t in range(frames):
        img = conv(polar[t])
        np.maximum(img, overlay.frame(t), out=img)
        out[t] = img
    fan = conv.coverage > 0
    over = overlay.static > 0
    if scale > 1:
        out = out.reshape(frames, height, scale, width, scale).mean(axis=(2, 4))
        fan = fan.reshape(height, scale, width, scale).any(axis=(1, 3))
        over = over.reshape(height, scale, width, scale).any(axis=(1, 3)) | overlay.dynamic_mask(
            height, width, scale
        )
    else:
        over = over | overlay.dynamic_mask(height, width, 1)
    clip = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    params = {
        "depth_cm": round(probe.depth, 2),
        "freq_mhz": round(probe.freq, 2),
        "gain": image_params.gain,
        "dynamic_range_db": round(image_params.dyn_range, 1),
        "focus_cm": round(image_params.focus, 2),
    }
    return SynthSample(clip, fan, over, label, "convex" if probe.convex else "linear", params)


def write_dataset(
    out_dir,
    clips: int = 200,
    frames: int = 16,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    fps: float = 15.0,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write ``clips`` synthetic mp4 clips spread evenly over :data:`CLASSES`, a manifest and a README.

    Layout: ``out_dir/<class>/<class>_<index:04d>.mp4``, ``out_dir/manifest.csv`` (``path,label``,
    paths relative to ``out_dir``) and ``out_dir/README.txt``. Clip ``i`` has class
    ``CLASSES[i % len(CLASSES)]`` and a seed derived from ``(seed, i)``, so the files do not
    depend on ``workers``. A folder already written with the same parameters is left as it is.
    """
    clips = _check_int("clips", clips, 1)
    frames = _check_int("frames", frames, 1)
    height, width = _check_size(size)
    seed = _check_int("seed", seed, 0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (fps > 0 and math.isfinite(fps)):
        raise HiCoError(f"fps must be a positive number of frames per second, not {fps!r}.")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = _check_int("workers", workers, 1)

    out = Path(out_dir)
    signature = _dataset_signature(clips, frames, height, width, seed, float(fps))
    if out.exists() and not out.is_dir():
        raise HiCoError(f"Cannot write the synthetic dataset to {out}: it is a file, not a folder.")
    if out.is_dir() and any(out.iterdir()):
        if _same_dataset(out, signature, clips):
            log.info("Synthetic dataset in %s already made with these parameters; nothing to do.", out)
            return out
        raise HiCoError(
            f"Folder {out} is not empty and does not hold a complete synthetic dataset made with "
            "these parameters; choose an empty or new folder."
        )

    from hico.io import write_mp4  # noqa: F401  (fail before any work if the writer is missing)

    out.mkdir(parents=True, exist_ok=True)
    for name in CLASSES:
        (out / name).mkdir(exist_ok=True)
    jobs = [(out, i, frames, (height, width), seed, float(fps)) for i in range(clips)]
    rows: dict[int, tuple[str, str]] = {}
    bar = _progress(clips, progress)
    try:
        if workers > 1 and clips > workers and clips * frames * height * width >= _POOL_MIN_PIXELS:
            _write_parallel(jobs, workers, rows, bar)
        for job in jobs:  # everything when sequential; what a broken pool left otherwise
            if job[1] not in rows:
                rows[job[1]] = _write_one(job)
                bar.update(1)
    finally:
        bar.close()

    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows[i] for i in range(clips))
    # The README is written last: its presence marks a complete dataset.
    (out / "README.txt").write_text(_readme_text(signature, clips), encoding="utf-8")
    log.info("Wrote %d synthetic clips to %s", clips, out)
    return out


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` in a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


# --------------------------------------------------------------------------------------------
# dataset helpers


def _write_parallel(jobs, workers: int, rows: dict, bar) -> None:
    """Render and encode in worker processes; on a pool failure leave the rest to the caller."""
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: fork is unsafe from a process with threads (the app), and results do
    # not depend on the start method because every clip has its own seed.
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.isfile(main_file):
        return  # spawned workers re-import the main module, and this one has no file (stdin)
    ctx = multiprocessing.get_context("spawn")
    log.debug("Writing %d clips with %d worker processes.", len(jobs), workers)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_write_one, job): job[1] for job in jobs}
            for future in as_completed(futures):
                rows[futures[future]] = future.result()
                bar.update(1)
    except BrokenProcessPool as error:
        # Typically a main module that cannot be re-imported (code piped to python's stdin).
        log.warning("Worker processes failed (%s); writing the remaining clips in this process.", error)


def _write_one(job) -> tuple[str, str]:
    from hico.io import write_mp4

    out, index, frames, size, seed, fps = job
    label = CLASSES[index % len(CLASSES)]
    rel = f"{label}/{label}_{index:04d}.mp4"
    clip = render_clip(label, frames=frames, size=size, seed=clip_seed(seed, index))
    write_mp4(Path(out) / rel, clip, fps=fps)
    return rel, label


def _dataset_signature(clips, frames, height, width, seed, fps) -> str:
    return (
        f"parameters: clips={clips} frames={frames} size={height}x{width} seed={seed} "
        f"fps={fps:g} generator={_GENERATOR_VERSION}"
    )


def _readme_text(signature: str, clips: int) -> str:
    per = {name: len(range(i, clips, len(CLASSES))) for i, name in enumerate(CLASSES)}
    lines = [
        "Synthetic B-mode-like ultrasound clips made by hico.synth (HiCo). Not patient data.",
        "Each clip is procedurally rendered: speckle, attenuation, time-gain compensation, probe",
        "motion, breathing, scan conversion to a convex fan or a linear image, and burned-in",
        "screen overlays whose content is random and independent of the class.",
        "",
        signature,
        "layout: <class>/<class>_<index>.mp4; manifest.csv lists path,label (paths relative to this folder)",
        "classes (clips, scale at which the class differs):",
    ]
    lines += [f"  {name}: {per[name]} clips, {CLASS_SCALES[name]}" for name in CLASSES]
    return "\n".join(lines) + "\n"


def _same_dataset(out: Path, signature: str, clips: int) -> bool:
    readme, manifest = out / "README.txt", out / "manifest.csv"
    if not readme.is_file() or not manifest.is_file():
        return False
    try:
        if signature not in readme.read_text(encoding="utf-8").splitlines():
            return False
        with open(manifest, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return len(rows) == clips and all((out / row.get("path", "")).is_file() for row in rows)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="synth", unit="clip")


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise HiCoError(f"{name} must be a whole number, not {value!r}.")
    if value < minimum:
        raise HiCoError(f"{name} must be at least {minimum}, not {value}.")
    return int(value)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise HiCoError(f"size must be one number or (height, width), not {size!r}.")
        return _check_int("size", size[0], MIN_SIZE), _check_int("size", size[1], MIN_SIZE)
    side = _check_int("size", size, MIN_SIZE)
    return side, side


# --------------------------------------------------------------------------------------------
# probe, layout and grids


@dataclass(frozen=True)
class _Probe:
    convex: bool
    depth: float  # imaged depth from the skin, cm
    radius: float  # convex face radius, cm (0 for linear)
    half_angle: float  # convex half sector angle, rad
    width: float  # linear aperture, cm
    freq: float  # MHz
    name: str

    def extent(self) -> tuple[float, float, float]:
        """(top Z, bottom Z, half width) of the image in cm, Z = 0 at the skin on the centre line."""
        if self.convex:
            r, h = self.radius, self.half_angle
            return -r * (1 - math.cos(h)), self.depth, (r + self.depth) * math.sin(h)
        return 0.0, self.depth, self.width / 2


def _draw_probe(rng: np.random.Generator, organ: str) -> _Probe:
    convex = organ == "liver" or rng.random() < 0.5
    if convex:
        depth = rng.uniform(11.0, 17.0)
        radius = rng.uniform(3.5, 6.0)
        half = math.radians(rng.uniform(27.0, 37.0))
        freq = rng.uniform(2.5, 4.5)
        name = str(rng.choice(["C5-1", "C5-2", "C6-2", "C1-6", "CA430"]))
        return _Probe(True, depth, radius, half, 0.0, freq, name)
    depth = rng.uniform(4.0, 7.5)
    width = rng.uniform(3.6, 4.8)
    freq = rng.uniform(6.0, 11.0)
    name = str(rng.choice(["L12-3", "L11-4", "L12-5", "ML6-15", "LA523"]))
    return _Probe(False, depth, 0.0, 0.0, width, freq, name)


@dataclass(frozen=True)
class _Layout:
    ppc: float  # rendered pixels per cm
    x_c: float  # column of the centre line
    y_0: float  # row of Z = 0 (the skin on the centre line)
    v: int  # overlay supersampling factor
    render_hw: tuple[int, int]


def _draw_layout(probe: _Probe, render_hw: tuple[int, int]) -> _Layout:
    h, w = render_hw
    v = max(1, math.ceil(_OVERLAY_MIN / h))
    top = 30 / v + 1
    bottom = max(2.0, 0.02 * h)
    left = 16 / v + 1
    right = 24 / v + 1
    z_top, z_bot, half = probe.extent()
    ppc = min((h - top - bottom) / (z_bot - z_top), (w - left - right) / (2 * half))
    x_c = left + (w - left - right) / 2
    y_0 = top - z_top * ppc
    return _Layout(ppc, x_c, y_0, v, render_hw)


def _polar_shape(probe: _Probe, layout: _Layout) -> tuple[int, int]:
    nd = max(48, math.ceil(probe.depth * layout.ppc))
    if probe.convex:
        arc = 2 * probe.half_angle * (probe.radius + probe.depth)
    else:
        arc = probe.width
    na = max(48, math.ceil(arc * layout.ppc))
    return nd, na


@dataclass
class _Grid:
    """The padded polar grid on which layers are built: row = depth along the beam, column = lateral."""

    probe: _Probe
    nd: int
    na: int
    py: int
    px: int
    dz: float  # cm per row
    da: float  # rad (convex) or cm (linear) per column
    d: np.ndarray  # depth along the beam, cm
    u: np.ndarray  # lateral arc length at that depth, cm
    X: np.ndarray  # cartesian lateral, cm
    Z: np.ndarray  # cartesian depth, cm
    pix: float  # cm per rendered pixel

    def beam_u(self, dref: float) -> np.ndarray:
        """Lateral position of each beam at depth ``dref``: constant along a beam (radial on a fan)."""
        if self.probe.convex:
            return self.u / (self.probe.radius + self.d) * (self.probe.radius + dref)
        return self.u

    def lateral_samples(self, cm: float, dref: float) -> float:
        """How many columns a lateral displacement of ``cm`` at depth ``dref`` spans."""
        if self.probe.convex:
            return cm / ((self.probe.radius + dref) * self.da)
        return cm / self.da

    def half_width(self, depth: float) -> float:
        """Half the imaged width (cm of arc) at ``depth``."""
        if self.probe.convex:
            return (self.probe.radius + depth) * self.probe.half_angle
        return self.probe.width / 2


def _make_grid(probe: _Probe, layout: _Layout, shape, py: int, px: int) -> _Grid:
    nd, na = shape
    dz = probe.depth / nd
    i = (np.arange(-py, nd + py, dtype=np.float32) + 0.5)[:, None]
    j = (np.arange(-px, na + px, dtype=np.float32) + 0.5)[None, :]
    d = np.broadcast_to(i * dz, (nd + 2 * py, na + 2 * px)).astype(np.float32)
    if probe.convex:
        da = 2 * probe.half_angle / na
        th = -probe.half_angle + j * da
        r = probe.radius + d
        X = r * np.sin(th)
        Z = r * np.cos(th) - probe.radius
        u = r * th
    else:
        da = probe.width / na
        x = -probe.width / 2 + j * da
        X = np.broadcast_to(x, d.shape).astype(np.float32)
        Z = d.copy()
        u = X.copy()
    return _Grid(probe, nd, na, py, px, dz, da, d, u.astype(np.float32), X.astype(np.float32),
                 Z.astype(np.float32), 1.0 / layout.ppc)


# --------------------------------------------------------------------------------------------
# motion


@dataclass(frozen=True)
class _Motion:
    breath: np.ndarray  # (T,) in [-1, 1]
    breath_late: np.ndarray  # (T,) the same rhythm a little later (a floating lung lags)
    drift_x: np.ndarray  # (T,) probe rock / slide, columns
    drift_y: np.ndarray  # (T,) probe pressure, cm
    organ_x_cm: float  # breathing excursion of the organ under the wall
    organ_y_cm: float
    slide_cm: float  # lung sliding at the pleura
    float_x_cm: float  # a compressed lung flapping in fluid
    float_y_cm: float


def _draw_motion(rng: np.random.Generator, probe: _Probe, frames: int) -> _Motion:
    t = np.arange(frames, dtype=np.float64)
    period = rng.uniform(3.0, 5.0) * _ASSUMED_FPS
    phase = rng.uniform(0, 2 * math.pi)
    breath = np.sin(2 * math.pi * t / period + phase)
    breath_late = np.sin(2 * math.pi * t / period + phase - rng.uniform(0.3, 0.9))
    d_period = rng.uniform(8.0, 20.0) * _ASSUMED_FPS
    d_phase = rng.uniform(0, 2 * math.pi)
    slow = np.sin(2 * math.pi * t / d_period + d_phase) - math.sin(d_phase)
    slow_y = np.sin(2 * math.pi * t / (d_period * 0.7) + d_phase * 1.3) - math.sin(d_phase * 1.3)
    # Probe drift is a fraction of the field of view: set in columns per unit of `slow`.
    nominal_cols = 128.0
    drift_x = slow * rng.uniform(-1, 1) * rng.uniform(0.02, 0.07) * nominal_cols
    drift_y = slow_y * rng.uniform(-1, 1) * rng.uniform(0.0, 0.12)
    return _Motion(
        breath=breath,
        breath_late=breath_late,
        drift_x=drift_x,
        drift_y=drift_y,
        organ_x_cm=rng.uniform(0.25, 0.9) * rng.choice([-1, 1]),
        organ_y_cm=rng.uniform(0.05, 0.3),
        slide_cm=rng.uniform(0.08, 0.3) * rng.choice([-1, 1]),
        float_x_cm=rng.uniform(0.2, 0.6) * rng.choice([-1, 1]),
        float_y_cm=rng.uniform(0.1, 0.4),
    )


def _layer_motion(label: str, probe: _Probe, m: _Motion, shape) -> list[np.ndarray]:
    """Per-layer (T, 2) shifts in (rows, columns): [wall, organ] or [wall, thorax, floating lung]."""
    nd, na = shape
    dz = probe.depth / nd
    cols = na / 128.0  # drift was drawn for a nominal 128 columns

    def lat(cm, dref):
        if probe.convex:
            return cm / ((probe.radius + dref) * (2 * probe.half_angle / na))
        return cm / (probe.width / na)

    wall = np.stack([np.zeros_like(m.breath), m.drift_x * cols], axis=1)
    if label.startswith("liver"):
        dref = probe.depth / 2
        organ = np.stack(
            [(m.drift_y + m.organ_y_cm * m.breath) / dz,
             m.drift_x * cols + lat(m.organ_x_cm, dref) * m.breath], axis=1)
        return [wall, organ]
    dref = 2.0 if probe.convex else 1.0
    lung = np.stack(
        [(0.3 * m.drift_y + 0.2 * m.organ_y_cm * m.breath) / dz,
         m.drift_x * cols + lat(m.slide_cm, dref) * m.breath], axis=1)
    if label != "lung_effusion":
        return [wall, lung]
    floating = lung + np.stack(
        [m.float_y_cm * m.breath_late / dz, lat(m.float_x_cm, probe.depth / 2) * m.breath_late], axis=1)
    return [wall, lung, floating]


# --------------------------------------------------------------------------------------------
# anatomy helpers


@dataclass
class _Layer:
    """Echo amplitude, attenuation and presence rasters on the padded grid, and how the layer moves."""

    amp: np.ndarray  # sqrt of echogenicity (linear intensity, 1 = average soft tissue)
    alpha: np.ndarray  # attenuation, dB / cm / MHz
    presence: np.ndarray | None  # in [0, 1]: covers the layers listed before it; None = everywhere
    shift: np.ndarray  # (T, 2) rows, columns
    rho: float  # frame-to-frame correlation of its speckle


def _db(x):
    return np.power(10.0, np.asarray(x, dtype=np.float32) / 10.0)


def _gauss(x, sigma):
    return np.exp(-0.5 * (x / sigma) ** 2)


def _step(x, soft):
    """A smooth 0 -> 1 edge at x = 0, ``soft`` cm wide."""
    return 0.5 * (1.0 + np.tanh(x / soft))


def _line_sigma(g: _Grid, cm: float) -> float:
    """A thin line's profile width: its physical width, but never thinner than the pixels show."""
    return max(cm, 0.6 * g.pix, 0.6 * g.dz)


def _noise_at(rng: np.random.Generator, a: np.ndarray, b: np.ndarray, sa: float, sb: float,
              floor: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation lengths (sa, sb) cm, sampled at (a, b)."""
    step_a = max(sa / 2.5, floor)
    step_b = max(sb / 2.5, floor)
    a0, b0 = float(a.min()) - step_a, float(b.min()) - step_b
    na = int((float(a.max()) - a0) / step_a) + 3
    nb = int((float(b.max()) - b0) / step_b) + 3
    white = rng.standard_normal((nb, na), dtype=np.float32)
    f = ndimage.gaussian_filter(white, (sb / step_b, sa / step_a), mode="wrap")
    f /= float(f.std()) + 1e-12
    coords = np.stack([(b - b0) / step_b, (a - a0) / step_a])
    return ndimage.map_coordinates(f, coords, order=1, mode="nearest").astype(np.float32)


def _noise_1d(rng: np.random.Generator, x: np.ndarray, scale: float) -> np.ndarray:
    """Unit-variance smooth 1-D random function of correlation length ``scale`` at positions ``x``."""
    step = scale / 4
    x0 = float(x.min()) - step
    n = int((float(x.max()) - x0) / step) + 3
    f = ndimage.gaussian_filter1d(rng.standard_normal(n), 4.0, mode="wrap")
    f /= f.std() + 1e-12
    return np.interp(x, x0 + step * np.arange(n), f).astype(np.float32)


def _segment_distance(X, Z, p0, p1):
    """Distance from every (X, Z) to the segment p0 -> p1, and the position along it in [0, 1]."""
    vx, vz = p1[0] - p0[0], p1[1] - p0[1]
    ll = vx * vx + vz * vz + 1e-12
    s = np.clip(((X - p0[0]) * vx + (Z - p0[1]) * vz) / ll, 0.0, 1.0)
    return np.hypot(X - (p0[0] + s * vx), Z - (p0[1] + s * vz)), s


def _polyline_distance(X, Z, pts):
    """Distance to a polyline through ``pts`` and the fraction of its length at the closest point."""
    lengths = [math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in zip(pts[:-1], pts[1:])]
    total = sum(lengths) + 1e-12
    best = np.full(X.shape, np.inf, np.float32)
    frac = np.zeros(X.shape, np.float32)
    start = 0.0
    for (a, b), ll in zip(zip(pts[:-1], pts[1:]), lengths):
        dist, s = _segment_distance(X, Z, a, b)
        closer = dist < best
        best = np.where(closer, dist, best)
        frac = np.where(closer, (start + s * ll) / total, frac)
        start += ll
    return best, frac


def _wall(rng, g: _Grid, fat_cm: tuple[float, float], muscle_cm: tuple[float, float] | None):
    """Skin, subcutaneous fat and muscle, parallel to the probe face. Returns (E, alpha, bottom)."""
    u, d = g.u, g.d
    floor = 0.7 * g.pix
    tilt = rng.uniform(-0.05, 0.05)
    d_fat = rng.uniform(*fat_cm) + tilt * u + 0.06 * _noise_1d(rng, u, 1.5)
    fat_tex = _noise_at(rng, u, d, rng.uniform(0.3, 0.7), 0.04, floor)
    fat_db = -10.0 + 1.5 * _noise_at(rng, u, d, 0.08, 0.08, floor) + 7.0 * np.clip(fat_tex - 1.2, 0, None)
    striation = _noise_at(rng, u, d, rng.uniform(0.5, 1.0), 0.035, floor)
    muscle_db = -4.5 + 2.3 * striation + 1.0 * _noise_at(rng, u, d, 0.25, 0.25, floor)
    e = np.where(d < d_fat, _db(fat_db), _db(muscle_db))
    sig = _line_sigma(g, 0.035)
    e += _db(rng.uniform(5, 9)) * _gauss(d - 0.08, sig)  # skin
    e += _db(rng.uniform(7, 11)) * _gauss(d - d_fat, sig)  # fascia under the fat
    e += _db(6.0) * np.exp(-np.clip(d, 0, None) / 0.12)  # near-field ring-down
    bottom = None
    if muscle_cm is not None:
        bottom = d_fat + rng.uniform(*muscle_cm) + 0.05 * _noise_1d(rng, u, 1.0)
        e += _db(rng.uniform(8, 12)) * _gauss(d - bottom, sig)  # deep fascia / peritoneum
    alpha = np.where(d < d_fat, 0.55, 0.9).astype(np.float32)
    return e.astype(np.float32), alpha, bottom


def _tissue_texture(rng, g: _Grid, severity: float, region: np.ndarray | None = None) -> np.ndarray:
    """Parenchyma echotexture in dB: fine and homogeneous at 0, coarse, nodular, heterogeneous at 1."""
    X, Z, floor = g.X, g.Z, 0.7 * g.pix
    s = float(severity)
    tex = 0.8 * _noise_at(rng, X, Z, 0.05, 0.05, floor)
    tex += _lerp(0.4, 4.0, s) * _noise_at(rng, X, Z, _lerp(0.08, 0.45, s), _lerp(0.08, 0.4, s), floor)
    tex += _lerp(0.3, 3.0, s) * _noise_at(rng, X, Z, 1.5, 1.5, floor)
    septa_db = 7.0 * max(0.0, (s - 0.2) / 0.8) ** 1.5
    if septa_db > 0.3:
        spacing = _lerp(0.35, 1.2, s)
        x0, x1 = float(X.min()) - spacing, float(X.max()) + spacing
        z0, z1 = float(Z.min()) - spacing, float(Z.max()) + spacing
        # Jittered lattice: cells of similar size, like regenerative nodules.
        gx = np.arange(x0, x1, spacing)
        gz = np.arange(z0, z1, spacing)
        cx, cz = np.meshgrid(gx, gz)
        pts = np.stack([cx.ravel(), cz.ravel()], 1) + rng.uniform(-0.45, 0.45, (cx.size, 2)) * spacing
        sel = region if region is not None else np.ones(X.shape, bool)
        q = np.stack([X[sel], Z[sel]], 1)
        dist, _ = cKDTree(pts).query(q, k=2)
        edge = np.zeros(X.shape, np.float32)
        edge[sel] = (dist[:, 1] - dist[:, 0]).astype(np.float32)
        edge[~sel] = spacing
        width = _line_sigma(g, _lerp(0.03, 0.07, s)) * (1 + 0.4 * _noise_at(rng, X, Z, 0.5, 0.5, floor).clip(-1.5, 1.5))
        cover = _step(_noise_at(rng, X, Z, 0.8, 0.8, floor) + _lerp(-1.0, 1.5, s), 0.4)
        tex += septa_db * cover * _gauss(edge, width)
        tex -= 3.5 * max(0.0, (s - 0.5) / 0.5) * cover * (1 - _gauss(edge, spacing * 0.3))
    return tex.astype(np.float32)


def _lerp(a, b, t):
    return a + (b - a) * t


def _vessels(rng, g: _Grid, top: float, count: int):
    """Hepatic / portal vessels: (lumen 0..1, bright wall 0..1) on the grid."""
    X, Z = g.X, g.Z
    lumen = np.zeros(X.shape, np.float32)
    wall = np.zeros(X.shape, np.float32)
    soft = _line_sigma(g, 0.03)
    wsig = _line_sigma(g, 0.04)
    depth = g.probe.depth
    for _ in range(count):
        zc = rng.uniform(top + 1.0, max(top + 1.5, 0.9 * depth))
        hw = 0.85 * (g.half_width(zc) if g.probe.convex else g.probe.width / 2)
        xc = rng.uniform(-hw, hw)
        portal = rng.random() < 0.5
        if rng.random() < 0.5:  # a vessel cut across: round or oval
            r = rng.uniform(0.15, 0.6)
            ratio = rng.uniform(1.0, 1.6)
            ang = rng.uniform(0, math.pi)
            ca, sa = math.cos(ang), math.sin(ang)
            xr = (X - xc) * ca + (Z - zc) * sa
            zr = -(X - xc) * sa + (Z - zc) * ca
            rho = np.hypot(xr / ratio, zr)
            dist, rad = rho, r
        else:  # a vessel along the plane: a gently curving tapering tube, maybe branching
            ang = rng.uniform(-math.pi, math.pi)
            length = rng.uniform(1.5, 5.0)
            bend = rng.uniform(-0.6, 0.6)
            pts = [(xc, zc)]
            for k in range(1, 6):
                a = ang + bend * k / 5
                pts.append((pts[-1][0] + length / 5 * math.cos(a), pts[-1][1] + length / 5 * math.sin(a)))
            dist, s = _polyline_distance(X, Z, pts)
            r = rng.uniform(0.12, 0.4)
            rad = r * (1.0 - 0.4 * s)
            if rng.random() < 0.5:
                k = int(rng.integers(2, 4))
                pb = pts[k]
                bang = ang + bend * k / 5 + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9)
                pe = (pb[0] + 0.6 * length * math.cos(bang), pb[1] + 0.6 * length * math.sin(bang))
                db_, sb_ = _segment_distance(X, Z, pb, pe)
                rb = 0.6 * r * (1.0 - 0.4 * sb_)
                use = db_ - rb < dist - rad
                dist = np.where(use, db_, dist)
                rad = np.where(use, rb, rad)
        inside = _step(rad - dist, soft)
        lumen = np.maximum(lumen, inside)
        if portal:
            wall = np.maximum(wall, _gauss(dist - rad - wsig, wsig))
    return lumen, wall


# --------------------------------------------------------------------------------------------
# liver


def _build_liver(rng, g: _Grid, label: str, shifts) -> list[_Layer]:
    lo, hi = _LIVER_SEVERITY[label]
    sev = rng.uniform(lo, hi)
    u, d = g.u, g.d
    wall_e, wall_a, muscle_bottom = _wall(rng, g, (0.4, 1.8), (0.5, 1.4))

    capsule = muscle_bottom + rng.uniform(0.05, 0.2)
    bumps = _lerp(0.0, 0.14, sev ** 2) * _noise_1d(rng, u, _lerp(0.5, 0.35, sev))
    capsule = capsule + bumps
    below = d - capsule
    presence = _step(below, _line_sigma(g, 0.02))

    tex = _tissue_texture(rng, g, sev, region=below > -0.3)
    e = _db(rng.uniform(-2.0, 2.0) + tex)
    alpha = np.full(d.shape, rng.uniform(0.55, 0.65), np.float32)

    lumen, vwall = _vessels(rng, g, float(np.median(capsule)), int(rng.integers(3, 8)))
    e = e * (1 - lumen) + _db(-35.0) * lumen + _db(rng.uniform(8.0, 12.0)) * vwall
    alpha = alpha * (1 - lumen) + 0.35 * lumen

    if rng.random() < 0.6:  # diaphragm deep in the image, with a mirror image beyond it
        depth = g.probe.depth
        z0 = rng.uniform(0.72, 0.98) * depth
        x0 = rng.uniform(-3.0, 3.0)
        zd = z0 + rng.uniform(0.01, 0.05) * (g.X - x0) ** 2 + rng.uniform(-0.15, 0.15) * g.X
        past = _step(g.Z - zd, _line_sigma(g, 0.03))
        mirror = _db(-4.0 + 2.5 * _noise_at(rng, g.X, g.Z, 0.12, 0.12, 0.7 * g.pix))
        e = e * (1 - past) + mirror * past
        e += _db(rng.uniform(13, 17)) * _gauss(g.Z - zd, _line_sigma(g, 0.06))

    cap_db = rng.uniform(9, 13) + 2.0 * _noise_at(rng, u, d, 0.2, 0.2, 0.7 * g.pix)
    e += _db(cap_db) * _gauss(below, _line_sigma(g, 0.035))
    organ = _Layer(np.sqrt(e), alpha, presence.astype(np.float32), shifts[1], rng.uniform(0.86, 0.95))
    wall = _Layer(np.sqrt(wall_e), wall_a, None, shifts[0], rng.uniform(0.86, 0.95))
    return [wall, organ]


# --------------------------------------------------------------------------------------------
# lung


@dataclass
class _Chest:
    """What every lung view shares: pleura depth, intercostal window, ribs in the wall."""

    d_p: np.ndarray  # pleura depth along the beam at each grid point, cm
    d_p0: float
    window: tuple[float, float]  # lateral (cm at the pleura) limits of the intercostal window
    wall_e: np.ndarray
    wall_a: np.ndarray


def _chest(rng, g: _Grid) -> _Chest:
    convex = g.probe.convex
    d_p0 = rng.uniform(1.3, 2.8) if convex else rng.uniform(0.9, 1.8)
    u_p = g.beam_u(d_p0)
    d_p = d_p0 + rng.uniform(-0.04, 0.04) * u_p + 0.012 * _noise_1d(rng, u_p, 0.6)
    wall_e, wall_a, _ = _wall(rng, g, (0.2, 0.45 * d_p0), None)

    half = rng.uniform(1.5, 2.6) if convex else rng.uniform(0.9, 1.4)
    centre = rng.uniform(-0.5, 0.5) if convex else rng.uniform(-0.3, 0.3)
    sig = _line_sigma(g, 0.04)
    for side in (-1, 1):
        if rng.random() > (0.85 if convex else 0.9):
            continue
        a = rng.uniform(0.6, 0.9)
        dc = d_p0 - rng.uniform(0.1, 0.25)
        b = min(rng.uniform(0.25, 0.38), dc - 0.35)
        uc = centre + side * (half + a)
        rho = np.hypot((u_p - uc) / a, (g.d - dc) / b)
        inner = (1.0 - rho) * b  # cm inside the rib's surface
        cortex = _gauss(inner, sig) * (g.d < dc + 0.3 * b)
        wall_e = wall_e * (1 - _step(inner - sig, sig / 2)) + _db(rng.uniform(15, 20)) * cortex
        wall_a = wall_a + 40.0 * _step(inner - 2 * sig, sig / 2)
    return _Chest(d_p.astype(np.float32), d_p0, (centre - half, centre + half),
                  wall_e.astype(np.float32), wall_a.astype(np.float32))


def _aerated(rng, g: _Grid, ch: _Chest, a_line_db: float, decay: float):
    """Air below the pleura: a faint reverberation haze and A-lines at multiples of the pleura depth."""
    floor = 0.7 * g.pix
    rel = g.d - ch.d_p
    haze_db = rng.uniform(-16.0, -11.0) + 2.5 * _noise_at(rng, g.beam_u(ch.d_p0), g.d, 0.4, 0.25, floor) - 0.3 * rel
    haze = _db(haze_db) * _step(rel, 0.05)
    sig = _line_sigma(g, 0.035)
    a_lines = np.zeros_like(haze)
    k = 2
    while k * ch.d_p0 < g.probe.depth + 1.0:
        a_lines += _db(a_line_db - decay * (k - 1)) * _gauss(g.d - k * ch.d_p, sig * (1 + 0.25 * (k - 1)))
        k += 1
    return haze, a_lines


def _pleura(rng, g: _Grid, ch: _Chest, bright_db: float) -> np.ndarray:
    grain = _noise_at(rng, g.beam_u(ch.d_p0), g.d, 0.12, 0.5, 0.7 * g.pix)
    return _db(bright_db + 3.0 * grain) * _gauss(g.d - ch.d_p, _line_sigma(g, 0.035))


def _b_lines(rng, g: _Grid, ch: _Chest, count: int, bright_db: float, confluent: bool):
    """Vertical (beam-aligned) comet tails from the pleura to the bottom. Returns (intensity, profile)."""
    u = g.beam_u(ch.d_p0)
    lo, hi = ch.window
    prof = np.zeros(u.shape, np.float32)
    placed: list[float] = []
    for i in range(count):
        width = rng.uniform(0.8, 1.6) if (confluent and i == 0) else rng.uniform(0.12, 0.4)
        for _ in range(20):  # keep separate lines apart so that they can be counted
            c = rng.uniform(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo))
            if all(abs(c - p) > 0.45 for p in placed):
                break
        placed.append(c)
        prof = np.maximum(prof, np.exp(-0.5 * ((u - c) / (width / 2)) ** 4) * rng.uniform(0.7, 1.0))
    streak = _noise_at(rng, u, g.d, 0.04, 0.6, 0.7 * g.pix)
    rel = g.d - ch.d_p
    along = _step(rel - 0.05, 0.05) * _db(-0.25 * np.clip(rel, 0, None))
    return _db(bright_db + 2.0 * streak) * prof * along, prof


def _lung_common(rng, g, label):
    ch = _chest(rng, g)
    presence = _step(g.d - ch.d_p, _line_sigma(g, 0.02)).astype(np.float32)
    return ch, presence


def _finish_lung(rng, g, ch, shifts, e, alpha, presence, extra=()):
    wall = _Layer(np.sqrt(ch.wall_e), ch.wall_a, None, shifts[0], rng.uniform(0.86, 0.95))
    lung = _Layer(np.sqrt(e).astype(np.float32), alpha.astype(np.float32), presence, shifts[1],
                  rng.uniform(0.6, 0.8))
    return [wall, lung, *extra]


def _build_a_lines(rng, g: _Grid, label: str, shifts) -> list[_Layer]:
    ch, presence = _lung_common(rng, g, label)
    pl_db = rng.uniform(14, 19)
    haze, a_lines = _aerated(rng, g, ch, pl_db - rng.uniform(0.0, 3.0), rng.uniform(3.0, 6.0))
    e = haze + a_lines + _pleura(rng, g, ch, pl_db)
    if rng.random() < 0.25:  # one isolated B-line is still a normal lung
        b, prof = _b_lines(rng, g, ch, 1, pl_db - rng.uniform(8, 12), False)
        e = e * (1 - 0.5 * prof) + b
    alpha = np.full(e.shape, 0.6, np.float32)
    return _finish_lung(rng, g, ch, shifts, e, alpha, presence)


def _build_b_lines(rng, g: _Grid, label: str, shifts) -> list[_Layer]:
    ch, presence = _lung_common(rng, g, label)
    pl_db = rng.uniform(13, 18)
    haze, a_lines = _aerated(rng, g, ch, pl_db - rng.uniform(9.0, 14.0), rng.uniform(4.0, 8.0))
    b, prof = _b_lines(rng, g, ch, int(rng.integers(3, 9)), pl_db - rng.uniform(2.0, 6.0),
                       rng.random() < 0.3)
    e = (haze + a_lines) * (1 - 0.85 * prof) + b + _pleura(rng, g, ch, pl_db)
    alpha = np.full(e.shape, 0.6, np.float32)
    return _finish_lung(rng, g, ch, shifts, e, alpha, presence)


def _bronchogram_tree(rng, root, direction, length, depth_left, out: list):
    """Random branching segments (air-filled bronchi) from ``root`` heading ``direction``."""
    ang = direction + rng.uniform(-0.35, 0.35)
    end = (root[0] + length * math.cos(ang), root[1] + length * math.sin(ang))
    out.append((root, end))
    if depth_left > 0:
        for turn in (-1, 1):
            if rng.random() < 0.8:
                _bronchogram_tree(rng, end, ang + turn * rng.uniform(0.3, 0.7),
                                  length * rng.uniform(0.55, 0.8), depth_left - 1, out)


def _build_consolidation(rng, g: _Grid, label: str, shifts) -> list[_Layer]:
    ch, presence = _lung_common(rng, g, label)
    convex = g.probe.convex
    floor = 0.7 * g.pix
    u = g.beam_u(ch.d_p0)
    rel = g.d - ch.d_p
    lo, hi = ch.window
    span = rng.uniform(0.6, 1.1) * (hi - lo)
    uc = rng.uniform(lo + 0.3 * span, hi - 0.3 * span) if hi - lo > 0.6 * span else 0.5 * (lo + hi)
    depth = rng.uniform(2.0, 5.0) if convex else rng.uniform(1.0, 2.6)
    depth = min(depth, 0.6 * (g.probe.depth - ch.d_p0))
    x = np.clip((u - uc) / (span / 2), -1.5, 1.5)
    u_row = u[g.py + g.nd // 2]  # one row: the bottom is a function of the lateral position only
    shred = 0.12 * _noise_1d(rng, u_row, 0.5) + 0.1 * _noise_1d(rng, u_row, 0.12)
    x_row = np.clip((u_row - uc) / (span / 2), -1.0, 1.0)
    shape = 1 - np.abs(x_row) ** rng.uniform(1.3, 2.5)
    bottom_row = depth * shape * (1 + shred)
    bottom = np.interp(u, u_row, bottom_row)
    flat = np.interp(u, u_row, shape)  # where the deep border runs roughly horizontally
    inside = _step(bottom - rel, 0.05) * _step(rel, 0.03)

    pl_db = rng.uniform(13, 18)
    haze, a_lines = _aerated(rng, g, ch, pl_db - rng.uniform(3.0, 7.0), rng.uniform(4.0, 7.0))
    air = haze + a_lines * (1 - _step(1.2 - np.abs(x), 0.2))
    tissue = _db(rng.uniform(-4.0, -1.0) + _tissue_texture(rng, g, rng.uniform(0.2, 0.45)))

    segs: list = []
    for _ in range(int(rng.integers(2, 5))):
        root = (uc + rng.uniform(-0.3, 0.3) * span, ch.d_p0 + rng.uniform(0.6, 0.9) * depth)
        _bronchogram_tree(rng, root, -math.pi / 2 + rng.uniform(-0.7, 0.7), rng.uniform(0.25, 0.4) * depth,
                          int(rng.integers(2, 4)), segs)
    bronch = np.zeros(u.shape, np.float32)
    sig = _line_sigma(g, rng.uniform(0.04, 0.07))
    for p0, p1 in segs:
        dist, _ = _segment_distance(u, g.d, p0, p1)
        bronch = np.maximum(bronch, _gauss(dist, sig))
    # Air in bronchi shows as bright dots and short dashes along the branches.
    dotted = _step(_noise_at(rng, u, g.d, 0.12, 0.12, floor) + 0.3, 0.25)
    dots = np.clip(_noise_at(rng, u, g.d, 0.07, 0.07, floor) - 2.2, 0, None)
    bronch = np.maximum(bronch * dotted, np.clip(dots * 2.0, 0, 1))
    tissue = tissue + _db(rng.uniform(15, 19)) * bronch

    border = _gauss(rel - bottom, _line_sigma(g, 0.05)) * _step(flat - 0.35, 0.1)
    border = border * _step(_noise_at(rng, u, g.d, 0.15, 0.15, floor) + 0.5, 0.3)
    e = air * (1 - inside) + tissue * inside + _db(rng.uniform(9, 13)) * border
    e += _pleura(rng, g, ch, pl_db) * (1 - 0.75 * _step(1.0 - np.abs(x), 0.1))
    n_tails = int(rng.integers(0, 3))
    if n_tails:
        b, prof = _b_lines(rng, g, ch, n_tails, pl_db - rng.uniform(6, 10), False)
        e = e * (1 - 0.5 * prof * (1 - inside)) + b * (1 - inside) * _step(rel - bottom, 0.1)
    alpha = np.full(e.shape, 0.6, np.float32)  # hepatised lung transmits like soft tissue
    return _finish_lung(rng, g, ch, shifts, e, alpha, presence)


def _build_effusion(rng, g: _Grid, label: str, shifts) -> list[_Layer]:
    ch, presence = _lung_common(rng, g, label)
    convex = g.probe.convex
    floor = 0.7 * g.pix
    depth = g.probe.depth
    rel = g.d - ch.d_p
    fluid_e = _db(-40.0 + 3.0 * _noise_at(rng, g.X, g.Z, 0.3, 0.3, floor))
    if rng.random() < 0.3:  # a few floating echoes in a complex effusion
        fluid_e = fluid_e + _db(-12.0) * np.clip(_noise_at(rng, g.X, g.Z, 0.05, 0.05, floor) - 2.5, 0, None)
    pleura = _db(rng.uniform(12, 16)) * _gauss(rel, _line_sigma(g, 0.045))

    if convex:
        # Lung base: fluid above a dome-shaped diaphragm, liver or spleen below it, and a
        # compressed lung tongue floating in from one side.
        z0 = rng.uniform(0.55, 0.8) * depth
        x0 = rng.uniform(-2.0, 2.0)
        zd = z0 + rng.uniform(0.01, 0.04) * (g.X - x0) ** 2 + rng.uniform(-0.2, 0.2) * g.X
        past = _step(g.Z - zd, _line_sigma(g, 0.03))
        organ = _db(rng.uniform(-5, -1) + _tissue_texture(rng, g, rng.uniform(0.0, 0.3)))
        e = fluid_e * (1 - past) + organ * past + _db(rng.uniform(13, 17)) * _gauss(g.Z - zd, _line_sigma(g, 0.06))
        alpha = 0.4 * (1 - past) + 0.6 * past
        e = e * _step(rel, 0.02) + pleura

        # The compressed lung hangs from the deep hilum on one side, its tip floating up and in.
        side = float(rng.choice([-1, 1]))
        hw = g.half_width(z0)
        base = (side * rng.uniform(0.25, 0.65) * hw, z0 - rng.uniform(0.0, 0.1) * z0)
        length = rng.uniform(0.35, 0.6) * (base[1] - ch.d_p0) + rng.uniform(0.5, 1.5)
        ang = math.atan2(-1.0, -side * rng.uniform(0.3, 1.2))  # up and towards the centre
        bend = rng.uniform(-0.5, 0.5)
        pts = []
        for k in range(7):
            t = k / 6
            a = ang + bend * t
            prev = pts[-1] if pts else base
            step_ = length / 6 if k else 0.0
            pts.append((prev[0] + step_ * math.cos(a), prev[1] + step_ * math.sin(a)))
        dist, s = _polyline_distance(g.X, g.Z, pts)
        thick = rng.uniform(0.7, 1.2) * np.clip(1 - s, 0, 1) ** 0.6 + 0.2
        thick = thick * (1 + 0.2 * _noise_at(rng, g.X, g.Z, 0.4, 0.4, floor))
        inside = _step(thick - dist, 0.05)
        lung_e = _db(rng.uniform(-3.0, 0.0) + _tissue_texture(rng, g, rng.uniform(0.2, 0.45)))
        lung_e += _db(rng.uniform(8, 12)) * _gauss(dist - thick, _line_sigma(g, 0.04))
        segs: list = []
        _bronchogram_tree(rng, base, ang, 0.45 * length, 2, segs)
        for p0, p1 in segs:
            dd, _ = _segment_distance(g.X, g.Z, p0, p1)
            lung_e += _db(rng.uniform(8, 12)) * _gauss(dd, _line_sigma(g, 0.04))
        float_presence = (inside * _step(rel, 0.05)).astype(np.float32)
        lung_a = np.full(e.shape, 0.8, np.float32)
    else:
        # Between the ribs: fluid between the parietal pleura and the lung surface, which rises
        # and falls with breathing (the sinusoid sign).
        thick = min(rng.uniform(1.2, 2.5), 0.55 * (depth - ch.d_p0))
        d_v = ch.d_p + thick + 0.1 * _noise_1d(rng, g.beam_u(ch.d_p0), 0.8)
        e = fluid_e * _step(rel, 0.02) + pleura
        alpha = np.full(e.shape, 0.4, np.float32)
        below = g.d - d_v
        if rng.random() < 0.5:
            lung_e = _db(rng.uniform(-5.0, -2.0) + _tissue_texture(rng, g, rng.uniform(0.2, 0.45)))
        else:
            lung_e = _db(-13.0 + 2.5 * _noise_at(rng, g.u, g.d, 0.4, 0.25, floor))
        lung_e = lung_e + _db(rng.uniform(11, 15)) * _gauss(below, _line_sigma(g, 0.035))
        float_presence = _step(below + 0.05, 0.03).astype(np.float32)
        lung_a = np.full(e.shape, 0.7, np.float32)
    floating = _Layer(np.sqrt(lung_e).astype(np.float32), lung_a, float_presence, shifts[2],
                      rng.uniform(0.75, 0.9))
    return _finish_lung(rng, g, ch, shifts, e, alpha, presence, extra=(floating,))


_LUNG_BUILDERS: dict[str, Callable] = {
    "lung_a_lines": _build_a_lines,
    "lung_b_lines": _build_b_lines,
    "lung_consolidation": _build_consolidation,
    "lung_effusion": _build_effusion,
}


# --------------------------------------------------------------------------------------------
# imaging: speckle, attenuation, TGC, compression


@dataclass(frozen=True)
class _Imaging:
    sigma_axial: float  # PSF, rows
    sigma_lateral: float  # PSF, columns
    alpha_nominal: float
    tgc_db: np.ndarray  # (nd,) gain added after attenuation
    lateral_db: np.ndarray  # (na,) fall-off towards the edges of a fan
    noise_amp: float
    gain: int  # the number on the screen
    tissue_gray: float  # grey level of average tissue
    dyn_range: float  # dB
    gamma: float
    focus: float  # cm
    smoothing: float  # speckle reduction, polar samples


def _draw_imaging(rng, probe: _Probe, g: _Grid) -> _Imaging:
    depth = probe.depth
    focus = rng.uniform(0.35, 0.7) * depth
    if probe.convex:
        ax_cm, lat_cm = rng.uniform(0.016, 0.024), rng.uniform(0.07, 0.1)
    else:
        ax_cm, lat_cm = rng.uniform(0.006, 0.009), rng.uniform(0.018, 0.028)
    sigma_axial = max(0.6, ax_cm / g.dz)
    sigma_lateral = max(1.2, g.lateral_samples(lat_cm, focus))
    alpha_nom = rng.uniform(0.5, 0.7)
    d = (np.arange(g.nd) + 0.5) * g.dz
    # TGC: nominal compensation with a mismatch, plus the user's slider curve.
    comp = 2 * probe.freq * alpha_nom * rng.uniform(0.92, 1.05) * d
    sliders = rng.uniform(-3.0, 3.0, 6)
    curve = np.interp(d, np.linspace(0, depth, 6), sliders)
    curve = ndimage.gaussian_filter1d(curve, max(1.0, 0.08 * g.nd), mode="nearest")
    focal = rng.uniform(1.5, 3.0) * np.exp(-0.5 * ((d - focus) / (0.12 * depth)) ** 2)
    tgc = (comp + curve + focal).astype(np.float32)
    j = (np.arange(g.na) + 0.5) / g.na * 2 - 1
    lateral = (-rng.uniform(0.0, 2.5) * j ** 2 if probe.convex else -rng.uniform(0, 1.0) * j ** 4)
    snr_bottom = rng.uniform(14.0, 30.0)
    noise_db = -(2 * probe.freq * alpha_nom * depth) - snr_bottom
    return _Imaging(
        sigma_axial=sigma_axial,
        sigma_lateral=sigma_lateral,
        alpha_nominal=alpha_nom,
        tgc_db=tgc,
        lateral_db=lateral.astype(np.float32),
        noise_amp=10 ** (noise_db / 20),
        gain=int(rng.integers(30, 80)),
        tissue_gray=rng.uniform(78.0, 115.0),
        dyn_range=rng.uniform(50.0, 66.0),
        gamma=rng.uniform(0.9, 1.2),
        focus=focus,
        smoothing=rng.uniform(0.3, 0.9),
    )


class _Speckle:
    """A moving, slowly decorrelating complex speckle field of unit mean power, kept as its spectrum."""

    def __init__(self, rng, shape, sigma_axial, sigma_lateral, rho):
        nd, na = shape
        self.rng = rng
        self.rho = float(rho)
        self.fy = sfft.fftfreq(nd).astype(np.float32)
        self.fx = sfft.fftfreq(na).astype(np.float32)
        psf = np.exp(-2 * math.pi ** 2 * ((sigma_axial * self.fy[:, None]) ** 2
                                           + (sigma_lateral * self.fx[None, :]) ** 2))
        # Only the passband of the PSF carries power; drawing noise there alone is much cheaper.
        self.band = np.nonzero(psf > 1e-4)
        gain = psf[self.band]
        gain = gain * math.sqrt(nd * na / float(np.sum(gain ** 2)))  # unit power per pixel (ortho)
        self.gain = gain.astype(np.float32)
        self.spec = np.zeros(shape, np.complex64)
        self.spec[self.band] = self.gain * self._white()
        self.started = False

    def _white(self):
        n = self.gain.size
        w = self.rng.standard_normal((2, n), dtype=np.float32)
        return (w[0] + 1j * w[1]) * np.float32(math.sqrt(0.5))

    def frame(self, shift) -> np.ndarray:
        if self.started:
            r = self.rho
            self.spec[self.band] = r * self.spec[self.band] + math.sqrt(1 - r * r) * self.gain * self._white()
        self.started = True
        dy, dx = float(shift[0]), float(shift[1])
        ph_y = np.exp(-2j * math.pi * self.fy * dy).astype(np.complex64)
        ph_x = np.exp(-2j * math.pi * self.fx * dx).astype(np.complex64)
        return sfft.ifft2(self.spec * ph_y[:, None] * ph_x[None, :], norm="ortho")


def _crop(raster: np.ndarray, g: _Grid, shift) -> np.ndarray:
    """The layer's raster moved by ``shift`` (rows, columns), on the unpadded grid (bilinear)."""
    sy, sx = g.py - float(shift[0]), g.px - float(shift[1])
    iy, ix = int(math.floor(sy)), int(math.floor(sx))
    fy, fx = np.float32(sy - iy), np.float32(sx - ix)
    nd, na = g.nd, g.na
    a = raster[iy:iy + nd, ix:ix + na]
    b = raster[iy:iy + nd, ix + 1:ix + 1 + na]
    c = raster[iy + 1:iy + 1 + nd, ix:ix + na]
    e = raster[iy + 1:iy + 1 + nd, ix + 1:ix + 1 + na]
    return (1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * e)


def _render_polar(rng, g: _Grid, layers: Sequence[_Layer], im: _Imaging, frames: int) -> np.ndarray:
    """Grey levels (T, nd, na) on the polar grid, before scan conversion."""
    shape = (g.nd, g.na)
    speckles = [_Speckle(rng, shape, im.sigma_axial, im.sigma_lateral, layer.rho) for layer in layers]
    # Layers give attenuation relative to 0.6 dB/cm/MHz, the soft tissue the TGC was set for.
    att_scale = np.float32(2 * g.probe.freq * g.dz * im.alpha_nominal / _ALPHA_SOFT)
    post_db = im.tgc_db[:, None] + im.lateral_db[None, :]
    scale = np.float32(255.0 / im.dyn_range)
    offset = np.float32(im.tissue_gray + 255.0 / im.dyn_range * 2.5)
    out = np.empty((frames,) + shape, np.float32)
    for t in range(frames):
        field_ = np.zeros(shape, np.complex64)
        alpha = np.zeros(shape, np.float32)
        cover = np.ones(shape, np.float32)
        for layer, speckle in zip(reversed(layers), reversed(speckles)):
            shift = layer.shift[t]
            w = cover
            if layer.presence is not None:
                p = _crop(layer.presence, g, shift)
                w = cover * p
                cover = cover * (1 - p)
            field_ += (w * _crop(layer.amp, g, shift)) * speckle.frame(shift)
            alpha += w * _crop(layer.alpha, g, shift)
        att_db = np.minimum(np.cumsum(alpha, axis=0) * att_scale, 150.0)
        noise = rng.standard_normal((2,) + shape, dtype=np.float32)
        sig = field_ * np.power(10.0, -att_db / 20.0).astype(np.float32)
        sig += (noise[0] + 1j * noise[1]) * np.float32(im.noise_amp * math.sqrt(0.5))
        env_db = 20.0 * np.log10(np.abs(sig) + np.float32(1e-12)) + post_db
        if im.smoothing > 0:  # the scanner's speckle reduction / display averaging
            env_db = ndimage.gaussian_filter(env_db, im.smoothing, mode="nearest")
        gray = np.clip(offset + scale * env_db, 0.0, 255.0)
        out[t] = 255.0 * (gray / 255.0) ** im.gamma
    return out


# --------------------------------------------------------------------------------------------
# scan conversion


class _ScanConverter:
    """Polar grid -> screen pixels with bilinear weights precomputed once per clip."""

    def __init__(self, probe: _Probe, layout: _Layout, shape, render_hw):
        nd, na = shape
        h, w = render_hw
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        X = (xx + 0.5 - layout.x_c) / layout.ppc
        Z = (yy + 0.5 - layout.y_0) / layout.ppc
        if probe.convex:
            r = np.hypot(X, Z + probe.radius)
            th = np.arctan2(X, Z + probe.radius)
            d = r - probe.radius
            fi = d / (probe.depth / nd) - 0.5
            fj = (th + probe.half_angle) / (2 * probe.half_angle / na) - 0.5
            edge = np.minimum.reduce([d, probe.depth - d, (probe.half_angle - np.abs(th)) * r])
        else:
            d = Z
            fi = d / (probe.depth / nd) - 0.5
            fj = (X + probe.width / 2) / (probe.width / na) - 0.5
            edge = np.minimum.reduce([d, probe.depth - d, probe.width / 2 - np.abs(X)])
        coverage = np.clip(0.5 + edge * layout.ppc, 0.0, 1.0).astype(np.float32)
        self.coverage = coverage
        self.shape = (h, w)
        self.inside = np.flatnonzero(coverage > 0)
        fi = np.clip(fi.ravel()[self.inside], 0, nd - 1.001)
        fj = np.clip(fj.ravel()[self.inside], 0, na - 1.001)
        i0, j0 = np.floor(fi).astype(np.intp), np.floor(fj).astype(np.intp)
        wy, wx = (fi - i0).astype(np.float32), (fj - j0).astype(np.float32)
        cov = coverage.ravel()[self.inside]
        self.idx = [i0 * na + j0, i0 * na + j0 + 1, (i0 + 1) * na + j0, (i0 + 1) * na + j0 + 1]
        self.wts = [cov * (1 - wy) * (1 - wx), cov * (1 - wy) * wx, cov * wy * (1 - wx), cov * wy * wx]

    def __call__(self, polar: np.ndarray) -> np.ndarray:
        flat = polar.ravel()
        vals = sum(w * flat[i] for i, w in zip(self.idx, self.wts))
        img = np.zeros(self.shape[0] * self.shape[1], np.float32)
        img[self.inside] = vals
        return img.reshape(self.shape)


def _scan_converter(probe, layout, shape, render_hw) -> _ScanConverter:
    return _ScanConverter(probe, layout, shape, render_hw)


# --------------------------------------------------------------------------------------------
# screen overlays


@lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default()


def _text_right(draw: ImageDraw.ImageDraw, xy, text: str, fill: int) -> None:
    """Text whose right end is at x (no anchors: the bitmap fallback font lacks them)."""
    width = draw.textlength(text, font=_font())
    draw.text((xy[0] - width, xy[1]), text, fill=fill, font=_font())


_SITES = ("HICO GENERAL", "CITY HOSPITAL", "ST. ELSEWHERE", "SYNTH MED CTR", "NORTH CLINIC",
          "RIVERSIDE US", "DEPT RADIOLOGY", "ICU BAY 4", "ED POCUS", "OUTPATIENT 2")
_PRESETS = ("ABD", "LUNG", "GEN", "FAST", "PEN", "RES", "THI", "STD")


class _Overlay:
    """Scanner text, depth scale, focus marker and grey bar, drawn supersampled and burned in."""

    def __init__(self, rng, probe: _Probe, layout: _Layout, render_hw, frames: int, im: _Imaging):
        self.v = layout.v
        self.render_hw = render_hw
        h, w = render_hw
        v = self.v
        self.vsize = (w * v, h * v)
        self.level = int(rng.integers(190, 256))
        self.frames = frames
        canvas = Image.new("L", self.vsize, 0)
        draw = ImageDraw.Draw(canvas)
        font = _font()
        lvl = self.level
        date = f"{int(rng.integers(2015, 2025))}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(1, 29)):02d}"
        clock = f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}"
        site = str(rng.choice(_SITES))
        preset = str(rng.choice(_PRESETS))
        draw.text((3, 1), f"{site}  {date} {clock}", fill=lvl, font=font)
        line2 = f"{probe.name} {probe.freq:.1f}MHz Gn {im.gain} D {probe.depth:.0f}cm {preset}"
        if rng.random() < 0.5:
            line2 += f" DR{int(round(im.dyn_range))}"
        draw.text((3, 14), line2, fill=lvl, font=font)
        mi = f"MI {rng.uniform(0.4, 1.4):.1f}  TIS {rng.uniform(0.1, 1.0):.1f}"
        self.style = int(rng.integers(0, 3))
        self.counter_xy = (w * v - 3, 1)
        _text_right(draw, (w * v - 3, 14), mi, lvl)

        # Depth scale along the right edge of the image, ticks every cm, labels every 5 cm.
        ppc = layout.ppc * v
        z_top, z_bot, half = probe.extent()
        xs = (layout.x_c + half * layout.ppc) * v + 6
        xs = min(xs, w * v - 14)
        y0 = layout.y_0 * v
        draw.line([(xs, y0), (xs, y0 + probe.depth * ppc)], fill=lvl // 2, width=1)
        for k in range(int(probe.depth) + 1):
            y = y0 + k * ppc
            major = k % 5 == 0
            draw.line([(xs, y), (xs + (6 if major else 3), y)], fill=lvl, width=1)
            if major and k > 0:
                draw.text((xs + 7, y - 5), str(k), fill=lvl, font=font)
        yf = y0 + im.focus * ppc
        draw.polygon([(xs - 1, yf), (xs - 6, yf - 3), (xs - 6, yf + 3)], fill=lvl)

        # Grey calibration bar on the left.
        gx0, gx1 = 3, 3 + max(4, int(0.012 * w * v))
        gy0, gy1 = int(0.35 * h * v), int(0.65 * h * v)
        ramp = np.linspace(255, 0, gy1 - gy0).astype(np.uint8)[:, None]
        canvas.paste(Image.fromarray(np.repeat(ramp, gx1 - gx0, axis=1)), (gx0, gy0))
        draw.rectangle([gx0 - 1, gy0 - 1, gx1, gy1], outline=lvl // 2)

        # Orientation marker beside the top-left of the image.
        if probe.convex:
            mx = (layout.x_c - probe.radius * math.sin(probe.half_angle) * layout.ppc) * v - 8
            my = (layout.y_0 - probe.radius * (1 - math.cos(probe.half_angle)) * layout.ppc) * v + 4
        else:
            mx = (layout.x_c - probe.width / 2 * layout.ppc) * v - 8
            my = layout.y_0 * v + 4
        mx = max(mx, 4)
        draw.ellipse([mx - 3, my - 3, mx + 3, my + 3], fill=lvl)
        self.static = self._shrink(canvas)

    def _shrink(self, canvas: Image.Image) -> np.ndarray:
        if self.v > 1:
            canvas = canvas.resize((self.render_hw[1], self.render_hw[0]), Image.Resampling.BOX)
        return np.asarray(canvas, dtype=np.float32)

    def _counter_text(self, t: int) -> str:
        if self.style == 0:
            return f"{t + 1}/{self.frames}"
        if self.style == 1:
            return f"F{t + 1:03d}"
        return f"{t / _ASSUMED_FPS:05.2f}s"

    def frame(self, t: int) -> np.ndarray:
        canvas = Image.new("L", self.vsize, 0)
        _text_right(ImageDraw.Draw(canvas), self.counter_xy, self._counter_text(t), self.level)
        return np.maximum(self.static, self._shrink(canvas))

    def dynamic_mask(self, height: int, width: int, scale: int) -> np.ndarray:
        """Where the frame counter may draw, at the output size."""
        h, w = self.render_hw
        mask = np.zeros((h, w), bool)
        mask[: max(1, math.ceil(14 / self.v)), w // 2:] = True
        if scale > 1:
            mask = mask.reshape(height, scale, width, scale).any(axis=(1, 3))
        return mask
