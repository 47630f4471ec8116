"""Plotly figures of the app: training curves, class probabilities, per-frame probabilities."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

LOSS_TERMS = ("peer_local", "peer_medium", "peer_global", "cross_global_medium", "cross_global_local",
              "supervised", "total")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#111111", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=40, b=40), font=dict(size=12))


def training_figure(rows: list[dict]) -> go.Figure:
    """2 x 2 panels over training steps: every loss term (and the held-out contrastive loss),
    learning rate, throughput (images/s), and GPU memory / utilisation when logged."""
    fig = make_subplots(rows=2, cols=2, column_widths=[0.62, 0.38], row_heights=[0.5, 0.5],
                        specs=[[{"rowspan": 2}, {}], [None, {"secondary_y": True}]],
                        subplot_titles=("loss terms", "learning rate", "throughput and GPU"))
    steps = [r["step"] for r in rows]
    for term, colour in zip(LOSS_TERMS, PALETTE):
        if rows and term in rows[0]:
            fig.add_trace(go.Scatter(x=steps, y=[r.get(term) for r in rows], name=term, mode="lines",
                                     line=dict(color=colour, width=3 if term == "total" else 1.6)), row=1, col=1)
    val = [(r["step"], r["val_contrastive"]) for r in rows if "val_contrastive" in r]
    if val:
        fig.add_trace(go.Scatter(x=[v[0] for v in val], y=[v[1] for v in val], name="held-out contrastive",
                                 mode="lines+markers", line=dict(color="#e377c2", dash="dot")), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[r.get("lr") for r in rows], name="lr", mode="lines",
                             line=dict(color="#17becf"), showlegend=False), row=1, col=2)
    fig.add_trace(go.Scatter(x=steps, y=[r.get("images_per_s") for r in rows], name="images/s", mode="lines",
                             line=dict(color="#2ca02c")), row=2, col=2)
    if rows and "gpu_mem_gb" in rows[-1]:
        fig.add_trace(go.Scatter(x=steps, y=[r.get("gpu_mem_gb") for r in rows], name="GPU memory (GB)",
                                 mode="lines", line=dict(color="#9467bd")), row=2, col=2, secondary_y=True)
    if rows and "gpu_util" in rows[-1]:
        fig.add_trace(go.Scatter(x=steps, y=[r.get("gpu_util") for r in rows], name="GPU utilisation (%)",
                                 mode="lines", line=dict(color="#bcbd22", dash="dot")), row=2, col=2, secondary_y=True)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="step", row=2, col=2)
    fig.update_layout(**_LAYOUT, height=460, legend=dict(orientation="h", y=-0.15), uirevision="training")
    if not rows:
        fig.add_annotation(text="no steps logged yet", showarrow=False, x=0.3, y=0.5, xref="paper", yref="paper")
    return fig


def probability_bars(classes: list[str], probs: np.ndarray, title: str = "clip prediction") -> go.Figure:
    """Horizontal bars of class probabilities, the most likely on top."""
    order = np.argsort(probs)
    colours = ["#d62728" if i == order[-1] else "#1f77b4" for i in order]
    fig = go.Figure(go.Bar(x=[float(probs[i]) for i in order], y=[classes[i] for i in order], orientation="h",
                           marker_color=colours, text=[f"{probs[i]:.2f}" for i in order], textposition="auto"))
    fig.update_layout(**_LAYOUT, title=title, height=max(220, 28 * len(classes) + 80),
                      xaxis=dict(range=[0, 1], title="probability"))
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
    fig.update_layout(**_LAYOUT, title="per-frame probabilities", height=300,
                      xaxis=dict(title="frame"), yaxis=dict(range=[0, 1], title="probability"))
    return fig
