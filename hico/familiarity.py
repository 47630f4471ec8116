"""Whether a clip looks like the data a run was trained on: a model answers with one of its classes
whatever it is shown, so a prediction on a clip unlike its training data must say so first.

Four distances, each measured per frame and averaged over the clip's frames:

- ``mahalanobis``: the Mahalanobis distance of the backbone's pooled features (C5, 512 numbers
  for ResNet-18) to the nearest class mean, with one covariance shared by the classes and shrunk
  by Ledoit-Wolf (Lee et al. 2018; one mean when the run has no labels). Whitening weighs the
  directions the training clips barely use as much as the class directions, which is where a
  clip from another domain differs: a network trained on one domain folds its features into a
  low-rank class subspace, and distances that ignore the rest (cosine kNN, logits) are blind.
- ``neighbours``: the mean cosine distance to the K nearest training frames in the same features,
  centred on the training mean (what this module measured before; it catches clips between
  the training clusters).
- ``early`` and ``middle``: the Mahalanobis distances of the first and second residual stages'
  channel means (C2, 64 numbers; C3, 128): image statistics as the network sees them
  (intensity, colour, speckle and texture) before they are folded into classes.

Each distance is divided by the QUANTILE of the same distance over the run's held-out videos
(the validation split, which training never used; with fewer than MIN_HELD_OUT of them, each of
FOLDS folds of the training videos is measured against a reference built without it). The clip's
``score`` is the mean of the four ratios divided by the QUANTILE of that mean over the held-out
videos, so about 95 % of held-out clips score 1 or less; a clip scoring above LIMIT is
``unfamiliar``.

Chosen by measurement (python -m benchmarks.ood, README "Is the clip like the training data?"):
on the demo model the old kNN score alone had AUROC 0.93 and flagged 52 % of real scanner files
at its held-out 95th percentile; energy 0.86, max softmax 0.77; the four together 0.998, every
real file flagged on two demo models trained with different seeds (1.5 % and 3.5 % of unseen
synthetic clips flagged).

A run writes its reference when it finishes (hico.train), from the frames its validation embeds;
older runs build it from their dataset once, in the background when a server asks
(``run_reference(wait=False)``), never inside a request.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hico.errors import HiCoError
from hico.files import atomic_path
from hico.neighbours import unit_rows
from hico.paths import expand_path
from hico.runs import EMBEDDINGS

log = logging.getLogger(__name__)
FEATURE = "backbone"  # the features the neighbour distance uses
GAUSSIAN = {"mahalanobis": FEATURE, "early": "c2", "middle": "c3"}  # part -> the embedding it reads
PARTS = ("mahalanobis", "neighbours", "early", "middle")
K = 5  # nearest training frames averaged per frame
MAX_REFERENCE = 4096  # training frames kept for the neighbour distance (evenly spaced)
MIN_HELD_OUT = 5  # validation videos needed to calibrate on them alone
FOLDS = 5
QUANTILE = 0.95
LIMIT = 1.1  # chosen with python -m benchmarks.ood on two demo models (README)
VERSION = 2


@dataclass(frozen=True)
class Familiarity:
    """score: the clip's combined distance over the QUANTILE of held-out clips'; unfamiliar:
    score > LIMIT; parts: each distance over its own held-out QUANTILE; trained_on: what the run
    was trained on, in words."""

    score: float
    unfamiliar: bool
    parts: dict[str, float] = field(default_factory=dict)
    trained_on: str = ""

    def reason(self) -> str:
        """Which distances put the clip outside the training data, in words."""
        names = {"mahalanobis": "its features lie off the directions the training clips use",
                 "neighbours": "its frames are far from every training frame",
                 "early": "its image statistics (intensity, colour, speckle) differ",
                 "middle": "its textures differ"}
        far = [names[p] for p, v in sorted(self.parts.items(), key=lambda kv: -kv[1]) if v > LIMIT]
        detail = "; ".join(far) if far else "its distances together exceed the limit"
        return (f"familiarity score {self.score:.2f}, above the limit {LIMIT} (1 is the 95th percentile of "
                f"held-out training clips): {detail}")

    def sentence(self) -> str:
        """The plain sentence Diagnose opens with for an unfamiliar clip, or the familiar one."""
        if self.unfamiliar:
            if self.trained_on:
                return (f"This model was trained on {self.trained_on}; this clip is unlike them, "
                        f"so its classes do not apply.")
            return "This clip is unlike the model's training data, so its classes do not apply."
        return f"The clip is like the model's training data (score {self.score:.2f}, limit {LIMIT})."


@dataclass(frozen=True)
class Reference:
    """What a clip is compared with.

    means: {part: G x d class means} and precisions: {part: d x d} for each Gaussian part
    (GAUSSIAN; G = 1 without labels); centre: d and vectors: M x d unit vectors of training frames
    (the neighbour distance); scales: the QUANTILE of each part over held-out clips (PARTS order);
    threshold: the QUANTILE of the mean of the scaled parts; trained_on: a phrase naming the
    training data."""

    means: dict[str, np.ndarray]
    precisions: dict[str, np.ndarray]
    centre: np.ndarray
    vectors: np.ndarray
    scales: np.ndarray = field(default_factory=lambda: np.ones(len(PARTS)))
    threshold: float = 1.0
    trained_on: str = ""

    def frame_parts(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """T x len(PARTS) raw distances of T frames; features holds FEATURE and every GAUSSIAN
        embedding (T x d each), as `embed_frames` returns them."""
        columns = []
        for part in PARTS:
            if part == "neighbours":
                columns.append(self._neighbours(np.asarray(features[FEATURE], np.float64)))
            else:
                x = np.asarray(features[GAUSSIAN[part]], np.float64)
                columns.append(_mahalanobis(x, self.means[part], self.precisions[part]))
        return np.stack(columns, axis=1)

    def _neighbours(self, x: np.ndarray) -> np.ndarray:
        """T mean cosine distances to the K nearest training frames."""
        similarity = _unit(x, self.centre) @ self.vectors.T
        k = min(K, self.vectors.shape[0])
        nearest = -np.partition(-similarity, k - 1, axis=1)[:, :k]
        return 1.0 - nearest.mean(axis=1)

    def clip_parts(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The clip's distances over their held-out QUANTILE (len(PARTS),)."""
        return self.frame_parts(features).mean(axis=0) / self.scales

    def judge(self, features: dict[str, np.ndarray]) -> Familiarity:
        """The familiarity of a clip from its frames' embeddings (see frame_parts)."""
        parts = self.clip_parts(features)
        score = float(parts.mean() / self.threshold)
        return Familiarity(score, bool(score > LIMIT), {p: float(v) for p, v in zip(PARTS, parts)}, self.trained_on)


