"""Whether a clip is like a run's training data: the three distances, their calibration on held-out
videos (or folds of the training videos), the stored reference, and the background build."""

from __future__ import annotations

import numpy as np
import pytest

from hico import familiarity
from hico.familiarity import LIMIT, QUANTILE, build_reference, fit


def frames_of(videos: int, frames: int, centre: np.ndarray, rng, prefix: str, early_centre=None):
    """{backbone, c2, c3} feature rows of `videos` videos around `centre`, and their video ids."""
    early_centre = np.zeros(4) if early_centre is None else early_centre
    rows, early, texture, ids = [], [], [], []
    for v in range(videos):
        offset = centre + 0.3 * rng.normal(size=centre.shape)
        rows.append(offset + 0.1 * rng.normal(size=(frames, centre.size)))
        early.append(early_centre + 0.1 * rng.normal(size=(frames, early_centre.size)))
        texture.append(1.0 + 0.1 * rng.normal(size=(frames, 3)))
        ids += [f"{prefix}{v}"] * frames
    return {"backbone": np.concatenate(rows), "c2": np.concatenate(early), "c3": np.concatenate(texture)}, np.array(ids)


def join(*parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def brute_mahalanobis(x, means, precision):
    return np.sqrt(np.min([[float((r - m) @ precision @ (r - m)) for m in means] for r in x], axis=1))


def test_distances_match_their_definitions():
    rng = np.random.default_rng(0)
    train, _ = frames_of(6, 5, rng.normal(size=8) * 2, rng, "t")
    groups = np.repeat([0, 1], 15)
    ref = fit(train, groups)
    means = ref.means["mahalanobis"]
    assert means.shape == (2, 8) and np.allclose(means[0], train["backbone"][:15].mean(axis=0))
    x = {"backbone": rng.normal(size=(3, 8)), "c2": rng.normal(size=(3, 4)), "c3": rng.normal(size=(3, 3))}
    parts = ref.frame_parts(x)
    assert familiarity.PARTS == ("mahalanobis", "neighbours", "early", "middle")
    for k, part in enumerate(familiarity.PARTS):
        if part != "neighbours":
            column = familiarity.GAUSSIAN[part]
            assert np.allclose(parts[:, k], brute_mahalanobis(x[column], ref.means[part], ref.precisions[part]))
    centre = train["backbone"].mean(axis=0)
    unit = lambda a: (a - centre) / np.linalg.norm(a - centre, axis=1, keepdims=True)  # noqa: E731
    cos = unit(x["backbone"]) @ unit(train["backbone"]).T
    assert np.allclose(parts[:, 1], 1 - np.sort(cos, axis=1)[:, -familiarity.K:].mean(axis=1))


def test_held_out_videos_calibrate_the_score_and_far_clips_are_unfamiliar():
    rng = np.random.default_rng(1)
    centres = [rng.normal(size=16) * 3 for _ in range(2)]
    train = [frames_of(10, 6, c, rng, f"t{i}-") for i, c in enumerate(centres)]
    val = [frames_of(5, 6, c, rng, f"v{i}-") for i, c in enumerate(centres)]
    features = join(*[f for f, _ in train + val])
    videos = np.concatenate([v for _, v in train + val])
    split = np.array(["train"] * 120 + ["val"] * 60)
    groups = np.repeat([0, 1, 0, 1], [60, 60, 30, 30])
    reference = build_reference(features, videos, split, groups, "120 clips of 2 classes")
    held = np.array([reference.frame_parts({k: v[videos == vid] for k, v in features.items()}).mean(axis=0)
                     for vid in dict.fromkeys(videos[120:])])
    assert np.allclose(reference.scales, np.quantile(held, QUANTILE, axis=0))
    assert reference.threshold == pytest.approx(np.quantile((held / reference.scales).mean(axis=1), QUANTILE))
    near = reference.judge(frames_of(1, 6, centres[1], rng, "new")[0])
    assert not near.unfamiliar and near.score < LIMIT
    shifted = frames_of(1, 6, centres[1] + 8 * rng.normal(size=16), rng, "far")[0]
    far = reference.judge(shifted)
    assert far.unfamiliar and far.score > 3 * near.score and far.parts["mahalanobis"] > LIMIT
    early = reference.judge(frames_of(1, 6, centres[1], rng, "e", early_centre=np.full(4, 5.0))[0])
    assert early.unfamiliar and early.parts["early"] == max(early.parts.values())
    sentence = far.sentence()
    assert sentence.startswith("This model was trained on 120 clips of 2 classes; this clip is unlike them")
    assert sentence.endswith("classes do not apply.") and "features lie off" in far.reason()
    assert "like the model's training data" in near.sentence()


def test_without_enough_held_out_videos_folds_of_training_videos_calibrate():
    rng = np.random.default_rng(2)
    features, videos = frames_of(10, 4, rng.normal(size=8) * 2, rng, "t")
    split = np.array(["train"] * 36 + ["val"] * 4)  # one validation video: too few to calibrate on
    reference = build_reference(features, videos, split)
    assert np.all(np.isfinite(reference.scales)) and np.all(reference.scales > 0)
    assert 0 < reference.threshold < 10 and not reference.judge({k: v[:4] for k, v in features.items()}).unfamiliar


def test_a_tiny_training_set_still_gives_a_finite_calibration():
    rng = np.random.default_rng(3)
    features, videos = frames_of(2, 2, rng.normal(size=8), rng, "t")
    reference = build_reference(features, videos, np.array(["train"] * 4))
    assert np.isfinite(reference.threshold) and np.isfinite(reference.judge(features).score)
    with pytest.raises(Exception, match="too few videos"):
        build_reference({k: v[:2] for k, v in features.items()}, videos[:2], np.array(["train"] * 2))


def test_a_reference_is_saved_and_read_back(tmp_path):
    rng = np.random.default_rng(4)
    features, videos = frames_of(8, 3, rng.normal(size=8), rng, "t")
    reference = build_reference(features, videos, np.array(["train"] * 15 + ["val"] * 9), trained_on="x")
    path = familiarity.reference_path(tmp_path, "best", 7)
    familiarity.save(path, reference)
    again = familiarity.read(path)
    assert again.threshold == reference.threshold and again.trained_on == "x"
    assert all(np.array_equal(again.precisions[p], reference.precisions[p]) for p in familiarity.GAUSSIAN)
    assert np.array_equal(again.scales, reference.scales)
    assert familiarity.read(tmp_path / "missing.npz") is None


def test_a_run_writes_its_reference_and_a_server_never_embeds_a_dataset_in_the_request(class_dataset, tmp_path,
                                                                                      monkeypatch):
    """A finished run writes its reference; one without it (deleted here, as for a run trained
    before references were written) is built in the background: callers with wait=False get a
    sentence at once while one build runs, and then the reference a blocking call builds."""
    import threading
    import time

    from hico import config
    from hico.errors import HiCoError
    from hico.inference import load_run
    from hico.train import train

    cfg = config.load(None, [f"data.root={class_dataset}", "data.size=32", "train.batch_size=4", "train.max_steps=2",
                             "train.warmup_epochs=0", "device=cpu"])
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    loaded = load_run(run, "auto", "cpu")
    path = familiarity.reference_path(run, loaded.checkpoint, loaded.step)
    assert path.is_file(), "a finished run writes its familiarity reference"
    written = familiarity.read(path)
    assert "clips" in written.trained_on
    path.unlink()
    references = familiarity.References()  # a server's own, empty
    builds, build = [], familiarity.embedded_reference
    release = threading.Event()

    def counted(run):
        builds.append(threading.current_thread() is threading.main_thread())
        release.wait(30)
        return build(run)

    monkeypatch.setattr(familiarity, "embedded_reference", counted)
    for _ in range(3):
        with pytest.raises(HiCoError, match="Still measuring how familiar"):
            familiarity.run_reference(loaded, wait=False, references=references)
    release.set()
    deadline = time.monotonic() + 120
    while True:
        try:
            built = familiarity.run_reference(loaded, wait=False, references=references)
            break
        except HiCoError:
            assert time.monotonic() < deadline, "the background build never finished"
            time.sleep(0.2)
    assert path.is_file()
    assert builds == [False]  # one build, in the background, however many callers
    path.unlink()
    blocking = familiarity.run_reference(loaded, references=familiarity.References())
    assert blocking.threshold == pytest.approx(built.threshold) and np.allclose(blocking.vectors, built.vectors)
    # the finished run's own reference (its validation's frames) and the rebuilt one agree
    assert written.threshold == pytest.approx(built.threshold, rel=1e-3)
