"""The app in a real headless browser (Debian's chromium through Playwright): a short training
run whose chart updates, an Explore selection that fills the gallery, a Diagnose upload that
shows the overlay, and not one request to the internet."""

import re

import pytest

from tests.app_fixtures import CHROMIUM, CHROMIUM_ARGS, EXAMPLES, live_app  # noqa: F401

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def page(live_app):  # noqa: F811
    from playwright.sync_api import sync_playwright

    url = live_app[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.outside = []
        page.on("request", lambda r: None if re.match(r"^(https?://127\.0\.0\.1[:/]|data:|blob:)", r.url)
                else page.outside.append(r.url))
        page.goto(url)
        page.wait_for_selector("#start-training")
        yield page
        browser.close()


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def _choose(page, elem_id: str, option: str) -> None:
    """Pick a dropdown option by typing it, as a keyboard user would.

    Focusing the dropdown refreshes its choices from the server; a robot that picks within the
    same few milliseconds can click an option that is being replaced, so it tries again.
    """
    box = page.locator(f"#{elem_id} input").first
    for attempt in range(3):
        box.click()
        box.fill(option)
        page.get_by_role("option", name=option, exact=True).click()
        try:
            page.wait_for_function(f"document.querySelector('#{elem_id} input').value === '{option}'", timeout=5000)
            return
        except Exception:
            page.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in #{elem_id}: it shows {box.input_value()!r}")


def test_a_zip_uploaded_in_the_train_tab_trains_with_live_progress_and_curves(page, live_app, tmp_path):  # noqa: F811
    import zipfile

    from hico.runs import read_run

    _, home, data, _ = live_app
    archive = tmp_path / "scans.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for clip in sorted(data.rglob("*.mp4")):
            zf.write(clip, "scans/" + clip.relative_to(data).as_posix())
    # the server's limits are said on the form (issue 19); this app has no caps but the machine's memory
    assert page.inner_text("#train-limits") == ("Limits on this server: input size up to 1024 px; batch size up to "
                                                "65,536 videos; a run must fit the memory the machine has free.")
    page.get_by_text("Add or delete a dataset").click()
    _fill(page, "dataset-name", "upload1")
    page.locator("#dataset-upload input[type=file]").set_input_files(str(archive))
    page.wait_for_function("document.querySelector('#train-message').innerText"
                           ".includes('Dataset upload1: 8 clips in 2 classes (bright 4, dark 4).')", timeout=30000)
    assert page.locator("#train-dataset input").first.input_value() == "upload1"
    _fill(page, "train-size", "32")
    _fill(page, "train-batch", "4")
    _fill(page, "train-epochs", "3")
    page.click("#start-training")
    page.wait_for_function("document.querySelector('#train-message').innerText.includes('Started')", timeout=20000)
    run_name = page.inner_text("#train-message").split("Started")[1].strip(" .")
    assert read_run(home / "runs" / run_name).config["data"]["root"] == str(home / "datasets" / "upload1")
    # a second browser window (a reopened browser) shows the same live run
    other = page.context.browser.new_page()
    other.goto(page.url)
    other.wait_for_function(f"(document.querySelector('#train-progress')?.innerText || '').includes('{run_name}')",
                            timeout=30000)
    other.close()
    # the timer redraws the progress bar and the chart while the child process trains
    page.wait_for_selector("#train-progress [data-state='finished']", timeout=120000)
    assert "step 3/3" in page.inner_text("#train-progress")
    traces = page.locator("#train-chart .scatterlayer .trace").count()
    assert traces >= 7  # the loss terms, lr and throughput
    assert "finished" in page.inner_text("#run-list")
    # each epoch's validation drew held-out accuracy per level; overlaying another run adds its own
    legend = "(document.querySelector('#train-chart .legend2')?.textContent || '')"
    page.wait_for_function(f"{legend}.includes('kNN') && {legend}.includes('{run_name}')", timeout=20000)
    box = page.locator("#train-compare input").first
    box.click()
    box.fill("tiny")
    page.get_by_role("option", name="tiny", exact=True).click()
    page.wait_for_function(f"{legend}.includes('tiny')", timeout=20000)
    assert page.locator("#train-chart .scatterlayer .trace").count() > traces
    # the uploaded dataset is deleted from the same tab, after a confirmation
    _choose(page, "delete-dataset-name", "upload1")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-dataset")
    page.wait_for_function("document.querySelector('#train-message').innerText.includes('Deleted dataset upload1.')",
                           timeout=20000)
    assert not (home / "datasets" / "upload1").exists()
    # the finished run is exported for download: the model, its encoder and its card
    _choose(page, "export-run-name", run_name)
    page.click("#export-run")
    page.wait_for_selector("#export-files td.filename[aria-label='MODEL_CARD.md']", timeout=60000)
    names = page.eval_on_selector_all("#export-files td.filename", "cells => cells.map(c => c.getAttribute('aria-label'))")
    assert sorted(names) == ["MODEL_CARD.md", "model.onnx", "resnet18_encoder.pt"]
    assert f"Exported {run_name}" in page.inner_text("#train-message")


def test_a_run_is_fine_tuned_from_the_train_tab_and_followed_like_any_run(page, live_app):  # noqa: F811
    """Fine-tune a run: choosing a run fills in its own dataset; Fine-tune starts the new run, says
    its name, and the progress panel and the run list follow it to its end."""
    from hico.runs import read_run

    _, home, data, _ = live_app
    page.get_by_text("Fine-tune a run").click()
    _choose(page, "finetune-run", "tiny")
    page.wait_for_function(f"document.querySelector('#finetune-dataset input').value === '{data}'", timeout=10000)
    page.locator("#finetune-head").get_by_label("Linear head").check()
    _fill(page, "finetune-fraction", "0.5")
    _fill(page, "finetune-steps", "3")
    page.click("#finetune-start")
    page.wait_for_function("document.querySelector('#finetune-message').innerText.includes('Started')", timeout=20000)
    assert page.inner_text("#finetune-message") == ("Started tiny-ft-linear: a linear head on frozen features of tiny "
                                                    "fine-tuned on 50% of the labelled videos of data, for at most 3 "
                                                    "steps.")
    assert page.locator("#train-shown input").first.input_value() == "tiny-ft-linear"
    page.wait_for_function("(document.querySelector('#train-progress')?.innerText || '').includes('tiny-ft-linear')"
                           " && document.querySelector(\"#train-progress [data-state='finished']\")", timeout=120000)
    assert "step 3/3" in page.inner_text("#train-progress")
    assert "tiny-ft-linear" in page.inner_text("#run-list")
    info = read_run(home / "runs" / "tiny-ft-linear")
    assert info.state == "finished" and info.config["loss"]["mode"] == "supervised"
    assert info.config["data"]["label_fraction"] == 0.5


def test_explore_selection_fills_the_gallery(page, live_app):  # noqa: F811
    _, _, data, _ = live_app
    page.get_by_role("tab", name="Explore").click()
    _choose(page, "explore-run", "tiny")
    _fill(page, "explore-dataset", str(data))
    page.click("#explore-go")
    drag = "#explore-scatter .hs-plot[data-panel='0'] .nsewdrag"
    page.wait_for_selector(drag, timeout=120000)
    page.wait_for_function("document.querySelector('#explore-message').innerText.includes('48 frames')",
                           timeout=60000)
    box = page.locator(drag).bounding_box()
    corners = [(box["x"] + 3, box["y"] + 3), (box["x"] + box["width"] - 3, box["y"] + 3),
               (box["x"] + box["width"] - 3, box["y"] + box["height"] - 3), (box["x"] + 3, box["y"] + box["height"] - 3),
               (box["x"] + 3, box["y"] + 3)]
    page.mouse.move(*corners[0])
    page.mouse.down()
    for corner in corners[1:]:
        page.mouse.move(*corner, steps=6)
    page.mouse.up()
    page.wait_for_function("document.querySelectorAll('#explore-gallery img').length > 0", timeout=30000)
    assert page.locator("#explore-gallery img").count() == 48  # every frame of the dataset was inside

    # colour by level: every panel in its level's colour, the cross-level panel's two levels apart
    page.get_by_label("level", exact=True).check()
    page.wait_for_function("!document.querySelector('#explore-scatter .hs-legend').innerText.includes('bright')",
                           timeout=30000)
    colours = page.evaluate("() => [...document.querySelectorAll('#explore-scatter .hs-plot')].map(p => "
                            "[...new Set(p.data.filter(t => t.mode === 'markers').map(t => String(t.marker.color)))])")
    assert [len(c) for c in colours] == [1, 1, 1, 1, 2]
    assert len({c[0] for c in colours[:4]}) == 4 and set(colours[4]) <= {c[0] for c in colours[:4]}
    legend = page.inner_text("#explore-scatter .hs-legend")
    assert all(name in legend for name in ("local", "medium", "global")), legend


def test_diagnose_upload_shows_prediction_and_overlay(page):
    page.get_by_role("tab", name="Diagnose").click()
    _choose(page, "diagnose-run", "tiny")
    page.locator("#diagnose-upload input[type=file]").set_input_files(str(EXAMPLES / "lung_b_lines.mp4"))
    page.wait_for_function("document.querySelector('#diagnose-message').innerText.includes('over 32 frames')",
                           timeout=120000)
    page.wait_for_selector("#diagnose-video video[src]", timeout=30000)
    page.wait_for_selector("#diagnose-frame img", timeout=30000)
    assert page.locator("#diagnose-bars .trace.bars").count() == 1


def test_a_still_image_gets_a_still_overlay_and_bars_and_an_example_click_runs(page):
    page.get_by_role("tab", name="Diagnose").click()
    _choose(page, "diagnose-run", "tiny")
    page.locator("#diagnose-upload button[aria-label='Clear'], #diagnose-upload button[aria-label='Remove file']"
                 ).first.click()  # the clip of the test before
    page.wait_for_function("document.querySelector('#diagnose-message').innerText.includes('Upload a clip')")
    page.locator("#diagnose-upload input[type=file]").set_input_files(str(EXAMPLES / "lung_effusion_still.png"))
    page.wait_for_function("document.querySelector('#diagnose-message').innerText.includes('on a single frame')",
                           timeout=120000)
    page.wait_for_selector("#diagnose-frame img", timeout=30000)
    assert page.locator("#diagnose-video").is_hidden() and page.locator("#diagnose-slider").is_hidden()
    message = page.inner_text("#diagnose-message")
    # familiar or not, it says; an unfamiliar clip says so first, its bars greyed
    assert "the model's training data (score" in message or message.lstrip("⚠️ ").startswith("This model was trained on")
    if "classes do not apply" in message:
        colours = page.evaluate("() => document.querySelector('#diagnose-bars .js-plotly-plot').data[0].marker.color")
        assert set(colours) == {"#c7c7c7"}
    bars = page.evaluate("() => document.querySelector('#diagnose-line .js-plotly-plot').data.map(t => t.type)")
    assert set(bars) == {"bar"} and len(bars) == 4  # the classifier and the three levels' probes
    assert "Overlay image (png)" in page.inner_text("#download-video")
    # an example clip runs when clicked, as an upload does
    page.get_by_text("liver_f3_cine.dcm").first.click()
    page.wait_for_function("document.querySelector('#diagnose-message').innerText.includes('over 24 frames')",
                           timeout=120000)
    page.wait_for_selector("#diagnose-video video[src]", timeout=30000)
    assert page.locator("#diagnose-slider").is_visible()


def test_the_page_loaded_nothing_from_the_internet(page):
    assert page.outside == []