def fit(features: dict[str, np.ndarray], groups: np.ndarray) -> Reference:
    """A reference from N training frames: features {FEATURE and every GAUSSIAN embedding: N x d};
    groups: N class indices (-1 for a frame without a label: with no labelled frame at all, one group)."""
    groups = np.asarray(groups)
    if (groups < 0).all():
        groups = np.zeros(len(groups), np.int64)
    labelled = groups >= 0
    means, precisions = {}, {}
    for part, column in GAUSSIAN.items():
        x = np.asarray(features[column], np.float64)[labelled]
        means[part], precisions[part] = _class_gaussian(x, groups[labelled])
    x = np.asarray(features[FEATURE], np.float64)
    rows = np.unique(np.linspace(0, len(x) - 1, min(MAX_REFERENCE, len(x))).round().astype(int))
    centre = x.mean(axis=0)
    return Reference(means, precisions, centre, _unit(x[rows], centre))


def build_reference(features: dict[str, np.ndarray], videos: np.ndarray, split: np.ndarray,
                    groups: np.ndarray | None = None, trained_on: str = "") -> Reference:
    """The reference of a run from N frames of its dataset, calibrated on held-out videos.

    features: {FEATURE and every GAUSSIAN embedding: N x d}; videos: N video ids; split: N of train | val (as the
    run split its videos); groups: N class indices (-1: unlabelled; None: no labels)."""
    videos, split = np.asarray(videos), np.asarray(split)
    groups = np.full(len(videos), -1) if groups is None else np.asarray(groups)
    train = split == "train"
    if not train.any():
        raise HiCoError("The run's training data has no training-split frames to compare clips with.")
    pick = lambda rows: {k: np.asarray(v)[rows] for k, v in features.items()}  # noqa: E731
    reference = fit(pick(train), groups[train])
    held = list(dict.fromkeys(videos[split == "val"]))
    clip_parts = []
    if len(held) >= MIN_HELD_OUT:
        clip_parts = [reference.frame_parts(pick(videos == v)).mean(axis=0) for v in held]
    else:  # too few held-out videos: folds of the training videos, each against the rest
        own = list(dict.fromkeys(videos[train]))
        if len(own) < 2:
            raise HiCoError("The run's training data has too few videos to calibrate a familiarity score.")
        for k in range(min(FOLDS, len(own))):
            out = set(own[k::FOLDS])
            fold = train & np.isin(videos, list(out))
            partial = fit(pick(train & ~fold), groups[train & ~fold])
            clip_parts += [partial.frame_parts(pick(videos == v)).mean(axis=0) for v in out]
    clip_parts = np.array(clip_parts)
    scales = np.maximum(np.quantile(clip_parts, QUANTILE, axis=0), 1e-9)
    threshold = max(float(np.quantile((clip_parts / scales).mean(axis=1), QUANTILE)), 1e-9)
    return Reference(reference.means, reference.precisions, reference.centre, reference.vectors, scales,
                     threshold, trained_on)


