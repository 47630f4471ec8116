"""Checkpoints, saved all-or-nothing: safetensors weights, a JSON sidecar, and the optimizer state.

    checkpoints/<name>.json                       the sidecar: config, architecture, classes, step,
                                                  epoch, metrics, and `files`, which names the step
                                                  folder holding this checkpoint's weights and state
    checkpoints/<name>-<step>-<tag>/model.safetensors   model weights (no pickle)
    checkpoints/<name>-<step>-<tag>/state.pt      optimizer state and step (`last` only; the
                                                  learning rate follows from the step), read
                                                  with weights_only=True
    checkpoints/<name>.safetensors, <name>.state.pt     hard links to the current folder's files,
                                                  for readers that open the flat names

`name` is `last` or `best`. Saving writes the step folder complete under a temporary name, renames
it into place, then replaces the sidecar in one rename: that rename is the commit. A process killed
at any moment leaves the previous checkpoint whole, because its sidecar still names its own folder.
`clean_checkpoints` (run when training starts) removes what an interrupted save left: temporary
files, folders no sidecar names, stale flat links. Runs saved before step folders existed (flat
files only, no `files` in the sidecar) still load.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hico.errors import HiCoError
from hico.files import atomic_path, byte_size, fsync_tree, partial_name, remove_partials, write_json
from hico.model import HiCoModel
from hico.runs import CHECKPOINTS

NAMES = ("last", "best")
WEIGHTS, STATE = "model.safetensors", "state.pt"
FLAT = {"weights": ".safetensors", "state": ".state.pt"}  # the flat names: <name> + suffix


def save_checkpoint(folder: Path, name: str, model: torch.nn.Module, sidecar: dict[str, Any],
                    state: dict[str, Any] | None = None) -> Path:
    """Save `model`'s weights (and `state`, if given) as checkpoint `name` in folder, all-or-nothing.

    The sidecar's `step` names the step folder. Returns the path of the weights file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    step = int(sidecar.get("step", 0))
    final = folder / f"{name}-{step:07d}-{uuid.uuid4().hex[:6]}"
    tmp = partial_name(final)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    files = {"weights": f"{final.name}/{WEIGHTS}", "state": f"{final.name}/{STATE}" if state is not None else None}
    committed = False
    try:
        tmp.mkdir()
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if state is not None:
            torch.save(state, tmp / STATE)
        fsync_tree(tmp)
        os.rename(tmp, final)
        write_json(folder / f"{name}.json", {**sidecar, "files": files}, fsync=True)  # the commit
        committed = True
        _link_flat(folder, name, files)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not committed:  # the sidecar still names the previous checkpoint's folder
            shutil.rmtree(final, ignore_errors=True)
        full = _disk_full(exc, folder, _tensor_bytes(weights) + _tensor_bytes(state))
        if full is None:
            raise
        raise HiCoError(f"Saving checkpoint {name} at step {step} failed: the disk is full ({full} free on "
                        f"{folder}); free space and resume the run.") from exc
    _drop_unreferenced(folder, name, keep=final.name)
    return final / WEIGHTS


def _disk_full(exc: BaseException, folder: Path, needed: int) -> str | None:
    """The free space on `folder`'s disk, as a sentence shows it, if `exc` came of its being full;
    None for any other error (a bug raises as it is).

    The writers do not all say so: Python raises OSError ENOSPC, safetensors a SafetensorError
    quoting "os error 28", and torch.save only a RuntimeError from its zip writer ("enforce fail
    at inline_container.cc ... unexpected pos" or "file write failed"). Such a write error is
    taken for a full disk when less is free, now the partial files are gone, than the checkpoint
    needed."""
    if isinstance(exc, OSError):
        says_full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    elif isinstance(exc, SafetensorError):
        says_full = "os error 28" in str(exc) or "No space left" in str(exc)
    elif isinstance(exc, RuntimeError) and ("inline_container.cc" in str(exc) or "file write failed" in str(exc)):
        says_full = None  # a write that failed, for a reason it does not give: the free space decides
    else:
        return None
    if says_full is False:
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    return byte_size(free) if says_full or free < needed else None


def _tensor_bytes(value) -> int:
    """The bytes of the tensors in `value` (nested dicts, lists and tuples): what saving it writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def clean_checkpoints(folder: Path) -> None:
    """Remove what interrupted saves left in a checkpoints folder and re-link the flat names.

    Only the process that owns the run (holds its lock) may call this: it deletes step folders
    that no sidecar names, which is what a save in progress looks like from outside.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    remove_partials(folder)
    for old in folder.glob(".*.tmp"):  # temporary files of the flat layout, before step folders
        old.unlink(missing_ok=True)
    for name in NAMES:
        try:
            files = read_sidecar(folder, name).get("files")
        except HiCoError:
            files = None
        if files:
            _link_flat(folder, name, files)
        _drop_unreferenced(folder, name, keep=Path(files["weights"]).parent.name if files else None)


