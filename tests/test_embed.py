"""Embedding and projection pieces on their own: exact cosine neighbours, UMAP, inference precision."""

import numpy as np
import pytest
import torch

from hico.embed import project
from hico.inference import bf16_inference, embed_frames, freeze
from hico.model import HiCoModel
from hico.neighbours import cosine_knn


def _clusters(n=300, d=32, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d)) * 3
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def test_cosine_knn_matches_brute_force_across_blocks():
    x, _ = _clusters(n=257)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = 1.0 - unit @ unit.T
    np.fill_diagonal(full, -1.0)
    expected = np.argsort(full, axis=1, kind="stable")[:, :7]
    indices, distances = cosine_knn(x, 7, block=50)  # 6 blocks, the last a partial one
    assert indices.shape == (257, 7) and distances.dtype == np.float32
    assert (indices[:, 0] == np.arange(257)).all() and np.allclose(distances[:, 0], 0, atol=1e-6)
    assert np.array_equal(np.sort(indices, axis=1), np.sort(expected, axis=1))
    assert (np.diff(distances, axis=1) >= 0).all()
    i, j = 10, indices[10, 3]
    assert np.isclose(distances[10, 3], 1 - unit[i] @ unit[j], atol=1e-5)


def test_cosine_knn_scale_invariant_and_checks_k():
    x, _ = _clusters(n=40)
    a, _ = cosine_knn(x, 5)
    b, _ = cosine_knn(x * np.linspace(0.5, 9, 40, dtype=np.float32)[:, None], 5)
    assert np.array_equal(a, b)
    try:
        cosine_knn(x, 41)
    except ValueError as exc:
        assert "between 1 and the number of rows (40)" in str(exc)
    else:
        raise AssertionError("k above the row count was accepted")


def test_umap_keeps_clusters_apart():
    x, labels = _clusters()
    xy = project(x, "umap", seed=0)
    assert xy.shape == (300, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    centres = np.stack([xy[labels == c].mean(axis=0) for c in range(4)])
    spread = max(np.linalg.norm(xy[labels == c] - centres[c], axis=1).mean() for c in range(4))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 2 * spread
    assert np.array_equal(xy, project(x, "umap", seed=0))  # seeded: the same layout again


def test_umap_on_a_handful_of_rows_falls_back_to_pca():
    x, _ = _clusters(n=4)
    assert np.allclose(project(x, "umap"), project(x, "pca"))
    assert project(_clusters(n=6)[0], "umap").shape == (6, 2)


def test_embed_frames_agrees_with_float32_model_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = freeze(HiCoModel(input_size=32, num_classes=3))
    layouts = [p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()]
    frames = torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8)
    out = embed_frames(model, frames, torch.device("cpu"), batch_size=4)
    assert out["local"].shape == (10, 256) and out["logits"].shape == (10, 3)
    # nothing about the model changes: threads may share it
    assert [p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()] == layouts
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="eval mode"):
        embed_frames(HiCoModel(input_size=32), frames, torch.device("cpu"))
    with torch.no_grad():
        ref = model.embed((frames.float() / 255 - 0.5) / 0.25)
    for key in ("backbone", "local", "z_global", "logits"):
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(out[key]), ref[key], dim=1)
        assert cos.min() > (0.999 if bf16_inference(torch.device("cpu")) else 0.99999), key


def test_shared_space_puts_agreeing_levels_on_top_of_each_other_and_keeps_disagreement():
    """Level b is level a rotated, scaled and moved away (as two projection heads place the same
    frames), except five frames it places elsewhere: in the shared space the 195 agreeing frames'
    lines vanish and the five stand out; each level's own geometry is unchanged."""
    from hico.embed import shared_space

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    b = 3.0 * a @ rotation + 10.0
    b[:5] += 4.0 * rng.normal(size=(5, 16))
    naive = np.linalg.norm(a - b, axis=1)
    a2, b2 = shared_space(a, b)
    lines = np.linalg.norm(a2 - b2, axis=1)
    assert np.median(naive) > 10 and np.median(lines) < 0.1 * np.median(naive)
    assert lines[:5].min() > 5 * np.median(lines[5:])
    pair = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    assert np.allclose(pair(a2) / pair(a2).mean(), pair(a) / pair(a).mean())  # a rigid, uniform change only
    with pytest.raises(ValueError, match="two M x d arrays"):
        shared_space(a, b[:, :3])
