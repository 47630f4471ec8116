"""Neighbours across clips (hico.neighbours) and the UMAP layout built on them (hico.embed.project)."""

import numpy as np
import pytest

from hico.embed import project
from hico.neighbours import (cosine_knn, cross_level_agreement, distinct_fraction, knn, limit_group,
                             projection_scores)


def _brute(x, k, groups=None, same_group=None, metric="cosine"):
    if metric == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        dist = 1 - unit @ unit.T
    else:
        dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    out = []
    for i in range(len(x)):
        others = [j for j in np.argsort(dist[i], kind="stable") if j != i]
        if same_group is not None:
            own = [j for j in others if groups[j] == groups[i]][:same_group]
            others = sorted(own + [j for j in others if groups[j] != groups[i]], key=lambda j: dist[i, j])
        out.append([i] + others[:k - 1])
    return np.array(out)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("same_group", [None, 0, 2])
def test_knn_limits_neighbours_from_the_same_video(metric, same_group):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    videos = np.repeat([f"v{i}" for i in range(6)], 10)
    indices, distances = knn(x, 8, metric, videos, same_group, block=7)  # blocks of 7: the last partial
    expected = _brute(x, 8, videos, same_group, metric)
    assert [set(r) for r in indices] == [set(r) for r in expected]
    assert (indices[:, 0] == np.arange(60)).all() and (np.diff(distances, axis=1) >= 0).all()
    if same_group is not None:
        same = (videos[indices[:, 1:]] == videos[:, None]).sum(axis=1)
        assert same.max() == same_group  # the nearest of a row's video are its clip mates, up to the limit
    # the wide candidates cut down afterwards (NN-descent's path) give the same neighbours
    if metric == "cosine" and same_group is not None:
        wide = cosine_knn(x, 30)
        cut, _ = limit_group(*wide, videos, 8, same_group)
        assert (cut == indices).all()


def test_limit_group_fills_from_the_own_video_when_others_run_out():
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    videos = np.array(["a", "a", "a", "a", "b"])
    got, dist = limit_group(*knn(x, 5, "euclidean"), videos, 4, same_group=1)
    assert got[0].tolist() == [0, 1, 4, 2]  # self, one clip mate, the other video, then clip mates again
    assert dist[0].tolist() == [0.0, 1.0, 4.0, 2.0]
    assert got[4].tolist() == [4, 3, 2, 1]  # the only frame of its video: nothing to limit


def test_umap_graph_of_a_long_video_among_short_ones_fills_up_with_its_own_frames():
    """30 frames of one video and 3 of two others: a frame of the long video has only 6 frames
    outside it, so its 14 neighbours are those 6 and its 8 nearest clip mates, not 2."""
    from hico.embed import _umap_neighbours

    rng = np.random.default_rng(3)
    x = rng.normal(size=(36, 5)).astype(np.float32)
    videos = np.array(["long"] * 30 + ["s1"] * 3 + ["s2"] * 3)
    indices, distances = _umap_neighbours(x, 15, videos, 2, seed=0)
    assert (indices[:, 0] == np.arange(36)).all() and (np.diff(distances, axis=1) >= 0).all()
    assert all(len(set(row)) == 15 for row in indices)
    exact = _brute(x, 36)
    for i in range(30):
        mates = [j for j in exact[i, 1:] if videos[j] == "long"][:8]
        assert set(indices[i, 1:]) == set(range(30, 36)) | set(mates)
    for i in range(30, 36):  # two clip mates at most, which is all there are: nothing is left out
        assert set(indices[i]) == set(exact[i, :15])


def test_distinct_fraction_counts_points_with_a_cell_of_their_own():
    assert distinct_fraction(np.array([[0, 0], [0, 0], [1, 1], [np.nan, 0]])) == pytest.approx(2 / 3)
    assert distinct_fraction(np.linspace(0, 1, 50)[:, None].repeat(2, axis=1)) == 1.0
    assert distinct_fraction(np.zeros((4, 2))) == 0.25


