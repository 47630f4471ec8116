"""What only a CUDA GPU runs: the deferred metric window, the pinned staging of a host frame cache,
the device data path against the CPU's, whole runs with the cache on either side, torch.compile,
the inference precision, a step that never makes the host wait, and the step captured as a CUDA
graph against the eager one. Skipped without a GPU (CI has none); `benchmarks/gpu_check.sh` runs
this file first on the GPU machine."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hico import config
from hico.config import DataConfig
from hico.data import sample_views
from hico.data.cache import FrameCache
from hico.data.views import gather_frames
from hico.inference import embed_frames, freeze
from hico.metrics import MetricWindow
from hico.model import HiCoModel
from hico.train import Trainer, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _cache(device="cpu") -> FrameCache:
    frames = torch.randint(0, 256, (60, 1, 24, 24), dtype=torch.uint8)
    return FrameCache(frames.to(device), np.arange(6) * 10, np.full(6, 10))


def _cfg(root, *extra):
    return config.load(None, [f"data.root={root}", "data.size=32", "train.batch_size=4", "train.log_every=1",
                              "train.warmup_epochs=0", "train.epochs=3", "device=cuda", *extra])


def test_metric_window_resolves_on_the_gpu_without_waiting():
    window = MetricWindow(("a", "b"), CUDA)
    for step in range(1, 7):
        a = torch.full((), float(step), device=CUDA)
        window.add({"a": a, "b": a * 10})
        if step % 3 == 0:
            window.close(step, lr=0.1)
    assert all(snap.end_event is not None and snap.sums.is_pinned() for snap in window.pending)
    lines = window.ready() + window.flush()
    assert [line["step"] for line in lines] == [3, 6]
    assert lines[0]["a"] == pytest.approx(2.0) and lines[1]["b"] == pytest.approx(50.0)
    assert all(line["seconds"] > 0 and line["steps"] == 3 and line["lr"] == 0.1 for line in lines)


def test_host_cache_is_staged_to_the_gpu_exactly():
    host = _cache()
    device = FrameCache(host.frames.to(CUDA), host.offsets, host.lengths)
    rows = np.array([59, 0, 13, 13, 42])
    staged = gather_frames(host, rows, CUDA)
    assert staged.device.type == "cuda" and torch.equal(staged, gather_frames(device, rows, CUDA))
    assert torch.equal(staged.cpu(), host.frames[torch.from_numpy(rows)])


def test_device_views_match_the_cpu_views():
    host = _cache()
    cfg = DataConfig()
    on_cpu = sample_views(host, np.arange(6), np.random.default_rng(3), cfg)
    on_gpu = sample_views(host, np.arange(6), np.random.default_rng(3), cfg, device=CUDA)
    for a, b in zip(on_cpu, on_gpu):
        assert b.device.type == "cuda" and torch.allclose(a, b.cpu(), atol=1e-4)


@pytest.mark.parametrize("cache_on", ["device", "host"])
def test_a_gpu_run_logs_every_step_and_saves(class_dataset, tmp_path, cache_on):
    run = tmp_path / cache_on
    summary = train(_cfg(class_dataset, f"data.cache_on={cache_on}"), run, progress=False)
    assert summary["state"] == "finished" and summary["device"].startswith("cuda")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, summary["total_steps"] + 1))
    assert all(np.isfinite(x["total"]) and x["images_per_s"] > 0 and x["gpu_mem_gb"] > 0 for x in lines)
    assert any("val_contrastive" in x for x in lines)
    status = json.loads((run / "status.json").read_text())  # what /training_status names the card by
    assert status["device_name"] == torch.cuda.get_device_name() and status["device_memory_gb"] > 1


def test_cache_placement_does_not_change_the_losses(class_dataset, tmp_path):
    totals = {}
    for cache_on in ("device", "host"):
        run = tmp_path / cache_on
        train(_cfg(class_dataset, f"data.cache_on={cache_on}", "train.epochs=2"), run, progress=False)
        totals[cache_on] = [json.loads(x)["total"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert np.allclose(totals["device"], totals["host"], rtol=1e-3)


def test_compiled_run_trains_and_saves_plain_weights(class_dataset, tmp_path):
    run = tmp_path / "compiled"
    summary = train(_cfg(class_dataset, "train.compile=default", "train.epochs=2"), run, progress=False)
    assert summary["state"] == "finished" and np.isfinite(summary["final"]["total"])
    names = list(load_file(str(run / "checkpoints" / "last.safetensors")))
    assert names and not any("_orig_mod" in n for n in names)


def test_gpu_embeddings_agree_with_float32():
    torch.manual_seed(0)
    model = freeze(HiCoModel(input_size=32, num_classes=3).to(CUDA))
    frames = torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8)
    out = embed_frames(model, frames, CUDA, batch_size=4)
    with torch.no_grad():
        ref = model.embed(((frames.float() / 255 - 0.5) / 0.25).to(CUDA))
    for key in ("local", "global", "backbone"):
        cos = torch.nn.functional.cosine_similarity(torch.from_numpy(out[key]), ref[key].float().cpu(), dim=1)
        assert cos.min() > 0.999, key


def _losses(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_captured_and_eager_steps_give_the_same_losses(class_dataset, tmp_path):
    extra = ("train.max_steps=20", "train.val_every=0")
    captured = train(_cfg(class_dataset, "train.cuda_graph=true", *extra), tmp_path / "graph", progress=False)
    eager = train(_cfg(class_dataset, "train.cuda_graph=false", *extra), tmp_path / "eager", progress=False)
    assert captured["cuda_graph"] and not eager["cuda_graph"]
    a, b = _losses(tmp_path / "graph"), _losses(tmp_path / "eager")
    assert [x["step"] for x in a] == [x["step"] for x in b] == list(range(1, 21))
    assert [x["lr"] for x in a] == [x["lr"] for x in b]
    for term in ("total", "contrastive", "supervised", "probe"):
        # 16 of the 20 steps replayed: a graph whose optimizer step or learning rate was frozen at
        # capture would drift away from the eager run
        np.testing.assert_allclose([x[term] for x in a], [x[term] for x in b], rtol=2e-2, err_msg=term)


def test_resume_after_a_captured_run_continues_it(class_dataset, tmp_path):
    extra = ("train.max_steps=10", "train.checkpoint_every=1", "train.val_every=0")
    train(_cfg(class_dataset, *extra), tmp_path / "straight", progress=False)
    stopped = train(_cfg(class_dataset, *extra), tmp_path / "resumed", stop_at_step=5, progress=False)
    assert stopped["state"] == "stopped" and stopped["cuda_graph"]
    resumed = train(config.load(tmp_path / "resumed" / "config.yaml"), tmp_path / "resumed", resume=True,
                    progress=False)
    assert resumed["step"] == 10 and resumed["steps_this_session"] == 5 and resumed["cuda_graph"]
    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "resumed")
    assert [x["step"] for x in b] == list(range(1, 11)) and [x["lr"] for x in a] == [x["lr"] for x in b]
    np.testing.assert_allclose([x["total"] for x in a], [x["total"] for x in b], rtol=2e-2)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("cache_on", ["device", "host"])
def test_a_training_step_never_makes_the_host_wait_for_the_gpu(class_dataset, tmp_path, graph, cache_on):
    cfg = _cfg(class_dataset, f"train.cuda_graph={graph}", "train.max_steps=50", f"data.cache_on={cache_on}")
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    for _ in range(5):  # warm-up, and capture where captured (capture itself synchronises)
        trainer.train_step()
    assert trainer.step_captured == graph
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        for _ in range(3):
            terms = trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(terms["total"]).item()
    # every replay stepped Adam with the learning rate of its own step
    weight = next(trainer.raw_model.parameters())
    before = weight.detach().clone()
    trainer.train_step()
    assert not torch.equal(before, weight.detach())
    assert float(trainer.optimizer.state[weight]["step"]) == trainer.step == 9
    assert float(trainer.optimizer.param_groups[0]["lr"]) == pytest.approx(trainer.lr, rel=1e-6)
    assert trainer.lr < trainer.cfg.train.lr  # the cosine has moved it since capture


def test_a_step_that_cannot_be_captured_runs_eagerly():
    """A step that reads a value on the host (not allowed under capture) falls back to eager
    steps with a warning and the same results as eager calls."""
    from hico.graph_step import CapturedStep

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.ones(4, device=CUDA))
    optimizer = torch.optim.Adam([weight], lr=torch.tensor(0.1, device=CUDA), capturable=True)
    seen = []

    def step(x):
        loss = (weight * x).sum()
        seen.append(loss.item())  # a host read: capture refuses it
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    captured = CapturedStep(step, optimizer, warmup=1)
    outputs = [captured(torch.full((4,), float(i), device=CUDA))["loss"].item() for i in range(1, 5)]
    assert captured.failed and not captured.captured
    assert outputs == pytest.approx(seen)  # the failed capture ran nothing; its call stepped eagerly
    assert float(optimizer.state[weight]["step"]) == 4  # four real steps, none lost to the capture
