"""The training processes behind the Train tab: start, fine-tune, resume, stop, and stop on the app's exit.

A run is `python -m hico train` in a child process (a crash there never takes the app down).
Whether a run is alive, its step and its error are read from its folder (`hico.runs`): the
training process holds the folder's lock for as long as it lives. So any app instance sees, and
can stop, a run another instance started; a restarted app finds its runs as they are; and one run
trains at a time under this HICO_HOME, whichever process started it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hico import config as config_mod
from hico import runs
from hico.config import Config
from hico.errors import HiCoError
from hico.folders import set_aside
from hico.runs import Run

from app.limits import Caps

POLL_S = 0.2
# Training runs at a lower CPU priority than the app: on a machine with few cores the pages (Explore's
# embedding, Diagnose) are served first and training takes what they leave. With a run beside it on
# two cores, Explore's first whole view of the demo took 36 s at the same priority (see the README).
TRAIN_NICE = 10


class Jobs:
    """Starts, resumes and stops the training runs under `runs_dir`, one at a time."""

    def __init__(self, runs_dir: Path, python: str = sys.executable, caps: Caps = Caps()):
        self.runs_dir = Path(runs_dir)
        self.python = python
        self.caps = caps  # the operator's caps on what a run may ask (app.limits)
        self._proc: subprocess.Popen | None = None  # the child this instance spawned (to reap it)
        self._proc_run: Path | None = None

    def active(self) -> Path | None:
        """The run folder a training process is working on now, started by any process."""
        if self._proc is not None:
            self._proc.poll()  # reap our own child once it has exited
        live = runs.live_runs(self.runs_dir)
        return live[0] if live else None

    def start(self, values: dict, name: str | None = None, owner: str | None = None) -> Path:
        """Validate a nested config dict against the config's bounds and the operator's caps, check
        that the run fits in memory, write it to a new run folder and train it in a child process.
        `owner`: the login that asked (recorded; see app.owners).

        Raises HiCoError (with the reason) for a bad value, a cap passed, a run that will not fit,
        a missing dataset, or while another run is training; nothing is written then.
        """
        cfg = self._admitted(values)
        return self._launch(name or f"{cfg.loss.mode}-{time.strftime('%Y%m%d-%H%M%S')}", owner,
                            lambda run_dir: config_mod.save(cfg, run_dir / runs.CONFIG))

    def finetune(self, source: Path, cfg: Config, head: str, name: str | None = None, owner: str | None = None,
                 checkpoint: str = "auto") -> Path:
        """Fine-tune the run in `source` (hico.finetune) as a new run, trained like any other: `cfg`
        is its checked config (hico.finetune.finetune_config), to which the caps are applied as to a
        new run's. The folder (default name `<source>-ft-<head>`) gets the source's encoder, where
        it came from and config.yaml (hico.finetune.write_run). HiCoError as for start()."""
        from hico.finetune import write_run

        cfg, source = self._admitted(cfg.to_dict()), Run(source)
        return self._launch(name or f"{source.name[:100]}-ft-{head}", owner,
                            lambda run_dir: write_run(source, run_dir, cfg, checkpoint))

    def _admitted(self, values: dict) -> Config:
        """The config of a new run: the operator's caps applied, the config's bounds checked, its
        dataset read and its memory estimate within what the device has (HiCoError otherwise)."""
        from hico.train import check_config  # imports torch: only when a run starts

        cfg = config_mod.from_dict(self.caps.check(values))
        self._refuse_if_too_big(cfg, check_config(cfg))
        return cfg

    def _launch(self, base: str, owner: str | None, write: Callable[[Path], object]) -> Path:
        """Under the start lock, unless a run trains: a new folder RUNS_DIR/base (base-2, base-3, ...
        when taken), filled by `write(folder)` (config.yaml at least; the folder is removed if it
        fails), its owner recorded, and `hico train` on it in a child process."""
        with runs.serialised(self.runs_dir / ".jobs.lock"):
            self._refuse_if_busy()
            run_dir, n = self.runs_dir / base, 1
            while run_dir.exists():
                n += 1
                run_dir = self.runs_dir / f"{base}-{n}"
            run_dir.mkdir(parents=True)
            try:
                write(run_dir)
            except BaseException:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
            if owner:
                runs.write_owner(run_dir, owner)
            self._spawn(run_dir, ["--config", str(run_dir / runs.CONFIG), "--run-dir", str(run_dir)])
        return run_dir

    def resume(self, run_dir: Path, epochs: int | None = None) -> Path:
        """Continue a stopped or failed run from its last checkpoint in a child process; with
        `epochs` other than the run's, train it to that many epochs instead (a finished run too:
        the learning-rate schedule is then stretched to the new length from where it is)."""
        run_dir = Path(run_dir)
        if not (run_dir / runs.CONFIG).is_file():
            raise HiCoError(f"There is no run called {run_dir.name}.")
        with runs.serialised(self.runs_dir / ".jobs.lock"):
            self._refuse_if_busy()
            info = runs.read_run(run_dir)
            extra = self._length_change(info, epochs)
            if "last" not in info.checkpoints:
                raise HiCoError(f"Run {info.name} has no checkpoint to continue from yet; start a new run instead.")
            if not extra and not info.resumable:
                epochs = info.config.get("train", {}).get("epochs")
                raise HiCoError(f"Run {info.name} is {info.state} at epoch {info.epoch:.1f} of {epochs}; give more "
                                f"epochs than {epochs} to train it longer.")
            if self.caps.train_minutes:  # each start of a run gets the server's time slot
                extra.append(f"train.max_minutes={float(self.caps.train_minutes)}")
            self._spawn(run_dir, ["--resume", str(run_dir), *extra])
        return run_dir

    def _refuse_if_too_big(self, cfg, dataset) -> None:
        """HiCoError with the estimate when the run needs more memory than its device has free, or
        more than the operator's cap (hico.memory)."""
        from hico import memory
        from hico.inference import resolve_device

        device = resolve_device(cfg.device)
        why = memory.refusal(memory.estimate(cfg, dataset, device), memory.available_bytes(device),
                             self.caps.memory_bytes)
        if why:
            raise HiCoError(why)

    @staticmethod
    def _length_change(info: runs.RunInfo, epochs: int | None) -> list[str]:
        """The override that trains a run to `epochs` epochs ([] to keep its length)."""
        train = info.config.get("train", {})
        if not epochs or int(epochs) == int(train.get("epochs", 0)):
            return []
        if train.get("max_steps"):
            raise HiCoError(f"Run {info.name} is set to stop at step {train['max_steps']} (train.max_steps), "
                            f"not by epochs; its length cannot be changed here.")
        if int(epochs) <= info.epoch:
            raise HiCoError(f"Run {info.name} has trained {info.epoch:.1f} epochs already; give more epochs than "
                            f"that to continue it.")
        return [f"train.epochs={int(epochs)}"]

    def delete(self, run_dir: Path) -> str:
        """Remove a run folder that is not training: renamed to a hidden sibling first (so it leaves
        every list at once, whole), then removed. Returns a sentence."""
        run_dir = Path(run_dir)
        with runs.serialised(self.runs_dir / ".jobs.lock"):
            if not (run_dir / runs.CONFIG).is_file():
                raise HiCoError(f"There is no run called {run_dir.name}.")
            if runs.is_alive(run_dir):
                raise HiCoError(f"Run {run_dir.name} is training; stop it before deleting it.")
            aside = set_aside(run_dir)
        shutil.rmtree(aside, ignore_errors=True)
        return f"Deleted run {run_dir.name}."

    def _refuse_if_busy(self) -> None:
        active = self.active()
        if active is not None:
            raise HiCoError(f"A run is already training ({active.name}); stop it before starting another.")

    def _spawn(self, run_dir: Path, args: list[str]) -> None:
        runs.clear_stop(run_dir)  # a request left from before is not for this process
        with open(run_dir / runs.LOG, "ab") as log:
            self._proc = subprocess.Popen([self.python, "-m", "hico", "train", *args], stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=os.getcwd())
        if hasattr(os, "setpriority"):  # before the child starts its threads, which inherit it
            try:
                os.setpriority(os.PRIO_PROCESS, self._proc.pid, TRAIN_NICE)
            except OSError:  # it has ended already, or the system refuses: it trains at our priority
                pass
        self._proc_run = run_dir
        # Running from now on, with the child's pid, for anyone who looks before the child has
        # imported torch and taken the run's lock (see hico.runs, liveness).
        runs.mark_spawned(run_dir, self._proc.pid)

    def stop(self, timeout: float = 60.0) -> tuple[bool, str]:
        """Ask the live run to stop after its current step (it checkpoints first) and wait up to
        timeout for it to end. Returns (whether a run was asked to stop, a sentence)."""
        run_dir = self.active()
        if run_dir is None:
            return False, "No run is training."
        holder = runs.lock_holder(run_dir) or {}
        runs.request_stop(run_dir, pid=holder.get("pid") or runs.read_status(run_dir).get("pid"), by="app")
        if not self._wait_for_end(run_dir, timeout):
            return True, f"Stop requested; {run_dir.name} will stop after its current step."
        return True, f"Stopped {run_dir.name} at step {runs.read_run(run_dir).step} with a checkpoint."

    def _wait_for_end(self, run_dir: Path, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc_run == run_dir and self._proc is not None:
                self._proc.poll()  # reap our own child, so its pid is gone once it exits
            if not runs.is_alive(run_dir):
                return True
            time.sleep(POLL_S)
        return False

    def shutdown(self, timeout: float = 30.0) -> None:
        """On the app's exit: stop the run this instance started, cleanly (a checkpoint at the
        current step), then by SIGTERM and SIGKILL if it does not end in time: `timeout` for each
        of the first two (at most 10 s for the second), so the app's exit stays bounded."""
        proc, run_dir = self._proc, self._proc_run
        if proc is None or proc.poll() is not None:
            return
        runs.request_stop(run_dir, pid=proc.pid, by="app shutdown")
        if self._wait_for_end(run_dir, timeout):
            return
        proc.terminate()  # the training loop treats SIGTERM as a stop request too
        try:
            proc.wait(timeout=min(10.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
