"""The training process behind the Train tab: start, watch, stop, and the registry of runs.

A run is `python -m hico train` in a child process (a crash there never takes the app down),
one at a time per app. Everything the tab shows is read back from the run folder
(`status.json`, `metrics.jsonl`, `train.log`), so a reopened browser sees the same live run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hico import config as config_mod
from hico.errors import HiCoError
from hico.train import STOP_FILE

LOG_FILE = "train.log"
REPO = Path(__file__).resolve().parent.parent
STATES = ("running", "finished", "stopped", "failed")


@dataclass
class RunInfo:
    """What the run list and the status panel show about one run folder."""

    path: Path
    state: str
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    started: float = 0.0
    updated: float = 0.0
    error: str | None = None
    device: str = ""
    config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def resumable(self) -> bool:
        return self.state in ("stopped", "failed") and (self.path / "checkpoints" / "last.json").is_file()


def read_metrics(run_dir: Path) -> list[dict]:
    """Every line of metrics.jsonl (a torn last line, mid-write, is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def log_tail(run_dir: Path, lines: int = 12) -> str:
    """The last lines of a run's train.log, progress-bar redraws collapsed."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").replace("\r", "\n")
    kept = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("training:", "decoding"))]
    return "\n".join(kept[-lines:])


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_run(run_dir: Path) -> RunInfo:
    """A run folder's state; a `running` run whose process is gone is reported as failed."""
    run_dir = Path(run_dir)
    status = {}
    if (run_dir / "status.json").is_file():
        try:
            status = json.loads((run_dir / "status.json").read_text())
        except json.JSONDecodeError:
            status = {}
    cfg = {}
    if (run_dir / "config.yaml").is_file():
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    state = status.get("state", "failed" if not (run_dir / "checkpoints").exists() else "stopped")
    error = status.get("error")
    if state == "running" and not _pid_alive(status.get("pid")):
        state = "failed"
        error = error or "The training process ended without a word; its log says:\n" + log_tail(run_dir)
    if state == "failed" and error and (run_dir / LOG_FILE).is_file() and "\n" not in error:
        error = f"{error}\n\n{log_tail(run_dir)}"
    started = (run_dir / "config.yaml").stat().st_mtime if (run_dir / "config.yaml").is_file() else 0.0
    return RunInfo(run_dir, state, int(status.get("step", 0)), int(status.get("total_steps", 0)),
                   float(status.get("epoch", 0.0) or 0.0), started, float(status.get("updated", 0.0)),
                   error, status.get("device", ""), cfg)


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run folder under runs_dir, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [read_run(p) for p in runs_dir.iterdir() if p.is_dir() and (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda r: r.started, reverse=True)


class Jobs:
    """One training process at a time, started from a config dict, stopped through the STOP file."""

    def __init__(self, runs_dir: Path, python: str = sys.executable):
        self.runs_dir = Path(runs_dir)
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.run_dir: Path | None = None
        self._lock = threading.Lock()

    def active(self) -> Path | None:
        """The run folder of the live training process, if any."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return self.run_dir
            return None

    def start(self, values: dict, name: str | None = None) -> Path:
        """Validate a nested config dict, write it, and start training in a child process.

        Raises HiCoError (with the reason) for a bad value or while another run is going.
        """
        cfg = config_mod.from_dict(values)
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                raise HiCoError(f"A run is already training ({self.run_dir.name}); stop it before starting another.")
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            base = name or f"{cfg.loss.mode}-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir = self.runs_dir / base
            n = 1
            while run_dir.exists():
                n += 1
                run_dir = self.runs_dir / f"{base}-{n}"
            run_dir.mkdir(parents=True)
            config_mod.save(cfg, run_dir / "config.yaml")
            self._spawn(run_dir, ["--config", str(run_dir / "config.yaml"), "--run-dir", str(run_dir)])
            return run_dir

    def resume(self, run_dir: Path) -> Path:
        """Continue a stopped or failed run from its last checkpoint in a child process."""
        run_dir = Path(run_dir)
        info = read_run(run_dir)
        if not info.resumable:
            raise HiCoError(f"Run {run_dir.name} cannot be resumed: it is {info.state} "
                            f"{'and has no checkpoint' if info.state != 'running' else ''}".strip() + ".")
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                raise HiCoError(f"A run is already training ({self.run_dir.name}); stop it before resuming another.")
            self._spawn(run_dir, ["--resume", str(run_dir)])
            return run_dir

    def _spawn(self, run_dir: Path, args: list[str]) -> None:
        log = open(run_dir / LOG_FILE, "ab")
        # `-m hico` must import from this checkout even when the app was started from elsewhere.
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
        # The child writes status.json as it starts; until then it is "running" with the child's pid.
        status = {"state": "running", "step": 0, "total_steps": 0, "error": None, "updated": time.time()}
        self.proc = subprocess.Popen([self.python, "-m", "hico", "train", *args], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd())
        status["pid"] = self.proc.pid
        if not (run_dir / "status.json").is_file():
            (run_dir / "status.json").write_text(json.dumps(status))
        log.close()
        self.run_dir = run_dir

    def stop(self, timeout: float = 60.0) -> str:
        """Ask the live run to stop after its current step (it checkpoints first); wait up to timeout."""
        run_dir = self.active()
        if run_dir is None or read_run(run_dir).state != "running":
            return "No run is training."
        (run_dir / STOP_FILE).write_text("stop requested from the app\n")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"Stop requested; {run_dir.name} will stop after its current step."
        return f"Stopped {run_dir.name} at step {read_run(run_dir).step} with a checkpoint."

    def shutdown(self) -> None:
        """On app exit: stop a live run cleanly rather than orphan it."""
        if self.active() is not None:
            self.stop(timeout=30)
            if self.proc.poll() is None:
                self.proc.terminate()
