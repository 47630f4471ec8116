"""The app through gradio_client (its API names) and its job runner and helpers directly."""

import json
import shutil

import numpy as np
import pytest
from gradio_client import Client, handle_file

from app import train_tab
from app.access import Access
from app.jobs import Jobs
from app.ui import HiCoApp
from hico.errors import HiCoError
from hico.runs import list_runs, read_run
from tests.app_fixtures import EXAMPLES, live_app, wait_for  # noqa: F401


@pytest.fixture(scope="module")
def client(live_app):  # noqa: F811
    url, *_ = live_app
    return Client(url, verbose=False)


def test_api_names_are_published(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/start_training", "/training_status", "/stop_training", "/embeddings", "/predict", "/timeline",
            "/compare", "/upload_dataset", "/delete_dataset", "/delete_run", "/find_similar", "/export",
            "/finetune"} <= set(endpoints)
    # every endpoint says what it returns, field by field (app.api_types), not Any
    returns = {name: ep["returns"][0]["python_type"]["type"] for name, ep in endpoints.items()}
    assert all(kind.startswith("dict(") for kind in returns.values()), returns
    assert returns["/stop_training"] == "dict(ok: bool, message: str)"
    assert returns["/upload_dataset"] == "dict(ok: bool, message: str, dataset: None | str)"
    assert returns["/finetune"] == "dict(ok: bool, message: str, run: None | str)"
    assert "unfamiliar: None | bool" in returns["/predict"] and "accuracy_state: str" in returns["/embeddings"]
    assert "unfamiliar_reason" in returns["/predict"] and "placed" in returns["/find_similar"]


def test_training_through_the_api(client, live_app):  # noqa: F811
    _, home, data, _ = live_app
    refused = client.predict(dataset=str(data), size=16, api_name="/start_training")
    assert refused["ok"] is False and "data.size must be between 32 and 1024 pixels, got 16" in refused["message"]
    missing = client.predict(dataset=str(data / "no-such-folder"), api_name="/start_training")
    assert missing["ok"] is False and "does not exist" in missing["message"]
    started = client.predict(dataset=str(data), size=32, batch_size=4, epochs=2, device="cpu",
                             api_name="/start_training")
    assert started["ok"] is True, started
    second = client.predict(dataset=str(data), size=32, api_name="/start_training")
    assert second["ok"] is False and "already training" in second["message"]
    status = wait_for(lambda: (s := client.predict(api_name="/training_status"))["run"]["state"] == "finished"
                      and not s["active"] and s, timeout=120)
    run = status["run"]
    assert run["name"] == started["run"] and run["step"] == run["total_steps"] == 2
    assert run["last"]["step"] == 2 and run["last"]["total"] > 0
    assert {r["run"] for r in status["runs"]} >= {"tiny", started["run"]}
    assert client.predict(api_name="/stop_training") == {"ok": False, "message": "No run is training."}


def _finished(hico_app, run: str) -> dict:
    """Wait for `run` (started through the app) to finish; its run info."""
    return wait_for(lambda: (info := read_run(hico_app.jobs.runs_dir / run)).state == "finished"
                    and hico_app.jobs.active() is None and info, timeout=180)


