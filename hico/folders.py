"""Folders written all at once: filled in a locked temporary sibling, then renamed into place.

Used for datasets (the synthetic set, and anything else written as a whole folder): an interrupted
writer leaves a hidden `.<name>.partial-<pid>-<random>` sibling, never a half folder at the name,
and the next writer removes the siblings whose writer is gone (its lock is free).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from hico.runs import pid_exists

try:
    import fcntl
except ImportError:  # Windows: no flock; stale folders are then kept (they block nothing)
    fcntl = None

log = logging.getLogger(__name__)

_WRITER_PID = re.compile(r"\.partial-(\d+)-")


def _prefix(target: Path) -> str:
    return f".{target.name}.partial-"


@contextmanager
def partial_folder(target: Path) -> Iterator[Path]:
    """A new empty sibling ``.<name>.partial-<pid>-<random>`` of ``target`` to fill; removed afterwards if still there.

    The folder is locked (flock) while the caller holds it. The kernel drops the lock when its
    holder exits, however it exits (SIGKILL included), so a free lock tells a later call that the
    writer is gone and the folder can go.
    """
    while True:
        path = target.parent / f"{_prefix(target)}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path.mkdir()  # not mkdtemp: the dataset keeps the usual permissions, not owner-only ones
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        # Another call's remove_stale may have locked it first (and removes it): take a new one.
        if _try_lock(fd) is not False and _same_folder(fd, path):
            break
        os.close(fd)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # nothing left to remove once renamed into place
        os.close(fd)


def remove_stale(target: Path) -> None:
    """Remove temporary siblings of ``target`` whose writer process is gone (killed before it finished)."""
    try:
        siblings = [p for p in target.parent.iterdir() if p.name.startswith(_prefix(target))]
    except OSError:
        return
    for path in siblings:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # renamed into place or removed meanwhile
        try:
            locked = _try_lock(fd)
            pid = _writer_pid(path)  # no pid in the name: cannot tell, so it stays
            gone = locked if locked is not None else (pid is not None and not pid_exists(pid))
            if gone and _same_folder(fd, path):  # not renamed into place meanwhile
                log.info("Removing %s, left by a writer that was interrupted.", path)
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def move_into_place(folder: Path, target: Path, replaceable: Callable[[Path], bool]) -> bool:
    """Rename the finished ``folder`` to ``target`` in one step; False if ``target`` holds something else.

    A missing or empty ``target`` is simply replaced. One for which ``replaceable`` says yes is
    renamed aside first and removed after, so an interruption leaves either nothing at ``target``
    or the whole new folder (and siblings that :func:`remove_stale` removes).
    """
    try:
        os.rename(folder, target)
        return True
    except OSError:
        pass
    try:
        if any(target.iterdir()) and not replaceable(target):
            return False
    except FileNotFoundError:  # removed meanwhile
        pass
    aside = folder.with_name(folder.name + "-old")  # a partial sibling's name: removed if we are killed now
    try:
        os.rename(target, aside)
    except FileNotFoundError:
        pass
    try:
        os.rename(folder, target)
        return True
    except OSError:
        if not target.exists():
            raise  # a real failure, not another writer that got there in between
        return False
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _try_lock(fd: int) -> bool | None:
    """Lock ``fd`` exclusively: True if locked, False if another process holds it, None if locks are unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # a file system without flock (some network ones)
        return None


def _same_folder(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _writer_pid(path: Path) -> int | None:
    match = _WRITER_PID.search(path.name)
    return int(match[1]) if match else None


def set_aside(folder: Path) -> Path:
    """Rename a folder to a hidden sibling (`.deleted-<name>-<random>`) and return that: it leaves
    every listing at once, whole, and can then be removed at leisure. Call it under the lock that
    guards the folder's use; remove the returned path outside it."""
    aside = folder.with_name(f".deleted-{folder.name}-{uuid.uuid4().hex[:8]}")
    os.rename(folder, aside)
    return aside
