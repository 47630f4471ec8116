"""What the Train tab and the /start_training, /training_status, /stop_training endpoints do.

Plain functions over a `Jobs` runner; `app/ui.py` wires them to components.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import torch

from hico.errors import HiCoError
from hico.runs import list_runs, read_metrics, read_run

from app.access import Access
from app.default import demo_values
from app.jobs import Jobs

NEW_RUN = "new run"


def device_choices() -> list[tuple[str, str]]:
    """(label, value) pairs: auto, the CPU, and each GPU with its name and memory."""
    choices = [("auto", "auto"), ("CPU", "cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            choices.append((f"cuda:{i} — {props.name}, {props.total_memory / 2**30:.0f} GB", f"cuda:{i}"))
    return choices


def device_summary() -> str:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GB"
    return "No GPU: training runs on the CPU."


def form_values(access: Access, dataset: str, size, batch_size, epochs, lr, mode: str, peer_weight, cross_weight,
                sup_weight, label_fraction, device: str) -> dict:
    """The Train form as a nested config dict on top of the demo config; the dataset must be one
    this app may read (see app.access)."""
    values = demo_values(access.home)
    root = access.dataset(dataset)
    values["data"].update(root=str(root), size=_int("input size", size), label_fraction=float(label_fraction))
    # A CPU step takes a second, so every step is a point of the live chart; a GPU step takes
    # milliseconds, and a line each 10 steps keeps metrics.jsonl and the chart light.
    on_gpu = (device or "auto") != "cpu" and torch.cuda.is_available()
    values["train"].update(batch_size=_int("batch size", batch_size), epochs=_int("epochs", epochs),
                           lr=float(lr), log_every=10 if on_gpu else 1)
    values["loss"] = {**values.get("loss", {}), "mode": mode, "peer_weight": float(peer_weight),
                      "cross_weight": float(cross_weight), "sup_weight": float(sup_weight)}
    values["device"] = device or "auto"
    return values


def _int(name: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise HiCoError(f"The {name} must be a whole number, got {value!r}.") from None
    if not number.is_integer():
        raise HiCoError(f"The {name} must be a whole number, got {value}.")
    return int(number)


def start_training(jobs: Jobs, access: Access, resume: str, *form) -> tuple[Path, str]:
    """Start a new run from the form, or resume the chosen run by name; returns (its folder, a
    sentence for the page)."""
    if resume and resume != NEW_RUN:
        run_dir = jobs.resume(access.run(resume))
        return run_dir, f"Resumed **{run_dir.name}**."
    run_dir = jobs.start(form_values(access, *form))
    return run_dir, f"Started **{run_dir.name}**."


def training_status(jobs: Jobs) -> dict:
    """The live (or latest) run: state, progress, speed, ETA, the last metrics, and every run."""
    active = jobs.active()
    runs = list_runs(jobs.runs_dir)
    current = read_run(active) if active else (runs[0] if runs else None)
    out = {"active": active is not None, "run": None, "runs": [_run_row(r) for r in runs]}
    if current is None:
        return out
    rows = read_metrics(current.path)
    last = rows[-1] if rows else {}
    speed = _recent_speed(rows)
    steps_left = max(current.total_steps - current.step, 0)
    batch = current.config.get("train", {}).get("batch_size", 0)
    eta = steps_left * 2 * batch / speed if speed and current.state == "running" else None
    out["run"] = {"name": current.name, "folder": str(current.path), "state": current.state, "step": current.step,
                  "total_steps": current.total_steps, "epoch": last.get("epoch", current.epoch),
                  "epochs": current.config.get("train", {}).get("epochs"), "images_per_s": speed, "eta_s": eta,
                  "device": current.device, "error": current.error, "last": last}
    out["metrics"] = rows
    return out


def _recent_speed(rows: list[dict], window: int = 5) -> float | None:
    values = [r["images_per_s"] for r in rows[-window:] if r.get("images_per_s")]
    return sum(values) / len(values) if values else None


def _run_row(info) -> list:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.started)) if info.started else ""
    cfg = info.config
    return [info.name, info.state, f"{info.step}/{info.total_steps}", cfg.get("loss", {}).get("mode", ""),
            cfg.get("data", {}).get("size", ""), started]


RUN_COLUMNS = ["run", "state", "step", "loss mode", "size", "started"]


def progress_html(status: dict) -> str:
    """A progress bar with epoch, step, images/s and ETA (or the final state)."""
    run = status.get("run")
    if not run:
        return "<div class='hico-progress'>No run yet: fill in the form and press Start.</div>"
    total = max(run["total_steps"], 1)
    pct = 100.0 * run["step"] / total
    speed = f"{run['images_per_s']:.0f} images/s" if run["images_per_s"] else "measuring speed"
    eta = _duration(run["eta_s"]) if run["eta_s"] is not None else ""
    epoch = f"epoch {run['epoch']:.2f}" + (f" of {run['epochs']}" if run.get("epochs") else "")
    colour = {"running": "#2563eb", "finished": "#16a34a", "stopped": "#d97706", "failed": "#dc2626"}[run["state"]]
    parts = [f"<b>{html.escape(run['name'])}</b> — {run['state']}", epoch, f"step {run['step']}/{run['total_steps']}"]
    if run["state"] == "running":
        parts += [speed] + ([f"ETA {eta}"] if eta else [])
    return (f"<div class='hico-progress' data-state='{run['state']}' data-step='{run['step']}'>"
            f"<div class='hico-bar'><div style='width:{pct:.1f}%;background:{colour}'></div></div>"
            f"<div class='hico-progress-text'>{' · '.join(parts)}</div></div>")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def error_text(status: dict) -> str:
    run = status.get("run") or {}
    if run.get("state") == "failed" and run.get("error"):
        return run["error"]
    return ""


def resume_choices(jobs: Jobs) -> list[str]:
    return [NEW_RUN] + [r.name for r in list_runs(jobs.runs_dir) if r.resumable]
