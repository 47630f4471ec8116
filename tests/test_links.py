"""Symbolic links inside an allowed dataset (issue 19, item 2): the app resolved only the dataset's
own path, so a link in it to an image outside the allowed folders was embedded (its name came back
in /embeddings) and a folder link was trained on as a frame folder. Each case is reproduced through
Access.dataset; a link that stays inside, a dangling link and a link back up keep working."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from app import train_tab
from app.access import Access
from app.ui import HiCoApp
from hico.data.dataset import find_clips, links_outside
from hico.errors import HiCoError
from hico.runs import CONFIG


def _png(path, value: int = 120):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24), value, np.uint8)).save(path)
    return path


@pytest.fixture
def place(tmp_path):
    """(access, allowed data folder, outside folder): an outside image and frame folder, and in the
    allowed folder a dataset `ds` with one real clip per class to which each test adds a link."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    _png(outside / "scan.png")
    for i in range(3):
        _png(outside / "frames" / f"f{i}.png", 10 * i)
    _png(data / "ds" / "cls" / "real.png")
    _png(data / "ds" / "other" / "real.png", 200)
    return Access(tmp_path / "home", data_dirs=[data]), data, outside


def _refusal(dataset, link: str, target, count: int = 1) -> str:
    return (f"Dataset {dataset} has {count} link(s) leading outside the folders this app may read "
            f"({link} → {target}); remove them, or whoever runs the app can add that folder with --data-dir.")


def _refused(access: Access, text: str) -> str:
    with pytest.raises(HiCoError) as caught:
        access.dataset(text)
    return str(caught.value)


def test_a_file_link_to_an_outside_image_is_refused(place):
    access, data, outside = place
    (data / "ds" / "cls" / "a.png").symlink_to(outside / "scan.png")
    assert _refused(access, str(data / "ds")) == _refusal(data / "ds", "cls/a.png", outside / "scan.png")


def test_a_folder_link_to_an_outside_frame_folder_is_refused_once(place):
    access, data, outside = place
    (data / "ds" / "cls" / "clip").symlink_to(outside / "frames", target_is_directory=True)
    # three frames behind one link: the link is named once
    assert _refused(access, str(data / "ds")) == _refusal(data / "ds", "cls/clip", outside / "frames")


def test_a_frame_link_inside_a_real_frame_folder_is_refused(place):
    access, data, outside = place
    clip = data / "ds" / "cls" / "clip"
    _png(clip / "f0.png")
    (clip / "f1.png").symlink_to(outside / "scan.png")
    assert _refused(access, str(data / "ds")) == _refusal(data / "ds", "cls/clip/f1.png", outside / "scan.png")


def test_two_links_are_counted_and_the_first_named(place):
    access, data, outside = place
    (data / "ds" / "cls" / "a.png").symlink_to(outside / "scan.png")
    (data / "ds" / "other" / "b").symlink_to(outside / "frames", target_is_directory=True)
    expected = _refusal(data / "ds", "cls/a.png", f"{outside / 'scan.png'}, and 1 more", count=2)
    assert _refused(access, str(data / "ds")) == expected
    # the Train form (and so /start_training) goes through the same check
    with pytest.raises(HiCoError, match="2 link"):
        train_tab.form_values(access, train_tab.TrainForm(str(data / "ds"), 32, 4, 1, 1e-3, "hico", 0.5, 0.5, 0.2,
                                                              1.0, "cpu"))


def test_a_link_chain_through_the_dataset_is_refused_at_its_first_link(place):
    access, data, outside = place
    (data / "ds" / ".hop.png").symlink_to(outside / "scan.png")  # hidden: never scanned itself
    (data / "ds" / "cls" / "a.png").symlink_to(data / "ds" / ".hop.png")
    assert _refused(access, str(data / "ds")) == _refusal(data / "ds", "cls/a.png", outside / "scan.png")
    # a folder link that stays inside, to a folder holding a link out: the link out is named
    (data / "ds" / "cls" / "a.png").unlink()
    _png(data / "ds" / "inner" / "real.png")
    (data / "ds" / "inner" / "out.png").symlink_to(outside / "scan.png")
    (data / "ds" / "cls" / "via").symlink_to(data / "ds" / "inner", target_is_directory=True)
    # reached as cls/via/out.png and inner/out.png: one link, counted once
    assert _refused(access, str(data / "ds")) == _refusal(data / "ds", "cls/via/out.png", outside / "scan.png")


