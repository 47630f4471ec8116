"""The run folder: its layout, status, stop requests, liveness, metrics and checkpoint queries.

    RUN_DIR/
      config.yaml     the resolved config
      status.json     state (running | finished | stopped | failed), step, total_steps, epoch, pid,
                      device, error, created, updated
      metrics.jsonl   one JSON object per logged step
      summary.json    the final summary
      train.log       what a run started by the app printed
      owner.json      the login that started the run in the app (only with --auth)
      STOP            a stop request: JSON naming who asked and the pid of the process it is for
      .lock           held (flock) by the training process from start to exit: the liveness signal
      checkpoints/    `last` and `best` (see hico.checkpoint)
      embeddings/     tables written by embed and eval
      timeline/       the embeddings of a fixed set of frames at each validation (see hico.timeline)

Liveness: the training process holds an exclusive `flock` on RUN_DIR/.lock for as long as it lives
and the kernel drops it when the process dies, kill -9 included; so whether a run is alive is
whether its lock is held, which any process can ask (an app started after the run, a second app, the
CLI). A process still starting (spawned, not yet holding the lock) counts as alive while status.json
says running with its pid, that pid exists, and the status is under STARTING_GRACE seconds old.
The same kind of lock, per GPU, keeps a second training off a GPU that is already training.

Only the process holding a run's lock writes its status, metrics and checkpoints; the app marks a
run as spawned (`mark_spawned`) before the process it started can say anything itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hico.errors import HiCoError
from hico.files import write_json, write_text
from hico.paths import expand_path

try:  # POSIX; elsewhere liveness falls back to the pid in status.json
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

CONFIG, STATUS, METRICS, SUMMARY, LOG, STOP, LOCK, TIMELINE, OWNER, CHECKPOINTS, EMBEDDINGS = (
    "config.yaml", "status.json", "metrics.jsonl", "summary.json", "train.log", "STOP", ".lock", "timeline",
    "owner.json", "checkpoints", "embeddings")
STARTING_GRACE = 60.0  # seconds a spawned process may take to import torch and take its lock
ACQUIRE_TRIES = 6
ERROR_PREFIX = "hico train: error: "  # how the CLI prints a user error; the app quotes it
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# ---- the run handle -------------------------------------------------------------------------
class Checkpoint:
    """One checkpoint of a run as its sidecar said when it was chosen: name (best | last), step,
    the run's typed config as trained (legacy defaults settled, hico.config.run_config), classes."""

    def __init__(self, run: "Run", name: str, sidecar: dict):
        self.run, self.name, self.sidecar = run, name, sidecar

    @property
    def step(self) -> int:
        return int(self.sidecar.get("step", 0))

    @property
    def classes(self) -> list[str]:
        return list(self.sidecar.get("classes", []))

    @functools.cached_property
    def config(self):
        from hico import config as config_mod

        if "config" not in self.sidecar:
            raise HiCoError(f"Checkpoint {self.run.checkpoints / self.name}.json has no config.")
        return config_mod.run_config(self.sidecar["config"])

    def __repr__(self) -> str:
        return f"Checkpoint({self.run.path.name}:{self.name}@{self.step})"


class Run:
    """A run folder, opened once: its layout (the names above), its typed config, and the
    checkpoint a reader chooses (best if any, else last), with its sidecar read once.

    Training, embedding, prediction, familiarity, Explore and Diagnose take a Run (or a
    Checkpoint of one) instead of a path and raw dicts. A Run is a snapshot: a long-lived reader
    opens it again to see a newer checkpoint.
    """

    def __init__(self, path: str | Path):
        self.path = expand_path(path)
        self._chosen: dict[str, Checkpoint] = {}

    @classmethod
    def of(cls, run: "Run | str | Path") -> "Run":
        return run if isinstance(run, Run) else cls(run)

    # ---- layout -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    # ---- what it holds ----------------------------------------------------------------------
    @functools.cached_property
    def config(self):
        """config.yaml as a typed Config, with the keys the run predates as it behaved then."""
        from hico import config as config_mod

        return config_mod.run_config(config_mod.read_yaml(self.config_file))

    def checkpoint(self, which: str = "auto") -> Checkpoint:
        """The checkpoint `which` (auto: best if the run has one, else last), its sidecar read once
        per Run; HiCoError when the run or the checkpoint is missing."""
        if which not in self._chosen:
            from hico.checkpoint import find_checkpoint, read_sidecar

            name = find_checkpoint(self.path, which)
            self._chosen[which] = Checkpoint(self, name, read_sidecar(self.checkpoints, name))
        return self._chosen[which]

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


