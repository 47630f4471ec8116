"""`python -m hico bench`: how fast training runs here, model-only and end to end.

For each setting (heads, batch, size) it times, after warm-up steps, the median step of
1. model-only: forward + loss + backward + optimizer step on views already on the device;
2. end-to-end: the real training step (frame sampling, mixup and augmentation from the decoded
   frame cache of a folder of encoded clips) of `hico.train.Trainer`;
and reports images/s for each (two views per clip are two images), their ratio, peak device
memory and the model FLOPs utilisation against the device's peak (where the peak is known).
Clocks are read after `torch.cuda.synchronize()` on a GPU.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hico import config as config_mod
from hico.paths import hico_home
from hico.train import Trainer, resolve_device

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s) by device name fragment; fp32 on the CPU is not listed.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


@dataclass
class Setting:
    heads: str
    batch: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.heads} heads, batch {self.batch}, {self.size} px"


GPU_SETTINGS = [Setting("pooled", 32, 224), Setting("pooled", 128, 224), Setting("flatten", 32, 224),
                Setting("flatten", 128, 224)]
CPU_SETTINGS = [Setting("pooled", 8, 64), Setting("flatten", 8, 64)]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(step, device: torch.device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_flops(trainer: Trainer, v1: torch.Tensor, v2: torch.Tensor) -> float:
    """FLOPs of one forward + backward, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    labels = torch.full((v1.shape[0],), -1, dtype=torch.long, device=v1.device)
    with FlopCounterMode(display=False) as counter:
        objective, _ = trainer._forward(v1, v2, labels)
        objective.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_setting(setting: Setting, data_dir: Path, device: str, warmup: int, steps: int) -> dict:
    """Model-only and end-to-end timings of one setting on the given dataset folder."""
    cfg = config_mod.load(None, [f"data.root={data_dir}", f"data.size={setting.size}", f"model.heads={setting.heads}",
                                 f"train.batch_size={setting.batch}", "data.val_fraction=0",
                                 f"train.max_steps={warmup + steps + 10}", "train.warmup_epochs=0",
                                 f"device={device}"])
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    trainer = Trainer(cfg, Path("/nonexistent-bench-run"), progress=False)
    batch = trainer.batch
    rng = np.random.default_rng(0)
    from hico.data import sample_views

    v1, v2 = sample_views(trainer.cache, np.arange(batch) % len(trainer.cache), rng, cfg.data)
    labels = torch.full((batch,), -1, dtype=torch.long, device=dev)
    trainer.model.train()

    def model_only():
        objective, _ = trainer._forward(v1, v2, labels)
        trainer.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        trainer.optimizer.step()

    model_s = _median_seconds(model_only, dev, warmup, steps)
    end_s = _median_seconds(trainer.train_step, dev, warmup, steps)
    flops = step_flops(trainer, v1, v2)
    peak = peak_flops(dev)
    images = 2 * batch
    result = {"setting": setting.name, "heads": setting.heads, "batch": batch, "size": setting.size,
              "model_only_images_per_s": images / model_s, "end_to_end_images_per_s": images / end_s,
              "end_to_end_over_model_only": model_s / end_s, "step_flops": flops,
              "mfu": None if peak is None else flops / end_s / peak,
              "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}
    del trainer
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return result


def bench_data(size: tuple[int, int] = (480, 640), clips: int = 64, frames: int = 16) -> Path:
    """The benchmark's dataset: synthetic clips at scanner resolution, written once."""
    from hico.synth import write_dataset

    folder = hico_home() / "datasets" / f"bench-{size[0]}x{size[1]}"
    return write_dataset(folder, clips=clips, frames=frames, size=size, seed=0, progress=True)


def run_bench(cpu: bool = False, out: str | Path | None = None, warmup: int | None = None,
              steps: int | None = None, settings: list[Setting] | None = None, data_dir: Path | None = None) -> dict:
    """Time every setting; write the JSON report and return it."""
    device = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    settings = settings or (CPU_SETTINGS if device == "cpu" else GPU_SETTINGS)
    warmup = warmup if warmup is not None else (2 if device == "cpu" else 10)
    steps = steps if steps is not None else (5 if device == "cpu" else 30)
    data_dir = data_dir or bench_data(clips=max(64, max(s.batch for s in settings) + 32))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    report = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "data": str(data_dir),
              "warmup_steps": warmup, "timed_steps": steps, "results": []}
    for setting in settings:
        log.info("timing %s", setting.name)
        report["results"].append(bench_setting(setting, data_dir, device, warmup, steps))
    target = Path(out) if out else hico_home() / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2))
    report["path"] = str(target)
    return report


def table(report: dict) -> str:
    """The report as a short text table."""
    lines = [f"{report['device']}, torch {report['torch']}, median of {report['timed_steps']} steps",
             f"{'setting':<36} {'model img/s':>12} {'e2e img/s':>10} {'ratio':>6} {'MFU':>6} {'mem GB':>7}"]
    for r in report["results"]:
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        mem = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f}"
        lines.append(f"{r['setting']:<36} {r['model_only_images_per_s']:>12.1f} {r['end_to_end_images_per_s']:>10.1f} "
                     f"{r['end_to_end_over_model_only']:>6.2f} {mfu:>6} {mem:>7}")
    return "\n".join(lines)
