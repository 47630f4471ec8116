"""Representations over training: a run's timeline snapshots (`hico.timeline`) projected to 2-D
and aligned so that a frame does not jump between steps.

Each snapshot is laid out by PCA (`hico.embed.project`), centred and scaled to unit RMS radius.
The latest is the reference: its axes get a fixed sign (each axis's third moment positive).
Going back in time, each snapshot is rotated (or reflected) onto the aligned one after it by
orthogonal Procrustes on the frames both have, so consecutive steps differ only by what the
model changed, not by PCA's arbitrary axes. Points are the frames of the latest snapshot, in its
order: a frame has the same point id at every step, and a frame missing from a snapshot is NaN
there.

Per step the view also holds how far the points moved since the previous step (mean distance
after alignment, in units of the layout's RMS radius) and the kNN class agreement of the
embedding (as `hico.neighbours.projection_scores`'s `class_embedding`: of a frame's 10 nearest
frames from other clips, cosine, the share with its class), so the slider shows structure forming.

PCA is `hico.embed.principal_axes` (the PCA of `hico.embed.project`): the top two eigenvectors
of the smaller Gram matrix, not a full SVD.

`TimelineViews` caches built views per (run folder, level, snapshot steps), bounded and guarded by
a lock: the app serves many sessions at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import orthogonal_procrustes

from hico import timeline
from hico.errors import HiCoError
from hico.embed import principal_axes
from hico.neighbours import SCORE_K, other_neighbours

LEVELS = timeline.COLUMNS
KEEP_VIEWS = 8  # views cached (each ~32 snapshots x ~800 points x 2 floats: small)
MARGIN = 0.05  # share of the extent added around the fixed axis range


@dataclass
class TimelineView:
    """A run's snapshots at one level, aligned. S steps, N frames (those of the latest snapshot)."""

    level: str
    steps: list[int]  # S, ascending
    coords: np.ndarray  # S x N x 2 float64, NaN where a snapshot lacks the frame
    video_id: np.ndarray  # N str
    frame: np.ndarray  # N int
    label: np.ndarray  # N str ("" unlabelled)
    split: np.ndarray  # N str
    moved: list[float | None]  # S: mean displacement since the previous step (None at the first)
    class_agreement: list[float | None]  # S: kNN class agreement of the embedding (None: no labels)

    def ranges(self) -> tuple[list[float], list[float]]:
        """One axis range for every step, so the plot does not rescale as the slider moves."""
        finite = self.coords[np.isfinite(self.coords).all(axis=2)]
        if len(finite) == 0:
            return [-1.0, 1.0], [-1.0, 1.0]
        lo, hi = finite.min(axis=0), finite.max(axis=0)
        pad = (hi - lo).max() * MARGIN or 1.0
        return [float(lo[0] - pad), float(hi[0] + pad)], [float(lo[1] - pad), float(hi[1] + pad)]


def normalise(xy: np.ndarray) -> np.ndarray:
    """Centre an N x 2 layout (NaN rows left out of the statistics) and scale it to unit RMS radius."""
    xy = np.asarray(xy, dtype=np.float64)
    ok = np.isfinite(xy).all(axis=1)
    if not ok.any():
        return xy.copy()
    centred = xy - xy[ok].mean(axis=0)
    radius = float(np.sqrt((centred[ok] ** 2).sum(axis=1).mean()))
    return centred / radius if radius > 0 else centred


def fix_sign(xy: np.ndarray) -> np.ndarray:
    """Flip each axis so that its third moment is positive (PCA's signs are arbitrary)."""
    xy = np.array(xy, dtype=np.float64)
    ok = np.isfinite(xy).all(axis=1)
    for j in range(2):
        if (xy[ok, j] ** 3).sum() < 0:
            xy[:, j] = -xy[:, j]
    return xy


def class_agreement(x: np.ndarray, labels, groups, k: int = SCORE_K) -> float | None:
    """Of each labelled row's k nearest rows (cosine) outside its own group, the mean share with its
    label; None when no row is labelled or no row lies outside a group."""
    names = np.asarray(labels, dtype=str)
    labelled = np.flatnonzero(names != "")
    if not len(labelled):
        return None
    near = other_neighbours(x, k, "cosine", groups, labelled)
    if near.shape[1] == 0:
        return None
    return float((names[near] == names[labelled, None]).mean())


