"""The Gradio app: Train, Explore and Diagnose tabs and their API endpoints. UI wiring only;
what each action does lives in app/train_tab.py, app/explore.py, app/diagnose.py and `hico`."""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from pathlib import Path

import gradio as gr
import numpy as np

from hico.errors import HiCoError
from hico.paths import hico_home
from hico.runs import list_runs

from app import train_tab
from app.access import Access
from app.default import REPO, ensure_demo, synth_dir
from app.diagnose import SALIENCY_CHOICES, Diagnoser
from app.explore import PAIRS, Explorer, linked_rows
from app.scatter import scatter, table_value
from app.figures import frame_probabilities, probability_bars, training_figure
from app.jobs import Jobs

log = logging.getLogger(__name__)

LEVEL_PANELS = ("local", "medium", "global", "backbone")
EXAMPLES = REPO / "assets" / "examples"
# Gradio keeps a copy of every file it serves; files older than a day go, checked hourly.
GRADIO_CACHE_CLEANUP = (3600, 86400)
ACCURACY_COLUMNS = ("feature", "linear_acc", "knn_acc", "linear_video_acc", "knn_video_acc")
CSS = """
.hico-progress { font-size: 0.95rem; }
.hico-bar { height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; margin: 4px 0 6px; }
.hico-bar > div { height: 100%; transition: width 0.6s; }
.hico-error textarea { font-family: ui-monospace, monospace; color: #b91c1c; }
"""


