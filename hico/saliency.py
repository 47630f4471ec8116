"""Grad-CAM per FPN level (and the backbone), and the overlays that show it.

Each saliency level pairs a feature map with the head that reads a class score from it:

    local, medium, global   the level's P map (model.levels: P2, P3, P5 by default) and its linear
                            probe, `model.probes[level]` on the spatially pooled map
    backbone                C5 and the classifier, `model.classifier` on the pooled C5

Grad-CAM (Selvaraju et al., 2017) weights each channel of the map A (B x K x h x w) by the spatial
mean of d score / d A, sums over channels and keeps the positive part; the coarse map is then
upsampled bilinearly to the frame and divided by its maximum. Every head reads its map only
through a spatial mean, so the gradient needs no pass back through the backbone: one no-grad
forward per batch serves all four levels, and the backward runs through the pooling and the
heads alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from hico.config import VIEWS
from hico.errors import HiCoError
from hico.inference import check_eval, model_input
from hico.io import write_mp4
from hico.model import LEVELS

SALIENCY_LEVELS = VIEWS

# matplotlib's "inferno" sampled at ten even stops (0, 1/9, ..., 1); interpolated to 256 entries.
_INFERNO_ANCHORS = np.array([
    [0x00, 0x00, 0x04], [0x1B, 0x0C, 0x41], [0x4A, 0x0C, 0x6B], [0x78, 0x1C, 0x6D], [0xA5, 0x2C, 0x60],
    [0xCF, 0x44, 0x46], [0xED, 0x69, 0x25], [0xFB, 0x9B, 0x06], [0xF7, 0xD1, 0x3D], [0xFC, 0xFF, 0xA4],
], dtype=np.float64)
_STOPS = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
INFERNO = np.stack([np.interp(np.linspace(0.0, 1.0, 256), _STOPS, _INFERNO_ANCHORS[:, c]) for c in range(3)],
                   axis=1).round().astype(np.uint8)  # 256 x 3

CAPTION_BACKGROUND = 24  # gray level of the caption strips and the gaps between panels
PANEL_GAP = 4  # pixels between panels


def grad_cam(model, frames, level: str, class_index: int | None = None, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM of one level; see `grad_cams`. Returns float32 T x S x S in [0, 1]."""
    return grad_cams(model, frames, (level,), class_index, batch_size)[level]


def grad_cams(model, frames, levels=SALIENCY_LEVELS, class_index: int | None = None,
              batch_size: int = 32) -> dict[str, np.ndarray]:
    """Grad-CAM of every level in `levels` from one forward per batch of frames.

    model: a HiCoModel with classes. levels: names from SALIENCY_LEVELS (or one name).
    frames: uint8 T x C x H x W, C = 1 or 3 (a tensor or an array, as `Prediction.frames` holds them).
    class_index: the class whose score is explained; None means each frame's own predicted class by
    the level's head. Returns {level: float32 T x H x W in [0, 1]}, each frame divided by its maximum
    (a frame with no positive evidence stays all zero). The model must be in eval mode (as
    `hico.inference.load_run` gives it) and is only read: no mode switch, no parameter gradients,
    so threads may share it.
    Raises HiCoError for an unknown level, a model trained without labels, or a class out of range.
    """
    levels = (levels,) if isinstance(levels, str) else tuple(levels)
    _check_request(model, levels, class_index)
    check_eval(model, "grad_cams")
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ValueError(f"grad_cams needs uint8 T x C x H x W frames, got {frames.dtype} {tuple(frames.shape)}")
    device = next(model.parameters()).device
    size = tuple(frames.shape[-2:])
    chunks: dict[str, list[np.ndarray]] = {level: [np.zeros((0, *size), np.float32)] for level in levels}
    for start in range(0, frames.shape[0], batch_size):
        with torch.no_grad():
            maps = model.features(model_input(frames[start:start + batch_size], device))
        for level, cam in _coarse_cams(model, maps, levels, class_index).items():
            chunks[level].append(upsample_normalised(cam, size).cpu().numpy())
    return {level: np.concatenate(parts) for level, parts in chunks.items()}


