"""Label efficiency, HiCo's own regime: accuracy on clips no run trained on against the share of
labelled training videos, and how fast each mode gets there.

For every seed and labelled share (`shares`, of each class's training videos, at least one video
per class; the same videos for every mode of a seed, chosen as `data.label_fraction` chooses them):

    untrained    the network as initialised, its batch norm measured (hico.compare)
    hico         HiCo pretrained without labels (data.label_fraction=0)
    simclr, peer the contrastive baselines, without labels
    hico-sup     HiCo with its soft-label term on the labelled share
    supervised   the supervised term alone, from scratch, on the labelled videos only

The label-free runs are shared by every share; hico-sup and supervised train once per share.
Each pretrained network is then measured two ways, both trained on the labelled share's frames
only and tested on every frame of `eval_root` (clips no run trained on, with the same classes):

    probe        a linear probe per level (features standardised, L2 logistic regression at its
                 optimum, as `hico eval`), fitted on the labelled videos' frames
    finetune     hico.finetune with the full head (the backbone at a tenth of the learning rate)
                 for `finetune_steps` steps on the labelled videos, no early stopping (that would
                 read held-out labels beyond the share); the classifier's accuracy. A supervised
                 run is already a classifier of the labelled share and is measured as it is.

Convergence: every pretraining run validates `train.val_points` times; at each, the held-out
videos' kNN accuracy of every level (hico.val_accuracy; it reads every label, to measure the
representation). The curve is the best level's, the mean over seeds.

Runs are ordinary run folders in RUNS_DIR: `NAME-<mode>-s<seed>` (label-free),
`NAME-p<share>-<mode>-s<seed>` (with labels) and `<pretrained run>-ft-p<share>` (fine-tunes), so
the app opens them. Finished runs and measurements are reused: a study that was stopped, or that
gains a seed or a share, does only what is missing. OUT_DIR gets:

    results.csv       one row per mode, seed, share, protocol and feature: accuracy per frame and per video
    summary.csv       mean and std over seeds, per mode, share and protocol (the probe's best level)
    convergence.csv   held-out kNN accuracy per mode, share and step, mean and std over seeds
    summary.md        the tables, as the README quotes them
    compare.html      the plots: accuracy against labelled share (probe and fine-tuned), and
                      held-out accuracy against steps; self-contained, opens offline
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hico import config as config_mod
from hico import runs
from hico.calibration import softmax
from hico.compare import UNTRAINED, ensure_run, mean_std_table
from hico.config import VIEWS, Config
from hico.data import assign_splits, find_clips, labelled_mask
from hico.embed import embed_dataset
from hico.errors import HiCoError
from hico.evaluate import FEATURES, classifier_logits, feature_matrix, video_accuracy
from hico.files import atomic_path, write_text
from hico.linear_probe import LinearProbe
from hico.paths import expand_path

log = logging.getLogger(__name__)
LABEL_FREE = (UNTRAINED, "hico", "simclr", "peer")
WITH_LABELS = ("hico-sup", "supervised")
STUDY_MODES = (*LABEL_FREE, *WITH_LABELS)
SHARES = (0.01, 0.1, 1.0)
FINETUNE_STEPS = 200
PROTOCOLS = ("probe", "finetune")


def share_tag(share: float) -> str:
    """0.01 -> '1', 0.1 -> '10', 1.0 -> '100', 0.005 -> '0.5': the share in percent, for run names."""
    return f"{100 * share:g}"


def parse_shares(text: str) -> tuple[float, ...]:
    """'0.01,0.1,1' -> (0.01, 0.1, 1.0), each above 0 and at most 1, in increasing order."""
    try:
        shares = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise HiCoError(f"--shares must be comma-separated numbers between 0 and 1, got {text!r:.60}.") from None
    if not shares or not all(0 < s <= 1 for s in shares):
        raise HiCoError(f"--shares must be comma-separated numbers above 0 and at most 1, got {text!r:.60}.")
    return tuple(shares)


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in STUDY_MODES]
    if unknown or not modes:
        raise HiCoError(f"--modes must list some of {', '.join(STUDY_MODES)}; got {text!r:.60}.")
    return modes


@dataclass
class Study:
    """What one label-efficiency study does; `cfg` is the pretraining config every mode shares."""

    name: str
    cfg: Config
    eval_root: str
    modes: tuple[str, ...] = STUDY_MODES
    shares: tuple[float, ...] = SHARES
    seeds: tuple[int, ...] = (0, 1, 2)
    runs_dir: Path = field(default_factory=lambda: Path("runs"))
    out_dir: Path = field(default_factory=lambda: Path("labels"))
    finetune_steps: int = FINETUNE_STEPS

    def __post_init__(self):
        self.name = runs.check_run_name(self.name)
        self.runs_dir, self.out_dir = Path(self.runs_dir), Path(self.out_dir)
        if not self.cfg.data.root:
            raise HiCoError("The study needs a training dataset: set data.root in the config or as an override.")
        if not self.eval_root:
            raise HiCoError("The study needs --eval-data: labelled clips of the same classes that no run trains on.")
        if expand_path(self.eval_root).resolve() == expand_path(self.cfg.data.root).resolve():
            raise HiCoError("--eval-data must be another dataset than data.root: the runs train on data.root.")
        if not 1 <= self.finetune_steps <= 100_000:
            raise HiCoError(f"--finetune-steps must be between 1 and 100,000, got {self.finetune_steps}.")

    def pretrain_dir(self, mode: str, seed: int, share: float) -> Path:
        if mode in LABEL_FREE:
            return self.runs_dir / f"{self.name}-{mode}-s{seed}"
        return self.runs_dir / f"{self.name}-p{share_tag(share)}-{mode}-s{seed}"

    def finetune_dir(self, mode: str, seed: int, share: float) -> Path:
        if mode == "supervised":  # already a classifier of the labelled share
            return self.pretrain_dir(mode, seed, share)
        return self.runs_dir / f"{self.pretrain_dir(mode, seed, share).name}-ft-p{share_tag(share)}"

    def pretrain_config(self, mode: str, seed: int, share: float) -> Config:
        values = self.cfg.to_dict()
        values["train"]["seed"] = seed
        values["loss"]["mode"] = {UNTRAINED: "hico", "hico-sup": "hico"}.get(mode, mode)
        values["data"]["label_fraction"] = share if mode in WITH_LABELS else 0.0
        return config_mod.from_dict(values)

    def finetune_overrides(self, seed: int, share: float) -> list[str]:
        return [f"data.label_fraction={share}", f"train.seed={seed}", f"train.max_steps={self.finetune_steps}",
                "train.val_points=0", "train.val_every=0", "train.patience=0"]


def labelled_videos(cfg: Config, share: float) -> tuple[set[str], int]:
    """The video ids of the training videos that keep their label at `share` under cfg's seed and
    split (as a run of cfg with data.label_fraction=share trains on), and how many videos train."""
    dataset = find_clips(cfg.data.root, cfg.data.frame_folders)
    splits = assign_splits(dataset, cfg.data.val_fraction, cfg.train.seed)
    keep = labelled_mask(dataset, share, cfg.train.seed, splits)
    train = [i for i, s in enumerate(splits) if s == "train" and dataset.clips[i].label is not None]
    return {dataset.clips[i].video_id for i in train if keep[i]}, len(train)


def probe_scores(run_dir: Path, cfg: Config, videos: set[str], eval_root: str, progress: bool) -> list[dict]:
    """The linear probe of every feature, fitted on the frames of `videos` of the training set and
    tested on every labelled frame of eval_root: [{feature, acc, video_acc}]."""
    train, _ = embed_dataset(run_dir, cfg.data.root, progress=progress)
    test, _ = embed_dataset(run_dir, eval_root, progress=progress)
    train = train[train["video_id"].isin(videos) & train["label"].notna()].reset_index(drop=True)
    test = test[test["label"].notna()].reset_index(drop=True)
    unknown = set(test["label"]) - set(train["label"])
    if unknown:
        raise HiCoError(f"--eval-data has classes the training set lacks: {', '.join(sorted(map(str, unknown)))}.")
    rows = []
    for feature in FEATURES:
        probe = LinearProbe().fit(feature_matrix(train, feature), train["label"].to_numpy())
        probs = probe.predict_proba(feature_matrix(test, feature))
        labels = test["label"].to_numpy()
        rows.append({"feature": feature, "acc": float((probe.classes_[probs.argmax(axis=1)] == labels).mean()),
                     "video_acc": video_accuracy(probs, probe.classes_, labels, test["video_id"].to_numpy())})
    return rows


def classifier_scores(run_dir: Path, eval_root: str, progress: bool) -> dict:
    """The run's classifier on every frame of eval_root whose label is one of its classes."""
    from hico.inference import load_run

    loaded = load_run(run_dir, "auto", "cpu")
    table, _ = embed_dataset(run_dir, eval_root, progress=progress)
    rows, labels, logits = classifier_logits(loaded, table)
    if logits is None:
        raise HiCoError(f"Run {run_dir} has no classifier of the classes of {eval_root}.")
    probs = softmax(logits)
    return {"feature": "classifier", "acc": float((probs.argmax(axis=1) == labels).mean()),
            "video_acc": video_accuracy(probs, np.arange(probs.shape[1]), labels, table["video_id"].to_numpy()[rows])}


