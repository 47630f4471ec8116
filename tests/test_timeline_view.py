"""The Explore tab's view over training (app/timeline_view.py) and the /timeline endpoint."""

import numpy as np
import pytest

from app.timeline_view import TimelineViews, align, aligned_layouts, build, class_agreement, displacement, normalise
from hico.embed import project
from app.ui import HiCoApp
from hico import timeline
from hico.errors import HiCoError
from hico.runs import CONFIG


def _layout(seed=0, n=40):
    return np.random.default_rng(seed).normal(size=(n, 2)) * [3.0, 1.0]


def test_a_rotated_and_reflected_copy_aligns_back():
    ref = normalise(_layout())
    angle = 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    for turn in (rotation, rotation @ np.diag([1.0, -1.0])):
        np.testing.assert_allclose(align(ref @ turn, ref), ref, atol=1e-6)
    # scale and shift go with normalise: a scaled, moved, rotated copy lays out as the original
    copy = aligned_layouts([(ref @ rotation) * 7.0 + 5.0, ref])
    np.testing.assert_allclose(copy[0], copy[1], atol=1e-6)


def test_displacement_is_zero_for_the_same_layout_and_positive_otherwise():
    a = normalise(_layout())
    assert displacement(a, a) == 0.0
    b = a + np.random.default_rng(1).normal(scale=0.1, size=a.shape)
    assert displacement(a, b) > 0.05
    a_gap = a.copy()
    a_gap[:5] = np.nan  # rows missing from one layout are left out
    assert displacement(a_gap, a) == 0.0


def test_principal_axes_match_the_full_pca_up_to_sign():
    rng = np.random.default_rng(2)
    for shape in ((120, 80), (30, 200), (5, 3)):  # Lanczos, Gram of rows, dense
        x = rng.normal(size=shape) * np.linspace(3, 1, shape[1])
        centred = x - x.mean(axis=0)
        full = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # the PCA by full SVD
        np.testing.assert_allclose(np.abs(project(x.astype(np.float32), "pca")), np.abs(full), atol=1e-4)
    labels, groups = np.array(["a", "a", "b", "b", ""]), np.array(["v0", "v0", "v1", "v2", "v3"])
    x = np.array([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1]])
    # 2 nearest outside the own clip: v0's frames get the unlabelled frame and a b (0 of 2 their class),
    # each b frame gets the other b and the unlabelled frame (1 of 2): mean (0 + 0 + 0.5 + 0.5) / 4
    assert class_agreement(x, labels, groups, k=2) == pytest.approx(0.25)


def _snapshot(step, seed, videos=6, frames=4, d=16, classes=("a", "b")):
    rng = np.random.default_rng(seed)
    video_id = np.repeat([f"v{i}" for i in range(videos)], frames)
    label = np.repeat([classes[i % len(classes)] for i in range(videos)], frames)
    centres = {c: rng.normal(size=d) * 3 for c in classes}
    vectors = {name: np.stack([centres[lab] for lab in label]) + rng.normal(size=(len(label), d))
               for name in timeline.COLUMNS}
    return timeline.Snapshot(step, video_id, np.tile(np.arange(frames), videos), label,
                             np.where(np.arange(len(label)) < 16, "train", "val"), vectors)


@pytest.fixture
def app_with_run(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / CONFIG).write_text("{}\n")
    for i, step in enumerate((10, 20, 30)):
        timeline.write(run_dir, _snapshot(step, seed=i))
    empty = tmp_path / "runs" / "old"
    empty.mkdir()
    (empty / CONFIG).write_text("{}\n")
    return HiCoApp(tmp_path), run_dir


def test_identical_snapshots_do_not_move(tmp_path):
    for step in (1, 2):
        timeline.write(tmp_path, _snapshot(step, seed=0))
    view = build(tmp_path, "global")
    assert view.moved[0] is None and view.moved[1] == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(view.coords[0], view.coords[1], atol=1e-5)
    # unit RMS radius, centred
    assert np.sqrt((view.coords[1] ** 2).sum(axis=1).mean()) == pytest.approx(1.0)
    assert np.abs(view.coords[1].mean(axis=0)).max() < 1e-9


def test_the_endpoint_gives_aligned_points_for_every_step(app_with_run):
    hico_app, run_dir = app_with_run
    out = hico_app.api_timeline("r1", "medium")
    assert out["ok"] is True and out["level"] == "medium" and out["steps"] == [10, 20, 30]
    assert [p["step"] for p in out["points"]] == [10, 20, 30]
    assert all(len(p["x"]) == len(p["y"]) == 24 for p in out["points"])
    assert out["video_id"][:5] == ["v0", "v0", "v0", "v0", "v1"] and out["frame"][:5] == [0, 1, 2, 3, 0]
    assert out["labels"][:5] == ["a", "a", "a", "a", "b"]
    assert out["moved"][0] is None and all(m > 0 for m in out["moved"][1:])
    # two well separated classes of 3 clips x 4 frames: of a frame's 10 nearest frames from other
    # clips, the 8 of its class come first, then 2 of the other class
    assert out["class_agreement"] == [0.8, 0.8, 0.8]
    # the latest step is PCA of the latest snapshot up to scale and sign
    latest = timeline.read(run_dir, 30).vectors["medium"]
    centred = latest - latest.mean(axis=0)
    first = np.linalg.svd(centred, full_matrices=False)[2][0]
    pc1 = centred @ first
    x = np.array(out["points"][-1]["x"])
    assert abs(np.corrcoef(pc1, x)[0, 1]) > 0.999
    # the slider's handler and the page's first view agree with the endpoint
    message, slider, value, caption = hico_app.show_timeline("r1", "medium")
    assert "3 snapshots of 24 frames" in message and slider["value"] == 2 and "step 30" in caption
    assert value["ids"] == list(range(24))
    np.testing.assert_allclose(value["panels"][0]["layers"][0]["x"], out["points"][-1]["x"], atol=1e-4)
    value0, caption0, _ = hico_app.timeline_step("r1", "medium", 0)
    assert value0["ids"] == value["ids"] and value0["color"] == value["color"]
    assert value0["panels"][0]["xrange"] == value["panels"][0]["xrange"] and "step 10" in caption0


def test_views_are_cached_until_a_new_snapshot_arrives(app_with_run):
    _, run_dir = app_with_run
    views = TimelineViews(keep=1)
    first = views.get(run_dir, "global")
    assert views.get(run_dir, "global") is first
    timeline.write(run_dir, _snapshot(40, seed=5))
    assert views.get(run_dir, "global").steps == [10, 20, 30, 40]
    views.get(run_dir, "local")
    assert len(views._views) == 1


def test_a_run_without_snapshots_and_bad_names_are_answered(app_with_run):
    hico_app, _ = app_with_run
    out = hico_app.api_timeline("old")
    assert out["ok"] is False and out["steps"] == [] and out["points"] == []
    assert out["message"].startswith("Run old has no timeline snapshots yet")
    for bad in ("../r1", "/etc", "nope", ""):
        out = hico_app.api_timeline(bad)
        assert out["ok"] is False and out["points"] == []
    assert "not a run name" in hico_app.api_timeline("../r1")["message"]
    assert "no run named" in hico_app.api_timeline("nope")["message"]
    out = hico_app.api_timeline("r1", "pixels")
    assert out["ok"] is False and "Level must be one of" in out["message"]
    message, slider, value, caption = hico_app.show_timeline("old", "global")
    assert "has no timeline snapshots yet" in message and value is None
    with pytest.raises(HiCoError):
        build(hico_app.run_path("old"), "global")
