"""A dataset brought in as a .zip: unpacked safely under a datasets folder, then checked.

The archive may hold either layout of the README ("Data layouts"): class folders of clips, or a
CSV manifest with clips beside it; a single top folder around everything (what zipping a folder
makes) is dropped. An archive comes from a browser, so it is taken as hostile:
- members with an absolute path, a drive, a `..` part, or that are links or devices are refused;
- its size is bounded before anything is written (members; total bytes against one budget: the
  caller's cap or quota, and a compression ratio over the whole archive as well as per member;
  free disk space) and counted again while writing, since a header can lie;
- it is unpacked into a hidden locked sibling and renamed into place whole (hico.folders), so a
  failed or interrupted import leaves nothing at the name, and an existing dataset is never
  replaced.
Then every clip's header is read (hico.io.read_clip_meta, no decoding): clips that cannot be read
or are over the decoding limits are removed and left out of a manifest, and the result lists them
with their reasons. Only what training reads is kept: every other file (notes, spreadsheets,
anything that is not a clip or the manifest) is removed and counted in the result's message.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hico.data.dataset import find_clips, manifest_paths
from hico.errors import HiCoError
from hico.files import byte_size
from hico.folders import move_into_place, partial_folder, remove_stale
from hico.io import read_clip_meta
from hico.io.images import list_frames
from hico.io.limits import ClipLimits
from hico.io.reasons import short_reason

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MARKER = ".hico-dataset.json"  # {"manifest": name} when the dataset is its CSV manifest, not its folder
JUNK = ("__MACOSX", ".DS_Store", "Thumbs.db")
CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """The most an archive may unpack to: members; bytes in all (max_bytes, lowered by the caller
    to what a quota leaves); and bytes per compressed byte, for any member over 1 MiB and for the
    whole archive, so that many small members cannot add up to a bomb (videos and DICOM compress
    little; a zip bomb compresses by 1,000x). The whole archive may unpack to max_ratio times its
    file's size plus RATIO_SLACK (a few highly compressible CSVs and headers)."""

    max_members: int = 20_000
    max_bytes: int = 8 << 30
    max_ratio: float = 100.0


RATIO_SLACK = 1 << 20


@dataclass(frozen=True)
class Room:
    """A quota on a datasets folder: what it may hold in all, and what it holds now (bytes)."""

    quota: int
    used: int

    @property
    def left(self) -> int:
        return max(self.quota - self.used, 0)


@dataclass(frozen=True)
class Budget:
    """The bytes one archive may unpack to: the least of the limits' max_bytes, the ratio bound of
    the whole archive, and the room a quota leaves; `refusal` says which one an amount passes."""

    limits: ArchiveLimits
    ratio_bound: int
    room: Room | None = None

    @property
    def bytes(self) -> int:
        return min(self.limits.max_bytes, self.ratio_bound, self.room.left if self.room else self.limits.max_bytes)

    def refusal(self, label: str, total: int | None) -> str:
        """The sentence for an archive that unpacks to `total` bytes (None: more than the budget)."""
        amount = f"unpacks to {byte_size(total)}" if total else "unpacks to more than its headers said"
        if self.ratio_bound == self.bytes:
            return (f"Archive {label} {amount}, more than {self.limits.max_ratio:.0f} times its own size allows "
                    f"({byte_size(self.ratio_bound)}); it looks like a zip bomb and was refused.")
        if self.room and self.room.left == self.bytes:
            return (f"Archive {label} {amount}, more than the {byte_size(self.room.left)} left of this server's "
                    f"{byte_size(self.room.quota)} for datasets ({byte_size(self.room.used)} used); delete a "
                    f"dataset first.")
        return f"Archive {label} {amount}, more than the {byte_size(self.limits.max_bytes)} allowed."


@dataclass
class ImportedDataset:
    """What an import made: the dataset's folder, the path to train on (the folder, or its CSV
    manifest), its clips per class, and the files set aside with their reasons."""

    name: str
    folder: Path
    dataset: Path
    clips: int
    per_class: dict[str, int]
    unlabelled: int
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    left_out: tuple[int, int] = (0, 0)  # files that are not clips (nor the manifest), and their bytes, removed

    def message(self) -> str:
        classes = ", ".join(f"{label} {count}" for label, count in self.per_class.items())
        text = f"Dataset {self.name}: {self.clips} clips"
        text += f" in {len(self.per_class)} classes ({classes})" if self.per_class else ", none labelled"
        if self.per_class and self.unlabelled:
            text += f" and {self.unlabelled} unlabelled"
        text += "."
        if self.unreadable:
            shown = "; ".join(f"{path} ({reason})" for path, reason in self.unreadable[:10])
            more = f"; and {len(self.unreadable) - 10} more" if len(self.unreadable) > 10 else ""
            text += f" {len(self.unreadable)} file(s) could not be read and were left out: {shown}{more}."
        files, size = self.left_out
        if files:
            text += f" {files} file(s) that are not clips ({byte_size(size)}) were not kept."
        return text