def test_a_run_is_fine_tuned_through_the_api_into_one_that_predicts(client, live_app):  # noqa: F811
    """/finetune refuses what is wrong with one sentence and writes nothing; a fine-tune of `tiny`
    is a supervised run starting from tiny's encoder, and /predict classifies a clip with it."""
    import os

    import yaml

    _, home, data, hico_app = live_app
    before = sorted(p.name for p in (home / "runs").iterdir())
    for asked, sentence in (({"run": "nope"}, "There is no run named 'nope'."),
                            ({"run": "../tiny"}, "'../tiny' is not a run name: a run is named by its folder in the "
                                                 "runs list (letters, digits, '.', '_' and '-')."),
                            ({"run": "tiny", "label_fraction": 0},
                             "The labelled fraction must be above 0 and at most 1, got 0."),
                            ({"run": "tiny", "label_fraction": 2},
                             "The labelled fraction must be above 0 and at most 1, got 2."),
                            ({"run": "tiny", "label_fraction": "abc"},
                             "The labelled fraction must be a number, got 'abc'."),
                            ({"run": "tiny", "head": "x"}, "The head must be one of full, linear, got 'x'."),
                            ({"run": "tiny", "steps": -1},
                             "The number of steps must be 0 (the fine-tune's default) or more, got -1."),
                            ({"run": "tiny", "dataset": "nowhere"}, "Dataset nowhere does not exist.")):
        assert client.predict(**asked, api_name="/finetune") == {"ok": False, "message": sentence, "run": None}
    assert sorted(p.name for p in (home / "runs").iterdir()) == before
    out = client.predict(run="tiny", steps=4, api_name="/finetune")
    assert out == {"ok": True, "run": "tiny-ft-full",
                   "message": "Started tiny-ft-full: the whole network of tiny fine-tuned on the labelled videos of "
                              "data, for at most 4 steps."}
    run_dir = home / "runs" / "tiny-ft-full"
    info = _finished(hico_app, "tiny-ft-full")
    assert info.step == info.total_steps == 4
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["loss"]["mode"] == "supervised" and cfg["model"]["weights"] == str(run_dir / "init.safetensors")
    assert cfg["data"]["root"] == os.path.realpath(data) and cfg["train"]["max_steps"] == 4
    assert cfg["model"]["classifier"] == "mlp" and cfg["train"]["freeze_encoder"] is False
    assert json.loads((run_dir / "finetune.json").read_text())["run"] == "tiny"
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "val_acc" in json.loads(line)] == [1, 2, 3, 4]  # held-out classifier accuracy, every step here
    predicted = client.predict(clip=handle_file(str(data / "bright" / "bright_0.mp4")), run="tiny-ft-full",
                               api_name="/predict")
    assert predicted["ok"], predicted
    assert predicted["classes"] == ["bright", "dark"] and abs(sum(predicted["clip_probs"]) - 1) < 1e-6
    again = client.predict(run="tiny", head="linear", label_fraction=0.5, steps=2, api_name="/finetune")
    assert again["ok"] and again["run"] == "tiny-ft-linear", again
    assert "50% of the labelled videos" in again["message"]
    _finished(hico_app, "tiny-ft-linear")


def test_a_label_free_run_becomes_one_that_predicts_with_a_linear_head(client, live_app):  # noqa: F811
    """A SimCLR run trained without labels has no classifier: /predict refuses it; fine-tuned with
    the linear head (frozen encoder) on the same dataset, it predicts the dataset's classes."""
    from hico import config
    from hico.train import train

    _, home, data, hico_app = live_app
    cfg = config.load(None, [f"data.root={data}", "data.size=32", "train.batch_size=4", "train.max_steps=2",
                             "train.warmup_epochs=0", "device=cpu", "data.val_fraction=0.25", "loss.mode=simclr",
                             "data.label_fraction=0"])
    train(cfg, home / "runs" / "label-free", progress=False)
    clip = handle_file(str(data / "dark" / "dark_0.mp4"))
    refused = client.predict(clip=clip, run="label-free", api_name="/predict")
    assert refused == {"ok": False, "message": "Run label-free has no classifier to predict with: it was trained "
                                               "without labels or with loss.mode=simclr."}  # no server path
    out = client.predict(run="label-free", head="linear", steps=3, api_name="/finetune")
    assert out["ok"] and out["run"] == "label-free-ft-linear", out
    assert out["message"].startswith("Started label-free-ft-linear: a linear head on frozen features of label-free")
    _finished(hico_app, "label-free-ft-linear")
    tuned = read_run(home / "runs" / "label-free-ft-linear").config
    assert tuned["model"]["classifier"] == "linear" and tuned["train"]["freeze_encoder"] is True
    predicted = client.predict(clip=clip, run="label-free-ft-linear", api_name="/predict")
    assert predicted["ok"] and predicted["classes"] == ["bright", "dark"], predicted