class HiCoApp:
    """Server-side state shared by every browser session: the job runner, the caches and the
    allow-lists of what a request may touch (app.access). Per-session state lives in the page
    (gr.State and the values it holds), never here."""

    def __init__(self, home: Path | None = None, data_dirs=()):
        self.home = Path(home) if home else hico_home()
        self.access = Access(self.home, data_dirs, examples=self.examples())
        self.jobs = Jobs(self.access.runs_dir)
        self.diagnoser = Diagnoser(self.home / "diagnose")
        self.explorer = Explorer()

    @staticmethod
    def examples() -> list[str]:
        return sorted(str(p) for p in EXAMPLES.iterdir() if p.suffix != ".py")

    def model_runs(self) -> list[str]:
        """Runs with a checkpoint, newest first (the demo run included once its first epoch ends)."""
        return [r.name for r in list_runs(self.jobs.runs_dir) if r.checkpoints]

    def run_path(self, name: str) -> Path:
        if not name:
            raise HiCoError("Pick a run (a trained checkpoint) first.")
        return self.access.run(name)

    def refresh_runs(self, current):
        """On page load: the runs with a checkpoint, keeping the choice or taking the newest."""
        choices = self.model_runs()
        value = current if current in choices else (choices[0] if choices else None)
        return gr.update(choices=choices, value=value)

    def refresh_choices(self):
        """On focus: new runs appear in the list; the value is left alone (the user is choosing)."""
        return gr.update(choices=self.model_runs())

    # ---- Explore ------------------------------------------------------------------------
    def _item(self, run, dataset):
        return self.explorer.load(self.run_path(run), self.access.dataset(dataset or str(synth_dir(self.home))))

    def explore_value(self, item, colour: str, pair: str) -> tuple[dict, str, int]:
        """The scatter value for the four level panels and the cross-level panel, a note on which
        panels are UMAP yet (each swaps from PCA as soon as its UMAP is done), and how many are."""
        coords = {column: self.explorer.projection(item, column)[0] for column in (*LEVEL_PANELS, pair)}
        umap_done = self.explorer.umap_ready(item, (*LEVEL_PANELS, pair))
        rows = linked_rows(len(item.table))
        a, b = PAIRS[pair]
        joint = coords.pop(pair)
        for name, part in ((a, joint[:len(rows)]), (b, joint[len(rows):])):
            full = np.full((len(item.table), 2), np.nan)
            full[rows] = part
            coords[name] = full
        column = {"class": "label", "video": "video_id", "split": "split", "level": None}[colour]
        if len(umap_done) == len(LEVEL_PANELS) + 1:
            note = "UMAP"
        elif umap_done:
            note = f"UMAP for {', '.join(umap_done)}; PCA for the rest until their UMAP is done"
        else:
            note = "PCA (UMAP still running)"
        value = table_value(item.table, coords, column, view=f"umap{len(umap_done)}", show=list(LEVEL_PANELS),
                            cross=(a, b), cross_rows=rows, source=item.source)
        return value, note, len(umap_done)

    def explore(self, run, dataset, colour, pair, progress=gr.Progress(track_tqdm=True)):
        try:
            item = self._item(run, dataset)
        except HiCoError as exc:
            return f"⚠️ {exc}", gr.update(), None, ""
        value, note, ready = self.explore_value(item, colour, pair)
        return self._explore_message(item, note), value, self._accuracy(item), f"ready:{ready}"

    def explore_tick(self, run, dataset, colour, pair, shown):
        """Swap each panel from PCA to UMAP as its UMAP is done; fill the accuracy table when computed."""
        if not run or not shown or shown == "done":
            return gr.update(), gr.update(), gr.update(), shown
        try:
            item = self._item(run, dataset)
        except HiCoError:
            return gr.update(), gr.update(), gr.update(), shown
        accuracy = self._accuracy(item)
        finished = item.accuracy is not None or item.accuracy_error is not None
        ready = len(self.explorer.umap_ready(item, (*LEVEL_PANELS, pair)))
        state = "done" if ready == len(LEVEL_PANELS) + 1 and finished else f"ready:{ready}"
        if shown == f"ready:{ready}":  # no panel has changed: leave the plot alone
            return gr.update(), gr.update(), accuracy, state
        value, note, _ = self.explore_value(item, colour, pair)
        return self._explore_message(item, note), value, accuracy, state

    def _explore_message(self, item, method: str) -> str:
        table = item.table
        return (f"{len(table):,} frames of {table['video_id'].nunique():,} clips · {method} · "
                f"checkpoint {table.attrs.get('checkpoint', '')} · box or lasso to select frames, click one for "
                f"its nearest neighbours")

    @staticmethod
    def _accuracy(item):
        if item.accuracy is not None:
            return item.accuracy[list(ACCURACY_COLUMNS)].round(3)
        if item.accuracy_error:
            return [[item.accuracy_error, None, None, None, None]]
        return [["computing…", None, None, None, None]]

    def selected_frames(self, run, dataset, evt: gr.EventData):
        """A box/lasso selection -> gallery of the selected frames (the first 60)."""
        try:
            item = self._item(run, dataset)
        except HiCoError:
            return [], "Nothing selected."
        ids = _row_ids(evt, len(item.table))
        rows = item.table.loc[ids]
        gallery = [(self.explorer.frame(item, i), f"{r.video_id} · {r.frame} · {r.label}")
                   for i, r in zip(ids[:60], rows.head(60).itertuples())]
        return gallery, f"{len(ids)} frames selected" + (" (first 60 shown)" if len(ids) > 60 else "")

    def neighbours(self, run, dataset, evt: gr.EventData):
        """A clicked frame -> itself and its nearest neighbours at each level."""
        empty = [[]] * 4
        try:
            item = self._item(run, dataset)
        except HiCoError:
            return None, "", *empty
        ids = _row_ids(evt, len(item.table))
        if not ids:
            return None, "", *empty
        row = ids[0]
        picked = item.table.loc[row]
        galleries = []
        for column in ("local", "medium", "global", "backbone"):
            near = self.explorer.neighbours(item, row, column)
            galleries.append([(self.explorer.frame(item, i), f"{item.table.loc[i, 'video_id']} · "
                               f"{item.table.loc[i, 'label']}") for i in near])
        caption = f"{picked['video_id']} · frame {picked['frame']} · {picked['label']} · {picked['split']}"
        return self.explorer.frame(item, row), caption, *galleries

    def thumbnail(self, row_id: int, source: str) -> str | None:
        """The thumbnail of a row of the table a page shows (its scatter value's `source`)."""
        item = self.explorer.by_source(source)
        if item is None or not 0 <= row_id < len(item.table):
            return None
        return self.explorer.thumbnail(item, row_id)

    def api_embeddings(self, run: str = "", dataset: str = "", method: str = "pca") -> dict:
        """Per-frame 2-D projections of every level (local, medium, global, backbone) for a run and dataset,
        with video id, frame, label and split per frame, and the linear-probe / kNN accuracy per level."""
        try:
            run = run or (self.model_runs() or [""])[0]
            item = self._item(run, dataset)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc)}
        from hico.embed import project

        coords = {}
        for column in ("local", "medium", "global", "backbone"):
            if method == "umap" and ("umap", column) not in item.projections:
                item.projections[("umap", column)] = project(item.matrix(column), "umap")
            coords[column] = item.projections[(method if method == "umap" else "pca", column)].round(5).tolist()
        table = item.table
        return {"ok": True, "run": run, "method": method, "frames": len(table),
                "video_id": table["video_id"].tolist(), "frame": table["frame"].astype(int).tolist(),
                "label": [None if lab is None else str(lab) for lab in table["label"]],
                "split": table["split"].tolist(), "coords": coords,
                "accuracy": None if item.accuracy is None else item.accuracy.to_dict(orient="records")}

    # ---- Diagnose -----------------------------------------------------------------------
    def diagnose(self, clip, run, level):
        """Upload or example -> (message, bars, per-frame chart, video, slider, frame, mask, csv, video file, id)."""
        empty = (None, None, None, gr.update(maximum=1, value=0), None, None, None, None, None)
        if not clip:
            return ("Upload a clip or pick an example.", *empty)
        try:
            result = self._diagnose(clip, run, level)
        except HiCoError as exc:
            return (f"⚠️ {exc}", *empty)
        pred = result.prediction
        top = pred.clip_probs.argmax()
        levels = ", ".join(f"{name}: {pred.classes[int(p.mean(0).argmax())]}" for name, p in pred.level_probs.items())
        message = (f"**{pred.label}** ({pred.clip_probs[top]:.0%}) over {len(pred.frame_probs)} frames"
                   + (f" · per level — {levels}" if levels else "")
                   + (f" · screen mask: {pred.mask.method}" if pred.mask is not None else ""))
        return (message, probability_bars(pred.classes, pred.clip_probs),
                frame_probabilities(pred.classes, pred.frame_probs, 0), str(result.video),
                gr.update(maximum=max(result.frames - 1, 1), value=0, step=1), result.overlay[0], result.mask_image,
                str(result.csv), str(result.video), result.id)

    def diagnose_frame(self, result_id, index):
        result = self.diagnoser.result(result_id) if result_id else None
        if result is None:
            return None, None
        i = int(min(max(index or 0, 0), result.frames - 1))
        pred = result.prediction
        return result.overlay[i], frame_probabilities(pred.classes, pred.frame_probs, i)

    def _diagnose(self, clip, run, level):
        """Diagnose a clip the request uploaded; a message that names the file names it as the user
        knows it, not by the server's upload path."""
        path = self.access.uploaded(clip)
        try:
            return self.diagnoser.diagnose(self.run_path(run), path, level)
        except HiCoError as exc:
            raise HiCoError(str(exc).replace(str(path), path.name)) from None

    def api_predict(self, clip: gr.FileData, run: str = "", level: str = "all") -> dict:
        """Predict a clip (video, DICOM or image) with a run: class probabilities per clip and per frame,
        and the saliency overlay video and per-frame CSV as files."""
        try:
            run = run or (self.model_runs() or [""])[0]
            result = self._diagnose(clip, run, level)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc)}
        pred = result.prediction
        return {"ok": True, "run": run, "prediction": pred.label, "classes": pred.classes,
                "clip_probs": [float(p) for p in pred.clip_probs],
                "frame_probs": pred.frame_probs.round(6).tolist(),
                "level_predictions": {k: pred.classes[int(v.mean(0).argmax())] for k, v in pred.level_probs.items()},
                "mask_method": getattr(pred.mask, "method", None),
                "overlay_video": gr.FileData(path=str(result.video)), "frames_csv": gr.FileData(path=str(result.csv))}

    # ---- Train ------------------------------------------------------------------------
    def start(self, resume, *form):
        try:
            _, message = train_tab.start_training(self.jobs, self.access, resume, *form)
        except HiCoError as exc:
            message = f"⚠️ {exc}"
        return message, gr.update(choices=train_tab.resume_choices(self.jobs), value=train_tab.NEW_RUN)

    def stop(self):
        return self.jobs.stop(timeout=30)[1]

    def refresh_training(self):
        status = train_tab.training_status(self.jobs)
        runs = status["runs"] or [[""] * len(train_tab.RUN_COLUMNS)]
        error = train_tab.error_text(status)
        return (train_tab.progress_html(status), training_figure(status.get("metrics", [])), runs,
                gr.update(value=error, visible=bool(error)))

    # ---- API (typed, JSON in and out) ---------------------------------------------------
    def api_start_training(self, dataset: str = "", size: int = 96, batch_size: int = 16, epochs: int = 12,
                           lr: float = 3e-4, mode: str = "hico", peer_weight: float = 0.5, cross_weight: float = 0.5,
                           sup_weight: float = 0.2, label_fraction: float = 1.0, device: str = "auto",
                           resume: str = "") -> dict:
        """Start a training run (or resume one by name); returns {ok, message, run}."""
        try:
            run_dir, message = train_tab.start_training(
                self.jobs, self.access, resume, dataset or str(synth_dir(self.home)), size, batch_size, epochs, lr,
                mode, peer_weight, cross_weight, sup_weight, label_fraction, device)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc), "run": None}
        return {"ok": True, "message": message.replace("**", ""), "run": run_dir.name}

    def api_training_status(self) -> dict:
        """The live or latest run's state, step, total_steps, epoch, images_per_s, eta_s, last metrics,
        and the list of runs."""
        status = train_tab.training_status(self.jobs)
        status.pop("metrics", None)
        status["runs"] = [dict(zip(train_tab.RUN_COLUMNS, row)) for row in status["runs"]]
        return status

    def api_stop_training(self) -> dict:
        """Stop the live run after its current step, with a checkpoint; returns {ok, message}
        (ok is false when no run was training)."""
        ok, message = self.jobs.stop(timeout=60)
        return {"ok": ok, "message": message}

    # ---- layout -------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="HiCo — ultrasound pretraining", delete_cache=GRADIO_CACHE_CLEANUP) as demo:
            gr.Markdown("# HiCo\nHierarchical contrastive pretraining for ultrasound video: train a model, "
                        "explore what each level learned, diagnose a clip.")
            with gr.Tabs():
                with gr.Tab("Train", id="train"):
                    self._train_tab()
                with gr.Tab("Explore", id="explore"):
                    explore_run = self._explore_tab()
                with gr.Tab("Diagnose", id="diagnose"):
                    diagnose_run = self._diagnose_tab()
            demo.load(self.refresh_runs, explore_run, explore_run, api_visibility="private")
            demo.load(self.refresh_runs, diagnose_run, diagnose_run, api_visibility="private")
            gr.api(self.api_start_training, api_name="start_training")
            gr.api(self.api_training_status, api_name="training_status")
            gr.api(self.api_stop_training, api_name="stop_training")
            gr.api(self.api_embeddings, api_name="embeddings")
            gr.api(self.api_predict, api_name="predict")
        return demo

    def _train_tab(self) -> None:
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                dataset = gr.Textbox(str(synth_dir(self.home)), label="Dataset folder or CSV manifest",
                                     info="The embedded synthetic set is filled in; any folder of clips works.",
                                     elem_id="train-dataset")
                with gr.Row():
                    size = gr.Number(96, label="Input size (px)", precision=0, minimum=32, maximum=1024,
                                     elem_id="train-size")
                    batch = gr.Number(16, label="Batch size (videos)", precision=0, minimum=1, elem_id="train-batch")
                with gr.Row():
                    epochs = gr.Number(12, label="Epochs", precision=0, minimum=1, elem_id="train-epochs")
                    lr = gr.Number(3e-4, label="Learning rate", minimum=0)
                mode = gr.Radio(["hico", "simclr", "peer", "supervised"], value="hico", label="Loss mode")
                with gr.Row():
                    peer = gr.Number(0.5, label="Peer weight", minimum=0)
                    cross = gr.Number(0.5, label="Cross weight", minimum=0)
                    sup = gr.Number(0.2, label="Supervised weight", minimum=0)
                label_fraction = gr.Slider(0, 1, value=1.0, step=0.05, label="Labelled fraction of videos")
                device = gr.Dropdown(train_tab.device_choices(), value="auto", label="Device",
                                     info=train_tab.device_summary())
                resume = gr.Dropdown(train_tab.resume_choices(self.jobs), value=train_tab.NEW_RUN,
                                     label="Start a new run or resume an earlier one")
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="start-training")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-training")
                message = gr.Markdown(elem_id="train-message")
            with gr.Column(scale=3, min_width=420):
                progress = gr.HTML(elem_id="train-progress")
                chart = gr.Plot(label="Training curves", elem_id="train-chart")
                error = gr.Textbox(label="Error (last lines of the log)", lines=8, visible=False,
                                   elem_classes=["hico-error"])
                runs = gr.Dataframe(headers=train_tab.RUN_COLUMNS, label="Runs", interactive=False,
                                    elem_id="run-list")
        form = [dataset, size, batch, epochs, lr, mode, peer, cross, sup, label_fraction, device]
        start.click(self.start, [resume, *form], [message, resume], api_visibility="private")
        stop.click(self.stop, None, message, api_visibility="private")
        resume.focus(lambda: gr.update(choices=train_tab.resume_choices(self.jobs)), None, resume,
                     api_visibility="private")
        timer = gr.Timer(2.0)
        outputs = [progress, chart, runs, error]
        timer.tick(self.refresh_training, None, outputs, api_visibility="private", show_progress="hidden")


    def _diagnose_tab(self) -> None:
        examples = self.examples()
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                clip = gr.File(label="Clip: video, DICOM (single or multi-frame) or image", type="filepath",
                               elem_id="diagnose-upload")
                gr.Examples([[e] for e in examples], inputs=clip, label="Example clips (synthetic)")
                run = gr.Dropdown(self.model_runs(), label="Model (run)", elem_id="diagnose-run")
                level = gr.Radio(list(SALIENCY_CHOICES), value="all", label="Saliency (Grad-CAM) level",
                                 info="all = local, medium and global side by side; backbone = the classifier")
                go = gr.Button("Diagnose", variant="primary", elem_id="diagnose-go")
                mask = gr.Image(label="Screen mask (red: ignored text and border)", interactive=False,
                                elem_id="diagnose-mask")
            with gr.Column(scale=3, min_width=420):
                message = gr.Markdown(elem_id="diagnose-message")
                bars = gr.Plot(label="Clip-level probabilities", elem_id="diagnose-bars")
                video = gr.Video(label="Saliency overlay", autoplay=True, loop=True, elem_id="diagnose-video")
                slider = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="diagnose-slider")
                frame = gr.Image(label="Overlay at this frame", interactive=False, elem_id="diagnose-frame")
                line = gr.Plot(label="Per-frame probabilities", elem_id="diagnose-line")
                with gr.Row():
                    csv = gr.DownloadButton("Per-frame results (CSV)", elem_id="download-csv")
                    video_file = gr.DownloadButton("Overlay video (mp4)", elem_id="download-video")
        result_id = gr.State(None)
        outputs = [message, bars, line, video, slider, frame, mask, csv, video_file, result_id]
        go.click(self.diagnose, [clip, run, level], outputs, api_visibility="private")
        clip.upload(self.diagnose, [clip, run, level], outputs, api_visibility="private")
        slider.change(self.diagnose_frame, [result_id, slider], [frame, line], api_visibility="private",
                      show_progress="hidden")
        run.focus(self.refresh_choices, None, run, api_visibility="private")
        return run

    def _explore_tab(self):
        with gr.Row():
            run = gr.Dropdown(self.model_runs(), label="Model (run)", elem_id="explore-run", scale=2)
            dataset = gr.Textbox(str(synth_dir(self.home)), label="Dataset", scale=3, elem_id="explore-dataset")
            colour = gr.Radio(["class", "video", "split", "level"], value="class", label="Colour by", scale=2)
            pair = gr.Radio(list(PAIRS), value=list(PAIRS)[0], label="Cross-level view", scale=2)
            show = gr.Button("Show embeddings", variant="primary", scale=1, elem_id="explore-go")
        message = gr.Markdown(elem_id="explore-message")
        plot = scatter(thumbnail=self.thumbnail, elem_id="explore-scatter",
                       empty_text="Pick a run and press Show embeddings.")
        with gr.Row():
            with gr.Column(scale=3):
                selection_note = gr.Markdown()
                gallery = gr.Gallery(label="Selected frames", columns=8, height=300, elem_id="explore-gallery")
            with gr.Column(scale=2):
                accuracy = gr.Dataframe(headers=list(ACCURACY_COLUMNS), interactive=False, elem_id="explore-accuracy",
                                        label="Linear probe and kNN accuracy (frames, and videos by mean "
                                              "probability; folds split by video)")
        with gr.Row():
            picked = gr.Image(label="Picked frame", interactive=False, height=200, scale=1)
            with gr.Column(scale=4):
                picked_note = gr.Markdown()
                near = [gr.Gallery(label=f"Nearest at {name}", columns=8, height=130, scale=1)
                        for name in ("local", "medium", "global", "backbone")]
        shown = gr.State(None)
        inputs = [run, dataset, colour, pair]
        outputs = [message, plot, accuracy, shown]
        show.click(self.explore, inputs, outputs, api_visibility="private")
        colour.change(self.explore, inputs, outputs, api_visibility="private", show_progress="hidden")
        pair.change(self.explore, inputs, outputs, api_visibility="private", show_progress="hidden")
        gr.Timer(3.0).tick(self.explore_tick, [*inputs, shown], outputs, api_visibility="private",
                           show_progress="hidden")
        plot.select(self.selected_frames, [run, dataset], [gallery, selection_note], api_visibility="private")
        plot.click(self.neighbours, [run, dataset], [picked, picked_note, *near], api_visibility="private")
        run.focus(self.refresh_choices, None, run, api_visibility="private")
        return run


