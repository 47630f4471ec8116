"""Training on CPU: finite losses, loadable checkpoints, exact resume, modes, clear refusals."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hico import config, timeline
from hico.data import find_clips
from hico.embed import embed_dataset, level_matrix
from hico.inference import load_run
from hico.errors import HiCoError
from hico.losses import TERMS
from hico.spectrum import participation_ratio
from hico.train import batch_videos, lr_factor, portable_state, train

BASE = ["data.size=32", "train.batch_size=4", "train.log_every=1", "train.warmup_epochs=0", "device=cpu"]
LEVELS = ("local", "medium", "global")
KNN_FIELDS = {f"val_knn_acc_{v}" for v in (*LEVELS, "backbone")}
PROBE_FIELDS = {f"val_probe_acc_{v}" for v in LEVELS}


def val_fields(line: dict) -> set[str]:
    return {k for k in line if k.startswith(("val_knn", "val_probe"))}


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


def test_each_validation_logs_held_out_accuracy_and_keeps_a_snapshot(class_dataset, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(class_dataset, "train.max_steps=3"), run, progress=False)
    # 6 training videos at batch 4: one step an epoch, so every line is a validation
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        assert val_fields(line) == KNN_FIELDS | PROBE_FIELDS
        assert all(0.0 <= line[k] <= 1.0 for k in KNN_FIELDS | PROBE_FIELDS)
        # 2 held-out videos x 4 frames: every accuracy is a whole number of eighths
        assert all((8 * line[k]).is_integer() for k in KNN_FIELDS | PROBE_FIELDS)
        assert line["val_contrastive"] > 0 and line["val_s"] > 0
    assert timeline.steps(run) == [1, 2, 3]
    snap = timeline.read(run, 3)
    # the effective rank of every level is the participation ratio of the watched frames' features
    for view in ("local", "medium", "global", "backbone"):
        assert lines[-1][f"val_rank_{view}"] == pytest.approx(participation_ratio(snap.vectors[view]), rel=1e-3)
        assert 1.0 <= lines[-1][f"val_rank_{view}"] <= 31
    dataset = find_clips(class_dataset)
    # 4 evenly spaced frames (0, 2, 3, 5) of each 6-frame clip, training videos first
    assert len(snap.video_id) == 32 and snap.frame.tolist() == [0, 2, 3, 5] * 8
    assert sorted(set(snap.video_id)) == sorted(c.video_id for c in dataset.clips)
    assert all(label == vid.split("/")[0] for vid, label in zip(snap.video_id, snap.label))
    assert snap.split.tolist() == ["train"] * 24 + ["val"] * 8
    assert {k: v.shape for k, v in snap.vectors.items()} == {"local": (32, 256), "medium": (32, 256),
                                                               "global": (32, 256), "backbone": (32, 512)}
    # the same vectors `hico embed` gives for the checkpoint of that step (float16 in the file)
    table, _ = embed_dataset(run, class_dataset, checkpoint="last", device="cpu", progress=False)
    table = table.set_index(["video_id", "frame"]).loc[list(zip(snap.video_id, snap.frame.tolist()))]
    for name, values in snap.vectors.items():
        expected = level_matrix(table, name)
        np.testing.assert_allclose(values, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


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
    strip = lambda s: {k: v for k, v in json.loads(s).items() if k not in ("images_per_s", "time", "val_s")}  # noqa: E731
    assert [strip(x) for x in la] == [strip(x) for x in lb]
    assert all(val_fields(json.loads(x)) == KNN_FIELDS | PROBE_FIELDS for x in lb)
    # the learning rate each step used: cosine from 3e-4 over 4 steps, set by the loop, resumed or not
    expected = [3e-4 * lr_factor(step, 4, 0, "constant") for step in range(4)]
    assert [json.loads(x)["lr"] for x in lb] == pytest.approx(expected, rel=1e-12)
    assert expected[1] < 3e-4 and expected[3] < expected[2]
    assert timeline.steps(tmp_path / "straight") == timeline.steps(tmp_path / "resumed") == [1, 2, 3, 4]
    for step in (1, 4):
        a, b = timeline.read(tmp_path / "straight", step), timeline.read(tmp_path / "resumed", step)
        assert a.video_id.tolist() == b.video_id.tolist()
        for name in a.vectors:
            np.testing.assert_array_equal(a.vectors[name], b.vectors[name])


def test_the_last_step_is_validated_between_validation_epochs(class_dataset, tmp_path):
    run = tmp_path / "run"
    train(make_cfg(class_dataset, "train.max_steps=2", "train.val_every=5"), run, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [bool(val_fields(x)) for x in lines] == [False, True] and "val_contrastive" in lines[1]
    assert timeline.steps(run) == [2]


def test_resume_drops_the_snapshots_after_its_step(class_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg(class_dataset, "train.max_steps=3", "train.checkpoint_every=1")
    train(cfg, run, stop_at_step=1, progress=False)
    assert timeline.steps(run) == [1]
    # as if a session had got further and died before its checkpoint: a snapshot beyond step 1
    (run / "timeline" / "step-0000002.npz").write_bytes((run / "timeline" / "step-0000001.npz").read_bytes())
    (run / "timeline" / "step-0000009.npz").write_bytes(b"")
    train(config.load(run / "config.yaml"), run, resume=True, progress=False)
    assert timeline.steps(run) == [1, 2, 3] and timeline.read(run, 2).step == 2


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
    # every mode gets held-out kNN accuracy; only models with classes (hico, supervised) have probes
    assert val_fields(final) == (KNN_FIELDS if mode in ("simclr", "peer") else KNN_FIELDS | PROBE_FIELDS)
    assert ("val_contrastive" in final) == (mode != "supervised")
    if mode == "simclr":
        assert final["peer_local"] == 0 and final["total"] == pytest.approx(final["peer_global"])
    if mode == "supervised":
        assert final["contrastive"] == 0 and final["total"] == pytest.approx(final["supervised"])


def test_flatten_heads_and_unlabelled_fraction(class_dataset, tmp_path):
    summary = train(make_cfg(class_dataset, "train.max_steps=1", "model.heads=flatten", "data.label_fraction=0"),
                    tmp_path / "run", progress=False)
    assert summary["classes"] == [] and summary["final"]["supervised"] == 0
    # labels withheld from training still score the representation (as hico eval does); no probes
    assert val_fields(summary["final"]) == KNN_FIELDS


def test_no_held_out_videos_or_labels_no_accuracy(class_dataset, tmp_path):
    # 8 training videos at batch 4: the epoch (and its validation) ends at step 2
    summary = train(make_cfg(class_dataset, "train.max_steps=2", "data.val_fraction=0"), tmp_path / "all",
                    progress=False)
    assert val_fields(summary["final"]) == set() and "val_contrastive" not in summary["final"]
    assert set(timeline.read(tmp_path / "all", 2).split) == {"train"}  # the timeline is kept all the same
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for clip in sorted(class_dataset.rglob("*.mp4")):
        clip.rename(unlabelled / clip.name)
    summary = train(make_cfg(unlabelled, "train.max_steps=1"), tmp_path / "u", progress=False)
    assert val_fields(summary["final"]) == set() and summary["final"]["val_contrastive"] > 0
    assert set(timeline.read(tmp_path / "u", 1).label) == {""}


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
def test_optimizer_state_moves_between_a_captured_gpu_set_up_and_the_cpu():
    # A captured GPU step keeps Adam's learning rate in a device tensor, with capturable=True and
    # fused=True; the CPU steps eagerly with a float. Each loads the other's state and keeps its own set-up.
    torch.manual_seed(0)
    gpu_like, cpu = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    cpu.load_state_dict(gpu_like.state_dict())
    saved_from = torch.optim.Adam(gpu_like.parameters(), lr=0.01)
    gpu_like(torch.randn(5, 3)).sum().backward()
    saved_from.step()
    state = saved_from.state_dict()
    state["param_groups"][0].update(lr=torch.tensor(0.01), capturable=True, fused=True)
    portable = portable_state(state)
    lr = portable["param_groups"][0]["lr"]
    assert isinstance(lr, float) and lr == pytest.approx(0.01)
    assert isinstance(state["param_groups"][0]["lr"], torch.Tensor)  # the live state is left as it was
    into = torch.optim.Adam(cpu.parameters(), lr=0.5)
    into.load_state_dict(portable_state(state, into))
    group = into.param_groups[0]
    assert group["lr"] == 0.5 and not group["capturable"] and not group["fused"]
    for p, q in zip(gpu_like.parameters(), cpu.parameters()):
        assert torch.equal(into.state[q]["exp_avg"], saved_from.state[p]["exp_avg"])
        assert into.state[q]["step"].device.type == "cpu" and float(into.state[q]["step"]) == 1.0
    cpu(torch.randn(5, 3)).sum().backward()
    into.step()  # steps as a plain CPU Adam
    assert float(into.state[next(cpu.parameters())]["step"]) == 2.0


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