def test_a_fine_tune_gets_the_caps_of_a_new_run_and_leaves_nothing_when_refused(live_app, tmp_path):  # noqa: F811
    """Jobs.finetune: the operator's minutes cap is set on the fine-tune, a cap it passes refuses it
    before any folder exists, and a second fine-tune of a run gets the next free name."""
    from app.limits import Caps
    from hico.finetune import finetune_config
    from hico.runs import Run

    _, home, data, _ = live_app
    source = Run(home / "runs" / "tiny")
    cfg = finetune_config(source, str(data), "linear")
    with pytest.raises(HiCoError, match="^The input size can be at most 16 px on this server, got 32.$"):
        Jobs(tmp_path / "runs", caps=Caps(input_size=16)).finetune(source.path, cfg, "linear")
    assert not (tmp_path / "runs").exists()
    jobs = Jobs(tmp_path / "runs", python="/bin/false", caps=Caps(train_minutes=3))
    first = jobs.finetune(source.path, cfg, "linear", owner="ana")
    wait_for(lambda: jobs.active() is None, timeout=20)
    second = jobs.finetune(source.path, cfg, "linear")
    wait_for(lambda: jobs.active() is None, timeout=20)
    assert [first.name, second.name] == ["tiny-ft-linear", "tiny-ft-linear-2"]
    assert Run(first).config.train.max_minutes == 3.0 and read_run(first).owner == "ana"
    assert sorted(p.name for p in first.iterdir()) >= ["config.yaml", "finetune.json", "init.safetensors"]
    broken = tmp_path / "broken"  # its checkpoint gone after the config was made: the new folder goes too
    shutil.copytree(source.path, broken)
    shutil.rmtree(broken / "checkpoints")
    with pytest.raises(HiCoError, match="^Run folder .*broken has no checkpoint yet"):
        jobs.finetune(broken, cfg, "linear")
    assert [r.name for r in list_runs(tmp_path / "runs")] == [second.name, first.name]


def test_embeddings_endpoint(client, live_app):  # noqa: F811
    _, _, data, _ = live_app
    out = client.predict(run="tiny", dataset=str(data), method="pca", api_name="/embeddings")
    assert out["ok"] and out["frames"] == 8 * 6
    assert set(out["coords"]) == {"local", "medium", "global", "backbone"}
    assert len(out["coords"]["global"]) == 48 and len(out["coords"]["global"][0]) == 2
    assert set(out["label"]) == {"bright", "dark"} and set(out["split"]) == {"train", "val"}
    waited = client.predict(run="tiny", dataset=str(data), wait_s=240, api_name="/embeddings")
    assert waited["accuracy_state"] == "ready" and waited["accuracy_message"] == ""
    assert [row["feature"] for row in waited["accuracy"]] == ["local", "medium", "global", "backbone", "concat"]
    bad = client.predict(run="nope", dataset=str(data), api_name="/embeddings")
    assert bad["ok"] is False and "nope" in bad["message"]
    from PIL import Image

    one = live_app[1] / "datasets" / "one-frame"  # a single still image: one frame, no layout
    (one / "bright").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((48, 48), 200, np.uint8)).save(one / "bright" / "still.png")
    try:
        single = client.predict(run="tiny", dataset=str(one), api_name="/embeddings")
    finally:
        shutil.rmtree(one)  # the upload test counts the datasets
    assert single == {**single, "ok": False, "message": "Dataset one-frame gives 1 frame(s); a layout needs at least 2."}


def test_find_similar_gives_a_clips_nearest_frames_per_level_and_where_it_falls(client, live_app):  # noqa: F811
    """One of the dataset's own clips, uploaded: its own frames are its nearest (distance ~0) at
    every level, at most 2 frames of any clip, and each of its frames is placed inside the panel."""
    _, _, data, _ = live_app
    clip = data / "bright" / "bright_0.mp4"
    out = client.predict(clip=handle_file(str(clip)), run="tiny", dataset=str(data), k=4, api_name="/find_similar")
    assert out["ok"], out
    assert set(out["levels"]) == {"local", "medium", "global", "backbone"} and out["frames"] == 48
    coords = client.predict(run="tiny", dataset=str(data), method="pca", api_name="/embeddings")["coords"]
    for level, near in out["levels"].items():
        assert len(near) == 4 and [n["distance"] for n in near] == sorted(n["distance"] for n in near)
        assert near[0]["video_id"].endswith("bright_0") and near[0]["distance"] < 1e-3
        assert max(sum(n["video_id"] == v for n in near) for v in {n["video_id"] for n in near}) <= 2
        xy = np.array(coords[level])
        placed = np.array(out["placed"][level])
        assert placed.shape == (6, 2) and out["method"][level] in ("pca", "umap")
        if out["method"][level] == "pca":
            assert np.all(placed >= xy.min(axis=0) - 1e-6) and np.all(placed <= xy.max(axis=0) + 1e-6)
    assert client.predict(clip=handle_file(str(clip)), run="tiny", dataset=str(data), k=0,
                          api_name="/find_similar")["ok"] is False
    other = client.predict(clip=handle_file(str(clip)), run="nope", dataset=str(data), api_name="/find_similar")
    assert other["ok"] is False and "nope" in other["message"]


