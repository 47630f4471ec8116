"""The synthetic ultrasound generator: shapes, determinism, physics we rely on, class features, datasets."""

from __future__ import annotations

import csv
import logging
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from hico import synth
from hico.errors import HiCoError
from hico.synth import CLASSES, render_clip, render_sample, write_dataset


def _corr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _tissue(sample) -> np.ndarray:
    """Pixels well inside the image, away from the fan's edge and the overlays."""
    return ndimage.binary_erosion(sample.fan_mask & ~sample.overlay_mask, iterations=4)


# ---------------------------------------------------------------------------------- render_clip


def test_classes_are_the_eight_documented_names_in_order():
    assert CLASSES == (
        "lung_a_lines", "lung_b_lines", "lung_consolidation", "lung_effusion",
        "liver_f0", "liver_f1", "liver_f2", "liver_f3",
    )
    assert set(synth.CLASS_SCALES) == set(CLASSES)


def test_render_clip_shape_dtype_and_determinism():
    a = render_clip("liver_f1", frames=5, size=64, seed=3)
    b = render_clip("liver_f1", frames=5, size=64, seed=3)
    c = render_clip("liver_f1", frames=5, size=64, seed=4)
    assert a.shape == (5, 64, 64) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.2
    assert render_clip("lung_b_lines", frames=2, size=(48, 80), seed=0).shape == (2, 48, 80)


@pytest.mark.parametrize("size", [(48, 64), 32])
def test_every_class_renders_small_sizes_with_content(size):
    hw = (size, size) if isinstance(size, int) else size
    for label in CLASSES:
        sample = render_sample(label, frames=2, size=size, seed=1)
        assert sample.frames.shape == (2,) + hw and sample.frames.dtype == np.uint8
        inside = sample.frames[0][sample.fan_mask]
        assert sample.fan_mask.mean() > 0.25, label
        assert inside.std() > 8 and inside.max() > 80, label


def test_outside_the_convex_fan_is_black():
    sample = render_sample("liver_f2", frames=3, size=96, seed=5)
    assert sample.probe == "convex"
    outside = ~sample.fan_mask & ~sample.overlay_mask
    assert outside.mean() > 0.25  # a fan leaves the corners empty
    assert sample.frames[:, outside].max() == 0
    # The fan widens with depth: its first rows are narrower than its last ones.
    rows = np.nonzero(sample.fan_mask.any(axis=1))[0]
    width = sample.fan_mask.sum(axis=1)
    assert width[rows[:3]].mean() < 0.8 * width[rows[-8:-3]].mean()
    # The bottom corners beside the arc hold nothing at all.
    assert sample.frames[:, -6:, :6].max() == 0


def test_overlays_are_burned_in_outside_the_image():
    sample = render_sample("lung_a_lines", frames=2, size=128, seed=2)
    top = sample.overlay_mask[:8]
    assert top.any() and sample.frames[0][:8][top].max() > 60  # the scanner's text line
    assert (sample.overlay_mask & ~sample.fan_mask).sum() > 0.8 * sample.overlay_mask.sum()


def test_speckle_decorrelates_gradually_over_frames():
    sample = render_sample("liver_f0", frames=16, size=96, seed=2)
    clip, mask = sample.frames, _tissue(sample)
    near = _corr(clip[0], clip[1], mask)
    far = _corr(clip[0], clip[-1], mask)
    assert near > far + 0.05
    assert near < 0.995 and not np.array_equal(clip[0], clip[1])
    assert far > 0.2  # the anatomy is still the same clip


def _mid_scale_texture(label: str, seed: int) -> float:
    """Band-pass (mid-scale) variance over high-pass (speckle) variance inside the liver."""
    sample = render_sample(label, frames=1, size=128, seed=seed)
    frame = sample.frames[0].astype(np.float64)
    tissue = _tissue(sample) & (ndimage.uniform_filter(frame, 9) > 40)  # not vessels or shadows
    band = ndimage.gaussian_filter(frame, 1.5) - ndimage.gaussian_filter(frame, 6)
    fine = frame - ndimage.gaussian_filter(frame, 1.5)
    return float(band[tissue].var() / fine[tissue].var())


def test_liver_grades_differ_in_mid_scale_texture():
    seeds = range(4)
    f0 = np.mean([_mid_scale_texture("liver_f0", s) for s in seeds])
    f3 = np.mean([_mid_scale_texture("liver_f3", s) for s in seeds])
    assert f3 > 1.2 * f0


def _largest_dark_fraction(label: str, seed: int) -> float:
    """Largest connected near-black area in the middle half of the image, as a fraction of it."""
    sample = render_sample(label, frames=1, size=64, seed=seed)
    fan = sample.fan_mask & ~sample.overlay_mask
    smooth = ndimage.gaussian_filter(sample.frames[0].astype(np.float64), 1.5)
    cols = np.nonzero(fan.any(axis=0))[0]
    quarter = (cols[-1] - cols[0]) // 4
    band = np.zeros_like(fan)
    band[:, cols[0] + quarter: cols[-1] - quarter] = True
    labels, n = ndimage.label((smooth < 6) & fan & band)
    biggest = np.bincount(labels.ravel())[1:].max() if n else 0
    return biggest / float((fan & band).sum())