def dataset_name(text: str, archive: Path) -> str:
    """The name a dataset gets: the one asked for, else the archive's file name without .zip."""
    name = (text or "").strip() or archive.name.rsplit(".", 1)[0]
    if not NAME.fullmatch(name):
        raise HiCoError(f"Dataset name {name!r} is not allowed: use up to 64 letters, digits, '.', '_' or '-', "
                        f"starting with a letter or digit.")
    return name


def import_dataset(archive: str | Path, datasets_dir: str | Path, name: str = "", shown_name: str | None = None,
                   limits: ArchiveLimits = ArchiveLimits(), clip_limits: ClipLimits = ClipLimits(),
                   owner: str | None = None, room: Room | None = None) -> ImportedDataset:
    """Unpack the .zip `archive` to `datasets_dir/<name>` and check it (see the module docstring).

    shown_name: the archive's name as the user knows it (an upload's own file name), used in
    messages instead of the server's temporary path. owner: the login that uploaded it (recorded
    in the dataset's marker; see dataset_owner). room: what a quota on datasets_dir leaves. Raises HiCoError with the reason, leaving nothing
    behind, when the archive is refused or holds no readable clip.
    """
    archive = Path(archive)
    label = shown_name or archive.name
    name = dataset_name(name, Path(label))
    datasets_dir = Path(datasets_dir)
    target = datasets_dir / name
    if target.exists():
        raise HiCoError(f"A dataset called {name} exists already; give the upload another name.")
    if not archive.is_file():
        raise HiCoError(f"File {label} is gone from the server; upload it again.")
    if archive.stat().st_size == 0:
        raise HiCoError(f"File {label} is empty.")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError):
        raise HiCoError(f"File {label} is not a .zip archive.") from None
    datasets_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    budget = Budget(limits, int(limits.max_ratio * archive.stat().st_size) + RATIO_SLACK, room)
    with zf, partial_folder(target) as folder:
        members = _checked_members(zf, label, limits, budget, datasets_dir)
        _extract(zf, members, folder, label, budget)
        result, kept = _check_clips(folder, name, label, clip_limits)
        result.left_out = _keep_only(folder, {*kept, result.dataset})
        _write_marker(folder, result.dataset if result.dataset != folder else None, owner)
        if not move_into_place(folder, target, replaceable=lambda _: False):
            raise HiCoError(f"A dataset called {name} exists already; give the upload another name.")
    result.folder = target
    result.dataset = target / result.dataset.relative_to(folder)
    return result


def training_path(folder: Path) -> Path:
    """What to train on in a dataset folder: its CSV manifest when an import found one, else the folder."""
    try:
        name = json.loads((Path(folder) / MARKER).read_text()).get("manifest")
    except (OSError, ValueError, AttributeError):
        return Path(folder)
    manifest = Path(folder) / str(name)
    return manifest if name and manifest.parent == Path(folder) and manifest.is_file() else Path(folder)


def _checked_members(zf: zipfile.ZipFile, label: str, limits: ArchiveLimits, budget: Budget,
                     datasets_dir: Path) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The archive's files with their paths inside the dataset (a common top folder dropped), after
    refusing anything unsafe or too large."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise HiCoError(f"Archive {label} holds {len(infos)} entries, more than the {limits.max_members} allowed.")
    files, total = [], 0
    for info in infos:
        raw = info.filename.replace("\\", "/")
        path = PurePosixPath(raw)
        if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or ".." in path.parts:
            raise HiCoError(f"Archive {label} has an entry outside its own folder ({info.filename}); "
                            f"it was refused.")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise HiCoError(f"Archive {label} has an entry that is a link or a device ({info.filename}); "
                            f"only files and folders are accepted.")
        if info.is_dir() or any(part in JUNK or part.startswith("._") for part in path.parts):
            continue
        if info.file_size > CHUNK and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise HiCoError(f"Archive {label} has an entry that unpacks to {info.file_size / info.compress_size:.0f}x "
                            f"its packed size ({info.filename}); it looks like a zip bomb and was refused.")
        total += info.file_size
        files.append((info, path))
    if total > budget.bytes:
        raise HiCoError(budget.refusal(label, total))
    free = shutil.disk_usage(datasets_dir).free
    if total > free * 0.9:
        raise HiCoError(f"Archive {label} unpacks to {byte_size(total)}, more than the disk can take: "
                        f"{byte_size(free)} is free, and a tenth of that is kept free.")
    if not files:
        raise HiCoError(f"Archive {label} holds no files.")
    tops = {path.parts[0] for _, path in files}
    if len(tops) == 1 and all(len(path.parts) > 1 for _, path in files):  # a zipped folder: drop its name
        files = [(info, PurePosixPath(*path.parts[1:])) for info, path in files]
    return files


