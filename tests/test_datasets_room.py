"""Issue 19, item 3: uploads cannot fill the disk. A quota on $HICO_HOME/datasets, datasets that can
be deleted (not the app's own, not one a run trains on, with logins only by their uploader or an
admin), and a size bound on the files Gradio keeps for the app."""

import os
import shutil
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from gradio.utils import get_upload_folder

from app import train_tab
from app.access import Access
from app.jobs import Jobs
from app.owners import Owners
from app.uploads import UploadJanitor
from hico.errors import HiCoError
from hico.runs import read_run
from tests.app_fixtures import wait_for
from tests.conftest import write_class_dataset


def _uploaded(tmp_path, data, name="scans.zip", extra=()):
    """A zip of `data` placed where Gradio puts uploads (Access.uploaded takes only those)."""
    folder = Path(get_upload_folder()) / f"test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    archive = folder / name
    with zipfile.ZipFile(archive, "w") as zf:
        for clip in sorted(data.rglob("*.mp4")):
            zf.write(clip, clip.relative_to(data).as_posix())
        for member, payload in extra:
            zf.writestr(member, payload)
    return {"path": str(archive), "orig_name": name}


@pytest.fixture
def place(tmp_path):
    data = write_class_dataset(tmp_path / "data", per_class=2, frames=4)
    yield tmp_path, data, Access(tmp_path / "home", data_dirs=[data]), Jobs(tmp_path / "home" / "runs")
    for path in Path(get_upload_folder()).glob("test-*"):
        shutil.rmtree(path, ignore_errors=True)


def test_the_datasets_quota_refuses_what_does_not_fit(place):
    tmp_path, data, access, _ = place
    clips = sum(p.stat().st_size for p in data.rglob("*.mp4"))
    quota_gb = 2.5 * clips / 1e9  # room for two uploads of these clips, not three
    for name in ("one", "two"):
        train_tab.upload_dataset(access, _uploaded(tmp_path, data), name, quota_gb=quota_gb)
    with pytest.raises(HiCoError) as refused:
        train_tab.upload_dataset(access, _uploaded(tmp_path, data), "three", quota_gb=quota_gb)
    assert str(refused.value).startswith("Archive scans.zip unpacks to ")
    assert "left of this server's " in str(refused.value) and str(refused.value).endswith("; delete a dataset first.")
    assert sorted(p.name for p in access.datasets_dir.iterdir()) == ["one", "two"]
    assert train_tab.delete_dataset(access, Jobs(access.runs_dir), "one") == "Deleted dataset one."
    train_tab.upload_dataset(access, _uploaded(tmp_path, data), "three", quota_gb=quota_gb)  # room again
    assert sorted(p.name for p in access.datasets_dir.iterdir()) == ["three", "two"]


def test_an_upload_keeps_only_the_clips(place):
    tmp_path, data, access, _ = place
    junk = [("notes/big.bin", os.urandom(300_000)), ("bright/readme.txt", b"hello")]
    path, message = train_tab.upload_dataset(access, _uploaded(tmp_path, data, extra=junk), "kept")
    assert message.endswith(" 2 file(s) that are not clips (293 KiB) were not kept.")
    files = sorted(p.relative_to(path).as_posix() for p in Path(path).rglob("*") if p.is_file())
    assert files == [".hico-dataset.json", "bright/bright_0.mp4", "bright/bright_1.mp4", "dark/dark_0.mp4",
                     "dark/dark_1.mp4"]


def test_a_dataset_a_run_trains_on_cannot_be_deleted(place):
    tmp_path, data, access, jobs = place
    path, _ = train_tab.upload_dataset(access, _uploaded(tmp_path, data), "busy")
    run = jobs.start({"data": {"root": path, "size": 32, "val_fraction": 0}, "device": "cpu",
                      "train": {"batch_size": 2, "warmup_epochs": 0, "log_every": 1, "max_steps": 400}})
    try:
        wait_for(lambda: read_run(run).step >= 1, timeout=120)
        with pytest.raises(HiCoError, match=f"^Run {run.name} is training on dataset busy; stop it before deleting "
                                            f"the dataset.$"):
            train_tab.delete_dataset(access, jobs, "busy")
        assert (access.datasets_dir / "busy").is_dir()
    finally:
        jobs.stop(timeout=60)
    assert train_tab.delete_dataset(access, jobs, "busy") == "Deleted dataset busy."


def test_with_logins_a_dataset_is_its_uploaders_to_delete(place):
    tmp_path, data, access, jobs = place
    train_tab.upload_dataset(access, _uploaded(tmp_path, data), "alices", user="alice")
    owners = Owners(("alice", "bob", "root"), frozenset({"root"}))
    with pytest.raises(HiCoError, match="^Dataset alices was uploaded by alice; only alice or an admin may delete it.$"):
        train_tab.delete_dataset(access, jobs, "alices", "bob", owners)
    assert train_tab.delete_dataset(access, jobs, "alices", "root", owners) == "Deleted dataset alices."


class _Blocks:
    """What UploadJanitor reads of a gr.Blocks: its components and its sets of temporary files."""

    def __init__(self, files):
        self.blocks = {}
        self.temp_file_sets = [set(files)]


def test_the_janitor_keeps_uploads_under_the_cap_oldest_first(tmp_path):
    files = []
    for i in range(6):
        path = tmp_path / f"up{i}.bin"
        path.write_bytes(bytes(1000))
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))  # up0 is the oldest
        files.append(str(path))
    blocks = _Blocks(files)
    assert UploadJanitor(blocks, cap=3500).sweep() == (3, 3000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up3.bin", "up4.bin", "up5.bin"]
    assert blocks.temp_file_sets[0] == set(files[3:])
    assert UploadJanitor(blocks, cap=3500).sweep() == (0, 0)
