"""HiCo against its baselines, measured: train each loss mode at equal steps and seeds, evaluate
every level, and write a table and a plot.

The modes are the loss modes (`hico`, `peer`, `simclr`, `supervised`, see hico.losses) and
`untrained`: the same network as initialised with that seed, its batch-norm statistics measured
on the training frames, so that it is the strongest form of "no training" rather than one with
statistics that fit nothing. Every mode of one seed starts from the same initial weights (the
model is built after `torch.manual_seed(train.seed)`), sees the same batches in the same order,
and is evaluated by the same protocol (hico.evaluate: linear probe at its optimum and kNN,
folds split by video). Evaluate on clips the runs never trained on (`eval_root`, e.g. a synthetic
set of another seed): on the training set itself, the folds' test videos are videos whose labels
the supervised term has already seen, which flatters every mode that uses labels.

A comparison called NAME keeps its runs as ordinary run folders, `RUNS_DIR/NAME-<mode>-s<seed>`
(so the app's Train tab can overlay them and Explore and Diagnose can open them), and its tables
in OUT_DIR:

    results.csv    one row per mode, seed and feature: every accuracy of hico.evaluate
    summary.csv    one row per mode and feature: mean and std over seeds
    summary.md     the linear-probe table, mean +- std, as a README can quote it
    compare.html   a plotly figure (grouped bars with the seeds' std as error bars), self-contained

Finished runs and their evaluations are reused, so a comparison that was interrupted, or that
gains a seed, only does what is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hico import config as config_mod
from hico import runs
from hico.config import Config
from hico.errors import HiCoError
from hico.evaluate import FEATURES, evaluate_run
from hico.files import atomic_path, write_text
from hico.inference import model_input
from hico.losses import MODES

log = logging.getLogger(__name__)
UNTRAINED = "untrained"
COMPARE_MODES = (UNTRAINED, *MODES)
METRICS = ("linear_acc", "knn_acc", "linear_video_acc", "knn_video_acc")
BN_FRAMES = 1024  # training frames whose batch statistics an untrained network's batch norm takes


@dataclass
class Plan:
    """What one comparison does: its name, config, modes, seeds and where it writes."""

    name: str
    cfg: Config
    modes: tuple[str, ...]
    seeds: tuple[int, ...]
    runs_dir: Path
    out_dir: Path
    folds: int = 5
    eval_root: str = ""  # the dataset every run is evaluated on; "" = the training set (data.root)

    def __post_init__(self):
        self.name = runs.check_run_name(self.name)
        self.runs_dir, self.out_dir = Path(self.runs_dir), Path(self.out_dir)

    def run_dir(self, mode: str, seed: int) -> Path:
        return self.runs_dir / f"{self.name}-{mode}-s{seed}"

    def config(self, mode: str, seed: int) -> Config:
        values = self.cfg.to_dict()
        values["loss"]["mode"] = "hico" if mode == UNTRAINED else mode
        values["train"]["seed"] = seed
        return config_mod.from_dict(values)


def parse_modes(text: str) -> tuple[str, ...]:
    """'hico,simclr' -> ('hico', 'simclr'), each checked against COMPARE_MODES."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in COMPARE_MODES]
    if unknown or not modes:
        raise HiCoError(f"--modes must list some of {', '.join(COMPARE_MODES)}; got {text!r}.")
    return tuple(dict.fromkeys(modes))


def compare(plan: Plan, progress: bool = True) -> pd.DataFrame:
    """Train (or reuse) and evaluate every mode and seed of the plan; write the tables and the plot.
    Returns the summary (one row per mode and feature)."""
    if not plan.cfg.data.root:
        raise HiCoError("compare needs a dataset: set data.root in the config or as an override.")
    rows = []
    total = len(plan.modes) * len(plan.seeds)
    for count, (seed, mode) in enumerate(((s, m) for s in plan.seeds for m in plan.modes), 1):
        run_dir = plan.run_dir(mode, seed)
        started = time.perf_counter()
        ensure_run(plan.config(mode, seed), run_dir, untrained=mode == UNTRAINED, progress=progress)
        results, _ = evaluate_run(run_dir, plan.eval_root or plan.cfg.data.root, folds=plan.folds, seed=0,
                                  device=plan.cfg.device, progress=progress)
        best = results.loc[results["linear_acc"].idxmax()]
        log.info("[%d/%d] %s seed %d: best linear probe %.3f (%s) in %.0f s", count, total, mode, seed,
                 best["linear_acc"], best["feature"], time.perf_counter() - started)
        for record in results.to_dict("records"):
            rows.append({"mode": mode, "seed": seed, "run": run_dir.name, **record})
    results = pd.DataFrame(rows)
    summary = summarise(results)
    write_outputs(plan, results, summary)
    return summary


def ensure_run(cfg: Config, run_dir: Path, untrained: bool = False, progress: bool = True) -> None:
    """Train run_dir to the end of its config, resuming a stopped run; a finished run is kept."""
    from hico.train import train

    info = runs.read_run(run_dir) if run_dir.exists() else None
    if info is not None and info.state == "finished":
        return
    if info is not None and info.alive:
        raise HiCoError(f"Run {run_dir} is training in another process; wait for it or stop it first.")
    if untrained:
        untrained_run(cfg, run_dir, progress)
        return
    resume = info is not None and "last" in info.checkpoints
    train(cfg, run_dir, resume=resume, progress=progress)
    if runs.read_status(run_dir).get("state") != "finished":
        raise HiCoError(f"Run {run_dir} stopped before its last step; run the same command again to continue it.")


