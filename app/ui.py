"""The Gradio app: the server-side state every session shares, the page that assembles the tabs,
the API endpoint names, and launch().

Each tab's layout and handlers live in its own module (app/train_tab.py, app/explore_tab.py,
app/diagnose_tab.py), mixed into `HiCoApp`; what the actions compute lives in app/train_tab.py,
app/explore.py, app/diagnose.py and `hico`."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import typing
from pathlib import Path

import gradio as gr
import numpy as np

from hico import runs
from hico.errors import HiCoError
from hico.paths import hico_home
from hico.runs import list_runs

from app.access import Access
from app.default import DEMO_RUN, REPO, Startup, ensure_demo, keep_demo, synth_dir
from app.diagnose import Diagnoser
from app.diagnose_tab import DiagnoseTab
from app.explore import Explorer
from app.explore_tab import ExploreTab
from app.jobs import Jobs
from app.limits import Caps
from app.owners import Owners
from app.run_metrics import MetricsCache
from app.timeline_view import TimelineViews
from app.train_tab import TrainTab
from app.uploads import UPLOAD_MAX_AGE_S, UPLOAD_SWEEP_S, UploadJanitor, upload_cap

log = logging.getLogger(__name__)

EXAMPLES = REPO / "assets" / "examples"
# the API: each name's handler is HiCoApp.api_<name>; what it returns is declared in app.api_types
ENDPOINTS = ("start_training", "finetune", "training_status", "stop_training", "upload_dataset", "delete_dataset",
             "delete_run", "embeddings",
             "timeline", "compare", "predict", "find_similar", "export")
# Gradio keeps every upload and a copy of every file it serves: they go after an hour, checked
# every 5 minutes, and the oldest go sooner when they take more than the cap (app.uploads).
GRADIO_CACHE_CLEANUP = (UPLOAD_SWEEP_S, UPLOAD_MAX_AGE_S)
# On the app's stop: how long the demo's start-up and the training child together may take to end
# (within app.py's STOP_WITHIN_S). The start-up gets what it needs of it, up to START_UP_STOP_S (the
# synthetic set's worker processes take seconds to start on two busy cores, and finish a clip first);
# the child the rest (Jobs.shutdown: half to stop with a checkpoint, half after SIGTERM).
RUNS_STOP_S, START_UP_STOP_S = 13.0, 9.0
# Gradio keeps each session's state (about 300 KB: every component's config) for its newest 10,000
# sessions; every page load, gradio_client and REST call without a session is one. 200 bounds it
# at about 60 MB; a page evicted past them loses its gr.State values (the Diagnose slider's result,
# Explore's choices) and starts again from their defaults.
SESSIONS_KEPT = 200
CSS = """
.hico-progress { font-size: 0.95rem; }
.hico-bar { height: 14px; background: #e5e7eb; border-radius: 7px; overflow: hidden; margin: 4px 0 6px; }
.hico-bar > div { height: 100%; transition: width 0.6s; }
.hico-error textarea { font-family: ui-monospace, monospace; color: #b91c1c; }
/* neighbour tiles: the caption in full (class, clip, frame, distance), under the picture */
.hico-neighbours .caption-label { white-space: normal; max-width: 100%; opacity: 0.9; font-size: 0.8rem; }
"""


class HiCoApp(TrainTab, ExploreTab, DiagnoseTab):
    """Server-side state shared by every browser session: the job runner, the caches and the
    allow-lists of what a request may touch (app.access). Per-session state lives in the page
    (gr.State and the values it holds), never here. The tabs' handlers come from the mixins."""

    def __init__(self, home: Path | None = None, data_dirs=(), caps: Caps = Caps(), owners: Owners = Owners()):
        self.home = Path(home) if home else hico_home()
        self.access = Access(self.home, data_dirs, examples=self.examples())
        self.jobs = Jobs(self.access.runs_dir, caps=caps)
        self.owners = owners  # who may stop, resume and delete which run (app.owners)
        self.diagnoser = Diagnoser(self.home / "diagnose")
        self.startup = Startup()  # what the first start is doing (the demo's dataset), for the Train tab
        self.explorer = Explorer()
        self.metrics = MetricsCache()  # every run's metrics.jsonl rows, read again only when the file changed
        self.timeline_views = TimelineViews()  # built timelines per run and level; it locks itself
        # (every cache of the app is one of these attributes, living as long as the app)

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

    def default_run(self) -> str | None:
        """The run a model choice starts on: the user's newest finished run, else the demo once it
        has a checkpoint, else the newest run with one (a short stopped run only as a last resort)."""
        with_checkpoint = [r for r in list_runs(self.jobs.runs_dir) if r.checkpoints]
        finished = [r.name for r in with_checkpoint if r.state == "finished" and r.name != DEMO_RUN]
        names = [r.name for r in with_checkpoint]
        if finished:
            return finished[0]
        return DEMO_RUN if DEMO_RUN in names else (names[0] if names else None)

    def refresh_runs(self, current):
        """On page load: the runs with a checkpoint, keeping the choice or taking default_run."""
        choices = self.model_runs()
        value = current if current in choices else self.default_run()
        return gr.update(choices=choices, value=value)

    def refresh_choices(self):
        """On focus: new runs appear in the list; the value is left alone (the user is choosing)."""
        return gr.update(choices=self.model_runs())

    def dataset_dropdown(self, value: str | None = None, **kwargs) -> gr.Dropdown:
        """A dataset choice: the app's datasets (listed again when it gets focus), `value` chosen
        (default: the embedded synthetic set), and any path the app may read typed in."""
        value = str(synth_dir(self.home)) if value is None else value
        dropdown = gr.Dropdown(self.access.datasets(), value=value, allow_custom_value=True, **kwargs)
        dropdown.focus(lambda: gr.update(choices=self.access.datasets()), None, dropdown, api_visibility="private")
        return dropdown

    def build(self) -> gr.Blocks:
        """The page: the three tabs (each tab's module holds its layout and handlers) and the API."""
        with gr.Blocks(title="HiCo — ultrasound pretraining", delete_cache=GRADIO_CACHE_CLEANUP) as demo:
            gr.Markdown("# HiCo\nHierarchical contrastive pretraining for ultrasound video: train a model, "
                        "explore what each level learned, diagnose a clip.")
            with gr.Tabs():
                with gr.Tab("Train", id="train"):
                    self.train_tab()
                with gr.Tab("Explore", id="explore"):
                    explore_run = self.explore_tab()
                with gr.Tab("Diagnose", id="diagnose"):
                    diagnose_run = self.diagnose_tab()
            demo.load(self.refresh_runs, explore_run, explore_run, api_visibility="private")
            demo.load(self.refresh_runs, diagnose_run, diagnose_run, api_visibility="private")
            for name in ENDPOINTS:
                gr.api(_typed(getattr(self, f"api_{name}")), api_name=name)
        return demo


def _typed(method):
    """The endpoint with its annotations as types, not the strings `from __future__ import
    annotations` leaves: Gradio reads them as they are to describe the API (app.api_types)."""
    function = method.__func__
    function.__annotations__ = typing.get_type_hints(function)
    return method


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False, auth=None, max_upload_mb: float = 500,
           demo: bool = True, prevent_thread_lock: bool = False, home: Path | None = None, data_dirs=(),
           caps: Caps = Caps(), admins=(), shutdown=None):
    """Build the app, start the embedded default in the background, and serve it.

    auth: None, or a list of (user, password) logins; admins: which of those users may stop and
    delete anyone's run (app.owners). caps: what clients may ask of a run (app.limits).
    data_dirs: folders (besides $HICO_HOME/datasets) whose datasets requests may use.
    shutdown: app.py's `Shutdown`, which ends the process on SIGTERM or Ctrl-C: launch hands it
    what to stop (the server, the demo's start-up, a run this app started, with a checkpoint), and
    the start-up gives up once its `requested` is set. Without one (the app inside another
    program), signals are left to that program and a run stops at its exit (atexit).
    """
    owners = Owners(tuple(user for user, _ in auth or ()), frozenset(admins))
    hico = HiCoApp(home, data_dirs, caps, owners)
    stop = shutdown.requested if shutdown is not None else threading.Event()
    starter = threading.Thread(target=_start_demo, args=(hico, stop), name="demo start", daemon=True)
    if shutdown is not None:
        shutdown.add("the training child", lambda: _stop_runs(hico.jobs, starter))
    if demo and not stop.is_set():
        starter.start()
        threading.Thread(target=keep_demo, args=(hico.jobs, stop), daemon=True).start()
        atexit.register(stop.set)
    threading.Thread(target=_warm_up_umap, daemon=True).start()
    atexit.register(hico.jobs.shutdown)
    blocks = hico.build()
    blocks.queue(default_concurrency_limit=4)
    janitor = UploadJanitor(blocks, upload_cap(max_upload_mb)).start()  # before launch, which blocks
    atexit.register(janitor.stop)
    if shutdown is not None:
        shutdown.add("the server", lambda: _close_server(blocks))
    blocks.launch(server_name=host, server_port=port, share=share, auth=auth, max_file_size=int(max_upload_mb * 2**20),
                  prevent_thread_lock=prevent_thread_lock, css=CSS, ssr_mode=False, footer_links=["api"],
                  allowed_paths=[str(hico.home)], state_session_capacity=SESSIONS_KEPT)
    return blocks, hico


def _stop_runs(jobs: Jobs, starter: threading.Thread) -> None:
    """On the app's stop: let the demo's start-up end (the synthetic set's writer stops at its next
    clip and its workers with it; a demo run being spawned is let finish spawning), then stop the
    run this app started, and hold the runs' start lock until the process ends, so that no request
    still in flight starts another."""
    deadline = time.monotonic() + RUNS_STOP_S
    if starter.is_alive():
        starter.join(START_UP_STOP_S)
    held = runs.serialised(jobs.runs_dir / ".jobs.lock")  # what Jobs.start and Jobs.resume take
    held.__enter__()  # never left: the process ends holding it (the kernel drops a flock at exit)
    jobs.shutdown(timeout=max(1.0, (deadline - time.monotonic()) / 2))


def _close_server(blocks: gr.Blocks) -> None:
    """Close the server (if it is up) and a share link's tunnel process (if any)."""
    from gradio.tunneling import CURRENT_TUNNELS  # imported with gradio already

    blocks.close(verbose=False)
    for tunnel in list(CURRENT_TUNNELS):
        tunnel.kill()


def _warm_up_umap() -> None:
    """UMAP compiles its numba kernels on first use (a minute on two cores): do it before anyone asks."""
    from hico.embed import project

    project(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32), "umap")
    log.info("UMAP is warmed up")


def _start_demo(hico: HiCoApp, stop: threading.Event) -> None:
    try:
        log.info(ensure_demo(hico.home, hico.jobs, hico.startup.clip_written, stop))
    except HiCoError as exc:
        log.warning("embedded default not ready: %s", exc)
    finally:
        hico.startup.done()
