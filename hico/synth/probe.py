"""The probe drawn for a clip, where its image lies on the screen, and the polar grid layers are built on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_OVERLAY_MIN = 360  # overlays are drawn at least this tall, then scaled to the render size


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
