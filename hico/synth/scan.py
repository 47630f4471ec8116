"""Scan conversion: the polar image resampled onto the screen's pixels as a convex fan or a linear image."""

from __future__ import annotations

import numpy as np

from hico.synth.probe import _Layout, _Probe


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