def read_sidecar(folder: Path, name: str) -> dict[str, Any]:
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        raise HiCoError(f"Checkpoint {path} does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HiCoError(f"Checkpoint sidecar {path} is not valid JSON.") from None


def checkpoint_file(folder: Path, name: str, kind: str = "weights", sidecar: dict | None = None) -> Path:
    """The file of checkpoint `name` holding its `weights` or `state`, as its sidecar names it."""
    folder = Path(folder)
    sidecar = read_sidecar(folder, name) if sidecar is None else sidecar
    files = sidecar.get("files")
    if not files:  # saved before step folders: the flat names are the files
        return folder / f"{name}{FLAT[kind]}"
    relative = files.get(kind)
    if relative is None:
        raise HiCoError(f"Checkpoint {folder / name} has no {kind} (only `last` keeps the training state).")
    parts = Path(relative).parts
    if Path(relative).is_absolute() or ".." in parts or len(parts) != 2:
        raise HiCoError(f"Checkpoint sidecar {folder / name}.json names a file outside its folder: {relative!r}.")
    return folder / relative


def _read_checkpoint(folder: Path, name: str, kind: str, read):
    """read(path, sidecar) for the checkpoint's file; a save may replace the checkpoint between
    reading its sidecar and opening the file, so a vanished file is looked up once more."""
    for attempt in range(2):
        sidecar = read_sidecar(folder, name)
        path = checkpoint_file(folder, name, kind, sidecar)
        try:
            return read(path, sidecar)
        except FileNotFoundError:
            if attempt:
                raise HiCoError(f"Checkpoint file {path} is missing.") from None
    raise AssertionError("unreachable")


def load_checkpoint_weights(folder: Path, name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, sidecar) of checkpoint `name`: the tensors by name, read without unpickling."""

    def read(path, sidecar):
        if not path.is_file():
            raise FileNotFoundError(path)
        try:
            return load_file(str(path)), sidecar
        except (SafetensorError, OSError) as exc:
            raise HiCoError(f"Checkpoint {path} cannot be read ({exc}).") from None

    return _read_checkpoint(folder, name, "weights", read)


def check_architecture(path: Path, expected: dict, found: dict | None) -> None:
    """HiCoError naming what differs when a checkpoint's architecture is not the model's."""
    if found is None:
        return
    found = {"classifier": "mlp", **found}  # saved before model.classifier existed: the MLP head
    diff = [f"{k}={found.get(k)!r} (the model wants {v!r})" for k, v in expected.items() if found.get(k) != v]
    if diff:
        raise HiCoError(f"Checkpoint {path} does not fit this model: it has {', '.join(diff)}.")


def load_weights(model: HiCoModel, path: Path, expected: dict | None = None, found: dict | None = None) -> None:
    """Load safetensors weights from a file into model; raise HiCoError naming the mismatch if any."""
    if expected is not None:
        check_architecture(path, expected, found)
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise HiCoError(f"Checkpoint {path} cannot be read ({exc}).") from None
    fit_weights(model, weights, path)


def fit_weights(model: HiCoModel, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Put `weights` into model, strictly (checkpoints from before the level probes load without them)."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing and all(k.startswith("probes.") for k in missing):
        model.probes = None  # saved before the model had level probes: everything else fits
        missing = []
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or mismatched:
        what = (missing or unexpected or mismatched)[0]
        raise HiCoError(f"Checkpoint {path} does not fit this model (first differing tensor: {what}).")


def load_state(folder: Path, name: str = "last") -> dict[str, Any]:
    """The optimizer state and step saved with checkpoint `name`; HiCoError if missing or damaged."""

    def read(path, sidecar):
        if not path.is_file():
            if not sidecar.get("files"):
                raise HiCoError(f"Training state {path} is missing, so the run cannot be resumed.")
            raise FileNotFoundError(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HiCoError(f"Training state {path} is damaged ({reason}), so the run cannot be resumed "
                            f"from it.") from None
        if not isinstance(state, dict) or "step" not in state:
            raise HiCoError(f"Training state {path} is damaged (no step in it), so the run cannot be resumed.")
        if int(state["step"]) != int(sidecar.get("step", state["step"])):
            raise HiCoError(f"Checkpoint {Path(folder) / name} is torn: its weights are from step "
                            f"{sidecar.get('step')} and its training state from step {state['step']}; the run "
                            f"cannot be resumed exactly.")
        return state

    return _read_checkpoint(folder, name, "state", read)


def find_checkpoint(run_dir: Path, which: str = "auto") -> str:
    """`best` if the run has one (and which is auto), else `last`; HiCoError if neither exists."""
    folder = Path(run_dir) / CHECKPOINTS
    names = ["best", "last"] if which == "auto" else [which]
    for name in names:
        with contextlib.suppress(HiCoError):
            if checkpoint_file(folder, name).is_file():
                return name
    if not Path(run_dir).is_dir():
        raise HiCoError(f"Run folder {run_dir} does not exist.")
    raise HiCoError(f"Run folder {run_dir} has no checkpoint yet ({' or '.join(names)} in {folder}).")


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


def _link_flat(folder: Path, name: str, files: dict[str, str | None]) -> None:
    """Point <name>.safetensors and <name>.state.pt at the current step folder's files (hard links,
    or copies where the file system has none); a flat name with no file behind it is removed."""
    for kind, suffix in FLAT.items():
        flat = folder / f"{name}{suffix}"
        source = folder / files[kind] if files.get(kind) else None
        if source is None or not source.is_file():
            flat.unlink(missing_ok=True)
            continue
        if flat.is_file() and os.path.samefile(flat, source):
            continue
        with atomic_path(flat) as tmp:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)


def _drop_unreferenced(folder: Path, name: str, keep: str | None) -> None:
    for path in folder.glob(f"{name}-*"):
        if path.is_dir() and path.name != keep and not path.name.endswith(".partial"):
            shutil.rmtree(path, ignore_errors=True)
