"""Whether a clip looks like the data a run was trained on: a model answers with one of its classes
whatever it is shown, so a prediction on a clip unlike its training data should say so.

A clip's distance to the training data is the mean over its frames of the mean cosine distance
to the K nearest training frames, in the backbone's pooled features (centred on the training
frames' mean, then L2-normalised). It is calibrated on the run's own held-out videos (its
validation split, which training never used; with fewer than MIN_HELD_OUT of them, every
training video with its own frames left out of the reference): a clip's `score` is its distance
divided by the QUANTILE of theirs, so about 95% of held-out training clips score 1 or less. A clip
scoring above LIMIT is `unfamiliar`.

The training frames come from the run's timeline snapshot at the checkpoint's step (a few frames
of every video, embedded at that validation: no extra work), else from embedding its dataset,
which a server does in the background (`run_reference(wait=False)`) rather than in a request.

Measured with the demo model (2026-11-29): 0 of 200 unseen synthetic clips (another seed) score
above 1.5 (the highest 1.34, 95% below 0.86), nor do the three example clips (at most 0.83).
Above it: two synthetic clips side by side (2.7) or four (2.3), moving squares (1.8). Not caught:
pure noise (0.76), inverted intensities (0.77) and a grey ramp (1.26). No real scanner clip was
at hand to measure.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hico import timeline
from hico.embed import embed_dataset, level_matrix
from hico.errors import HiCoError
from hico.files import atomic_path
from hico.paths import expand_path

log = logging.getLogger(__name__)
FEATURE = "backbone"
K = 5  # nearest training frames averaged per frame
MAX_REFERENCE = 4096  # training frames kept as the reference (evenly spaced)
MIN_HELD_OUT = 5  # validation videos needed to calibrate on them alone
QUANTILE = 0.95
LIMIT = 1.5


@dataclass(frozen=True)
class Familiarity:
    """score: the clip's distance over the QUANTILE of held-out training clips' distances;
    unfamiliar: score > LIMIT; distance: the clip's mean cosine distance to its nearest
    training frames."""

    score: float
    unfamiliar: bool
    distance: float

    def sentence(self) -> str:
        if self.unfamiliar:
            return (f"unlike the model's training data (score {self.score:.1f}, above {LIMIT}): the prediction "
                    f"is a guess among classes the model knows")
        return f"like the model's training data (score {self.score:.1f})"


@dataclass(frozen=True)
class Reference:
    """mean: d; vectors: M x d unit vectors of training frames (centred); threshold: the
    QUANTILE of held-out clips' distances."""

    mean: np.ndarray
    vectors: np.ndarray
    threshold: float

    def frame_distances(self, features: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """T frames' mean cosine distance to their K nearest reference frames (T x d features in;
        exclude: T x M booleans of reference frames a frame may not use)."""
        similarity = _unit(features, self.mean) @ self.vectors.T
        if exclude is not None:
            similarity = np.where(exclude, -np.inf, similarity)
        k = min(K, self.vectors.shape[0])
        nearest = -np.partition(-similarity, k - 1, axis=1)[:, :k]
        if exclude is None:
            return 1.0 - nearest.mean(axis=1)
        # a frame with fewer than k frames it may use averages those it has (none: as far as can be)
        usable = np.isfinite(nearest)
        total = np.where(usable, nearest, 0.0).sum(axis=1)
        return np.where(usable.any(axis=1), 1.0 - total / np.maximum(usable.sum(axis=1), 1), 2.0)

    def judge(self, features: np.ndarray) -> Familiarity:
        """The familiarity of a clip from its frames' T x d backbone features."""
        distance = float(self.frame_distances(features).mean())
        score = distance / self.threshold
        return Familiarity(score, bool(score > LIMIT), distance)


def build_reference(features: np.ndarray, videos: np.ndarray, split: np.ndarray) -> Reference:
    """The reference of a run from N frames of its dataset: N x d backbone features, N video ids,
    N splits (train | val, as the run split its videos)."""
    features = np.asarray(features, dtype=np.float32)
    videos, split = np.asarray(videos), np.asarray(split)
    train = split == "train"
    if not train.any():
        raise HiCoError("The run's training data has no training-split frames to compare clips with.")
    rows = np.flatnonzero(train)
    rows = rows[np.unique(np.linspace(0, len(rows) - 1, min(MAX_REFERENCE, len(rows))).round().astype(int))]
    mean = features[train].mean(axis=0)
    reference = Reference(mean, _unit(features[rows], mean), 1.0)
    held = list(pd.unique(videos[split == "val"]))
    leave_one_out = len(held) < MIN_HELD_OUT
    if leave_one_out:
        held = list(pd.unique(videos[train]))
    distances = []
    for video in held:
        frames = videos == video
        exclude = np.broadcast_to(videos[rows] == video, (int(frames.sum()), len(rows))) if leave_one_out else None
        distances.append(float(reference.frame_distances(features[frames], exclude).mean()))
    if not distances:
        raise HiCoError("The run's training data has too few videos to calibrate a familiarity score.")
    threshold = max(float(np.quantile(distances, QUANTILE)), 1e-6)
    return Reference(mean, reference.vectors, threshold)


_lock = threading.Lock()
_cache: dict[tuple, Reference] = {}  # the last CACHED references (up to 8 MB each), oldest first
CACHED = 8
_building: set[tuple] = set()  # references being built in the background (wait=False)
_failed: dict[tuple, str] = {}  # why a background build failed, said to the next caller (then retried)
PENDING = ("Still measuring how familiar clips are for this run: its training clips are being embedded "
           "once (about a minute on a CPU); predict again shortly to get the familiarity score.")


def run_reference(run_dir: str | Path, checkpoint: str, step: int, data_root: str, device: str = "auto",
                  wait: bool = True) -> Reference:
    """The reference of a run's checkpoint, built once and kept in RUN_DIR/embeddings and in memory:
    from the run's timeline snapshot at that step when there is one (no extra work), else from its
    training dataset's embeddings (the table Explore uses, embedded if missing: tens of seconds).

    wait=False (a server answering a request) never embeds in the caller's thread: the embedding
    is started in the background, once per reference, and HiCoError(PENDING) is raised until it
    is done. HiCoError too when the training data is gone."""
    run_dir = Path(run_dir)
    key = (str(run_dir.resolve()), checkpoint, int(step))
    with _lock:
        if key in _cache:
            return _cache[key]
        failure = _failed.pop(key, None)
    if failure:
        raise HiCoError(failure)
    path = run_dir / "embeddings" / f"familiarity-{checkpoint}-step{int(step)}.npz"
    reference = _read(path)
    if reference is None and int(step) in timeline.steps(run_dir):
        snap = timeline.read(run_dir, int(step))
        reference = _save(path, build_reference(snap.vectors[FEATURE], snap.video_id, snap.split))
    if reference is None:
        root = expand_path(data_root) if data_root else None
        if root is None or not root.exists():
            raise HiCoError(f"Cannot tell whether the clip is like the training data: the run's dataset "
                            f"({data_root or 'none'}) is not on this server any more.")
        if not wait:
            with _lock:
                start = key not in _building
                _building.add(key)
            if start:
                threading.Thread(target=_build_in_background, args=(key, run_dir, checkpoint, root, device, path),
                                 daemon=True).start()
            raise HiCoError(PENDING)
        reference = _save(path, _embedded_reference(run_dir, checkpoint, root, device))
    return _remember(key, reference)


def _embedded_reference(run_dir: Path, checkpoint: str, root: Path, device: str) -> Reference:
    table, _ = embed_dataset(run_dir, root, checkpoint=checkpoint, device=device, progress=False)
    return build_reference(level_matrix(table, FEATURE), table["video_id"], table["split"])


def _build_in_background(key: tuple, run_dir: Path, checkpoint: str, root: Path, device: str, path: Path) -> None:
    try:
        _remember(key, _save(path, _embedded_reference(run_dir, checkpoint, root, device)))
    except HiCoError as exc:
        with _lock:
            _failed[key] = str(exc)
    except Exception:  # a bug: logged, and the caller is told without a traceback
        log.exception("building the familiarity reference of %s failed", run_dir)
        with _lock:
            _failed[key] = ("Cannot tell whether the clip is like the training data: measuring it failed "
                            "(the log says why).")
    finally:
        with _lock:
            _building.discard(key)


def _save(path: Path, reference: Reference) -> Reference:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, mean=reference.mean, vectors=reference.vectors, threshold=reference.threshold)
    return reference


def _remember(key: tuple, reference: Reference) -> Reference:
    with _lock:
        _cache[key] = reference
        while len(_cache) > CACHED:
            _cache.pop(next(iter(_cache)))
    return reference


def _unit(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    centred = np.asarray(features, dtype=np.float32) - mean
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def _read(path: Path) -> Reference | None:
    try:
        with np.load(path) as data:
            return Reference(data["mean"], data["vectors"], float(data["threshold"]))
    except (OSError, KeyError, ValueError):
        return None