def _row_ids(evt: gr.EventData, rows: int) -> list[int]:
    """The row ids an event from the page names, keeping only whole numbers within the table."""
    ids = getattr(evt, "ids", None)
    if not isinstance(ids, list):
        return []
    return [int(i) for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < rows]


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, auth=None, max_upload_mb: float = 500,
           demo: bool = True, prevent_thread_lock: bool = False, home: Path | None = None, data_dirs=()):
    """Build the app, start the embedded default in the background, and serve it.

    data_dirs: folders (besides $HICO_HOME/datasets) whose datasets requests may use.
    SIGTERM ends the app as Ctrl-C does: the server closes and a run it started stops with a
    checkpoint (see Jobs.shutdown).
    """
    hico = HiCoApp(home, data_dirs)
    if demo:
        threading.Thread(target=_start_demo, args=(hico,), daemon=True).start()
    threading.Thread(target=_warm_up_umap, daemon=True).start()
    atexit.register(hico.jobs.shutdown)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    blocks = hico.build()
    blocks.queue(default_concurrency_limit=4)
    blocks.launch(server_name=host, server_port=port, share=share, auth=auth, max_file_size=int(max_upload_mb * 2**20),
                  prevent_thread_lock=prevent_thread_lock, css=CSS, ssr_mode=False, footer_links=["api"],
                  allowed_paths=[str(hico.home)])
    return blocks, hico


def _warm_up_umap() -> None:
    """UMAP compiles its numba kernels on first use (a minute on two cores): do it before anyone asks."""
    from hico.embed import project

    project(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32), "umap")
    log.info("UMAP is warmed up")


def _start_demo(hico: HiCoApp) -> None:
    try:
        log.info(ensure_demo(hico.home, hico.jobs))
    except HiCoError as exc:
        log.warning("embedded default not ready: %s", exc)
