"""Explore at scale: a 100,000-frame table, its projection and its panels in the browser.

    python -m benchmarks.explore_scale --frames 100000 [--full-umap] [--json OUT]

Synthetic embeddings stand in for a model's (what is timed does not depend on the model): N
frames in clips of 16, 8 classes, 256 dimensions; a clip's frames lie near each other, a class's
clips near the class's centre. It prints:

1. **Projection**, as `hico.embed.project` lays out a level for Explore: PCA (what shows first),
   then UMAP, which above `UMAP_FIT_MAX` rows lays out a random sample and places every other row
   among the sample (`place_rows`). With --full-umap also UMAP of every row (slow: many minutes on
   two cores), the method the sample replaced. For each layout, `hico.neighbours.projection_scores`
   (of a frame's 10 nearest frames from other clips: the share of its class in 2-D, and the share
   of its neighbours in the embedding kept in 2-D).
2. **The browser**, headless Chromium (Debian's, at /usr/bin/chromium) at 1366 x 768 on a page with
   Explore's scatter: four level panels of N points (the layout of part 1) and the cross-level
   panel of 2,000 linked frames, coloured by class:
   - the time from the click that loads the value to the last panel drawn;
   - pan and zoom: frames per second while panel 1 is dragged in pan mode, and while it is zoomed
     with the mouse wheel, one input per animation frame (`_INTERACT`);
   - hover: from the mouse move onto a point to its tooltip (median of 15 points);
   - lasso: from the mouse release to every panel showing the selection (median of 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FRAMES_PER_CLIP = 16
CLASSES = ("normal", "b_lines", "consolidation", "effusion", "pneumothorax", "liver_f0", "liver_f1", "liver_f2")


def synthetic_embeddings(frames: int, dims: int = 256, seed: int = 0):
    """(x: N x dims float32, labels: N class names, videos: N clip ids): clips of 16 frames."""
    rng = np.random.default_rng(seed)
    clips = -(-frames // FRAMES_PER_CLIP)
    centres = 0.2 * rng.normal(size=(len(CLASSES), dims))
    clip_class = rng.integers(0, len(CLASSES), clips)
    clip_centre = centres[clip_class] + 0.6 * rng.normal(size=(clips, dims))
    clip_of = np.repeat(np.arange(clips), FRAMES_PER_CLIP)[:frames]
    x = (clip_centre[clip_of] + 0.4 * rng.normal(size=(frames, dims))).astype(np.float32)
    return x, np.array(CLASSES)[clip_class[clip_of]], np.array([f"clip{c:06d}" for c in clip_of])


def projection_figures(x, labels, videos, full_umap: bool) -> tuple[dict, np.ndarray]:
    from hico.embed import UMAP_FIT_MAX, project
    from hico.neighbours import projection_scores

    figures = {}

    def timed(name: str, **kwargs) -> np.ndarray:
        start = time.perf_counter()
        xy = project(x, groups=videos, **kwargs)
        seconds = time.perf_counter() - start
        score = projection_scores(x, xy, labels, videos)
        figures[name] = {"seconds": round(seconds, 1), "class_2d": round(score["class_2d"], 3),
                         "class_embedding": round(score["class_embedding"], 3), "kept": round(score["overlap"], 3),
                         "distinct": round(score["distinct"], 3)}
        print(f"{name:>34}: {seconds:7.1f} s   class share 2-D {score['class_2d']:.3f} (embedding "
              f"{score['class_embedding']:.3f}), neighbours kept {score['overlap']:.3f}, "
              f"own position {score['distinct']:.3f}", flush=True)
        return xy

    timed("PCA", method="pca")
    from hico.embed import project as warm  # compile umap-learn once, outside the clock

    warm(np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32), "umap")
    layout = timed(f"UMAP of {min(UMAP_FIT_MAX, len(x)):,} rows, rest placed", method="umap")
    if full_umap and len(x) > UMAP_FIT_MAX:
        timed(f"UMAP of all {len(x):,} rows", method="umap", fit_max=len(x))
    return figures, layout


def browser_figures(layout: np.ndarray, labels, videos, screenshot: Path | None = None) -> dict:
    import gradio as gr
    import pandas as pd
    from playwright.sync_api import sync_playwright

    from app.explore import linked_rows
    from app.scatter import scatter, table_value, to_wire

    n = len(layout)
    table = pd.DataFrame({"video_id": videos, "frame": np.arange(n) % FRAMES_PER_CLIP, "label": labels})
    rng = np.random.default_rng(1)
    coords = {level: layout @ np.linalg.qr(rng.normal(size=(2, 2)))[0] for level in ("local", "medium", "global",
                                                                                      "backbone")}
    rows = linked_rows(n)
    joint = np.full((n, 2), np.nan)
    joint[rows] = coords["global"][rows] + 0.3 * rng.normal(size=(len(rows), 2))
    value = table_value(table, {**coords, "z_global": joint, "z_local": coords["local"]}, "label", view="umap5",
                        show=["local", "medium", "global", "backbone"], cross=("z_global", "z_local"),
                        cross_rows=rows, source="scale")
    payload = len(to_wire(value).encode())
    with gr.Blocks(analytics_enabled=False) as demo:
        plot = scatter(None, elem_id="scale")
        gr.Button("load", elem_id="load").click(lambda: value, None, plot)
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True)
    figures = {"points_per_panel": n, "payload_mb": round(payload / 1e6, 2)}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        try:
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#scale .hs-root")
            figures.update(_render(page))
            if screenshot:
                page.locator("#scale").screenshot(path=str(screenshot))
            figures.update(_pan_and_zoom(page))
            figures["hover_ms"] = _hover(page, coords["local"])
            figures["lasso_ms"] = _lasso(page)
        finally:
            browser.close()
            demo.close()
    print(f"browser, {n:,} points x 4 panels + {len(rows):,} x 2 on the cross-level panel, payload "
          f"{figures['payload_mb']} MB: drawn {figures['render_s']} s after the click; pan {figures['pan_fps']} "
          f"frames/s, zoom {figures['zoom_fps']} frames/s; hover {figures['hover_ms']} ms, lasso "
          f"{figures['lasso_ms']} ms (medians)", flush=True)
    return figures


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = "document.querySelector('#scale .hs-root').parentElement"


def _render(page) -> dict:
    t0 = page.evaluate("() => { const t = performance.now(); document.querySelector('#load').click(); return t; }")
    page.wait_for_function(f"() => {ROOT}.dataset.renderSeq && {ROOT}.__hicoScatter.plots.length === 5"
                           f" && {ROOT}.__hicoScatter.plots.every(p => p.ready)", timeout=180_000)
    done = page.evaluate("() => new Promise(r => requestAnimationFrame(() => r(performance.now())))")
    return {"render_s": round((done - t0) / 1000, 2)}


def _area(page, panel: int) -> dict:
    sel = f"#scale .hs-plot[data-panel='{panel}']"
    page.locator(sel).scroll_into_view_if_needed()
    return page.evaluate(f"""() => {{ const r = document.querySelector("{sel} .nsewdrag").getBoundingClientRect();
        return {{left: r.left, top: r.top, width: r.width, height: r.height}}; }}""")


# Pan or zoom panel `panel` for 60 animation frames: each frame sends one input (a mouse move of
# a drag in pan mode, or a wheel step) from inside the page, and the next frame comes only once
# the browser has handled it and drawn. Frames per second = 60 / the time they took. (Inputs sent
# one by one from Python would time the round trips to the browser instead.)
_INTERACT = """async ([panel, kind]) => {
    const gd = document.querySelector(`#scale .hs-plot[data-panel='${panel}']`);
    const drag = gd.querySelector('.nsewdrag');
    const r = drag.getBoundingClientRect();
    const cx = r.left + r.width / 2, cy = r.top + r.height / 2;
    const at = (x, y) => ({clientX: x, clientY: y, bubbles: true, cancelable: true, view: window, buttons: 1});
    const P = await window.__hicoPlotly;
    await P.relayout(gd, {dragmode: 'pan'});
    let redraws = 0;
    gd.on('plotly_relayouting', () => { redraws += 1; });
    gd.on('plotly_relayout', () => { redraws += 1; });
    if (kind === 'pan') drag.dispatchEvent(new MouseEvent('mousedown', {...at(cx, cy), button: 0}));
    const frames = 60;
    const t0 = await new Promise(r => requestAnimationFrame(r));
    const t1 = await new Promise(resolve => {
        let k = 0;
        const step = (t) => {
            if (k === frames) { resolve(t); return; }
            const a = 2 * Math.PI * k / frames;
            if (kind === 'pan') document.dispatchEvent(new MouseEvent('mousemove', at(cx + 40 * Math.cos(a), cy + 40 * Math.sin(a))));
            else drag.dispatchEvent(new WheelEvent('wheel', {...at(cx, cy), deltaY: k < frames / 2 ? -40 : 40}));
            k += 1;
            requestAnimationFrame(step);
        };
        requestAnimationFrame(step);
    });
    if (kind === 'pan') document.dispatchEvent(new MouseEvent('mouseup', at(cx, cy)));
    await P.relayout(gd, {dragmode: 'lasso', 'xaxis.autorange': true, 'yaxis.autorange': true});
    return [frames / ((t1 - t0) / 1000), redraws];
}"""


def _pan_and_zoom(page) -> dict:
    _area(page, 1)
    out = {}
    for kind in ("pan", "zoom"):
        fps, redraws = page.evaluate(_INTERACT, [1, kind])
        out[f"{kind}_fps"], out[f"{kind}_redraws"] = round(fps, 1), redraws
    return out


def _hover(page, xy: np.ndarray) -> float:
    """Median ms from a mouse move onto a point of panel 0 to its tooltip."""
    area = _area(page, 0)
    page.mouse.move(area["left"] - 30, area["top"] - 30)
    ranges = page.evaluate("""() => { const l = document.querySelector("#scale .hs-plot[data-panel='0']")._fullLayout;
        return [l.xaxis.range, l.yaxis.range]; }""")
    (x0, x1), (y0, y1) = ranges
    page.evaluate("""() => window.addEventListener('mousemove', () => { window.__moveAt = performance.now(); },
                                                   {capture: true})""")
    rng = np.random.default_rng(3)
    times = []
    for row in rng.choice(len(xy), 15, replace=False):
        x, y = xy[row]
        px = area["left"] + (x - x0) / (x1 - x0) * area["width"]
        py = area["top"] + (y1 - y) / (y1 - y0) * area["height"]
        page.mouse.move(area["left"] - 30, area["top"] - 30)
        time.sleep(0.25)
        before = page.evaluate(f"() => {ROOT}.__hicoScatter.timing.hoverAt || 0")
        page.mouse.move(px, py)
        try:
            page.wait_for_function(f"() => ({ROOT}.__hicoScatter.timing.hoverAt || 0) > {before}", timeout=5000)
        except Exception:  # no point under the cursor after all (an edge, or hidden by another)
            continue
        times.append(page.evaluate(f"() => {ROOT}.__hicoScatter.timing.hoverAt - window.__moveAt"))
    return round(statistics.median(times), 1) if times else float("nan")


def _lasso(page) -> float:
    """Median ms from the mouse release that ends a lasso on panel 0 to every panel showing it."""
    area = _area(page, 0)
    page.evaluate("""() => window.addEventListener('mouseup', () => { window.__upAt = performance.now(); },
                                                   {capture: true})""")
    times = []
    for k in range(3):
        cx, cy = area["left"] + area["width"] * (0.35 + 0.1 * k), area["top"] + area["height"] * 0.5
        before = page.evaluate(f"() => {ROOT}.__hicoScatter.timing.selectedAt || 0")
        page.mouse.move(cx, cy)
        page.mouse.down()
        for angle in np.linspace(0, 2 * np.pi, 24):
            page.mouse.move(cx + 0.12 * area["width"] * np.cos(angle), cy + 0.2 * area["height"] * np.sin(angle))
        page.mouse.up()
        page.wait_for_function(f"() => ({ROOT}.__hicoScatter.timing.selectedAt || 0) > {before}", timeout=30_000)
        times.append(page.evaluate(f"() => {ROOT}.__hicoScatter.timing.selectedAt - window.__upAt"))
        page.mouse.dblclick(area["left"] + 3, area["top"] + 3)
        time.sleep(0.5)
    return round(statistics.median(times), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--full-umap", action="store_true", help="also UMAP of every row (many minutes)")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--pca-only", action="store_true", help="skip UMAP: the browser part draws the PCA layout")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--screenshot", type=Path, help="save the drawn panels as a PNG here")
    args = parser.parse_args(argv)
    x, labels, videos = synthetic_embeddings(args.frames)
    print(f"{args.frames:,} synthetic frames, {x.shape[1]} dimensions, {len(set(videos)):,} clips, "
          f"{len(CLASSES)} classes", flush=True)
    if args.pca_only:
        from hico.embed import project

        figures, layout = {}, project(x, "pca")
    else:
        figures, layout = projection_figures(x, labels, videos, args.full_umap)
    result = {"frames": args.frames, "projection": figures}
    if not args.no_browser:
        if not CHROMIUM.exists():
            print("no Chromium at /usr/bin/chromium: the browser figures are skipped", file=sys.stderr)
        else:
            result["browser"] = browser_figures(layout, labels, videos, args.screenshot)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
