"""Config: defaults, YAML, overrides, and validation messages that name the key."""

import re
import pytest

from hico import config
from hico.errors import HiCoError


def test_defaults_follow_the_published_method():
    cfg = config.Config()
    assert (cfg.loss.temperature, cfg.loss.peer_weight, cfg.loss.cross_weight) == (0.5, 0.5, 0.5)
    assert (cfg.loss.sup_weight, cfg.loss.label_smoothing) == (0.2, 0.2)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size) == (3e-4, 1e-4, 32)
    assert cfg.model.levels == ["P2", "P3", "P5"] and cfg.data.size == 224


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  size: 64\ntrain:\n  batch_size: 4\n")
    cfg = config.load(path, ["train.batch_size=8", "loss.mode=peer", "model.levels=[P2, P4, P5]", "device=cpu",
                             "train.lr=1e-3"])
    assert cfg.train.lr == 0.001
    assert (cfg.data.size, cfg.train.batch_size, cfg.loss.mode, cfg.device) == (64, 8, "peer", "cpu")
    assert cfg.model.levels == ["P2", "P4", "P5"]
    config.save(cfg, tmp_path / "out.yaml")
    assert config.load(tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize("override,needle", [
    ("train.batchsize=4", "Unknown config key train.batchsize"),
    ("nope.x=1", "Unknown config key nope"),
    ("train.batch_size=0", "train.batch_size must be between 1 and 65,536, got 0"),
    # issue 19: what a client sent the server, accepted before; bounded now
    ("train.epochs=1000000000", "train.epochs must be between 1 and 100,000, got 1000000000"),
    (f"train.epochs={2**63}", "train.epochs must be between 1 and 100,000"),
    ("train.lr=1e308", "train.lr must be above 0 and at most 1, got 1e+308"),
    ("train.lr=.nan", "train.lr must be above 0 and at most 1, got nan"),
    ("train.max_steps=1000000000000", "train.max_steps must be 0 (epochs decide) to 100,000,000"),
    ("train.batch_size=100000", "train.batch_size must be between 1 and 65,536, got 100000"),
    ("loss.temperature=0.0001", "loss.temperature must be between 0.01 and 10"),
    ("train.max_minutes=-1", "train.max_minutes must be 0 (no limit) or a number of minutes"),
    ("train.batch_size=abc", "train.batch_size must be a whole number"),
    ("loss.mode=byol", "loss.mode must be one of hico, simclr, peer, supervised"),
    ("data.label_fraction=1.5", "data.label_fraction"),
    ("model.levels=[P5, P3, P2]", "model.levels"),
    ("device=tpu", "device must be"),
    ("train.compile=off", "train.compile must be one of none, default, reduce-overhead, max-autotune, got False"),
    ("data.cache_on=gpu", "data.cache_on must be one of auto, device, host"),
    ("data.size=100000", "data.size must be between 32 and 1024 pixels, got 100000"),
    ("train.cuda_graph=maybe", "train.cuda_graph"),
    ("train", "must look like section.key=value"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(HiCoError, match=re.escape(needle)):
        config.load(None, [override])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(HiCoError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(HiCoError, match="not valid YAML"):
        config.load(bad)


def test_shipped_configs_load():
    for name in ("tiny", "demo", "paper"):
        cfg = config.load(f"configs/{name}.yaml")
        assert cfg.model.backbone == "resnet18"
    assert config.load("configs/paper.yaml").model.heads == "flatten"


def test_readme_documents_every_config_key():
    readme = open("README.md").read()
    missing = [key for key, _ in config.keys() if f"| `{key}` |" not in readme]
    assert missing == []