def describe_training(videos: int, classes: list[str], dataset: str = "") -> str:
    """'<videos> clips of <classes>' (and the dataset's name), for the unfamiliar sentence."""
    where = f" ({Path(dataset).name})" if dataset else ""
    if not classes:
        return f"{videos} unlabelled clips{where}"
    shown = ", ".join(classes[:8]) + (f" and {len(classes) - 8} more" if len(classes) > 8 else "")
    return f"{videos} clips{where} of {len(classes)} classes: {shown}"


# ---- stored references ------------------------------------------------------------------------
def reference_path(run_dir: str | Path, checkpoint: str, step: int) -> Path:
    return Path(run_dir) / EMBEDDINGS / f"familiarity-v{VERSION}-{checkpoint}-step{int(step)}.npz"


def save(path: Path, reference: Reference) -> Reference:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"centre": reference.centre, "vectors": reference.vectors, "scales": reference.scales}
    for part in GAUSSIAN:
        arrays[f"means_{part}"], arrays[f"precision_{part}"] = reference.means[part], reference.precisions[part]
    meta = json.dumps({"threshold": reference.threshold, "trained_on": reference.trained_on, "parts": list(PARTS)})
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(meta), **arrays)
    return reference


def read(path: Path) -> Reference | None:
    """A saved reference, or None when there is none or it was written for other PARTS."""
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("parts") != list(PARTS):
                return None
            means = {part: data[f"means_{part}"] for part in GAUSSIAN}
            precisions = {part: data[f"precision_{part}"] for part in GAUSSIAN}
            centre, vectors, scales = data["centre"], data["vectors"], data["scales"]
    except (OSError, KeyError, ValueError):
        return None
    return Reference(means, precisions, centre, vectors, scales, float(meta["threshold"]),
                     str(meta.get("trained_on", "")))


CACHED = 8  # references kept in memory per References
PENDING = ("Still measuring how familiar clips are for this run: its training clips are being embedded "
           "once (about a minute on a CPU); predict again shortly to get the familiarity score.")