def _check_request(model, levels: tuple[str, ...], class_index: int | None) -> None:
    for level in levels:
        if level not in SALIENCY_LEVELS:
            raise HiCoError(f"Unknown saliency level {level!r}: choose from {', '.join(SALIENCY_LEVELS)}.")
    if model.classifier is None:
        raise HiCoError("This model has no classifier, so there is no class score to explain: "
                        "it was trained without labels.")
    if model.probes is None and any(level != "backbone" for level in levels):
        raise HiCoError("This checkpoint has no level probes (it was saved before HiCo trained them), "
                        "so only the backbone level has a class score to explain.")
    if class_index is not None and not 0 <= class_index < model.num_classes:
        raise HiCoError(f"Class index {class_index} is out of range: the model has {model.num_classes} classes.")


def _coarse_cams(model, maps: dict[str, torch.Tensor], levels: tuple[str, ...],
                 class_index: int | None) -> dict[str, torch.Tensor]:
    """{level: B x h x w} non-negative Grad-CAM at the feature map's own resolution."""
    names = dict(zip(LEVELS, model.levels), backbone="C5")
    heads = {"backbone": model.classifier, **(dict(model.probes) if model.probes is not None else {})}
    with torch.enable_grad():
        # Fresh leaves on the no-grad maps: the graph is pooling + head only, never the backbone.
        fmaps = [maps[names[level]].detach().float().requires_grad_() for level in levels]
        total = 0.0
        for level, fmap in zip(levels, fmaps):
            logits = heads[level](fmap.mean(dim=(2, 3)))
            if class_index is None:
                target = logits.argmax(dim=1)
            else:
                target = torch.full((logits.shape[0],), class_index, device=logits.device)
            # Frames are independent in eval mode, so the sum's gradient is each frame's own.
            total = total + logits.gather(1, target[:, None]).sum()
        grads = torch.autograd.grad(total, fmaps)
    return {level: F.relu(torch.einsum("bk,bkhw->bhw", grad.mean(dim=(2, 3)), fmap.detach()))
            for level, fmap, grad in zip(levels, fmaps, grads)}


