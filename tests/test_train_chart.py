"""The Train tab's chart on constructed metrics: the run's curves, held-out accuracy per level of
several runs overlaid, and a refresh that reads (and redraws) only what changed."""

import dataclasses
import json

import gradio as gr
import pytest

from app import train_tab
from app.access import Access
from app.figures import ACCURACY_LEVELS, training_figure
from app.run_metrics import MetricsCache


def _rows(knn: float, probe: float | None, steps=(1, 2, 3, 4), every: int = 2) -> list[dict]:
    """Loss lines at `steps`; every `every`-th a validation with kNN (and probe) accuracy
    knn + level index / 10 (probe + level index / 10) at step s, plus s / 100."""
    rows = []
    for step in steps:
        row = {"step": step, "total": 5.0 - step, "peer_global": 1.0, "lr": 1e-3, "images_per_s": 10.0}
        if step % every == 0:
            row["val_contrastive"] = 4.0 - step
            for i, level in enumerate(ACCURACY_LEVELS):
                row[f"val_knn_acc_{level}"] = knn + i / 10 + step / 100
                if probe is not None and level != "backbone":
                    row[f"val_probe_acc_{level}"] = probe + i / 10 + step / 100
        rows.append(row)
    return rows


def _accuracy(fig) -> dict[tuple[str, str, str], tuple[list, list]]:
    return {(t.meta["run"], t.meta["level"], t.meta["kind"]): (list(t.x), list(t.y)) for t in fig.data if t.meta}


def test_accuracy_panels_overlay_every_run_by_colour_and_kind():
    fig = training_figure(_rows(0.5, 0.4), {"simclr": _rows(0.2, None, steps=(2, 4, 6)), "live": _rows(0, 0)},
                          name="live")
    lines = _accuracy(fig)
    # the shown run (named once even if picked again), then simclr: kNN at every level, probe at three
    assert set(lines) == {("live", v, "knn") for v in ACCURACY_LEVELS} | {
        ("live", v, "probe") for v in ("local", "medium", "global")} | {("simclr", v, "knn") for v in ACCURACY_LEVELS}
    assert lines[("live", "local", "knn")] == ([2, 4], pytest.approx([0.52, 0.54]))
    assert lines[("live", "global", "probe")] == ([2, 4], pytest.approx([0.62, 0.64]))
    assert lines[("simclr", "backbone", "knn")] == ([2, 4, 6], pytest.approx([0.52, 0.54, 0.56]))
    by_meta = {(t.meta["run"], t.meta["level"], t.meta["kind"]): t for t in fig.data if t.meta}
    live, simclr = by_meta[("live", "medium", "knn")], by_meta[("simclr", "medium", "knn")]
    assert live.line.color != simclr.line.color  # a colour per run ...
    assert live.line.dash == "solid" and by_meta[("live", "medium", "probe")].line.dash == "dot"  # ... kNN vs probe
    assert by_meta[("live", "medium", "probe")].line.color == live.line.color
    # each level in its own panel, the same panel for every run
    assert live.xaxis == simclr.xaxis and live.xaxis != by_meta[("live", "local", "knn")].xaxis
    legend = [t.name for t in fig.data if t.legend == "legend2" and t.showlegend is not False]
    assert legend[:2] == ["live", "simclr"] and set(legend[2:]) == {"kNN", "linear probe"}
    # the loss panel shows the run itself only
    names = [t.name for t in fig.data if not t.meta and t.legend != "legend2"]
    assert "total" in names and "held-out contrastive" in names and names.count("total") == 1
    total = next(t for t in fig.data if t.name == "total")
    assert list(total.x) == [1, 2, 3, 4] and list(total.y) == [4.0, 3.0, 2.0, 1.0]