def test_explore_tables_say_how_well_each_layout_keeps_the_embedding(live_app):  # noqa: F811
    """The Explore handlers fill the layout-quality table (hico.neighbours.projection_scores of
    the layout each panel shows) and the cross-level summary once the background work is done."""
    from app.explore import PAIRS, cross_summary, linked_rows
    from app.explore_tab import LEVEL_PANELS
    from hico.neighbours import projection_scores

    _, _, data, hico_app = live_app
    pair = next(iter(PAIRS))
    pinned = hico_app.show_embeddings("tiny", str(data), "class", pair)[-1]
    wait_for(lambda: hico_app.explore_tick("tiny", str(data), "class", pair, "ready:-1", None, pinned)[-2] == "done",
             timeout=240)
    message, value, _, quality, cross, shown, again = hico_app.explore("tiny", str(data), "class", pair, None, pinned)
    assert again == pinned
    assert shown == "ready:5" and "48 frames of 8 clips · UMAP" in message
    item = hico_app._item("tiny", str(data))
    labels, videos = item.table["label"].to_numpy(), item.table["video_id"].to_numpy()
    assert [row[:2] for row in quality] == [[panel, "UMAP"] for panel in LEVEL_PANELS]
    for panel, row in zip(LEVEL_PANELS, quality):
        score = projection_scores(item.matrix(panel), item.projections[("umap", panel)], labels, videos)
        assert row[2:] == [round(score[k], 3) for k in ("class_2d", "class_embedding", "overlap", "distinct")]
    rows = linked_rows(48)
    joint = item.projections[("umap", pair)]
    expected = cross_summary(labels[rows], joint[:48], joint[48:], item.agreement[pair]).round(3)
    assert cross["class"].tolist() == ["bright", "dark", "all"] and cross["frames"].tolist() == [24, 24, 48]
    assert cross.to_numpy().tolist() == expected.to_numpy().tolist()
    assert 0 <= cross["shared neighbours"].min() and cross["shared neighbours"].max() <= 1
    (panel,) = [p for p in value["panels"] if p["wide"]]
    assert len(panel["links"]["x"]) == 3 * 48  # 48 frames: under MAX_LINKS, every frame has its line


def test_a_run_that_moves_on_is_explored_at_the_checkpoint_shown_until_the_user_refreshes(live_app):  # noqa: F811
    """While a run trains on, a page keeps its table: a control change and the tick never re-embed,
    the message offers the newer step, and only Show embeddings loads it."""
    import shutil

    from app.explore import PAIRS
    from hico.checkpoint import find_checkpoint

    _, home, data, hico_app = live_app
    run = home / "runs" / "tiny-moving"
    shutil.copytree(home / "runs" / "tiny", run)
    pair = next(iter(PAIRS))
    message, *_, shown, pinned = hico_app.show_embeddings("tiny-moving", str(data), "class", pair)
    first = hico_app.explorer.by_source(pinned)
    assert f"at step {first.step}" in message and "is available" not in message
    sidecar = run / "checkpoints" / f"{find_checkpoint(run)}.json"  # the run writes a newer checkpoint
    values = json.loads(sidecar.read_text())
    values["step"] = first.step + 10
    sidecar.write_text(json.dumps(values))
    loads = []
    real_start = hico_app.explorer.start  # every embedding (load, show, the API) starts here
    hico_app.explorer.start = lambda *a, **k: loads.append(a) or real_start(*a, **k)
    try:
        changed = hico_app.explore("tiny-moving", str(data), "video", pair, None, pinned)
        ticked = hico_app.explore_tick("tiny-moving", str(data), "video", pair, shown, None, pinned)
        assert loads == [], "a control change or a tick loaded (re-embedded) the newer checkpoint"
        assert changed[-1] == pinned and ticked[-1] == pinned
        assert f"step {first.step + 10} is available: press Show embeddings" in changed[0]
        assert changed[1]["source"] == pinned  # the plot still shows the pinned table
        api = hico_app.api_embeddings("tiny-moving", str(data))  # answered at once, from the table it has
        assert loads == [] and api["ok"] and api["step"] == first.step and api["newer_step"] == first.step + 10
        refreshed = hico_app.show_embeddings("tiny-moving", str(data), "video", pair)
        assert len(loads) == 1 and refreshed[-1] != pinned
        fresh = hico_app.api_embeddings("tiny-moving", str(data), refresh=True)
        assert fresh["step"] == first.step + 10 and fresh["newer_step"] is None
        assert f"at step {first.step + 10}" in refreshed[0] and "is available" not in refreshed[0]
    finally:
        hico_app.explorer.start = real_start