class References:
    """The references of runs' checkpoints: the last CACHED in memory, those being built in the
    background, and why a build failed (said to the next caller, then retried). A server keeps one
    for as long as it lives (app.diagnose.Diagnoser); the CLI uses the module's REFERENCES."""

    def __init__(self, keep: int = CACHED):
        self.keep = keep
        self._lock = threading.Lock()
        self._cache: dict[tuple, Reference] = {}  # oldest first
        self._building: set[tuple] = set()
        self._failed: dict[tuple, str] = {}

    def get(self, loaded, wait: bool = True) -> Reference:
        """The reference of a loaded run's checkpoint (hico.inference.LoadedRun): the one the run wrote
        when it finished, else built once from its dataset and kept in RUN_DIR/embeddings and here.

        wait=False (a server answering a request) never embeds in the caller's thread: the embedding
        is started in the background, once per reference, and HiCoError(PENDING) is raised until it
        is done. HiCoError too when the training data is gone."""
        key = (str(loaded.run_dir.resolve()), loaded.checkpoint, loaded.step)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            failure = self._failed.pop(key, None)
        if failure:
            raise HiCoError(failure)
        path = reference_path(loaded.run_dir, loaded.checkpoint, loaded.step)
        reference = read(path)
        if reference is None:
            data_root = loaded.cfg.data.root
            root = expand_path(data_root) if data_root else None
            if root is None or not root.exists():
                raise HiCoError(f"Cannot tell whether the clip is like the training data: the run's dataset "
                                f"({data_root or 'none'}) is not on this server any more.")
            if not wait:
                with self._lock:
                    start = key not in self._building
                    self._building.add(key)
                if start:
                    threading.Thread(target=self._build, args=(key, loaded, path), daemon=True,
                                     name="hico-familiarity").start()
                raise HiCoError(PENDING)
            reference = save(path, embedded_reference(loaded))
        return self._remember(key, reference)

    def _build(self, key: tuple, loaded, path: Path) -> None:
        try:
            self._remember(key, save(path, embedded_reference(loaded)))
        except HiCoError as exc:
            with self._lock:
                self._failed[key] = str(exc)
        except Exception:  # a bug: logged, and the caller is told without a traceback
            log.exception("building the familiarity reference of %s failed", loaded.run_dir)
            with self._lock:
                self._failed[key] = ("Cannot tell whether the clip is like the training data: measuring it failed "
                                     "(the log says why).")
        finally:
            with self._lock:
                self._building.discard(key)

    def _remember(self, key: tuple, reference: Reference) -> Reference:
        with self._lock:
            self._cache[key] = reference
            while len(self._cache) > self.keep:
                self._cache.pop(next(iter(self._cache)))
        return reference


REFERENCES = References()  # the command line's (one process, one user)


def run_reference(loaded, wait: bool = True, references: References | None = None) -> Reference:
    """The reference of a loaded run's checkpoint, from `references` (default: REFERENCES); see
    References.get."""
    return (references or REFERENCES).get(loaded, wait)


def embedded_reference(loaded) -> Reference:
    """Build a run's reference from its dataset: train.val_frames evenly spaced frames of every
    video, prepared as the run prepares them, embedded with the loaded model."""
    import torch

    from hico.data import assign_splits, build_cache, find_clips
    from hico.inference import embed_frames
    from hico.io import ClipLimits
    from hico.val_accuracy import spaced_frames

    cfg = loaded.cfg
    dataset = find_clips(expand_path(cfg.data.root), cfg.data.frame_folders)
    splits = assign_splits(dataset, cfg.data.val_fraction, cfg.train.seed)
    cache_dir = expand_path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    cache = build_cache([c.path for c in dataset.clips], cfg.data.size, cfg.data.max_frames, cache_dir, False,
                        limits=ClipLimits.from_config(cfg.data), mask_screen=cfg.data.mask_screen)
    videos, frames = spaced_frames(cache.lengths, cfg.train.val_frames)
    rows = cache.offsets[videos] + frames
    vectors = embed_frames(loaded.model, cache.frames[torch.from_numpy(rows)], loaded.device)
    clips = [dataset.clips[v] for v in videos]
    index = {name: i for i, name in enumerate(loaded.classes)}
    groups = np.array([index.get(c.label, -1) for c in clips])
    split = np.array(["val" if splits[v] == "val" else "train" for v in videos])
    trained_on = describe_training(int(sum(s == "train" for s in splits)), loaded.classes, cfg.data.root)
    return build_reference(vectors, np.array([c.video_id for c in clips]), split, groups, trained_on)


# ---- arithmetic -------------------------------------------------------------------------------
def _class_gaussian(x: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G x d class means and the d x d precision of the shared, Ledoit-Wolf-shrunk covariance."""
    from sklearn.covariance import LedoitWolf

    labels, index = np.unique(groups, return_inverse=True)
    means = np.stack([x[index == g].mean(axis=0) for g in range(len(labels))])
    centred = x - means[index]
    if len(x) < 2:
        return means, np.eye(x.shape[1])
    return means, LedoitWolf(assume_centered=True).fit(centred).precision_


def _mahalanobis(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """T distances (not squared) of T x d rows to the nearest of G means under `precision`."""
    best = None
    for mean in means:
        diff = x - mean
        d2 = np.einsum("ij,jk,ik->i", diff, precision, diff)
        best = d2 if best is None else np.minimum(best, d2)
    return np.sqrt(np.maximum(best, 0.0))


def _unit(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return unit_rows(np.asarray(features, dtype=np.float64) - mean)
