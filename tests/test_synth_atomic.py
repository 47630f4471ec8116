"""write_dataset all or nothing: a killed writer leaves nothing in place, its workers exit, the next call succeeds."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hico.errors import HiCoError
from hico.io import read_clip
from hico.synth import CLASSES, write_dataset
from hico.synth import dataset as synth_dataset

REPO = Path(__file__).resolve().parent.parent
ARGS = {"clips": 12, "frames": 2, "size": 32, "seed": 5, "progress": False, "workers": 1}

# A writer in its own process, slowed down per clip so that it can be caught part-way.
_SLOW_WRITER = """
import sys, time
import hico.synth.dataset as d
write_one = d._write_one
def slow(job):
    time.sleep(float(sys.argv[2]))
    return write_one(job)
d._write_one = slow
d.write_dataset(sys.argv[1], clips=12, frames=2, size=32, seed=5, progress=False, workers=1)
"""

# A writer that renders with two worker processes (the pool path), however little the work.
_POOL_WRITER = """
import sys
import hico.synth.dataset as d
d._POOL_MIN_PIXELS = 0
d.write_dataset(sys.argv[1], clips=48, frames=4, size=64, seed=5, progress=False, workers=2)
"""


def _start(code: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(condition, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _partials(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial-"))


def _clips_in_partials(out: Path) -> int:
    return sum(len(list(p.glob("*/*.mp4"))) for p in _partials(out))


def _assert_same_dataset(root: Path, ref: Path) -> None:
    manifest = (root / "manifest.csv").read_text()
    assert manifest == (ref / "manifest.csv").read_text()
    rows = [line.split(",") for line in manifest.splitlines()[1:]]
    assert len(rows) == ARGS["clips"] and (root / "README.txt").read_text() == (ref / "README.txt").read_text()
    for rel, _ in rows:
        assert (root / rel).read_bytes() == (ref / rel).read_bytes(), rel
    for rel, _ in rows[:2]:
        np.testing.assert_array_equal(read_clip(root / rel), read_clip(ref / rel))


@pytest.fixture
def reference(tmp_path) -> Path:
    """The dataset written without interruption."""
    return write_dataset(tmp_path / "reference", **ARGS)


def test_killed_writer_leaves_nothing_and_the_next_call_writes_it_whole(tmp_path, reference):
    out = tmp_path / "data" / "synth"
    child = _start(_SLOW_WRITER, out, 0.3)
    try:
        assert _wait_for(lambda: out.parent.is_dir() and _clips_in_partials(out) >= 1), child.stdout.read()
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()
        child.stdout.close()
    assert not out.exists()
    (partial,) = _partials(out)
    assert partial.name.startswith(f".synth.partial-{child.pid}-") and 1 <= _clips_in_partials(out) < ARGS["clips"]

    assert write_dataset(out, **ARGS) == out
    _assert_same_dataset(out, reference)
    assert _partials(out) == []


def test_killed_writers_worker_processes_exit_with_it(tmp_path):
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs /proc to find the worker processes")
    out = tmp_path / "synth"
    child = _start(_POOL_WRITER, out)
    workers: list[int] = []
    try:
        assert _wait_for(lambda: _clips_in_partials(out) >= 1), child.stdout.read()
        workers = [pid for pid in _children(child.pid) if b"multiprocessing.spawn" in _cmdline(pid)]
        assert len(workers) == 2
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert _wait_for(lambda: not any(_running(pid) for pid in workers), timeout=10)
    finally:
        child.kill()
        child.stdout.close()
        for pid in workers:  # only if the test failed: do not leave them behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert not out.exists()


def test_live_writers_folder_is_kept_and_the_slower_writer_reuses_the_first_ones_dataset(tmp_path, reference):
    out = tmp_path / "synth"
    child = _start(_SLOW_WRITER, out, 0.15)
    try:
        assert _wait_for(lambda: _clips_in_partials(out) >= 1), child.stdout.read()
        (partial,) = _partials(out)
        (partial / "marker").touch()
        assert write_dataset(out, **ARGS) == out  # finishes first: the child is slow
        assert _partials(out) == [partial] and (partial / "marker").exists()  # the child's: not removed
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        output = child.communicate(timeout=60)[0].decode()
        assert child.returncode == 0, output
    finally:
        child.kill()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    _assert_same_dataset(out, reference)
    assert _partials(out) == []


@pytest.mark.parametrize("other", [{}, {"clips": 9}])
def test_dataset_that_appears_while_writing_is_used_only_if_it_is_the_same(tmp_path, monkeypatch, other):
    out = tmp_path / "synth"
    write_files, nested = synth_dataset._write_files, []

    def others_finish_first(folder, *args):
        write_files(folder, *args)
        if not nested:
            nested.append(folder)
            write_dataset(out, **{**ARGS, **other})  # as another writer would, while this one is at work

    monkeypatch.setattr(synth_dataset, "_write_files", others_finish_first)
    if other:
        with pytest.raises(HiCoError, match="is not empty"):
            write_dataset(out, **ARGS)
        assert "clips=9" in (out / "README.txt").read_text()
    else:
        assert write_dataset(out, **ARGS) == out
        assert "clips=12" in (out / "README.txt").read_text()
    assert _partials(out) == []


def test_foreign_folder_is_refused_and_left_as_it_is(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not a dataset")
    with pytest.raises(HiCoError, match=r"^Folder .*photos is not empty and does not hold a complete synthetic "
                                        r"dataset made with these parameters; choose an empty or new folder\.$"):
        write_dataset(foreign, **ARGS)
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
    assert _partials(foreign) == []


def test_empty_existing_folder_is_filled(tmp_path, reference):
    out = tmp_path / "synth"
    out.mkdir()
    assert write_dataset(out, **ARGS) == out
    _assert_same_dataset(out, reference)


def _old_interrupted_write(root: Path, reference: Path) -> Path:
    """What the in-place writer of older versions left when killed: class folders, some clips, no README."""
    root.mkdir()
    for name in CLASSES:
        (root / name).mkdir()
    for rel in ["lung_a_lines/lung_a_lines_0000.mp4", "lung_b_lines/lung_b_lines_0001.mp4"]:
        (root / rel).write_bytes((reference / rel).read_bytes())
    (root / "lung_consolidation" / ".lung_consolidation_0002.mp4.0123456789abcdef0123456789abcdef.part").write_bytes(
        b"half a clip")
    (root / "manifest.csv").write_bytes(b"path,label\r\nlung_a_lines/lung_a")  # cut off mid-write
    return root


def test_incomplete_dataset_from_an_older_version_is_replaced(tmp_path, reference, caplog):
    out = _old_interrupted_write(tmp_path / "synth", reference)
    with caplog.at_level(logging.WARNING, logger="hico.synth"):
        assert write_dataset(out, **ARGS) == out
    assert "writing was interrupted" in caplog.text and str(out) in caplog.text
    _assert_same_dataset(out, reference)
    assert not list(out.rglob(".*")) and _partials(out) == []


@pytest.mark.parametrize("spoil", ["extra file", "clip in the wrong class folder", "missing class folder",
                                   "foreign manifest", "readme"])
def test_anything_else_beside_an_incomplete_dataset_is_refused(tmp_path, reference, spoil):
    out = _old_interrupted_write(tmp_path / "synth", reference)
    if spoil == "extra file":
        (out / "notes.txt").write_text("mine")
    elif spoil == "clip in the wrong class folder":
        (out / "liver_f0" / "liver_f0_0005.mp4").write_bytes(b"")  # index 5 is liver_f1's
    elif spoil == "missing class folder":
        (out / "liver_f3").rmdir()
    elif spoil == "foreign manifest":
        (out / "manifest.csv").write_text("file,class\n")
    else:  # a complete dataset (README written last), made with other parameters
        (out / "README.txt").write_text("parameters: clips=3\n")
    before = sorted(out.rglob("*"))
    with pytest.raises(HiCoError, match="is not empty"):
        write_dataset(out, **ARGS)
    assert sorted(out.rglob("*")) == before and _partials(out) == []


# ------------------------------------------------------------------------------------ processes


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited orphan whose new parent has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_first_start_says_how_many_clips_are_written(tmp_path):
    """write_dataset tells on_clip of every clip; the Train tab shows it before any run exists."""
    from app.default import Startup
    from app.train_tab import progress_html
    from hico.synth import write_dataset

    startup, seen = Startup(), []

    def hear(done, total):
        seen.append((done, total))
        startup.clip_written(done, total)
        if done == 3:
            seen.append(progress_html({"run": None, "startup": startup.note}))

    write_dataset(tmp_path / "synth", clips=8, frames=3, size=48, progress=False, workers=1, on_clip=hear)
    counts = [s for s in seen if isinstance(s, tuple)]
    assert counts == [(i, 8) for i in range(9)]
    page = next(s for s in seen if isinstance(s, str))
    assert "writing the synthetic dataset (3 of 8 clips)" in page and "data-state='startup'" in page
    assert "is written" in startup.note
    startup.done()
    assert progress_html({"run": None, "startup": startup.note}).endswith("press Start.</div>")