def ensure_finetune(study: Study, mode: str, seed: int, share: float, progress: bool) -> Path:
    """The fine-tune of (mode, seed, share): its folder made (hico.finetune.prepare) unless it
    holds a checkpoint, then trained, resumed or kept as hico.compare.ensure_run does."""
    from hico.finetune import prepare

    target = study.finetune_dir(mode, seed, share)
    if mode == "supervised":
        return target
    info = runs.read_run(target) if target.exists() else None
    if info is None or not info.checkpoints:
        cfg = prepare(study.pretrain_dir(mode, seed, share), target, study.cfg.data.root, head="full",
                      overrides=study.finetune_overrides(seed, share))
    else:
        cfg = runs.Run(target).config
    ensure_run(cfg, target, progress=progress)
    return target


def measured(study: Study, progress: bool = True) -> pd.DataFrame:
    """Train what is missing and measure every (seed, mode, share): results.csv's rows. Each
    pretrained run's measurements are kept in its folder (label_efficiency.json) and reused."""
    rows = []
    jobs = [(seed, mode, share) for seed in study.seeds for share in study.shares for mode in study.modes]
    for count, (seed, mode, share) in enumerate(jobs, 1):
        started = time.perf_counter()
        pre = study.pretrain_dir(mode, seed, share)
        cfg = study.pretrain_config(mode, seed, share)
        ensure_run(cfg, pre, untrained=mode == UNTRAINED, progress=progress)
        videos, train_videos = labelled_videos(cfg, share)
        cached = _read_cache(pre, study, share)
        if cached is None:
            scores = [{"protocol": "probe", **row} for row in probe_scores(pre, cfg, videos, study.eval_root, progress)]
            tuned = ensure_finetune(study, mode, seed, share, progress)
            scores.append({"protocol": "finetune", **classifier_scores(tuned, study.eval_root, progress)})
            cached = _write_cache(pre, study, share, scores)
        best = max((r for r in cached if r["protocol"] == "probe"), key=lambda r: r["acc"])
        tuned = next(r for r in cached if r["protocol"] == "finetune")
        log.info("[%d/%d] %s seed %d, %s %% labels (%d of %d videos): probe %.3f (%s), fine-tuned %.3f in %.0f s",
                 count, len(jobs), mode, seed, share_tag(share), len(videos), train_videos, best["acc"],
                 best["feature"], tuned["acc"], time.perf_counter() - started)
        for record in cached:
            rows.append({"mode": mode, "seed": seed, "share": share, "labelled_videos": len(videos),
                         "train_videos": train_videos, "run": pre.name, **record})
    return pd.DataFrame(rows)


