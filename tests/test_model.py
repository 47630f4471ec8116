"""The ResNet + FPN encoder: shapes, heads, gray input, parameter counts."""

import pytest
import torch

from hico.model import HiCoModel, feature_size


def test_output_shapes_and_pyramid_strides():
    model = HiCoModel(input_size=64, num_classes=5).eval()
    x = torch.randn(3, 3, 64, 64)
    maps = model.features(x)
    assert maps["P2"].shape == (3, 256, 16, 16)
    assert maps["P3"].shape == (3, 256, 8, 8)
    assert maps["P5"].shape == (3, 256, 2, 2)
    assert "P4" not in maps  # computed in the top-down path but not smoothed: unused
    out = model(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "local": (3, 256), "medium": (3, 256), "global": (3, 256), "logits": (3, 5),
        "probe_local": (3, 5), "probe_medium": (3, 5), "probe_global": (3, 5)}


def test_level_probes_watch_without_training_the_encoder():
    model = HiCoModel(input_size=32, num_classes=3)
    out = model(torch.randn(4, 1, 32, 32))
    out["probe_local"].sum().backward()
    assert model.probes["local"].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is None for p in model.fpn.parameters())


def test_gray_input_equals_replicated_rgb():
    model = HiCoModel(input_size=32).eval()
    gray = torch.randn(2, 1, 32, 32)
    a, b = model(gray), model(gray.expand(-1, 3, -1, -1))
    for key in ("local", "medium", "global"):
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_channels_last_model_keeps_its_stem_channels_last(channels):
    """A 1-channel input is NCHW and channels_last at once, and a convolution of it returns NCHW;
    a channels_last model makes its stem's output channels_last so that bn1 and the max-pool (and
    their backward) run the fast layout. The numbers do not change."""
    model = HiCoModel(input_size=32).eval()
    x = torch.randn(2, channels, 32, 32)
    plain = model(x)
    seen = []
    model.trunk.bn1.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model.to(memory_format=torch.channels_last)
    fast = model(x.contiguous(memory_format=torch.channels_last))
    assert seen[-1].is_contiguous(memory_format=torch.channels_last) and not seen[-1].is_contiguous()
    for key in ("local", "medium", "global"):
        torch.testing.assert_close(fast[key], plain[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [32, 33, 50, 224])
def test_feature_size_matches_the_network(size):
    model = HiCoModel(input_size=size, heads="flatten").eval()
    maps = model.features(torch.zeros(1, 1, size, size))
    for level in ("P2", "P3", "P5"):
        assert maps[level].shape[-1] == feature_size(size, level)
    assert model(torch.zeros(2, 1, size, size))["local"].shape == (2, 256)


def test_flatten_heads_are_the_published_size_at_224():
    pooled = sum(p.numel() for p in HiCoModel(input_size=224).parameters())
    flatten = HiCoModel(input_size=224, heads="flatten")
    local = sum(p.numel() for p in flatten.heads["local"].parameters())
    assert local == 256 * 56 * 56 * 256 + 256 + 256 * 256 + 256  # about 205 M: the published code's local head at 224 px
    assert 12e6 < pooled < 14e6
    assert 270e6 < sum(p.numel() for p in flatten.parameters()) < 290e6


def test_resnet50_and_other_levels():
    model = HiCoModel("resnet50", levels=("P2", "P4", "P5"), input_size=32).eval()
    assert model.features(torch.zeros(1, 3, 32, 32))["P4"].shape == (1, 256, 2, 2)
    assert model.trunk.channels[-1] == 2048
