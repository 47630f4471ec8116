"""Render a plot page that HiCo wrote (compare.html of `hico compare` or `hico label-efficiency`)
to a PNG for the README, in headless Chromium:

    python docs/plot_image.py $HICO_HOME/compare/lab/compare.html docs/label_efficiency.png [--width 1400]

The page is self-contained (plotly inlined), so nothing is fetched. Look at the picture before
committing it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from screenshots import ARGS, CHROMIUM  # docs/, the script's own folder, is on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", help="the plot page")
    parser.add_argument("png", help="the picture to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(Path(args.html).resolve().as_uri())
        page.wait_for_selector(".main-svg", timeout=30000)
        page.locator(".plotly-graph-div").first.screenshot(path=args.png)
        browser.close()
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
