"""The run folder under faults: checkpoints all-or-nothing under kill -9, damaged files, liveness and
stop across processes, a folder that stops taking writes. Each test reproduces a failure seen
before hico/runs.py and the step-folder checkpoints existed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from hico import config, runs
from hico.checkpoint import checkpoint_file, clean_checkpoints, load_state, read_sidecar
from hico.errors import HiCoError
from hico.inference import load_run
from hico.train import train
from tests.app_fixtures import wait_for

BASE = ["data.size=32", "train.batch_size=4", "train.log_every=1", "train.warmup_epochs=0", "device=cpu",
        "train.checkpoint_every=1", "data.val_fraction=0"]


def make_cfg(root, *extra):
    return config.load(None, [f"data.root={root}", *BASE, *extra])


def run_child(code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run python code in a new process (HICO_HOME as the test's)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def child_training(root, run, extra: list[str], before: str = "") -> str:
    """Code for a child process that trains `run` (after running `before`, e.g. a fault injection)."""
    return "\n".join([
        "import os, signal",
        textwrap.dedent(before),
        "from hico import config",
        "from hico.train import train",
        f"cfg = config.load(None, {[f'data.root={root}', *BASE, *extra]!r})",
        f"train(cfg, {str(run)!r}, progress=False)",
    ])


# Three moments of the step-3 save to die at (SIGKILL), and the step the checkpoint then says.
KILL_POINTS = {
    "weights written, folder not yet renamed": ("""
        import hico.checkpoint as ck
        real = ck.save_file
        def save_file(tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            if "0000003" in filename:
                os.kill(os.getpid(), signal.SIGKILL)
        ck.save_file = save_file
    """, 2),
    "folder renamed, sidecar not yet replaced": ("""
        import hico.checkpoint as ck
        real = ck.write_json
        def write_json(path, value, fsync=False):
            if str(path).endswith("last.json") and value.get("step") == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, value, fsync)
        ck.write_json = write_json
    """, 2),
    "sidecar committed, flat names not yet linked": ("""
        import hico.checkpoint as ck
        real = ck._link_flat
        def link_flat(folder, name, files):
            if name == "last" and "0000003" in files["weights"]:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(folder, name, files)
        ck._link_flat = link_flat
    """, 3),
}


@pytest.fixture(scope="module")
def straight_run(module_tmp):
    """Five uninterrupted steps: what every interrupted and resumed run must equal."""
    from tests.conftest import write_class_dataset

    base = module_tmp("straight")
    data = write_class_dataset(base / "data")
    train(make_cfg(data, "train.max_steps=5"), base / "run", progress=False)
    return data, load_file(str(base / "run" / "checkpoints" / "last.safetensors"))


@pytest.mark.parametrize("moment", list(KILL_POINTS))
def test_kill_during_a_checkpoint_save_leaves_a_whole_checkpoint(straight_run, tmp_path, moment):
    """Before: a kill between the weights and the rest left step-3 weights beside a step-2 state,
    and the resumed run silently diverged from the uninterrupted one."""
    data, expected = straight_run
    injection, committed = KILL_POINTS[moment]
    run = tmp_path / "killed"
    done = run_child(child_training(data, run, ["train.max_steps=5"], injection))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    folder = run / "checkpoints"
    # the sidecar, the weights and the training state agree on one step
    assert read_sidecar(folder, "last")["step"] == committed
    assert load_state(folder, "last")["step"] == committed
    assert load_run(run, "last").step == committed
    status = runs.read_run(run)
    assert status.state == "failed" and not status.alive  # "running" on disk, but its process is gone

    summary = train(make_cfg(data, "train.max_steps=5"), run, resume=True, progress=False)
    assert summary["step"] == 5
    got = load_file(str(folder / "last.safetensors"))
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)  # as if never killed
    leftovers = sorted(p.name for p in folder.iterdir())
    assert not any(name.endswith(".partial") for name in leftovers), leftovers
    assert len([n for n in leftovers if n.startswith("last-")]) == 1
    sidecar = read_sidecar(folder, "last")
    assert os.path.samefile(folder / "last.safetensors", checkpoint_file(folder, "last", "weights", sidecar))


def test_clean_checkpoints_removes_what_an_interrupted_save_left(class_dataset, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(class_dataset, "train.max_steps=2"), run, progress=False)
    folder = run / "checkpoints"
    (folder / ".last-0000003-abcdef.1234.partial").mkdir()
    (folder / "last-0000003-abcdef").mkdir()  # renamed into place, but its sidecar never written
    (folder / ".last.safetensors.999.tmp").write_bytes(b"x" * 100)  # the flat layout's temporary file
    (folder / "last.safetensors").unlink()  # a flat link lost between the commit and the re-link
    clean_checkpoints(folder)
    names = sorted(p.name for p in folder.iterdir())
    assert not any(n.endswith((".partial", ".tmp")) for n in names)
    assert "last-0000003-abcdef" not in names and (folder / "last.safetensors").is_file()
    assert load_run(run, "last").step == 2


def test_a_damaged_training_state_gets_one_sentence_in_the_api_and_the_cli(class_dataset, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(class_dataset, "train.max_steps=2"), run, progress=False)
    state = checkpoint_file(run / "checkpoints", "last", "state")
    state.write_bytes(state.read_bytes()[:200])  # truncated
    with pytest.raises(HiCoError, match=r"is damaged .*cannot be resumed"):
        train(make_cfg(class_dataset, "train.max_steps=4"), run, resume=True, progress=False)
    done = subprocess.run([sys.executable, "-m", "hico", "train", "--resume", str(run)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is damaged" in done.stderr and "cannot be resumed" in done.stderr


def test_a_torn_checkpoint_of_the_flat_layout_is_refused_not_resumed(class_dataset, tmp_path):
    """Runs saved before step folders kept flat files; one torn by a kill (state of another step
    than the sidecar) must not be resumed with mismatched weights."""
    run = tmp_path / "run"
    train(make_cfg(class_dataset, "train.max_steps=2"), run, progress=False)
    folder = run / "checkpoints"
    sidecar = read_sidecar(folder, "last")
    state = torch.load(checkpoint_file(folder, "last", "state", sidecar), weights_only=True)
    state["step"] = 1
    for path in folder.glob("last-*"):
        import shutil

        shutil.rmtree(path)
    (folder / "last.state.pt").unlink()
    torch.save(state, folder / "last.state.pt")
    del sidecar["files"]
    (folder / "last.json").write_text(json.dumps(sidecar))
    with pytest.raises(HiCoError, match="is torn: its weights are from step 2 and its training state from step 1"):
        train(make_cfg(class_dataset, "train.max_steps=4"), run, resume=True, progress=False)


def test_a_run_folder_that_stops_taking_writes_ends_with_one_sentence(class_dataset, tmp_path):
    """The folder turns read-only mid-run (injected: the tests run as root, whom chmod does not stop)."""
    run = tmp_path / "run"
    config.save(make_cfg(class_dataset, "train.max_steps=50"), tmp_path / "c.yaml")
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import errno, sys
        from hico import runs
        real_write_status = runs.write_status
        def write_status(run_dir, **fields):
            if fields.get("step", 0) >= 3:
                raise PermissionError(errno.EROFS, "Read-only file system", str(run_dir / "status.json"))
            return real_write_status(run_dir, **fields)
        runs.write_status = write_status
        from hico.__main__ import main
        sys.exit(main(["train", "--config", {str(tmp_path / "c.yaml")!r}, "--run-dir", {str(run)!r}]))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"Cannot write to run folder {run} (Read-only file system)" in done.stderr
    info = runs.read_run(run)  # what the app shows: not running, the sentence, the step it got to
    assert info.state == "failed" and not info.alive and "Read-only file system" in info.error
    assert load_run(run, "last").step >= 2


def test_liveness_is_the_lock_and_a_second_process_cannot_train_the_same_folder(class_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = runs.hold_run(run)
    try:
        assert runs.lock_holder(run)["pid"] == os.getpid() and runs.is_alive(run)
        with pytest.raises(HiCoError, match="is being trained by another process"):
            runs.hold_run(run)
    finally:
        lock.release()
    assert runs.lock_holder(run) is None and not runs.is_alive(run)
    # a process killed with SIGKILL lets go of its lock at once
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from hico import runs
        runs.hold_run({str(run)!r})
        print('held', flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    assert runs.lock_holder(run)["pid"] == child.pid
    child.kill()
    child.wait()
    assert runs.lock_holder(run) is None


def test_one_training_per_gpu(tmp_path):
    """The GPU lock, checked with a device object (no GPU needed to hold its lock)."""
    gpu = torch.device("cuda", 0)
    first = runs.hold_device(gpu, tmp_path / "run-a", tmp_path)
    try:
        with pytest.raises(HiCoError, match=r"GPU cuda:0 is already training .*run-a .*stop that run first"):
            runs.hold_device(torch.device("cuda"), tmp_path / "run-b", tmp_path)
        other = runs.hold_device(torch.device("cuda", 1), tmp_path / "run-b", tmp_path)  # another GPU is free
        other.release()
    finally:
        first.release()
    assert runs.hold_device(torch.device("cpu"), tmp_path / "run-b", tmp_path) is None
    runs.hold_device(gpu, tmp_path / "run-b", tmp_path).release()  # free again once released


def test_a_stale_stop_request_is_dropped_and_one_for_this_process_kept(tmp_path):
    (tmp_path / runs.STOP).write_text("")  # a bare `touch STOP` from before
    runs.discard_stale_stop(tmp_path)
    assert not runs.stop_requested(tmp_path)
    runs.request_stop(tmp_path, pid=os.getpid() + 1)
    runs.discard_stale_stop(tmp_path)
    assert not runs.stop_requested(tmp_path)
    runs.request_stop(tmp_path, pid=os.getpid())  # asked the moment after this process was spawned
    runs.discard_stale_stop(tmp_path)
    assert runs.stop_requested(tmp_path)


def test_run_names_cannot_leave_the_runs_folder(tmp_path):
    runs_dir = tmp_path / "runs"
    (runs_dir / "good").mkdir(parents=True)
    (runs_dir / "good" / runs.CONFIG).write_text("{}")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / runs.CONFIG).write_text("{}")
    assert runs.run_folder(runs_dir, "good") == runs_dir / "good"
    for name in ("../outside", str(tmp_path / "outside"), "..", "good/../../outside", "a/b", "", " "):
        with pytest.raises(HiCoError):
            runs.run_folder(runs_dir, name)
    (runs_dir / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(HiCoError, match="no run named"):
        runs.run_folder(runs_dir, "link")


def test_a_second_app_instance_sees_stops_and_refuses_beside_a_live_run(class_dataset, tmp_path):
    """The app restarted (or a second one on the same HICO_HOME): the run another instance started
    shows as running, a second training is refused, and Stop ends it with a checkpoint."""
    from app.jobs import Jobs

    first = Jobs(tmp_path / "runs")
    values = {"data": {"root": str(class_dataset), "size": 32, "val_fraction": 0},
              "train": {"batch_size": 2, "max_steps": 500, "warmup_epochs": 0, "log_every": 1,
                        "checkpoint_every": 1}, "device": "cpu"}
    run = first.start(values)
    wait_for(lambda: runs.read_run(run).step >= 2, timeout=120)

    second = Jobs(tmp_path / "runs")  # knows nothing of the child the first one spawned
    assert second.active() == run
    info = runs.read_run(run)
    assert info.state == "running" and info.alive
    with pytest.raises(HiCoError, match="already training"):
        second.start(values)
    asked, message = second.stop(timeout=90)
    assert asked and message.startswith(f"Stopped {run.name} at step"), message
    info = runs.read_run(run)
    assert info.state == "stopped" and not info.alive and info.resumable
    assert read_sidecar(run / "checkpoints", "last")["step"] == info.step
    assert not runs.stop_requested(run)  # the request was spent
    assert first.active() is None and second.stop()[1] == "No run is training."


def test_stop_right_after_a_resume_is_honoured(class_dataset, tmp_path):
    from app.jobs import Jobs

    jobs = Jobs(tmp_path / "runs")
    run = jobs.start({"data": {"root": str(class_dataset), "size": 32, "val_fraction": 0},
                      "train": {"batch_size": 2, "max_steps": 500, "warmup_epochs": 0, "log_every": 1,
                                "checkpoint_every": 1}, "device": "cpu"})
    wait_for(lambda: runs.read_run(run).step >= 1, timeout=120)
    assert jobs.stop(timeout=90)[0]
    step = runs.read_run(run).step
    jobs.resume(run)
    asked, message = jobs.stop(timeout=120)  # at once: the child is still importing torch
    assert asked and message.startswith(f"Stopped {run.name}"), message
    info = runs.read_run(run)
    assert info.state == "stopped" and not info.alive and step <= info.step < step + 5


def _sigterm_when(cfg, tmp_path, run, patch: str, line: str) -> subprocess.Popen:
    """`hico train` of cfg into run in a child process with `patch` (code run first) applied; SIGTERM
    is sent once the child prints `line`. Returns the child."""
    config.save(cfg, tmp_path / "c.yaml")
    code = "\n".join(["import sys", textwrap.dedent(patch), "from hico.__main__ import main",
                      f"sys.exit(main(['train', '--config', {str(tmp_path / 'c.yaml')!r}, '--run-dir', {str(run)!r}]))"])
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == line
    child.send_signal(signal.SIGTERM)
    return child


def test_sigterm_before_the_training_loop_stops_the_run_cleanly(class_dataset, tmp_path):
    run = tmp_path / "run"
    slow_start = """
        import time, hico.train as t
        real = t.prepare_data
        def prepare_data(*a, **k):
            print('preparing', flush=True)
            time.sleep(30)
            return real(*a, **k)
        t.prepare_data = prepare_data
    """
    child = _sigterm_when(make_cfg(class_dataset, "train.max_steps=5"), tmp_path, run, slow_start, "preparing")
    assert child.wait(timeout=60) == 130  # well before its 30 s of preparation were over
    assert "Traceback" not in child.stderr.read()
    assert runs.read_status(run)["state"] == "stopped" and not runs.is_alive(run)


def test_hico_train_exits_non_zero_when_stopped_and_zero_when_finished(class_dataset, tmp_path):
    """A run stopped by SIGTERM in its loop saves a checkpoint and exits EXIT_STOPPED (3); a finished
    run exits 0: `timeout`, batch schedulers and scripts can tell them apart."""
    from hico.__main__ import EXIT_STOPPED, main

    run = tmp_path / "run"
    first_step = """
        import hico.train as t
        real = t.Trainer.train_step
        def train_step(self, *a, **k):
            if self.step == 1:
                print('stepping', flush=True)
            return real(self, *a, **k)
        t.Trainer.train_step = train_step
    """
    child = _sigterm_when(make_cfg(class_dataset, "train.max_steps=100000"), tmp_path, run, first_step, "stepping")
    assert child.wait(timeout=120) == EXIT_STOPPED == 3
    stderr = child.stderr.read()
    assert "Traceback" not in stderr and "continue it with --resume" in stderr
    info = runs.read_run(run)
    assert info.state == "stopped" and 1 <= info.step < 100000 and "last" in info.checkpoints
    config.save(make_cfg(class_dataset, "train.max_steps=1"), tmp_path / "one.yaml")
    assert main(["train", "--config", str(tmp_path / "one.yaml"), "--run-dir", str(tmp_path / "done")]) == 0
