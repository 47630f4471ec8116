"""Explore in a real headless browser at 1366 x 768 (Debian's chromium through Playwright): UMAP
replaces PCA without a click; a run that trains on is explored at the checkpoint shown (no
re-embed, controls and plot agree, the lasso survives); neighbours come from other clips; the
cross-level view says what to read."""

import json
import shutil
import threading

import pytest

from tests.app_fixtures import CHROMIUM, CHROMIUM_ARGS, live_app  # noqa: F401

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
SCATTER = "document.querySelector('#explore-scatter .hs-root').parentElement.__hicoScatter"
MESSAGE = "document.querySelector('#explore-message').innerText"


@pytest.fixture(scope="module")
def page(live_app):  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(live_app[0])
        page.get_by_role("tab", name="Explore").click()
        yield page
        browser.close()


def _show(page, run: str, data) -> None:
    """Pick a run and a dataset in the Explore tab and press Show embeddings."""
    box = page.locator("#explore-run input").first
    for _ in range(3):  # focusing refreshes the choices; a pick in the same instant can miss
        box.click()
        box.fill(run)
        page.get_by_role("option", name=run, exact=True).click()
        if box.input_value() == run:
            break
    dataset = page.locator("#explore-dataset input").first
    dataset.fill(str(data))
    dataset.press("Tab")
    page.click("#explore-go")


def _lasso_all(page) -> None:
    """A lasso around the whole of panel 0."""
    page.locator("#explore-scatter .hs-plot[data-panel='0']").scroll_into_view_if_needed()
    box = page.locator("#explore-scatter .hs-plot[data-panel='0'] .nsewdrag").bounding_box()
    x0, y0, x1, y1 = box["x"] + 3, box["y"] + 3, box["x"] + box["width"] - 3, box["y"] + box["height"] - 3
    page.mouse.move(x0, y0)
    page.mouse.down()
    for corner in ((x1, y0), (x1, y1), (x0, y1), (x0, y0)):
        page.mouse.move(*corner, steps=6)
    page.mouse.up()


def test_umap_replaces_pca_without_a_click(page, live_app):  # noqa: F811
    """The page shows PCA at once and swaps in UMAP by itself (the tick), nothing pressed between."""
    _, _, data, hico_app = live_app
    gate = threading.Event()
    real_umap = hico_app.explorer.umap

    def held_umap(item, view):  # UMAP waits until the page has shown PCA
        gate.wait(120)
        return real_umap(item, view)

    hico_app.explorer.umap = held_umap
    try:
        _show(page, "tiny", data)
        page.wait_for_function(f"{MESSAGE}.includes('PCA') && {SCATTER}.value && {SCATTER}.plots.length === 5",
                               timeout=120_000)
        assert page.evaluate(f"{SCATTER}.value.panels.map(p => p.view)") == ["pca"] * 5
        gate.set()
        page.wait_for_function(f"{SCATTER}.value.panels.every(p => p.view === 'umap') && {MESSAGE}.includes('· UMAP ·')",
                               timeout=180_000)
    finally:
        gate.set()
        hico_app.explorer.umap = real_umap
    assert "48 frames of 8 clips" in page.inner_text("#explore-message")
    assert page.evaluate(f"{SCATTER}.plots.every(p => p.ready)")


def test_the_cross_level_view_says_what_to_read(page):
    caption = page.locator("#explore-cross-caption")
    caption.scroll_into_view_if_needed()
    assert caption.is_visible()
    text = caption.inner_text()
    assert "one shared space" in text and "a short line means the two levels agree" in text
    assert "grey" in text and "red" in text
    # the wide panel's lines come in the colours the caption names (thirds by length)
    colours = page.evaluate("[...document.querySelector(\"#explore-scatter .hs-plot[data-panel='4']\").data]"
                            ".filter(t => t.mode === 'lines').map(t => t.line.color)")
    assert len(colours) == 3 and colours[0].startswith("rgba(80,86,94") and colours[2].startswith("rgba(205,35,35")