def untrained_run(cfg: Config, run_dir: Path, progress: bool = True) -> None:
    """A run folder holding the network as `cfg` initialises it (step 0), its batch-norm running
    statistics measured on up to BN_FRAMES evenly spaced training frames."""
    from hico.train import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    with runs.hold_run(run_dir):
        config_mod.save(cfg, run_dir / runs.CONFIG)
        trainer = Trainer(cfg, run_dir, progress=progress)
        train_frames = int(trainer.cache.offsets[trainer.n_train])  # the cache holds training videos first
        rows = np.unique(np.linspace(0, train_frames - 1, min(BN_FRAMES, train_frames)).round().astype(np.int64))
        measure_batch_norm(trainer.raw_model, trainer.cache.frames, rows, trainer.device)
        trainer.run(stop_at_step=0)  # saves `last` at step 0
    runs.write_status(run_dir, state="finished", step=0, total_steps=0)


@torch.no_grad()
def measure_batch_norm(model: torch.nn.Module, frames: torch.Tensor, rows: np.ndarray, device: torch.device,
                       batch: int = 64) -> None:
    """Set every batch norm's running mean and variance to the average over `rows` of frames
    (uint8 N x C x S x S) of its batch statistics, in batches of `batch`; weights are untouched."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen
    was_training = model.training
    model.train()
    try:
        for start in range(0, len(rows), batch):
            index = torch.from_numpy(rows[start:start + batch])
            model(model_input(frames.index_select(0, index.to(frames.device)), device).contiguous())
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every metric, one row per mode and feature (modes in plan order)."""
    order = {m: i for i, m in enumerate(dict.fromkeys(results["mode"]))}
    features = {f: i for i, f in enumerate(FEATURES)}
    grouped = results.groupby(["mode", "feature"], sort=False)
    summary = grouped[list(METRICS)].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary = summary.fillna(0.0).reset_index()  # std of a single seed: 0
    summary["seeds"] = grouped["seed"].nunique().to_numpy()
    key = summary["mode"].map(order) * 100 + summary["feature"].map(lambda f: features.get(f, 99))
    return summary.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def markdown_table(summary: pd.DataFrame, metric: str = "linear_acc") -> str:
    """Modes as rows, features as columns, each cell `mean ± std` of `metric`, the best level of
    each mode in bold."""
    features = list(dict.fromkeys(summary["feature"]))

    def bold_best(part: pd.DataFrame, feature: str, text: str) -> str:
        best = part.loc[[f for f in features if f in part.index and f != "concat"], f"{metric}_mean"].idxmax()
        return f"**{text}**" if feature == best else text

    return "\n".join(mean_std_table(summary, "feature", metric, decorate=bold_best)) + "\n"


def mean_std_table(summary: pd.DataFrame, column: str, metric: str, label=str, decorate=None) -> list[str]:
    """Markdown lines: one row per mode, one column per value of summary[column] (headed
    label(value)), each cell `mean ± std` of `metric` (the columns <metric>_mean and _std);
    decorate(the mode's rows indexed by column, value, text) may rewrite a cell."""
    keys = list(dict.fromkeys(summary[column]))
    lines = ["| mode | " + " | ".join(label(k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for mode, part in summary.groupby("mode", sort=False):
        part = part.set_index(column)
        cells = []
        for key in keys:
            if key not in part.index:
                cells.append("")
                continue
            text = f"{part.at[key, f'{metric}_mean']:.3f} ± {part.at[key, f'{metric}_std']:.3f}"
            cells.append(decorate(part, key, text) if decorate else text)
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def comparison_figure(summary: pd.DataFrame, metric: str = "linear_acc"):
    """Grouped bars: features on the x axis, one bar per mode, error bars the std over seeds."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for mode, part in summary.groupby("mode", sort=False):
        fig.add_trace(go.Bar(name=mode, x=part["feature"], y=part[f"{metric}_mean"],
                             error_y={"type": "data", "array": part[f"{metric}_std"].to_numpy()},
                             hovertemplate=f"{mode} · %{{x}}: %{{y:.3f}}<extra></extra>"))
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    fig.update_layout(barmode="group", yaxis={"title": metric.replace("_", " "), "range": [0, 1]},
                      xaxis={"title": "feature"}, legend={"title": "mode"},
                      title=f"Held-out {metric.replace('_', ' ')} per level (mean ± std over {seeds} seeds)")
    return fig


def write_outputs(plan: Plan, results: pd.DataFrame, summary: pd.DataFrame) -> None:
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("results.csv", results), ("summary.csv", summary)):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)
    cfg = plan.cfg
    length = f"{cfg.train.max_steps} steps" if cfg.train.max_steps else f"{cfg.train.epochs} epochs"
    evaluated = f", evaluated on {plan.eval_root}" if plan.eval_root else ""
    head = (f"Comparison `{plan.name}`: dataset {cfg.data.root}{evaluated}, {cfg.data.size} px, batch {cfg.train.batch_size}, "
            f"{length}, seeds {', '.join(map(str, plan.seeds))}. Held-out linear-probe accuracy per frame "
            f"(mean ± std over seeds; folds split by video); the best level of each mode in bold.\n\n")
    write_text(out / "summary.md", head + markdown_table(summary) + "\nkNN (k = 10):\n\n"
               + markdown_table(summary, "knn_acc"))
    with atomic_path(out / "compare.html") as tmp:
        comparison_figure(summary).write_html(tmp, include_plotlyjs=True)  # opens offline
