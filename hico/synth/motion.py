"""Probe drift and breathing, and how far each layer moves on the grid in every frame."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hico.synth.probe import _Probe

_ASSUMED_FPS = 15.0  # motion speeds are set per second; render_clip has no frame rate of its own


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