def test_a_clip_placed_in_explore_is_drawn_where_its_nearest_frames_lie(live_app):  # noqa: F811
    """Explore's "Place a clip": each of the clip's frames is a star on every level panel, at the mean
    position of its 5 nearest table frames in the projection shown; a redraw keeps them; another
    table's page does not draw them."""
    from app.explore import PAIRS, PLACE_K
    from app.explore_tab import LEVEL_PANELS

    _, _, data, hico_app = live_app
    pair = next(iter(PAIRS))
    note, value, placed = hico_app.place_clip(str(EXAMPLES / "lung_b_lines.mp4"), "tiny", str(data), "class", pair)
    assert "★" in note, note
    assert "32 frame(s) are the ★" in note
    item = hico_app._item("tiny", str(data))
    for panel in value["panels"]:
        if panel["wide"]:
            assert "marks" not in panel
            continue
        nearest = np.array(placed["nearest"][panel["title"]])
        assert nearest.shape == (32, PLACE_K)
        xy = hico_app.explorer.projection(item, panel["title"])[0][nearest].mean(axis=1)
        assert panel["marks"]["x"] == pytest.approx(xy[:, 0].tolist(), abs=1e-4)
        assert panel["marks"]["name"] == "uploaded clip"
    assert {p["title"] for p in value["panels"] if "marks" in p} == set(LEVEL_PANELS)
    again = hico_app.explore("tiny", str(data), "class", pair, placed, placed["source"])[1]
    assert [p.get("marks") for p in again["panels"]] == [p.get("marks") for p in value["panels"]]
    elsewhere = hico_app.explore("tiny", str(data), "class", pair, {**placed, "source": "another table"},
                                 placed["source"])[1]
    assert not any("marks" in p for p in elsewhere["panels"])
    assert hico_app.place_clip(None, "tiny", str(data), "class", pair)[2] is None


def test_a_zip_uploaded_through_the_api_becomes_a_dataset_the_app_can_use(client, live_app, tmp_path):
    """/upload_dataset unpacks the archive under $HICO_HOME/datasets, says what it found, and the
    returned dataset works in the other endpoints; a second upload of the name, a bad name and an
    archive with a path outside itself get a sentence and change nothing."""
    import zipfile

    _, home, data, _ = live_app
    archive = tmp_path / "ward 3 scans.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for clip in sorted(data.rglob("*.mp4")):
            zf.write(clip, "scans/" + clip.relative_to(data).as_posix())
        zf.writestr("scans/dark/truncated.mp4", b"\x00\x00\x00\x18ftypmp42")
    out = client.predict(archive=handle_file(str(archive)), name="ward3", api_name="/upload_dataset")
    assert out["ok"] is True, out
    assert out["dataset"] == str(home / "datasets" / "ward3")
    assert out["message"].startswith("Dataset ward3: 8 clips in 2 classes (bright 4, dark 4). 1 file(s) could not")
    assert "dark/truncated.mp4" in out["message"]
    again = client.predict(archive=handle_file(str(archive)), name="ward3", api_name="/upload_dataset")
    assert again == {"ok": False, "message": "A dataset called ward3 exists already; give the upload another name.",
                     "dataset": None}
    default_name = client.predict(archive=handle_file(str(archive)), api_name="/upload_dataset")
    assert default_name["ok"] is False and "'ward 3 scans' is not allowed" in default_name["message"]
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../runs/tiny/config.yaml", b"x")
    refused = client.predict(archive=handle_file(str(evil)), name="evil", api_name="/upload_dataset")
    assert refused["ok"] is False and refused["message"].startswith("Archive evil.zip has an entry outside")
    for reserved in ("synth", "Synth", "bench-480x640-160"):  # the app's own names, before they exist too
        taken = client.predict(archive=handle_file(str(archive)), name=reserved, api_name="/upload_dataset")
        assert taken["ok"] is False and taken["message"].startswith(f"Dataset name {reserved} is reserved"), taken
    assert sorted(p.name for p in (home / "datasets").iterdir()) == ["ward3"]
    embedded = client.predict(run="tiny", dataset="ward3", method="pca", api_name="/embeddings")
    assert embedded["ok"] and embedded["frames"] == 8 * 6
    # and deleted again (issue 19): not the app's own, not a name that is not a dataset
    for name, answer in (("synth", "Dataset synth is the app's embedded dataset (the demo trains on it); it cannot "
                                   "be deleted."),
                         ("../runs", "There is no dataset called '../runs' in the app's datasets."),
                         ("ward4", "There is no dataset called 'ward4' in the app's datasets.")):
        assert client.predict(dataset=name, api_name="/delete_dataset") == {"ok": False, "message": answer}
    assert client.predict(dataset="ward3", api_name="/delete_dataset") == {"ok": True,
                                                                           "message": "Deleted dataset ward3."}
    assert list((home / "datasets").iterdir()) == []


