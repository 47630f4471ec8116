"""The HiCo training loop: data, model, Adam with warm-up and cosine decay, AMP, checkpoints,
metrics.jsonl, status.json, clean stop and exact resume.

Randomness: the batch order of epoch e comes from a numpy Generator seeded with (seed, e), and
every random number of step s (frames, mixup, augmentation) from one seeded with (seed, s). A run
resumed at step k therefore replays steps k+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hico import __version__
from hico import config as config_mod
from hico import distributed, familiarity, held_out, runs, timeline
from hico.checkpoint import (checkpoint_file, clean_checkpoints, load_init_weights, load_state, load_weights,
                             read_sidecar, save_checkpoint)
from hico.config import Config
from hico.data import FrameCache, assign_splits, build_cache, find_clips, held_out_note, labelled_mask, sample_views
from hico.data.dataset import Dataset
from hico.data.views import gather_frames, host_to_device
from hico.errors import HiCoError
from hico.files import write_json
from hico.graph_step import CapturedStep
from hico.inference import embed_frames, freeze, resolve_device
from hico.io import ClipLimits
from hico.losses import TERMS, HiCoLoss, probe_loss
from hico.metrics import MetricWindow
from hico.model import architecture, build_model, encoder_parameters
from hico.paths import expand_path, hico_home
from hico.runs import Run
from hico.spectrum import effective_ranks
from hico.val_accuracy import level_accuracies, spaced_frames

log = logging.getLogger(__name__)
# Logged beside the loss terms: the per-level linear probes' cross-entropy (detached features,
# so it trains the probes and never the encoder).
METRIC_TERMS = (*TERMS, "probe")
# data.cache_on=auto keeps the decoded frames on the GPU when they take at most this share of its
# free memory; the rest is for the model, its activations and the optimizer.
CACHE_SHARE = 0.5
EMBED_CHUNK = 256  # watched frames gathered from the cache at a time


@dataclass
class TrainingData:
    """The dataset with its splits and labels, and the frame cache of the training and held-out videos."""

    dataset: Dataset
    splits: list[str]
    labels: np.ndarray  # per clip: class index, or -1 when unlabelled or its label is withheld
    train_idx: np.ndarray  # clip indices used for training
    val_idx: np.ndarray  # clip indices held out to pick the best checkpoint
    cache: FrameCache  # frames of train_idx then val_idx, in that order


def prepare_data(cfg: Config, progress: bool = True, dataset: Dataset | None = None) -> TrainingData:
    """Splits, labels and the frame cache of cfg's dataset (`dataset`: its clips, if already found)."""
    d = cfg.data
    dataset = dataset or find_clips(d.root, d.frame_folders)
    splits = assign_splits(dataset, d.val_fraction, cfg.train.seed)
    note = held_out_note(splits, d.val_fraction)
    if note:
        log.warning(note)
    keep = labelled_mask(dataset, d.label_fraction, cfg.train.seed, splits)
    labels = np.array([dataset.label_index(c) if keep[i] else -1 for i, c in enumerate(dataset.clips)], dtype=np.int64)
    train_idx = np.array([i for i, s in enumerate(splits) if s == "train"], dtype=np.int64)
    if cfg.loss.mode == "supervised":  # nothing to learn from an unlabelled video: train on the labelled share only
        train_idx = train_idx[labels[train_idx] >= 0]
    val_idx = np.array([i for i, s in enumerate(splits) if s == "val"], dtype=np.int64)
    order = np.concatenate([train_idx, val_idx])
    cache_dir = expand_path(d.cache_dir) if d.cache_dir else None
    cache = build_cache([dataset.clips[i].path for i in order], d.size, d.max_frames, cache_dir, progress,
                        limits=ClipLimits.from_config(d), mask_screen=d.mask_screen)
    return TrainingData(dataset, splits, labels, train_idx, val_idx, cache)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate at `step`: warm-up (constant or linear), then cosine to 0."""
    if step < warmup:
        return 1.0 if kind == "constant" else (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def batch_videos(step: int, n_train: int, batch: int, seed: int) -> np.ndarray:
    """Positions (into the training videos) of the batch at `step`; epochs are seeded permutations."""
    per_epoch = max(n_train // batch, 1)
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch, 7]).permutation(n_train)
    return perm[i * batch:(i + 1) * batch]


class _StopFlag:
    """Set by SIGTERM/SIGINT or a stop request in the run folder: the loop checkpoints and ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.raised = False
        self._old = {}

    def __enter__(self):
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: the stop request file still works
            pass
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __bool__(self) -> bool:
        return self.raised or runs.stop_requested(self.run_dir)


