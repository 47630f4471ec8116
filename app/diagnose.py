"""What the Diagnose tab and the /predict endpoint do: predict a clip, draw saliency, write files.

The work is `hico.predict` and `hico.saliency`; this module caches models per checkpoint,
keeps each result's overlay frames for the frame slider, writes the downloads, and prunes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hico.config import VIEWS
from hico.errors import HiCoError
from hico.familiarity import References
from hico.files import atomic_path
from hico.inference import LoadedRun, load_run
from hico.predict import Prediction, predict_clip, saliency_video
from hico.runs import Run
from hico.saliency import write_overlay_video

log = logging.getLogger(__name__)
SALIENCY_CHOICES = ("all", *VIEWS)
KEEP_RESULTS = 8  # results held in memory for the frame slider, at most
KEEP_RESULT_BYTES = 256 * 2**20  # and at most this much of overlays: a 64-frame 480 x 640 "all" overlay is 180 MB
KEEP_FOLDERS = 64  # result folders kept on disk (videos and CSVs a page may still link to)
KEEP_SECONDS = 24 * 3600


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

    @property
    def nbytes(self) -> int:
        """Memory this result holds (its overlay and mask preview; its prediction's arrays are small)."""
        return int(self.overlay.nbytes + self.mask_image.nbytes)


def mask_preview(frame: np.ndarray, tissue: np.ndarray | None) -> np.ndarray:
    """H x W x C uint8 frame -> H x W x 3 with everything outside `tissue` tinted red."""
    rgb = np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame.copy()
    if tissue is None:
        return rgb
    out = rgb.astype(np.float32)
    outside = ~tissue
    out[outside] = 0.45 * out[outside] + 0.55 * np.array([220, 40, 40], np.float32)
    return out.round().astype(np.uint8)


def summary(pred: Prediction) -> str:
    """The page's sentence on a prediction. An unfamiliar clip gets that said first, as a plain
    sentence naming what the model was trained on, and its class is then only reported as what
    the model would have said; otherwise the class and its (calibrated) probability, each level's
    own call, the screen mask, and how like the training data the clip is."""
    top = pred.clip_probs.argmax()
    levels = ", ".join(f"{name}: {pred.classes[int(p.mean(0).argmax())]}" for name, p in pred.level_probs.items())
    frames = len(pred.frame_probs)
    over = f"over {frames} frames" if frames > 1 else "on a single frame"
    calibrated = "calibrated" if pred.calibrated else "not calibrated: the run stored no temperature"
    mask = f" · screen mask: {pred.mask.describe()}" if pred.mask is not None else " · screen mask: off"
    if pred.unfamiliar:
        return (f"⚠️ **{pred.familiarity.sentence()}**\n\n"
                f"Why: {pred.familiarity.reason()}.\n\n"
                f"Had it applied, the model would have said {pred.label} ({pred.clip_probs[top]:.0%}, {calibrated}) "
                f"{over}; the bars are greyed.{mask}")
    message = (f"**{pred.label}** ({pred.clip_probs[top]:.0%}, {calibrated}) {over}"
               + (f" · per level — {levels}" if levels else "") + mask)
    if pred.familiarity is not None:
        return message + f"\n\n{pred.familiarity.sentence()}"
    return message + (f"\n\n{pred.familiarity_note}" if pred.familiarity_note else "")


def embed_clip(loaded: LoadedRun, clip: Path) -> dict[str, np.ndarray]:
    """A clip's frames embedded by a loaded run (as `Diagnoser.model` gives it), prepared as its
    training frames were: {column: T x d} (local, medium, global, backbone, ...), for find-similar."""
    import torch

    from hico.inference import embed_frames
    from hico.io import ClipLimits
    from hico.predict import read_for_prediction

    data = loaded.cfg.data
    original = read_for_prediction(Path(clip), data.max_clip_frames, None, ClipLimits.from_config(data))
    frames, _ = loaded.prepare(original)
    return embed_frames(loaded.model, torch.from_numpy(frames), loaded.device)


class Diagnoser:
    """Runs predictions with a cached model per checkpoint and keeps the last few results.

    Requests run concurrently: a cached `LoadedRun` is only ever read (hico.inference), each
    request gets its own result folder, and the folders are pruned to the newest KEEP_FOLDERS
    (and none older than KEEP_SECONDS) so the disk does not fill up.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self._models: dict[str, LoadedRun] = {}
        self.references = References()  # familiarity references, built in the background, kept while the app lives
        self._results: dict[str, Diagnosis] = {}
        self._lock = threading.Lock()

    def model(self, run_dir: Path) -> LoadedRun:
        """The run's model (best checkpoint, else last), loaded once per checkpoint version."""
        chosen = Run(run_dir).checkpoint()
        key = f"{chosen.run.path.resolve()}:{chosen.name}:{chosen.step}:{chosen.sidecar.get('files')}"
        with self._lock:
            if key not in self._models:
                self._models.clear()  # requests still using the old model keep their own reference
                self._models[key] = load_run(chosen, device="cpu")
            return self._models[key]

    def diagnose(self, run_dir: Path, clip: Path, level: str = "all", keep: bool = True) -> Diagnosis:
        """Predict, draw saliency, and write the overlay video (a PNG for a one-frame input) and the
        per-frame CSV. `keep`: hold the result in memory for the page's frame slider (the newest
        KEEP_RESULTS, within KEEP_RESULT_BYTES, without the clip's decoded frames); /predict, which
        answers with files, keeps nothing."""
        if level not in SALIENCY_CHOICES:
            raise HiCoError(f"Unknown saliency level {level!r}: choose one of {', '.join(SALIENCY_CHOICES)}.")
        loaded = self.model(run_dir)
        # never embeds a dataset in a request
        prediction = predict_clip(loaded, clip, familiarity_wait=False, references=self.references)
        overlay = saliency_video(prediction, loaded.model, level)
        result_id = uuid.uuid4().hex[:12]
        folder = self.out_dir / result_id
        folder.mkdir(parents=True, exist_ok=True)
        if len(overlay) == 1:  # a still: its overlay is an image, not a one-frame video a browser cannot play
            video = folder / f"{Path(clip).stem}_saliency_{level}.png"
            with atomic_path(video) as tmp:
                Image.fromarray(overlay[0]).save(tmp, format="PNG")
        else:
            video = write_overlay_video(folder / f"{Path(clip).stem}_saliency_{level}.mp4", overlay)
        table = prediction.frame_table()
        for name, probs in prediction.level_probs.items():
            for k, cls in enumerate(prediction.classes):
                table[f"{name}:{cls}"] = probs[:, k]
        csv = folder / f"{Path(clip).stem}_frames.csv"
        with atomic_path(csv) as tmp:
            table.to_csv(tmp, index=False)
        tissue = getattr(prediction.mask, "tissue", None)
        result = Diagnosis(result_id, prediction, level, overlay, video, csv,
                           mask_preview(prediction.original[0], tissue))
        with self._lock:
            if keep:  # the slider reads the overlay and the probabilities, not the decoded clip
                self._results[result_id] = dataclasses.replace(
                    result, prediction=dataclasses.replace(prediction, frames=prediction.frames[:0], original=None))
                while len(self._results) > 1 and (len(self._results) > KEEP_RESULTS
                                                  or sum(r.nbytes for r in self._results.values()) > KEEP_RESULT_BYTES):
                    self._results.pop(next(iter(self._results)))
            self._prune(keep=set(self._results))
        return result

    def result(self, result_id: str) -> Diagnosis | None:
        with self._lock:
            return self._results.get(result_id)

    def _prune(self, keep: set[str]) -> None:
        """Delete result folders beyond the newest KEEP_FOLDERS or older than KEEP_SECONDS,
        except those of results still held in memory (a page may still show them)."""
        try:
            folders = sorted((p for p in self.out_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime,
                             reverse=True)
        except OSError:
            return
        now = time.time()
        for i, folder in enumerate(folders):
            with contextlib.suppress(OSError):
                if folder.name not in keep and (i >= KEEP_FOLDERS or now - folder.stat().st_mtime > KEEP_SECONDS):
                    shutil.rmtree(folder, ignore_errors=True)
