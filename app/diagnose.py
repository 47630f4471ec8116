"""What the Diagnose tab and the /predict endpoint do: predict a clip, draw saliency, write files.

The work is `hico.predict` and `hico.saliency`; this module caches models per checkpoint,
keeps each result's overlay frames for the frame slider, and writes the downloads.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hico.checkpoint import find_checkpoint, load_run
from hico.predict import Prediction, predict_clip, saliency_video
from hico.saliency import write_overlay_video

log = logging.getLogger(__name__)
SALIENCY_CHOICES = ("all", "local", "medium", "global", "backbone")
KEEP_RESULTS = 8


@dataclass
class Diagnosis:
    """One clip's results and the files written for it."""

    id: str
    prediction: Prediction
    level: str
    overlay: np.ndarray  # T x H x W x 3 uint8
    video: Path
    csv: Path
    mask_image: np.ndarray  # H x W x 3 uint8: the first frame, masked-out parts tinted

    @property
    def frames(self) -> int:
        return int(self.overlay.shape[0])


def mask_preview(frame: np.ndarray, tissue: np.ndarray | None) -> np.ndarray:
    """H x W x C uint8 frame -> H x W x 3 with everything outside `tissue` tinted red."""
    rgb = np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame.copy()
    if tissue is None:
        return rgb
    out = rgb.astype(np.float32)
    outside = ~tissue
    out[outside] = 0.45 * out[outside] + 0.55 * np.array([220, 40, 40], np.float32)
    return out.round().astype(np.uint8)


class Diagnoser:
    """Runs predictions with a cached model per checkpoint and keeps the last few results."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self._models: dict[str, tuple] = {}
        self._results: dict[str, Diagnosis] = {}
        self._lock = threading.Lock()

    def model(self, run_dir: Path):
        name = find_checkpoint(run_dir)
        stamp = (Path(run_dir) / "checkpoints" / f"{name}.safetensors").stat().st_mtime_ns
        key = f"{Path(run_dir).resolve()}:{name}:{stamp}"
        with self._lock:
            if key not in self._models:
                self._models.clear()
                self._models[key] = load_run(run_dir, name, "cpu")
            return self._models[key]

    def diagnose(self, run_dir: Path, clip: Path, level: str = "all") -> Diagnosis:
        """Predict, draw saliency, and write the overlay video and the per-frame CSV."""
        if level not in SALIENCY_CHOICES:
            raise ValueError(f"level must be one of {SALIENCY_CHOICES}, got {level!r}")
        bundle = self.model(run_dir)
        prediction = predict_clip(run_dir, clip, model_bundle=bundle)
        overlay = saliency_video(prediction, bundle[1], level)
        result_id = uuid.uuid4().hex[:12]
        folder = self.out_dir / result_id
        folder.mkdir(parents=True, exist_ok=True)
        video = write_overlay_video(folder / f"{Path(clip).stem}_saliency_{level}.mp4", overlay)
        table = prediction.frame_table()
        for name, probs in prediction.level_probs.items():
            for k, cls in enumerate(prediction.classes):
                table[f"{name}:{cls}"] = probs[:, k]
        csv = folder / f"{Path(clip).stem}_frames.csv"
        table.to_csv(csv, index=False)
        tissue = getattr(prediction.mask, "tissue", None)
        result = Diagnosis(result_id, prediction, level, overlay, video, csv,
                           mask_preview(prediction.original[0], tissue))
        with self._lock:
            self._results[result_id] = result
            while len(self._results) > KEEP_RESULTS:
                self._results.pop(next(iter(self._results)))
        return result

    def result(self, result_id: str) -> Diagnosis | None:
        return self._results.get(result_id)
