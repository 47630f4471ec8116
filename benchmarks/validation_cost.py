"""Time one validation (held-out contrastive loss, and the embedding of the watched frames for
held-out accuracy and the timeline) against one training step, on the embedded synthetic dataset
(200 clips) with the demo config, on the CPU.

    python -m benchmarks.validation_cost [--sizes 64,96] [--frames 0,2,4] [--rounds 3] [--data DIR]

For each input size and `train.val_frames` it alternates two training steps and one validation,
`--rounds` times, and prints the medians: wall and CPU seconds (time.process_time, every thread of
the process) of a step and of a validation, and the validation in steps by CPU time. On a shared
machine the wall times follow the load; the ratio by CPU time is the figure to quote.
`--frames 0` (set here directly; a config refuses it) times the held-out contrastive loss alone,
the validation as it was before held-out accuracy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

HOME = Path(tempfile.mkdtemp(prefix="hico-val-cost-"))
os.environ["HICO_HOME"] = str(HOME)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def measure(data: Path, size: int, frames: list[int], rounds: int) -> None:
    from hico import config
    from hico.train import Trainer

    cfg = config.load(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml",
                      [f"data.root={data}", f"data.size={size}", "device=cpu"])
    run = HOME / f"run-{size}"
    run.mkdir()
    trainer = Trainer(cfg, run, progress=False)
    trainer.train_step()
    print(f"{size} px: {trainer.n_train} training and {len(trainer.data.val_idx)} held-out videos, "
          f"{trainer.steps_per_epoch} steps an epoch", flush=True)
    for per_video in frames:
        cfg.train.val_frames = per_video
        trainer._watched = None
        trainer.validate()  # warm-up: builds the inference copy of the model
        rows = []
        for _ in range(rounds):
            start = _clock()
            trainer.train_step()
            trainer.train_step()
            step_wall, step_cpu = (t / 2 for t in _since(start))
            start = _clock()
            trainer.validate(trainer.step)
            val_wall, val_cpu = _since(start)
            rows.append((step_wall, step_cpu, val_wall, val_cpu))
        step_wall, step_cpu, val_wall, val_cpu = (statistics.median(r[i] for r in rows) for i in range(4))
        print(f"  val_frames={per_video}: {len(trainer._watched['rows'])} frames; step {step_wall:.2f} s wall, "
              f"{step_cpu:.2f} s CPU; validation {val_wall:.2f} s wall, {val_cpu:.2f} s CPU = "
              f"{val_cpu / step_cpu:.2f} steps (load {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,96")
    parser.add_argument("--frames", default="0,2,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, help="a dataset folder (default: the embedded synthetic set, written)")
    args = parser.parse_args()
    import torch

    from app.default import ensure_dataset

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = args.data or ensure_dataset(HOME)
    for size in (int(s) for s in args.sizes.split(",")):
        measure(data, size, [int(f) for f in args.frames.split(",")], args.rounds)


if __name__ == "__main__":
    main()
