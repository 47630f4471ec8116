"""The Train tab: what it and the /start_training, /finetune, /training_status, /stop_training
endpoints do (plain functions over a `Jobs` runner), and its layout and handlers (`TrainTab`, at the end).
"""

from __future__ import annotations

import dataclasses
import html
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

from hico import config as config_mod
from hico.archive import NAME, Room, dataset_name, dataset_owner, folder_bytes, import_dataset
from hico.config import LOSS_MODES
from hico.errors import HiCoError
from hico.files import byte_size
from hico.finetune import FINETUNE_STEPS, HEADS, finetune_config
from hico.folders import set_aside
from hico.paths import expand_path
from hico.runs import Run, list_runs, read_run, serialised

from app.access import Access
from app.api_types import CompareReply, ExportReply, Reply, StartReply, StatusReply, UploadReply
from app.default import DEMO_RUN, YIELDED, demo_values, reserved_dataset, synth_dir, yield_demo
from app.figures import training_figure
from app.jobs import Jobs
from app.owners import Owners
from app.run_metrics import MetricsCache

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


DEFAULT_VALIDATIONS = 10  # points of held-out accuracy a run from the form draws (2-3 s each for the demo)


@dataclass(frozen=True)
class TrainForm:
    """The Train form (and /start_training) by name: what a client asks a run to be."""

    dataset: str
    size: float = 96
    batch_size: float = 16
    epochs: float = 12
    lr: float = 3e-4
    mode: str = "hico"
    peer_weight: float = 0.5
    cross_weight: float = 0.5
    sup_weight: float = 0.2
    label_fraction: float = 1.0
    device: str = "auto"
    validations: float = DEFAULT_VALIDATIONS

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def form_values(access: Access, form: TrainForm) -> dict:
    """The Train form as a nested config dict on top of the demo config; the dataset must be one
    this app may read (see app.access)."""
    values = demo_values(access.home)
    root = access.dataset(form.dataset)
    values["data"].update(root=str(root), size=_int("input size", form.size),
                          label_fraction=_number("labelled fraction", form.label_fraction))
    # A CPU step takes a second, so every step is a point of the live chart; a GPU step takes
    # milliseconds, and a line each 10 steps keeps metrics.jsonl and the chart light.
    on_gpu = (form.device or "auto") != "cpu" and torch.cuda.is_available()
    # validations spread evenly over the run's steps (train.val_points), not every few epochs: a
    # short run still draws a curve of held-out accuracy
    values["train"].update(batch_size=_int("batch size", form.batch_size), epochs=_int("epochs", form.epochs),
                           lr=_number("learning rate", form.lr), log_every=10 if on_gpu else 1,
                           val_points=_int("number of validations", form.validations))
    if not values["train"]["val_points"]:
        values["train"]["val_every"] = 1  # 0 validations on the form: one at each epoch's end
    values["loss"] = {**values.get("loss", {}), "mode": form.mode,
                      "peer_weight": _number("peer weight", form.peer_weight),
                      "cross_weight": _number("cross weight", form.cross_weight),
                      "sup_weight": _number("supervised weight", form.sup_weight)}
    values["device"] = form.device or "auto"
    return values