def test_a_run_is_exported_for_download(client, live_app):  # noqa: F811
    """/export (the Train tab's Export): model.onnx that onnxruntime runs, the encoder, the card."""
    import numpy as np
    import onnxruntime

    home = live_app[1]
    out = client.predict(run="tiny", api_name="/export")
    assert out["ok"] and out["message"] == "Exported tiny.", out
    paths = {key: (value["path"] if isinstance(value, dict) else value) for key, value in out.items()
             if key in ("model", "encoder", "card")}
    session = onnxruntime.InferenceSession(paths["model"], providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"frames": np.zeros((3, 3, 32, 32), np.uint8)})[0]
    assert probs.shape == (3, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert "Classes (2): bright, dark." in open(paths["card"]).read()
    assert str(paths["encoder"]).endswith("resnet18_encoder.pt")
    assert len(list((home / "exports").iterdir())) == 1
    for name in ("../tiny", "nope"):
        refused = client.predict(run=name, api_name="/export")
        assert refused["ok"] is False and "model" not in refused


def test_predict_endpoint_returns_probabilities_and_files(client):
    out = client.predict(clip=handle_file(str(EXAMPLES / "liver_f3_cine.dcm")), run="tiny", level="global",
                         api_name="/predict")
    assert out["ok"], out
    assert out["classes"] == ["bright", "dark"] and len(out["frame_probs"]) == 24
    assert abs(sum(out["clip_probs"]) - 1) < 1e-6
    assert out["mask_method"] in ("temporal", "single-frame", "none")
    video = out["overlay_video"]
    path = video["path"] if isinstance(video, dict) else video
    assert str(path).endswith(".mp4")


def test_only_the_page_keeps_results_and_they_are_bounded_by_bytes(client, live_app, monkeypatch):  # noqa: F811
    """Issue 19: every /predict kept its result (overlay, decoded clip) for a frame slider it has not
    got, 8 of any size. /predict keeps nothing; the page keeps its newest results within a byte
    budget, without the decoded clip."""
    from app import diagnose

    hico_app = live_app[3]
    hico_app.diagnoser._results.clear()
    clip = str(EXAMPLES / "liver_f3_cine.dcm")
    assert client.predict(clip=handle_file(clip), run="tiny", level="all", api_name="/predict")["ok"]
    assert hico_app.diagnoser._results == {}
    first = hico_app._diagnose(clip, "tiny", "all")  # what the Diagnose tab calls
    kept = hico_app.diagnoser.result(first.id)
    assert kept.prediction.original is None and kept.prediction.frames.size == 0 and kept.overlay.shape[0] == 24
    assert first.prediction.original is not None  # the page's own answer is whole
    monkeypatch.setattr(diagnose, "KEEP_RESULT_BYTES", int(1.5 * kept.nbytes))  # room for one of these
    second = hico_app._diagnose(clip, "tiny", "all")
    assert list(hico_app.diagnoser._results) == [second.id]


def test_predict_says_whether_a_clip_is_like_the_training_data(client, tmp_path):
    """A new clip made like the tiny run's training clips (bright squares) is familiar; an
    ultrasound example, unlike anything the run saw, scores further from its training data."""
    from hico.familiarity import LIMIT
    from hico.io import write_mp4
    from tests.conftest import moving_square_clip

    write_mp4(tmp_path / "new_square.mp4", moving_square_clip(6, 48, seed=100), fps=10)
    near = client.predict(clip=handle_file(str(tmp_path / "new_square.mp4")), run="tiny", api_name="/predict")
    far = client.predict(clip=handle_file(str(EXAMPLES / "lung_b_lines.mp4")), run="tiny", api_name="/predict")
    for out in (near, far):
        assert out["ok"], out
        assert isinstance(out["unfamiliar"], bool) and out["unfamiliar"] == (out["unfamiliar_score"] > LIMIT)
    assert near["unfamiliar"] is False and near["unfamiliar_score"] < LIMIT and near["unfamiliar_reason"] is None
    assert "like the model's training data" in near["familiarity_note"]
    assert far["unfamiliar_score"] > near["unfamiliar_score"] + 0.1
    if far["unfamiliar"]:
        assert far["familiarity_note"].startswith("This model was trained on") and far["unfamiliar_reason"]
    assert near["calibrated"] == (near["temperature"] != 1.0) and near["mask"]


def test_a_file_that_is_not_a_clip_gets_a_sentence(client, tmp_path):
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(b"not a video at all" * 20)
    out = client.predict(clip=handle_file(str(junk)), run="tiny", api_name="/predict")
    assert out["ok"] is False and "notes.mp4" in out["message"] and "Traceback" not in out["message"]


def test_jobs_refuse_bad_values_and_report_crashes(tmp_path, monkeypatch):
    monkeypatch.setenv("HICO_HOME", str(tmp_path))
    jobs = Jobs(tmp_path / "runs")
    with pytest.raises(HiCoError, match="train.batch_size must be between 1 and"):
        jobs.start({"data": {"root": str(tmp_path)}, "train": {"batch_size": 0}})
    with pytest.raises(HiCoError, match="holds no clips"):
        jobs.start({"data": {"root": str(tmp_path)}})
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())  # nothing left behind
    # a child that dies at once: its run is reported failed with the log's last lines
    jobs.python = "/bin/false"
    run = jobs.start({"data": {"root": str(EXAMPLES)}, "device": "cpu"})
    wait_for(lambda: jobs.active() is None, timeout=20)
    info = read_run(run)
    assert info.state == "failed" and "ended without a word" in info.error
    assert [r.name for r in list_runs(tmp_path / "runs")] == [run.name]


