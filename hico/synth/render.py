"""The classes, what separates them, and rendering one clip (render_clip, render_sample)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from hico.errors import HiCoError
from hico.synth.imaging import _draw_imaging, _render_polar
from hico.synth.liver import _build_liver
from hico.synth.lung import _LUNG_BUILDERS
from hico.synth.motion import _draw_motion, _layer_motion
from hico.synth.overlays import _Overlay
from hico.synth.probe import _draw_layout, _draw_probe, _make_grid, _polar_shape
from hico.synth.scan import _scan_converter

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
_RENDER_MIN = 96  # smaller outputs are rendered at a multiple of their size and area-averaged


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
