"""Training on CPU: finite losses, loadable checkpoints, exact resume, modes, clear refusals."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from hico import config
from hico.inference import load_run
from hico.errors import HiCoError
from hico.losses import TERMS
from hico.train import batch_videos, lr_factor, train

BASE = ["data.size=32", "train.batch_size=4", "train.log_every=1", "train.warmup_epochs=0", "device=cpu"]


def make_cfg(root, *extra):
    return config.load(None, [f"data.root={root}", *BASE, *extra])


def test_three_steps_are_finite_and_write_a_loadable_run(class_dataset, tmp_path):
    run = tmp_path / "run"
    summary = train(make_cfg(class_dataset, "train.max_steps=3"), run, progress=False)
    assert summary["state"] == "finished" and summary["step"] == 3
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    for line in lines:
        for term in TERMS:
            assert math.isfinite(line[term])
        assert line["images_per_s"] > 0 and line["lr"] > 0
    assert lines[0]["peer_global"] > 0 and lines[0]["supervised"] > 0 and lines[0]["probe"] > 0
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert config.load(run / "config.yaml").data.size == 32
    loaded = load_run(run, "last")
    assert loaded.step == 3 and loaded.classes == ["bright", "dark"]
    weights = load_file(str(run / "checkpoints" / "last.safetensors"))
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(weights[name], tensor)
        assert torch.isfinite(tensor.float()).all()
    assert (run / "checkpoints" / "best.json").is_file()  # held-out videos picked a best checkpoint


def test_resume_continues_exactly(class_dataset, tmp_path):
    extra = ("train.max_steps=4", "train.checkpoint_every=1")
    train(make_cfg(class_dataset, *extra), tmp_path / "straight", progress=False)
    stopped = train(make_cfg(class_dataset, *extra), tmp_path / "resumed", stop_at_step=2, progress=False)
    assert stopped["state"] == "stopped" and stopped["step"] == 2
    assert json.loads((tmp_path / "resumed" / "status.json").read_text())["state"] == "stopped"
    resumed = train(config.load(tmp_path / "resumed" / "config.yaml"), tmp_path / "resumed", resume=True,
                    progress=False)
    assert resumed["step"] == 4 and resumed["steps_this_session"] == 2
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    la = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    lb = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    strip = lambda s: {k: v for k, v in json.loads(s).items() if k not in ("images_per_s", "time")}  # noqa: E731
    assert [strip(x) for x in la] == [strip(x) for x in lb]


def test_stop_file_ends_the_run_with_a_checkpoint(class_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = make_cfg(class_dataset, "train.max_steps=50")
    from hico.train import Trainer

    trainer = Trainer(cfg, run, progress=False)
    trainer.train_step()
    (run / "STOP").write_text("")
    summary = trainer.run()
    assert summary["state"] == "stopped" and summary["step"] == 1
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 1


def test_a_stop_between_log_points_still_logs_its_steps(class_dataset, tmp_path):
    run = tmp_path / "run"
    # 6 training videos at batch 2: 3 steps an epoch, so steps 1 and 2 are no log point
    cfg = make_cfg(class_dataset, "train.batch_size=2", "train.log_every=10", "train.max_steps=30")
    summary = train(cfg, run, stop_at_step=2, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2] and math.isfinite(lines[0]["total"]) and lines[0]["images_per_s"] > 0
    assert summary["state"] == "stopped" and summary["final"]["step"] == 2
    assert json.loads((run / "checkpoints" / "last.json").read_text())["metrics"]["step"] == 2


@pytest.mark.parametrize("mode", ["simclr", "peer", "supervised"])
def test_ablation_modes_train(class_dataset, tmp_path, mode):
    summary = train(make_cfg(class_dataset, "train.max_steps=1", f"loss.mode={mode}"), tmp_path / mode,
                    progress=False)
    final = summary["final"]
    assert math.isfinite(final["total"])
    if mode == "simclr":
        assert final["peer_local"] == 0 and final["total"] == pytest.approx(final["peer_global"])
    if mode == "supervised":
        assert final["contrastive"] == 0 and final["total"] == pytest.approx(final["supervised"])


def test_flatten_heads_and_unlabelled_fraction(class_dataset, tmp_path):
    summary = train(make_cfg(class_dataset, "train.max_steps=1", "model.heads=flatten", "data.label_fraction=0"),
                    tmp_path / "run", progress=False)
    assert summary["classes"] == [] and summary["final"]["supervised"] == 0


def test_refusals_name_the_problem(class_dataset, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(class_dataset, "train.max_steps=1"), run, progress=False)
    with pytest.raises(HiCoError, match="already holds a run"):
        train(make_cfg(class_dataset, "train.max_steps=1"), run, progress=False)
    with pytest.raises(HiCoError, match="no checkpoint to resume"):
        train(make_cfg(class_dataset), tmp_path / "fresh", resume=True, progress=False)
    with pytest.raises(HiCoError, match="does not fit this model: it has heads='pooled'"):
        from hico.checkpoint import load_weights
        from hico.model import architecture, build_model

        cfg = make_cfg(class_dataset, "model.heads=flatten")
        load_weights(build_model(cfg, 2), run / "checkpoints" / "last.safetensors", architecture(cfg, 2),
                     json.loads((run / "checkpoints" / "last.json").read_text())["architecture"])
    with pytest.raises(HiCoError, match=r"train.compile='reduce-overhead' needs a CUDA GPU"):
        train(make_cfg(class_dataset, "train.compile=reduce-overhead", "device=cpu"), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()  # refused before the run folder was made: no failed run left behind
    with pytest.raises(HiCoError, match="needs labelled clips"):
        train(make_cfg(class_dataset, "loss.mode=supervised", "data.label_fraction=0"), tmp_path / "s",
              progress=False)
    assert not (tmp_path / "s").exists()
    with pytest.raises(HiCoError, match="data.cache_on must be one of"):
        make_cfg(class_dataset, "data.cache_on=disk")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused_before_a_folder_is_made(class_dataset, tmp_path):
    with pytest.raises(HiCoError, match="no CUDA GPU"):
        train(make_cfg(class_dataset, "device=cuda"), tmp_path / "gpu", progress=False)
    assert not (tmp_path / "gpu").exists()


def test_schedule_and_batches():
    assert lr_factor(0, 100, 10, "constant") == 1.0
    assert lr_factor(4, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(10, 100, 10, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "constant") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "constant") == pytest.approx(0.0)
    epoch = [batch_videos(s, 10, 4, seed=0) for s in range(2)]  # 2 steps per epoch, 2 videos dropped
    assert len(set(epoch[0]) | set(epoch[1])) == 8
    assert not set(epoch[0]) & set(epoch[1])
    assert list(batch_videos(0, 10, 4, 0)) != list(batch_videos(2, 10, 4, 0))  # a new permutation per epoch
