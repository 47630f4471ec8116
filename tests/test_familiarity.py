"""Whether a clip is like a run's training data: the reference, its calibration on held-out
videos (or leave-one-video-out), and the score of clips from the training distribution and far
from it."""

from __future__ import annotations

import numpy as np
import pytest

from hico import familiarity
from hico.familiarity import LIMIT, build_reference


def frames_of(videos: int, frames: int, centre: np.ndarray, rng, prefix: str):
    """videos x frames feature rows around `centre` (each video its own offset), and their ids."""
    rows, ids = [], []
    for v in range(videos):
        offset = centre + 0.3 * rng.normal(size=centre.shape)
        rows.append(offset + 0.1 * rng.normal(size=(frames, centre.size)))
        ids += [f"{prefix}{v}"] * frames
    return np.concatenate(rows).astype(np.float32), np.array(ids)


def brute_distance(features, reference_rows, mean):
    """Mean over frames of the mean cosine distance to the K nearest reference rows (centred)."""
    unit = lambda x: (x - mean) / np.linalg.norm(x - mean, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(features) @ unit(reference_rows).T
    return float((1 - np.sort(similarity, axis=1)[:, -familiarity.K:].mean(axis=1)).mean())


def test_held_out_videos_calibrate_the_score_and_a_far_clip_is_unfamiliar():
    rng = np.random.default_rng(0)
    centres = [rng.normal(size=16) * 3 for _ in range(2)]
    train = [frames_of(8, 6, c, rng, f"t{i}-") for i, c in enumerate(centres)]
    val = [frames_of(4, 6, c, rng, f"v{i}-") for i, c in enumerate(centres)]
    features = np.concatenate([x for x, _ in train + val])
    videos = np.concatenate([v for _, v in train + val])
    split = np.array(["train"] * 96 + ["val"] * 48)
    reference = build_reference(features, videos, split)
    mean = features[:96].mean(axis=0)
    held = [brute_distance(features[videos == v], features[:96], mean) for v in np.unique(videos[96:])]
    assert reference.threshold == pytest.approx(np.quantile(held, familiarity.QUANTILE), rel=1e-5)
    new, _ = frames_of(1, 6, centres[1], rng, "new")
    near = reference.judge(new)
    assert not near.unfamiliar and near.score < 1.5
    assert near.distance == pytest.approx(brute_distance(new, features[:96], mean), rel=1e-5)
    far = reference.judge(new + 6 * rng.normal(size=16).astype(np.float32))
    assert far.unfamiliar and far.score > LIMIT and far.score > 3 * near.score
    assert "unlike the model's training data" in far.sentence() and "score" in near.sentence()


def test_without_enough_held_out_videos_each_training_video_is_left_out_of_its_own_reference():
    rng = np.random.default_rng(1)
    features, videos = frames_of(6, 5, rng.normal(size=8) * 2, rng, "t")
    split = np.array(["train"] * 25 + ["val"] * 5)  # one validation video: too few to calibrate on
    reference = build_reference(features, videos, split)
    train = split == "train"
    mean = features[train].mean(axis=0)
    held = [brute_distance(features[videos == v], features[train & (videos != v)], mean)
            for v in np.unique(videos[train])]
    assert reference.threshold == pytest.approx(np.quantile(held, familiarity.QUANTILE), rel=1e-5)


def test_a_run_reference_is_built_once_from_the_timeline_and_kept(tmp_path, monkeypatch):
    """The reference comes from the timeline snapshot at the checkpoint's step, is saved beside
    the run's embeddings and read back (no dataset needed then)."""
    from hico import timeline

    rng = np.random.default_rng(2)
    features, videos = frames_of(8, 4, rng.normal(size=8), rng, "t")
    split = np.array(["train"] * 20 + ["val"] * 12)
    snap = timeline.Snapshot(7, videos, np.tile(np.arange(4), 8), np.array(["a"] * 32), split,
                             {c: features for c in timeline.COLUMNS})
    timeline.write(tmp_path, snap)
    first = familiarity.run_reference(tmp_path, "last", 7, "/no/such/dataset")
    assert (tmp_path / "embeddings" / "familiarity-last-step7.npz").is_file()
    familiarity._cache.clear()
    monkeypatch.setattr(timeline, "read", lambda *a: pytest.fail("read the snapshot again"))
    again = familiarity.run_reference(tmp_path, "last", 7, "/no/such/dataset")
    assert again.threshold == first.threshold and np.array_equal(again.vectors, first.vectors)
    with pytest.raises(Exception, match="not on this server any more"):
        familiarity.run_reference(tmp_path, "last", 8, "/no/such/dataset")


def test_a_tiny_training_set_still_gives_a_finite_calibration():
    """Two training videos of two frames and no validation videos: leaving a video out leaves
    fewer than K reference frames, which are averaged as they are."""
    rng = np.random.default_rng(3)
    features, videos = frames_of(2, 2, rng.normal(size=8), rng, "t")
    reference = build_reference(features, videos, np.array(["train"] * 4))
    assert np.isfinite(reference.threshold) and 0 < reference.threshold <= 2
    assert np.isfinite(reference.judge(features[:2]).score)


def test_a_server_never_embeds_a_dataset_in_the_request(class_dataset, tmp_path):
    """A checkpoint without a timeline snapshot at its step (here: a run that never validated)
    needs its dataset embedded. With wait=False the first callers get a sentence at once while
    one background build runs; then the reference is the one a blocking call builds."""
    import threading
    import time

    from hico import config
    from hico.errors import HiCoError
    from hico.train import train

    cfg = config.load(None, [f"data.root={class_dataset}", "data.size=32", "train.batch_size=4", "train.max_steps=1",
                             "train.val_every=0", "train.warmup_epochs=0", "device=cpu"])
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    started = threading.active_count()
    for _ in range(3):
        with pytest.raises(HiCoError, match="Still measuring how familiar"):
            familiarity.run_reference(run, "last", 1, str(class_dataset), "cpu", wait=False)
    assert threading.active_count() <= started + 1  # one build, however many callers
    deadline = time.monotonic() + 120
    while True:
        try:
            built = familiarity.run_reference(run, "last", 1, str(class_dataset), "cpu", wait=False)
            break
        except HiCoError:
            assert time.monotonic() < deadline, "the background build never finished"
            time.sleep(0.2)
    assert (run / "embeddings" / "familiarity-last-step1.npz").is_file()
    familiarity._cache.clear()
    (run / "embeddings" / "familiarity-last-step1.npz").unlink()
    blocking = familiarity.run_reference(run, "last", 1, str(class_dataset), "cpu")
    assert blocking.threshold == pytest.approx(built.threshold) and np.allclose(blocking.vectors, built.vectors)
    assert len(built.vectors) == 6 * 6  # every frame of the 6 training videos (2 of 8 held out to calibrate)
