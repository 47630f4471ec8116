"""Typed run configuration: dataclasses, YAML load/save, dotted key=value overrides, validation.

A config has the sections `data`, `model`, `loss`, `train` and the top-level `device`.
Every value a user can set is a field below; an unknown key is an error that names it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hico.errors import HiCoError
from hico.files import write_text

LEVEL_NAMES = ("P2", "P3", "P4", "P5")
# The three levels the model's heads are named by (model.levels, fine to coarse), every view of a
# frame the app and the evaluations show (the levels and the backbone's pooled features), and the
# loss modes: declared here once (this module imports no torch) and used everywhere.
LEVELS = ("local", "medium", "global")
VIEWS = (*LEVELS, "backbone")
LOSS_MODES = ("hico", "simclr", "peer", "supervised")
MAX_SIZE = 1024  # largest data.size: a 1024 px frame is 21 times a 224 px one in memory and time
# Upper bounds that no sensible run reaches (the paper trains 300 epochs at batch 32 with lr 3e-4):
# past them a value is a typo or a probe, and 2**63 epochs would overflow the step count.
MAX_EPOCHS = 100_000
MAX_STEPS = 100_000_000
MAX_BATCH = 65_536
MAX_LR = 1.0
MAX_DIM = 8192  # fpn_dim, hidden_dim, proj_dim


@dataclass
class DataConfig:
    root: str = ""  # dataset folder or CSV manifest (path,label[,split])
    size: int = 224  # input pixels (square)
    label_fraction: float = 1.0  # share of videos that keep their label
    val_fraction: float = 0.2  # share of videos held out to pick the best checkpoint
    frame_folders: bool = True  # a folder of images is one video (US-4); False: each image is a clip
    max_frames: int = 0  # frames kept per clip in the cache (evenly spaced); 0 keeps all
    max_clip_frames: int = 1000  # predict and the app refuse longer clips (use --max-frames to subsample)
    max_frame_pixels: int = 25_000_000  # largest frame (height x width) decoded; a 4K frame is 8.3 M
    max_clip_pixels: int = 300_000_000  # height x width x frames decoded per clip (976 frames of 640 x 480)
    mask_screen: bool = True  # black out all but tissue (screen border, burned-in text, scales) as predict does
    cache_dir: str = ""  # decoded-frame cache; "" means $HICO_HOME/cache
    cache_on: str = "auto"  # where a GPU run keeps decoded frames: device | host (pinned staging) | auto
    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.8, 1.25])
    flip: float = 0.5
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    mixup_alpha: float = 0.5  # frame mixup lambda ~ Beta(alpha, alpha)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # resnet18 | resnet50
    heads: str = "pooled"  # pooled | flatten
    levels: list[str] = field(default_factory=lambda: ["P2", "P3", "P5"])  # local, medium, global
    fpn_dim: int = 256
    hidden_dim: int = 256
    proj_dim: int = 256
    weights: str = ""  # optional safetensors file to start the backbone from
    classifier: str = "mlp"  # mlp (Linear, ReLU, Linear on the pooled C5) | linear (one Linear: a linear head)


@dataclass
class LossConfig:
    mode: str = "hico"  # hico | simclr | peer | supervised
    temperature: float = 0.5
    peer_weight: float = 0.5
    cross_weight: float = 0.5
    sup_weight: float = 0.2
    label_smoothing: float = 0.2
    cross_pairing: str = "same_view"  # same_view (the code) | cross_view (the paper's figure)


@dataclass
class TrainConfig:
    batch_size: int = 32  # videos per step; each gives two views
    epochs: int = 300
    max_steps: int = 0  # 0: epochs decide
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: str = "constant"  # constant (the code) | linear
    warmup_epochs: float = 10.0
    seed: int = 0
    log_every: int = 10  # steps between metrics.jsonl lines
    val_every: int = 1  # epochs between held-out evaluations (0: never)
    val_points: int = 0  # if > 0: validate this many times, evenly over the run's steps, instead of val_every
    val_frames: int = 4  # evenly spaced frames per video embedded at each validation (accuracy, timeline)
    checkpoint_every: int = 0  # steps between `last` checkpoints; 0: once per epoch
    max_minutes: float = 0.0  # stop (with a checkpoint, resumable) after this many minutes of one process; 0: no limit
    patience: int = 0  # early stopping: end after this many validations without a better held-out score; 0: never
    backbone_lr: float = 1.0  # the trunk's and pyramid's learning rate as a share of train.lr (fine-tuning: 0.1)
    freeze_encoder: bool = False  # train only the classifier and probes: trunk, pyramid, heads and their batch norm fixed
    sync_bn: bool = False  # with several ranks (torchrun): batch statistics over all ranks
    compile: str = "none"  # none | default | reduce-overhead (CUDA graphs) | max-autotune: torch.compile the model
    cuda_graph: bool = True  # on a CUDA GPU, one process, compile=none: each step is one captured CUDA graph


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "data.cache_on": ("auto", "device", "host"),
    "model.backbone": ("resnet18", "resnet50"),
    "model.heads": ("pooled", "flatten"),
    "model.classifier": ("mlp", "linear"),
    "loss.mode": LOSS_MODES,
    "loss.cross_pairing": ("same_view", "cross_view"),
    "train.warmup": ("constant", "linear"),
    "train.compile": ("none", "default", "reduce-overhead", "max-autotune"),
}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Return `value` as the type `hint` asks for, or raise HiCoError naming `key`."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise HiCoError(f"Config key {key} must be a list, got {value!r:.80}.")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise HiCoError(f"Config key {key} must be true or false, got {value!r:.80}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise HiCoError(f"Config key {key} must be a whole number, got {value!r:.80}.")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise HiCoError(f"Config key {key} must be a number, got {value!r:.80}.")
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool) and key in CHOICES:  # YAML 1.1 reads off, no, on, yes as booleans
            raise HiCoError(f"Config key {key} must be one of {', '.join(CHOICES[key])}, got {value!r:.80} "
                            f"(YAML reads off/on/no/yes as true or false).")
        raise HiCoError(f"Config key {key} must be text, got {value!r:.80}.")
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def _fill(obj: Any, values: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            known = ", ".join(sorted(names))
            raise HiCoError(f"Unknown config key {key} (known keys here: {known}).")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise HiCoError(f"Config section {key} must be a mapping of keys to values.")
            _fill(current, value, f"{key}.")
        else:
            setattr(obj, name, _coerce(key, value, hints[name]))


def from_dict(values: dict[str, Any] | None) -> Config:
    """Build and validate a Config from nested dicts (as read from YAML)."""
    cfg = Config()
    _fill(cfg, values or {}, "")
    validate(cfg)
    return cfg


# Keys added after runs were first written, with the value a run that predates them was trained
# with (not today's default): a run from before data.mask_screen existed saw its frames unmasked.
LEGACY_DEFAULTS = {("data", "mask_screen"): False}


def run_config(values: dict[str, Any] | None) -> Config:
    """The config of an existing run (its checkpoint sidecar or config.yaml), with keys it predates
    set as that run behaved (LEGACY_DEFAULTS). Training, embedding, Explore, familiarity and
    prediction read a run's preprocessing (data.size, data.mask_screen, ...) from this one Config."""
    values = yaml.safe_load(yaml.safe_dump(values or {})) or {}
    for (section, key), value in LEGACY_DEFAULTS.items():
        node = values.setdefault(section, {})
        if isinstance(node, dict):
            node.setdefault(key, value)
    return from_dict(values)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value` into its dotted path and a YAML-parsed value."""
    if "=" not in text:
        raise HiCoError(f"Override {text!r} must look like section.key=value.")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested `values` with each `a.b=value` override set."""
    out = yaml.safe_load(yaml.safe_dump(values)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise HiCoError(f"Override {text!r}: {part} is not a config section.")
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HiCoError(f"Config file {path} does not exist.")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise HiCoError(f"Config file {path} is not valid YAML{where}.") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise HiCoError(f"Config file {path} must hold a mapping of sections, not {type(values).__name__}.")
    return values


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from the defaults), apply overrides, validate."""
    values = read_yaml(path) if path else {}
    return from_dict(apply_overrides(values, overrides or []))


def save(cfg: Config, path: str | Path) -> None:
    """Write the config as YAML, all-or-nothing."""
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def validate(cfg: Config) -> None:
    """Check ranges and choices; raise HiCoError naming the first bad key."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise HiCoError(f"Config key {key} must be one of {', '.join(allowed)}, got {value!r:.80}.")
    d, m, lo, t = cfg.data, cfg.model, cfg.loss, cfg.train
    checks = [
        # at most MAX_SIZE: one frame's cache, activations and every batch grow with its square
        ("data.size", 32 <= d.size <= MAX_SIZE, f"between 32 and {MAX_SIZE} pixels"),
        ("data.label_fraction", 0.0 <= d.label_fraction <= 1.0, "between 0 and 1"),
        ("data.val_fraction", 0.0 <= d.val_fraction < 1.0, "at least 0 and below 1"),
        ("data.max_frames", d.max_frames >= 0, "0 (all) or more"),
        ("data.max_clip_frames", d.max_clip_frames >= 1, "at least 1"),
        ("data.max_frame_pixels", d.max_frame_pixels >= 1, "at least 1"),
        ("data.max_clip_pixels", d.max_clip_pixels >= 1, "at least 1"),
        ("data.crop_scale", len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1, "[min, max] within (0, 1]"),
        ("data.crop_ratio", len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1], "[min, max] above 0"),
        ("data.flip", 0.0 <= d.flip <= 1.0, "a probability between 0 and 1"),
        ("data.brightness", 0.0 <= d.brightness <= 1.0, "between 0 and 1"),
        ("data.contrast", 0.0 <= d.contrast <= 1.0, "between 0 and 1"),
        ("data.saturation", 0.0 <= d.saturation <= 1.0, "between 0 and 1"),
        ("data.hue", 0.0 <= d.hue <= 0.5, "between 0 and 0.5"),
        ("data.mixup_alpha", d.mixup_alpha > 0, "above 0"),
        ("model.levels", len(m.levels) == 3 and all(v in LEVEL_NAMES for v in m.levels)
         and m.levels == sorted(set(m.levels)), "three of P2, P3, P4, P5 from fine to coarse (local, medium, global)"),
        ("model.fpn_dim", 1 <= m.fpn_dim <= MAX_DIM, f"between 1 and {MAX_DIM}"),
        ("model.hidden_dim", 1 <= m.hidden_dim <= MAX_DIM, f"between 1 and {MAX_DIM}"),
        ("model.proj_dim", 1 <= m.proj_dim <= MAX_DIM, f"between 1 and {MAX_DIM}"),
        ("loss.temperature", 0.01 <= lo.temperature <= 10, "between 0.01 and 10"),
        ("loss.peer_weight", 0 <= lo.peer_weight <= 100, "between 0 and 100"),
        ("loss.cross_weight", 0 <= lo.cross_weight <= 100, "between 0 and 100"),
        ("loss.sup_weight", 0 <= lo.sup_weight <= 100, "between 0 and 100"),
        ("loss.label_smoothing", 0.0 <= lo.label_smoothing < 1.0, "at least 0 and below 1"),
        ("train.batch_size", 1 <= t.batch_size <= MAX_BATCH, f"between 1 and {MAX_BATCH:,}"),
        ("train.epochs", 1 <= t.epochs <= MAX_EPOCHS, f"between 1 and {MAX_EPOCHS:,}"),
        ("train.max_steps", 0 <= t.max_steps <= MAX_STEPS, f"0 (epochs decide) to {MAX_STEPS:,}"),
        ("train.lr", 0 < t.lr <= MAX_LR, f"above 0 and at most {MAX_LR:g}"),
        ("train.weight_decay", 0 <= t.weight_decay <= 1, "between 0 and 1"),
        ("train.warmup_epochs", 0 <= t.warmup_epochs <= MAX_EPOCHS, f"between 0 and {MAX_EPOCHS:,}"),
        ("train.log_every", t.log_every >= 1, "at least 1"),
        ("train.val_every", t.val_every >= 0, "0 (never) or more"),
        ("train.val_points", 0 <= t.val_points <= 1000, "0 (val_every decides) to 1000"),
        ("train.val_frames", 1 <= t.val_frames <= 256, "between 1 and 256"),
        ("train.checkpoint_every", t.checkpoint_every >= 0, "0 (each epoch) or more"),
        ("train.max_minutes", 0 <= t.max_minutes <= 10**7, "0 (no limit) or a number of minutes"),
        ("train.patience", 0 <= t.patience <= 10_000, "0 (never stop early) to 10,000 validations"),
        ("train.backbone_lr", 0 <= t.backbone_lr <= 1, "between 0 and 1 (a share of train.lr)"),
    ]
    for key, ok, want in checks:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise HiCoError(f"Config key {key} must be {want}, got {value!r:.80}.")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise HiCoError(f"Config key device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}.")


def keys() -> list[tuple[str, Any]]:
    """Every config key with its default, in order, for docs and forms."""
    out = []
    for section in dataclasses.fields(Config):
        default = getattr(Config(), section.name)
        if dataclasses.is_dataclass(default):
            for f in dataclasses.fields(default):
                out.append((f"{section.name}.{f.name}", getattr(default, f.name)))
        else:
            out.append((section.name, default))
    return out

