"""Finding the clips of a dataset and their labels: class folders or a CSV manifest.

Layouts (README, "Data layouts"):
    root/<class>/<clip>           a clip under a first-level folder takes that folder's name as label
    root/<clip>                   a clip directly under the root is unlabelled
    manifest.csv                  path,label[,split] rows; paths relative to the CSV's folder
A clip is a video file, a DICOM file, a still image, or a folder of frames (one video).
Symbolic links are followed (people build subsets of a dataset out of links); `links_outside` says
which links lead out of given folders, for a server that may read only those.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from hico.errors import HiCoError
from hico.io import clip_kind
from hico.paths import expand_path

SPLITS = ("train", "val", "test")
CLIP_FILES = ("video", "dicom", "image")  # the kinds of clip that are one file


@dataclass(frozen=True)
class Clip:
    """One video of the dataset. `label` is a class name or None; `split` a manifest's split or None."""

    video_id: str
    path: Path
    label: str | None = None
    split: str | None = None


@dataclass
class Dataset:
    """The clips of a dataset root, in a stable order, and the sorted class names."""

    root: Path
    clips: list[Clip]
    classes: list[str]

    def label_index(self, clip: Clip) -> int:
        return self.classes.index(clip.label) if clip.label is not None else -1

    def __len__(self) -> int:
        return len(self.clips)


def find_clips(root: str | Path, frame_folders: bool = True) -> Dataset:
    """Discover every clip under a folder, or read a CSV manifest; raise HiCoError if there is none."""
    if not str(root).strip():
        raise HiCoError("No dataset given: set data.root to a dataset folder or a CSV manifest.")
    root = expand_path(root)
    if str(root) == ".":
        raise HiCoError("No dataset given: set data.root to a dataset folder or a CSV manifest.")
    if not root.exists():
        raise HiCoError(f"Dataset {root} does not exist.")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            clips = _read_manifest(root)
        elif clip_kind(root):
            clips = [Clip(root.stem, root)]
        else:
            raise HiCoError(f"Dataset {root} is neither a folder, a CSV manifest nor a clip.")
    else:
        clips = _scan_folder(root, frame_folders)
    if not clips:
        raise HiCoError(f"Dataset folder {root} holds no clips (videos, DICOM files, images or frame folders).")
    classes = sorted({c.label for c in clips if c.label is not None})
    return Dataset(root, clips, classes)


def _scan_folder(root: Path, frame_folders: bool) -> list[Clip]:
    clips = []
    for path in _walk(root, frame_folders):
        rel = path.relative_to(root)
        label = rel.parts[0] if len(rel.parts) >= 2 else None
        vid = rel.with_suffix("").as_posix() if path.is_file() else rel.as_posix()
        clips.append(Clip(vid, path, label))
    return clips


def _walk(folder: Path, frame_folders: bool, _above: frozenset = frozenset()):
    """Yield clip paths below `folder` in sorted order; a frame folder is yielded whole."""
    entries, _above = _entries(folder, _above)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir():
            if frame_folders and clip_kind(path) == "frames":
                yield path
            else:
                yield from _walk(path, frame_folders, _above)
        elif clip_kind(path) in CLIP_FILES:
            yield path


def _entries(folder: Path, above: frozenset) -> tuple[list[os.DirEntry], frozenset]:
    """The entries of `folder` a scan looks at (by name, hidden ones left out), and the real paths
    of the folders being walked, this one added. A folder whose real path is one of those (a link
    back up) gives no entries: following it would list the same clips under ever longer paths
    until the system's limit on links in a path ended the walk with an error."""
    real = _real(folder)
    if real in above:
        return [], above
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except PermissionError:
        raise HiCoError(f"Folder {folder} cannot be read (permission denied).") from None
    return [e for e in entries if not e.name.startswith(".")], above | {real}