# ---- names ------------------------------------------------------------------------------------
def run_folder(runs_dir: str | Path, name: str) -> Path:
    """RUNS_DIR/name for a run name a user gave; HiCoError unless it is a plain folder name
    (letters, digits, `.`, `_`, `-`; no path separators, no `..`) of a run that exists there."""
    name = check_run_name(name)
    runs_dir = Path(runs_dir)
    path = runs_dir / name
    if not (path / CONFIG).is_file() or path.resolve().parent != runs_dir.resolve():
        raise HiCoError(f"There is no run named {name!r}.")
    return path


def check_run_name(name: str) -> str:
    """The name, stripped, if it can name a run folder (letters, digits, `.`, `_`, `-`; no path
    separators, no `..`); HiCoError otherwise."""
    name = (name or "").strip()
    if not name:
        raise HiCoError("Pick a run first.")
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise HiCoError(f"{name!r} is not a run name: a run is named by its folder in the runs list "
                        f"(letters, digits, '.', '_' and '-').")
    return name


# ---- status -----------------------------------------------------------------------------------
def read_status(run_dir: str | Path) -> dict:
    """status.json as a dict; {} when missing or unreadable (a run that never started)."""
    path = Path(run_dir) / STATUS
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_status(run_dir: str | Path, **fields) -> dict:
    """Merge fields into status.json (all-or-nothing) and stamp `updated` (and `created` once)."""
    current = read_status(run_dir)
    now = time.time()
    current.update(fields, updated=now)
    current.setdefault("created", now)
    write_json(Path(run_dir) / STATUS, current)
    return current


