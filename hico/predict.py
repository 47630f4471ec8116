"""A clip in, per-frame and clip-level class probabilities, and saliency overlays, out.

The clip (video, DICOM, image or frame folder) is read, its burned-in screen text and the black
frame around the sector are masked (hico.screen), the frames are resized to the run's input size
exactly as training frames are, and each is classified; the clip's probabilities are the mean of
its frames'. Saliency is Grad-CAM per level (hico.saliency), drawn over the original frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hico.checkpoint import load_run
from hico.data.cache import resize_frames
from hico.embed import embed_frames
from hico.errors import HiCoError
from hico.io import clip_kind, read_clip, read_clip_meta
from hico.model import LEVELS
from hico.train import resolve_device


@dataclass
class Prediction:
    """One clip's results.

    classes: K names; frame_probs: T x K; clip_probs: K; frames: T x C x S x S uint8 (model input,
    masked); original: T x H x W x C uint8 as read; mask: the hico.screen.ScreenMask used (None if
    masking was off); level_probs: per level (local, medium, global) T x K from the level probes.
    """

    path: Path
    classes: list[str]
    frame_probs: np.ndarray
    clip_probs: np.ndarray
    frames: np.ndarray
    original: np.ndarray | None = None
    mask: object | None = None
    level_probs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.classes[int(self.clip_probs.argmax())]

    def frame_table(self) -> pd.DataFrame:
        """One row per frame: frame, predicted label, and one probability column per class."""
        table = pd.DataFrame(self.frame_probs, columns=self.classes)
        table.insert(0, "prediction", [self.classes[i] for i in self.frame_probs.argmax(axis=1)])
        table.insert(0, "frame", np.arange(len(table)))
        return table


def read_for_prediction(clip: Path, max_clip_frames: int, max_frames: int | None) -> np.ndarray:
    """Read a clip, refusing one longer than max_clip_frames unless max_frames subsamples it."""
    if not clip.exists():
        raise HiCoError(f"Clip {clip} does not exist.")
    if clip_kind(clip) is None:
        raise HiCoError(f"Clip {clip} is not a video, DICOM, image or frame folder that HiCo can read.")
    if max_frames is None:
        frames = read_clip_meta(clip).get("frames") or 0
        if frames > max_clip_frames:
            raise HiCoError(f"Clip {clip} has {frames} frames, more than data.max_clip_frames ({max_clip_frames}); "
                            f"keep fewer with --max-frames.")
    return read_clip(clip, max_frames=max_frames)


def predict_clip(run_dir: str | Path, clip: str | Path, device: str = "auto", max_frames: int | None = None,
                 batch_size: int = 64, model_bundle=None, mask_screen: bool = True) -> Prediction:
    """Classify every frame of `clip` with the run's classifier (and its level probes).

    `model_bundle` (the tuple `load_run` returns) skips reloading the model for repeated calls.
    Raises HiCoError when the clip cannot be read, is too long, or the run has no classifier.
    """
    clip = Path(clip).expanduser()
    dev = resolve_device(device)
    cfg, model, sidecar = model_bundle or load_run(run_dir, "auto", dev)
    classes = sidecar.get("classes") or []
    if not classes or model.classifier is None:
        raise HiCoError(f"Run {run_dir} has no classifier to predict with: it was trained without labels "
                        f"or with loss.mode={cfg.loss.mode}.")
    original = read_for_prediction(clip, cfg.data.max_clip_frames, max_frames)
    mask = None
    visible = original
    if mask_screen:
        from hico.screen import mask_frames

        visible, mask = mask_frames(original)
    frames = resize_frames(visible, cfg.data.size)
    out = embed_frames(model, torch.from_numpy(frames), next(model.parameters()).device, batch_size)
    softmax = lambda logits: torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()  # noqa: E731
    probs = softmax(out["logits"])
    levels = {name: softmax(out[f"probe_{name}"]) for name in LEVELS if f"probe_{name}" in out}
    return Prediction(clip, list(classes), probs, probs.mean(axis=0), frames, original, mask, levels)


def saliency_video(prediction: Prediction, model, level: str = "all", alpha: float = 0.45) -> np.ndarray:
    """Grad-CAM over the original frames: T x H x W x 3 uint8 for one level, or the local, medium
    and global levels side by side for `all`."""
    from hico.saliency import grad_cams, overlay, side_by_side

    levels = list(LEVELS) if level == "all" else [level]
    cams = grad_cams(model, torch.from_numpy(prediction.frames), levels=levels)
    base = prediction.original if prediction.original is not None else prediction.frames.transpose(0, 2, 3, 1)
    tissue = getattr(prediction.mask, "tissue", None)
    panels = [overlay(base, cams[name], alpha=alpha, mask=tissue) for name in levels]
    return panels[0] if len(panels) == 1 else side_by_side(panels, levels)
