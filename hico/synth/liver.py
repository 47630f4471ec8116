"""The liver view: body wall over a liver whose texture grows coarse and nodular with the fibrosis grade."""

from __future__ import annotations

import numpy as np

from hico.synth.anatomy import (
    _Layer, _db, _gauss, _lerp, _line_sigma, _noise_1d, _noise_at, _step, _tissue_texture, _vessels, _wall,
)
from hico.synth.probe import _Grid

_LIVER_SEVERITY = {  # fibrosis severity drawn per clip; the ranges do not overlap
    "liver_f0": (0.0, 0.12),
    "liver_f1": (0.28, 0.45),
    "liver_f2": (0.55, 0.72),
    "liver_f3": (0.85, 1.0),
}


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