def test_neighbours_of_a_clicked_frame_come_from_other_clips(page, live_app):  # noqa: F811
    """A click shows the frame large and, per level, its nearest frames from other clips, captioned
    in full, tiles at least 160 px wide at 1366 x 768."""
    _show(page, "tiny", live_app[2])
    page.wait_for_function(f"{MESSAGE}.includes('48 frames') && {SCATTER}.value && {SCATTER}.plots.every(p => p.ready)",
                           timeout=120_000)
    page.locator("#explore-scatter .hs-plot[data-panel='0']").scroll_into_view_if_needed()
    point = page.evaluate(f"""() => {{
        const gd = document.querySelector("#explore-scatter .hs-plot[data-panel='0']");
        const t = gd.data.findIndex(tr => tr.mode === 'markers' && tr.x.length);
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [r.left + xa.l2p(gd.data[t].x[0]), r.top + ya.l2p(gd.data[t].y[0])];
    }}""")
    page.mouse.click(*point)
    page.wait_for_function("document.querySelector('#explore-picked-note').innerText.includes('Picked')", timeout=30_000)
    note = page.inner_text("#explore-picked-note")
    picked_clip = note.split("·")[1].strip().rsplit("/", 1)[-1]
    assert "from other clips" in note
    for level in ("local", "medium", "global", "backbone"):
        gallery = f"#explore-near-{level}"
        page.wait_for_function(f"document.querySelectorAll('{gallery} img').length >= 4", timeout=30_000)
        captions = page.locator(f"{gallery} .caption-label, {gallery} figcaption").all_inner_texts()
        assert captions, f"no captions in {gallery}"
        clips = [c.split("·")[1].strip() for c in captions]
        assert picked_clip not in clips, (picked_clip, clips)
        assert all(c.count("·") == 3 and "frame" in c and "d 0." in c for c in captions), captions
        width = page.locator(f"{gallery} img").first.bounding_box()["width"]
        assert width >= 160, f"{gallery} tiles are {width:.0f} px wide"


def test_a_run_that_trains_on_is_explored_at_the_checkpoint_shown(page, live_app):  # noqa: F811
    """While the run writes a newer checkpoint, the page offers it and never re-embeds unasked:
    changing the colouring and the cross-level pair redraws the table shown (controls and plot
    agree) and the lasso selection survives."""
    _, home, data, hico_app = live_app
    from hico.checkpoint import find_checkpoint

    run = home / "runs" / "tiny-moving"
    shutil.copytree(home / "runs" / "tiny", run)
    starts = []
    real_start = hico_app.explorer.start
    hico_app.explorer.start = lambda *a, **k: starts.append(a) or real_start(*a, **k)
    try:
        before = page.evaluate(f"{SCATTER}.value && {SCATTER}.value.source")
        _show(page, "tiny-moving", data)
        page.wait_for_function(f"{MESSAGE}.includes('48 frames') && {SCATTER}.value && {SCATTER}.value.source !== "
                               f"{json.dumps(before)} && {SCATTER}.plots.every(p => p.ready) && "
                               f"{MESSAGE}.includes('· UMAP ·')", timeout=180_000)
        step = hico_app.explorer.by_source(page.evaluate(f"{SCATTER}.value.source")).step
        assert len(starts) == 1
        _lasso_all(page)
        page.wait_for_function("document.querySelectorAll('#explore-gallery img').length === 48", timeout=30_000)
        sidecar = run / "checkpoints" / f"{find_checkpoint(run)}.json"  # the run writes a newer checkpoint
        values = json.loads(sidecar.read_text())
        values["step"] = step + 10
        sidecar.write_text(json.dumps(values))
        page.wait_for_function(f"{MESSAGE}.includes('step {step + 10} is available')", timeout=30_000)
        assert f"at step {step}" in page.inner_text("#explore-message")
        page.get_by_label("video", exact=True).check()
        page.wait_for_function(f"{SCATTER}.value.color.title === 'video_id'", timeout=30_000)
        page.get_by_label("global ↔ medium", exact=True).check()
        page.wait_for_function(f"{SCATTER}.value.panels[4].title === 'z_global ↔ z_medium'", timeout=30_000)
        page.wait_for_timeout(3500)  # two ticks: they must not redraw another table or drop the selection
        assert page.get_by_label("video", exact=True).is_checked()
        assert page.evaluate(f"{SCATTER}.value.color.title") == "video_id"
        assert page.evaluate(f"{SCATTER}.selected && {SCATTER}.selected.size") == 48
        highlighted = page.evaluate(f"""() => {{
            const gd = document.querySelector("#explore-scatter .hs-plot[data-panel='1']");
            return gd.data.reduce((s, t) => s + (t.selectedpoints ? t.selectedpoints.length : 0), 0);
        }}""")
        assert highlighted == 48
        assert page.locator("#explore-gallery img").count() == 48
        assert len(starts) == 1, "a control or a tick started embedding the newer checkpoint"
        assert f"at step {step}" in page.inner_text("#explore-message")
    finally:
        hico_app.explorer.start = real_start
