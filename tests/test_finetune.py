"""Fine-tuning a pretrained run, and what it rests on: frozen encoders, a lower backbone learning
rate, a linear classifier, early stopping, and labelled shares taken of the training videos."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hico import config
from hico.__main__ import main
from hico.checkpoint import load_checkpoint_weights
from hico.data import assign_splits, find_clips, labelled_mask
from hico.errors import HiCoError
from hico.finetune import finetune, finetune_config, read_source
from hico.inference import load_run
from hico.predict import predict_clip
from hico.runs import Run
from hico.train import Trainer, train
from tests.conftest import tiny_run_config, write_class_dataset

BASE = ["data.size=32", "train.batch_size=4", "train.log_every=1", "train.warmup_epochs=0", "device=cpu"]


@pytest.fixture(scope="module")
def label_free(module_tmp):
    """A run pretrained without labels (simclr, 3 steps) on a bright/dark set, and that set."""
    base = module_tmp("ft")
    data, cfg = tiny_run_config(base, per_class=5, frames=4)
    values = cfg.to_dict()
    values["loss"]["mode"] = "simclr"
    values["data"]["label_fraction"] = 0.0
    values["train"]["max_steps"] = 3
    run = base / "runs" / "free"
    train(config.from_dict(values), run, progress=False)
    return run, data


def encoder(weights: dict) -> dict:
    return {k: v for k, v in weights.items() if k.startswith(("trunk.", "fpn."))}


def test_the_linear_head_trains_only_the_head_and_makes_a_label_free_run_diagnose(label_free, tmp_path):
    source, data = label_free
    with pytest.raises(HiCoError, match="no classifier to predict with"):
        predict_clip(source, next(data.rglob("*.mp4")), device="cpu", familiarity=False)
    run = tmp_path / "linear"
    summary = finetune(source, run, str(data), head="linear", overrides=["train.max_steps=6", "train.val_points=3"],
                       progress=False)
    assert summary["state"] == "finished" and summary["classes"] == ["bright", "dark"]
    cfg = config.load(run / "config.yaml")
    assert (cfg.loss.mode, cfg.model.classifier, cfg.train.freeze_encoder) == ("supervised", "linear", True)
    assert cfg.model.weights == str(run / "init.safetensors") and cfg.data.root == str(data)
    assert read_source(run) == {**read_source(run), "run": "free", "checkpoint": "best", "mode": "simclr"}
    # the encoder (weights and batch-norm statistics) is the pretrained one, unchanged
    pretrained, _ = load_checkpoint_weights(source / "checkpoints", "best")
    tuned, _ = load_checkpoint_weights(run / "checkpoints", "last")
    for name, tensor in encoder(pretrained).items():
        assert torch.equal(tuned[name], tensor), name
    assert tuned["classifier.0.weight"].shape == (2, 512)  # one Linear layer on the pooled C5
    assert set(load_file(str(run / "init.safetensors"))) == {k for k in pretrained if k.startswith(
        ("trunk.", "fpn.", "heads."))}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_acc" in line for line in lines) == 3 and all(0 <= line.get("val_acc", 0) <= 1 for line in lines)
    # the result diagnoses: classifier probabilities over the dataset's classes
    prediction = predict_clip(run, next(data.rglob("*.mp4")), device="cpu", familiarity=False)
    assert prediction.classes == ["bright", "dark"] and np.allclose(prediction.clip_probs.sum(), 1, atol=1e-5)


def test_the_full_fine_tune_moves_the_backbone_at_a_tenth_of_the_rate(label_free, tmp_path):
    source, data = label_free
    cfg = finetune_config(Run(source), str(data), "full", ["train.max_steps=2"])
    assert (cfg.train.backbone_lr, cfg.model.classifier, cfg.train.freeze_encoder) == (0.1, "mlp", False)
    assert (cfg.train.patience, cfg.train.val_points, cfg.data.label_fraction) == (5, 15, 1.0)
    trainer = Trainer(cfg, tmp_path / "groups", progress=False)
    groups = trainer.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    trunk = {id(p) for p in trainer.raw_model.trunk.parameters()}
    assert {id(p) for p in groups[1]["params"]} >= trunk and not trunk & {id(p) for p in groups[0]["params"]}
    trainer.train_step()
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"]) and groups[0]["lr"] > 0
    # a plain run keeps one group of every parameter (as its saved optimizer states have)
    plain = Trainer(config.load(None, [f"data.root={data}", *BASE]), tmp_path / "plain", progress=False)
    assert len(plain.optimizer.param_groups) == 1


def test_a_frozen_encoder_keeps_its_batch_norm_statistics(label_free, tmp_path):
    source, data = label_free
    cfg = finetune_config(Run(source), str(data), "linear", ["train.max_steps=2"])
    trainer = Trainer(cfg, tmp_path / "frozen", progress=False)
    before = trainer.raw_model.trunk.bn1.running_mean.clone()
    for _ in range(2):
        trainer.train_step()
    assert torch.equal(trainer.raw_model.trunk.bn1.running_mean, before)
    assert not trainer.raw_model.trunk.training and trainer.raw_model.classifier.training
    assert not any(p.requires_grad for p in trainer.raw_model.trunk.parameters())


def test_early_stopping_ends_a_run_that_stops_improving(tmp_path):
    data = write_class_dataset(tmp_path / "data", per_class=5, frames=4)
    cfg = config.load(None, [f"data.root={data}", *BASE, "loss.mode=supervised", "train.max_steps=60",
                             "train.val_every=1", "train.patience=2"])
    summary = train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accuracy = {line["step"]: line["val_acc"] for line in lines if "val_acc" in line}
    steps = list(accuracy)
    best = steps.index(summary["best_step"])
    # the best is the first validation with the highest accuracy; two validations without a better
    # one followed it, and the run ended there, finished, with `best` as its checkpoint
    assert summary["best_val_acc"] == max(accuracy.values()) == accuracy[summary["best_step"]]
    assert all(accuracy[s] < summary["best_val_acc"] for s in steps[:best])
    assert summary["state"] == "finished" and summary["stopped_early_at"] == steps[best + 2] == steps[-1] < 60
    assert Run(tmp_path / "run").checkpoint("auto").name == "best"


def test_a_share_of_labels_is_taken_of_the_training_videos(tmp_path):
    data = write_class_dataset(tmp_path / "data", per_class=10, frames=2)
    dataset = find_clips(data)
    splits = assign_splits(dataset, 0.2, seed=0)
    keep = labelled_mask(dataset, 0.01, seed=0, splits=splits)
    train_kept = [c.label for c, s, k in zip(dataset.clips, splits, keep) if k and s == "train"]
    assert sorted(train_kept) == ["bright", "dark"]  # one training video of each class
    assert all(k for s, k in zip(splits, keep) if s == "val")  # held-out videos keep their labels
    half = labelled_mask(dataset, 0.5, seed=0, splits=splits)
    assert sum(k for s, k in zip(splits, half) if s == "train") == 8  # half of each class's 8 training videos
    # supervised runs train on the labelled training videos only
    cfg = config.load(None, [f"data.root={data}", *BASE, "loss.mode=supervised", "data.label_fraction=0.25"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.n_train == 4 and (trainer.data.labels[trainer.data.train_idx] >= 0).all()


def test_refusals_and_the_command_line(label_free, tmp_path, capsys):
    source, data = label_free
    with pytest.raises(HiCoError, match="--head must be one of full, linear"):
        finetune_config(Run(source), str(data), "deep")
    with pytest.raises(HiCoError, match="does not exist or has no config.yaml"):
        finetune(tmp_path / "nope", tmp_path / "out", str(data), progress=False)
    with pytest.raises(HiCoError, match="leave loss.mode out"):
        finetune_config(Run(source), str(data), "full", ["loss.mode=hico"])
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for clip in list(data.rglob("*.mp4"))[:4]:
        (unlabelled / clip.name).write_bytes(clip.read_bytes())
    with pytest.raises(HiCoError, match="needs labelled clips"):
        finetune(source, tmp_path / "out", str(unlabelled), progress=False)
    assert not (tmp_path / "out").exists()  # refused before a folder was made
    # options and overrides in any order after RUN DATA
    code = main(["finetune", str(source), str(data), "--head", "linear", "--run-dir", str(tmp_path / "cli"),
                 "train.max_steps=2", "train.val_points=1"])
    out = capsys.readouterr().out
    assert code == 0 and "finished at step 2/2" in out and "best held-out accuracy" in out
    assert load_run(tmp_path / "cli").classes == ["bright", "dark"]
    assert main(["finetune", str(tmp_path / "nope"), str(data)]) == 2
    assert "does not exist or has no config.yaml" in capsys.readouterr().err
