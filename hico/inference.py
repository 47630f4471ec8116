"""Inference: the device, what a model sees of a frame, autocast, and runs loaded for prediction.

Input preparation, in one place. A clip as `hico.io` reads it (T x H x W x C uint8) is resized
to the run's square input size by `frames_for_model` (T x C x S x S uint8, as the training cache
holds frames); `model_input` scales a batch of those to [0, 1], normalises it (mean 0.5, std 0.25
per channel, as in training) and lays it out channels_last.

A `LoadedRun`'s model is made ready for inference once, when it is loaded (`freeze`): eval mode,
channels_last memory layout, no parameter gradients. Nothing afterwards changes it, so one
LoadedRun serves any number of threads at once (the app's concurrent requests): each call makes
its own tensors and shares only read-only weights and BatchNorm statistics.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hico import config as config_mod
from hico.checkpoint import check_architecture, fit_weights, load_checkpoint_weights
from hico.config import Config
from hico.data.augment import normalise, to_unit
from hico.data.cache import resize_frames
from hico.errors import HiCoError
from hico.model import HiCoModel, architecture, build_model
from hico.runs import Checkpoint, Run


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HiCoError(f"Config key device is {name!r} but this machine has no CUDA GPU; use device=cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise HiCoError(f"Config key device is {name!r}, which is not a device: use auto, cpu, cuda or cuda:N.") from None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU): for timing a step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_inference(device: torch.device) -> bool:
    """Whether inference runs under bf16 autocast here: on CUDA, and on CPUs with native bf16
    (AVX512-BF16 or AMX), where it halves the time; embeddings then agree with float32 to a cosine
    of 0.9999. Elsewhere bf16 would be emulated and slower, so float32 is kept."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def inference_autocast(device: torch.device):
    """The autocast context inference runs the model in (see bf16_inference)."""
    if bf16_inference(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def frames_for_model(clip: np.ndarray, size: int) -> np.ndarray:
    """T x H x W x C uint8 -> T x C x size x size uint8, resized exactly as training frames are."""
    return resize_frames(clip, size)


def model_input(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x C x S x S -> the normalised float input on `device`, in channels_last layout."""
    return normalise(to_unit(frames.to(device))).contiguous(memory_format=torch.channels_last)


def freeze(model: HiCoModel) -> HiCoModel:
    """Make a model ready for inference, once: eval mode, channels_last (faster convolutions on
    CPUs and GPUs, same float32 arithmetic), and no parameter gradients. Returns the model."""
    model.eval()
    model.to(memory_format=torch.channels_last)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def check_eval(model: torch.nn.Module, what: str) -> None:
    """Inference never switches a model's mode: a model shared by threads must not change."""
    if model.training:
        raise ValueError(f"{what} needs a model in eval mode (hico.inference.freeze, as load_run does); "
                         f"it does not switch modes because threads may share the model")


@torch.no_grad()
def embed_frames(model: HiCoModel, frames: torch.Tensor, device: torch.device, batch_size: int = 64,
                 progress: bool = False) -> dict[str, np.ndarray]:
    """frames: N x C x S x S uint8 -> {column: N x d float32} for every vector column (and logits).

    The model must be in eval mode (as `freeze` leaves it) and is not changed; it runs under
    `inference_autocast`.
    """
    check_eval(model, "embed_frames")
    chunks: dict[str, list] = {}
    for start in tqdm(range(0, frames.shape[0], batch_size), desc="embedding", unit="batch",
                      disable=not progress, leave=False):
        x = model_input(frames[start:start + batch_size], device)
        with inference_autocast(device):
            out = model.embed(x)
        for key, value in out.items():
            chunks.setdefault(key, []).append(value.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


@dataclass(frozen=True)
class LoadedRun:
    """A trained model ready for inference, with what it was trained with.

    run_dir: the run folder; checkpoint: `best` or `last`; cfg: the run's config; model: frozen
    (see `freeze`) on `device`; sidecar: the checkpoint's sidecar (classes, step, metrics, ...).
    """

    run_dir: Path
    checkpoint: str
    cfg: Config
    model: HiCoModel
    sidecar: dict
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return list(self.sidecar.get("classes") or [])

    @property
    def step(self) -> int:
        return int(self.sidecar.get("step", 0))

    @property
    def size(self) -> int:
        return int(self.cfg.data.size)

    @property
    def calibration(self):
        """The temperature the run fitted for this checkpoint (hico.calibration.Calibration), or None."""
        from hico import calibration

        return calibration.read(self.run_dir, self.checkpoint, self.step)

    def prepare(self, clip: np.ndarray, mask_screen: bool | None = None) -> tuple[np.ndarray, object | None]:
        """A clip as read (T x H x W x C uint8) -> what the model sees (T x C x S x S uint8) and the
        screen mask used (None when masking is off). Masking follows the run's data.mask_screen,
        as its training frames were prepared, unless `mask_screen` says otherwise."""
        mask = None
        if self.cfg.data.mask_screen if mask_screen is None else mask_screen:
            from hico.screen import mask_frames

            clip, mask = mask_frames(clip)
        return frames_for_model(clip, self.size), mask


def load_run(run: Run | Checkpoint | str | Path, which: str = "auto",
             device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a run's trained model from its `best` (auto: if any) or `last` checkpoint (or the
    Checkpoint given), frozen for inference on `device`. HiCoError when the run or checkpoint is
    missing, damaged or does not fit."""
    chosen = run if isinstance(run, Checkpoint) else Run.of(run).checkpoint(which)
    run_dir, name, folder = chosen.run.path, chosen.name, chosen.run.checkpoints
    device = resolve_device(device) if isinstance(device, str) else device
    weights, sidecar = load_checkpoint_weights(folder, name)  # the sidecar again: a save may have replaced it
    try:
        cfg = config_mod.run_config(sidecar["config"])
    except KeyError:
        raise HiCoError(f"Checkpoint {folder / name}.json has no config.") from None
    classes = sidecar.get("classes", [])
    model = build_model(cfg, len(classes))
    where = folder / f"{name}.json"
    check_architecture(where, architecture(cfg, len(classes)), sidecar.get("architecture"))
    fit_weights(model, weights, where)
    return LoadedRun(run_dir, name, cfg, freeze(model.to(device)), sidecar, device)
