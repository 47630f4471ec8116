"""Held-out accuracy of each level while a run trains: which frames are embedded, a kNN classifier
and the online probes' accuracy.

At each validation the trainer embeds a few evenly spaced frames of every video of the run
(`spaced_frames`), unaugmented and in eval mode, through `hico.inference.embed_frames`, so the
vectors are those `hico embed` gives for that checkpoint. `level_accuracies` then scores the
held-out videos' frames:

    val_knn_acc_<level>    each held-out frame takes the majority class of its k = 10 nearest
                           training-video frames by cosine similarity of *standardised* features
                           (each dimension centred and scaled by the training frames' mean and
                           std, as `hico eval` standardises); ties go to the class whose
                           neighbours are the more similar in sum. Levels: local, medium, global,
                           backbone.
    val_probe_acc_<level>  the model's own linear probe of that level (probe_<level>), argmax
                           against the frame's class. Only for models with classes.
    val_acc                the model's classifier (logits), argmax against the frame's class: what
                           Diagnose predicts with. Only for models with classes.

Accuracies are over held-out frames with a class and use every clip's class, also where
`data.label_fraction` withheld it from training (as `hico eval` does): they measure the
representation, and no held-out clip is ever trained on.
"""

from __future__ import annotations

import numpy as np

from hico.config import LEVELS, VIEWS
from hico.neighbours import unit_rows

KNN_K = 10
KNN_LEVELS = VIEWS
PROBE_LEVELS = LEVELS


def spaced_frames(lengths: np.ndarray, per_video: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_video` evenly spaced frames of each video, the first and last included.

    lengths: V frames per video. Returns (video: M int64, frame: M int64), video by video, where a
    video of L frames gives min(L, per_video) distinct frames (all of a short video).
    """
    videos, frames = [], []
    for v, length in enumerate(np.asarray(lengths, dtype=np.int64)):
        n = int(min(length, per_video))
        if n <= 0:
            continue
        picked = np.unique(np.round(np.linspace(0, length - 1, n)).astype(np.int64))
        videos.append(np.full(len(picked), v, dtype=np.int64))
        frames.append(picked)
    if not videos:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(videos), np.concatenate(frames)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Class of each test row by its k nearest training rows (cosine on standardised features).

    train_x: N x d, train_y: N int (class indices >= 0), test_x: M x d. Returns M int64. k is
    capped at N. Standardisation uses the training rows' mean and std (a constant dimension is
    only centred). A class with more of the k votes wins; equal votes go to the larger sum of
    cosine similarities.
    """
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y = np.asarray(train_y, np.int64)
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    std[std < 1e-12] = 1.0

    sim = unit_rows((test_x - mean) / std) @ unit_rows((train_x - mean) / std).T  # M x N
    k = min(k, len(train_y))
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # M x k, unordered
    near_sim = np.take_along_axis(sim, nearest, axis=1)
    classes = int(train_y.max()) + 1
    votes = np.zeros((len(test_x), classes))
    similarity = np.zeros((len(test_x), classes))
    rows = np.repeat(np.arange(len(test_x)), k)
    np.add.at(votes, (rows, train_y[nearest].ravel()), 1.0)
    np.add.at(similarity, (rows, train_y[nearest].ravel()), near_sim.ravel())
    # summed similarities lie in [-k, k], so / (2k + 1) breaks ties without overturning a vote
    return np.argmax(votes + similarity / (2 * k + 1), axis=1)


def level_accuracies(vectors: dict[str, np.ndarray], labels: np.ndarray, held_out: np.ndarray,
                     k: int = KNN_K) -> dict[str, float]:
    """The validation fields of a metrics line from one embedding of the chosen frames.

    vectors: {column: M x d} as `embed_frames` returns them (local, medium, global, backbone and,
    for a model with classes, probe_<level>: M x K logits); labels: M int, class index or -1 for
    a frame without a class; held_out: M bool, the frame's video is held out. Returns
    {val_knn_acc_<level>: float, val_probe_acc_<level>: float, val_acc: float} in [0, 1]; {} without labelled
    held-out frames, and no kNN fields without labelled training frames.
    """
    labels, held_out = np.asarray(labels, np.int64), np.asarray(held_out, bool)
    labelled = labels >= 0
    train, test = labelled & ~held_out, labelled & held_out
    if not test.any():
        return {}
    fields = {}
    if train.any():
        for level in KNN_LEVELS:
            if level in vectors:
                predicted = knn_predict(vectors[level][train], labels[train], vectors[level][test], k)
                fields[f"val_knn_acc_{level}"] = float((predicted == labels[test]).mean())
    if "logits" in vectors:
        fields["val_acc"] = float((vectors["logits"][test].argmax(axis=1) == labels[test]).mean())
    for level in PROBE_LEVELS:
        logits = vectors.get(f"probe_{level}")
        if logits is not None:
            fields[f"val_probe_acc_{level}"] = float((logits[test].argmax(axis=1) == labels[test]).mean())
    return fields
