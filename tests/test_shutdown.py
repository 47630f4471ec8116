"""`python app.py` asked to stop (SIGTERM, or Ctrl-C on its process group) at any moment of its first
start ends within seconds with exit status 0, leaves no process behind and prints no traceback.

Before: SIGTERM during the imports killed the app by the signal's default action (status -15);
while the synthetic set's workers started (during build()) it raised KeyboardInterrupt there: a
traceback, then status 1 only after 18-32 s, the interpreter's exit waiting for the whole worker
pool; once serving, the same (status 1 after 20 s), or the KeyboardInterrupt landed in a finaliser
("Exception ignored in: BaseEventLoop.__del__") and was lost: the app served on and trained the
demo, still alive 40 s later with its training child and multiprocessing's resource tracker; and
Ctrl-C while the set was written broke the worker pool (a traceback per worker) and ended with
status 1 ("Cannot find empty port", from the KeyboardInterrupt inside Gradio's port check).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hico import runs
from tests.app_fixtures import REPO, free_port, wait_for

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list processes")

EXIT_WITHIN_S = 20.0  # the app's own bound is 15 s (app.py, STOP_WITHIN_S); this leaves room for a busy machine


def _family(home: Path) -> list[str]:
    """The processes that carry this app's HICO_HOME: the app, its training child, its synthetic set's
    worker processes and multiprocessing's resource tracker (each inherits the environment)."""
    marker = f"HICO_HOME={home}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker not in f.read():
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # exited; only its parent's wait() is missing
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry}: {command[:120]}")
        except OSError:
            continue
    return found


def _workers_starting(app: subprocess.Popen) -> bool:
    """Whether the app has spawned the synthetic set's worker processes (multiprocessing's spawn_main)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if parent == app.pid and b"spawn_main" in f.read():
                        return True
            except (OSError, ValueError, IndexError):
                continue
    return False


def _terminal_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# moment: what to wait for before the signal
MOMENTS = {
    "importing": lambda app, home, out: time.sleep(1.0) is None,  # gradio alone takes seconds to import
    "workers_starting": lambda app, home, out: _workers_starting(app),
    "serving": lambda app, home, out: "Running on local URL" in "".join(out),
    # clips written: the workers are past their start (a worker still importing when Ctrl-C comes
    # prints Python's KeyboardInterrupt traceback before any code of ours can ignore the signal)
    "writing": lambda app, home, out: any(home.glob("datasets/.synth.partial-*/*/*.mp4")),
    "demo_starting": lambda app, home, out: (home / "runs" / "demo" / runs.STATUS).is_file(),
}


@pytest.mark.parametrize("moment, group_sigint", [
    ("importing", False), ("workers_starting", False), ("serving", False), ("demo_starting", False),
    ("writing", True),
])
def test_a_stop_signal_ends_the_first_start_cleanly_at_any_moment(tmp_path, moment, group_sigint):
    home = tmp_path / "home"
    env = dict(os.environ, HICO_HOME=str(home), PYTHONUNBUFFERED="1")
    # its own process group, and Ctrl-C's default action, as a terminal gives it: a test run started
    # in the background by a non-interactive shell ignores SIGINT, and the app keeps an ignored SIGINT
    app = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(free_port())], env=env,
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True, preexec_fn=_terminal_signals)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(app.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: MOMENTS[moment](app, home, out) or app.poll() is not None, timeout=120, every=0.1)
        assert app.poll() is None, "".join(out)
        sent = time.monotonic()
        if group_sigint:  # Ctrl-C: the terminal signals the whole foreground group, workers and child too
            os.killpg(app.pid, signal.SIGINT)
        else:
            app.send_signal(signal.SIGTERM)
        try:
            code = app.wait(timeout=EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - sent
        left = _family(home)
        for _ in range(50):  # children the app ended may take a moment to go
            if not left:
                break
            time.sleep(0.2)
            left = _family(home)
        reader.join(timeout=10)
        text = "".join(out)
        print(f"{moment} ({'SIGINT to the group' if group_sigint else 'SIGTERM'}): exit status {code} "
              f"after {took:.1f} s")
        assert code is not None, f"still running {EXIT_WITHIN_S:.0f} s after the signal:\n{text[-3000:]}"
        assert code == 0, text[-3000:]
        assert not left, left
        for bad in ("Traceback", "terminate called", "leaked", "Exception ignored"):
            assert bad not in text, text[-3000:]
        assert not list(home.glob("datasets/.synth.partial-*"))  # the writer cleaned up after itself
        demo = home / "runs" / "demo"
        if demo.exists():
            assert not runs.read_run(demo).alive
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
        for line in _family(home):  # leave nothing behind even when the test fails
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except OSError:
                pass


def test_the_demo_start_up_ends_at_the_next_clip_once_the_app_is_stopping(tmp_path, monkeypatch):
    """What the stop waits for: the synthetic set's writer gives up at its next clip, leaves no
    partial folder, and no demo run is started."""
    from app import default
    from app.jobs import Jobs

    monkeypatch.setattr(default, "SYNTH_CLIPS", 12)
    monkeypatch.setattr(default, "SYNTH_SIZE", 32)
    stop, heard = threading.Event(), []

    def clip_written(done, total):
        heard.append(done)
        if done == 3:
            stop.set()

    jobs = Jobs(tmp_path / "runs")
    said = default.ensure_demo(tmp_path, jobs, clip_written, stop)
    assert said == "the app is stopping: the synthetic dataset is written on the next start"
    assert heard == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == []
    assert not (tmp_path / "runs" / "demo").exists() and jobs.active() is None
