"""A clip in, per-frame and clip-level class probabilities, and saliency overlays, out.

The clip (video, DICOM, image or frame folder) is read and prepared exactly as the run's training
frames were (`LoadedRun.prepare`: burned-in screen text and the black frame around the sector
masked by hico.screen when the run's data.mask_screen is on, then resized to its input size), and
each frame is classified; probabilities are calibrated by the run's temperature (hico.calibration)
and the clip's are the mean of its frames'. Saliency is Grad-CAM per level (hico.saliency), drawn over the original frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hico.calibration import softmax
from hico.errors import HiCoError
from hico.familiarity import Familiarity, References, run_reference
from hico.inference import LoadedRun, embed_frames, load_run, resolve_device
from hico.io import ClipLimits, clip_kind, read_clip, read_clip_meta
from hico.model import LEVELS


@dataclass
class Prediction:
    """One clip's results.

    classes: K names; frame_probs: T x K; clip_probs: K; frames: T x C x S x S uint8 (model input,
    masked); original: T x H x W x C uint8 as read; mask: the hico.screen.ScreenMask used (None if
    masking was off); level_probs: per level (local, medium, global) T x K from the level probes;
    familiarity: how like the run's training data the clip is (hico.familiarity), None when that
    could not be told, and then familiarity_note says why; temperature: the calibration the
    classifier's probabilities were divided by (1.0: none stored).
    """

    path: Path
    classes: list[str]
    frame_probs: np.ndarray
    clip_probs: np.ndarray
    frames: np.ndarray
    original: np.ndarray | None = None
    mask: object | None = None
    level_probs: dict[str, np.ndarray] = field(default_factory=dict)
    familiarity: Familiarity | None = None
    familiarity_note: str = ""
    temperature: float = 1.0

    @property
    def calibrated(self) -> bool:
        """Whether the classifier's probabilities were divided by a fitted temperature."""
        return self.temperature != 1.0

    @property
    def unfamiliar(self) -> bool:
        return bool(self.familiarity is not None and self.familiarity.unfamiliar)

    @property
    def label(self) -> str:
        return self.classes[int(self.clip_probs.argmax())]

    def frame_table(self) -> pd.DataFrame:
        """One row per frame: frame, predicted label, and one probability column per class."""
        table = pd.DataFrame(self.frame_probs, columns=self.classes)
        table.insert(0, "prediction", [self.classes[i] for i in self.frame_probs.argmax(axis=1)])
        table.insert(0, "frame", np.arange(len(table)))
        return table


def read_for_prediction(clip: Path, max_clip_frames: int, max_frames: int | None,
                        limits: ClipLimits | None = None) -> np.ndarray:
    """Read a clip, refusing one longer than max_clip_frames unless max_frames subsamples it, and
    one whose header says it decodes to more pixels than `limits` allow (before decoding it)."""
    if not clip.exists():
        raise HiCoError(f"Clip {clip} does not exist.")
    if clip.is_file() and clip.stat().st_size == 0:
        raise HiCoError(f"Clip {clip} is empty (0 bytes).")
    if clip_kind(clip) is None:
        raise HiCoError(f"Clip {clip} is not a video, DICOM, image or frame folder that HiCo can read.")
    if max_frames is None:
        frames = read_clip_meta(clip).get("frames") or 0
        if frames > max_clip_frames:
            raise HiCoError(f"Clip {clip} has {frames} frames, more than data.max_clip_frames ({max_clip_frames}); "
                            f"keep fewer with --max-frames.")
    return read_clip(clip, max_frames=max_frames, limits=limits)


def predict_clip(run: str | Path | LoadedRun, clip: str | Path, device: str = "auto", max_frames: int | None = None,
                 batch_size: int = 64, mask_screen: bool | None = None, familiarity: bool = True,
                 familiarity_wait: bool = True, references: References | None = None) -> Prediction:
    """Classify every frame of `clip` with a run's classifier (and its level probes).

    `run` is a run folder, or a `LoadedRun` (hico.inference.load_run) to skip reloading the model
    on repeated calls; a LoadedRun is only read, so threads may share one. Frames are prepared as
    the run's training frames were (`LoadedRun.prepare`: its data.mask_screen unless `mask_screen`
    says otherwise). Probabilities are calibrated with the run's temperature when it stored one
    (hico.calibration). With `familiarity`, the clip is compared with the run's training data
    (hico.familiarity); familiarity_wait=False (a server) leaves the score out, with a note, while
    the run's reference is still being built.
    Raises HiCoError when the clip cannot be read, is too long, or the run has no classifier.
    """
    clip = Path(clip).expanduser()
    loaded = run if isinstance(run, LoadedRun) else load_run(run, "auto", resolve_device(device))
    cfg, model = loaded.cfg, loaded.model
    if not loaded.classes or model.classifier is None:
        raise HiCoError(f"Run {loaded.run_dir} has no classifier to predict with: it was trained without labels "
                        f"or with loss.mode={cfg.loss.mode}.")
    original = read_for_prediction(clip, cfg.data.max_clip_frames, max_frames, ClipLimits.from_config(cfg.data))
    frames, mask = loaded.prepare(original, mask_screen)
    out = embed_frames(model, torch.from_numpy(frames), loaded.device, batch_size)
    fitted = loaded.calibration
    temperature = fitted.temperature if fitted is not None else 1.0
    probs = softmax(out["logits"], temperature)
    levels = {name: softmax(out[f"probe_{name}"]) for name in LEVELS if f"probe_{name}" in out}
    prediction = Prediction(clip, loaded.classes, probs, probs.mean(axis=0), frames, original, mask, levels,
                            temperature=temperature)
    if familiarity:
        try:
            prediction.familiarity = run_reference(loaded, familiarity_wait, references).judge(out)
        except HiCoError as exc:
            prediction.familiarity_note = str(exc)
    return prediction


def saliency_video(prediction: Prediction, model, level: str = "all", alpha: float = 0.45) -> np.ndarray:
    """Grad-CAM over the original frames: T x H x W x 3 uint8 for one level, or the local, medium
    and global levels side by side for `all`. `model` is in eval mode (a LoadedRun's) and is only read."""
    from hico.saliency import SALIENCY_LEVELS, grad_cams, overlay, side_by_side

    if level != "all" and level not in SALIENCY_LEVELS:
        raise HiCoError(f"Unknown saliency level {level!r}: choose all, {', '.join(SALIENCY_LEVELS)}.")
    levels = list(LEVELS) if level == "all" else [level]
    cams = grad_cams(model, torch.from_numpy(prediction.frames), levels=levels)
    base = prediction.original if prediction.original is not None else prediction.frames.transpose(0, 2, 3, 1)
    tissue = getattr(prediction.mask, "tissue", None)
    panels = [overlay(base, cams[name], alpha=alpha, mask=tissue) for name in levels]
    return panels[0] if len(panels) == 1 else side_by_side(panels, levels)
