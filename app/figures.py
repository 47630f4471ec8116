"""Plotly figures of the app: training curves, class probabilities, per-frame probabilities."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hico.config import VIEWS

LOSS_TERMS = ("peer_local", "peer_medium", "peer_global", "cross_global_medium", "cross_global_local",
              "supervised", "total")
# Terms often lie on one another (the three peer terms of a young run), so each has its own dash
# and marker as well as its colour: overlapping lines stay tellable apart in the legend and plot.
LOSS_STYLES = {"peer_local": ("solid", "circle"), "peer_medium": ("dash", "square"), "peer_global": ("dot", "diamond"),
               "cross_global_medium": ("dashdot", "triangle-up"), "cross_global_local": ("longdash", "triangle-down"),
               "supervised": ("solid", "x"), "total": ("solid", None)}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#111111", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=40, b=40), font=dict(size=12))


ACCURACY_LEVELS = VIEWS
# one colour per run in the accuracy panels: the first for the live (or latest) run
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f")
KINDS = {"knn": ("kNN", "solid", "circle"), "probe": ("linear probe", "dot", "circle-open"),
         "classifier": ("classifier", "dash", "diamond"),
         "rank": ("effective rank (right axis)", "dashdot", "triangle-up")}
FIELDS = {"knn": "val_knn_acc_{}", "probe": "val_probe_acc_{}", "classifier": "val_acc",
          "rank": "val_rank_{}"}  # metrics.jsonl, per level
ONLY_ON = {"classifier": "backbone"}  # the classifier reads the pooled C5: drawn in the backbone's panel
_KEY_COLOUR = "#555555"


def training_figure(rows: list[dict], others: dict[str, list[dict]] | None = None, name: str = "this run") -> go.Figure:
    """The Train tab's chart of the run `name` (its metrics.jsonl rows), with `others` ({run: rows})
    overlaid in the accuracy panels.

    Top, the run's own curves over steps: every loss term and the held-out contrastive loss (left),
    learning rate, throughput and GPU memory / utilisation when logged (right). Bottom, one panel
    per level (local, medium, global, backbone) of held-out accuracy over steps for every run: a
    colour per run (the first for `name`), kNN solid and the online linear probe dotted
    (val_knn_acc_<level>, val_probe_acc_<level>), the model's classifier dashed in the backbone's
    panel (val_acc: what Diagnose predicts with, and what picks a fine-tune's best checkpoint),
    and on a right axis shared by the four panels the
    level's effective rank, dash-dotted (val_rank_<level>, hico.spectrum: a level whose features
    collapse into few directions shows it there first). The loss panels show `name` only: loss
    values of different modes are not comparable, accuracies are. Accuracy traces carry
    meta = {"run", "level", "kind"} (kind: knn | probe | classifier | rank); the runs' legend is `legend2`.
    """
    gpu = bool(rows) and ("gpu_mem_gb" in rows[-1] or "gpu_util" in rows[-1])
    # the third row is an empty band that holds the loss legend between the two blocks
    fig = make_subplots(rows=4, cols=4, row_heights=[0.26, 0.26, 0.1, 0.38], vertical_spacing=0.06,
                        horizontal_spacing=0.05,
                        specs=[[{"rowspan": 2, "colspan": 2}, None, {"colspan": 2}, None],
                               [None, None, {"colspan": 2, "secondary_y": True}, None],
                               [None] * 4, [{"secondary_y": True}] * 4],
                        subplot_titles=("loss terms", "learning rate", "throughput and GPU" if gpu else "throughput",
                                        *(f"held-out accuracy: {level}" if level == "local" else level
                                          for level in ACCURACY_LEVELS)))
    steps = [r["step"] for r in rows]
    for term, colour in zip(LOSS_TERMS, PALETTE):
        if rows and term in rows[0]:
            dash, symbol = LOSS_STYLES[term]
            fig.add_trace(go.Scatter(x=steps, y=[r.get(term) for r in rows], name=term,
                                     mode="lines+markers" if symbol else "lines",
                                     marker=dict(symbol=symbol, size=6, maxdisplayed=12) if symbol else None,
                                     line=dict(color=colour, dash=dash, width=3 if term == "total" else 1.6)),
                          row=1, col=1)
    val = [(r["step"], r["val_contrastive"]) for r in rows if "val_contrastive" in r]
    if val:
        fig.add_trace(go.Scatter(x=[v[0] for v in val], y=[v[1] for v in val], name="held-out contrastive",
                                 mode="lines+markers", line=dict(color="#e377c2", dash="dot")), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[r.get("lr") for r in rows], name="lr", mode="lines",
                             line=dict(color="#17becf"), showlegend=False), row=1, col=3)
    # throughput and GPU curves are named by their axes, not in the loss terms' legend
    fig.add_trace(go.Scatter(x=steps, y=[r.get("images_per_s") for r in rows], name="images/s", mode="lines",
                             line=dict(color="#2ca02c"), showlegend=False), row=2, col=3)
    fig.update_yaxes(title_text="images/s", title_font=dict(size=10), row=2, col=3)
    if rows and "gpu_mem_gb" in rows[-1]:
        fig.add_trace(go.Scatter(x=steps, y=[r.get("gpu_mem_gb") for r in rows], name="GPU memory (GB)",
                                 mode="lines", line=dict(color="#9467bd"), showlegend=False),
                      row=2, col=3, secondary_y=True)
    if rows and "gpu_util" in rows[-1]:
        fig.add_trace(go.Scatter(x=steps, y=[r.get("gpu_util") for r in rows], name="GPU utilisation (%)",
                                 mode="lines", line=dict(color="#bcbd22", dash="dot"), showlegend=False),
                      row=2, col=3, secondary_y=True)
    if gpu:
        fig.update_yaxes(title_text="GPU GB (solid), % (dotted)", title_font=dict(size=10), row=2, col=3,
                         secondary_y=True)
    fig.update_yaxes(tickformat=".1e", row=1, col=3)  # 1.5e-04, not plotly's "150μ"
    shown = {name: rows, **{k: v for k, v in (others or {}).items() if k != name}}
    any_accuracy = _accuracy_traces(fig, shown)
    ranks = [r[f"val_rank_{level}"] for rows_ in shown.values() for r in rows_ for level in ACCURACY_LEVELS
             if f"val_rank_{level}" in r]
    for col in range(1, 5):
        fig.update_xaxes(title_text="step", row=4, col=col)
        fig.update_yaxes(range=[0, 1.03], row=4, col=col, showticklabels=col == 1)
        # one right-hand scale for every panel, so levels and runs compare; labelled on the last
        fig.update_yaxes(range=[0, max(ranks, default=1.0) * 1.08], row=4, col=col, secondary_y=True,
                         showticklabels=col == 4, showgrid=False, visible=bool(ranks),
                         title_text="effective rank" if col == 4 else None, title_font=dict(size=10))
    below_losses = fig.layout.yaxis.domain[0] - 0.035  # under the loss panel's tick labels
    fig.update_layout(**_LAYOUT, height=780, uirevision="training",
                      legend=dict(orientation="h", x=0, y=below_losses, yanchor="top", font=dict(size=11)),
                      legend2=dict(orientation="h", x=0, y=-0.09, yanchor="top", title_text="held-out accuracy:"))
    if not rows:
        fig.add_annotation(text="no steps logged yet", showarrow=False, x=0.25, y=0.8, xref="paper", yref="paper")
    if not any_accuracy:
        fig.add_annotation(text="held-out accuracy: one point per validation (the form's Validations, spread "
                                "evenly over the run), given labelled held-out videos", showarrow=False, x=0.5,
                           y=0.2, xref="paper", yref="paper",
                           font=dict(color="#666666"))
    return fig


def _accuracy_traces(fig: go.Figure, runs: dict[str, list[dict]]) -> bool:
    """Add every run's held-out accuracy lines to the bottom row, and its effective rank per level
    (hico.spectrum) on each panel's right axis; True when any run has an accuracy or a rank."""
    logged = {run: any(k.startswith(("val_knn_acc_", "val_probe_acc_", "val_rank_")) or k == "val_acc"
                       for r in rows for k in r)
              for run, rows in runs.items()}
    drawn = set()
    for i, (run, rows) in enumerate(runs.items()):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        if any(logged.values()):  # the run's legend entry: a colour swatch that shows and hides all its lines
            fig.add_trace(go.Scatter(x=[None], y=[None], name=run if logged[run] else f"{run} (none logged)",
                                     mode="lines", legend="legend2", legendgroup=run,
                                     line=dict(color=colour, width=3)), row=4, col=1)
        for col, level in enumerate(ACCURACY_LEVELS, start=1):
            for kind, (label, dash, symbol) in KINDS.items():
                if ONLY_ON.get(kind, level) != level:
                    continue
                field = FIELDS[kind].format(level)
                points = [(r["step"], r[field]) for r in rows if field in r]
                if not points:
                    continue
                drawn.add(kind)
                value = "%{y:.1f}" if kind == "rank" else "%{y:.3f}"
                fig.add_trace(go.Scatter(
                    x=[p[0] for p in points], y=[p[1] for p in points], name=f"{run} · {label} · {level}",
                    mode="lines+markers", legend="legend2", legendgroup=run, showlegend=False,
                    meta={"run": run, "level": level, "kind": kind},
                    line=dict(color=colour, dash=dash, width=2 if kind != "rank" else 1.4),
                    marker=dict(symbol=symbol, size=6),
                    hovertemplate=f"{run}<br>{label}, {level}: {value}<br>step %{{x}}<extra></extra>"),
                    row=4, col=col, secondary_y=kind == "rank")
    for kind, (label, dash, symbol) in KINDS.items():  # what solid and dotted mean
        if kind not in drawn:
            continue
        fig.add_trace(go.Scatter(x=[None], y=[None], name=label, mode="lines+markers", legend="legend2",
                                 line=dict(color=_KEY_COLOUR, dash=dash), marker=dict(symbol=symbol)), row=4, col=1)
    return bool(drawn)


