"""Writing a labelled dataset of mp4 clips with a manifest and a README (write_dataset)."""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import numpy as np

from hico.errors import HiCoError
from hico import folders
from hico.synth.render import CLASS_SCALES, CLASSES, _check_int, _check_size, render_clip

log = logging.getLogger("hico.synth")  # the package's logger, as before it was split into modules

_POOL_MIN_PIXELS = 8_000_000  # below this much work, starting worker processes costs more than it saves
_GENERATOR_VERSION = 1  # bump when the pictures change, so old dataset folders are not reused
_CLIP_FILE = re.compile(r"(?P<part>\.)?(?P<label>\w+)_(?P<index>\d{4,})\.mp4(?(part)\.[0-9a-f]{32}\.part)")
_MANIFEST_HEADER = b"path,label\r\n"  # how csv.writer writes it


def write_dataset(
    out_dir,
    clips: int = 200,
    frames: int = 16,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    fps: float = 15.0,
    progress: bool = True,
    workers: int | None = None,
    on_clip: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``clips`` synthetic mp4 clips spread evenly over :data:`CLASSES`, a manifest and a README.

    Layout: ``out_dir/<class>/<class>_<index:04d>.mp4``, ``out_dir/manifest.csv`` (``path,label``,
    paths relative to ``out_dir``) and ``out_dir/README.txt``. Clip ``i`` has class
    ``CLASSES[i % len(CLASSES)]`` and a seed derived from ``(seed, i)``, so the files do not
    depend on ``workers``. A folder already written with the same parameters is left as it is.
    ``on_clip(done, total)``, when given, hears of every clip written (the app's first start shows it).

    The dataset is written in a temporary sibling folder and renamed into place once complete, so
    an interrupted write leaves nothing at ``out_dir`` (the next call removes what it left). An
    incomplete dataset left in ``out_dir`` by an older version, which wrote in place, is replaced.
    """
    clips = _check_int("clips", clips, 1)
    frames = _check_int("frames", frames, 1)
    height, width = _check_size(size)
    seed = _check_int("seed", seed, 0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (fps > 0 and math.isfinite(fps)):
        raise HiCoError(f"fps must be a positive number of frames per second, not {fps!r}.")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    workers = _check_int("workers", workers, 1)

    out = Path(out_dir)
    signature = _dataset_signature(clips, frames, height, width, seed, float(fps))
    if out.exists() and not out.is_dir():
        raise HiCoError(f"Cannot write the synthetic dataset to {out}: it is a file, not a folder.")
    target = out.resolve()  # the real folder: the new one is made beside it and renamed onto it
    folders.remove_stale(target)
    if out.is_dir() and any(out.iterdir()):
        if _same_dataset(out, signature, clips):
            log.info("Synthetic dataset in %s already made with these parameters; nothing to do.", out)
            return out
        if not _interrupted_write(out):
            raise _not_ours(out)
        log.warning("Folder %s holds a synthetic dataset whose writing was interrupted; writing it anew "
                    "and replacing it.", out)

    from hico.io import write_mp4  # noqa: F401  (fail before any work if the writer is missing)

    if os.path.ismount(target):
        raise HiCoError(f"Cannot write the synthetic dataset to {out}: it is a mount point, which cannot be "
                        "replaced in one step; choose a folder inside it.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with folders.partial_folder(target) as folder:
            _write_files(folder, clips, frames, (height, width), seed, float(fps), workers,
                         _Counter(_progress(clips, progress), clips, on_clip), signature)
            moved = folders.move_into_place(folder, target, _interrupted_write)
    except OSError as error:
        raise HiCoError(f"Cannot write the synthetic dataset to {out}: {error.strerror or error}.") from error
    if not moved:
        if not _same_dataset(out, signature, clips):
            raise _not_ours(out)
        log.info("Synthetic dataset in %s was made meanwhile by another process; using it.", out)
        return out
    log.info("Wrote %d synthetic clips to %s", clips, out)
    return out


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` in a dataset made with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def _write_files(folder: Path, clips, frames, size, seed, fps, workers, bar, signature) -> None:
    """The clips, the manifest and, last, the README, in ``folder``; `bar` counts the clips."""
    for name in CLASSES:
        (folder / name).mkdir()
    jobs = [(folder, i, frames, size, seed, fps) for i in range(clips)]
    rows: dict[int, tuple[str, str]] = {}
    try:
        if workers > 1 and clips > workers and clips * frames * size[0] * size[1] >= _POOL_MIN_PIXELS:
            _write_parallel(jobs, workers, rows, bar)
        for job in jobs:  # everything when sequential; what a broken pool left otherwise
            if job[1] not in rows:
                rows[job[1]] = _write_one(job)
                bar.update(1)
    finally:
        bar.close()

    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows[i] for i in range(clips))
    # The README is written last: its presence marks a complete dataset.
    (folder / "README.txt").write_text(_readme_text(signature, clips), encoding="utf-8")


def _write_parallel(jobs, workers: int, rows: dict, bar) -> None:
    """Render and encode in worker processes; on a pool failure leave the rest to the caller."""
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: fork is unsafe from a process with threads (the app), and results do
    # not depend on the start method because every clip has its own seed.
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is not None and not os.path.isfile(main_file):
        return  # spawned workers re-import the main module, and this one has no file (stdin)
    ctx = multiprocessing.get_context("spawn")
    log.debug("Writing %d clips with %d worker processes.", len(jobs), workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_exit_with_parent)
    try:
        futures = {pool.submit(_write_one, job): job[1] for job in jobs}
        for future in as_completed(futures):
            rows[futures[future]] = future.result()
            bar.update(1)
    except BrokenProcessPool as error:
        # Typically a main module that cannot be re-imported (code piped to python's stdin).
        log.warning("Worker processes failed (%s); writing the remaining clips in this process.", error)
    finally:
        # On an error or an interrupt, drop the clips not started yet (a plain `with` would
        # render them all first); the workers then finish the clip in hand and exit.
        pool.shutdown(wait=True, cancel_futures=True)


def _exit_with_parent() -> None:
    """In a worker process: exit as soon as the writer is gone, even if it was killed (SIGTERM, SIGKILL),
    and leave Ctrl-C to the writer.

    Otherwise a worker whose parent died waits for more work forever (about 100 MB each). Ctrl-C
    in a terminal reaches the whole process group: the writer stops the pool on it (the workers
    finish the clip in hand), while a worker's own KeyboardInterrupt broke the pool and printed a
    traceback per worker. (A worker still importing, before this runs, can still print one.)
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent.sentinel, os.getppid()), daemon=True).start()