def test_a_link_in_a_manifests_folder_is_refused(place):
    access, data, outside = place
    (data / "ds" / "a.png").symlink_to(outside / "scan.png")
    (data / "ds" / "clip").symlink_to(outside / "frames", target_is_directory=True)
    manifest = data / "ds" / "list.csv"
    manifest.write_text("path,label\ncls/real.png,x\na.png,y\nclip,y\n")
    expected = _refusal(manifest, "a.png", f"{outside / 'scan.png'}, and 1 more", count=2)
    assert _refused(access, str(manifest)) == expected
    # a manifest listing an outside path outright keeps its own sentence
    manifest.write_text(f"path,label\ncls/real.png,x\n{outside / 'scan.png'},y\n")
    assert _refused(access, str(manifest)) == (
        f"Manifest list.csv lists a clip outside the folders this app may read ({outside / 'scan.png'}); "
        f"list only clips inside {access.describe_roots()}.")


def test_links_that_stay_inside_dangle_or_loop_keep_working(place):
    access, data, outside = place
    ds = data / "ds"
    (ds / "cls" / "inside.png").symlink_to(ds / "other" / "real.png")  # a subset built of links
    _png(access.datasets_dir / "elsewhere.png")  # another allowed folder
    (ds / "cls" / "home.png").symlink_to(access.datasets_dir / "elsewhere.png")
    (ds / "cls" / "gone.png").symlink_to(outside / "missing.png")  # dangling: read as nothing
    (ds / "frames").mkdir()
    (ds / "frames" / "clip").symlink_to(ds / "other", target_is_directory=True)  # a frame folder inside
    (ds / "frames" / "up").symlink_to(ds, target_is_directory=True)  # a loop back to the root
    assert access.dataset(str(ds)) == ds.resolve()
    assert links_outside(ds, access.roots) == []
    stills = {c.video_id: c.path for c in find_clips(ds, frame_folders=False).clips}
    assert stills == {"cls/real": ds / "cls" / "real.png", "cls/inside": ds / "cls" / "inside.png",
                      "cls/home": ds / "cls" / "home.png", "frames/clip/real": ds / "frames" / "clip" / "real.png",
                      "other/real": ds / "other" / "real.png"}  # the loop is not entered again
    videos = {c.video_id: c.path for c in find_clips(ds).clips}  # folders of images are clips
    assert videos == {"cls": ds / "cls", "frames/clip": ds / "frames" / "clip", "other": ds / "other"}


def test_the_cli_scan_still_follows_links_out(place):
    """The CLI is run by the machine's own user, whose links may be deliberate."""
    _, data, outside = place
    (data / "ds" / "cls" / "a.png").symlink_to(outside / "scan.png")
    clips = {c.video_id: c.path for c in find_clips(data / "ds", frame_folders=False).clips}
    assert os.path.realpath(clips["cls/a"]) == str(outside / "scan.png")


def test_embeddings_endpoint_refuses_before_embedding(place):
    access, data, outside = place
    (data / "ds" / "cls" / "a.png").symlink_to(outside / "scan.png")
    hico_app = HiCoApp(access.home, data_dirs=[data])
    run = access.runs_dir / "tiny"
    run.mkdir(parents=True)
    (run / CONFIG).write_text("{}\n")
    reply = hico_app.api_embeddings(run="tiny", dataset=str(data / "ds"))
    assert reply == {"ok": False, "message": _refusal(data / "ds", "cls/a.png", outside / "scan.png")}
    assert hico_app.explorer.items == {} and sorted(p.name for p in run.iterdir()) == [CONFIG]