def test_the_loss_panel_tells_overlapping_terms_apart_and_names_axes_not_legend_entries():
    """Equal peer terms (a young run) differ in dash and marker; throughput is an axis, not a loss
    legend entry; the panel says GPU only on a GPU; the learning rate reads 1.5e-04."""
    rows = [{"step": s, "total": 3.0, "peer_local": 1.0, "peer_medium": 1.0, "peer_global": 1.0, "lr": 1.5e-4,
             "images_per_s": 12.0} for s in (1, 2, 3)]
    fig = training_figure(rows)
    peers = [t for t in fig.data if t.name in ("peer_local", "peer_medium", "peer_global")]
    assert len({t.line.dash for t in peers}) == 3 and len({t.marker.symbol for t in peers}) == 3
    legend = [t.name for t in fig.data if t.showlegend is not False and t.legend != "legend2"]
    assert "images/s" not in legend and "peer_medium" in legend
    titles = [a.text for a in fig.layout.annotations]
    assert "throughput" in titles and "throughput and GPU" not in titles
    lr = next(t for t in fig.data if t.name == "lr")
    assert getattr(fig.layout, lr.yaxis.replace("y", "yaxis")).tickformat == ".1e"
    gpu = training_figure([{**r, "gpu_mem_gb": 3.0, "gpu_util": 80.0} for r in rows])
    assert "throughput and GPU" in [a.text for a in gpu.layout.annotations]
    assert not [t.name for t in gpu.data if t.name.startswith("GPU") and t.showlegend is not False]


def test_progress_says_a_starting_run_is_starting():
    status = {"run": {"name": "r1", "state": "running", "step": 0, "total_steps": 0, "epoch": 0.0, "epochs": 4,
                      "images_per_s": None, "eta_s": None}}
    text = train_tab.progress_html(status)
    assert "starting: loading the model and reading the clips" in text and "0/0" not in text


def test_a_run_without_accuracy_says_so():
    plain = [{"step": 1, "total": 1.0, "lr": 1e-3, "images_per_s": 5.0}]
    fig = training_figure(plain, {"other": _rows(0.5, None)}, name="old")
    legend = [t.name for t in fig.data if t.legend == "legend2" and t.showlegend is not False]
    assert legend == ["old (none logged)", "other", "kNN"]
    empty = training_figure(plain)
    assert not _accuracy(empty) and not any(t.legend == "legend2" for t in empty.data)
    assert any("one point per validation" in a.text for a in empty.layout.annotations)


def test_metrics_are_read_again_only_when_the_file_changed(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    cache = MetricsCache(keep=2)
    assert cache.rows(run) == [] and cache.reads == 0  # no file yet
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    assert cache.rows(run) == [{"step": 1}] and cache.reads == 1
    assert cache.rows(run) == [{"step": 1}] and cache.reads == 1  # unchanged: no read
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 2}) + "\n")
    assert [r["step"] for r in cache.rows(run)] == [1, 2] and cache.reads == 2
    for other in ("a", "b"):  # a third run pushes out the least recently asked
        (tmp_path / other).mkdir()
        cache.rows(tmp_path / other)
    cache.rows(run)
    assert cache.reads == 3


def test_the_chart_is_redrawn_only_when_a_run_it_shows_changed(tmp_path):
    access = Access(tmp_path)
    for name in ("live", "peer"):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}\n")
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(0.3, 0.3)))
    status = {"run": {"name": "live", "folder": str(tmp_path / "runs" / "live")}}
    assert train_tab.compared_runs(access, ["peer", "live", "nope", "../x", "peer"], "live") == {
        "peer": tmp_path / "runs" / "peer"}
    fig, key = train_tab.chart_update(status, access, ["peer"], None)
    assert {t.meta["run"] for t in fig.data if t.meta} == {"live", "peer"}
    again, same = train_tab.chart_update(status, access, ["peer"], key)
    assert same == key and isinstance(again, type(gr.skip()))
    with open(tmp_path / "runs" / "peer" / "metrics.jsonl", "a") as handle:  # the overlaid run logs a line
        handle.write(json.dumps({"step": 5, "total": 0.5, "val_knn_acc_local": 0.9}) + "\n")
    fig, newer = train_tab.chart_update(status, access, ["peer"], key)
    assert newer != key and _accuracy(fig)[("peer", "local", "knn")][1][-1] == 0.9
    fewer, _ = train_tab.chart_update(status, access, [], newer)  # unpicking a run redraws
    assert {t.meta["run"] for t in fewer.data if t.meta} == {"live"}
    nothing, _ = train_tab.chart_update({"run": None}, access, [], None)
    assert not _accuracy(nothing)