def test_projection_scores_on_a_layout_that_keeps_or_mixes_the_classes():
    """Two classes, 3 clips each, far apart in the embedding: a layout that keeps the classes apart
    scores 1 on class agreement; one that swaps half of each class scores what it keeps."""
    rng = np.random.default_rng(1)
    centres = np.array([[10.0, 0, 0], [0, 10.0, 0]])
    labels = np.repeat(["a", "b"], 12)
    videos = np.repeat([f"v{i}" for i in range(6)], 4)
    x = centres[np.repeat([0, 1], 12)] + rng.normal(size=(24, 3))
    kept = project(x, "pca")
    scores = projection_scores(x, kept, labels, videos, k=3)
    assert scores["class_2d"] == 1.0 and scores["class_embedding"] == 1.0 and scores["distinct"] == 1.0
    assert 0 < scores["overlap"] <= 1
    mixed = kept.copy()
    mixed[[0, 1, 2, 3, 12, 13, 14, 15]] = mixed[[12, 13, 14, 15, 0, 1, 2, 3]]  # clip v0 and v3 trade places
    worse = projection_scores(x, mixed, labels, videos, k=3)
    assert worse["class_2d"] < 0.8 and worse["class_embedding"] == 1.0
    unlabelled = projection_scores(x, kept, [None] * 24, videos, k=3)
    assert unlabelled["class_2d"] is None and unlabelled["overlap"] == scores["overlap"]


def test_cross_level_agreement_counts_shared_neighbours_outside_the_video():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 6))
    videos = np.repeat([f"v{i}" for i in range(10)], 4)
    assert (cross_level_agreement(a, a * 3.0, videos, k=5) == 1.0).all()  # cosine: the same neighbours
    b = rng.normal(size=(40, 6))
    got = cross_level_agreement(a, b, videos, k=5, queries=np.array([0, 7]))
    near_a = _brute(a, 40, videos, 0)[[0, 7], 1:6]
    near_b = _brute(b, 40, videos, 0)[[0, 7], 1:6]
    assert got.tolist() == [len(set(p) & set(q)) / 5 for p, q in zip(near_a, near_b)]
    assert np.isnan(cross_level_agreement(a, b, ["one video"] * 40)).all()


def _clip_table(classes=4, clips=6, frames=16, dim=32, seed=0):
    """Frames of a clip a tight cluster (0.02) around the clip (0.5 from its class centre), classes
    apart: each frame's 15 nearest neighbours are its own clip's other frames."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    x, labels, videos = [], [], []
    for c in range(classes):
        for v in range(clips):
            clip = centres[c] + rng.normal(size=dim) * 0.5
            x.append(clip + rng.normal(size=(frames, dim)) * 0.02)
            labels += [f"class{c}"] * frames
            videos += [f"class{c}-clip{v}"] * frames
    return np.concatenate(x).astype(np.float32), np.array(labels), np.array(videos)


def test_umap_draws_frames_and_classes_not_one_dot_per_clip():
    """Before: the graph of each frame's 15 nearest neighbours was made of clips, so UMAP drew
    each clip as one dot and spread the clips evenly with the classes mixed. With the videos
    given, a frame keeps at most 2 clip mates among its neighbours and the rest are other clips."""
    x, labels, videos = _clip_table()
    collapsed = projection_scores(x, project(x, "umap", groups=None, min_dist=0.1), labels, videos)  # the old call
    fixed = projection_scores(x, project(x, "umap", groups=videos), labels, videos)
    assert collapsed["distinct"] < 0.8 and collapsed["class_2d"] < 0.6  # the bug, on this table
    assert fixed["distinct"] >= 0.9
    assert fixed["class_2d"] >= 0.9 and fixed["class_embedding"] == 1.0 and fixed["overlap"] >= 0.4


def test_umap_of_a_large_table_limits_clip_mates_among_nn_descent_candidates(monkeypatch):
    """Above EXACT_KNN_MAX rows the candidates come from NN-descent (here its exact stand-in: the
    real one compiles for most of a minute; with it this test passes too), as many as the
    neighbours plus the longest video, cut down by `limit_group`."""
    import umap

    from hico import embed

    asked = []

    def nearest_neighbors(x, n_neighbors, metric, metric_kwds, angular, random_state, n_jobs=-1):
        asked.append((n_neighbors, metric))
        return (*cosine_knn(x, n_neighbors), None)

    x, labels, videos = _clip_table()
    monkeypatch.setattr(embed, "EXACT_KNN_MAX", 100)
    monkeypatch.setattr(umap.umap_, "nearest_neighbors", nearest_neighbors)
    fixed = projection_scores(x, project(x, "umap", groups=videos), labels, videos)
    assert asked == [(15 + 16, "cosine")]
    assert fixed["distinct"] >= 0.9 and fixed["class_2d"] >= 0.9