def test_progress_and_form_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("HICO_HOME", str(tmp_path))
    status = {"run": {"name": "r1", "state": "running", "step": 5, "total_steps": 20, "epoch": 1.25, "epochs": 4,
                      "images_per_s": 100.0, "eta_s": 125.0}}
    html = train_tab.progress_html(status)
    assert "width:25.0%" in html and "step 5/20" in html and "ETA 2 min 05 s" in html and "100 images/s" in html
    access = Access(tmp_path, data_dirs=[EXAMPLES])
    with pytest.raises(HiCoError, match="whole number"):
        train_tab.form_values(access, train_tab.TrainForm(str(EXAMPLES), 32.5, 4, 1, 3e-4, "hico", 0.5, 0.5, 0.2, 1.0,
                                                          "cpu"))
    values = train_tab.form_values(access, train_tab.TrainForm(str(EXAMPLES), 48, 4, 3, 1e-3, "peer", 0.5, 0.5, 0.2,
                                                               0.5, "cpu"))
    assert values["data"]["size"] == 48 and values["loss"]["mode"] == "peer" and values["train"]["lr"] == 1e-3
    assert json.dumps(values)  # plain data, ready for config.from_dict


def test_diagnose_tab_rejects_an_empty_upload_politely(tmp_path):
    hico_app = HiCoApp(tmp_path)
    message, *rest = hico_app.diagnose(None, "tiny", "all")
    assert message == "Upload a clip or pick an example."
    message, *rest = hico_app.diagnose(str(EXAMPLES / "lung_b_lines.mp4"), "", "all")
    assert "Pick a run" in message


def test_stop_ends_a_live_run_with_a_checkpoint(tmp_path, monkeypatch):
    from tests.conftest import write_class_dataset

    monkeypatch.setenv("HICO_HOME", str(tmp_path / "home"))
    data = write_class_dataset(tmp_path / "data", per_class=3, frames=4)
    jobs = Jobs(tmp_path / "runs")
    run = jobs.start({"data": {"root": str(data), "size": 32, "val_fraction": 0},
                      "train": {"batch_size": 2, "max_steps": 500, "warmup_epochs": 0, "log_every": 1,
                                "checkpoint_every": 1}, "device": "cpu"})
    wait_for(lambda: read_run(run).step >= 2, timeout=120)
    asked, message = jobs.stop(timeout=60)
    assert asked and message.startswith(f"Stopped {run.name} at step")
    info = read_run(run)
    assert info.state == "stopped" and 2 <= info.step < 500 and info.resumable
    sidecar = json.loads((run / "checkpoints" / "last.json").read_text())
    assert sidecar["step"] == info.step
    assert train_tab.resume_choices(jobs) == [train_tab.NEW_RUN, run.name]


