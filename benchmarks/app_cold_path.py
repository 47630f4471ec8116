"""Time Explore's first views as the app serves them, from a cold start, through the app's own code.

    python -m benchmarks.app_cold_path                      (from the repository root, where `app` is)
    python -m benchmarks.app_cold_path --beside-training    (with a demo training run on the same cores)

In a new $HICO_HOME it writes the embedded synthetic dataset and a demo-architecture run. By
default the app is as after the demo's training: the clips' decoded frames are in the frame cache
(training decoded them) and umap-learn is compiled (the app's warm-up at start has finished).
With --cold neither is: numba's disk cache is empty (an app's first start on a new machine), the
UMAP warm-up thread starts as `python app.py` starts it, and every clip is decoded (the worst case:
the warm-up, the decoding and the embedding share the CPU). Then it presses Show embeddings for
that run and polls the page's tick every 0.5 s (the page does every 3 s). It prints the seconds
from that press to:

- the first points on screen (Show embeddings' own answer: a part of the table, or all of it);
- every frame drawn (the whole table's PCA view);
- the accuracy table filled, and that time counted from the whole table;
- the first panel in UMAP, and every panel in UMAP;

and then the same press from a new app object (table and projections cached on disk). With
--browser all of it is timed in headless Chromium at 1366 x 768 on the app as `python app.py` serves
it: from the click on Show embeddings to what the page shows (markers drawn, the message, the
accuracy table), and the same press on a reloaded page.

With --beside-training, the demo's training (configs/demo.yaml) runs on the same data first, started
as the app starts it (app.jobs), and the clock starts once it is stepping.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

HOME = Path(tempfile.mkdtemp(prefix="hico-app-cold-"))
os.environ["HICO_HOME"] = str(HOME)
os.environ["NUMBA_CACHE_DIR"] = str(HOME / "numba")  # before anything imports numba


def start_training(data: Path) -> "Jobs":
    """The demo's training run on `data`, started as the app starts it (app.jobs: a child process at
    a lower priority); returns once it has logged a step."""
    import yaml

    from app.jobs import Jobs

    values = yaml.safe_load(Path("configs/demo.yaml").read_text())
    values["data"]["root"] = str(data)
    values["train"]["log_every"] = 1
    jobs = Jobs(HOME / "runs")
    run = jobs.start(values, name="beside")
    deadline = time.time() + 300
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and any('"step"' in line for line in metrics.read_text().splitlines()):
            return jobs
        if jobs.active() is None:
            raise SystemExit(f"the training run beside ended early (its log: {run / 'train.log'})")
        time.sleep(1)
    jobs.stop()
    raise SystemExit("the training run beside did not step within 300 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beside-training", action="store_true", help="time it with a demo training run beside")
    parser.add_argument("--cold", action="store_true", help="frame cache and numba's cache empty, warm-up beside")
    parser.add_argument("--browser", action="store_true",
                        help="time it in headless Chromium at 1366 x 768 (the page as users see it)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    from app.default import ensure_dataset
    from app.explore import PAIRS
    from app.explore_tab import LEVEL_PANELS
    from app.ui import HiCoApp, _warm_up_umap
    from hico.bench import demo_run
    from hico.data import find_clips

    data = ensure_dataset(HOME)
    run = demo_run(HOME / "runs" / "bench-demo", data, find_clips(data).classes)
    if not args.cold:  # as after training the demo: frames decoded, UMAP compiled
        from hico import config
        from hico.data import build_cache
        from hico.io import ClipLimits

        cfg = config.load(run / "config.yaml")
        build_cache([c.path for c in find_clips(data).clips], cfg.data.size, cfg.data.max_frames, progress=False,
                    limits=ClipLimits.from_config(cfg.data), mask_screen=cfg.data.mask_screen)
        _warm_up_umap()
    child = start_training(data) if args.beside_training else None
    try:
        if args.browser:
            times = measure_browser(run.name)
        else:
            times = measure(HiCoApp, HOME, run.name, next(iter(PAIRS)), len(LEVEL_PANELS) + 1,
                            _warm_up_umap if args.cold else None)
    finally:
        if child is not None:
            child.stop()
    times.update(beside_training=bool(child), cold=args.cold, cores=os.cpu_count())
    if args.json:
        args.json.write_text(json.dumps(times, indent=1))


def measure(app_class, home: Path, run: str, pair: str, panels: int, warm_up) -> dict:
    hico = app_class(home)
    if warm_up is not None:
        threading.Thread(target=warm_up, daemon=True).start()
    start = time.perf_counter()
    times = {}

    def mark(name: str, what: str) -> None:
        if name not in times:
            times[name] = round(time.perf_counter() - start, 2)
            print(f"{times[name]:6.1f} s  {what}", flush=True)

    message, *_, shown, pinned = hico.show_embeddings(run, "", "class", pair)
    mark("first_points_s", f"first points on screen ({shown}): {message.split(' · ')[0]}")
    while shown != "done":
        if shown.startswith("ready:"):
            mark("whole_view_s", "every frame drawn (PCA of the whole table)")
            if int(shown.split(":")[1]) >= 1:
                mark("first_umap_s", "first panel in UMAP")
        item = hico.explorer.by_source(pinned)
        if item is not None and (item.accuracy is not None or item.accuracy_error):
            mark("accuracy_s", "accuracy table filled")
        time.sleep(0.5)
        message, *_, shown, pinned = hico.explore_tick(run, "", "class", pair, shown, None, pinned)
    mark("whole_view_s", "every frame drawn (PCA of the whole table)")
    mark("accuracy_s", "accuracy table filled")
    mark("all_umap_s", f"every panel in UMAP ({panels})")
    times["accuracy_after_whole_s"] = round(times["accuracy_s"] - times["whole_view_s"], 2)
    print(f"{times['accuracy_after_whole_s']:6.1f} s  accuracy table, counted from the whole table")
    again = app_class(home)
    start = time.perf_counter()
    *_, shown, _ = again.show_embeddings(run, "", "class", pair)
    times["cached_s"] = round(time.perf_counter() - start, 2)
    print(f"{times['cached_s']:6.2f} s  the same press from a new app object, cached ({shown})")
    return times


# What the Explore page shows now: markers drawn, the message, the accuracy table's text.
_PAGE_STATE = """() => {
    const root = document.querySelector('#explore-scatter .hs-root');
    const st = root && root.parentElement.__hicoScatter;
    const drawn = st && st.plots.length ? st.plots.reduce((n, p) => n + (p.ready ? p.div.data.filter(
        t => t.mode === 'markers').reduce((m, t) => m + t.x.filter(v => v !== null).length, 0) : 0), 0) : 0;
    return [drawn, document.querySelector('#explore-message').innerText,
            document.querySelector('#explore-accuracy').innerText];
}"""


def _pick_run(page, run: str) -> None:
    page.get_by_role("tab", name="Explore").click()
    box = page.locator("#explore-run input").first
    box.click()
    box.fill(run)
    page.get_by_role("option", name=run, exact=True).click()


def measure_browser(run: str) -> dict:
    """The same press in headless Chromium at 1366 x 768, on the app as `python app.py` serves it
    (its page ticks every 1.5 s); the seconds from the click to what the page shows."""
    import socket

    from playwright.sync_api import sync_playwright

    from app.ui import launch

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    blocks, hico = launch(port=port, demo=False, prevent_thread_lock=True, home=HOME)
    times = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(f"http://127.0.0.1:{port}/")
            _pick_run(page, run)
            start = time.perf_counter()
            page.click("#explore-go")

            def mark(name: str, what: str) -> None:
                if name not in times:
                    times[name] = round(time.perf_counter() - start, 2)
                    print(f"{times[name]:6.1f} s  {what}", flush=True)

            while time.perf_counter() - start < 600:
                drawn, message, accuracy = page.evaluate(_PAGE_STATE)
                if drawn:
                    mark("first_points_s", f"first points on the page ({drawn:,} markers): {message[:90]}")
                if drawn and "embedded so far" not in message and "frames of" in message:
                    mark("whole_view_s", "every frame drawn")
                if drawn and "computing" not in accuracy and "local" in accuracy:
                    mark("accuracy_s", "accuracy table filled")
                if "· UMAP ·" in message:
                    mark("all_umap_s", "every panel in UMAP")
                    break
                time.sleep(0.1)
            times["accuracy_after_whole_s"] = round(times["accuracy_s"] - times["whole_view_s"], 2)
            page.reload()
            _pick_run(page, run)
            start = time.perf_counter()
            page.click("#explore-go")
            page.wait_for_function(f"({_PAGE_STATE})()[0] > 0 && ({_PAGE_STATE})()[1].includes('· UMAP ·')",
                                   polling=50, timeout=60_000)
            times["cached_s"] = round(time.perf_counter() - start, 2)
            print(f"{times['cached_s']:6.2f} s  the same press on a reloaded page (table and layouts computed)")
            browser.close()
    finally:
        hico.jobs.shutdown()
        blocks.close()
    return times


if __name__ == "__main__":
    main()
