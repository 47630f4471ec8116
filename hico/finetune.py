"""Fine-tuning: a classifier for a labelled dataset from a pretrained run, the paper's downstream
protocol. The result is an ordinary run folder, so `hico predict`, Diagnose and Explore open it.

Two heads:

    full     the whole network trains: classifier, level probes, trunk and pyramid, the latter
             at a tenth of the learning rate (train.backbone_lr = 0.1), so the pretrained
             features are adjusted rather than overwritten by a freshly initialised head
    linear   a single Linear layer on the pooled C5 (model.classifier = linear) and the linear
             level probes train on frozen features (train.freeze_encoder: trunk, pyramid, heads
             and their batch-norm statistics fixed): linear evaluation, and a quick way to turn
             a label-free run into one that diagnoses

Both train `loss.mode=supervised` (label-smoothed cross-entropy on both augmented views) on the
labelled training videos only, for FINETUNE_STEPS steps, and validate FINETUNE_VALIDATIONS times
on the held-out videos (data.val_fraction of each class's videos, split by video, never by frame):
the checkpoint with the best held-out classifier accuracy is kept as `best`, and the run ends
early when FINETUNE_PATIENCE validations in a row bring no better one. Any config key can be
overridden (`train.max_steps=600`, `data.label_fraction=0.1`, ...); the pretrained run's model
(backbone, levels, heads, sizes), input size and augmentation are kept.

The fine-tuned run starts from RUN_DIR/init.safetensors, a copy of the pretrained checkpoint's
encoder (trunk, pyramid and projection heads), so it is complete on its own and resumes even if
the pretrained run is deleted; RUN_DIR/finetune.json says what it came from.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from safetensors.torch import save_file

from hico import config as config_mod
from hico import runs
from hico.checkpoint import load_checkpoint_weights
from hico.config import Config
from hico.errors import HiCoError
from hico.files import atomic_path, write_json
from hico.paths import hico_home
from hico.runs import Run

HEADS = ("full", "linear")
FINETUNE_STEPS = 300
FINETUNE_VALIDATIONS = 15
FINETUNE_PATIENCE = 5
ENCODER_PREFIXES = ("trunk.", "fpn.", "heads.")  # what a fine-tune starts from; classifier and probes are new
INIT, SOURCE = "init.safetensors", "finetune.json"

# What each head sets on top of the pretrained run's config (before the user's overrides).
HEAD_SETTINGS = {
    "full": {"model.classifier": "mlp", "train.freeze_encoder": False, "train.backbone_lr": 0.1, "train.lr": 3e-4},
    "linear": {"model.classifier": "linear", "train.freeze_encoder": True, "train.backbone_lr": 1.0, "train.lr": 1e-3},
}


def finetune_config(source: Run, data_root: str = "", head: str = "full", overrides: list[str] | None = None,
                    checkpoint: str = "auto") -> Config:
    """The config of a fine-tune of `source` on `data_root` (default: the source's own dataset).

    Keeps the source's model and data preparation; sets loss.mode=supervised, the head's settings
    (HEAD_SETTINGS), FINETUNE_STEPS steps with FINETUNE_VALIDATIONS validations and
    FINETUNE_PATIENCE, every label used (data.label_fraction=1); then applies `overrides`.
    HiCoError when the source has no config or no such checkpoint, or a value is wrong."""
    if head not in HEADS:
        raise HiCoError(f"--head must be one of {', '.join(HEADS)}, got {head!r:.40}.")
    if not source.config_file.is_file():
        raise HiCoError(f"Run {source.path} does not exist or has no config.yaml.")
    source.checkpoint(checkpoint)  # a run without that checkpoint is refused before anything is written
    values = source.config.to_dict()
    values["data"]["root"] = data_root or values["data"]["root"]
    values["data"]["label_fraction"] = 1.0
    values["loss"]["mode"] = "supervised"
    values["model"]["weights"] = ""  # set by finetune() to the copy of the encoder in the new run
    values["train"].update(max_steps=FINETUNE_STEPS, val_points=FINETUNE_VALIDATIONS, patience=FINETUNE_PATIENCE,
                           warmup="linear", warmup_epochs=1.0, max_minutes=0.0)
    for key, value in HEAD_SETTINGS[head].items():
        section, name = key.split(".")
        values[section][name] = value
    values = config_mod.apply_overrides(values, list(overrides or []))
    cfg = config_mod.from_dict(values)
    if cfg.loss.mode != "supervised":
        raise HiCoError(f"A fine-tune trains loss.mode=supervised; leave loss.mode out of the overrides "
                        f"(got {cfg.loss.mode}).")
    if not cfg.data.root:
        raise HiCoError(f"Run {source.path} has no dataset in its config; give the labelled dataset to fine-tune on.")
    return cfg


def write_init(source: Run, run_dir: Path, which: str = "auto") -> dict:
    """Copy the encoder of `source`'s checkpoint `which` into run_dir/init.safetensors and say
    where it came from in run_dir/finetune.json; returns that record."""
    chosen = source.checkpoint(which)
    weights, _ = load_checkpoint_weights(source.checkpoints, chosen.name)
    encoder = {k: v.contiguous() for k, v in weights.items() if k.startswith(ENCODER_PREFIXES)}
    if not encoder:
        raise HiCoError(f"Checkpoint {chosen.name} of run {source.path} holds no encoder weights.")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / INIT) as tmp:
        save_file(encoder, str(tmp))
    record = {"run": source.name, "path": str(source.path), "checkpoint": chosen.name, "step": chosen.step,
              "mode": source.config.loss.mode, "sup_weight": source.config.loss.sup_weight,
              "label_fraction": source.config.data.label_fraction}
    write_json(run_dir / SOURCE, record)
    return record


def read_source(run_dir: str | Path) -> dict | None:
    """finetune.json of a fine-tuned run (what it was fine-tuned from), or None."""
    try:
        return json.loads((Path(run_dir) / SOURCE).read_text())
    except (OSError, ValueError):
        return None


def default_run_dir(source: Run, head: str) -> Path:
    return hico_home() / "runs" / f"{source.name}-ft-{head}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_run(source: Run, run_dir: Path, cfg: Config, checkpoint: str = "auto") -> Config:
    """Make the fine-tune's folder from its config (finetune_config, checked): init.safetensors,
    finetune.json and config.yaml with model.weights naming the copy. Returns that config, which
    `hico train --config RUN_DIR/config.yaml --run-dir RUN_DIR` (the app) or hico.train.train trains."""
    write_init(source, run_dir, checkpoint)
    values = cfg.to_dict()
    values["model"]["weights"] = str(run_dir / INIT)
    cfg = config_mod.from_dict(values)
    config_mod.save(cfg, run_dir / runs.CONFIG)
    return cfg


def prepare(source: str | Path | Run, run_dir: str | Path, data_root: str = "", head: str = "full",
            overrides: list[str] | None = None, checkpoint: str = "auto") -> Config:
    """Check everything, then make the fine-tune's folder (write_run). Returns the config for
    hico.train.train. HiCoError (and no folder) when the source, the dataset or an override is wrong."""
    from hico.train import check_config

    source = Run.of(source)
    run_dir = Path(run_dir).expanduser()
    cfg = finetune_config(source, data_root, head, overrides, checkpoint)
    if Run(run_dir).checkpoints.exists():
        raise HiCoError(f"Run folder {run_dir} already holds a run; pick another --run-dir.")
    check_config(cfg)  # device, dataset, labels: before the folder exists
    return write_run(source, run_dir, cfg, checkpoint)


def finetune(source: str | Path | Run, run_dir: str | Path, data_root: str = "", head: str = "full",
             overrides: list[str] | None = None, checkpoint: str = "auto", progress: bool = True) -> dict:
    """Fine-tune `source` into `run_dir` (see the module docstring); returns the run's summary."""
    from hico.train import train

    cfg = prepare(source, run_dir, data_root, head, overrides, checkpoint)
    return train(cfg, run_dir, progress=progress)
