"""Bounds on the files Gradio keeps for this app: uploads (clips for Diagnose, zips for datasets,
anything posted to /gradio_api/upload) and the copies of what it serves.

Gradio keeps every uploaded file until its own schedule removes it (`delete_cache`), and any client
may post files to /gradio_api/upload without calling an endpoint: 20 files of 1.9 MB took 0.5 s.
So the app bounds them twice: by age (Gradio's schedule, every UPLOAD_SWEEP_S seconds, files older
than UPLOAD_MAX_AGE_S) and by size (`UploadJanitor`: every JANITOR_EVERY_S seconds, when this app's
files take more than the cap, the oldest go first until they fit). A file that goes while a page
still shows it is answered with "upload it again" (app.access).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

UPLOAD_SWEEP_S = 300  # Gradio's delete_cache frequency
UPLOAD_MAX_AGE_S = 3600  # and age: an upload is kept an hour
JANITOR_EVERY_S = 5.0
MIN_CAP_BYTES = 2 << 30  # the size cap is this or four of the largest uploads, whichever is more


def upload_cap(max_upload_mb: float) -> int:
    """Bytes this app's uploaded and served files may take in all."""
    return max(MIN_CAP_BYTES, int(4 * max_upload_mb * 2**20))


class UploadJanitor:
    """Keeps the files Gradio holds for one Blocks (its temp_file_sets) under `cap` bytes."""

    def __init__(self, blocks, cap: int, every: float = JANITOR_EVERY_S):
        self.blocks, self.cap, self.every = blocks, int(cap), every
        self._stop = threading.Event()

    def sweep(self) -> tuple[int, int]:
        """Remove the oldest files until the rest take at most the cap; returns (files, bytes) removed.
        Like Gradio's own schedule, files a component keeps in its cache are left alone."""
        keep = set()
        for block in self.blocks.blocks.values():
            keep.update(getattr(block, "keep_in_cache", ()))
        files = []
        for temp_set in self.blocks.temp_file_sets:
            for name in list(temp_set):  # a copy: uploads are added while this runs
                if name in keep:
                    continue
                try:
                    info = os.stat(name)
                except OSError:
                    continue
                files.append((info.st_mtime, info.st_size, name, temp_set))
        total = sum(size for _, size, _, _ in files)
        removed = freed = 0
        for _, size, name, temp_set in sorted(files, key=lambda f: f[0]):
            if total <= self.cap:
                break
            try:
                os.remove(name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove upload %s: %s", name, exc)
                continue
            temp_set.discard(name)
            total -= size
            removed, freed = removed + 1, freed + size
        if removed:
            log.info("removed %d uploaded file(s), %.0f MB, to keep uploads under %.1f GB", removed, freed / 1e6,
                     self.cap / 1e9)
        return removed, freed

    def start(self) -> "UploadJanitor":
        threading.Thread(target=self._loop, name="upload-janitor", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.sweep()
            except Exception:  # a bug here must not end the thread that bounds the disk
                log.exception("upload janitor")