def check_config(cfg: Config) -> Dataset:
    """What can be checked before a run folder is made: the device, the compile mode on it, the
    dataset (found and not empty) and, for loss.mode=supervised, labels. Returns the dataset;
    HiCoError with the reason otherwise, so a bad run never leaves a folder behind."""
    device = resolve_device(cfg.device)
    if cfg.train.compile != "none" and device.type != "cuda":
        # torch 2.13's Inductor fails to generate the CPU code of this model's backward pass.
        raise HiCoError(f"Config key train.compile={cfg.train.compile!r} needs a CUDA GPU; use train.compile=none "
                        f"on the CPU.")
    dataset = find_clips(cfg.data.root, cfg.data.frame_folders)
    if cfg.loss.mode == "supervised" and (cfg.data.label_fraction <= 0
                                          or not any(c.label is not None for c in dataset.clips)):
        raise HiCoError(f"loss.mode=supervised needs labelled clips, and dataset {cfg.data.root} has none "
                        f"(or data.label_fraction is 0).")
    return dataset


class Trainer:
    """Holds what one run needs; `run()` trains from the current step to the end or a stop."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True,
                 dataset: Dataset | None = None):
        self.began = time.perf_counter()  # train.max_minutes counts from here: reading the clips is part of a run
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.world = distributed.world_from_env()
        self.main = self.world.main
        self.progress = progress and self.main
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.world.size > 1:
            self.device = torch.device("cuda", self.world.local_rank)
            torch.cuda.set_device(self.device)
        self.cuda = self.device.type == "cuda"
        dataset = dataset or check_config(cfg)  # train() has checked it: the folder is scanned once
        distributed.init(self.world, self.cuda)
        torch.manual_seed(cfg.train.seed)
        self.data = prepare_data(cfg, self.progress, dataset)
        t = cfg.train
        self.n_train = len(self.data.train_idx)
        # batch_size is per rank; the global batch (all ranks) is what one process would see
        self.batch = min(t.batch_size, max(self.n_train // self.world.size, 1))
        self.global_batch = self.batch * self.world.size
        self.steps_per_epoch = max(self.n_train // self.global_batch, 1)
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(t.warmup_epochs * self.steps_per_epoch))
        self.classes = self.data.dataset.classes if self._supervised() else []
        if cfg.loss.mode == "supervised" and not (self.data.labels[self.data.train_idx] >= 0).any():
            raise HiCoError("loss.mode=supervised needs labelled training clips, and this dataset has none.")
        self.model = build_model(cfg, len(self.classes))
        if cfg.model.weights:
            load_init_weights(self.model, cfg.model.weights)
        self.model.to(self.device)
        if self.cuda:
            self.model.to(memory_format=torch.channels_last)
        self.raw_model = self.model  # what checkpoints hold; self.model may be its DDP wrapper
        self.loss_fn = HiCoLoss.from_config(cfg)
        self.graphed = self._graphed()
        self.optimizer = torch.optim.Adam(
            self._param_groups(), weight_decay=t.weight_decay, **({"fused": True} if self.cuda else {}),
            **({"capturable": True} if self.graphed else {}))
        self.captured = CapturedStep(self._update, self.optimizer) if self.graphed else None
        self.cache = self.data.cache = self._place_cache(self.data.cache)  # no host copy kept once on the GPU
        self.labels = torch.from_numpy(self.data.labels[np.concatenate([self.data.train_idx, self.data.val_idx])])
        self.step, self.best_val, self.best_step, self.lr = 0, float("inf"), None, t.lr
        self.stale = 0  # validations since the best held-out score (train.patience)
        if resume:
            self._resume()
        if self.main:  # a resumed run drops the snapshots after its step; a new one any left before it
            timeline.truncate(self.run_dir, self.step)
        self._watched: dict | None = None  # the frames embedded at each validation (_watched_frames)
        self._embedder: torch.nn.Module | None = None  # the CPU's inference copy of the model (_embed)
        if self.world.size > 1:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.raw_model) if t.sync_bn else self.raw_model
            self.model = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[self.device.index] if self.cuda else None)
        if t.compile != "none":  # compiled on the first step; checkpoints keep holding raw_model's weights
            self.model = torch.compile(self.model, mode=None if t.compile == "default" else t.compile)

    def _param_groups(self) -> list[dict]:
        """Adam's parameter groups, each with its `lr_scale` (of train.lr): one group of every
        parameter, as runs always had; with train.backbone_lr below 1, the trunk and pyramid in a
        group of their own at that share; with train.freeze_encoder, trunk, pyramid and projection
        heads left out and frozen (the classifier and the level probes train). A captured step
        reads each group's learning rate from a device tensor of its own that the host sets in place."""
        t, model = self.cfg.train, self.raw_model
        encoder = encoder_parameters(model)
        if t.freeze_encoder:
            for p in (*encoder, *model.heads.parameters()):
                p.requires_grad_(False)
            groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
        elif t.backbone_lr < 1.0:
            own = {id(p) for p in encoder}
            groups = [{"params": [p for p in model.parameters() if id(p) not in own], "lr_scale": 1.0},
                      {"params": encoder, "lr_scale": t.backbone_lr}]
        else:
            groups = [{"params": list(model.parameters()), "lr_scale": 1.0}]
        for group in groups:
            lr = t.lr * group["lr_scale"]
            group["lr"] = torch.tensor(lr, device=self.device) if self.graphed else lr
        return groups

    def _train_mode(self) -> None:
        """The model in training mode, but a frozen encoder (train.freeze_encoder) in eval mode, so
        that its batch-norm statistics stay those it was pretrained with."""
        self.model.train()
        if self.cfg.train.freeze_encoder:
            for part in (self.raw_model.trunk, self.raw_model.fpn, self.raw_model.heads):
                part.eval()

    def _graphed(self) -> bool:
        """Whether each step runs as a captured CUDA graph (train.cuda_graph, hico.graph_step): on
        a CUDA GPU, in one process, without torch.compile (whose reduce-overhead mode captures
        graphs of its own)."""
        t = self.cfg.train
        if not (t.cuda_graph and self.cuda):
            return False
        if self.world.size > 1 or t.compile != "none":
            log.info("train.cuda_graph applies to one process without train.compile; this run steps eagerly")
            return False
        return True

    @property
    def step_captured(self) -> bool:
        """Whether the step now runs as a captured CUDA graph (not before capture, nor after a failed one)."""
        return self.captured is not None and self.captured.captured

    def _place_cache(self, cache: FrameCache) -> FrameCache:
        """The decoded frames on the GPU when data.cache_on says so, or (auto) when they take under
        CACHE_SHARE of its free memory; else they stay in host memory and each batch is staged."""
        where = self.cfg.data.cache_on
        if not self.cuda or where == "host":
            return cache
        if where == "auto":
            free, _ = torch.cuda.mem_get_info(self.device)
            if cache.frames.nbytes > CACHE_SHARE * free:
                log.info("the frame cache (%.1f GB) stays in host memory: %.1f GB of GPU memory is free",
                         cache.frames.nbytes / 2**30, free / 2**30)
                return cache
        return cache.to(self.device)

    def _supervised(self) -> bool:
        has_labels = any(c.label is not None for c in self.data.dataset.clips) and self.cfg.data.label_fraction > 0
        return self.cfg.loss.mode in ("hico", "supervised") and has_labels

    def _resume(self) -> None:
        folder = Run(self.run_dir).checkpoints
        sidecar = read_sidecar(folder, "last")
        if sidecar.get("classes", []) != self.classes:
            raise HiCoError(f"Run {self.run_dir} was trained on classes {sidecar.get('classes')} but the dataset "
                            f"now has {self.classes}; resume needs the same dataset.")
        state = load_state(folder, "last")  # checked against the sidecar's step: a torn checkpoint is refused
        load_weights(self.raw_model, checkpoint_file(folder, "last", "weights", sidecar),
                     architecture(self.cfg, len(self.classes)), sidecar.get("architecture"))
        self.optimizer.load_state_dict(portable_state(state["optimizer"], self.optimizer))
        self.step = int(state["step"])
        self.best_val = float(state.get("best_val", float("inf")))
        self.best_step = state.get("best_step")
        self.stale = int(state.get("stale", 0))
        runs.truncate_metrics(self.run_dir, self.step)
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _autocast(self):
        if not self.cuda:
            return torch.autocast("cpu", enabled=False)
        # a CUDA graph cannot capture autocast's cache of cast weights
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not self.graphed)

    def _forward(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor, model=None,
                 world: distributed.World | None = None):
        """One forward of both views; with several ranks, the outputs of all ranks are gathered
        (with gradients) so the loss sees the global batch. Returns (objective, terms)."""
        model, world = model or self.model, world or self.world
        x = torch.cat([v1, v2])
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = model(x)
        n = v1.shape[0]
        out1 = distributed.gather_outputs({k: v[:n] for k, v in out.items()}, world)
        out2 = distributed.gather_outputs({k: v[n:] for k, v in out.items()}, world)
        total, terms = self.loss_fn(out1, out2, labels)
        probe = probe_loss(out1, out2, labels)
        terms["probe"] = probe.detach()
        return total + probe, terms

    def train_step(self) -> dict[str, torch.Tensor]:
        t = self.cfg.train
        positions = batch_videos(self.step, self.n_train, self.global_batch, t.seed)
        rng = np.random.default_rng([t.seed, self.step, 11])
        v1, v2 = sample_views(self.cache, positions, rng, self.cfg.data, part=(self.world.rank, self.world.size),
                              device=self.device)
        return self.optimise(v1, v2, host_to_device(self.labels[positions], self.device))

    def optimise(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on these views (B x C x S x S each) and labels (B, -1 for none):
        the learning rate of the current step, forward, loss, backward, Adam; then step + 1.
        Returns the loss terms as device scalars (on a captured step, tensors the next step rewrites)."""
        t = self.cfg.train
        self.lr = t.lr * lr_factor(self.step, self.total_steps, self.warmup_steps, t.warmup)
        for group in self.optimizer.param_groups:
            lr = self.lr * group.get("lr_scale", 1.0)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # in place: a captured step reads this tensor
            else:
                group["lr"] = lr
        self._train_mode()
        if self.captured is not None:
            terms = self.captured(v1, v2, labels)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            terms = self._update(v1, v2, labels)
        self.step += 1
        return terms

    def _update(self, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward, loss, backward and Adam's step, gradients already None: what a CUDA graph captures."""
        objective, terms = self._forward(v1, v2, labels)
        objective.backward()
        self.optimizer.step()
        return terms

    @torch.no_grad()
    def validate(self, step: int | None = None) -> dict:
        """The fields a validation adds to its metrics line, with the model in eval mode:

        val_contrastive   mean contrastive loss over the held-out videos' unaugmented views
                          (with held-out videos, and not for loss.mode=supervised)
        val_knn_acc_<level>, val_probe_acc_<level>   held-out accuracy per level from an
                          embedding of the watched frames (see hico.val_accuracy)

        Given `step`, that embedding is also kept as the timeline's snapshot at `step`.
        """
        self.raw_model.eval()
        try:
            fields = {}
            if len(self.data.val_idx) and self.cfg.loss.mode != "supervised":
                fields["val_contrastive"] = self._held_out_loss()
            watched = self._watched_frames()
            if len(watched["rows"]):
                vectors = self._embed(watched["rows"])
                fields.update(level_accuracies(vectors, watched["classes"], watched["held_out"]))
                fields.update(effective_ranks(vectors))  # how many directions each level uses (collapse)
                if step is not None and self.main:
                    timeline.write(self.run_dir, timeline.Snapshot(
                        step, watched["video_id"], watched["frame"], watched["label"],
                        np.where(watched["held_out"], "val", "train"), vectors))
        finally:
            self._train_mode()
        return fields

    def _held_out_loss(self) -> float:
        """Mean contrastive loss over the held-out videos' unaugmented views (same frames every time)."""
        n_val = len(self.data.val_idx)
        rng = np.random.default_rng([self.cfg.train.seed, 99])
        positions = np.arange(self.n_train, self.n_train + n_val)
        losses, weights = [], []
        for start in range(0, n_val, self.batch):
            chunk = positions[start:start + self.batch]
            v1, v2 = sample_views(self.cache, chunk, rng, self.cfg.data, augmented=False, device=self.device)
            _, terms = self._forward(v1, v2, None, model=self.raw_model, world=distributed.World())
            losses.append(terms["contrastive"])
            weights.append(len(chunk))
        w = torch.tensor(weights, dtype=torch.float32)
        return float((torch.stack(losses).cpu() * w).sum() / w.sum())

    def _watched_frames(self) -> dict:
        """The frames embedded at each validation: train.val_frames evenly spaced ones of every
        training and held-out video. {rows: M cache rows, frame: M, video_id: M, label: M class names
        ("" for none), classes: M class indices (-1 for none), held_out: M bool}."""
        if self._watched is None:
            videos, frames = spaced_frames(self.cache.lengths, self.cfg.train.val_frames)
            order = np.concatenate([self.data.train_idx, self.data.val_idx])
            clips = [self.data.dataset.clips[i] for i in order[videos]]
            self._watched = {"rows": self.cache.offsets[videos] + frames, "frame": frames,
                             "video_id": [c.video_id for c in clips], "label": [c.label or "" for c in clips],
                             "classes": np.array([self.data.dataset.label_index(c) for c in clips], dtype=np.int64),
                             "held_out": videos >= self.n_train}
        return self._watched

    def _embed(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """{column: M x d} of the cache's frames `rows`, as `hico embed` computes them: eval mode,
        unaugmented, channels_last, under inference autocast; a chunk of frames on the device at a time.

        On a GPU the training model is already channels_last and is used as it is (in eval mode).
        On the CPU it trains in the default layout, so a second model, frozen as `hico embed` loads
        a run (hico.inference.freeze), takes the current weights and embeds instead: a quarter to a
        third less time than the training layout, for one model's memory.
        """
        model = self.raw_model
        if not self.cuda:
            if self._embedder is None:
                self._embedder = freeze(build_model(self.cfg, len(self.classes)).to(self.device))
            self._embedder.load_state_dict(self.raw_model.state_dict())
            model = self._embedder
        parts = [embed_frames(model, gather_frames(self.cache, rows[start:start + EMBED_CHUNK], self.device),
                              self.device)
                 for start in range(0, len(rows), EMBED_CHUNK)]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def _validation_due(self, epoch_end: bool) -> bool:
        """Whether the step just taken ends with a validation: train.val_points times, evenly over the
        run's steps, when set; else every val_every epochs (never when 0); and at the last step, so a
        run ends on its final accuracy."""
        t = self.cfg.train
        if t.val_points:
            interval = max(1, self.total_steps // t.val_points)
            return self.step % interval == 0 or self.step == self.total_steps
        if not t.val_every:
            return False
        return (epoch_end and (self.step // self.steps_per_epoch) % t.val_every == 0) or self.step == self.total_steps

    def _measure_held_out(self) -> dict | None:
        """Calibrate the classifier and write the familiarity reference (hico.held_out) of the
        checkpoint Diagnose will use; the calibration for summary.json, or None."""
        positions = np.arange(self.n_train, self.n_train + len(self.data.val_idx))
        lengths = self.cache.lengths[positions]
        rows = np.concatenate([np.arange(self.cache.offsets[p], self.cache.offsets[p] + self.cache.lengths[p])
                               for p in positions] or [np.array([], np.int64)])
        clips = [self.data.dataset.clips[i] for i in self.data.val_idx]
        videos = np.repeat(np.array([c.video_id for c in clips]), lengths)
        labels = np.repeat(np.array([self.data.dataset.label_index(c) for c in clips], np.int64), lengths)
        trained_on = familiarity.describe_training(self.n_train, self.classes, self.cfg.data.root)
        started = time.perf_counter()
        result = held_out.measure(self.run_dir, self.device, lambda r: gather_frames(self.cache, r, self.device),
                                  self._watched_frames(), rows, videos, labels, trained_on)
        log.info("held-out calibration and familiarity reference in %.1f s", time.perf_counter() - started)
        return result

    def sidecar(self, metrics: dict) -> dict:
        return {"hico_version": __version__, "config": self.cfg.to_dict(),
                "architecture": architecture(self.cfg, len(self.classes)), "classes": self.classes,
                "step": self.step, "epoch": self.step / self.steps_per_epoch, "total_steps": self.total_steps,
                "metrics": metrics}

    def save(self, name: str, metrics: dict, with_state: bool = True) -> None:
        if not self.main:
            return
        state = None
        if with_state:
            state = {"optimizer": portable_state(self.optimizer.state_dict()), "step": self.step,
                     "best_val": self.best_val, "best_step": self.best_step, "stale": self.stale}
        save_checkpoint(Run(self.run_dir).checkpoints, name, self.raw_model, self.sidecar(metrics), state)

    def _line_fields(self) -> dict:
        """What a metrics line holds besides the loss terms and throughput, as the host knows it now."""
        fields = {"epoch": round(self.step / self.steps_per_epoch, 4), "time": round(time.time(), 3), "lr": self.lr}
        if self.cuda:
            fields["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            fields.update(_gpu_utilisation(self.device))
        return fields

    def held_out_score(self, line: dict) -> float | None:
        """What picks the `best` checkpoint and ends a run early (train.patience), lower being
        better: the held-out contrastive loss, or for loss.mode=supervised (a classifier trained
        from scratch or fine-tuned) the held-out classifier's error, 1 - val_acc. None when the
        validation measured neither."""
        if self.cfg.loss.mode == "supervised":
            accuracy = line.get("val_acc")
            return None if accuracy is None else 1.0 - accuracy
        return line.get("val_contrastive")

    @property
    def out_of_patience(self) -> bool:
        patience = self.cfg.train.patience
        return bool(patience) and self.best_step is not None and self.stale >= patience

    def _record(self, line: dict, metrics_file, bar, validate: bool) -> None:
        """One window's means as a metrics.jsonl line (validated first when asked); keeps it as
        last_metrics. Raises HiCoError when the loss is no longer finite."""
        seconds, steps = line.pop("seconds"), line.pop("steps")
        line["images_per_s"] = 2 * self.global_batch * steps / max(seconds, 1e-9)
        if not math.isfinite(line["total"]):
            raise HiCoError(f"Training diverged at step {line['step']} (the loss is {line['total']}); "
                            f"lower train.lr (now {self.cfg.train.lr}).")
        if validate:
            started = time.perf_counter()
            line.update(self.validate(line["step"]))
            line["val_s"] = time.perf_counter() - started
            val = self.held_out_score(line)
            if val is not None and val < self.best_val:
                self.best_val, self.best_step, self.stale = val, line["step"], 0
                self.save("best", line, with_state=False)
            elif val is not None:
                self.stale += 1
        if self.main:
            metrics_file.write(json.dumps(line) + "\n")
            metrics_file.flush()
            runs.write_status(self.run_dir, step=line["step"], epoch=line["epoch"])
        bar.set_postfix(loss=f"{line['total']:.3f}", img_s=f"{line['images_per_s']:.0f}")
        self.last_metrics = line

    def run(self, stop_at_step: int | None = None) -> dict:
        """Train to the end (or a stop); returns the summary also written to summary.json."""
        t = self.cfg.train
        run_dir = self.run_dir
        if self.main:
            runs.write_status(run_dir, state="running", pid=os.getpid(), step=self.step, total_steps=self.total_steps,
                              device=str(self.device), error=None, ranks=self.world.size, stopped_by=None,
                              **_device_card(self.device))
        window = MetricWindow(METRIC_TERMS, self.device)
        started = time.perf_counter()
        steps_done, state, stopped_by, early = 0, "finished", None, None
        self.last_metrics = {}
        bar = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        log_file = (run_dir / runs.METRICS).open("a") if self.main else contextlib.nullcontext()
        with _StopFlag(run_dir) as stop, log_file as metrics_file:
            while self.step < self.total_steps:
                # Several ranks agree on stopping through a collective, which waits for the device:
                # they ask at log points only. A single process looks every step, for free. Only
                # the main rank validates, so it alone can run out of patience (a planned end: the
                # run is finished, its best checkpoint chosen); the others stop with it.
                if self.world.size == 1 or self.step % t.log_every == 0:
                    out_of_time = bool(t.max_minutes) and time.perf_counter() - self.began >= 60 * t.max_minutes
                    patience_spent = self.out_of_patience
                    asked = (bool(stop) or out_of_time or patience_spent
                             or (stop_at_step is not None and self.step >= stop_at_step))
                    if distributed.any_rank(asked, self.world, self.device):
                        # every rank learns whether this is the planned end (a second, rare collective)
                        planned = patience_spent and not (bool(stop) or out_of_time)
                        if distributed.any_rank(planned, self.world, self.device):
                            early = self.step
                            if self.main:
                                log.info("stopped early at step %d: no better held-out score in %d validations "
                                         "(best at step %s)", self.step, self.stale, self.best_step)
                            break
                        state = "stopped"
                        if out_of_time:
                            stopped_by = f"its time limit of {t.max_minutes:g} min (train.max_minutes)"
                            log.warning("stopped at step %d: %s", self.step, stopped_by)
                        break
                terms = self.train_step()
                window.add(terms)
                steps_done += 1
                bar.update(1)
                epoch_end = self.step % self.steps_per_epoch == 0
                if self.step % t.log_every == 0 or self.step == self.total_steps or epoch_end:
                    window.close(self.step, **self._line_fields())
                every = t.checkpoint_every or self.steps_per_epoch
                checkpoint = self.step % every == 0 and self.step < self.total_steps
                validate = self.main and self._validation_due(epoch_end)
                # Wait for the device only where the line must be current: before validating
                # (it joins that line), before a checkpoint (its sidecar holds it) and at the end.
                lines = window.flush() if validate or checkpoint or self.step == self.total_steps else window.ready()
                for line in lines:
                    self._record(line, metrics_file, bar, validate and line["step"] == self.step)
                if checkpoint:
                    self.save("last", self.last_metrics)
                if (validate or checkpoint) and window.steps == 0:
                    window.restart_clock()  # validation and saving are not training time
            if window.steps:  # stopped between log points: the steps since the last line get one
                window.close(self.step, **self._line_fields())
            for line in window.flush():
                self._record(line, metrics_file, bar, False)
        bar.close()
        self.save("last", self.last_metrics)
        elapsed = time.perf_counter() - started
        summary = {"state": state, "step": self.step, "total_steps": self.total_steps,
                   "epochs": self.step / self.steps_per_epoch, "steps_this_session": steps_done,
                   "elapsed_s": elapsed, "images_per_s": 2 * self.global_batch * steps_done / max(elapsed, 1e-9),
                   "train_videos": self.n_train, "val_videos": len(self.data.val_idx),
                   "classes": self.classes, "best_step": self.best_step, "stopped_early_at": early, "device": str(self.device),
                   "cuda_graph": self.step_captured, "final": self.last_metrics, "stopped_by": stopped_by}
        best = None if self.best_step is None else self.best_val
        if self.cfg.loss.mode == "supervised":
            summary["best_val_acc"] = None if best is None else 1.0 - best
        else:
            summary["best_val_contrastive"] = best
        if self.main and state == "finished":
            summary["calibration"] = self._measure_held_out()
        if self.main:
            write_json(run_dir / runs.SUMMARY, summary)
            runs.write_status(run_dir, state=state, step=self.step, stopped_by=stopped_by)
            if state == "stopped":
                runs.clear_stop(run_dir)  # the request is spent
        return summary


def portable_state(state: dict, into: torch.optim.Optimizer | None = None) -> dict:
    """An optimizer state dict that any of this project's Adam set-ups can load: the learning rate
    as a float (a captured step keeps it in a device tensor; the loop sets it every step anyway).
    Given `into`, the groups also take that optimizer's own implementation flags (fused,
    capturable, foreach) and learning-rate object, so a run trained on a GPU resumes on a CPU and
    the other way round, with Adam's step counts placed as `into` keeps them."""
    groups = [dict(group) for group in state["param_groups"]]
    for i, group in enumerate(groups):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
        if into is not None:
            own = into.param_groups[i]
            group.update({k: own[k] for k in ("lr", "fused", "capturable", "foreach", "differentiable") if k in own})
    return {**state, "param_groups": groups}


def _device_card(device: torch.device) -> dict:
    """status.json's `device_name` and `device_memory_gb` (the card's total) for a GPU; empty on the
    CPU, so that a run resumed there does not keep the card it left."""
    if device.type != "cuda":
        return {"device_name": "", "device_memory_gb": None}
    props = torch.cuda.get_device_properties(device)
    return {"device_name": props.name, "device_memory_gb": round(props.total_memory / 2**30, 1)}


def _gpu_utilisation(device: torch.device) -> dict:
    """The GPU's utilisation in percent through NVML, or nothing where NVML is not there."""
    try:
        return {"gpu_util": float(torch.cuda.utilization(device))}
    except Exception:  # no pynvml, no driver library, or a GPU NVML does not report on
        return {}


def train(cfg: Config, run_dir: str | Path, resume: bool = False, stop_at_step: int | None = None,
          progress: bool = True) -> dict:
    """Pretrain HiCo as `cfg` says into `run_dir`; returns the run summary.

    A new run refuses a folder that already holds one; `resume=True` continues from its `last`
    checkpoint. `stop_at_step` stops cleanly (with a checkpoint) once that step is reached.
    While it trains, this process holds the run folder's lock (and, on a GPU, the GPU's), so any
    other process can tell the run is alive and none can train the same folder or GPU beside it.
    """
    run_dir = Path(run_dir).expanduser()
    if not distributed.world_from_env().main:  # other ranks of a torchrun job train and write nothing
        return Trainer(cfg, run_dir, resume=resume, progress=False).run(stop_at_step=stop_at_step)
    run = Run(run_dir)
    if not resume and run.checkpoints.exists():
        raise HiCoError(f"Run folder {run_dir} already holds a run; resume it with --resume {run_dir} or pick another.")
    if resume and "last" not in runs.checkpoint_names(run_dir):
        raise HiCoError(f"Run folder {run_dir} has no checkpoint to resume from.")
    dataset = check_config(cfg)  # before the folder exists: a bad config leaves nothing behind
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held, _sigterm_as_interrupt():
        held.enter_context(runs.hold_run(run_dir))
        device_lock = runs.hold_device(resolve_device(cfg.device), run_dir, hico_home())
        if device_lock is not None:
            held.enter_context(device_lock)
        runs.discard_stale_stop(run_dir)
        clean_checkpoints(run.checkpoints)  # what an interrupted save left
        try:
            _save_config(cfg, run.config_file)
            trainer = Trainer(cfg, run_dir, resume=resume, progress=progress, dataset=dataset)
            return trainer.run(stop_at_step=stop_at_step)
        except KeyboardInterrupt:  # before the loop took over Ctrl-C and SIGTERM: nothing to checkpoint yet
            _final_status(run_dir, state="stopped", error=None)
            raise
        except OSError as exc:
            if not _inside(exc.filename, run_dir):
                _final_status(run_dir, state="failed", error=f"{type(exc).__name__}: {exc}")
                raise
            # the run folder stopped taking writes (made read-only, its disk full)
            message = (f"Cannot write to run folder {run_dir} ({exc.strerror or exc}); training stopped. "
                       f"Its last complete checkpoint is kept.")
            _final_status(run_dir, state="failed", error=message)
            raise HiCoError(message) from exc
        except BaseException as exc:
            message = str(exc) if isinstance(exc, HiCoError) else f"{type(exc).__name__}: {exc}"
            _final_status(run_dir, state="failed", error=message)
            raise


def _save_config(cfg: Config, path: Path) -> None:
    """Write the run's config.yaml, unless it holds this config already (the app wrote it before
    starting this process; a resume with an override changes it)."""
    try:
        if config_mod.load(path) == cfg:
            return
    except HiCoError:  # missing or unreadable: written now
        pass
    config_mod.save(cfg, path)


def _inside(filename, folder: Path) -> bool:
    if not filename:
        return False
    try:
        return Path(os.fsdecode(filename)).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def _final_status(run_dir: Path, **fields) -> None:
    """Write a run's last status if the folder still takes writes; the lock going tells the rest."""
    try:
        runs.write_status(run_dir, **fields)
    except OSError as exc:
        log.warning("could not write the status of %s (%s)", run_dir, exc)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Until the training loop installs its own handler, SIGTERM stops a run as Ctrl-C does."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