def _extract(zf: zipfile.ZipFile, members, folder: Path, label: str, budget: Budget) -> None:
    """Write the members under folder, counting every byte against one budget as it comes (a
    header's sizes can lie)."""
    written = 0
    for info, path in members:
        out = folder.joinpath(*path.parts)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "xb") as dst:
                while chunk := src.read(CHUNK):
                    written += len(chunk)
                    if written > budget.bytes:
                        raise HiCoError(budget.refusal(label, None))
                    dst.write(chunk)
        except (FileExistsError, NotADirectoryError):  # twice, or as a file and as a folder
            raise HiCoError(f"Archive {label} lists {info.filename} twice.") from None
        # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile lacks
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError,
                RuntimeError) as exc:
            raise HiCoError(f"Archive {label} cannot be unpacked ({info.filename}: {short_reason(exc)}).") from None
        except OSError as exc:  # the datasets folder's disk, not the archive
            raise HiCoError(f"Archive {label} could not be written to the server's datasets folder "
                            f"({exc.strerror or exc}).") from None


def _check_clips(folder: Path, name: str, label: str, clip_limits: ClipLimits) -> tuple[ImportedDataset, set[Path]]:
    """Find the clips (class folders, or a CSV manifest at the top), remove the unreadable ones,
    and count what is left; also returns every file the kept clips are made of."""
    manifests = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    root = manifests[0] if len(manifests) == 1 else folder
    if len(manifests) > 1:
        raise HiCoError(f"Archive {label} has {len(manifests)} CSV files at its top; keep one manifest "
                        f"(path,label[,split]) or none.")
    # before anything is opened: whether a path outside exists is not the upload's to learn
    for path in manifest_paths(root) if root != folder else ():
        if not path.resolve().is_relative_to(folder.resolve()):
            raise HiCoError(f"Archive {label}: its manifest lists a clip outside the archive ({path.name}).")
    try:
        clips = find_clips(root).clips
    except HiCoError as exc:
        raise HiCoError(f"Archive {label}: {_relative(str(exc), folder)}") from None
    unreadable, kept = [], []
    for clip in clips:
        reason = _unreadable_reason(clip.path, clip_limits)
        if reason is None:
            kept.append(clip)
            continue
        unreadable.append((clip.path.relative_to(folder).as_posix(), _relative(reason, folder)))
        if clip.path.is_dir():  # a frame folder
            shutil.rmtree(clip.path)
        else:
            clip.path.unlink()
    if not kept:
        shown = "; ".join(f"{p} ({r})" for p, r in unreadable[:5])
        raise HiCoError(f"Archive {label} holds no clip that can be read: {shown}.")
    if root != folder and unreadable:
        _drop_manifest_rows(root, {folder / p for p, _ in unreadable})
    per_class: dict[str, int] = {}
    for clip in kept:
        if clip.label is not None:
            per_class[clip.label] = per_class.get(clip.label, 0) + 1
    files = {frame for clip in kept for frame in (list_frames(clip.path) if clip.path.is_dir() else [clip.path])}
    return ImportedDataset(name, folder, root, len(kept), dict(sorted(per_class.items())),
                           sum(c.label is None for c in kept), unreadable), files


def _keep_only(folder: Path, used: set[Path]) -> tuple[int, int]:
    """Remove every file under folder that is not in `used` (files that are not clips, clips that
    cannot be read), and the folders left empty: a dataset holds only what training reads.
    Returns (files removed, their bytes)."""
    removed = size = 0
    used = {path.resolve() for path in used}
    for parent, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            path = Path(parent) / name
            if path.resolve() not in used:
                size += path.lstat().st_size
                path.unlink()
                removed += 1
        for name in dirs:
            with contextlib.suppress(OSError):  # not empty: it holds clips
                (Path(parent) / name).rmdir()
    return removed, size


def _write_marker(folder: Path, manifest: Path | None, owner: str | None) -> None:
    """The dataset's marker: its CSV manifest when it is trained from one (training_path), and the
    login that uploaded it (dataset_owner)."""
    (folder / MARKER).write_text(json.dumps({"manifest": manifest.name if manifest else None, "owner": owner}))


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under folder (links not followed): what a quota counts."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += (Path(parent) / name).lstat().st_size
    return total


def dataset_owner(folder: Path) -> str | None:
    """The login that uploaded a dataset, or None (no logins, or not an upload)."""
    try:
        owner = json.loads((Path(folder) / MARKER).read_text()).get("owner")
    except (OSError, ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) and owner else None


def _unreadable_reason(path: Path, clip_limits: ClipLimits) -> str | None:
    """Why a clip cannot be used (its header unreadable, no frames, over the decoding limits), or None."""
    try:
        meta = read_clip_meta(path)
        if meta["frames"] < 1:
            return "it has no frames"
        clip_limits.check_frame(path.name, meta["height"], meta["width"])
    except HiCoError as exc:
        return str(exc).rstrip(".")
    except Exception as exc:  # a decoder's own error on a malformed file
        return short_reason(exc)
    return None


def _drop_manifest_rows(manifest: Path, dropped: set[Path]) -> None:
    with manifest.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    column = [h.strip().lower() for h in header].index("path")
    kept = [row for row in body if row and (manifest.parent / row[column].strip()) not in dropped]
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([header, *kept])


def _relative(text: str, folder: Path) -> str:
    """A message with the temporary folder's paths shown relative to the dataset."""
    return text.replace(f"{folder}/", "").replace(str(folder), ".")