def _number(name: str, value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise HiCoError(f"The {name} must be a number, got {value!r:.40}.") from None


def _int(name: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise HiCoError(f"The {name} must be a whole number, got {value!r:.40}.") from None
    if not number.is_integer():
        raise HiCoError(f"The {name} must be a whole number, got {value}.")
    return int(number)


def start_training(jobs: Jobs, access: Access, resume: str, form: TrainForm, user: str | None = None,
                   owners: Owners = Owners()) -> tuple[Path, str]:
    """Start a new run from the form, or resume the chosen run by name, to the form's epochs when
    they differ from the run's (a finished run continues then); returns (its folder, a sentence
    for the page). `user`: the login asking (the new run's owner; a resumed run must be theirs,
    see app.owners)."""
    if resume and resume != NEW_RUN:
        run_dir = access.run(resume)
        owners.check(run_dir, user, "resume")
        # its dataset is checked again as a new run's is: still there, still inside the allow-list
        access.dataset(Run(run_dir).config.data.root)
        if run_dir.name != DEMO_RUN:
            yield_demo(jobs)
        else:  # the user resumes the demo: from now on it is theirs to stop
            (run_dir / YIELDED).unlink(missing_ok=True)
        run_dir = jobs.resume(run_dir, epochs=_int("epochs", form.epochs) if form.epochs else None)
        info = read_run(run_dir)
        return run_dir, f"Resumed **{run_dir.name}** at epoch {info.epoch:.1f} of {info.config['train']['epochs']}."
    values = jobs.caps.check(form_values(access, form))
    config_mod.from_dict(values)  # a bad value is refused before the demo is asked to make room
    yielded = yield_demo(jobs)
    run_dir = jobs.start(values, owner=user)
    note = " The demo model paused at its checkpoint and continues when no run is training." if yielded else ""
    return run_dir, f"Started **{run_dir.name}**.{note}"


FINETUNE_HEADS = {"full": "the whole network", "linear": "a linear head on frozen features"}  # each of HEADS


def start_finetune(jobs: Jobs, access: Access, source_name: str, dataset: str = "", head: str = "full",
                   label_fraction: float = 1.0, user: str | None = None, steps: int = 0) -> tuple[Path, str]:
    """Fine-tune the run called `source_name` (hico.finetune) into a new run, trained like any
    other: on `dataset` (one this app may read; empty: the run's own, checked again as a resumed
    run's is), training `head` (full or linear) on `label_fraction` (above 0, at most 1) of its
    training videos, for at most `steps` steps (0: hico.finetune's FINETUNE_STEPS; it ends sooner
    once held-out accuracy stops improving). Reading a run is anyone's, so any user may fine-tune
    any run; the new run is theirs (`user`). Returns (its folder, a sentence for the page)."""
    source = Run(access.run(source_name))
    if head not in HEADS:
        raise HiCoError(f"The head must be one of {', '.join(HEADS)}, got {head!r:.40}.")
    fraction = _number("labelled fraction", label_fraction)
    if not 0 < fraction <= 1:
        raise HiCoError(f"The labelled fraction must be above 0 and at most 1, got {fraction:g}.")
    steps = _int("number of steps", steps or 0)
    if steps < 0:
        raise HiCoError(f"The number of steps must be 0 (the fine-tune's default) or more, got {steps}.")
    root = access.dataset((dataset or "").strip() or source.config.data.root)
    overrides = [f"data.label_fraction={fraction}"] + ([f"train.max_steps={steps}"] if steps else [])
    cfg = finetune_config(source, str(root), head, overrides)
    jobs.caps.check(cfg.to_dict())  # a cap passed is refused before the demo is asked to make room
    yielded = yield_demo(jobs)
    run_dir = jobs.finetune(source.path, cfg, head, owner=user)
    share = f"{fraction * 100:.3g}% of " if fraction < 1 else ""
    note = " The demo model paused at its checkpoint and continues when no run is training." if yielded else ""
    return run_dir, (f"Started **{run_dir.name}**: {FINETUNE_HEADS[head]} of {source.name} fine-tuned on {share}the "
                     f"labelled videos of {root.name}, for at most {cfg.train.max_steps} steps.{note}")


def run_dataset(access: Access, name: str):
    """The dataset a run trained on (the fine-tune's default when the run is chosen), or no change."""
    try:
        return Run(access.run(name)).config.data.root or gr.update()
    except HiCoError:
        return gr.update()


def run_epochs(access: Access, name: str):
    """The epochs a run is set to (for the form when it is chosen to resume), or no change."""
    if not name or name == NEW_RUN:
        return gr.update()
    try:
        return read_run(access.run(name)).config.get("train", {}).get("epochs", gr.update())
    except HiCoError:
        return gr.update()


DATASETS_LOCK = ".datasets.lock"  # held while a dataset is imported or deleted (under $HICO_HOME)


def upload_dataset(access: Access, archive, name: str = "", user: str | None = None,
                   quota_gb: float | None = None) -> tuple[str, str]:
    """Import an uploaded .zip as $HICO_HOME/datasets/<name> (hico.archive); returns (the path to
    train on, a sentence describing what was found). `user`: the login uploading (the dataset's
    owner); `quota_gb`: what $HICO_HOME/datasets may hold in all (the operator's
    --datasets-quota-gb). Imports run one at a time, so two cannot both take the last room."""
    path = access.uploaded(archive, "a .zip of class folders, or of clips and a CSV manifest,")
    original = archive.get("orig_name") if isinstance(archive, dict) else getattr(archive, "orig_name", None)
    chosen = dataset_name(name or "", Path(original or path.name))
    why = reserved_dataset(chosen)
    if why:
        raise HiCoError(f"Dataset name {chosen} is reserved: {why}; give the upload another name.")
    access.datasets_dir.mkdir(parents=True, exist_ok=True)
    with serialised(access.home / DATASETS_LOCK):
        room = Room(int(quota_gb * 1e9), folder_bytes(access.datasets_dir)) if quota_gb else None
        if room and not room.left:
            raise HiCoError(f"Datasets here take {byte_size(room.used)}, all of the {byte_size(room.quota)} this "
                            f"server allows; delete a dataset first.")
        result = import_dataset(path, access.datasets_dir, chosen, shown_name=original or path.name, owner=user,
                                room=room)
    return str(result.dataset), result.message()


def delete_dataset(access: Access, jobs: Jobs, name: str, user: str | None = None,
                   owners: Owners = Owners()) -> str:
    """Remove the dataset $HICO_HOME/datasets/<name>: not the app's own, not one a run is training
    on, and (with logins) only its uploader's or an admin's. Renamed to a hidden sibling first (it
    leaves every list at once, whole), then removed. Returns a sentence."""
    name = (name or "").strip()
    if not name:
        raise HiCoError("Pick a dataset to delete.")
    why = reserved_dataset(name)
    if why:
        raise HiCoError(f"Dataset {name} is {why}; it cannot be deleted.")
    if not NAME.fullmatch(name) or not (access.datasets_dir / name).is_dir():
        raise HiCoError(f"There is no dataset called {name!r:.70} in the app's datasets.")
    folder = access.datasets_dir / name
    owners.check_owned(f"Dataset {name}", dataset_owner(folder), user, "delete", made="uploaded")
    with serialised(access.home / DATASETS_LOCK), serialised(jobs.runs_dir / ".jobs.lock"):
        live = jobs.active()
        if live is not None:
            try:
                root = expand_path(Run(live).config.data.root or "/").resolve()
            except HiCoError:  # its config.yaml unreadable: it cannot be reading this dataset by name
                root = Path("/")
            if root.is_relative_to(os.path.realpath(folder)):
                raise HiCoError(f"Run {live.name} is training on dataset {name}; stop it before deleting the dataset.")
        aside = set_aside(folder)
    shutil.rmtree(aside, ignore_errors=True)
    return f"Deleted dataset {name}."


EXPORTS_KEPT = 4  # newest exports kept in $HICO_HOME/exports (about 100 MB each for the demo)


def export_model(access: Access, name: str) -> dict[str, Path]:
    """The run's model exported (hico.export: model.onnx, the encoder, MODEL_CARD.md) to a new
    folder of $HICO_HOME/exports, the oldest beyond EXPORTS_KEPT removed; {format: path}."""
    from hico.export import export_run

    run_dir = access.run(name)
    folder = access.home / "exports" / f"{run_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        written = export_run(run_dir, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    older = sorted((p for p in folder.parent.iterdir() if p.is_dir() and p != folder), key=lambda p: p.stat().st_mtime)
    for old in older[:max(len(older) - (EXPORTS_KEPT - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return written


LIVE = "live run"  # the Train tab's "Show" choice that follows whatever trains (else the newest run)


def training_status(jobs: Jobs, shown: str | None = None, startup: str = "",
                    metrics_cache: MetricsCache | None = None) -> dict:
    """The live (or latest) run, or the run named `shown` (a page that follows one run): state,
    progress, speed, ETA, the last metrics, every run, and `startup` (what the first start is doing).
    A `shown` name that is not a run (gone, or not a name) falls back to the live run."""
    metrics_cache = metrics_cache or MetricsCache(0)
    active = jobs.active()
    runs = list_runs(jobs.runs_dir)
    current = read_run(active) if active else (runs[0] if runs else None)
    if shown and shown != LIVE:
        current = next((r for r in runs if r.name == shown), current)
    out = {"active": active is not None, "run": None, "runs": [_run_row(r) for r in runs], "startup": startup}
    if current is None:
        return out
    rows = metrics_cache.rows(current.path)
    last = rows[-1] if rows else {}
    speed = _recent_speed(rows)
    steps_left = max(current.total_steps - current.step, 0)
    batch = current.config.get("train", {}).get("batch_size", 0)
    eta = steps_left * 2 * batch / speed if speed and current.state == "running" else None
    out["run"] = {"name": current.name, "folder": str(current.path), "state": current.state, "step": current.step,
                  "total_steps": current.total_steps, "epoch": last.get("epoch", current.epoch),
                  "epochs": current.config.get("train", {}).get("epochs"), "images_per_s": speed, "eta_s": eta,
                  "device": current.device, "error": current.error, "stopped_by": current.stopped_by,
                  "owner": current.owner, "gpu": gpu_reading(current, last), "last": last}
    out["metrics"] = rows
    return out


def gpu_reading(info, last: dict) -> dict | None:
    """The GPU a run trains on: its name and total memory (status.json), and from the latest
    metrics line the peak memory the run has taken (GB) and the GPU's utilisation (%, NVML; None
    where NVML is missing). None for a run on the CPU."""
    if not str(info.device).startswith("cuda"):
        return None
    return {"name": info.device_name or info.device, "total_gb": info.device_memory_gb,
            "memory_gb": last.get("gpu_mem_gb"), "util": last.get("gpu_util")}


def gpu_text(gpu: dict) -> str:
    """'NVIDIA H200: 12.3 of 139 GB, 97 % busy', with the parts that are known."""
    memory = ""
    if gpu.get("memory_gb") is not None:
        total = f" of {gpu['total_gb']:.0f}" if gpu.get("total_gb") else ""
        memory = f"{gpu['memory_gb']:.1f}{total} GB"
    busy = f"{gpu['util']:.0f} % busy" if gpu.get("util") is not None else ""
    details = ", ".join(part for part in (memory, busy) if part)
    return gpu["name"] + (f": {details}" if details else "")


def _recent_speed(rows: list[dict], window: int = 5) -> float | None:
    values = [r["images_per_s"] for r in rows[-window:] if r.get("images_per_s")]
    return sum(values) / len(values) if values else None


def _run_row(info) -> list:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.started)) if info.started else ""
    cfg = info.config
    return [info.name, info.state, f"{info.step}/{info.total_steps}", cfg.get("loss", {}).get("mode", ""),
            cfg.get("data", {}).get("size", ""), started, info.owner or ""]


RUN_COLUMNS = ["run", "state", "step", "loss mode", "size", "started", "owner"]


def progress_html(status: dict) -> str:
    """A progress bar with epoch, step, images/s and ETA (or the final state)."""
    run = status.get("run")
    if not run and status.get("startup"):  # the first start writes the demo's dataset before any run exists
        return f"<div class='hico-progress' data-state='startup'>{html.escape(status['startup'])}</div>"
    if not run:
        return "<div class='hico-progress'>No run yet: fill in the form and press Start.</div>"
    total = max(run["total_steps"], 1)
    pct = 100.0 * run["step"] / total
    speed = f"{run['images_per_s']:.0f} images/s" if run["images_per_s"] else "measuring speed"
    eta = _duration(run["eta_s"]) if run["eta_s"] is not None else ""
    epoch = f"epoch {run['epoch']:.2f}" + (f" of {run['epochs']}" if run.get("epochs") else "")
    colour = {"running": "#2563eb", "finished": "#16a34a", "stopped": "#d97706", "failed": "#dc2626"}[run["state"]]
    state = run["state"] + (f" by {run['stopped_by']}" if run.get("stopped_by") else "")
    parts = [f"<b>{html.escape(run['name'])}</b> — {html.escape(state)}", epoch,
             f"step {run['step']}/{run['total_steps']}"]
    if run["state"] == "running" and not run["total_steps"]:  # the process is starting: no step count yet
        parts = [f"<b>{html.escape(run['name'])}</b> — starting: loading the model and reading the clips"]
    elif run["state"] == "running":
        parts += [speed] + ([f"ETA {eta}"] if eta else [])
    if run.get("gpu") and run["total_steps"]:
        parts.append(html.escape(gpu_text(run["gpu"])))
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
    """A new run, then the runs that can continue: stopped or failed ones, and finished ones (for
    more epochs)."""
    return [NEW_RUN] + [r.name for r in list_runs(jobs.runs_dir)
                        if r.resumable or (r.state == "finished" and "last" in r.checkpoints)]


def shown_choices(jobs: Jobs) -> list[str]:
    """The Train tab's Show choices: the live run, then every run."""
    return [LIVE, *run_names(jobs)]


def run_names(jobs: Jobs) -> list[str]:
    """Every run, newest first: what the chart can overlay."""
    return [r.name for r in list_runs(jobs.runs_dir)]


def compared_runs(access: Access, names, shown: str | None) -> dict[str, Path]:
    """{name: folder} of the runs picked to overlay, in the order picked, leaving out the run the
    chart shows anyway and any name that is not (or no longer) a run."""
    out = {}
    for name in names or []:
        if name == shown or name in out:
            continue
        try:
            out[name] = access.run(name)
        except HiCoError:
            continue
    return out


def chart_update(status: dict, access: Access, compare, drawn, metrics_cache: MetricsCache | None = None):
    """(the chart, its key): the figure of the status's run with the `compare` runs overlaid, or
    gr.skip() when no metrics file it draws has changed since the figure keyed `drawn`. The key is
    the runs' names with each metrics.jsonl's (size, mtime), taken before the rows are read."""
    metrics_cache = metrics_cache or MetricsCache(0)
    run = status.get("run") or {}
    shown = run.get("name")
    others = compared_runs(access, compare, shown)
    key = (shown, metrics_cache.version(run["folder"]) if run else (),
           tuple((name, metrics_cache.version(path)) for name, path in others.items()))
    if drawn == key:
        return gr.skip(), drawn
    rows = metrics_cache.rows(run["folder"]) if run else []
    return training_figure(rows, {name: metrics_cache.rows(path) for name, path in others.items()},
                           name=shown or "this run"), key


MAX_COMPARED = 20  # runs one /compare request may name
MAX_COMPARE_TEXT = 20 * 130  # characters of names read (a run name is at most 128)


def run_comparison(access: Access, names: str, metrics_cache: MetricsCache | None = None) -> dict:
    """Held-out accuracy of several runs side by side (the /compare endpoint): `names` is a
    comma-separated list of run names. Returns {ok, message, runs: [{run, mode, seed, state, step,
    latest: {field: value} of the last validation, series: {field: [[step, value], ...]}}]}, the
    fields being the val_knn_acc_<level> and val_probe_acc_<level> of metrics.jsonl."""
    wanted = [n.strip() for n in (names or "")[:MAX_COMPARE_TEXT].split(",") if n.strip()]
    if not wanted:
        return {"ok": False, "message": "Name one or more runs, separated by commas.", "runs": []}
    if len(dict.fromkeys(wanted)) > MAX_COMPARED:
        return {"ok": False, "message": f"Name at most {MAX_COMPARED} runs to compare at once.", "runs": []}
    metrics_cache = metrics_cache or MetricsCache(0)
    found, missing = [], []
    for name in dict.fromkeys(wanted):
        try:
            folder = access.run(name)
        except HiCoError:
            missing.append(name)
            continue
        info = read_run(folder)
        series: dict[str, list] = {}
        latest: dict[str, float] = {}
        for row in metrics_cache.rows(folder):
            fields = {k: v for k, v in row.items() if k.startswith("val_") and "_acc_" in k}
            for key, value in fields.items():
                series.setdefault(key, []).append([row.get("step"), value])
            latest = fields or latest
        found.append({"run": name, "mode": (info.config.get("loss") or {}).get("mode", ""),
                      "seed": (info.config.get("train") or {}).get("seed"), "state": info.state,
                      "step": info.step, "latest": latest, "series": series})
    message = f"{len(found)} run{'s' * (len(found) != 1)}"
    if missing:  # echoed shortened: a request's text is not sent back whole
        shown = [repr(m if len(m) <= 64 else m[:64] + "…") for m in missing[:5]]
        message += f"; not runs here: {', '.join(shown)}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return {"ok": bool(found), "message": message + ".", "runs": found}


class TrainTab:
    """Train: the form, Start/Stop, Fine-tune, the live progress bar and curves, the run list.

    Mixed into `app.ui.HiCoApp`; uses its shared state (`jobs`, `access`, `home`)."""

    def start(self, values: dict, request: gr.Request):
        """Start or resume (values: the form's components by name, see train_tab); the page then
        shows that run until the user picks another (it stays shown, finished, when the demo
        resumes)."""
        resume, form = values.pop("resume"), TrainForm(**values)
        try:
            run_dir, message = start_training(self.jobs, self.access, resume, form, Owners.user(request),
                                              self.owners)
        except HiCoError as exc:
            return f"⚠️ {exc}", gr.update(choices=resume_choices(self.jobs), value=NEW_RUN), gr.update()
        return (message, gr.update(choices=resume_choices(self.jobs), value=NEW_RUN),
                gr.update(choices=shown_choices(self.jobs), value=run_dir.name))

    def stop(self, request: gr.Request):
        return self.stop_run(request, timeout=30)[1]

    def stop_run(self, request, timeout: float) -> tuple[bool, str]:
        """Stop the live run if the request's login may (app.owners): (whether one was asked, a sentence)."""
        live = self.jobs.active()
        if live is not None:
            try:
                self.owners.check(live, Owners.user(request), "stop")
            except HiCoError as exc:
                return False, str(exc)
        return self.jobs.stop(timeout=timeout)

    def add_dataset(self, archive, name, request: gr.Request):
        """An uploaded .zip becomes a dataset and the Train form's choice."""
        if not archive:
            return gr.update(), gr.update(), gr.update()
        try:
            dataset, message = upload_dataset(self.access, archive, name, Owners.user(request),
                                              self.jobs.caps.datasets_gb)
        except HiCoError as exc:
            return f"⚠️ {exc}", gr.update(choices=self.access.datasets()), gr.update()
        return message, gr.update(choices=self.access.datasets(), value=dataset), gr.update(
            choices=self.dataset_names())

    def api_upload_dataset(self, archive: gr.FileData, name: str = "", request: gr.Request = None) -> UploadReply:
        """Add a dataset from a .zip (class folders, or clips and a CSV manifest) as
        $HICO_HOME/datasets/<name> (default: the file's name); returns {ok, message, dataset}: the path
        to pass to /start_training, and what was found (clips, classes, files left out). Only the
        clips (and the manifest) are kept; the datasets folder has the operator's quota."""
        try:
            dataset, message = upload_dataset(self.access, archive, name, Owners.user(request),
                                              self.jobs.caps.datasets_gb)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc), "dataset": None}
        return {"ok": True, "message": message, "dataset": dataset}

    def dataset_names(self) -> list[str]:
        return [name for name, _ in self.access.datasets()]

    def delete_chosen_dataset(self, name, request: gr.Request):
        if not name:  # nothing chosen, or the confirmation was cancelled
            return gr.update(), gr.update(), gr.update()
        try:
            message = delete_dataset(self.access, self.jobs, name, Owners.user(request), self.owners)
        except HiCoError as exc:
            message = f"⚠️ {exc}"
        return message, gr.update(choices=self.dataset_names(), value=None), gr.update(choices=self.access.datasets())

    def api_delete_dataset(self, dataset: str = "", request: gr.Request = None) -> Reply:
        """Delete an uploaded dataset ($HICO_HOME/datasets/<name>) that no run is training on; not
        the app's own. With logins, only its uploader or an admin may. Returns {ok, message}."""
        try:
            return {"ok": True, "message": delete_dataset(self.access, self.jobs, dataset, Owners.user(request),
                                                          self.owners)}
        except HiCoError as exc:
            return {"ok": False, "message": str(exc)}

    def refresh_training(self, compare=None, drawn=None, shown=LIVE):
        """Every 2 s and when the overlaid runs or the shown run change: progress, chart (redrawn only
        when a metrics file it shows changed), run list, error, and the key of the chart now on the page."""
        status = training_status(self.jobs, shown, self.startup.note, self.metrics)
        runs = status["runs"] or [[""] * len(RUN_COLUMNS)]
        error = error_text(status)
        chart, drawn = chart_update(status, self.access, compare, drawn, self.metrics)
        return progress_html(status), chart, runs, gr.update(value=error, visible=bool(error)), drawn

    def api_start_training(self, dataset: str = "", size: int = 96, batch_size: int = 16, epochs: int = 0,
                           lr: float = 3e-4, mode: str = "hico", peer_weight: float = 0.5, cross_weight: float = 0.5,
                           sup_weight: float = 0.2, label_fraction: float = 1.0, device: str = "auto",
                           resume: str = "", validations: int = DEFAULT_VALIDATIONS,
                           request: gr.Request = None) -> StartReply:
        """Start a training run, or resume one by name; returns {ok, message, run}. epochs: 0 means 12
        for a new run and the run's own for a resume; more than a resumed run's continues it (a
        finished one too) to that many epochs. validations: how many times a new run measures
        held-out accuracy, evenly over its steps (train.val_points; 0: every epoch)."""
        if not resume and not epochs:
            epochs = 12
        form = TrainForm(dataset or str(synth_dir(self.home)), size, batch_size, epochs, lr, mode, peer_weight,
                         cross_weight, sup_weight, label_fraction, device, validations)
        try:
            run_dir, message = start_training(self.jobs, self.access, resume, form, Owners.user(request), self.owners)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc), "run": None}
        return {"ok": True, "message": message.replace("**", ""), "run": run_dir.name}

    def api_training_status(self) -> StatusReply:
        """The live or latest run's state, step, total_steps, epoch, images_per_s, eta_s, last metrics,
        and the list of runs."""
        status = training_status(self.jobs, startup=self.startup.note, metrics_cache=self.metrics)
        status.pop("metrics", None)
        status["runs"] = [dict(zip(RUN_COLUMNS, row)) for row in status["runs"]]
        return status

    def delete_chosen_run(self, name, request: gr.Request):
        if not name:  # nothing chosen, or the confirmation was cancelled
            return gr.update(), gr.update()
        try:
            message = self.delete_run(name, request)
        except HiCoError as exc:
            message = f"⚠️ {exc}"
        return message, gr.update(choices=run_names(self.jobs), value=None)

    def delete_run(self, name: str, request) -> str:
        run_dir = self.access.run(name)
        self.owners.check(run_dir, Owners.user(request), "delete")
        return self.jobs.delete(run_dir)

    def api_delete_run(self, run: str = "", request: gr.Request = None) -> Reply:
        """Delete a run (its folder under $HICO_HOME/runs) that is not training; returns {ok, message}.
        With logins, only the run's owner or an admin may."""
        try:
            return {"ok": True, "message": self.delete_run(run, request)}
        except HiCoError as exc:
            return {"ok": False, "message": str(exc)}

    def export_chosen_run(self, name):
        """The Export button: the files to download, and a sentence."""
        if not name:
            return gr.update(), "Pick a run to export."
        try:
            written = export_model(self.access, name)
        except HiCoError as exc:
            return gr.update(value=None), f"⚠️ {exc}"
        return [str(p) for p in written.values()], f"Exported **{name}**: the ONNX model, its encoder and its model card."

    def api_export(self, run: str = "") -> ExportReply:
        """A run's model to take away (hico export): {ok, message, model: model.onnx (checked against
        torch with onnxruntime), encoder: the backbone as a ResNet state dict, card: MODEL_CARD.md}."""
        try:
            written = export_model(self.access, run)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc)}
        return {"ok": True, "message": f"Exported {run}.", "model": gr.FileData(path=str(written["onnx"])),
                "encoder": gr.FileData(path=str(written["state_dict"])),
                "card": gr.FileData(path=str(written["card"]))}

    def finetune_chosen_run(self, name, dataset, head, label_fraction, steps, request: gr.Request):
        """The Fine-tune button: a sentence, and the Show choice on the new run (the progress panel
        follows it as any run started here)."""
        try:
            run_dir, message = start_finetune(self.jobs, self.access, name, dataset, head, label_fraction,
                                              Owners.user(request), steps)
        except HiCoError as exc:
            return f"⚠️ {exc}", gr.update()
        return message, gr.update(choices=shown_choices(self.jobs), value=run_dir.name)

    def api_finetune(self, run: str = "", dataset: str = "", head: str = "full", label_fraction: float = 1.0,
                     steps: int = 0, request: gr.Request = None) -> StartReply:
        """Fine-tune a run into a new one (hico finetune), trained as /start_training's are: on
        dataset ("": the run's own), head full (the whole network, its backbone at a tenth of the
        learning rate) or linear (one layer on frozen features), on label_fraction (0 to 1] of the
        training videos, for at most steps steps (0: the default, 300; it ends early once held-out
        accuracy stops improving); returns {ok, message, run}. Any user may fine-tune any run; the
        new run is theirs."""
        try:
            run_dir, message = start_finetune(self.jobs, self.access, run, dataset, head, label_fraction,
                                              Owners.user(request), steps)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc), "run": None}
        return {"ok": True, "message": message.replace("**", ""), "run": run_dir.name}

    def api_compare(self, runs: str = "") -> CompareReply:
        """Held-out accuracy per level of several runs (comma-separated names), latest and over
        steps: {ok, message, runs: [{run, mode, seed, state, step, latest, series}]}."""
        return run_comparison(self.access, runs, self.metrics)

    def api_stop_training(self, request: gr.Request = None) -> Reply:
        """Stop the live run after its current step, with a checkpoint; returns {ok, message}
        (ok is false when no run was training, or, with logins, when it is not the caller's to stop)."""
        ok, message = self.stop_run(request, timeout=60)
        return {"ok": ok, "message": message}

    def train_tab(self) -> None:
        """The tab's components and events."""
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                dataset = self.dataset_dropdown(label="Dataset", elem_id="train-dataset",
                                                info="One of the app's datasets, one you add below, or the path of "
                                                     "a folder of clips or a CSV manifest on the server.")
                with gr.Accordion("Add or delete a dataset", open=False):
                    gr.Markdown("A **.zip** of class folders (`<class>/<clip>`), or of clips and a CSV manifest "
                                "(`path,label[,split]`). Only the clips are kept; unreadable ones are listed.")
                    new_name = gr.Textbox(label="Name (default: the file's name)", max_length=64,
                                          elem_id="dataset-name")
                    archive = gr.File(label="Dataset (.zip)", file_types=[".zip"], type="filepath",
                                      elem_id="dataset-upload")
                    with gr.Row():
                        doomed_dataset = gr.Dropdown(self.dataset_names(), value=None, label="Dataset to delete",
                                                     scale=3, elem_id="delete-dataset-name")
                        delete_data = gr.Button("Delete dataset", variant="stop", scale=1, elem_id="delete-dataset")
                with gr.Row():
                    size = gr.Number(96, label="Input size (px)", precision=0,
                                     elem_id="train-size")
                    # no `minimum`: the browser's own check shows a toast and red pills beside our
                    # message; the config check says what is wrong, in the message, in one place
                    batch = gr.Number(16, label="Batch size (videos)", precision=0, elem_id="train-batch")
                with gr.Row():
                    epochs = gr.Number(12, label="Epochs", precision=0, elem_id="train-epochs")
                    lr = gr.Number(3e-4, label="Learning rate")
                mode = gr.Radio(list(LOSS_MODES), value="hico", label="Loss mode")
                with gr.Row():
                    peer = gr.Number(0.5, label="Peer weight")
                    cross = gr.Number(0.5, label="Cross weight")
                    sup = gr.Number(0.2, label="Supervised weight")
                with gr.Row():
                    label_fraction = gr.Slider(0, 1, value=1.0, step=0.05, label="Labelled fraction of videos",
                                               scale=2)
                    validations = gr.Number(DEFAULT_VALIDATIONS, label="Validations", precision=0, scale=1,
                                            elem_id="train-validations",
                                            info="points of held-out accuracy, evenly over the run (0: each epoch)")
                device = gr.Dropdown(device_choices(), value="auto", label="Device", info=device_summary())
                resume = gr.Dropdown(resume_choices(self.jobs), value=NEW_RUN, elem_id="train-resume",
                                     label="Start a new run, or continue one (more epochs continue a finished run)")
                with gr.Row():
                    start_button = gr.Button("Start", variant="primary", elem_id="start-training")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-training")
                gr.Markdown(self.jobs.caps.describe(), elem_id="train-limits")
                message = gr.Markdown(elem_id="train-message")
                with gr.Accordion("Fine-tune a run", open=False, elem_id="finetune"):
                    gr.Markdown("Trains a classifier for a labelled dataset from a run's pretrained encoder, as "
                                "`hico finetune` does: the whole network (its backbone at a tenth of the learning "
                                "rate) or one linear layer on frozen features, a label-free run's too. It ends early "
                                "once held-out accuracy stops improving and is a run like any other: shown on the "
                                "right while it trains, then in Explore and Diagnose.")
                    with gr.Row():
                        tuned = gr.Dropdown(self.model_runs(), value=None, label="Run to fine-tune",
                                            elem_id="finetune-run")
                        tuned_data = self.dataset_dropdown(value="", label="Labelled dataset",
                                                           info="default: the one the run trained on",
                                                           elem_id="finetune-dataset")
                    head = gr.Radio([("Full network", "full"), ("Linear head", "linear")], value="full",
                                    label="Train", elem_id="finetune-head")
                    with gr.Row():
                        tuned_fraction = gr.Number(1.0, label="Labelled fraction", info="of the training videos",
                                                   elem_id="finetune-fraction")
                        tuned_steps = gr.Number(FINETUNE_STEPS, label="Steps", precision=0, elem_id="finetune-steps",
                                                info="at most")
                    finetune = gr.Button("Fine-tune", elem_id="finetune-start")
                    tuned_message = gr.Markdown(elem_id="finetune-message")
            with gr.Column(scale=3, min_width=420):
                shown = gr.Dropdown(shown_choices(self.jobs), value=LIVE, label="Show",
                                    info="the run training now, or one run: a run you start stays shown, "
                                         "finished too, until you pick another", elem_id="train-shown")
                progress = gr.HTML(elem_id="train-progress")
                chart = gr.Plot(label="Training curves", elem_id="train-chart")
                compare = gr.Dropdown(run_names(self.jobs), value=[], multiselect=True, label="Compare with runs",
                                      info="Their held-out accuracy per level is drawn beside this run's.",
                                      elem_id="train-compare")
                error = gr.Textbox(label="Error (last lines of the log)", lines=8, visible=False,
                                   elem_classes=["hico-error"])
                runs = gr.Dataframe(headers=RUN_COLUMNS, label="Runs", interactive=False, elem_id="run-list")
                with gr.Row():
                    doomed = gr.Dropdown(run_names(self.jobs), value=None, label="Run to delete", scale=3,
                                         elem_id="delete-run-name")
                    delete = gr.Button("Delete run", variant="stop", scale=1, elem_id="delete-run")
                with gr.Row():
                    exported = gr.Dropdown(self.model_runs(), value=None, label="Run to export", scale=3,
                                           elem_id="export-run-name",
                                           info="ONNX model, its encoder as a ResNet state dict, and a model card")
                    export = gr.Button("Export", scale=1, elem_id="export-run")
                export_files = gr.File(label="Exported files", file_count="multiple", interactive=False,
                                       elem_id="export-files")
        # the form by name (TrainForm's fields): a handler receives {component: value}
        form = dict(zip(("resume", *TrainForm.fields()), (resume, dataset, size, batch, epochs, lr, mode, peer, cross,
                                                          sup, label_fraction, device, validations), strict=True))
        by_component = {component: name for name, component in form.items()}

        def start(values: dict, request: gr.Request):
            return self.start({by_component[c]: v for c, v in values.items()}, request)

        start_button.click(start, set(form.values()), [message, resume, shown], api_visibility="private")
        stop.click(self.stop, None, message, api_visibility="private")
        delete.click(self.delete_chosen_run, doomed, [message, doomed], api_visibility="private",
                     js="(name) => (name && confirm(`Delete run ${name} and everything in its folder?`)) ? name : null")
        doomed.focus(lambda: gr.update(choices=run_names(self.jobs)), None, doomed, api_visibility="private")
        export.click(self.export_chosen_run, exported, [export_files, message], api_visibility="private")
        exported.focus(lambda: gr.update(choices=self.model_runs()), None, exported, api_visibility="private")
        finetune.click(self.finetune_chosen_run, [tuned, tuned_data, head, tuned_fraction, tuned_steps],
                       [tuned_message, shown], api_visibility="private")
        tuned.focus(self.refresh_choices, None, tuned, api_visibility="private")
        tuned.change(lambda name: run_dataset(self.access, name), tuned, tuned_data, api_visibility="private")
        resume.change(lambda name: run_epochs(self.access, name), resume, epochs, api_visibility="private")
        archive.upload(self.add_dataset, [archive, new_name], [message, dataset, doomed_dataset],
                       api_visibility="private")
        delete_data.click(self.delete_chosen_dataset, doomed_dataset, [message, doomed_dataset, dataset],
                          api_visibility="private",
                          js="(name) => (name && confirm(`Delete dataset ${name} and every clip in it?`)) ? name : null")
        doomed_dataset.focus(lambda: gr.update(choices=self.dataset_names()), None, doomed_dataset,
                             api_visibility="private")
        resume.focus(lambda: gr.update(choices=resume_choices(self.jobs)), None, resume, api_visibility="private")
        compare.focus(lambda: gr.update(choices=run_names(self.jobs)), None, compare, api_visibility="private")
        drawn = gr.State(None)  # the key of the chart on this page (chart_update)
        timer = gr.Timer(2.0)
        outputs = [progress, chart, runs, error, drawn]
        timer.tick(self.refresh_training, [compare, drawn, shown], outputs, api_visibility="private",
                   show_progress="hidden")
        for control in (compare, shown):
            control.change(self.refresh_training, [compare, drawn, shown], outputs, api_visibility="private",
                           show_progress="hidden")
        shown.focus(lambda: gr.update(choices=shown_choices(self.jobs)), None, shown, api_visibility="private")