def test_compare_endpoint_gives_each_runs_held_out_accuracy(tmp_path):
    access = Access(tmp_path)
    lines = {"hico-s0": [{"step": 5, "total": 1.0}, {"step": 10, "total": 0.9, "val_knn_acc_local": 0.5,
                                                     "val_probe_acc_global": 0.25, "val_contrastive": 3.0},
                         {"step": 20, "total": 0.8, "val_knn_acc_local": 0.75, "val_probe_acc_global": 0.5}],
             "simclr-s0": [{"step": 10, "total": 2.0}]}
    for name, rows in lines.items():
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        mode = name.split("-")[0]
        (folder / "config.yaml").write_text(f"loss: {{mode: {mode}}}\ntrain: {{seed: 0}}\n")
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = train_tab.run_comparison(access, " hico-s0, simclr-s0,../etc, hico-s0 ")
    assert out["ok"] and out["message"] == "2 runs; not runs here: '../etc'."
    hico, simclr = out["runs"]
    assert (hico["run"], hico["mode"], hico["seed"]) == ("hico-s0", "hico", 0)
    assert hico["latest"] == {"val_knn_acc_local": 0.75, "val_probe_acc_global": 0.5}
    assert hico["series"]["val_knn_acc_local"] == [[10, 0.5], [20, 0.75]]
    assert simclr["mode"] == "simclr" and simclr["latest"] == {} and simclr["series"] == {}
    empty = train_tab.run_comparison(access, " , ")
    assert not empty["ok"] and empty["runs"] == []
    assert not train_tab.run_comparison(access, "nope")["ok"]
    huge = train_tab.run_comparison(access, "x" * 5_000_000)  # a 5 MB name is not echoed back
    assert not huge["ok"] and len(huge["message"]) < 200 and huge["message"].endswith("…'.")
    many = train_tab.run_comparison(access, ",".join(f"r{i}" for i in range(21)))
    assert many == {"ok": False, "message": "Name at most 20 runs to compare at once.", "runs": []}
    some = train_tab.run_comparison(access, "hico-s0," + ",".join(f"gone{i}" for i in range(8)))
    assert some["message"] == "1 run; not runs here: 'gone0', 'gone1', 'gone2', 'gone3', 'gone4' and 3 more."


def test_a_page_keeps_showing_its_run_when_another_trains(tmp_path):
    """The Train tab's Show choice: the live (else newest) run by default, or one named run, which
    stays shown (finished) while another run trains; a name that is no run falls back."""
    import os
    import time

    from app.jobs import Jobs

    runs_dir = tmp_path / "runs"
    for age, name in ((20, "mine"), (10, "demo")):
        folder = runs_dir / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}\n")
        (folder / "status.json").write_text(json.dumps({"state": "finished", "step": 5, "total_steps": 5}))
        past = time.time() - age
        os.utime(folder / "config.yaml", (past, past))
        os.utime(folder / "status.json", (past, past))
    jobs = Jobs(runs_dir)
    newest = train_tab.training_status(jobs)["run"]["name"]
    assert train_tab.training_status(jobs, train_tab.LIVE)["run"]["name"] == newest
    for name in ("mine", "demo"):
        status = train_tab.training_status(jobs, name)
        assert status["run"]["name"] == name and status["run"]["state"] == "finished"
    assert train_tab.training_status(jobs, "../etc")["run"]["name"] == newest