def test_effusion_has_a_large_anechoic_region():
    seeds = range(4)
    effusion = [_largest_dark_fraction("lung_effusion", s) for s in seeds]
    a_lines = [_largest_dark_fraction("lung_a_lines", s) for s in seeds]
    assert np.mean(effusion) > 0.1
    assert np.mean(effusion) > 3 * np.mean(a_lines)


def test_b_lines_are_bright_vertical_streaks_below_the_pleura():
    # On a linear probe B-lines are image columns: the deep half varies far more across
    # columns than down rows, unlike the A-line pattern, which is made of horizontal lines.
    def anisotropy(label, seed):
        sample = render_sample(label, frames=1, size=96, seed=seed)
        assert sample.probe == "linear"
        frame = ndimage.gaussian_filter(sample.frames[0].astype(np.float64), 1.0)
        tissue = _tissue(sample)
        rows = np.nonzero(tissue.any(axis=1))[0]
        deep = slice(rows[len(rows) // 2], rows[-1])
        cols = np.nonzero(tissue[deep].all(axis=0))[0]
        region = frame[deep][:, cols]
        return region.mean(axis=0).std() / (region.mean(axis=1).std() + 1e-9)

    linear = [s for s in range(12) if render_sample("lung_b_lines", 1, 32, s).probe == "linear"][:2]
    linear_a = [s for s in range(12) if render_sample("lung_a_lines", 1, 32, s).probe == "linear"][:2]
    assert np.mean([anisotropy("lung_b_lines", s) for s in linear]) > 2 * np.mean(
        [anisotropy("lung_a_lines", s) for s in linear_a])


def test_render_rejects_bad_arguments_naming_them():
    with pytest.raises(HiCoError, match="lung_x"):
        render_clip("lung_x")
    with pytest.raises(HiCoError, match="size"):
        render_clip("liver_f0", size=16)
    with pytest.raises(HiCoError, match="size"):
        render_clip("liver_f0", size=(64, 20))
    with pytest.raises(HiCoError, match="frames"):
        render_clip("liver_f0", frames=0)
    with pytest.raises(HiCoError, match="seed"):
        render_clip("liver_f0", seed=-1)


# -------------------------------------------------------------------------------- write_dataset


def _manifest(root) -> list[dict]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_write_dataset_layout_manifest_and_counts(tmp_path):
    from hico.io import read_clip

    root = write_dataset(tmp_path / "ds", clips=10, frames=4, size=32, seed=1, progress=False)
    assert root == tmp_path / "ds"
    rows = _manifest(root)
    assert len(rows) == 10 and list(rows[0]) == ["path", "label"]
    counts = Counter(row["label"] for row in rows)
    assert counts == Counter({name: (2 if i < 2 else 1) for i, name in enumerate(CLASSES)})
    for i, row in enumerate(rows):
        assert row["label"] == CLASSES[i % len(CLASSES)]
        assert row["path"] == f"{row['label']}/{row['label']}_{i:04d}.mp4"
        assert (root / row["path"]).is_file()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(CLASSES)
    readme = (root / "README.txt").read_text()
    assert "clips=10 frames=4 size=32x32 seed=1" in readme and "Not patient data" in readme
    clip = read_clip(root / rows[3]["path"])
    assert clip.shape[:3] == (4, 32, 32)
    # The file holds the clip render_clip makes for that index (up to lossy coding).
    expected = render_clip(rows[3]["label"], frames=4, size=32, seed=synth.clip_seed(1, 3))
    assert np.abs(clip[..., 0].astype(int) - expected.astype(int)).mean() < 12


def test_write_dataset_rerun_is_a_no_op_and_other_folders_are_refused(tmp_path):
    root = write_dataset(tmp_path / "ds", clips=8, frames=2, size=32, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert write_dataset(root, clips=8, frames=2, size=32, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps

    with pytest.raises(HiCoError, match="ds"):  # same folder, other parameters
        write_dataset(root, clips=9, frames=2, size=32, progress=False)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not a dataset")
    with pytest.raises(HiCoError, match="photos"):
        write_dataset(foreign, clips=8, frames=2, size=32, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]


@pytest.mark.parametrize(
    "kwargs, name",
    [({"clips": 0}, "clips"), ({"frames": 0}, "frames"), ({"size": 16}, "size"),
     ({"size": (32, 8)}, "size"), ({"fps": 0}, "fps"), ({"clips": 2.5}, "clips")],
)
def test_write_dataset_validates_arguments(tmp_path, kwargs, name):
    args = {"clips": 2, "frames": 2, "size": 32, "progress": False, **kwargs}
    with pytest.raises(HiCoError, match=name):
        write_dataset(tmp_path / "ds", **args)
    assert not (tmp_path / "ds").exists()


def test_write_dataset_files_do_not_depend_on_worker_processes(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(synth.dataset, "_POOL_MIN_PIXELS", 0)
    one = write_dataset(tmp_path / "one", clips=3, frames=2, size=32, progress=False, workers=1)
    with caplog.at_level(logging.DEBUG, logger="hico.synth"):
        two = write_dataset(tmp_path / "two", clips=3, frames=2, size=32, progress=False, workers=2)
    assert "with 2 worker processes" in caplog.text and "failed" not in caplog.text
    for row in _manifest(one):
        assert (one / row["path"]).read_bytes() == (two / row["path"]).read_bytes()
    assert (one / "manifest.csv").read_text() == (two / "manifest.csv").read_text()
