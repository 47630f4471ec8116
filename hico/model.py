"""ResNet + FPN encoder with per-level projection heads and a small classifier, as HiCo describes them.

Shapes, for an input of B x C x S x S (C is 1 for gray or 3 for colour):
    C2..C5  backbone stage outputs, strides 4, 8, 16, 32 (64..512 channels for ResNet-18)
    P2..P5  FPN maps with `fpn_dim` channels at the same strides
    local, medium, global   B x proj_dim projections of the three chosen levels
    logits  B x classes, from the pooled C5 (only when the model has classes): an MLP (Linear,
            ReLU, Linear) or, with classifier="linear", a single Linear layer
    probe_local, probe_medium, probe_global   B x classes: linear probes on each pooled level,
            trained on detached features (they watch the levels and never change them); their
            weights turn a level's map into a class activation map for saliency
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hico.config import LEVELS, Config

STRIDES = {"P2": 4, "P3": 8, "P4": 16, "P5": 32}
STAGES = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet50": ("bottleneck", (3, 4, 6, 3))}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x), inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x), inplace=True)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet trunk returning the four stage outputs C2..C5."""

    def __init__(self, name: str = "resnet18"):
        super().__init__()
        if name not in STAGES:
            raise ValueError(f"backbone must be one of {', '.join(STAGES)}, got {name!r}")
        kind, depths = STAGES[name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, stages = 64, []
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels = tuple(w * block.expansion for w in (64, 128, 256, 512))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            # A gray frame replicated to RGB meets the summed RGB kernels: same result, a third of the reads.
            x = F.conv2d(x, self.conv1.weight.sum(1, keepdim=True), stride=2, padding=3)
        else:
            x = self.conv1(x)
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            # A 1-channel input is NCHW and channels_last at once, and the convolution then returns
            # NCHW: bn1, the max-pool and their backward would run the slow layout (10 of 46 ms of a
            # b128 step on an H200). The model is in channels_last: keep the stem's output there too.
            x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(F.relu(self.bn1(x), inplace=True), 3, 2, 1)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]


