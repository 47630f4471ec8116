"""Held-out accuracy during training (hico.val_accuracy) and the run's timeline of embeddings
(hico.timeline), on constructed values."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from hico import timeline
from hico.errors import HiCoError
from hico.val_accuracy import knn_predict, level_accuracies, spaced_frames


def test_spaced_frames_take_the_ends_and_all_of_a_short_video():
    videos, frames = spaced_frames(np.array([6, 2, 1, 9]), 4)
    assert videos.tolist() == [0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3]
    assert frames.tolist() == [0, 2, 3, 5, 0, 1, 0, 0, 3, 5, 8]
    assert spaced_frames(np.array([6]), 1)[1].tolist() == [0]
    assert len(spaced_frames(np.array([6, 3]), 0)[0]) == 0


def test_knn_matches_scikit_learn_on_standardised_unit_rows():
    rng = np.random.default_rng(0)
    train_x, test_x = rng.normal(size=(60, 5)) * [1, 10, 0.1, 3, 1], rng.normal(size=(40, 5))
    train_y = (train_x[:, 0] + rng.normal(size=60) > 0).astype(int)
    mean, std = train_x.mean(0), train_x.std(0)

    def unit(x):
        x = (x - mean) / std
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # two classes and an odd k: no tied votes, so the rule is plain majority on cosine neighbours
    expected = KNeighborsClassifier(n_neighbors=9).fit(unit(train_x), train_y).predict(unit(test_x))
    assert knn_predict(train_x, train_y, test_x, k=9).tolist() == expected.tolist()


def test_knn_tie_goes_to_the_more_similar_class():
    train_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 1.0]])
    train_y = np.array([0, 0, 1, 1])
    # k = 4: two votes each; the query lies nearer class 1. A constant column is only centred.
    test_x = np.array([[0.3, 0.9], [0.9, 0.3]])
    assert knn_predict(train_x, train_y, test_x, k=4).tolist() == [1, 0]
    flat = np.c_[train_x, np.ones(4)]
    assert knn_predict(flat, train_y, np.c_[test_x, np.ones(2)], k=4).tolist() == [1, 0]


def _clusters(labels: np.ndarray, dim: int, spread: float, seed: int) -> np.ndarray:
    """One well separated cluster per class: centre = 10 x a unit axis, plus noise."""
    rng = np.random.default_rng(seed)
    return 10 * np.eye(dim)[labels] + spread * rng.normal(size=(len(labels), dim))


def test_level_accuracies_are_exact_on_constructed_embeddings():
    labels = np.array([0, 1, 2] * 8 + [0, 1, 2, 0, -1, 1])  # 24 training frames, then 6 held out
    held_out = np.arange(len(labels)) >= 24
    separable = _clusters(np.maximum(labels, 0), 8, 0.1, 1)
    noise = np.random.default_rng(2).normal(size=(len(labels), 8))
    # the local level puts the held-out frames in the wrong cluster: class c looks like c + 1
    shifted = separable.copy()
    shifted[held_out] = _clusters((np.maximum(labels[held_out], 0) + 1) % 3, 8, 0.1, 3)
    logits = np.zeros((len(labels), 3))
    logits[np.arange(len(labels)), np.maximum(labels, 0)] = 1.0
    logits[25] = [5.0, 0.0, 0.0]  # one held-out frame of class 1 called 0: 4 of 5 labelled frames right
    vectors = {"local": shifted, "medium": separable, "global": noise, "backbone": separable,
               "probe_local": logits, "probe_medium": logits, "probe_global": np.zeros((len(labels), 3))}
    fields = level_accuracies(vectors, labels, held_out)
    assert fields["val_knn_acc_medium"] == 1.0 and fields["val_knn_acc_backbone"] == 1.0
    assert fields["val_knn_acc_local"] == 0.0
    assert 0.0 <= fields["val_knn_acc_global"] <= 1.0
    assert fields["val_probe_acc_local"] == fields["val_probe_acc_medium"] == pytest.approx(0.8)
    assert fields["val_probe_acc_global"] == pytest.approx(2 / 5)  # all-zero logits say class 0: two frames
    assert set(fields) == {f"val_knn_acc_{v}" for v in ("local", "medium", "global", "backbone")} | {
        f"val_probe_acc_{v}" for v in ("local", "medium", "global")}


def test_level_accuracies_skip_what_cannot_be_scored():
    vectors = {"global": np.eye(4), "probe_global": np.array([[1.0, 0.0], [0.0, 1.0]] * 2)}
    assert level_accuracies(vectors, np.array([0, 1, 0, 1]), np.zeros(4, bool)) == {}  # nothing held out
    assert level_accuracies(vectors, np.array([0, 1, -1, -1]), np.array([0, 0, 1, 1], bool)) == {}  # no labels there
    only_probe = level_accuracies(vectors, np.array([-1, -1, 0, 1]), np.array([0, 0, 1, 1], bool))
    assert only_probe == {"val_probe_acc_global": 1.0}  # no labelled training frames: no kNN
    no_probe = level_accuracies({"global": np.eye(4)}, np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1], bool))
    assert set(no_probe) == {"val_knn_acc_global"}


def test_thinning_keeps_the_ends_and_spreads_the_rest():
    have = []
    for step in range(10, 3010, 10):
        have.append(step)
        for gone in timeline.thinned(have, 32):
            have.remove(gone)
    assert len(have) == 32 and have[0] == 10 and have[-1] == 3000
    gaps = np.diff(have)
    assert gaps.min() >= 50 and gaps.max() <= 150  # 2990 / 31 = 96 each when perfectly even
    assert timeline.thinned([1, 2, 3], 32) == []
    assert timeline.thinned([1, 2, 4, 8], 3) == [2]  # dropping 2 leaves the gap 1..4, the smallest


def _snapshot(step: int, n: int = 5) -> timeline.Snapshot:
    rng = np.random.default_rng(step)
    return timeline.Snapshot(step, [f"c/v{i // 2}" for i in range(n)], np.arange(n) % 2,
                             ["c"] * (n - 1) + [""], ["train"] * (n - 2) + ["val"] * 2,
                             {"local": rng.normal(size=(n, 4)), "medium": rng.normal(size=(n, 4)),
                              "global": rng.normal(size=(n, 4)), "backbone": rng.normal(size=(n, 6))})


def test_timeline_round_trip_cap_and_truncation(tmp_path):
    run = tmp_path / "run"
    written = _snapshot(12)
    path = timeline.write(run, written)
    assert path == run / "timeline" / "step-0000012.npz"
    back = timeline.read(run, 12)
    assert back.step == 12 and back.video_id.tolist() == ["c/v0", "c/v0", "c/v1", "c/v1", "c/v2"]
    assert back.frame.tolist() == [0, 1, 0, 1, 0] and back.label.tolist() == ["c"] * 4 + [""]
    assert back.split.tolist() == ["train"] * 3 + ["val"] * 2
    for name, values in written.vectors.items():
        assert back.vectors[name].dtype == np.float32
        np.testing.assert_allclose(back.vectors[name], values, rtol=1e-3, atol=1e-3)  # kept as float16
    for step in range(13, 20):
        timeline.write(run, _snapshot(step), keep=4)
    assert timeline.steps(run) == [12, 14, 16, 19]
    (run / "timeline" / ".step-0000020.npz.abc.partial").write_bytes(b"torn")
    timeline.truncate(run, 15)
    assert timeline.steps(run) == [12, 14] and sorted(p.name for p in (run / "timeline").iterdir()) == [
        "step-0000012.npz", "step-0000014.npz"]
    with pytest.raises(HiCoError, match="no timeline snapshot at step 16"):
        timeline.read(run, 16)
    timeline.snapshot_path(run, 14).write_bytes(b"not an npz")
    with pytest.raises(HiCoError, match="cannot be read"):
        timeline.read(run, 14)
    with pytest.raises(ValueError, match="rows"):
        timeline.write(run, timeline.Snapshot(1, ["a"], [0, 1], ["x"], ["train"], {}))
    assert timeline.steps(tmp_path / "none") == []
