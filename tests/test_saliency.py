"""Grad-CAM per level against independent computations, and the overlay/video helpers."""

from __future__ import annotations

import copy
import functools
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hico.data.augment import normalise, to_unit
from hico.errors import HiCoError
from hico.io import read_clip
from hico.model import HiCoModel
from hico.saliency import (INFERNO, SALIENCY_LEVELS, colorize, grad_cam, grad_cams, overlay, side_by_side,
                           write_overlay_video)
from tests.conftest import moving_square_clip

SIZE = 48


@functools.lru_cache(maxsize=1)
def _random_model() -> HiCoModel:
    torch.manual_seed(0)
    model = HiCoModel(input_size=SIZE, num_classes=2, fpn_dim=32, hidden_dim=32, proj_dim=16)
    # Larger probe weights than nn.Linear's default, so every level has a definite class score.
    with torch.no_grad():
        for probe in model.probes.values():
            probe.weight.normal_(0, 1)
    return model.eval()


def tiny_model() -> HiCoModel:
    """A fresh copy of one randomly initialised 2-class model (building ResNet-18 costs ~0.5 s)."""
    return copy.deepcopy(_random_model())


def gray_frames(t: int = 5, size: int = SIZE) -> torch.Tensor:
    return torch.from_numpy(moving_square_clip(t, size, seed=3))[:, None]  # T x 1 x S x S uint8


