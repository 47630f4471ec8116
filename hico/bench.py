"""`python -m hico bench`: how fast training runs here, model-only and end to end.

For each setting (heads, batch, size; on a GPU the step captured as a CUDA graph unless
`--eager`) it times, after warm-up steps, the median step of
1. model-only: `Trainer.optimise` (forward + loss + backward + optimizer step) on views already
   on the device;
2. end-to-end: the real training step (frame sampling, mixup and augmentation from the decoded
   frame cache of a folder of encoded clips) of `hico.train.Trainer`;
and reports images/s for each (two views per clip are two images), their ratio, peak device
memory and the model FLOPs utilisation against the device's peak (where the peak is known).
Clocks are read after `torch.cuda.synchronize()` on a GPU.

With `--cpu` it also times the CPU paths of the app (`bench_cpu_paths`) with a model of the demo's
architecture and input size on a copy of the app's embedded dataset: `hico predict --saliency` on
a 64-frame clip, and embedding extraction plus the first UMAP view, cold and cached.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from hico import config as config_mod
from hico.errors import HiCoError
from hico.paths import hico_home
from hico.runs import Run
from hico.inference import resolve_device
from hico.inference import synchronize as _sync
from hico.train import Trainer

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s) by device name fragment; fp32 on the CPU is not listed.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


@dataclass
class Setting:
    heads: str
    batch: int
    size: int
    compile: str = "none"  # train.compile: none, or the torch.compile mode
    cuda_graph: bool = True  # train.cuda_graph (a GPU only; compile=none only)

    @property
    def name(self) -> str:
        how = f", compiled ({self.compile})" if self.compile != "none" else ("" if self.cuda_graph else ", eager")
        return f"{self.heads} heads, batch {self.batch}, {self.size} px{how}"

    @classmethod
    def parse(cls, text: str, compile: str = "none", cuda_graph: bool = True) -> "Setting":
        """`heads:batch[:size]`, e.g. `pooled:32` or `flatten:128:224` (size 224 when left out)."""
        parts = text.strip().split(":")
        try:
            if len(parts) not in (2, 3) or parts[0] not in ("pooled", "flatten"):
                raise ValueError
            batch, size = int(parts[1]), int(parts[2]) if len(parts) == 3 else 224
            if batch < 1 or size < 8:
                raise ValueError
        except ValueError:
            raise HiCoError(f"Benchmark setting {text!r} is not heads:batch[:size] with heads pooled or flatten, "
                            f"e.g. pooled:32 or flatten:128:224.") from None
        return cls(parts[0], batch, size, compile, cuda_graph)


GPU_SETTINGS = [Setting("pooled", 32, 224), Setting("pooled", 128, 224), Setting("flatten", 32, 224),
                Setting("flatten", 128, 224)]
CPU_SETTINGS = [Setting("pooled", 8, 64), Setting("flatten", 8, 64)]


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


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
        objective, _ = trainer._forward(v1, v2, labels, model=trainer.raw_model)
        objective.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_setting(setting: Setting, data_dir: Path, device: str, warmup: int, steps: int,
                  profile: bool = False) -> dict:
    """Model-only and end-to-end timings of one setting on the given dataset folder; with
    `profile`, where each step's time goes too (hico.step_profile, under "profile")."""
    cfg = config_mod.load(None, [f"data.root={data_dir}", f"data.size={setting.size}", f"model.heads={setting.heads}",
                                 f"train.batch_size={setting.batch}", "data.val_fraction=0",
                                 # room for every timed and profiled step: the schedule never reaches 0
                                 f"train.max_steps={4 * (warmup + steps) + 100}", "train.warmup_epochs=0",
                                 f"train.compile={setting.compile}", f"train.cuda_graph={setting.cuda_graph}",
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
        trainer.optimise(v1, v2, labels)

    model_s = _median_seconds(model_only, dev, warmup, steps)
    end_s = _median_seconds(trainer.train_step, dev, warmup, steps)
    flops = step_flops(trainer, v1, v2)  # counted on the uncompiled model: the same arithmetic
    peak = peak_flops(dev)
    images = 2 * batch
    result = {"setting": setting.name, "heads": setting.heads, "batch": batch, "size": setting.size,
              "compile": setting.compile, "cuda_graph": trainer.step_captured,
              "model_only_images_per_s": images / model_s, "end_to_end_images_per_s": images / end_s,
              "end_to_end_over_model_only": model_s / end_s, "step_flops": flops,
              "mfu": None if peak is None else flops / end_s / peak,
              "peak_memory_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}
    if profile:
        from hico.step_profile import profile_step

        result["profile"] = {"model-only": profile_step(model_only, dev, steps=min(steps, 10)),
                             "end-to-end": profile_step(trainer.train_step, dev, steps=min(steps, 10))}
    trainer = None  # free the model and its cache before the next setting
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return result


def bench_data(size: tuple[int, int] = (480, 640), clips: int = 64, frames: int = 16) -> Path:
    """The benchmark's dataset: synthetic clips at scanner resolution, written once."""
    from hico.synth import write_dataset

    folder = hico_home() / "datasets" / f"bench-{size[0]}x{size[1]}-{clips}"
    return write_dataset(folder, clips=clips, frames=frames, size=size, seed=0, progress=True)


# The app's embedded dataset and demo model (app/default.py, configs/demo.yaml).
DEMO_DATA = {"clips": 200, "frames": 16, "size": 128}
DEMO_MODEL = ["model.backbone=resnet18", "model.heads=pooled", "data.size=96"]
# `hico predict --saliency` is timed on a 64-frame clip at the demo model's input size, and at a
# scanner's 480 x 640, where reading, masking, the overlays and the mp4 cost more.
PREDICT_CLIPS = ({"frames": 64, "size": (96, 96)}, {"frames": 64, "size": (480, 640)})


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def demo_run(run: Path, data_dir: Path, classes: list[str], cache_dir: Path | None = None) -> Path:
    """A run folder holding an untrained model of the demo's architecture (the timings do not
    depend on the weights); its decoded-frame cache is cache_dir (default $HICO_HOME/cache)."""
    from hico.checkpoint import save_checkpoint
    from hico.model import architecture, build_model

    cfg = config_mod.load(None, [f"data.root={data_dir}", f"data.cache_dir={cache_dir or ''}", "device=cpu",
                                 *DEMO_MODEL])
    torch.manual_seed(0)
    model = build_model(cfg, len(classes))
    sidecar = {"config": cfg.to_dict(), "architecture": architecture(cfg, len(classes)), "classes": classes,
               "step": 0, "epoch": 0.0, "total_steps": 0, "metrics": {}}
    save_checkpoint(Run(run).checkpoints, "last", model, sidecar, None)
    config_mod.save(cfg, Run(run).config_file)
    return run


def time_predict(run: Path, clip: Path, out: Path) -> float:
    """Seconds of `python -m hico predict RUN CLIP --saliency` as a fresh process, start-up included."""
    command = [sys.executable, "-m", "hico", "predict", str(run), str(clip), "--saliency", "--out", str(out),
               "--device", "cpu"]
    done, seconds = _timed(lambda: subprocess.run(command, capture_output=True, text=True))
    if done.returncode != 0:
        raise RuntimeError(f"hico predict failed in the benchmark:\n{done.stderr[-2000:]}")
    return seconds


def bench_cpu_paths(folder: Path | None = None, data: dict | None = None,
                    clips: tuple[dict, ...] | None = None) -> dict:
    """Seconds of the app's CPU paths, each as a user meets it.

    - predict: for each clip of `clips` (frames, size), `time_predict`: reading the clip, masking,
      prediction, Grad-CAM of the three levels and the side-by-side overlay mp4;
    - embed_cold_s: embeddings of the dataset with nothing cached (decode every clip, forward);
    - pca_s: the PCA views of the four level columns Explore shows first;
    - umap_first_s: the first UMAP view (local) in a process that never ran UMAP; when
      `umap_compiled_from_scratch`, numba's disk cache was empty, so all its compilation is in it;
    - cold_first_view_s: the sum of the three, the time from an empty cache to the first UMAP view;
    - cached_first_view_s: the same with the table and projections cached (read both).
    That is false when the process had imported numba already or NUMBA_CACHE_DIR was set. A
    folder made here is removed afterwards.
    """
    data, clips = data or DEMO_DATA, clips or PREDICT_CLIPS
    own_folder = folder is None
    folder = Path(folder or tempfile.mkdtemp(prefix="hico-bench-"))
    from_scratch = "numba" not in sys.modules and "NUMBA_CACHE_DIR" not in os.environ
    if from_scratch:  # compile UMAP from scratch, as on an app's first start
        os.environ["NUMBA_CACHE_DIR"] = str(folder / "numba")
    try:
        return _cpu_paths(folder, data, clips, from_scratch)
    finally:
        if own_folder:  # numba's cache stays: this process may still use it
            for child in folder.iterdir():
                if child.is_dir() and child.name != "numba":
                    shutil.rmtree(child, ignore_errors=True)
                elif child.is_file():
                    child.unlink()


def _cpu_paths(folder: Path, data: dict, clips: tuple[dict, ...], from_scratch: bool) -> dict:
    from hico.data import find_clips
    from hico.embed import LEVEL_COLUMNS, embed_dataset, level_matrix, load_projections, project, save_projections
    from hico.io import write_mp4
    from hico.synth import CLASSES, render_clip, write_dataset

    data_dir = write_dataset(folder / "synth", seed=0, progress=False, **data)
    run = demo_run(folder / "run", data_dir, find_clips(data_dir).classes, folder / "cache")
    predict = []
    for i, clip in enumerate(clips):
        frames = render_clip(CLASSES[i % len(CLASSES)], frames=clip["frames"], size=clip["size"], seed=i)
        path = write_mp4(folder / f"clip{i}.mp4", frames)
        predict.append({"frames": clip["frames"], "size": list(clip["size"]),
                        "seconds": time_predict(run, path, folder / f"prediction{i}")})

    (table, table_path), embed_s = _timed(lambda: embed_dataset(run, data_dir, device="cpu", progress=False))
    _, pca_s = _timed(lambda: [project(level_matrix(table, c), "pca") for c in LEVEL_COLUMNS])
    videos = table["video_id"].to_numpy()
    local, umap_s = _timed(lambda: project(level_matrix(table, "local"), "umap", groups=videos))
    save_projections(table_path, {"local": local})

    def cached():
        again, _ = embed_dataset(run, data_dir, device="cpu", progress=False)
        return load_projections(table_path)["local"], level_matrix(again, "local")

    _, cached_s = _timed(cached)
    return {"input_size": Run(run).checkpoint("last").config.data.size,
            "predict_saliency": predict, "frames": len(table), "clips": data["clips"],
            "embed_cold_s": embed_s, "pca_s": pca_s, "umap_first_s": umap_s, "umap_compiled_from_scratch": from_scratch,
            "cold_first_view_s": embed_s + pca_s + umap_s, "cached_first_view_s": cached_s}


def run_bench(cpu: bool = False, out: str | Path | None = None, warmup: int | None = None,
              steps: int | None = None, settings: list[Setting] | None = None, data_dir: Path | None = None,
              app_paths: bool | None = None, profile: bool = False, cuda_graph: bool = True) -> dict:
    """Time every setting (by default this device's, captured as CUDA graphs unless
    cuda_graph=False; and, on the CPU unless app_paths=False, the app's CPU paths; with `profile`,
    profile each setting's steps); write the JSON report and return it."""
    device = "cpu" if cpu or not torch.cuda.is_available() else "cuda"
    settings = settings or [replace(s, cuda_graph=cuda_graph)
                            for s in (CPU_SETTINGS if device == "cpu" else GPU_SETTINGS)]
    warmup = warmup if warmup is not None else (2 if device == "cpu" else 10)
    steps = steps if steps is not None else (5 if device == "cpu" else 30)
    data_dir = data_dir or bench_data(clips=max(64, max(s.batch for s in settings) + 32))
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    report = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "data": str(data_dir),
              "warmup_steps": warmup, "timed_steps": steps, "results": []}
    for setting in settings:
        log.info("timing %s", setting.name)
        try:
            report["results"].append(bench_setting(setting, data_dir, device, warmup, steps, profile))
        except Exception as exc:  # a compiler failure is a finding to report, not the end of the benchmark
            if setting.compile == "none":
                raise
            log.warning("%s failed: %s", setting.name, exc)
            report["results"].append({"setting": setting.name, "heads": setting.heads, "batch": setting.batch,
                                      "size": setting.size, "compile": setting.compile, "cuda_graph": False,
                                      "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
    if app_paths if app_paths is not None else device == "cpu":
        log.info("timing the app's CPU paths")
        report["cpu_paths"] = bench_cpu_paths()
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
        if "error" in r:
            lines.append(f"{r['setting']:<36} failed: {r['error'][:80]}")
            continue
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        mem = "-" if r["peak_memory_gb"] is None else f"{r['peak_memory_gb']:.1f}"
        lines.append(f"{r['setting']:<36} {r['model_only_images_per_s']:>12.1f} {r['end_to_end_images_per_s']:>10.1f} "
                     f"{r['end_to_end_over_model_only']:>6.2f} {mfu:>6} {mem:>7}")
    profiled = [r for r in report["results"] if "profile" in r]
    if profiled:
        from hico.step_profile import table as profile_table

        lines += ["", "Where a step's time goes (median per step; host = until the call returns):"]
        lines += [profile_table(r["setting"], r["profile"]) for r in profiled]
    paths = report.get("cpu_paths")
    if paths:
        lines += ["", f"CPU paths (demo model, {paths['input_size']} px input):"]
        lines += [f"  hico predict --saliency, {p['frames']}-frame {p['size'][0]}x{p['size'][1]} clip: {p['seconds']:.1f} s"
                  for p in paths["predict_saliency"]]
        lines += [f"  first UMAP view of {paths['frames']} frames, cold: {paths['cold_first_view_s']:.1f} s"
                  f" (embed {paths['embed_cold_s']:.1f} + PCA {paths['pca_s']:.1f} + UMAP {paths['umap_first_s']:.1f})",
                  f"  the same, cached: {paths['cached_first_view_s']:.2f} s"]
    return "\n".join(lines)