def _watch_parent(sentinel, ppid: int) -> None:
    from multiprocessing.connection import wait

    # The sentinel is a pipe the parent holds open until it exits; the parent id also
    # changes when the process is adopted (in case a forked grandchild keeps that pipe open).
    while not wait([sentinel], timeout=2.0) and os.getppid() == ppid:
        pass
    os._exit(1)


def _write_one(job) -> tuple[str, str]:
    from hico.io import write_mp4

    out, index, frames, size, seed, fps = job
    label = CLASSES[index % len(CLASSES)]
    rel = f"{label}/{label}_{index:04d}.mp4"
    clip = render_clip(label, frames=frames, size=size, seed=clip_seed(seed, index))
    write_mp4(Path(out) / rel, clip, fps=fps)
    return rel, label


def _dataset_signature(clips, frames, height, width, seed, fps) -> str:
    return (
        f"parameters: clips={clips} frames={frames} size={height}x{width} seed={seed} "
        f"fps={fps:g} generator={_GENERATOR_VERSION}"
    )


def _readme_text(signature: str, clips: int) -> str:
    per = {name: len(range(i, clips, len(CLASSES))) for i, name in enumerate(CLASSES)}
    lines = [
        "Synthetic B-mode-like ultrasound clips made by hico.synth (HiCo). Not patient data.",
        "Each clip is procedurally rendered: speckle, attenuation, time-gain compensation, probe",
        "motion, breathing, scan conversion to a convex fan or a linear image, and burned-in",
        "screen overlays whose content is random and independent of the class.",
        "",
        signature,
        "layout: <class>/<class>_<index>.mp4; manifest.csv lists path,label (paths relative to this folder)",
        "classes (clips, scale at which the class differs):",
    ]
    lines += [f"  {name}: {per[name]} clips, {CLASS_SCALES[name]}" for name in CLASSES]
    return "\n".join(lines) + "\n"


def _same_dataset(out: Path, signature: str, clips: int) -> bool:
    readme, manifest = out / "README.txt", out / "manifest.csv"
    if not readme.is_file() or not manifest.is_file():
        return False
    try:
        if signature not in readme.read_text(encoding="utf-8").splitlines():
            return False
        with open(manifest, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return len(rows) == clips and all((out / row.get("path", "")).is_file() for row in rows)


def _interrupted_write(out: Path) -> bool:
    """Whether ``out`` is what an interrupted write left (by a version that wrote in place): safe to replace.

    That is every class folder, holding only clips named and placed as this module names them
    (or write_mp4's temporary ``.<clip>.<hex>.part`` files), perhaps a manifest begun with its
    header, and no README (written last, it marks a complete dataset). Nothing else.
    """
    try:
        names = {entry.name for entry in out.iterdir()}
        if not set(CLASSES) <= names <= set(CLASSES) | {"manifest.csv"}:
            return False
        for label in CLASSES:
            folder = out / label
            if folder.is_symlink() or not folder.is_dir():
                return False
            for clip in folder.iterdir():
                match = _CLIP_FILE.fullmatch(clip.name)
                if (not match or match["label"] != label or CLASSES[int(match["index"]) % len(CLASSES)] != label
                        or clip.is_symlink() or not clip.is_file()):
                    return False
        manifest = out / "manifest.csv"
        if "manifest.csv" in names:
            if manifest.is_symlink() or not manifest.is_file():
                return False
            with open(manifest, "rb") as fh:
                if not _MANIFEST_HEADER.startswith(fh.read(len(_MANIFEST_HEADER))):
                    return False
    except OSError:
        return False
    return True


def _not_ours(out: Path) -> HiCoError:
    return HiCoError(
        f"Folder {out} is not empty and does not hold a complete synthetic dataset made with "
        "these parameters; choose an empty or new folder."
    )


class _Counter:
    """A progress bar that also tells `on_clip(done, total)` of every clip written."""

    def __init__(self, bar, total: int, on_clip: Callable[[int, int], None] | None):
        self.bar, self.total, self.on_clip, self.done = bar, total, on_clip, 0
        if on_clip is not None:
            on_clip(0, total)

    def update(self, n: int) -> None:
        self.done += n
        self.bar.update(n)
        if self.on_clip is not None:
            self.on_clip(self.done, self.total)

    def close(self) -> None:
        self.bar.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="synth", unit="clip")
