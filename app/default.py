"""The embedded default: the synthetic dataset and a demo run, built on the app's first start.

Both live under $HICO_HOME: `datasets/synth` (written once, in seconds) and `runs/demo`
(trained in the background through the same job runner as any run, so the Train tab shows it
live; Explore and Diagnose can use its `last` checkpoint as soon as the first epoch ends).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hico import config as config_mod
from hico.runs import read_run
from hico.synth import write_dataset

from app.jobs import Jobs

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
DEMO_RUN = "demo"
SYNTH_CLIPS, SYNTH_FRAMES, SYNTH_SIZE = 200, 16, 128


def synth_dir(home: Path) -> Path:
    return Path(home) / "datasets" / "synth"


def ensure_dataset(home: Path) -> Path:
    """Write the embedded synthetic dataset if it is not there yet; returns its folder."""
    return write_dataset(synth_dir(home), clips=SYNTH_CLIPS, frames=SYNTH_FRAMES, size=SYNTH_SIZE, seed=0,
                         progress=False)


def demo_values(home: Path) -> dict:
    """The demo config as a nested dict, its dataset pointed at the embedded set."""
    values = config_mod.read_yaml(DEMO_CONFIG)
    values.setdefault("data", {})["root"] = str(synth_dir(home))
    return values


def ensure_demo(home: Path, jobs: Jobs) -> str:
    """Start (or resume) training the demo run unless it is finished or already training.

    Returns a sentence for the app's log.
    """
    ensure_dataset(home)
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