class FPN(nn.Module):
    """Top-down pyramid: P5 = lateral(C5); Pk = smooth(up(top-down) + lateral(Ck)) for k < 5.

    The top-down path carries the unsmoothed sums (as the published code does: each level is
    upsampled before its smoothing conv); smoothing convs exist only for the levels that are used.
    """

    def __init__(self, channels: tuple[int, ...], dim: int, levels: tuple[str, ...]):
        super().__init__()
        self.levels = levels
        self.lowest = min(int(v[1]) for v in levels)
        self.lateral = nn.ModuleDict({f"P{k}": nn.Conv2d(channels[k - 2], dim, 1) for k in range(self.lowest, 6)})
        self.smooth = nn.ModuleDict({v: nn.Conv2d(dim, dim, 3, padding=1) for v in levels if v != "P5"})

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        top = self.lateral["P5"](feats[3])
        out = {"P5": top}
        for k in range(4, self.lowest - 1, -1):
            lat = self.lateral[f"P{k}"](feats[k - 2])
            top = lat + F.interpolate(top, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            if f"P{k}" in self.smooth:
                out[f"P{k}"] = self.smooth[f"P{k}"](top)
        return out


def feature_size(size: int, level: str) -> int:
    """Side of the level's map for an S x S input: every stride-2 step rounds up."""
    side = size
    for _ in range(int(math.log2(STRIDES[level]))):
        side = (side + 1) // 2
    return side


def spatial_mean(fmap: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x C, the mean over positions, as a sum divided by H * W: on a CPU a bf16
    channels_last `mean` takes a slow path (18 ms for a 64 x 256 x 24 x 24 map on two cores, the sum
    1.1 ms), which made the means 12 % of embedding a dataset. Same value up to bf16 rounding."""
    return fmap.sum(dim=(2, 3)) / (fmap.shape[2] * fmap.shape[3])


class ProjectionHead(nn.Module):
    """Linear -> ReLU -> Linear on a pooled (`pooled`) or flattened (`flatten`) level map."""

    def __init__(self, kind: str, dim: int, side: int, hidden: int, out: int):
        super().__init__()
        if kind not in ("pooled", "flatten"):
            raise ValueError(f"heads must be pooled or flatten, got {kind!r}")
        self.kind = kind
        fan_in = dim if kind == "pooled" else dim * side * side
        self.mlp = nn.Sequential(nn.Linear(fan_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        x = fmap.mean(dim=(2, 3)) if self.kind == "pooled" else fmap.flatten(1)
        return self.mlp(x)


class HiCoModel(nn.Module):
    """The HiCo encoder: ResNet trunk, FPN, one projection head per level, optional classifier."""

    def __init__(self, backbone: str = "resnet18", heads: str = "pooled", levels=("P2", "P3", "P5"),
                 input_size: int = 224, num_classes: int = 0, fpn_dim: int = 256,
                 hidden_dim: int = 256, proj_dim: int = 256, classifier: str = "mlp"):
        super().__init__()
        self.levels = tuple(levels)
        self.input_size = input_size
        self.num_classes = num_classes
        self.trunk = ResNet(backbone)
        self.fpn = FPN(self.trunk.channels, fpn_dim, self.levels)
        self.heads = nn.ModuleDict({
            name: ProjectionHead(heads, fpn_dim, feature_size(input_size, lvl), hidden_dim, proj_dim)
            for name, lvl in zip(LEVELS, self.levels)
        })
        self.classifier = self.probes = None
        if classifier not in ("mlp", "linear"):
            raise ValueError(f"classifier must be mlp or linear, got {classifier!r}")
        if num_classes > 0:
            c5 = self.trunk.channels[3]
            self.classifier = (nn.Sequential(nn.Linear(c5, num_classes)) if classifier == "linear" else
                               nn.Sequential(nn.Linear(c5, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes)))
            self.probes = nn.ModuleDict({name: nn.Linear(fpn_dim, num_classes) for name in LEVELS})
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone and pyramid maps: C2, C3, C5 and every used P level, keyed by name."""
        feats = self.trunk(x)
        maps = self.fpn(feats)
        maps["C2"], maps["C3"], maps["C5"] = feats[0], feats[1], feats[3]
        return maps

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: B x C x S x S normalised -> {local, medium, global: B x proj_dim, logits and
        probe_<level>: B x K when the model has classes}."""
        maps = self.features(x)
        out = {name: self.heads[name](maps[lvl]) for name, lvl in zip(LEVELS, self.levels)}
        if self.classifier is not None:
            out["logits"] = self.classifier(maps["C5"].mean(dim=(2, 3)))
        if self.probes is not None:
            for name, lvl in zip(LEVELS, self.levels):
                out[f"probe_{name}"] = self.probes[name](maps[lvl].detach().mean(dim=(2, 3)))
        return out

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-frame embeddings: pooled level maps (local, medium, global: B x fpn_dim),
        pooled C5 (backbone: B x C5 channels), pooled C2 and C3 (c2, c3: the first two residual
        stages' channel means, image statistics that hico.familiarity reads) and the head outputs
        (z_local, ...: B x proj_dim). A pooled head reuses its level's pooled map."""
        maps = self.features(x)
        out = {"backbone": spatial_mean(maps["C5"]), "c2": spatial_mean(maps["C2"]), "c3": spatial_mean(maps["C3"])}
        for name, lvl in zip(LEVELS, self.levels):
            out[name] = spatial_mean(maps[lvl])
            head = self.heads[name]
            out[f"z_{name}"] = head.mlp(out[name]) if head.kind == "pooled" else head(maps[lvl])
        if self.classifier is not None:
            out["logits"] = self.classifier(out["backbone"])
        if self.probes is not None:
            for name in LEVELS:
                out[f"probe_{name}"] = self.probes[name](out[name])
        return out


def build_model(cfg: Config, num_classes: int) -> HiCoModel:
    m = cfg.model
    return HiCoModel(m.backbone, m.heads, tuple(m.levels), cfg.data.size, num_classes,
                     m.fpn_dim, m.hidden_dim, m.proj_dim, m.classifier)


def architecture(cfg: Config, num_classes: int) -> dict:
    """What must match for a checkpoint to load into a model."""
    m = cfg.model
    return {"backbone": m.backbone, "heads": m.heads, "levels": list(m.levels), "input_size": cfg.data.size,
            "num_classes": num_classes, "fpn_dim": m.fpn_dim, "hidden_dim": m.hidden_dim, "proj_dim": m.proj_dim,
            "classifier": m.classifier}


def encoder_parameters(model: HiCoModel) -> list[nn.Parameter]:
    """The trunk's and pyramid's parameters: what fine-tuning trains at train.backbone_lr."""
    return [*model.trunk.parameters(), *model.fpn.parameters()]