CACHE = "label_efficiency.json"


def _cache_key(study: Study, share: float) -> str:
    return f"{expand_path(study.eval_root).resolve()}|{share}|{study.finetune_steps}"


def _read_cache(run_dir: Path, study: Study, share: float) -> list[dict] | None:
    try:
        saved = json.loads((run_dir / CACHE).read_text())
    except (OSError, ValueError):
        return None
    return saved.get(_cache_key(study, share))


def _write_cache(run_dir: Path, study: Study, share: float, scores: list[dict]) -> list[dict]:
    try:
        saved = json.loads((run_dir / CACHE).read_text())
    except (OSError, ValueError):
        saved = {}
    saved[_cache_key(study, share)] = scores
    write_text(run_dir / CACHE, json.dumps(saved, indent=1))
    return scores


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per mode, share and protocol; for the probe, the level with the
    best mean (named in `feature`)."""
    grouped = results.groupby(["mode", "share", "protocol", "feature"], sort=False)
    table = grouped[["acc", "video_acc"]].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table = table.fillna(0.0).reset_index()
    table["seeds"] = grouped["seed"].nunique().to_numpy()
    table["labelled_videos"] = grouped["labelled_videos"].first().to_numpy()
    best = table.loc[table.groupby(["mode", "share", "protocol"], sort=False)["acc_mean"].idxmax()]
    return best.reset_index(drop=True)


def convergence(study: Study) -> pd.DataFrame:
    """Held-out kNN accuracy of the best level at each validation of every pretraining run: one
    row per mode, share (0 for the label-free modes) and step, mean and std over seeds."""
    rows = []
    for mode in study.modes:
        if mode == UNTRAINED:
            continue
        for share in (study.shares if mode in WITH_LABELS else (0.0,)):
            for seed in study.seeds:
                run_dir = study.pretrain_dir(mode, seed, share)
                for line in runs.read_metrics(run_dir) if run_dir.exists() else []:
                    accs = [line[f"val_knn_acc_{view}"] for view in VIEWS if f"val_knn_acc_{view}" in line]
                    if accs:
                        rows.append({"mode": mode, "share": share, "seed": seed, "step": int(line["step"]),
                                     "acc": max(accs)})
    if not rows:
        return pd.DataFrame(columns=["mode", "share", "step", "acc_mean", "acc_std", "seeds"])
    grouped = pd.DataFrame(rows).groupby(["mode", "share", "step"], sort=False)["acc"]
    out = grouped.agg(acc_mean="mean", acc_std="std", seeds="count").reset_index()
    return out.fillna({"acc_std": 0.0})


def steps_to_reach(curves: pd.DataFrame, target: float) -> dict[str, int | None]:
    """For every curve (mode, share), the first step whose mean accuracy is at least `target`."""
    out = {}
    for (mode, share), part in curves.groupby(["mode", "share"], sort=False):
        reached = part[part["acc_mean"] >= target]
        out[curve_name(mode, share)] = int(reached["step"].min()) if len(reached) else None
    return out


def curve_name(mode: str, share: float) -> str:
    """`hico` for a label-free mode (share 0), `hico-sup 10 %` for one trained on a labelled share."""
    return f"{mode} {share_tag(share)} %" if share else mode


def markdown(study: Study, summary: pd.DataFrame, curves: pd.DataFrame) -> str:
    cfg = study.cfg
    length = f"{cfg.train.max_steps} steps" if cfg.train.max_steps else f"{cfg.train.epochs} epochs"
    counts = summary.drop_duplicates("share").set_index("share")["labelled_videos"]
    head = (f"Label efficiency `{study.name}`: pretrained on {cfg.data.root} ({cfg.data.size} px, batch "
            f"{cfg.train.batch_size}, {length}), tested on every frame of {study.eval_root}; seeds "
            f"{', '.join(map(str, study.seeds))}; mean ± std over seeds. Labelled videos per share: "
            + ", ".join(f"{share_tag(s)} %: {int(n)}" for s, n in counts.items()) + ".\n\n")
    parts = [head]
    for protocol, title in (("probe", "Linear probe (the best level of each mode, named)"),
                            ("finetune", f"Fine-tuned ({study.finetune_steps} steps, full network)")):
        named = (lambda rows, share, text: f"{text} ({rows.at[share, 'feature']})") if protocol == "probe" else None
        lines = [f"{title}:", "", *mean_std_table(summary[summary["protocol"] == protocol], "share", "acc",
                                                  label=lambda share: f"{share_tag(share)} %", decorate=named)]
        parts.append("\n".join(lines) + "\n\n")
    if len(curves):
        steps = sorted(set(curves["step"]))
        marks = sorted({steps[max(0, int(round(f * len(steps))) - 1)] for f in (0.2, 0.5, 1.0)})
        finals = curves[curves["step"] == steps[-1]].set_index(["mode", "share"])["acc_mean"]
        target = finals.get(("simclr", 0.0))
        reach = steps_to_reach(curves, target) if target is not None else {}
        lines = ["Convergence: held-out kNN accuracy of the best level at steps " + ", ".join(map(str, marks))
                 + (f"; first step at {target:.3f}, `simclr`'s final accuracy" if target is not None else "") + ":",
                 "", "| run | " + " | ".join(f"step {m}" for m in marks) + (" | reaches simclr's final |"
                                                                               if target is not None else " |"),
                 "|---|" + "---|" * (len(marks) + (target is not None))]
        for (mode, share), part in curves.groupby(["mode", "share"], sort=False):
            part = part.set_index("step")["acc_mean"]
            cells = [f"{part[m]:.3f}" if m in part.index else "" for m in marks]
            if target is not None:
                step = reach.get(curve_name(mode, share))
                cells.append("not reached" if step is None else f"step {step}")
            lines.append(f"| {curve_name(mode, share)} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def figure(summary: pd.DataFrame, curves: pd.DataFrame):
    """Three panels: probe and fine-tuned accuracy against labelled share (log axis, one line per
    mode, the seeds' std as error bars), and held-out accuracy against steps."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("Linear probe (best level)", "Fine-tuned",
                                                        "Held-out kNN accuracy while pretraining"))
    colours = {mode: qualitative.Plotly[i % 10] for i, mode in enumerate(STUDY_MODES)}
    for col, protocol in enumerate(PROTOCOLS, 1):
        for mode, part in summary[summary["protocol"] == protocol].groupby("mode", sort=False):
            fig.add_trace(go.Scatter(
                x=part["share"] * 100, y=part["acc_mean"], mode="lines+markers", name=mode, legendgroup=mode,
                showlegend=col == 1, line={"color": colours[mode]},
                error_y={"type": "data", "array": part["acc_std"].to_numpy()},
                customdata=np.stack([part["labelled_videos"], part["feature"]], axis=1),
                hovertemplate=f"{mode}, %{{x:g}} % labels (%{{customdata[0]}} videos): %{{y:.3f}}"
                              + (" (%{customdata[1]})" if protocol == "probe" else "") + "<extra></extra>"),
                row=1, col=col)
        shares = sorted(set(summary["share"]))
        fig.update_xaxes(type="log", title_text="labelled training videos", tickvals=[100 * s for s in shares],
                         ticktext=[f"{share_tag(s)} %" for s in shares], row=1, col=col)
    dashes = {}
    for (mode, share), part in curves.groupby(["mode", "share"], sort=False):
        name = curve_name(mode, share)
        dash = "solid" if not share else dashes.setdefault(share, ("dot", "dash", "dashdot",
                                                                                         "longdash")[len(dashes) % 4])
        fig.add_trace(go.Scatter(x=part["step"], y=part["acc_mean"], mode="lines", name=name, legendgroup=mode,
                                 showlegend=False, line={"color": colours[mode], "dash": dash},
                                 hovertemplate=f"{name}, step %{{x}}: %{{y:.3f}}<extra></extra>"), row=1, col=3)
    fig.update_xaxes(title_text="step", row=1, col=3)
    fig.update_yaxes(range=[0, 1.02], title_text="accuracy on unseen clips", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], title_text="held-out accuracy", row=1, col=3)
    shares = ", ".join(f"{dash.replace('dashdot', 'dash-dot').replace('longdash', 'long dashes')} "
                       f"{share_tag(share)} %" for share, dash in dashes.items())
    fig.update_layout(legend={"title": "mode"}, height=440, margin={"t": 60},
                      title="Accuracy against labelled share, and against pretraining steps"
                            + (f" (right: solid without labels; {shares} of labels)" if shares else ""))
    return fig


def run_study(study: Study, progress: bool = True) -> pd.DataFrame:
    """Train and measure what is missing; write the tables and the plots; return the summary."""
    results = measured(study, progress)
    summary = summarise(results)
    curves = convergence(study)
    out = study.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("results.csv", results), ("summary.csv", summary), ("convergence.csv", curves)):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)
    write_text(out / "summary.md", markdown(study, summary, curves))
    with atomic_path(out / "compare.html") as tmp:
        figure(summary, curves).write_html(tmp, include_plotlyjs=True)
    return summary
