"""Shared fixtures: an isolated HICO_HOME, a few threads, and small generated datasets."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def hico_home(tmp_path, monkeypatch):
    """Every test gets its own $HICO_HOME so caches and runs never leak between tests."""
    home = tmp_path / "hico_home"
    monkeypatch.setenv("HICO_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """`tmp_path_factory.mktemp` for module-scoped fixtures, whose folders go when the module's tests
    end: a module's trained runs take a few hundred MB, and a full session kept them all (14 GB) until
    it ended. (A passing test's own tmp_path goes when it ends: tmp_path_retention_policy.)"""
    made = []

    def mktemp(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(2)


def moving_square_clip(frames: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    """T x H x W uint8: speckle-like noise with a bright square that moves; class-free test data."""
    rng = np.random.default_rng(seed)
    clip = rng.integers(20, 90, (frames, size, size), dtype=np.uint8)
    for t in range(frames):
        x = (3 + 2 * t) % (size - 8)
        clip[t, 8:16, x:x + 8] = 220
    return clip


def write_class_dataset(root, classes=("bright", "dark"), per_class=4, frames=6, size=32):
    """root/<class>/<clip>.mp4 with a class-dependent brightness; returns root."""
    from hico.io import write_mp4

    for ci, name in enumerate(classes):
        for j in range(per_class):
            clip = moving_square_clip(frames, size, seed=10 * ci + j)
            if ci % 2:
                clip = (clip // 2).astype(np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            write_mp4(root / name / f"{name}_{j}.mp4", clip, fps=10)
    return root


def tiny_run_config(base, per_class: int = 5, frames: int = 5):
    """For module-scoped fixtures: $HICO_HOME under `base`, a bright/dark dataset in base/data, and
    a 2-step CPU config on it at 32 px. Returns (data folder, config)."""
    import os

    from hico import config

    os.environ["HICO_HOME"] = str(base / "home")
    data = write_class_dataset(base / "data", per_class=per_class, frames=frames)
    return data, config.load(None, [f"data.root={data}", "data.size=32", "train.batch_size=4", "train.max_steps=2",
                                    "train.warmup_epochs=0", "device=cpu"])


@pytest.fixture
def class_dataset(tmp_path):
    return write_class_dataset(tmp_path / "data")