def upsample_normalised(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w non-negative -> B x H x W float32: bilinear upsampling, then each map divided by its max."""
    cam = F.interpolate(cam[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam)).clamp_(0, 1)


def colorize(cam: np.ndarray) -> np.ndarray:
    """float ... x H x W in [0, 1] (T x S x S usually) -> uint8 ... x H x W x 3 through the inferno map.

    0 is the map's black end, 1 its pale-yellow end; values outside [0, 1] are clipped, NaN counts as 0.
    """
    index = np.rint(np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0) * 255).astype(np.intp)
    return INFERNO[index]


def overlay(frames_uint8: np.ndarray, cam: np.ndarray, alpha: float = 0.45,
            mask: np.ndarray | None = None) -> np.ndarray:
    """Blend the colorized cam over the frames -> uint8 T x H x W x 3.

    frames_uint8: uint8 T x H x W x C (channels last) or T x C x H x W (channels first, as the
    model's input frames are), C = 1 (gray) or 3; also T x H x W gray. A last axis of size 1 or 3
    means channels last. cam: float T x h x w in [0, 1], resized bilinearly to H x W when the
    sizes differ (so a model-resolution cam fits the original frames). The heat's opacity is
    alpha x cam, so where cam is 0 the frame's pixels come through unchanged. mask: optional bool
    H x W (or T x H x W); no heat where it is False.
    """
    frames = _channels_last(np.asarray(frames_uint8))
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 3 or cam.shape[0] != frames.shape[0]:
        raise ValueError(f"cam must be T x h x w with T = {frames.shape[0]}, got shape {cam.shape}")
    size = frames.shape[1:3]
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape[-2:] != size or mask.ndim not in (2, 3):
            raise ValueError(f"mask must be H x W = {size} (or T x H x W), got shape {mask.shape}")
    out = np.empty((*frames.shape[:3], 3), dtype=np.uint8)
    lut = torch.from_numpy(INFERNO).float()
    keep = None if mask is None else torch.from_numpy(mask)
    for start in range(0, frames.shape[0], 8):  # a few frames at a time: full-resolution clips stay small in memory
        chunk = slice(start, start + 8)
        heat = torch.nan_to_num(torch.from_numpy(_resized(cam[chunk], size))).clamp_(0.0, 1.0)
        opacity = alpha * heat
        if keep is not None:
            opacity = opacity * (keep if keep.ndim == 2 else keep[chunk])
        base = torch.from_numpy(frames[chunk]).float()  # ... x 1 (gray) broadcasts against the RGB heat
        colour = lut[heat.mul(255).round_().long()]  # colorize() in torch: threaded, same rounding
        blend = base + opacity[..., None] * (colour - base)
        out[chunk] = blend.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


def _resized(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if cam.shape[1:] == size:
        return cam
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(cam))[:, None], size=size, mode="bilinear",
                         align_corners=False)[:, 0].numpy()


def _channels_last(frames: np.ndarray) -> np.ndarray:
    """uint8 T x H x W, T x H x W x C or T x C x H x W (C = 1 or 3) -> T x H x W x C (a view)."""
    if frames.dtype != np.uint8:
        raise ValueError(f"overlay needs uint8 frames, got {frames.dtype}")
    if frames.ndim == 3:
        return frames[..., None]
    if frames.ndim == 4 and frames.shape[-1] in (1, 3):
        return frames
    if frames.ndim == 4 and frames.shape[1] in (1, 3):
        return frames.transpose(0, 2, 3, 1)
    raise ValueError(f"frames must be T x H x W x C or T x C x H x W with C = 1 or 3, got shape {frames.shape}")


def side_by_side(panels: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """uint8 T x H x W_i x 3 panels -> one uint8 T x (strip + H) x (sum W_i + gaps) x 3 video.

    Each panel gets its label centred in a caption strip above it (Pillow's built-in font, cut
    short to fit; centred, so a viewer's corner badge does not hide it); panels are separated by
    PANEL_GAP-pixel gaps. All panels need the same T and H.
    """
    if not panels or len(panels) != len(labels):
        raise ValueError(f"side_by_side needs one label per panel, got {len(panels)} panels and {len(labels)} labels")
    panels = [np.asarray(p) for p in panels]
    t, h = panels[0].shape[:2]
    for p in panels:
        if p.dtype != np.uint8 or p.ndim != 4 or p.shape[-1] != 3 or p.shape[:2] != (t, h):
            raise ValueError(f"every panel must be uint8 {t} x {h} x W x 3, got {p.dtype} {p.shape}")
    font = ImageFont.load_default()
    strip = font.getbbox("Ag")[3] + 4  # text height plus a margin
    lefts = np.cumsum([0] + [p.shape[2] + PANEL_GAP for p in panels])
    width = int(lefts[-1] - PANEL_GAP)
    caption = Image.new("RGB", (width, strip), (CAPTION_BACKGROUND,) * 3)
    draw = ImageDraw.Draw(caption)
    for x, panel, label in zip(lefts, panels, labels):
        text = _fit(str(label), font, panel.shape[2] - 6)
        left = int(x) + max(3, int((panel.shape[2] - font.getlength(text)) / 2))
        draw.text((left, 2), text, fill=(235, 235, 235), font=font)
    out = np.full((t, strip + h, width, 3), CAPTION_BACKGROUND, dtype=np.uint8)
    out[:, :strip] = np.asarray(caption)
    for x, panel in zip(lefts, panels):
        out[:, strip:, x:x + panel.shape[2]] = panel
    return out


def _fit(text: str, font, width: int) -> str:
    """text, or its longest prefix + '..' that fits in width pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "..") > width:
        text = text[:-1]
    return text + ".." if text else ""


def write_overlay_video(path: str | os.PathLike, video: np.ndarray, fps: float = 10.0) -> Path:
    """Write a uint8 T x H x W x 3 video (an overlay or a side_by_side) as a browser-playable
    H.264 mp4; returns the path written."""
    return write_mp4(path, video, fps)