def reference_cams(model: HiCoModel, frames: torch.Tensor, class_index: int | None) -> dict[str, np.ndarray]:
    """Grad-CAM by plain autograd through the whole network (parameters and all), T x S x S per level.

    backbone: C5 captured by a hook on the trunk during model.forward, score = its "logits".
    P levels: maps from model.features with the graph kept, score = the probe on the pooled map.
    In eval mode frames do not interact, so the gradient of the summed scores is each frame's own.
    """
    x = normalise(to_unit(frames))
    captured = {}
    handle = model.trunk.register_forward_hook(lambda m, i, out: captured.update(C5=out[3]))
    scores = {"backbone": (model(x)["logits"], captured["C5"])}
    handle.remove()
    maps = model.features(x)
    for level, name in zip(("local", "medium", "global"), model.levels):
        scores[level] = (model.probes[level](maps[name].mean(dim=(2, 3))), maps[name])
    out = {}
    for level, (logits, fmap) in scores.items():
        k = logits.argmax(1) if class_index is None else torch.full((len(frames),), class_index)
        (grad,) = torch.autograd.grad(logits[torch.arange(len(frames)), k].sum(), fmap)
        weights = grad.mean(dim=(2, 3))  # T x K
        cam = torch.clamp((weights[:, :, None, None] * fmap).sum(1), min=0)
        cam = F.interpolate(cam[:, None], size=frames.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.amax(dim=(1, 2), keepdim=True)
        out[level] = torch.where(peak > 0, cam / peak, 0.0).detach().numpy()
    return out


@pytest.mark.parametrize("class_index", [None, 1])
def test_grad_cams_match_full_autograd_reference(class_index):
    model = tiny_model()
    frames = gray_frames(5)
    cams = grad_cams(model, frames, class_index=class_index, batch_size=2)  # batches of 2, 2, 1
    expected = reference_cams(model, frames, class_index)
    for level in SALIENCY_LEVELS:
        assert cams[level].shape == (5, SIZE, SIZE) and cams[level].dtype == np.float32
        assert cams[level].max() == 1.0  # every frame of this random model has some positive evidence
        np.testing.assert_allclose(cams[level], expected[level], atol=1e-5, err_msg=level)
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_is_single_level_of_grad_cams_and_respects_class():
    model = tiny_model()
    frames = gray_frames(5)
    cams = grad_cams(model, frames)
    for level in SALIENCY_LEVELS:
        np.testing.assert_array_equal(grad_cam(model, frames, level), cams[level])
        assert 0.0 <= cams[level].min() and cams[level].max() <= 1.0
        peaks = cams[level].reshape(5, -1).max(axis=1)
        assert np.all((peaks == 0) | np.isclose(peaks, 1.0))
    # Opposite class weights, opposite evidence: the two classes' maps differ.
    with torch.no_grad():
        model.probes["global"].weight[1] = -model.probes["global"].weight[0]
    cam0 = grad_cam(model, frames, "global", class_index=0)
    cam1 = grad_cam(model, frames, "global", class_index=1)
    assert not np.allclose(cam0, cam1)


def test_cam_is_the_class_evidence_map_of_a_pooled_linear_head(monkeypatch):
    """GAP + linear head: Grad-CAM = relu(sum_c W_kc A_c), normalised; it lies where the evidence is."""
    model = tiny_model()
    side = SIZE // 4  # P2 is stride 4
    a = torch.zeros(1, 32, side, side)
    a[0, 0, :4, :4] = 2.0  # channel 0 lights the top-left corner
    a[0, 1, -4:, -4:] = 3.0  # channel 1 the bottom-right one
    a[0, 2] = torch.linspace(0, 1, side)[None, :]  # a ramp that class 0 counts against
    real_features = model.features

    def handcrafted(x):
        maps = real_features(x)
        maps["P2"] = a.expand(x.shape[0], -1, -1, -1)
        return maps

    monkeypatch.setattr(model, "features", handcrafted)
    with torch.no_grad():
        model.probes["local"].weight.zero_()
        model.probes["local"].weight[0, 0], model.probes["local"].weight[0, 2] = 1.0, -0.5
        model.probes["local"].weight[1, 1] = 1.0
    frames = gray_frames(1)
    reach = SIZE // 3 + 4  # the lit 4 x 4 cells cover 16 px; bilinear upsampling spreads them < 4 px more
    for k, near in ((0, (slice(0, reach), slice(0, reach))), (1, (slice(-reach, None), slice(-reach, None)))):
        cam = grad_cam(model, frames, "local", class_index=k)[0]
        evidence = torch.relu(torch.einsum("c,chw->hw", model.probes["local"].weight[k].detach(), a[0]))
        expected = F.interpolate(evidence[None, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(cam, (expected / expected.max()).numpy(), atol=1e-6)
        inside = np.zeros(cam.shape, bool)
        inside[near] = True
        assert cam.max() == 1.0 and inside[np.unravel_index(cam.argmax(), cam.shape)]
        assert cam[~inside].max() == 0.0
    # Evidence that is nowhere positive gives an all-zero map, not NaN.
    with torch.no_grad():
        model.probes["local"].weight[1, 1] = -1.0
    assert np.array_equal(grad_cam(model, frames, "local", class_index=1), np.zeros((1, SIZE, SIZE), np.float32))


def test_model_is_only_read():
    model = tiny_model()
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_cams(model, gray_frames(3))
    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BatchNorm statistics too
    # a model in training mode is a caller's bug: switching it would race with other threads
    with pytest.raises(ValueError, match="eval mode"):
        grad_cams(model.train(), gray_frames(1))


def test_rgb_frames_and_numpy_input():
    model = tiny_model()
    rgb = gray_frames(2).repeat(1, 3, 1, 1)
    cams = grad_cams(model, rgb.numpy(), levels=("medium", "backbone"))
    assert set(cams) == {"medium", "backbone"}
    assert set(grad_cams(model, rgb, levels="global")) == {"global"}
    empty = grad_cams(model, rgb[:0])
    assert all(empty[level].shape == (0, SIZE, SIZE) for level in SALIENCY_LEVELS)
    # A gray frame replicated to RGB is the same input to the network.
    np.testing.assert_allclose(cams["medium"], grad_cam(model, gray_frames(2), "medium"), atol=1e-5)


def test_errors_are_user_sentences():
    frames = gray_frames(2)
    unlabelled = tiny_model()
    unlabelled.classifier = unlabelled.probes = None  # what HiCoModel(num_classes=0) has
    with pytest.raises(HiCoError, match="without labels"):
        grad_cams(unlabelled, frames)
    with pytest.raises(HiCoError, match="Unknown saliency level 'P2'"):
        grad_cam(tiny_model(), frames, "P2")
    with pytest.raises(HiCoError, match="out of range"):
        grad_cam(tiny_model(), frames, "local", class_index=2)
    old = tiny_model()
    old.probes = None  # a checkpoint from before the level probes
    assert grad_cam(old, frames, "backbone").shape == (2, SIZE, SIZE)
    with pytest.raises(HiCoError, match="no level probes"):
        grad_cam(old, frames, "local")


def test_colorize_ends_and_monotone_brightness():
    assert colorize(np.zeros((1, 2, 2))).shape == (1, 2, 2, 3)
    assert colorize(np.zeros((1, 2, 2))).dtype == np.uint8
    np.testing.assert_array_equal(colorize(np.array([[[0.0]]]))[0, 0, 0], [0x00, 0x00, 0x04])
    np.testing.assert_array_equal(colorize(np.array([[[1.0]]]))[0, 0, 0], [0xFC, 0xFF, 0xA4])
    np.testing.assert_array_equal(colorize(np.array([[[-3.0, 7.0, np.nan]]]))[0, 0], INFERNO[[0, 255, 0]])
    luma = INFERNO.astype(float) @ [0.299, 0.587, 0.114]
    assert np.all(np.diff(luma) > 0)  # perceptual: brightness rises along the map


def test_overlay_keeps_cold_pixels_and_respects_mask():
    frames = moving_square_clip(3, 16, seed=1)[..., None]  # T x H x W x 1
    cam = np.zeros((3, 16, 16), np.float32)
    cam[:, 4:8, 4:8] = 1.0
    out = overlay(frames, cam, alpha=0.5)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    cold = cam == 0
    np.testing.assert_array_equal(out[cold], np.repeat(frames, 3, axis=3)[cold])
    hot = np.rint(0.5 * frames[0, 5, 5, 0] + 0.5 * np.array([0xFC, 0xFF, 0xA4]))
    np.testing.assert_array_equal(out[0, 5, 5], hot)
    # channels-first input gives the same picture; a coarse cam is resized to the frame
    np.testing.assert_array_equal(overlay(frames.transpose(0, 3, 1, 2), cam, alpha=0.5), out)
    coarse = overlay(frames, np.ones((3, 4, 4), np.float32), alpha=1.0)
    assert np.all(coarse == [0xFC, 0xFF, 0xA4])
    # no heat outside the mask
    mask = np.zeros((16, 16), bool)
    mask[:, :6] = True
    masked = overlay(frames, cam, alpha=0.5, mask=mask)
    np.testing.assert_array_equal(masked[:, :, 6:], np.repeat(frames, 3, axis=3)[:, :, 6:])
    np.testing.assert_array_equal(masked[:, :, :6], out[:, :, :6])


def test_side_by_side_layout():
    a = np.full((2, 20, 30, 3), 100, np.uint8)
    b = np.full((2, 20, 30, 3), 200, np.uint8)
    out = side_by_side([a, b], ["local", "a very long caption that cannot fit"])
    strip = out.shape[1] - 20
    assert out.shape == (2, strip + 20, 2 * 30 + 4, 3) and 8 <= strip <= 24
    np.testing.assert_array_equal(out[:, strip:, :30], a)
    np.testing.assert_array_equal(out[:, strip:, 34:], b)
    assert np.all(out[:, strip:, 30:34] == 24)  # the gap
    captions = out[0, :strip]
    assert captions[:, :30].max() > 200 and captions[:, 34:].max() > 200  # text drawn over each panel
    np.testing.assert_array_equal(out[0], out[1])
    with pytest.raises(ValueError):
        side_by_side([a], ["x", "y"])


def test_write_overlay_video_roundtrip(tmp_path):
    model = tiny_model()
    frames = gray_frames(4)
    cams = grad_cams(model, frames, levels=("local", "backbone"))
    video = side_by_side([overlay(frames.numpy(), cams[k]) for k in cams], list(cams))
    path = write_overlay_video(tmp_path / "saliency.mp4", video, fps=5)
    back = read_clip(path)
    assert back.shape[0] == 4 and back.shape[-1] == 3
    assert back.shape[1:3] == (video.shape[1] + video.shape[1] % 2, video.shape[2] + video.shape[2] % 2)


def test_all_levels_take_one_backbone_pass_per_batch(monkeypatch):
    """What keeps saliency fast, checked without a clock (a busy machine cannot fail it): one
    no-grad pass through the backbone per batch serves all four levels, and the backward pass
    never reaches the backbone."""
    torch.manual_seed(0)
    model = HiCoModel(input_size=96, num_classes=3).eval()
    frames = torch.from_numpy(moving_square_clip(64, 96, seed=0))[:, None]
    calls = []
    features = model.features
    monkeypatch.setattr(model, "features", lambda x: calls.append(x.shape[0]) or features(x))
    wall = time.perf_counter()
    cams = grad_cams(model, frames, batch_size=32)
    print(f"\ngrad_cams, 64 frames at 96 px, all four levels: {time.perf_counter() - wall:.2f} s")
    assert all(cams[level].shape == (64, 96, 96) for level in SALIENCY_LEVELS)
    assert calls == [32, 32]
    assert all(p.grad is None for p in model.parameters())
