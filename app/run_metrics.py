"""Runs' metrics.jsonl rows for the Train tab, which asks for them every 2 s: a file is read again
only when its size or modification time changed, so an idle or finished run costs one stat()."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from hico.runs import METRICS, read_metrics

KEEP = 64  # runs whose rows are kept; the least recently asked goes first


class MetricsCache:
    """`rows(run_dir)`: the run's metric lines, as hico.runs.read_metrics gives them. The list
    returned is shared between callers: read it, never change it. One per app (HiCoApp.metrics),
    living as long as the app; a caller without one reads the file each time (`MetricsCache(0)`)."""

    def __init__(self, keep: int = KEEP):
        self.keep = keep
        self._entries: OrderedDict[Path, tuple[tuple, list[dict]]] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # files actually read, for tests

    @staticmethod
    def version(run_dir: str | Path) -> tuple:
        """(size, mtime_ns) of the run's metrics.jsonl; () when it does not exist (yet)."""
        try:
            st = os.stat(Path(run_dir) / METRICS)
        except OSError:
            return ()
        return st.st_size, st.st_mtime_ns

    def rows(self, run_dir: str | Path) -> list[dict]:
        path = Path(run_dir)
        version = self.version(path)
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and entry[0] == version:
                self._entries.move_to_end(path)
                return entry[1]
        rows = read_metrics(path) if version else []
        with self._lock:
            self.reads += bool(version)
            self._entries[path] = (version, rows)
            self._entries.move_to_end(path)
            while len(self._entries) > self.keep:
                self._entries.popitem(last=False)
        return rows