def align(xy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rotate or reflect N x 2 `xy` (centred) onto `reference` (same rows) by orthogonal
    Procrustes on the rows finite in both; returns the whole of `xy` transformed."""
    xy = np.asarray(xy, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    shared = np.isfinite(xy).all(axis=1) & np.isfinite(reference).all(axis=1)
    if shared.sum() < 2:
        return xy.copy()
    rotation, _ = orthogonal_procrustes(xy[shared], reference[shared])
    return xy @ rotation


def displacement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean distance between the rows of two aligned N x 2 layouts (rows finite in both)."""
    shared = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    if not shared.any():
        return None
    return float(np.linalg.norm(a[shared] - b[shared], axis=1).mean())


def aligned_layouts(layouts: list[np.ndarray]) -> list[np.ndarray]:
    """Normalise N x 2 layouts (same rows, ascending steps) and align each to the aligned one
    after it; the latest is the reference, with fixed signs."""
    out = [np.empty(0)] * len(layouts)
    for i in range(len(layouts) - 1, -1, -1):
        xy = normalise(layouts[i])
        out[i] = fix_sign(xy) if i == len(layouts) - 1 else align(xy, out[i + 1])
    return out


def build(run_dir: str | Path, level: str, steps: list[int] | None = None) -> TimelineView:
    """The aligned view of a run's timeline at `level`; HiCoError when it has no snapshots."""
    if level not in LEVELS:
        raise HiCoError(f"Level must be one of {', '.join(LEVELS)}, not {level!r}.")
    steps = timeline.steps(run_dir) if steps is None else list(steps)
    if not steps:
        raise HiCoError(no_snapshots(run_dir))
    snapshots = [timeline.read(run_dir, step) for step in steps]
    last = snapshots[-1]
    keys = {(str(v), int(f)): i for i, (v, f) in enumerate(zip(last.video_id, last.frame))}
    n = len(keys)
    layouts, agreement = [], []
    for snap in snapshots:
        if level not in snap.vectors:
            raise HiCoError(f"The timeline snapshot at step {snap.step} has no {level} level.")
        x = snap.vectors[level]
        rows = np.array([keys.get((str(v), int(f)), -1) for v, f in zip(snap.video_id, snap.frame)], dtype=np.int64)
        keep = rows >= 0
        xy = np.full((n, 2), np.nan)
        if keep.sum() >= 2:
            xy[rows[keep]] = principal_axes(x[keep])
            agreement.append(class_agreement(x[keep], snap.label[keep], snap.video_id[keep]))
        else:
            agreement.append(None)
        layouts.append(xy)
    coords = aligned_layouts(layouts)
    moved = [None] + [displacement(coords[i - 1], coords[i]) for i in range(1, len(coords))]
    return TimelineView(level, steps, np.stack(coords), np.asarray(last.video_id, dtype=str),
                        np.asarray(last.frame, dtype=np.int64), np.asarray(last.label, dtype=str),
                        np.asarray(last.split, dtype=str), moved, agreement)


def no_snapshots(run_dir: str | Path) -> str:
    return (f"Run {Path(run_dir).name} has no timeline snapshots yet: they are written at each validation "
            f"(runs trained before this feature have none).")


class TimelineViews:
    """Built views, the KEEP_VIEWS most recently used, keyed by (run folder, level, steps).
    A new snapshot changes the steps and so the key: the view is rebuilt."""

    def __init__(self, keep: int = KEEP_VIEWS):
        self.keep = keep
        self._views: OrderedDict[tuple, TimelineView] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: str | Path, level: str) -> TimelineView:
        steps = timeline.steps(run_dir)
        if not steps:
            raise HiCoError(no_snapshots(run_dir))
        key = (str(Path(run_dir).resolve()), level, tuple(steps))
        with self._lock:
            if key in self._views:
                self._views.move_to_end(key)
                return self._views[key]
        view = build(run_dir, level, steps)  # outside the lock: two requests may both build, both agree
        with self._lock:
            self._views[key] = view
            self._views.move_to_end(key)
            while len(self._views) > self.keep:
                self._views.popitem(last=False)
        return view


def api_payload(view: TimelineView, run: str) -> dict:
    """The /timeline answer for a view (see README, API)."""

    def listed(values):
        return [None if not np.isfinite(v) else round(float(v), 5) for v in values]

    return {"ok": True, "message": f"{len(view.steps)} snapshots of {len(view.video_id)} frames", "run": run,
            "level": view.level, "steps": [int(s) for s in view.steps],
            "points": [{"step": int(s), "x": listed(xy[:, 0]), "y": listed(xy[:, 1])}
                       for s, xy in zip(view.steps, view.coords)],
            "labels": [str(lab) for lab in view.label], "video_id": [str(v) for v in view.video_id],
            "frame": [int(f) for f in view.frame], "split": [str(s) for s in view.split],
            "moved": [None if m is None else round(m, 5) for m in view.moved],
            "class_agreement": [None if a is None else round(a, 5) for a in view.class_agreement]}
