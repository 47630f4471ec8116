"""The label-efficiency study: runs named and reused, labelled shares, both protocols, tables and plots."""

import json

import pandas as pd
import pytest

from hico import config
from hico.__main__ import main
from hico.errors import HiCoError
from hico.label_efficiency import (Study, convergence, labelled_videos, parse_modes, parse_shares, run_study,
                                   share_tag, steps_to_reach)
from hico.runs import read_run
from tests.conftest import write_class_dataset


@pytest.fixture(scope="module")
def study(module_tmp):
    base = module_tmp("labels")
    train = write_class_dataset(base / "train", per_class=5, frames=3)
    test = write_class_dataset(base / "test", per_class=2, frames=3)
    cfg = config.load(None, [f"data.root={train}", "data.size=32", "train.batch_size=4", "train.max_steps=3",
                             "train.val_points=3", "train.warmup_epochs=0", "train.log_every=1", "device=cpu"])
    plan = Study("tiny", cfg, str(test), modes=("hico", "supervised"), shares=(0.25, 1.0),
                 seeds=(0,), runs_dir=base / "runs", out_dir=base / "out", finetune_steps=2)
    return plan, run_study(plan, progress=False)


def test_every_mode_share_and_protocol_is_measured(study):
    plan, summary = study
    results = pd.read_csv(plan.out_dir / "results.csv")
    # 2 modes x 2 shares x (5 probe features + the fine-tuned classifier)
    assert len(results) == 2 * 2 * 6 and set(results["protocol"]) == {"probe", "finetune"}
    assert results["acc"].between(0, 1).all() and results["video_acc"].between(0, 1).all()
    # 8 training videos (2 of 10 held out); 25 % of each class's 4 is one video each, 100 % all 8
    assert dict(zip(results["share"], results["labelled_videos"])) == {0.25: 2, 1.0: 8}
    assert set(results["train_videos"]) == {8}
    assert len(summary) == 2 * 2 * 2 and set(summary["seeds"]) == {1}
    probe = summary[summary["protocol"] == "probe"]
    assert set(probe["feature"]) <= {"local", "medium", "global", "backbone", "concat"}
    assert set(summary[summary["protocol"] == "finetune"]["feature"]) == {"classifier"}


def test_runs_are_named_configured_and_reused(study):
    plan, _ = study
    names = sorted(p.name for p in plan.runs_dir.iterdir())
    # label-free runs serve every share; a supervised run is its own fine-tune
    assert names == sorted(["tiny-hico-s0", "tiny-p25-supervised-s0", "tiny-p100-supervised-s0",
                            "tiny-hico-s0-ft-p25", "tiny-hico-s0-ft-p100"])
    free = config.load(plan.runs_dir / "tiny-hico-s0" / "config.yaml")
    assert (free.loss.mode, free.data.label_fraction) == ("hico", 0.0)
    sup = plan.pretrain_config("hico-sup", 0, 0.25)
    assert (sup.loss.mode, sup.data.label_fraction) == ("hico", 0.25)
    assert plan.pretrain_dir("hico-sup", 1, 0.25).name == "tiny-p25-hico-sup-s1"
    assert plan.finetune_dir("hico-sup", 1, 0.25).name == "tiny-p25-hico-sup-s1-ft-p25"
    assert plan.pretrain_config("untrained", 0, 1.0).data.label_fraction == 0.0
    assert config.load(plan.runs_dir / "tiny-p25-supervised-s0" / "config.yaml").loss.mode == "supervised"
    tuned = config.load(plan.runs_dir / "tiny-hico-s0-ft-p25" / "config.yaml")
    assert (tuned.loss.mode, tuned.data.label_fraction, tuned.train.max_steps, tuned.train.patience) == (
        "supervised", 0.25, 2, 0)
    assert read_run(plan.runs_dir / "tiny-hico-s0-ft-p25").step == 2
    # the fine-tune and the hico-sup run of a share train on the same labelled videos
    videos, _ = labelled_videos(sup, 0.25)
    assert len(videos) == 2 and labelled_videos(tuned, 0.25)[0] == videos
    stamps = {p.name: (p / "status.json").stat().st_mtime for p in plan.runs_dir.iterdir()}
    again = run_study(plan, progress=False)  # everything is reused: nothing trains again
    assert {p.name: (p / "status.json").stat().st_mtime for p in plan.runs_dir.iterdir()} == stamps
    assert again[["acc_mean", "acc_std"]].to_numpy().tolist() == study[1][["acc_mean", "acc_std"]].to_numpy().tolist()
    cache = json.loads((plan.runs_dir / "tiny-hico-s0" / "label_efficiency.json").read_text())
    assert len(cache) == 2  # one entry per share


def test_tables_plot_and_convergence(study):
    plan, _ = study
    text = (plan.out_dir / "summary.md").read_text()
    assert "| mode | 25 % | 100 % |" in text and "Fine-tuned (2 steps, full network)" in text
    assert "Labelled videos per share: 25 %: 2, 100 %: 8." in text
    html = (plan.out_dir / "compare.html").read_text()
    assert "Held-out kNN accuracy while pretraining" in html and "labelled training videos" in html
    curves = pd.read_csv(plan.out_dir / "convergence.csv")
    # 3 validations of hico (label-free: share 0) and of each share's supervised run
    assert len(curves) == 3 * (1 + 2) and set(curves["step"]) == {1, 2, 3}
    assert set(zip(curves["mode"], curves["share"])) == {("hico", 0.0), ("supervised", 0.25), ("supervised", 1.0)}
    assert curves["acc_mean"].between(0, 1).all() and (curves["seeds"] == 1).all()
    assert convergence(plan)["acc_mean"].tolist() == curves["acc_mean"].tolist()


def test_steps_to_reach():
    curves = pd.DataFrame({"mode": ["hico"] * 3 + ["simclr"] * 3, "share": [0.0] * 6, "step": [10, 20, 30] * 2,
                           "acc_mean": [0.4, 0.6, 0.7, 0.5, 0.55, 0.6]})
    assert steps_to_reach(curves, 0.6) == {"hico": 20, "simclr": 30}
    assert steps_to_reach(curves, 0.65) == {"hico": 30, "simclr": None}


def test_arguments_are_checked(tmp_path):
    assert parse_shares("1, 0.1,0.01") == (0.01, 0.1, 1.0)
    assert [share_tag(s) for s in (0.01, 0.1, 1.0, 0.005)] == ["1", "10", "100", "0.5"]
    assert parse_modes("hico,simclr,hico") == ("hico", "simclr")
    for bad in ("0", "1.5", "a", ""):
        with pytest.raises(HiCoError, match="--shares"):
            parse_shares(bad)
    with pytest.raises(HiCoError, match="--modes must list some of"):
        parse_modes("hico,byol")
    cfg = config.load(None, [f"data.root={tmp_path}"])
    with pytest.raises(HiCoError, match="another dataset than data.root"):
        Study("x", cfg, str(tmp_path))
    with pytest.raises(HiCoError, match="needs --eval-data"):
        Study("x", cfg, "")
    assert main(["label-efficiency", "--config", "configs/tiny.yaml", "--eval-data", str(tmp_path),
                 "--shares", "2"]) == 2
