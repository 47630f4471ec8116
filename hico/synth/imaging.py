"""The scanner's imaging chain on the polar grid: speckle, attenuation, TGC, noise and log compression."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from hico.synth.anatomy import _Layer
from hico.synth.probe import _Grid, _Probe

_ALPHA_SOFT = 0.6  # dB/cm/MHz of average soft tissue in the layers' units


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
