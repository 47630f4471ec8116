"""`hico compare`: loss modes at equal steps and seeds, the untrained baseline, the tables."""

import numpy as np
import pandas as pd
import pytest
import torch

from hico import config
from hico.__main__ import main
from hico.compare import Plan, compare, markdown_table, measure_batch_norm, parse_modes, summarise
from hico.errors import HiCoError
from hico.evaluate import FEATURES
from hico.runs import read_run
from tests.conftest import tiny_run_config


def test_measure_batch_norm_takes_the_mean_of_the_batch_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, bias=False), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4, 3).view(4, 3, 1, 1))  # channel c of the output is input channel c
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (12, 3, 5, 5), dtype=np.uint8))
    rows = np.arange(12)
    model.eval()
    measure_batch_norm(model, frames, rows, torch.device("cpu"), batch=4)
    x = (frames.float() / 255 - 0.5) / 0.25  # the model's input normalisation
    batches = x.view(3, 4, 3, 5, 5)
    mean = batches.mean(dim=(1, 3, 4)).mean(dim=0)  # per channel: the mean of the three batch means
    var = batches.var(dim=(1, 3, 4), unbiased=True).mean(dim=0)
    bn = model[1]
    assert torch.allclose(bn.running_mean[:3], mean, atol=1e-5)
    assert torch.allclose(bn.running_var[:3], var, atol=1e-4)
    assert bn.running_mean[3] == 0 and bn.momentum == 0.1 and not model.training


def test_parse_modes_checks_every_name():
    assert parse_modes("hico, simclr,hico") == ("hico", "simclr")
    with pytest.raises(HiCoError, match="--modes"):
        parse_modes("hico,byol")
    with pytest.raises(HiCoError, match="not a run name"):
        Plan("../x", config.load(None), ("hico",), (0,), "runs", "out")


def test_summary_is_mean_and_std_over_seeds():
    rows = []
    for mode, base in (("untrained", 0.5), ("hico", 0.7)):
        for seed in (0, 1):
            for feature in FEATURES:
                rows.append({"mode": mode, "seed": seed, "feature": feature, "linear_acc": base + 0.1 * seed,
                             "knn_acc": base, "linear_video_acc": base, "knn_video_acc": base})
    summary = summarise(pd.DataFrame(rows))
    assert list(summary["mode"]) == ["untrained"] * 5 + ["hico"] * 5
    assert list(summary["feature"][:5]) == list(FEATURES)
    row = summary[(summary["mode"] == "hico") & (summary["feature"] == "global")].iloc[0]
    assert row["linear_acc_mean"] == pytest.approx(0.75)
    assert row["linear_acc_std"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    assert row["seeds"] == 2
    table = markdown_table(summary)
    assert "| hico | **0.750 ± 0.071** |" in table  # local comes first and ties go to the first level
    assert table.count("\n") == 4


@pytest.fixture(scope="module")
def compared(module_tmp):
    base = module_tmp("compare")
    _, cfg = tiny_run_config(base, per_class=4, frames=4)
    plan = Plan("t", cfg, ("untrained", "hico", "simclr"), (0, 1), base / "runs", base / "out", folds=2)
    return plan, compare(plan, progress=False)


def test_compare_trains_every_mode_and_seed_and_writes_the_tables(compared):
    plan, summary = compared
    assert len(summary) == 3 * len(FEATURES)
    assert set(summary["seeds"]) == {2}
    for column in ("linear_acc_mean", "knn_acc_mean"):
        assert summary[column].between(0, 1).all()
    results = pd.read_csv(plan.out_dir / "results.csv")
    assert len(results) == 3 * 2 * len(FEATURES)
    assert sorted(results["run"].unique()) == sorted(f"t-{m}-s{s}" for m in ("untrained", "hico", "simclr")
                                                     for s in (0, 1))
    assert "± " in (plan.out_dir / "summary.md").read_text()
    assert (plan.out_dir / "compare.html").stat().st_size > 100_000  # plotly inlined: opens offline
    for mode in ("hico", "simclr"):
        info = read_run(plan.run_dir(mode, 0))
        assert info.state == "finished" and info.step == 2
        assert info.config["loss"]["mode"] == mode and info.config["train"]["seed"] == 0
    untrained = read_run(plan.run_dir("untrained", 1))
    assert untrained.state == "finished" and untrained.step == 0 and "last" in untrained.checkpoints


def test_every_mode_of_a_seed_starts_from_the_same_weights(compared):
    from safetensors.torch import load_file

    from hico.checkpoint import checkpoint_file, read_sidecar

    plan, _ = compared
    folder = plan.run_dir("untrained", 0) / "checkpoints"
    weights = load_file(checkpoint_file(folder, "last", "weights", read_sidecar(folder, "last")))
    other_seed = plan.run_dir("untrained", 1) / "checkpoints"
    other = load_file(checkpoint_file(other_seed, "last", "weights", read_sidecar(other_seed, "last")))
    conv = next(k for k in weights if k.endswith("conv1.weight"))
    assert not torch.equal(weights[conv], other[conv])  # seeds differ
    # the untrained run of seed 0 holds the network every seed-0 mode started from (bn aside)
    from hico.model import build_model

    torch.manual_seed(0)
    fresh = build_model(plan.config("hico", 0), 2).state_dict()
    assert torch.equal(fresh[conv], weights[conv])


def test_compare_again_reuses_the_runs_and_adds_a_seed(compared, monkeypatch):
    plan, summary = compared
    calls = []
    import hico.train

    real = hico.train.train
    monkeypatch.setattr(hico.train, "train", lambda cfg, run_dir, **kw: calls.append(run_dir) or real(cfg, run_dir, **kw))
    again = compare(plan, progress=False)
    assert calls == []
    pd.testing.assert_frame_equal(again, summary)
    plan.modes, plan.seeds = ("hico",), (0, 1, 2)
    compare(plan, progress=False)
    assert calls == [plan.run_dir("hico", 2)]


def test_cli_compare_prints_the_summary(compared, capsys, tmp_path):
    plan, _ = compared
    data = plan.cfg.data.root
    code = main(["compare", "--config", "configs/tiny.yaml", "--modes", "untrained", "--seeds", "1", "--name", "cli",
                 "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"), "--folds", "2",
                 f"data.root={data}", "data.size=32", "device=cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "untrained" in out and "linear_acc_mean" in out
    assert (tmp_path / "out" / "summary.csv").is_file()
    assert main(["compare", "--config", "configs/tiny.yaml", "--seeds", "0"]) == 2