# ---- liveness ---------------------------------------------------------------------------------
class OwnerLock:
    """An exclusive flock on `path`, held by one process at a time; the file says who holds it.

    `acquire()` returns False (and holds nothing) when another process holds it. The lock goes
    when `release()` is called or the process ends in any way.
    """

    def __init__(self, path: str | Path, owner: dict | None = None):
        self.path = Path(path)
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), **(owner or {})}
        self._fd: int | None = None

    def acquire(self) -> bool:
        if fcntl is None:  # pragma: no cover - no flock: the pid in status.json is all there is
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        # `holder()` holds a shared lock for an instant while it asks: try a few times.
        for attempt in range(ACQUIRE_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == ACQUIRE_TRIES - 1:
                    os.close(fd)
                    return False
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(self.owner).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @staticmethod
    def holder(path: str | Path) -> dict | None:
        """Who holds the lock at `path` ({pid, host, since, ...}), or None when nobody does."""
        if fcntl is None:  # pragma: no cover
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.pread(fd, 4096, 0).decode(errors="replace")
                try:
                    owner = json.loads(text)
                except ValueError:
                    owner = {}
                return owner if isinstance(owner, dict) else {}
            return None  # we got it, so nobody else holds it (closing the fd lets it go)
        finally:
            os.close(fd)

    def __enter__(self) -> "OwnerLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def serialised(path: str | Path):
    """Hold an exclusive flock on `path` for the block, waiting for it: one process at a time
    (e.g. two apps both checking that nothing trains before each starts a run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hold_run(run_dir: str | Path) -> OwnerLock:
    """Take the run folder's lock for this process; HiCoError when another process trains it."""
    lock = OwnerLock(Path(run_dir) / LOCK, {"run": str(Path(run_dir).resolve())})
    if not lock.acquire():
        holder = OwnerLock.holder(lock.path) or {}
        raise HiCoError(f"Run folder {run_dir} is being trained by another process (pid {holder.get('pid', '?')}); "
                        f"stop it first.")
    return lock


def hold_device(device, run_dir: str | Path, home: Path) -> OwnerLock | None:
    """Take the lock of a CUDA device (one training per GPU); None for the CPU.

    HiCoError naming the run that trains on it when another process holds it.
    """
    if getattr(device, "type", str(device)) != "cuda":
        return None
    index = device.index if getattr(device, "index", None) is not None else 0
    lock = OwnerLock(Path(home) / "locks" / f"cuda-{index}.lock", {"run": str(Path(run_dir).resolve())})
    if not lock.acquire():
        holder = OwnerLock.holder(lock.path) or {}
        raise HiCoError(f"GPU cuda:{index} is already training {holder.get('run', 'another run')} "
                        f"(pid {holder.get('pid', '?')}); stop that run first or set device to another GPU.")
    return lock


def lock_holder(run_dir: str | Path) -> dict | None:
    """The process holding the run's lock ({pid, host, since, run}), or None."""
    return OwnerLock.holder(Path(run_dir) / LOCK)


def pid_exists(pid) -> bool:
    """Whether process `pid` exists (False for no pid). Where that cannot be asked without
    signalling the process (not POSIX: os.kill would end it), it is taken to exist."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def is_alive(run_dir: str | Path, status: dict | None = None) -> bool:
    """Whether a training process is working on this run now (see the module docstring)."""
    if lock_holder(run_dir) is not None:
        return True
    status = read_status(run_dir) if status is None else status
    return (status.get("state") == "running" and pid_exists(status.get("pid"))
            and time.time() - float(status.get("updated", 0) or 0) < STARTING_GRACE)


def mark_spawned(run_dir: str | Path, pid: int) -> None:
    """Said by whoever spawns a training process (the app), before the process can say it: the run
    is running, as `pid`. Until that process takes the run's lock, this is what shows it alive."""
    write_status(run_dir, state="running", pid=pid, error=None)


# ---- stopping ---------------------------------------------------------------------------------
def request_stop(run_dir: str | Path, pid: int | None = None, by: str = "") -> None:
    """Ask the run's training process to stop after its current step (it checkpoints first)."""
    write_json(Path(run_dir) / STOP, {"pid": pid, "by": by, "time": time.time()})


def stop_requested(run_dir: str | Path) -> bool:
    return (Path(run_dir) / STOP).exists()


def clear_stop(run_dir: str | Path) -> None:
    (Path(run_dir) / STOP).unlink(missing_ok=True)


def discard_stale_stop(run_dir: str | Path, pid: int | None = None) -> None:
    """At a training process's start: drop a stop request meant for an earlier process.

    A request that names this process's pid (the app asks for a stop the moment after it spawned
    the process) is kept; any other, or a bare `touch STOP`, is left over from before.
    """
    path = Path(run_dir) / STOP
    if not path.exists():
        return
    try:
        meant_for = json.loads(path.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        meant_for = None
    if meant_for is None or int(meant_for) != (pid or os.getpid()):
        path.unlink(missing_ok=True)


# ---- metrics and log --------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every line of metrics.jsonl (a torn last line, mid-write, is skipped)."""
    path = Path(run_dir) / METRICS
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop the metric lines logged after `step` (a resume from the checkpoint at `step`)."""
    path = Path(run_dir) / METRICS
    if path.is_file():
        rows = [row for row in read_metrics(run_dir) if row.get("step", 0) <= step]
        write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def log_tail(run_dir: str | Path, lines: int = 12) -> str:
    """The last lines of a run's train.log, progress-bar redraws left out."""
    path = Path(run_dir) / LOG
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith(("training:", "decoding"))]
    return "\n".join(kept[-lines:])


def logged_error(run_dir: str | Path) -> str | None:
    """The sentence of the last user error the training process printed to train.log, if any."""
    tail = log_tail(run_dir, 40)
    errors = [ln[len(ERROR_PREFIX):] for ln in tail.splitlines() if ln.startswith(ERROR_PREFIX)]
    return errors[-1] if errors else None


def write_owner(run_dir: str | Path, user: str) -> None:
    """Record the login that started a run in the app (who may stop, resume and delete it)."""
    write_json(Path(run_dir) / OWNER, {"user": user, "at": time.time()})


def read_owner(run_dir: str | Path) -> str | None:
    """The login that started the run, or None (started by the CLI, by the app for its demo, or
    by an app without logins)."""
    try:
        user = json.loads((Path(run_dir) / OWNER).read_text()).get("user")
    except (OSError, ValueError, AttributeError):
        return None
    return user if isinstance(user, str) and user else None


# ---- what the run list shows ------------------------------------------------------------------
@dataclass
class RunInfo:
    """One run folder as the app's run list and status panel show it."""

    path: Path
    state: str
    alive: bool = False
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    started: float = 0.0
    updated: float = 0.0
    pid: int | None = None
    error: str | None = None
    device: str = ""
    config: dict = field(default_factory=dict)
    checkpoints: tuple[str, ...] = ()
    stopped_by: str | None = None  # why a stopped run stopped, when not asked to (its time limit)
    owner: str | None = None  # the login that started it in the app (OWNER), None for the CLI and the demo
    device_name: str = ""  # the GPU's name ("" on the CPU)
    device_memory_gb: float | None = None  # the GPU's total memory

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def resumable(self) -> bool:
        return not self.alive and self.state in ("stopped", "failed") and "last" in self.checkpoints


def checkpoint_names(run_dir: str | Path) -> tuple[str, ...]:
    """Which of `last` and `best` the run has, complete."""
    from hico.checkpoint import NAMES, checkpoint_file

    names = []
    for name in NAMES:
        with contextlib.suppress(HiCoError):
            if checkpoint_file(Path(run_dir) / CHECKPOINTS, name).is_file():
                names.append(name)
    return tuple(names)


def read_run(run_dir: str | Path) -> RunInfo:
    """A run folder's state. A `running` run whose process is gone is reported as failed, with
    the error its process printed (or the end of its log)."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    cfg = {}
    with contextlib.suppress(OSError, yaml.YAMLError):
        cfg = yaml.safe_load((run_dir / CONFIG).read_text()) or {}
    checkpoints = checkpoint_names(run_dir)
    alive = is_alive(run_dir, status)
    state = status.get("state") or ("stopped" if checkpoints else "failed")
    error = status.get("error")
    if state == "running" and not alive:
        state = "failed"
        error = error or logged_error(run_dir) or (
            "The training process ended without a word; its log says:\n" + log_tail(run_dir))
    elif alive and state != "running":  # a process holds the lock but has not said so yet
        state, error = "running", None
    if state == "failed" and error and "\n" not in error and (run_dir / LOG).is_file():
        error = f"{error}\n\n{log_tail(run_dir)}"
    started = status.get("created")
    if started is None:
        with contextlib.suppress(OSError):
            started = (run_dir / CONFIG).stat().st_mtime
    return RunInfo(run_dir, state, alive, int(status.get("step", 0) or 0), int(status.get("total_steps", 0) or 0),
                   float(status.get("epoch", 0.0) or 0.0), float(started or 0.0),
                   float(status.get("updated", 0.0) or 0.0), status.get("pid"), error, status.get("device", ""),
                   cfg if isinstance(cfg, dict) else {}, checkpoints,
                   status.get("stopped_by") if state == "stopped" else None, read_owner(run_dir),
                   str(status.get("device_name") or ""), _number(status.get("device_memory_gb")))


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def list_runs(runs_dir: str | Path) -> list[RunInfo]:
    """Every run folder under runs_dir (those with a config.yaml; hidden ones, such as a run being
    deleted, are not runs), newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [read_run(p) for p in runs_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / CONFIG).is_file()]
    return sorted(runs, key=lambda r: r.started, reverse=True)


def live_runs(runs_dir: str | Path) -> list[Path]:
    """The run folders under runs_dir that a training process is working on now."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return [p for p in runs_dir.iterdir() if p.is_dir() and (p / CONFIG).is_file() and is_alive(p)]