def links_outside(dataset: str | Path, roots) -> list[tuple[Path, Path]]:
    """(link, the real path it leads to) for each symbolic link through which `dataset` (a folder,
    a CSV manifest or one clip) would read a clip or a frame lying outside every folder of `roots`,
    in the order found; a manifest's clip listed outside them comes as (path, its real path).

    For a server that may read only `roots`: the dataset's own path being inside says nothing of
    where its clips' links lead. Every folder below is listed, whatever data.frame_folders says
    (with it off, a frame folder's images are clips: the same files), and only links are resolved:
    a plain entry lies where its folder does, so a check costs about a listing of the folders (the
    app checks on every request). A link to a folder outside is named once, however many clips lie
    behind it, and so is a link reached by two paths. Nothing is opened but a file without a clip
    suffix (for the DICOM marker, as find_clips does); a dangling link reads nothing and is skipped,
    as find_clips skips it."""
    roots = [_real(r) for r in roots]
    dataset = Path(dataset)
    if not within(_real(dataset), roots):
        links = [_first_link_out(dataset, dataset.parent, roots)]
    elif dataset.is_dir():
        links = list(_links_below(dataset, roots))
    elif dataset.suffix.lower() == ".csv":
        links = []
        for clip in manifest_paths(dataset):  # missing ones too: the manifest still points there
            if not within(_real(clip), roots):
                links.append(_first_link_out(clip, dataset.parent, roots))
            elif clip.is_dir():
                links.extend(_links_below(clip, roots))
    else:
        links = []
    found: dict[Path, tuple[Path, Path]] = {}  # by where the link itself lies
    for link in links:
        found.setdefault(_real(link.parent) / link.name, (link, _real(link)))
    return list(found.values())


def _links_below(folder: Path, roots: list[Path], _above: frozenset = frozenset()):
    """The links below `folder` (inside `roots`) leading outside them to a folder or a clip file,
    in the order _walk finds them."""
    entries, _above = _entries(folder, _above)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink() and not within(_real(path), roots):
            if entry.is_dir() or clip_kind(path) in CLIP_FILES:
                yield path
        elif entry.is_dir():
            yield from _links_below(path, roots, _above)


def _first_link_out(path: Path, base: Path, roots: list[Path]) -> Path:
    """The first part of `path` below `base` that is a link whose real path lies outside `roots`
    (the link to remove), or `path` itself when none is (a manifest listing an outside path)."""
    parts = path.relative_to(base).parts if path.is_relative_to(base) else path.parts
    step = base if path.is_relative_to(base) else Path(path.anchor)
    for part in parts:
        step = step / part
        if step.is_symlink() and not within(_real(step), roots):
            return step
    return path


def within(path: Path, roots) -> bool:
    """Whether `path` is one of `roots` or below one (plain path comparison: resolve both first)."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def manifest_paths(path: str | Path) -> list[Path]:
    """The clip paths a CSV manifest lists, resolved against its folder, without opening any of
    them (for checking where a manifest points before reading what it points at)."""
    return [clip_path for _, _, clip_path in _manifest_rows(Path(path))]


def _manifest_rows(path: Path):
    """(line number, row with lower-case keys, clip path) for every row of a manifest."""
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "path" not in fields:
                raise HiCoError(f"Manifest {path} needs a header row with a path column (path,label[,split]).")
            for line, row in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                if not row.get("path"):
                    raise HiCoError(f"Manifest {path} line {line} has no path.")
                clip_path = Path(row["path"]).expanduser()
                if not clip_path.is_absolute():
                    clip_path = path.parent / clip_path
                yield line, row, clip_path
    except UnicodeDecodeError:
        raise HiCoError(f"Manifest {path} is not a text (UTF-8) CSV file.") from None


def _read_manifest(path: Path) -> list[Clip]:
    clips, seen = [], set()
    for line, row, clip_path in _manifest_rows(path):
        if not clip_path.exists():
            raise HiCoError(f"Manifest {path} line {line}: clip {clip_path} does not exist.")
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise HiCoError(f"Manifest {path} line {line}: split must be train, val or test, got {split!r}.")
        vid = Path(row["path"]).with_suffix("").as_posix() if clip_path.is_file() else Path(row["path"]).as_posix()
        if vid in seen:
            raise HiCoError(f"Manifest {path} line {line}: clip {row['path']} is listed twice.")
        seen.add(vid)
        clips.append(Clip(vid, clip_path, row.get("label") or None, split))
    return clips
