"""Take the README's screenshots of the three tabs in headless Chromium.

    python docs/screenshots.py --home ~/.hico [--out docs] [--clip assets/examples/lung_b_lines.mp4]
        [--tabs train,explore,diagnose] [--run demo] [--suffix ""] [--size 1440x1000]

The app is launched on `--home` (a HICO_HOME whose demo run has finished, so the pictures show a
trained model) without starting any training, and Debian's chromium is driven by Playwright:
Train shows the latest run's curves, Explore the demo run's UMAP panels coloured by class with
the accuracy table, Diagnose the example clip's prediction and saliency overlay. Look at every
picture before committing it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose(page, elem_id: str, option: str) -> None:
    """Pick an option of a dropdown by typing it, as a keyboard user would."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="HICO_HOME with a finished demo run")
    parser.add_argument("--out", default=str(REPO / "docs"))
    parser.add_argument("--run", default="demo")
    parser.add_argument("--clip", default=str(REPO / "assets" / "examples" / "lung_b_lines.mp4"))
    parser.add_argument("--tabs", default="train,explore,diagnose", help="which tabs to take, comma-separated")
    parser.add_argument("--suffix", default="", help="added to each file name: diagnose<suffix>.png")
    parser.add_argument("--size", default="1440x1000", help="the window, WIDTHxHEIGHT")
    args = parser.parse_args()
    tabs = {t.strip() for t in args.tabs.split(",")}
    width, height = (int(v) for v in args.size.split("x"))
    os.environ["HICO_HOME"] = str(Path(args.home).expanduser())
    sys.path.insert(0, str(REPO))
    from playwright.sync_api import sync_playwright

    from app.ui import launch

    port = free_port()
    blocks, hico_app = launch(port=port, demo=False, prevent_thread_lock=True, home=Path(os.environ["HICO_HOME"]))
    out = Path(args.out)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#train-progress [data-state]", timeout=60000)
            page.wait_for_timeout(3000)  # the chart's first draw
            written = []
            if "train" in tabs:
                written.append(out / f"train{args.suffix}.png")
                page.screenshot(path=str(written[-1]), full_page=True)
            if "explore" in tabs:
                written.append(explore(page, args, out))
            if "diagnose" in tabs:
                page.get_by_role("tab", name="Diagnose").click()
                choose(page, "diagnose-run", args.run)
                page.locator("#diagnose-upload input[type=file]").set_input_files(args.clip)
                page.wait_for_selector("#diagnose-video video[src]", timeout=300000)
                page.wait_for_timeout(2000)
                written.append(out / f"diagnose{args.suffix}.png")
                page.screenshot(path=str(written[-1]), full_page=True)
            browser.close()
    finally:
        blocks.close()
    print("wrote " + ", ".join(map(str, written)))


def explore(page, args, out: Path) -> Path:
    """The Explore tab on the run, once its UMAP panels and accuracy table are drawn."""
    page.get_by_role("tab", name="Explore").click()
    choose(page, "explore-run", args.run)
    page.click("#explore-go")
    try:
        page.wait_for_function("document.querySelector('#explore-message').innerText.includes('· UMAP')",
                               timeout=int(os.environ.get("SHOT_TIMEOUT_MS", 600000)))
    except Exception:
        page.screenshot(path=str(out / "explore-timeout.png"), full_page=True)
        raise
    page.wait_for_function("document.querySelector('#explore-accuracy').innerText.includes('concat')",
                           timeout=600000)
    page.wait_for_timeout(2000)
    path = out / f"explore{args.suffix}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


if __name__ == "__main__":
    main()
