"""Building blocks of the anatomy: layers, smooth random fields, distances, body wall, parenchyma, vessels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from hico.synth.probe import _Grid


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
