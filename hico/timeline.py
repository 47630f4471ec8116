"""The run's timeline: the embeddings of a fixed set of frames at each validation, so a projection
can be shown at several points of training.

    RUN_DIR/timeline/step-<step, 7 digits>.npz     one snapshot per validation, arrays:
        step       scalar int
        video_id   N str       the clip's id, as in `hico embed` tables
        frame      N int       the frame's index in the clip (as the frame cache holds it)
        label      N str       class name, "" for an unlabelled clip
        split      N str       train | val
        local, medium, global, backbone     N x d float16: pooled level maps and pooled C5

The frames are the same at every step (`hico.val_accuracy.spaced_frames`: a few evenly spaced
frames of every training and held-out video). Vectors are kept as float16: projections and
neighbours agree with float32 to far below what a plot shows, at half the disk.

At most KEEP snapshots are kept, evenly thinned as the run goes on: each new snapshot beyond KEEP
drops the inner one whose neighbours are the closest in steps, so the first and latest stay and
the rest spread over the run. 32 show how a projection forms as finely as a slider can use, and
bound the folder: 200 videos x 4 frames at 1,280 values each is 2 MB a snapshot, 66 MB at most.
Every file is written all-or-nothing; a resumed run drops the snapshots after its step.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hico.config import VIEWS
from hico.errors import HiCoError
from hico.files import atomic_path, remove_partials
from hico.runs import TIMELINE

KEEP = 32
F16_MAX = float(np.finfo(np.float16).max)  # larger values are kept as this rather than as infinity
COLUMNS = VIEWS
_NAME = re.compile(r"step-(\d{7,})\.npz")


@dataclass
class Snapshot:
    """One validation's embeddings of the timeline frames (N of them)."""

    step: int
    video_id: np.ndarray  # N str
    frame: np.ndarray  # N int64
    label: np.ndarray  # N str; "" for an unlabelled clip
    split: np.ndarray  # N str: train | val
    vectors: dict[str, np.ndarray]  # column (COLUMNS) -> N x d float32


def folder(run_dir: str | Path) -> Path:
    return Path(run_dir) / TIMELINE


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    return folder(run_dir) / f"step-{int(step):07d}.npz"


def steps(run_dir: str | Path) -> list[int]:
    """The steps that have a snapshot, ascending."""
    where = folder(run_dir)
    if not where.is_dir():
        return []
    found = (_NAME.fullmatch(p.name) for p in where.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def write(run_dir: str | Path, snapshot: Snapshot, keep: int = KEEP) -> Path:
    """Write `snapshot` all-or-nothing, then thin the timeline to `keep` snapshots; returns its path."""
    n = len(snapshot.video_id)
    for name, values in (("frame", snapshot.frame), ("label", snapshot.label), ("split", snapshot.split),
                         *snapshot.vectors.items()):
        if len(values) != n:
            raise ValueError(f"timeline column {name} has {len(values)} rows, video_id has {n}")
    path = snapshot_path(run_dir, snapshot.step)
    arrays = {"step": np.int64(snapshot.step), "video_id": np.asarray(snapshot.video_id, dtype=str),
              "frame": np.asarray(snapshot.frame, dtype=np.int64), "label": np.asarray(snapshot.label, dtype=str),
              "split": np.asarray(snapshot.split, dtype=str)}
    arrays.update({name: np.clip(snapshot.vectors[name], -F16_MAX, F16_MAX).astype(np.float16) for name in COLUMNS
                   if name in snapshot.vectors})
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    for step in thinned(steps(run_dir), keep):
        snapshot_path(run_dir, step).unlink(missing_ok=True)
    return path


def thinned(have: list[int], keep: int = KEEP) -> list[int]:
    """The steps to drop so that at most `keep` of the ascending `have` stay: repeatedly the inner
    one whose two neighbours are the closest (the earliest on a tie). First and last always stay."""
    kept, dropped = list(have), []
    while len(kept) > max(keep, 2):
        gaps = [kept[i + 1] - kept[i - 1] for i in range(1, len(kept) - 1)]
        dropped.append(kept.pop(1 + int(np.argmin(gaps))))
    return sorted(dropped)


def read(run_dir: str | Path, step: int) -> Snapshot:
    """The snapshot at `step`; HiCoError when there is none or it cannot be read."""
    path = snapshot_path(run_dir, step)
    if not path.is_file():
        raise HiCoError(f"Run {Path(run_dir).name} has no timeline snapshot at step {step}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return Snapshot(int(data["step"]), data["video_id"], data["frame"], data["label"], data["split"],
                            {name: data[name].astype(np.float32) for name in COLUMNS if name in data.files})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise HiCoError(f"Timeline snapshot {path} cannot be read ({type(exc).__name__}).") from None


def truncate(run_dir: str | Path, step: int) -> None:
    """Drop the snapshots after `step` (a resume from the checkpoint at `step`) and what killed
    writers left."""
    remove_partials(folder(run_dir))
    for later in steps(run_dir):
        if later > step:
            snapshot_path(run_dir, later).unlink(missing_ok=True)