def test_the_form_spreads_its_validations_over_the_run(tmp_path):
    access = Access(tmp_path)
    (tmp_path / "datasets" / "synth").mkdir(parents=True)
    form = train_tab.TrainForm("synth", 96, 16, 4, 3e-4, "hico", 0.5, 0.5, 0.2, 1.0, "cpu")
    values = train_tab.form_values(access, form)
    assert values["train"]["val_points"] == train_tab.DEFAULT_VALIDATIONS == 10
    assert train_tab.form_values(access, dataclasses.replace(form, validations=0))["train"]["val_every"] == 1
    with pytest.raises(Exception, match="number of validations"):
        train_tab.form_values(access, dataclasses.replace(form, validations=2.5))


def test_a_run_validates_val_points_times_evenly(class_dataset, tmp_path):
    from hico import config
    from hico.runs import read_metrics
    from hico.train import train

    cfg = config.load(None, [f"data.root={class_dataset}", "data.size=32", "train.batch_size=2", "train.max_steps=10",
                             "train.warmup_epochs=0", "train.val_points=5", "train.val_every=0", "train.log_every=1",
                             "device=cpu"])
    train(cfg, tmp_path / "run", progress=False)
    validated = [r["step"] for r in read_metrics(tmp_path / "run") if "val_s" in r]
    assert validated == [2, 4, 6, 8, 10]


def test_a_classifier_run_draws_its_classifier_accuracy_in_the_backbone_panel():
    rows = _rows(0.5, 0.4)
    for row in rows:
        if "val_knn_acc_local" in row:
            row["val_acc"] = 0.7 + row["step"] / 100  # a fine-tune's held-out classifier accuracy
    lines = _accuracy(training_figure(rows, name="tuned"))
    assert lines[("tuned", "backbone", "classifier")] == ([2, 4], pytest.approx([0.72, 0.74]))
    assert not any(kind == "classifier" and level != "backbone" for _, level, kind in lines)
    fig = training_figure(rows, name="tuned")
    legend = [t.name for t in fig.data if t.legend == "legend2" and t.showlegend is not False]
    assert "classifier" in legend
    only_classifier = [{"step": 2, "total": 1.0, "val_acc": 0.6}]  # a supervised run logs val_acc alone
    assert _accuracy(training_figure(only_classifier, name="sup")) == {("sup", "backbone", "classifier"): ([2], [0.6])}


def test_a_gpu_run_reports_its_card_memory_and_utilisation(tmp_path):
    """/training_status and the progress line name the GPU a run trains on (status.json, written
    by the trainer) with the peak memory and utilisation of its latest metrics line; a CPU run has
    no GPU reading."""
    from app.jobs import Jobs

    runs_dir = tmp_path / "runs"
    for name, device, card in (("on-gpu", "cuda:0", {"device_name": "NVIDIA H200", "device_memory_gb": 139.8}),
                               ("on-cpu", "cpu", {"device_name": "", "device_memory_gb": None})):
        folder = runs_dir / name
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("{}\n")
        (folder / "status.json").write_text(json.dumps({"state": "finished", "step": 20, "total_steps": 20,
                                                        "device": device, **card}))
        line = {"step": 20, "total": 1.0, "images_per_s": 3000.0}
        if device != "cpu":
            line.update(gpu_mem_gb=12.34, gpu_util=97.0)
        (folder / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    jobs = Jobs(runs_dir)
    gpu = train_tab.training_status(jobs, "on-gpu")
    assert gpu["run"]["gpu"] == {"name": "NVIDIA H200", "total_gb": 139.8, "memory_gb": 12.34, "util": 97.0}
    assert "NVIDIA H200: 12.3 of 140 GB, 97 % busy" in train_tab.progress_html(gpu)
    cpu = train_tab.training_status(jobs, "on-cpu")
    assert cpu["run"]["gpu"] is None and "busy" not in train_tab.progress_html(cpu)
    # without NVML the utilisation is not logged: the line says what is known
    assert train_tab.gpu_text({"name": "NVIDIA H100", "total_gb": 79.6, "memory_gb": 3.0, "util": None}) == \
        "NVIDIA H100: 3.0 of 80 GB"


def test_the_trainer_writes_no_card_for_the_cpu():
    import torch

    from hico.train import _device_card

    assert _device_card(torch.device("cpu")) == {"device_name": "", "device_memory_gb": None}
