"""A clip in, per-frame and clip-level class probabilities out.

The clip (video, DICOM, image or frame folder) is read, resized to the run's input size exactly
as training frames are, and classified frame by frame; the clip's probabilities are the mean of
its frames'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hico.checkpoint import load_run
from hico.data.cache import resize_frames
from hico.embed import embed_frames
from hico.errors import HiCoError
from hico.io import clip_kind, read_clip
from hico.train import resolve_device


@dataclass
class Prediction:
    """classes: K names; frame_probs: T x K; clip_probs: K; frames: T x C x S x S uint8 (model input)."""

    path: Path
    classes: list[str]
    frame_probs: np.ndarray
    clip_probs: np.ndarray
    frames: np.ndarray

    @property
    def label(self) -> str:
        return self.classes[int(self.clip_probs.argmax())]

    def frame_table(self) -> pd.DataFrame:
        """One row per frame: frame, predicted label, and one probability column per class."""
        table = pd.DataFrame(self.frame_probs, columns=self.classes)
        table.insert(0, "prediction", [self.classes[i] for i in self.frame_probs.argmax(axis=1)])
        table.insert(0, "frame", np.arange(len(table)))
        return table


def predict_clip(run_dir: str | Path, clip: str | Path, device: str = "auto", max_frames: int | None = None,
                 batch_size: int = 64, model_bundle=None) -> Prediction:
    """Classify every frame of `clip` with the run's classifier.

    `model_bundle` (the tuple `load_run` returns) skips reloading the model for repeated calls.
    Raises HiCoError when the clip cannot be read or the run was trained without labels.
    """
    clip = Path(clip).expanduser()
    if not clip.exists():
        raise HiCoError(f"Clip {clip} does not exist.")
    if clip_kind(clip) is None:
        raise HiCoError(f"Clip {clip} is not a video, DICOM, image or frame folder that HiCo can read.")
    dev = resolve_device(device)
    cfg, model, sidecar = model_bundle or load_run(run_dir, "auto", dev)
    classes = sidecar.get("classes") or []
    if not classes or model.classifier is None:
        raise HiCoError(f"Run {run_dir} has no classifier to predict with: it was trained without labels "
                        f"or with loss.mode={cfg.loss.mode}.")
    frames = resize_frames(read_clip(clip, max_frames=max_frames), cfg.data.size)
    out = embed_frames(model, torch.from_numpy(frames), next(model.parameters()).device, batch_size)
    probs = torch.softmax(torch.from_numpy(out["logits"]).double(), dim=1).numpy()
    return Prediction(clip, list(classes), probs, probs.mean(axis=0), frames)
