"""The embedded default: the synthetic dataset and a demo run, built on the app's first start.

Both live under $HICO_HOME: `datasets/synth` (written once, in seconds) and `runs/demo`
(trained in the background through the same job runner as any run, so the Train tab shows it
live; Explore and Diagnose can use its `last` checkpoint as soon as the first epoch ends).

The demo gives way to a user: starting a run while the demo trains stops the demo at its current
step with a checkpoint (`yield_demo`, which marks it), and `keep_demo` resumes a demo so marked
once no run is training. A demo the user stopped with the Stop button stays stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from hico import config as config_mod
from hico.errors import HiCoError
from hico.runs import read_run
from hico.synth import write_dataset

from app.jobs import Jobs

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEMO_RUN = "demo"
YIELDED = ".yielded"  # in the demo's folder: it was stopped to make room for a user's run
KEEP_EVERY_S = 20.0
GRACE_S = 30.0  # a yielded demo waits this long: the user's run it made room for starts meanwhile
SYNTH_CLIPS, SYNTH_FRAMES, SYNTH_SIZE = 200, 16, 128


SYNTH_NAME = "synth"  # the embedded dataset's folder under $HICO_HOME/datasets


def synth_dir(home: Path) -> Path:
    return Path(home) / "datasets" / SYNTH_NAME


def reserved_dataset(name: str) -> str | None:
    """Why an upload may not take this dataset name (the app's own), or None. Case is ignored:
    on a case-insensitive disk "Synth" is the same folder."""
    lowered = name.lower()
    if lowered == SYNTH_NAME:
        return "the app's embedded dataset (the demo trains on it)"
    if lowered.startswith("bench-"):
        return "kept for `hico bench`'s datasets"
    return None


def ensure_dataset(home: Path, on_clip=None) -> Path:
    """Write the embedded synthetic dataset if it is not there yet; returns its folder.
    `on_clip(done, total)` hears of each clip written (hico.synth.write_dataset)."""
    return write_dataset(synth_dir(home), clips=SYNTH_CLIPS, frames=SYNTH_FRAMES, size=SYNTH_SIZE, seed=0,
                         progress=False, on_clip=on_clip)


class Startup:
    """What the app's first start is doing, for the Train tab before any run exists: written by the
    one start-up thread, read by every request (a sentence, or "" once there is nothing to say)."""

    def __init__(self):
        self._note = ""

    def clip_written(self, done: int, total: int) -> None:
        self._note = (f"First start: writing the synthetic dataset ({done} of {total} clips); the demo model "
                      f"trains on it next." if done < total else
                      "First start: the synthetic dataset is written; starting the demo model.")

    def done(self) -> None:
        self._note = ""

    @property
    def note(self) -> str:
        return self._note


def demo_values(home: Path) -> dict:
    """The demo config as a nested dict, its dataset pointed at the embedded set."""
    values = config_mod.read_yaml(DEMO_CONFIG)
    values.setdefault("data", {})["root"] = str(synth_dir(home))
    return values


class _Stopping(Exception):
    """The app is stopping: raised from the dataset writer's progress callback to end the write."""


def ensure_demo(home: Path, jobs: Jobs, on_clip=None, stop: threading.Event | None = None) -> str:
    """Start (or resume) training the demo run unless it is finished or already training.

    Once `stop` is set (the app is stopping) it starts nothing more: the synthetic dataset's
    writer ends at its next clip (its worker processes with it, and its partial folder goes) and
    no run is started. Returns a sentence for the app's log.
    """
    stop = stop or threading.Event()

    def clip_written(done: int, total: int) -> None:
        if stop.is_set():
            raise _Stopping
        if on_clip is not None:
            on_clip(done, total)

    try:
        ensure_dataset(home, clip_written)
    except _Stopping:
        return "the app is stopping: the synthetic dataset is written on the next start"
    if stop.is_set():
        return "the app is stopping: the demo model trains on the next start"
    run_dir = jobs.runs_dir / DEMO_RUN
    if jobs.active() is not None:
        return "a run is already training; the demo run waits"
    if not run_dir.exists():
        jobs.start(demo_values(home), name=DEMO_RUN)
        return f"training the demo model in {run_dir}"
    info = read_run(run_dir)
    if info.state == "finished":
        return f"demo model ready in {run_dir}"
    if info.resumable:
        jobs.resume(run_dir)
        return f"resuming the demo model in {run_dir}"
    return f"demo run {run_dir} is {info.state}"


def yield_demo(jobs: Jobs) -> bool:
    """If the demo is training, stop it (checkpointed at its current step) and mark it to resume
    later; True if it was training. HiCoError if it does not stop within a minute."""
    active = jobs.active()
    if active is None or active.name != DEMO_RUN:
        return False
    (active / YIELDED).touch()
    jobs.stop(timeout=60)
    if jobs.active() is not None:
        raise HiCoError("The demo model is still saving its checkpoint; start your run again in a moment.")
    return True


def resume_yielded_demo(jobs: Jobs) -> bool:
    """Resume the demo if it gave way to a user's run and no run is training now; True if resumed."""
    run_dir = jobs.runs_dir / DEMO_RUN
    marker = run_dir / YIELDED
    try:
        waited = time.time() - marker.stat().st_mtime
    except FileNotFoundError:
        return False
    if waited < GRACE_S or jobs.active() is not None:
        return False
    info = read_run(run_dir)
    if not info.resumable:
        (run_dir / YIELDED).unlink(missing_ok=True)  # finished, or nothing to resume from
        return False
    try:
        jobs.resume(run_dir)
    except HiCoError as exc:  # another process started a run in between: try again later
        log.info("demo not resumed yet: %s", exc)
        return False
    (run_dir / YIELDED).unlink(missing_ok=True)
    log.info("resuming the demo model in %s", run_dir)
    return True


def keep_demo(jobs: Jobs, stop: threading.Event, every: float = KEEP_EVERY_S) -> None:
    """Until `stop` is set: every `every` seconds, resume the demo if it gave way and the way is free."""
    while not stop.wait(every):
        try:
            resume_yielded_demo(jobs)
        except Exception:  # the keeper must not die on a surprise (a folder removed under it)
            log.exception("checking the demo run failed")
