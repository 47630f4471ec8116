"""What a run measures when it finishes, for the checkpoint Diagnose will use (`best`, else `last`):

- the classifier's temperature, fitted on every frame of the held-out videos (hico.calibration),
  written to RUN_DIR/calibration.json and returned for summary.json;
- the familiarity reference (hico.familiarity) from the frames each validation embeds (a few
  frames of every training and held-out video), written to RUN_DIR/embeddings/.

Both need one forward pass over a few hundred to a few thousand frames: seconds on a CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hico import calibration, familiarity
from hico.errors import HiCoError
from hico.inference import embed_frames, load_run

log = logging.getLogger(__name__)


def measure(run_dir: Path, device: torch.device, frames: Callable[[np.ndarray], torch.Tensor], watched: dict,
            held_out_rows: np.ndarray, held_out_videos: np.ndarray, held_out_labels: np.ndarray,
            trained_on: str) -> dict | None:
    """Calibrate and write the familiarity reference of RUN_DIR's chosen checkpoint.

    frames(rows) -> uint8 M x C x S x S of the run's frame cache; watched: the validation frames
    (hico.train: rows, video_id, classes, held_out); held_out_rows / _videos / _labels: every frame
    of the held-out videos, its video id and class index (-1: none). Returns the calibration as a
    dict for summary.json, or None when there is nothing labelled to fit it on."""
    loaded = load_run(run_dir, "auto", device)

    def embed(rows: np.ndarray) -> dict[str, np.ndarray]:
        parts = [embed_frames(loaded.model, frames(rows[i:i + 512]), device) for i in range(0, len(rows), 512)]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    vectors = embed(np.asarray(watched["rows"]))
    split = np.where(watched["held_out"], "val", "train")
    try:
        reference = familiarity.build_reference(vectors, np.asarray(watched["video_id"]), split,
                                                np.asarray(watched["classes"]), trained_on)
        familiarity.save(familiarity.reference_path(run_dir, loaded.checkpoint, loaded.step), reference)
    except HiCoError as exc:  # a run too small to calibrate on still finishes; Diagnose says why later
        log.warning("no familiarity reference written: %s", exc)
    labelled = np.asarray(held_out_labels) >= 0
    if loaded.model.classifier is None or not labelled.any():
        return None
    rows = np.asarray(held_out_rows)[labelled]
    logits = embed(rows)["logits"]
    fitted = calibration.calibrate(logits, np.asarray(held_out_labels)[labelled],
                                   np.asarray(held_out_videos)[labelled], loaded.checkpoint, loaded.step)
    calibration.write(run_dir, fitted)
    log.info("calibration: temperature %.3f, ECE %.3f -> %.3f on %d held-out videos", fitted.temperature,
             fitted.ece_before, fitted.ece_after, fitted.videos)
    return fitted.to_dict()
