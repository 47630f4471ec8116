"""Calibrated class probabilities: one temperature for the classifier's logits (Guo et al. 2017).

A network trained with cross-entropy is over-confident on clips it has not seen. Dividing its
logits by a temperature T > 1 fitted on held-out videos (minimum negative log-likelihood) keeps
every frame's ranking and makes its probabilities mean what they say. The run fits T when it
finishes, on every frame of its held-out videos, and keeps it in RUN_DIR/calibration.json with
the checkpoint it belongs to; `hico predict`, Diagnose and /predict divide by it.

Expected calibration error (ECE): frames binned by their top probability (BINS equal-width bins);
the mean over bins of |accuracy - confidence|, weighted by the bin's share of frames. `ece_after`
is measured out of fold: the held-out videos are split in two halves by video, T is fitted on one
and measured on the other, both ways, so the figure is not flattered by fitting T on the frames
it is measured on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hico.files import write_json

BINS = 15
FILE = "calibration.json"
T_RANGE = (0.05, 20.0)


@dataclass(frozen=True)
class Calibration:
    """temperature: logits are divided by it; ece_before / ece_after: expected calibration error of
    the held-out frames at T = 1 and at the fitted T (out of fold); videos / frames: how many
    held-out videos and frames; checkpoint, step: the weights it was fitted for."""

    temperature: float
    ece_before: float
    ece_after: float
    videos: int
    frames: int
    checkpoint: str = ""
    step: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """N x K logits -> N x K probabilities of logits / temperature (float64)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE of N x K probabilities against N class indices (see the module docstring)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("expected_calibration_error needs at least one frame")
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in T_RANGE minimising the mean negative log-likelihood of labels under softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"fit_temperature needs N x K logits and N labels, got {logits.shape} and {labels.shape}")

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(labels)), labels]).mean())

    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    return float(np.exp(minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4}).x))


def calibrate(logits: np.ndarray, labels: np.ndarray, videos: np.ndarray, checkpoint: str = "",
              step: int = 0) -> Calibration:
    """Fit the temperature on N held-out frames (N x K logits, N class indices, N video ids) and
    measure ECE before and, out of fold by video, after."""
    logits, labels, videos = np.asarray(logits), np.asarray(labels), np.asarray(videos)
    unique = list(dict.fromkeys(videos))
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(softmax(logits), labels)
    if len(unique) >= 2:
        half = np.isin(videos, unique[::2])
        probs = np.empty(logits.shape, np.float64)
        for fit_on in (half, ~half):
            t = fit_temperature(logits[fit_on], labels[fit_on])
            probs[~fit_on] = softmax(logits[~fit_on], t)
        after = expected_calibration_error(probs, labels)
    else:
        after = expected_calibration_error(softmax(logits, temperature), labels)
    return Calibration(temperature, before, after, len(unique), len(labels), checkpoint, int(step))


def write(run_dir: str | Path, calibration: Calibration) -> None:
    write_json(Path(run_dir) / FILE, calibration.to_dict())


def read(run_dir: str | Path, checkpoint: str, step: int) -> Calibration | None:
    """The run's calibration when it was fitted for this checkpoint and step, else None."""
    try:
        values = json.loads((Path(run_dir) / FILE).read_text())
        calibration = Calibration(**values)
    except (OSError, ValueError, TypeError):
        return None
    if calibration.checkpoint != checkpoint or int(calibration.step) != int(step):
        return None
    return calibration
