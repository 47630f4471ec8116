"""The four lung views: chest wall, ribs and pleura, then A-lines, B-lines, consolidation or effusion."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hico.synth.anatomy import (
    _Layer, _db, _gauss, _line_sigma, _noise_1d, _noise_at, _polyline_distance, _segment_distance, _step,
    _tissue_texture, _wall,
)
from hico.synth.probe import _Grid


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
