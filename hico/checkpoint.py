"""Checkpoints: safetensors weights, a JSON sidecar, and a separate optimizer/scheduler state.

    checkpoints/<name>.safetensors   model weights (no pickle)
    checkpoints/<name>.json          config, architecture, classes, step, epoch, metrics
    checkpoints/<name>.state.pt      optimizer, scheduler and step, read with weights_only=True

Every file is written to a temporary name and renamed, so a killed process never leaves a
half-written checkpoint. Loading checks the architecture first and names what differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hico import config as config_mod
from hico.errors import HiCoError
from hico.model import HiCoModel, architecture, build_model


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(folder: Path, name: str, model: torch.nn.Module, sidecar: dict[str, Any],
                    state: dict[str, Any] | None = None) -> Path:
    """Write `<name>.safetensors`, `<name>.json` and, if given, `<name>.state.pt` into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(folder / f"{name}.safetensors", lambda p: save_file(weights, str(p), metadata={"format": "pt"}))
    if state is not None:
        _atomic(folder / f"{name}.state.pt", lambda p: torch.save(state, p))
    # The sidecar goes last: its presence says the weights beside it are complete.
    _atomic(folder / f"{name}.json", lambda p: p.write_text(json.dumps(sidecar, indent=2)))
    return folder / f"{name}.safetensors"


def read_sidecar(folder: Path, name: str) -> dict[str, Any]:
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        raise HiCoError(f"Checkpoint {path} does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise HiCoError(f"Checkpoint sidecar {path} is not valid JSON.") from None


def load_weights(model: HiCoModel, path: Path, expected: dict | None = None, found: dict | None = None) -> None:
    """Load safetensors weights into model; raise HiCoError naming the mismatch if any."""
    if expected is not None and found is not None:
        diff = [f"{k}={found.get(k)!r} (the model wants {v!r})" for k, v in expected.items() if found.get(k) != v]
        if diff:
            raise HiCoError(f"Checkpoint {path} does not fit this model: it has {', '.join(diff)}.")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise HiCoError(f"Checkpoint {path} cannot be read ({exc}).") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing and all(k.startswith("probes.") for k in missing):
        model.probes = None  # saved before the model had level probes: everything else fits
        missing = []
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or mismatched:
        what = (missing or unexpected or mismatched)[0]
        raise HiCoError(f"Checkpoint {path} does not fit this model (first differing tensor: {what}).")


def load_state(folder: Path, name: str) -> dict[str, Any]:
    path = Path(folder) / f"{name}.state.pt"
    if not path.is_file():
        raise HiCoError(f"Training state {path} is missing, so the run cannot be resumed.")
    return torch.load(path, map_location="cpu", weights_only=True)


def find_checkpoint(run_dir: Path, which: str = "auto") -> str:
    """`best` if the run has one (and which is auto), else `last`; HiCoError if neither exists."""
    folder = Path(run_dir) / "checkpoints"
    names = ["best", "last"] if which == "auto" else [which]
    for name in names:
        if (folder / f"{name}.json").is_file() and (folder / f"{name}.safetensors").is_file():
            return name
    if not Path(run_dir).is_dir():
        raise HiCoError(f"Run folder {run_dir} does not exist.")
    raise HiCoError(f"Run folder {run_dir} has no checkpoint yet ({' or '.join(names)} in {folder}).")


def load_run(run_dir: str | Path, which: str = "auto", device: str | torch.device = "cpu"):
    """Rebuild a trained model from a run folder.

    Returns (config, model in eval mode on device, sidecar dict with `classes`, `step`, ...).
    """
    run_dir = Path(run_dir)
    name = find_checkpoint(run_dir, which)
    sidecar = read_sidecar(run_dir / "checkpoints", name)
    try:
        cfg = config_mod.from_dict(sidecar["config"])
    except KeyError:
        raise HiCoError(f"Checkpoint {run_dir / 'checkpoints' / name}.json has no config.") from None
    classes = sidecar.get("classes", [])
    model = build_model(cfg, len(classes))
    load_weights(model, run_dir / "checkpoints" / f"{name}.safetensors",
                 architecture(cfg, len(classes)), sidecar.get("architecture"))
    return cfg, model.to(device).eval(), sidecar


def load_init_weights(model: HiCoModel, path: str | Path) -> None:
    """Start from a user's weights file (safetensors): every tensor whose name and shape match."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise HiCoError(f"Weights file {path} (model.weights) does not exist.")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise HiCoError(f"Weights file {path} (model.weights) is not a safetensors file ({exc}).") from None
    own = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise HiCoError(f"Weights file {path} (model.weights) has no tensor that fits this model.")
    model.load_state_dict(usable, strict=False)