def test_a_finished_run_continues_for_more_epochs_and_a_run_can_be_deleted(tmp_path, monkeypatch):
    from hico import runs
    from tests.conftest import write_class_dataset

    monkeypatch.setenv("HICO_HOME", str(tmp_path / "home"))
    data = write_class_dataset(tmp_path / "data", per_class=3, frames=4)
    jobs = Jobs(tmp_path / "runs")
    run = jobs.start({"data": {"root": str(data), "size": 32, "val_fraction": 0},
                      "train": {"batch_size": 2, "epochs": 1, "warmup_epochs": 0, "log_every": 1}, "device": "cpu"})
    wait_for(lambda: read_run(run).state == "finished" and jobs.active() is None, timeout=120)
    first, started = read_run(run).step, read_run(run).started
    assert first == read_run(run).total_steps > 0
    with pytest.raises(HiCoError, match=rf"^Run {run.name} is finished at epoch 1.0 of 1; give more epochs than 1"):
        jobs.resume(run)
    with pytest.raises(HiCoError, match="^There is no run called nope.$"):
        jobs.resume(tmp_path / "runs" / "nope")
    assert run.name in train_tab.resume_choices(jobs)
    jobs.resume(run, epochs=2)
    wait_for(lambda: read_run(run).state == "finished" and jobs.active() is None, timeout=120)
    info = read_run(run)
    assert info.config["train"]["epochs"] == 2 and info.step == info.total_steps == 2 * first
    assert info.started == started  # the run list's "started" stays the first start
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 2 * first + 1))  # one line per step, continuing where it ended
    with pytest.raises(HiCoError, match="has trained 2.0 epochs already"):
        jobs.resume(run, epochs=1)
    monkeypatch.setattr(runs, "is_alive", lambda path: True)
    with pytest.raises(HiCoError, match="is training; stop it before deleting it"):
        jobs.delete(run)
    monkeypatch.undo()
    assert jobs.delete(run) == f"Deleted run {run.name}."
    assert not list((tmp_path / "runs").glob("*" + run.name + "*")) and list_runs(tmp_path / "runs") == []
    with pytest.raises(HiCoError, match="There is no run called"):
        jobs.delete(run)


def test_the_demo_gives_way_to_a_users_run_and_resumes_after_it(tmp_path, monkeypatch):
    """Starting a run while the demo trains stops the demo with a checkpoint and starts the user's
    run; once nothing trains, the keeper resumes the demo. A demo stopped by hand stays stopped."""
    from app import default
    from tests.conftest import write_class_dataset

    monkeypatch.setenv("HICO_HOME", str(tmp_path / "home"))
    data = write_class_dataset(tmp_path / "data", per_class=3, frames=4)
    jobs = Jobs(tmp_path / "runs")
    access = Access(tmp_path / "home", data_dirs=[data])
    base = {"data": {"root": str(data), "size": 32, "val_fraction": 0}, "device": "cpu",
            "train": {"batch_size": 2, "warmup_epochs": 0, "log_every": 1}}
    demo = jobs.start({**base, "train": {**base["train"], "max_steps": 400}}, name=default.DEMO_RUN)
    wait_for(lambda: read_run(demo).step >= 1, timeout=120)
    with pytest.raises(HiCoError, match="batch_size must be between 1 and"):  # refused before the demo is touched
        train_tab.start_training(jobs, access, train_tab.NEW_RUN,
                                 train_tab.TrainForm(str(data), 32, 0, 1, 3e-4, "hico", 0.5, 0.5, 0.2, 1.0, "cpu"))
    assert jobs.active() == demo and not (demo / default.YIELDED).exists()
    run_dir, message = train_tab.start_training(
        jobs, access, train_tab.NEW_RUN, train_tab.TrainForm(str(data), 32, 2, 1, 3e-4, "hico", 0.5, 0.5, 0.2, 1.0, "cpu"))
    assert "The demo model paused" in message
    paused = read_run(demo)
    assert paused.state == "stopped" and paused.resumable and (demo / default.YIELDED).exists()
    assert default.resume_yielded_demo(jobs) is False  # the user's run is training
    wait_for(lambda: read_run(run_dir).state == "finished" and jobs.active() is None, timeout=120)
    assert default.resume_yielded_demo(jobs) is False  # within the grace: the user's next start may come
    monkeypatch.setattr(default, "GRACE_S", 0.0)
    assert default.resume_yielded_demo(jobs) is True and not (demo / default.YIELDED).exists()
    wait_for(lambda: read_run(demo).step > paused.step, timeout=120)
    jobs.stop(timeout=60)  # stopped by hand: not resumed
    assert read_run(demo).state == "stopped" and default.resume_yielded_demo(jobs) is False
