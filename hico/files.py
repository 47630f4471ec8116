"""Writing files all-or-nothing: a reader (or a process started after a crash) sees the old file or
the new one, never half of one.

Each write goes to a temporary name in the same folder (so the final rename stays on one file
system, where it is atomic) and is renamed over the target once complete. Temporary names start
with `.` and end with `.partial`, so `remove_partials` can clear what a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"


def partial_name(path: Path) -> Path:
    """A temporary sibling of `path`, unique to this writer: `.<name>.<random>.partial`."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write `path` to; on success it replaces `path` in one rename.

    On an exception the temporary file is removed and `path` is left as it was. With `fsync`,
    the data reaches the disk before the rename (for files a crash of the machine must not tear).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        if fsync:
            fsync_tree(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write text (UTF-8) to `path` all-or-nothing; returns the path."""
    with atomic_path(path, fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, value: Any, fsync: bool = False) -> Path:
    """Write `value` as indented JSON to `path` all-or-nothing."""
    return write_text(path, json.dumps(value, indent=2), fsync)


def remove_partials(folder: str | os.PathLike) -> int:
    """Delete the temporary files and folders killed writers left in `folder`; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    leftovers = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(PARTIAL_SUFFIX)]
    for path in leftovers:
        _remove(path)
    return len(leftovers)


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file under a folder, to the disk."""
    if path.is_dir():
        for child in path.iterdir():
            fsync_tree(child)
        return
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def byte_size(n: float) -> str:
    """A byte count for a sentence: 812 bytes, 3.4 KiB, 12 MiB, 1.5 GiB (never "0.0 GiB")."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"
