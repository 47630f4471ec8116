"""The app as a server under hostile and concurrent use: only uploaded files, run names and allowed
datasets get through (gradio_client and raw HTTP), concurrent predictions are independent, each
browser session's thumbnails come from its own table, results are pruned, and SIGTERM ends the
app and its training child cleanly. Each test reproduces a failure the app had before."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file

from app.explore import PAIRS
from hico.embed import LEVEL_COLUMNS
from hico import runs
from hico.errors import HiCoError
from tests.app_fixtures import EXAMPLES, REPO, free_port, live_app, wait_for  # noqa: F401

CLIP = EXAMPLES / "lung_effusion_still.png"


@pytest.fixture(scope="module")
def client(live_app):  # noqa: F811
    url, *_ = live_app
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def secret(module_tmp):
    """An image and a clip outside everything the app may read, and a path that does not exist."""
    folder = module_tmp("secret")
    shutil.copy(EXAMPLES / "lung_effusion_still.png", folder / "scan.png")
    shutil.copy(EXAMPLES / "lung_b_lines.mp4", folder / "clip.mp4")
    (folder / "notes.txt").write_text("not a clip")
    return folder


# ---- files: only what the request uploaded ----------------------------------------------------
def test_predict_refuses_a_bare_server_path_without_saying_whether_it_exists(client, secret):
    answers = [client.predict(clip={"path": str(path)}, run="tiny", api_name="/predict")
               for path in (secret / "scan.png", secret / "clip.mp4", secret / "notes.txt", secret / "missing.png")]
    assert all(a["ok"] is False for a in answers)
    assert len({a["message"] for a in answers}) == 1  # the same sentence: no oracle for what exists
    assert "uploaded" in answers[0]["message"] and "overlay_video" not in answers[0]


def test_predict_refuses_a_bare_path_over_raw_http(live_app, secret):  # noqa: F811
    url, *_ = live_app
    with httpx.Client(base_url=url, timeout=60) as http:
        event = http.post("gradio_api/call/predict", json={"data": [{"path": str(secret / "scan.png")}, "tiny", "all"]})
        assert event.status_code == 200, event.text
        stream = http.get(f"gradio_api/call/predict/{event.json()['event_id']}").text
    data = json.loads(stream.split("data:", 2)[-1].strip().splitlines()[0])
    assert data[0]["ok"] is False and "uploaded" in data[0]["message"]


def test_run_names_and_datasets_are_confined(client, live_app, secret):  # noqa: F811
    _, home, data, _ = live_app
    upload = handle_file(str(CLIP))
    for run in ("../../elsewhere", "../tiny", str(home / "runs" / "tiny"), "/etc"):
        out = client.predict(clip=upload, run=run, api_name="/predict")
        assert out["ok"] is False and ("not a run name" in out["message"] or "no run named" in out["message"]), out
    for dataset in (str(secret), "/", str(data / ".." / ".." ), "../../secret"):
        out = client.predict(run="tiny", dataset=dataset, api_name="/embeddings")
        assert out["ok"] is False and "outside the folders this app may read" in out["message"], out
        assert "scan" not in out["message"] and "coords" not in out
    out = client.predict(dataset=str(secret), api_name="/start_training")
    assert out["ok"] is False and "outside the folders" in out["message"]
    out = client.predict(resume="../../secret", api_name="/start_training")
    assert out["ok"] is False and "not a run name" in out["message"]
    assert not (secret / "checkpoints").exists() and sorted(p.name for p in secret.iterdir()) == [
        "clip.mp4", "notes.txt", "scan.png"]


def test_a_manifest_may_not_point_outside_the_allowed_folders(live_app, secret):  # noqa: F811
    _, _, data, hico_app = live_app
    manifest = data / "escape.csv"
    manifest.write_text(f"path,label\n{secret / 'clip.mp4'},lung\nbright/bright_0.mp4,bright\n")
    try:
        with pytest.raises(HiCoError, match="lists a clip outside the folders"):
            hico_app.access.dataset(str(manifest))
    finally:
        manifest.unlink()


def test_a_bogus_saliency_level_gets_a_sentence(client):
    out = client.predict(clip=handle_file(str(CLIP)), run="tiny", level="bogus", api_name="/predict")
    assert out["ok"] is False and "Unknown saliency level 'bogus'" in out["message"]


def test_errors_name_the_users_file_not_the_servers_upload_path(client, tmp_path):
    junk = tmp_path / "my clip.mp4"
    junk.write_bytes(b"\x00" * 1000)
    out = client.predict(clip=handle_file(str(junk)), run="tiny", api_name="/predict")
    assert out["ok"] is False and "my clip.mp4" in out["message"] and "/gradio" not in out["message"], out
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    out = client.predict(clip=handle_file(str(empty)), run="tiny", api_name="/predict")
    assert out == {"ok": False, "message": "Clip empty.dcm is empty (0 bytes)."}


def test_a_decompression_bomb_upload_is_refused_from_its_header(client, tmp_path):
    """Before: a 155 KB 16000 x 10000 PNG took the app to 9.9 GB for 78 s."""
    import resource

    from tests.test_limits import write_png_bomb

    bomb = write_png_bomb(tmp_path / "huge.png", 16000, 10000)
    assert bomb.stat().st_size < 400_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = client.predict(clip=handle_file(str(bomb)), run="tiny", api_name="/predict")
    assert out["ok"] is False and "huge.png holds a frame of 16000 x 10000" in out["message"], out
    assert "data.max_frame_pixels" in out["message"] and "/gradio" not in out["message"]
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KB; the app runs in this process
    assert grown < 200_000, f"the app's peak memory grew by {grown / 1024:.0f} MB"


# ---- concurrency ------------------------------------------------------------------------------
def test_concurrent_predictions_are_independent_and_leave_the_model_intact(live_app):  # noqa: F811
    """Before: four clients at once made every answer NaN, and every later one, until a restart."""
    _, _, _, hico_app = live_app
    clip = str(EXAMPLES / "lung_b_lines.mp4")
    reference = hico_app.api_predict(clip, "tiny", "global")
    assert reference["ok"], reference

    def predict(_):
        return hico_app.api_predict(clip, "tiny", "global")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(predict, range(16)))
    expected = np.array(reference["frame_probs"])
    for out in answers + [predict(0)]:
        assert out["ok"], out
        got = np.array(out["frame_probs"])
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_load_twenty_concurrent_clients(live_app):  # noqa: F811
    """20 clients at once through the server: every answer equals the sequential one, none NaN,
    and the app still answers afterwards."""
    url, *_ = live_app
    upload = handle_file(str(CLIP))
    reference = Client(url, verbose=False).predict(clip=upload, run="tiny", level="backbone", api_name="/predict")

    def one(_):
        return Client(url, verbose=False).predict(clip=handle_file(str(CLIP)), run="tiny", level="backbone",
                                                  api_name="/predict")

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    for out in answers:
        assert out["ok"], out
        assert np.isfinite(out["clip_probs"]).all()
        np.testing.assert_allclose(out["clip_probs"], reference["clip_probs"], rtol=0, atol=1e-6)
    status = Client(url, verbose=False).predict(api_name="/training_status")
    assert "runs" in status


# ---- per-session state ------------------------------------------------------------------------
def test_thumbnails_come_from_the_table_each_page_shows(live_app):  # noqa: F811
    """Before: hover thumbnails came from the table the last session loaded (wrong frames, or
    IndexError when that table was shorter)."""
    from hico.data import load_clip_frames

    _, home, data, hico_app = live_app
    small = home / "datasets" / "one-clip"
    (small / "dark").mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "dark" / "dark_3.mp4", small / "dark" / "dark_3.mp4")
    big_item = hico_app._item("tiny", str(data))
    small_item = hico_app._item("tiny", str(small))  # another session, loaded last
    assert len(small_item.table) < len(big_item.table) and big_item.source != small_item.source
    last = len(big_item.table) - 1
    thumb = hico_app.thumbnail(last, big_item.source)
    expected = hico_app.explorer.thumbnail(big_item, last)
    assert thumb == expected
    frames = load_clip_frames(Path(big_item.table.iloc[last]["path"]), big_item.data.size)
    assert frames.shape[0] > int(big_item.table.iloc[last]["frame"])
    assert hico_app.thumbnail(0, small_item.source) == hico_app.explorer.thumbnail(small_item, 0)
    assert hico_app.thumbnail(last, small_item.source) is None  # out of that table: nothing, no error
    assert hico_app.thumbnail(0, "no-such-table") is None
    value, _, _ = hico_app.explore_value(big_item, "class", next(iter(PAIRS)))
    assert value["source"] == big_item.source


def test_umap_requests_share_the_one_background_projection(live_app, monkeypatch):  # noqa: F811
    """Before: each /embeddings?method=umap that came before the background's UMAP computed its
    own (tens of seconds of CPU each) and wrote it into the table every session shares."""
    import threading

    from app.explore import Explorer

    _, home, data, hico_app = live_app
    release, calls = threading.Event(), []
    real_umap = Explorer.umap

    def slow_umap(self, item, view):
        calls.append((item.source, view))
        release.wait(60)
        return real_umap(self, item, view)

    monkeypatch.setattr(Explorer, "umap", slow_umap)
    fresh = home / "datasets" / "umap-shared"  # a table no session has loaded yet
    shutil.copytree(data, fresh)
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(hico_app.api_embeddings, "tiny", str(fresh), "umap") for _ in range(4)]
        wait_for(lambda: calls, timeout=60)
        assert not any(a.done() for a in answers)  # waiting for the background, not computing their own
        release.set()
        replies = [a.result(timeout=120) for a in answers]
    assert all(r["ok"] and r["method"] == "umap" for r in replies), replies
    assert all(r["coords"] == replies[0]["coords"] for r in replies)
    source = hico_app._item("tiny", str(fresh)).source
    views = [view for of, view in calls if of == source]  # the background's, each view once
    assert sorted(views) == sorted((*LEVEL_COLUMNS, *PAIRS))
    assert hico_app.api_embeddings("tiny", str(fresh), "tsne") == {
        "ok": False, "message": "method must be pca or umap, not 'tsne'."}


# ---- leftovers --------------------------------------------------------------------------------
def test_diagnose_results_are_pruned(live_app, monkeypatch):  # noqa: F811
    from app import diagnose

    _, home, _, hico_app = live_app
    monkeypatch.setattr(diagnose, "KEEP_FOLDERS", 3)
    monkeypatch.setattr(diagnose, "KEEP_RESULTS", 2)
    for _ in range(6):  # the page's path: /predict keeps no result in memory (issue 19)
        hico_app._diagnose(str(CLIP), "tiny", "backbone")
    folders = [p for p in (home / "diagnose").iterdir() if p.is_dir()]
    assert len(folders) == 3
    kept = set(hico_app.diagnoser._results)
    assert len(kept) == 2 and kept <= {p.name for p in folders}


# ---- the app's own lifecycle ------------------------------------------------------------------
def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.add(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list processes")
def test_sigterm_stops_the_app_and_its_training_child_and_leaves_no_process(tmp_path):
    """Before: after SIGTERM the app exited in 2 s while its child trained on, and its own worker
    processes were left behind."""
    from tests.conftest import write_class_dataset

    home = tmp_path / "home"
    data = write_class_dataset(tmp_path / "data", per_class=3, frames=4)
    port = free_port()
    env = dict(os.environ, HICO_HOME=str(home), PYTHONUNBUFFERED="1")
    app = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--no-demo", "--port", str(port),
                            "--data-dir", str(tmp_path / "data")], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = wait_for(lambda: _connect(f"http://127.0.0.1:{port}/"), timeout=120, every=1.0)
        started = client.predict(dataset=str(data), size=32, batch_size=2, epochs=500, device="cpu",
                                 api_name="/start_training")
        assert started["ok"], started
        run = home / "runs" / started["run"]
        wait_for(lambda: runs.read_run(run).step >= 2, timeout=120)
        trainer = runs.lock_holder(run)["pid"]
        family = _children(app.pid)
        assert trainer in family
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=90)
        wait_for(lambda: not any(runs.pid_exists(p) and _zombie_free(p) for p in family), timeout=60)
        info = runs.read_run(run)
        assert info.state == "stopped" and not info.alive and info.resumable, info
    finally:
        if app.poll() is None:
            app.kill()
        print(app.stdout.read()[-3000:])


def _zombie_free(pid: int) -> bool:
    """True while the process is alive and not a zombie waiting for its (gone) parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _connect(url: str):
    try:
        return Client(url, verbose=False)
    except Exception:  # not up yet
        return None