def probability_bars(classes: list[str], probs: np.ndarray, title: str = "clip prediction",
                     greyed: bool = False) -> go.Figure:
    """Horizontal bars of class probabilities, the most likely on top. `greyed`: every bar grey and
    faded, with the title saying the classes do not apply (an unfamiliar clip)."""
    order = np.argsort(probs)
    if greyed:
        colours, title = ["#c7c7c7"] * len(order), f"{title}: does not apply (the clip is unlike the training data)"
    else:
        colours = ["#d62728" if i == order[-1] else "#1f77b4" for i in order]
    fig = go.Figure(go.Bar(x=[float(probs[i]) for i in order], y=[classes[i] for i in order], orientation="h",
                           marker_color=colours, opacity=0.6 if greyed else 1.0,
                           text=[f"{probs[i]:.2f}" for i in order], textposition="auto"))
    fig.update_layout(**_LAYOUT, title=title, height=max(220, 28 * len(classes) + 80),
                      xaxis=dict(range=[0, 1], title="probability"))
    return fig


def level_bars(classes: list[str], by_source: dict[str, np.ndarray]) -> go.Figure:
    """Grouped bars of class probabilities, one group per class and one bar per source (the
    classifier and each level's probe): what a one-frame input gets instead of curves over frames."""
    fig = go.Figure()
    for (name, probs), colour in zip(by_source.items(), PALETTE * 3):
        fig.add_trace(go.Bar(x=list(classes), y=[float(p) for p in probs], name=name, marker_color=colour))
    fig.update_layout(**_LAYOUT, title="probabilities by level (one frame)", height=320, barmode="group",
                      yaxis=dict(range=[0, 1], title="probability"))
    return fig


def frame_probabilities(classes: list[str], frame_probs: np.ndarray, current: int | None = None) -> go.Figure:
    """One line per class over the clip's frames; a vertical marker at the current frame."""
    fig = go.Figure()
    frames = np.arange(frame_probs.shape[0])
    for k, (name, colour) in enumerate(zip(classes, PALETTE * 3)):
        fig.add_trace(go.Scatter(x=frames, y=frame_probs[:, k], name=name, mode="lines+markers",
                                 line=dict(color=colour), marker=dict(size=4)))
    if current is not None:
        fig.add_vline(x=current, line=dict(color="#444", dash="dot"))
    # the legend goes below the plot, in rows: beside it, eight class names overflowed into a scrollbar
    fig.update_layout(**_LAYOUT, title="per-frame probabilities", height=300 + 22 * ((len(classes) + 3) // 4),
                      xaxis=dict(title="frame"), yaxis=dict(range=[0, 1], title="probability"),
                      legend=dict(orientation="h", x=0, y=-0.22, yanchor="top"))
    return fig
