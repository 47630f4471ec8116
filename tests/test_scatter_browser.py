"""The Explore scatter: the value it draws (pure Python), and in Chromium: lasso and box selections,
clicks and hover thumbnails reaching Python, no request off 127.0.0.1, and a 50,000-point redraw."""

from __future__ import annotations

import base64
import io
import json
import queue
import time
from urllib.parse import urlsplit
from urllib.request import urlopen

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from app.scatter import (MAX_LINKS, encode_color, from_wire, link_segments, marker_size, panels_value,
                         plotly_js_path, rounded, scatter, spread, table_value, to_wire)
from tests.app_fixtures import CHROMIUM, CHROMIUM_ARGS, free_port



# ---------------------------------------------------------------- the value, in Python

def test_panels_value_shapes_rounding_and_categories():
    a = np.array([[0.123456, 1.0], [2.0, -3.000049], [np.nan, 4.5], [1e-5, 7.77777]])
    b = a[::-1] * 2
    v = panels_value({"local": a, "global": b}, ["dog", "cat", None, "dog"], ids=[10, 11, 12, 13],
                     hover=["h0", "h1", "h2", "h3"], color_title="label", view="pca")
    assert v["view"] == "pca" and v["ids"] == [10, 11, 12, 13] and v["hover"] == ["h0", "h1", "h2", "h3"]
    assert [p["title"] for p in v["panels"]] == ["local", "global"]
    assert [p["wide"] for p in v["panels"]] == [False, False]
    local = v["panels"][0]["layers"][0]
    assert local["x"] == [0.1235, 2.0, None, 0.0]
    assert local["y"] == [1.0, -3.0, 4.5, 7.7778]
    assert v["panels"][1]["layers"][0]["x"] == [0.0, None, 4.0, 0.2469]
    assert "rows" not in v["panels"][0] and "links" not in v["panels"][0]
    # Categories sorted, missing ones last; one colour per category, codes per row.
    assert v["color"]["kind"] == "category" and v["color"]["title"] == "label"
    assert v["color"]["names"] == ["cat", "dog", "(none)"]
    assert v["color"]["codes"] == [1, 0, 2, 1]
    assert len(v["color"]["colors"]) == 3 and len(set(v["color"]["colors"])) == 3
    assert v["marker_size"] == 8.0
    json.dumps(v, allow_nan=False)  # strict JSON: no NaN anywhere


def test_color_encoding_kinds():
    assert encode_color([3, 1, 3, 2])["names"] == ["1", "2", "3"]              # few ints: categories
    assert encode_color([True, False, True])["codes"] == [1, 0, 1]
    cont = encode_color([0.5, 2.25, np.nan, 1.0], "frame")
    assert cont == {"kind": "continuous", "title": "frame", "values": [0.5, 2.25, None, 1.0], "min": 0.5, "max": 2.25}
    assert encode_color(np.arange(100))["kind"] == "continuous"               # many ints: a ramp
    assert encode_color(np.arange(100), categorical=True)["names"][:3] == ["0", "1", "2"]
    ordered = pd.Series(pd.Categorical(["lo", "hi", "lo"], categories=["lo", "hi"]))
    assert encode_color(ordered)["names"] == ["lo", "hi"] and encode_color(ordered)["codes"] == [0, 1, 0]
    many = encode_color([f"c{i:02d}" for i in range(25)])
    assert len(set(many["colors"])) == 25


def test_cross_panel_links_are_segments_with_none_separators():
    a = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    b = np.array([[10.0, 20.0], [11.0, 21.0], [12.0, 22.0]])
    assert link_segments(a[:2], b[:2]) == {"x": [0.0, 10.0, None, 1.0, 11.0, None],
                                           "y": [0.0, 20.0, None, 1.0, 21.0, None]}
    v = panels_value({"local": a, "global": b}, show=(), cross=("local", "global"), cross_rows=[2, 0])
    (panel,) = v["panels"]
    assert panel["title"] == "local \u2194 global" and panel["wide"] is True and panel["rows"] == [2, 0]
    assert [(l["name"], l["symbol"]) for l in panel["layers"]] == [("local", "circle"), ("global", "diamond-open")]
    assert panel["layers"][0]["x"] == [2.0, 0.0] and panel["layers"][1]["y"] == [22.0, 20.0]
    assert panel["links"] == {"x": [2.0, 12.0, None, 0.0, 10.0, None], "y": [2.0, 22.0, None, 0.0, 20.0, None]}
    assert v["ids"] == [0, 1, 2]  # rows index into the shared per-row arrays
    # lines change colour at the thirds of the frames' line lengths (all lines here are as long)
    assert panel["link_breaks"] == pytest.approx([np.hypot(10, 20)] * 2)
    spread_out = panels_value({"local": np.zeros((6, 2)), "global": np.c_[np.arange(6.0), np.zeros(6)]}, show=(),
                              cross=("local", "global"))
    assert spread_out["panels"][0]["link_breaks"] == pytest.approx(np.quantile(np.arange(6.0), [1 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="cross names 'medium'"):
        panels_value({"local": a}, cross=("local", "medium"))
    with pytest.raises(ValueError, match="rows"):
        panels_value({"local": a, "global": b[:2]})


def test_cross_panel_draws_lines_for_an_even_sample_of_its_frames():
    """Before: a line for every one of 3,200 frames (a hairball). Now at most `link_limit`
    (MAX_LINKS by default), spread evenly over the panel's frames, the same every time."""
    a = np.stack([np.arange(1000.0), np.zeros(1000)], axis=1)
    b = a + [0.0, 1.0]
    v = panels_value({"local": a, "global": b}, show=(), cross=("local", "global"))
    links = v["panels"][0]["links"]
    assert MAX_LINKS == 300 and v["panels"][0]["link_limit"] == 300 and len(links["x"]) == 3 * 300
    starts = links["x"][0::3]
    assert starts == spread(np.arange(1000)).tolist() and starts[:4] == [0.0, 3.0, 7.0, 10.0] and starts[-1] == 999.0
    assert links["y"][:3] == [0.0, 1.0, None]
    assert panels_value({"local": a, "global": b}, show=(), cross=("local", "global")) == v
    few = panels_value({"local": a[:10], "global": b[:10]}, show=(), cross=("local", "global"), link_limit=4)
    assert few["panels"][0]["links"]["x"][0::3] == [0.0, 3.0, 6.0, 9.0]
    assert spread([5, 6, 7], 4).tolist() == [5, 6, 7]


def test_table_value_uses_index_labels_and_frame_hover():
    table = pd.DataFrame({"video_id": ["v1", "v1", "v2"], "frame": [0, 1, 0], "label": ["a", None, "b"]},
                         index=[7, 8, 9])
    v = table_value(table, {"local": np.zeros((3, 2))}, "label", view="umap", ranges={"local": ((0, 1), (-1, 1))})
    assert v["ids"] == [7, 8, 9]
    assert v["hover"] == ["v1 \u00b7 frame 0 \u00b7 a", "v1 \u00b7 frame 1", "v2 \u00b7 frame 0 \u00b7 b"]
    assert v["color"]["names"] == ["a", "b", "(none)"] and v["color"]["title"] == "label"
    assert v["panels"][0]["xrange"] == [0.0, 1.0] and v["panels"][0]["yrange"] == [-1.0, 1.0]
    with pytest.raises(ValueError, match="no such column"):
        table_value(table, {"local": np.zeros((3, 2))}, "colour")


def test_marker_size_and_payload_compactness():
    assert marker_size(100) == 8.0 and marker_size(50_000) == 2.54 and marker_size(10**7) == 2.5
    assert 2.5 < marker_size(5_000) < marker_size(1_000) < 8.0
    assert rounded([1 / 3, -2 / 3]) == [0.3333, -0.6667]
    rng = np.random.default_rng(0)
    n = 50_000
    coords = {lvl: rng.normal(size=(n, 2)) * 5 for lvl in ("local", "medium", "global", "backbone")}
    labels = rng.choice(["normal", "b-lines", "consolidation", "effusion"], n)
    payload = to_wire(panels_value(coords, labels, view="umap"))
    # ~8 bytes per coordinate; categories as one small int per row, not repeated strings.
    assert len(payload) < 4 * n * 2 * 9 + n * 8
    assert payload.count("consolidation") == 1


def test_component_sends_dicts_as_one_json_string_and_registers_the_thumbnail():
    value = panels_value({"local": np.array([[0.5, 1.0], [2.0, 3.0]])}, ["a", "b"])
    calls = []
    with gr.Blocks():
        comp = scatter(value, thumbnail=lambda rid, source: calls.append((rid, source)) or f"data:image/png;base64,{rid}")
    assert isinstance(comp.value, str) and json.loads(comp.value) == value
    assert json.loads(comp.postprocess(value)) == value and comp.postprocess(None) is None
    assert from_wire(comp.value) == value and from_wire(None) is None
    assert comp.thumbnail("7", "t1") == "data:image/png;base64,7" and calls == [(7, "t1")]  # ids: numbers or strings
    assert comp.thumbnail(["8", "t2"]) == "data:image/png;base64,8" and calls[-1] == (8, "t2")  # as the page sends it
    assert comp.thumbnail("x", "t1") is None and len(calls) == 2  # not a row id: nothing asked
    assert comp.get_config()["server_fns"] == ["thumbnail"]
    assert str(plotly_js_path()) == comp.get_config()["props"]["plotly_path"]


# ---------------------------------------------------------------- in the browser

pytestmark_browser = pytest.mark.skipif(not CHROMIUM.exists(),
                                        reason="browser tests need Chromium at /usr/bin/chromium")
N_SMALL = 300
ID_OFFSET = 1000   # ids differ from row positions, so a mix-up shows
BOX = (2.0, 6.0, 3.0, 7.0)       # x0, x1, y0, y1 of the lasso on panel "a", in data units
CROSS_BOX = (1.0, 5.0, 1.0, 5.0)  # of the box selection on the cross panel
RANGE = (-0.5, 10.5)
LINK_LIMIT = 60   # lines on the small scatter's cross panel: for 60 of its 300 frames, or of a selection


def _small_data():
    """300 points in [0, 10]^2 at two levels, none near the edges of BOX or CROSS_BOX (so pixel
    rounding cannot move a point across an edge)."""
    rng = np.random.default_rng(7)
    edges = set(BOX) | set(CROSS_BOX)
    pts = []
    while len(pts) < 2 * N_SMALL:
        p = rng.uniform(0, 10, 2)
        if all(abs(p[0] - e) > 0.15 and abs(p[1] - e) > 0.15 for e in edges):
            pts.append(p)
    pts = np.array(pts)
    table = pd.DataFrame({"video_id": [f"clip{i // 10:02d}" for i in range(N_SMALL)],
                          "frame": np.arange(N_SMALL) % 10,
                          "label": rng.choice(["normal", "b-lines", "effusion"], N_SMALL)},
                         index=ID_OFFSET + np.arange(N_SMALL))
    return table, {"a": pts[:N_SMALL], "b": pts[N_SMALL:]}


def _png_data_uri(row_id: int) -> str:
    from PIL import Image

    img = Image.fromarray(np.full((16, 16), row_id % 256, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _big_value(n: int, levels=("local", "medium", "global", "backbone"), cross_rows: int = 5_000) -> dict:
    rng = np.random.default_rng(1)
    coords = {lvl: rng.normal(size=(n, 2)) * (k + 1) for k, lvl in enumerate(levels)}
    labels = rng.choice(["normal", "b-lines", "consolidation", "effusion", "pneumothorax"], n)
    rows = np.sort(rng.choice(n, min(n, cross_rows), replace=False))
    return panels_value(coords, labels, view="umap", cross=("local", "global"), cross_rows=rows)



PARTIAL_ROWS = 3000  # rows with points in a partial view of 50,000 (the rest not embedded yet)


def _partial_big_value() -> dict:
    value = _big_value(50_000)
    for panel in value["panels"][:4]:
        layer = panel["layers"][0]
        layer["x"] = layer["x"][:PARTIAL_ROWS] + [None] * (50_000 - PARTIAL_ROWS)
        layer["y"] = layer["y"][:PARTIAL_ROWS] + [None] * (50_000 - PARTIAL_ROWS)
    return value


@pytest.fixture(scope="module")
def browser_app():
    """A small Gradio app with two scatters, and a Chromium page on it."""
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Chromium at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")

    table, coords = _small_data()
    ranges = {"a": (RANGE, RANGE), "a \u2194 b": (RANGE, RANGE)}
    small_value = table_value(table, coords, "label", view="test", cross=("a", "b"), ranges=ranges, source="small-table",
                              link_limit=LINK_LIMIT)
    events: queue.Queue = queue.Queue()
    thumbs: list[tuple[int, str]] = []
    timings: dict = {}

    def thumbnail(row_id, source):
        thumbs.append((row_id, source))
        return _png_data_uri(row_id)

    def on_select(evt: gr.EventData):
        events.put(("select", evt._data))
        return json.dumps(evt.ids)

    def on_click(evt: gr.EventData):
        events.put(("click", evt._data))
        return json.dumps(evt.ids)

    def load_big():
        t = time.perf_counter()
        value = _big_value(50_000)
        timings["build_s"] = time.perf_counter() - t
        timings["payload_bytes"] = len(to_wire(value).encode())
        return value

    with gr.Blocks(analytics_enabled=False) as demo:
        small = scatter(small_value, thumbnail=thumbnail, elem_id="small", panel_height=300, wide_height=380,
                        columns=2)
        selected = gr.Textbox(label="selected ids", elem_id="selected")
        big = scatter(_big_value(8, cross_rows=8), elem_id="big", panel_height=220, wide_height=260)
        big_button = gr.Button("50k points", elem_id="load-big")
        gr.Button("50k rows, 3,000 with points", elem_id="load-partial").click(_partial_big_value, None, big)
        # gr.Plot brings Gradio's own plotly.js 3.x, which sets window.Plotly too: both must work.
        gr.Plot(go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2])), elem_id="std-plot")
        recolour = gr.Button("colour by video", elem_id="recolour")
        new_view = gr.Button("another projection", elem_id="new-view")
        small.select(on_select, None, selected)
        small.click(on_click, None, selected)
        big_button.click(load_big, None, big)
        recolour.click(lambda: table_value(table, coords, "video_id", view="test", cross=("a", "b"), ranges=ranges),
                       None, small)
        new_view.click(lambda: table_value(table, coords, "video_id", view="other", cross=("a", "b"), ranges=ranges),
                       None, small)
        for colour_by in ("label", "video_id"):  # the same table (source) drawn again, coloured by one or the other
            gr.Button(f"the same table by {colour_by}", elem_id=f"same-table-{colour_by}").click(
                lambda c=colour_by: table_value(table, coords, c, view="test", cross=("a", "b"), ranges=ranges,
                                                source="small-table", link_limit=LINK_LIMIT), None, small)

    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True)
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("document.querySelectorAll('#small .hs-plot .nsewdrag').length === 3"
                               " && document.querySelector('#small .hs-root').parentElement.dataset.renderSeq")
        yield {"page": page, "port": port, "table": table, "coords": coords, "events": events, "thumbs": thumbs,
               "requests": requests, "errors": errors, "timings": timings}
    finally:
        browser.close()
        pw.stop()
        demo.close()


def _plot_area(page, elem: str, panel: int) -> dict:
    """The plot area (drag layer) of one panel in viewport pixels, after scrolling it into view."""
    sel = f"#{elem} .hs-plot[data-panel='{panel}']"
    page.locator(sel).scroll_into_view_if_needed()
    return page.evaluate(f"""() => {{
        const r = document.querySelector("{sel} .nsewdrag").getBoundingClientRect();
        return {{left: r.left, top: r.top, width: r.width, height: r.height}};
    }}""")


def _to_px(area: dict, x: float, y: float) -> tuple[float, float]:
    lo, hi = RANGE
    return (area["left"] + (x - lo) / (hi - lo) * area["width"],
            area["top"] + (hi - y) / (hi - lo) * area["height"])


def _inside(xy: np.ndarray, box) -> np.ndarray:
    x0, x1, y0, y1 = box
    return (xy[:, 0] > x0) & (xy[:, 0] < x1) & (xy[:, 1] > y0) & (xy[:, 1] < y1)


def _next_event(events: queue.Queue, kind: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got_kind, data = events.get(timeout=max(0.01, deadline - time.monotonic()))
        if got_kind == kind:
            return data


# The ids shown as selected on panel k of the small scatter, sorted.
_HIGHLIGHTED = """((k) => {
    const gd = document.querySelector(`#small .hs-plot[data-panel='${k}']`);
    const st = document.querySelector('#small .hs-root').parentElement.__hicoScatter;
    const ids = new Set();
    gd.data.forEach((t, c) => (t.selectedpoints || []).forEach(i => ids.add(st.value.ids[st.plots[k].traceRows[c][i]])));
    return Array.from(ids).sort((a, b) => a - b);
})"""


def _draw_lasso(page) -> None:
    """Draw a lasso around BOX on panel 0 of the small scatter."""
    area = _plot_area(page, "small", 0)
    x0, x1, y0, y1 = BOX
    corners = [_to_px(area, x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))]
    page.mouse.move(*corners[0])
    page.mouse.down()
    for corner in corners[1:]:
        page.mouse.move(*corner, steps=8)
    page.mouse.up()


def _lasso_box(page, coords: dict, events: queue.Queue) -> list[int]:
    """Lasso BOX on panel 0 of the small scatter (after dropping the events earlier tests left);
    returns the ids Python was sent, checked against the frames inside."""
    time.sleep(0.5)
    while not events.empty():
        events.get()
    _draw_lasso(page)
    expected = (ID_OFFSET + np.flatnonzero(_inside(coords["a"], BOX))).tolist()
    assert _next_event(events, "select")["ids"] == expected
    return expected


def _clear_by_double_click(page, coords: dict, events: queue.Queue) -> None:
    """Double click panel 0 off its points (measured again: a button may have scrolled the page);
    Python hears the cleared selection."""
    area = _plot_area(page, "small", 0)
    corner = max(((cx, cy) for cx in (-0.4, 10.4) for cy in (-0.4, 10.4)),
                 key=lambda c: np.linalg.norm(coords["a"] - c, axis=1).min())
    page.mouse.dblclick(*_to_px(area, *corner))
    assert _next_event(events, "select")["ids"] == []


# The lines drawn on panel k of the small scatter, over its line traces (one per colour, by
# length): [[x0, y0, x1, y1] per line], in the order of the panel's frames.
_LINES = """((k) => {
    const traces = document.querySelector(`#small .hs-plot[data-panel='${k}']`).data.filter(t => t.mode === 'lines');
    const out = [];
    for (const t of traces) for (let i = 0; i < t.x.length; i += 3) out.push([t.x[i], t.y[i], t.x[i + 1], t.y[i + 1]]);
    return traces.length ? out : null;
})"""


def _expected_lines(coords: dict, positions) -> np.ndarray:
    rows = spread(positions, LINK_LIMIT)
    return np.round(np.concatenate([coords["a"][rows], coords["b"][rows]], axis=1), 4)


def _assert_lines(page, coords: dict, positions, wait: float = 0.0) -> None:
    """The cross panel draws exactly these frames' lines (lines are grouped by colour, not in frame
    order); with `wait`, polls that long for a redraw first."""
    order = lambda x: x[np.lexsort(x.T[::-1])]  # noqa: E731
    expected = order(_expected_lines(coords, positions))
    end = time.monotonic() + wait
    while True:
        drawn = np.array(page.evaluate(f"{_LINES}(2)"))
        if drawn.shape == expected.shape and np.allclose(order(drawn), expected, rtol=0, atol=1e-9):
            return
        if time.monotonic() > end:
            np.testing.assert_allclose(order(drawn), expected, rtol=0, atol=1e-9)
        time.sleep(0.1)


@pytestmark_browser
def test_lasso_selection_sends_the_ids_inside_to_python(browser_app):
    page, coords, events = browser_app["page"], browser_app["coords"], browser_app["events"]
    # Before any selection the cross panel joins an even sample of its frames' two points.
    _assert_lines(page, coords, np.arange(N_SMALL))
    _draw_lasso(page)
    data = _next_event(events, "select")
    expected = (ID_OFFSET + np.flatnonzero(_inside(coords["a"], BOX))).tolist()
    assert 20 < len(expected) < N_SMALL - 20
    assert data["panel"] == 0 and data["title"] == "a"
    assert data["ids"] == expected
    page.wait_for_function(f"document.querySelector('#selected textarea').value === {json.dumps(json.dumps(expected))}")
    # The same frames are highlighted on the other panels, and the cross panel draws their lines.
    assert page.evaluate(f"{_HIGHLIGHTED}(1)") == expected
    assert page.evaluate(f"{_HIGHLIGHTED}(2)") == expected
    inside = np.flatnonzero(_inside(coords["a"], BOX))
    assert len(inside) < LINK_LIMIT  # every selected frame gets its line
    page.wait_for_function(f"{_LINES}(2).length === {len(inside)}")
    _assert_lines(page, coords, inside)


@pytestmark_browser
def test_box_selection_on_the_cross_panel_unites_both_levels(browser_app):
    page, coords, events = browser_app["page"], browser_app["coords"], browser_app["events"]
    area = _plot_area(page, "small", 2)
    page.mouse.move(area["left"] + area["width"] / 2, area["top"] + area["height"] / 2)
    button = page.locator("#small .hs-plot[data-panel='2'] .modebar-btn[data-val='select']")
    button.click()
    x0, x1, y0, y1 = CROSS_BOX
    start, end = _to_px(area, x0, y1), _to_px(area, x1, y0)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=10)
    page.mouse.up()
    data = _next_event(events, "select")
    inside = _inside(coords["a"], CROSS_BOX) | _inside(coords["b"], CROSS_BOX)
    expected = (ID_OFFSET + np.flatnonzero(inside)).tolist()
    assert data["panel"] == 2 and data["ids"] == expected
    assert len(expected) > len(np.flatnonzero(_inside(coords["a"], CROSS_BOX)))
    # Panel 0 drops its own lasso and shows this selection; redrawing it sends nothing to Python.
    page.wait_for_function(f"{_HIGHLIGHTED}(0).join(',') === {json.dumps(','.join(map(str, expected)))}")
    assert page.evaluate("document.querySelector(\"#small .hs-plot[data-panel='0']\").layout.selections.length") == 0
    # The cross panel's own lines follow its selection: more frames than LINK_LIMIT, so an even sample.
    assert len(expected) > LINK_LIMIT
    page.wait_for_function(f"{_LINES}(2).length === {LINK_LIMIT}")
    _assert_lines(page, coords, np.flatnonzero(inside))
    time.sleep(0.5)
    assert events.empty()
    # Clearing the selection (double click, off the points) brings back the sample of the whole panel.
    points = np.concatenate([coords["a"], coords["b"]])
    corner = max(((x, y) for x in (-0.4, 10.4) for y in (-0.4, 10.4)),
                 key=lambda c: np.linalg.norm(points - c, axis=1).min())
    page.mouse.dblclick(*_to_px(area, *corner))
    assert _next_event(events, "select")["ids"] == []
    _assert_lines(page, coords, np.arange(N_SMALL), wait=10.0)
    time.sleep(0.5)
    assert events.empty()  # nothing but the cleared selection reached Python


def _isolated_point(page, coords: np.ndarray, min_px: float = 14.0) -> tuple[int, float, float]:
    """(row, x, y): a point of the first `small` panel with no other point within min_px pixels,
    away from the panel's edges, and where it is on the page."""
    area = _plot_area(page, "small", 0)
    px = np.array([_to_px(area, x, y) for x, y in coords])
    d = np.linalg.norm(px[:, None, :] - px[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    ok = (d.min(axis=1) > min_px) & (coords[:, 0] > 1) & (coords[:, 0] < 9) & (coords[:, 1] > 1) & (coords[:, 1] < 9)
    row = int(np.flatnonzero(ok)[0])
    return row, float(px[row, 0]), float(px[row, 1])


@pytestmark_browser
def test_hover_shows_thumbnail_from_the_server_function(browser_app):
    page, coords, table = browser_app["page"], browser_app["coords"], browser_app["table"]
    row, x, y = _isolated_point(page, coords["a"])
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=5)
    # On a loaded machine the pointer may rest on a point it passes on the way long enough for that
    # point's thumbnail to show: wait for the hovered point's own (the image says whose it is).
    img = page.wait_for_selector(f"#small .hs-tip img[data-id='{ID_OFFSET + row}'][src^='data:image/png;base64,']",
                                 timeout=20_000)
    assert img.get_attribute("src") == _png_data_uri(ID_OFFSET + row)
    video, frame, label = table.iloc[row][["video_id", "frame", "label"]]
    assert page.text_content("#small .hs-tip-text") == f"{video} \u00b7 frame {frame} \u00b7 {label}"
    assert browser_app["thumbs"][-1] == (ID_OFFSET + row, "small-table")  # with the table the page shows
    box = page.locator("#small .hs-tip").bounding_box()
    assert abs(box["x"] - (x + 14)) < 3 and abs(box["y"] - (y + 14)) < 3   # next to the cursor
    # Moving back over it is served from the page's cache, not the server.
    calls = len(browser_app["thumbs"])
    page.mouse.move(x - 60, y - 60, steps=3)
    page.wait_for_selector("#small .hs-tip", state="hidden")
    page.mouse.move(x, y, steps=5)
    page.wait_for_selector(f"#small .hs-tip img[data-id='{ID_OFFSET + row}'][src^='data:image/png;base64,']")
    assert len(browser_app["thumbs"]) == calls


@pytestmark_browser
def test_click_on_a_point_sends_its_id(browser_app):
    page, coords, events = browser_app["page"], browser_app["coords"], browser_app["events"]
    row, x, y = _isolated_point(page, coords["a"])
    page.mouse.move(x, y, steps=3)
    page.mouse.click(x, y)
    data = _next_event(events, "click")
    assert data == {"ids": [ID_OFFSET + row], "panel": 0, "title": "a"}


def _render_seq(page, elem: str) -> str:
    return page.evaluate(f"document.querySelector('#{elem} .hs-root').parentElement.dataset.renderSeq")


def _click_and_wait_redraw(page, button: str, elem: str) -> None:
    seq = _render_seq(page, elem)
    page.click(button)
    page.wait_for_function(f"document.querySelector('#{elem} .hs-root').parentElement.dataset.renderSeq !== '{seq}'")


@pytestmark_browser
def test_a_click_on_a_point_keeps_the_lasso_selection(browser_app):
    """Clicking a point (to see its neighbours) while frames are lassoed sends the click and
    leaves the selection, its highlights and its lines as they were."""
    page, coords, events = browser_app["page"], browser_app["coords"], browser_app["events"]
    expected = _lasso_box(page, coords, events)
    row, x, y = _isolated_point(page, coords["a"])
    page.mouse.move(x, y, steps=3)
    page.mouse.click(x, y)
    time.sleep(1.5)
    heard = []
    while not events.empty():
        heard.append(events.get())
    assert [kind for kind, _ in heard] == ["click"], "the click cleared the selection"
    assert heard[0][1]["ids"] == [ID_OFFSET + row]
    assert page.evaluate(f"{_HIGHLIGHTED}(1)") == expected
    _assert_lines(page, coords, np.flatnonzero(_inside(coords["a"], BOX)))
    _clear_by_double_click(page, coords, events)  # for the tests after this one


@pytestmark_browser
def test_legend_toggles_categories_and_redraws_keep_the_zoom_of_the_same_view(browser_app):
    page = browser_app["page"]
    hidden = """() => Array.from(document.querySelectorAll('#small .hs-plot')).map(gd =>
        gd.data.filter(t => t.visible === false).map(t => t.marker.color))"""
    page.click("#small .hs-legend-item[data-code='1']")          # "effusion"
    colour = page.evaluate("document.querySelector(\"#small .hs-legend-item[data-code='1'] .hs-swatch\").style.background")
    got = page.evaluate(hidden)
    assert [len(h) for h in got] == [1, 1, 2]                  # the cross panel has it at both levels
    assert {c for h in got for c in h} == {"#ff7f0e"} and colour == "rgb(255, 127, 14)"
    page.click("#small .hs-legend-item[data-code='1']")
    assert page.evaluate(hidden) == [[], [], []]

    area = _plot_area(page, "small", 0)
    page.mouse.move(area["left"] + area["width"] / 2, area["top"] + area["height"] / 2)
    page.mouse.wheel(0, -400)
    x_range = "document.querySelector(\"#small .hs-plot[data-panel='0']\")._fullLayout.xaxis.range"
    page.wait_for_function(f"{x_range}[1] - {x_range}[0] < 10")
    zoomed = page.evaluate(x_range)
    _click_and_wait_redraw(page, "#recolour", "small")
    assert page.evaluate(x_range) == zoomed
    # 30 clips: past 20 categories the legend is one line, not 30 entries
    assert page.eval_on_selector_all("#small .hs-legend-item", "els => els.length") == 0
    assert "30 values, one colour each" in page.inner_text("#small .hs-legend")
    _click_and_wait_redraw(page, "#new-view", "small")
    assert page.evaluate(x_range) == list(RANGE)   # same layout input, but a new view resets the zoom


@pytestmark_browser
def test_a_selection_survives_a_redraw_of_the_same_table(browser_app):
    """A new colouring of the table shown (as Explore's controls and UMAP swaps redraw it) keeps the
    lassoed frames highlighted on every panel, with their lines, and tells Python nothing."""
    page, coords, events = browser_app["page"], browser_app["coords"], browser_app["events"]
    _click_and_wait_redraw(page, "#same-table-video_id", "small")  # the table this test redraws (others drew others)
    expected = _lasso_box(page, coords, events)
    _click_and_wait_redraw(page, "#same-table-label", "small")
    page.wait_for_function(f"{_HIGHLIGHTED}(1).length === {len(expected)}")
    assert page.evaluate(f"{_HIGHLIGHTED}(1)") == expected and page.evaluate(f"{_HIGHLIGHTED}(0)") == expected
    _assert_lines(page, coords, np.flatnonzero(_inside(coords["a"], BOX)), wait=5.0)
    time.sleep(0.5)
    assert all(kind != "select" for kind, _ in list(events.queue)), "the redraw sent a selection"
    _clear_by_double_click(page, coords, events)  # though plotly no longer holds it (the redraw did)


@pytestmark_browser
def test_plotly_is_served_locally_and_nothing_leaves_127_0_0_1(browser_app):
    page, requests, port = browser_app["page"], browser_app["requests"], browser_app["port"]
    page.locator("#std-plot").scroll_into_view_if_needed()
    page.wait_for_selector("#std-plot .main-svg")
    plotly_url = f"http://127.0.0.1:{port}/gradio_api/file={plotly_js_path()}"
    assert plotly_url in requests
    with urlopen(plotly_url, timeout=10) as resp:
        assert resp.status == 200 and "javascript" in resp.headers["content-type"]
        assert resp.read(64).startswith(b"/**\n* plotly.js v")
    hosts = {urlsplit(u).hostname for u in requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, f"requests left the machine: {hosts}"
    assert browser_app["errors"] == []


@pytestmark_browser
def test_fifty_thousand_points_render_quickly(browser_app):
    page, timings = browser_app["page"], browser_app["timings"]
    page.locator("#big").scroll_into_view_if_needed()
    seq_before = page.evaluate("() => document.querySelector('#big .hs-root').parentElement.dataset.renderSeq")
    t0 = page.evaluate("""() => {
        window.__afterplot = {};
        document.querySelectorAll('#big .hs-plot').forEach((gd, k) =>
            gd.on('plotly_afterplot', () => { window.__afterplot[k] = performance.now(); }));
        const t = performance.now();
        document.querySelector('#load-big').click();
        return t;
    }""")
    page.wait_for_function(f"""() => {{
        const el = document.querySelector('#big .hs-root').parentElement;
        return el.dataset.renderSeq !== {json.dumps(seq_before)} && Object.keys(window.__afterplot).length === 5;
    }}""", timeout=30_000)
    result = page.evaluate("""async () => {
        const frame = await new Promise(r => requestAnimationFrame(() => r(performance.now())));
        const el = document.querySelector('#big .hs-root').parentElement;
        const gds = Array.from(document.querySelectorAll('#big .hs-plot'));
        const points = gds.map(gd => gd.data.filter(t => t.mode === 'markers').reduce((s, t) => s + t.x.length, 0));
        return {afterplot: Math.max(...Object.values(window.__afterplot)), frame, points,
                renderMs: Number(el.dataset.renderMs), valueAt: el.__hicoScatter.timing.valueAt};
    }""")
    click_to_afterplot = (result["afterplot"] - t0) / 1000
    print(f"\n50k x 4 panels + 5k cross panel: payload {timings['payload_bytes'] / 1e6:.2f} MB, "
          f"built in {timings['build_s']:.2f} s; click -> value in the page {(result['valueAt'] - t0) / 1000:.2f} s, "
          f"-> last plotly_afterplot {click_to_afterplot:.2f} s, -> next frame {(result['frame'] - t0) / 1000:.2f} s")
    # Times are printed, not asserted (a busy machine would fail any bound); what keeps the redraw
    # fast is asserted instead: one compact payload, and a dense panel draws a sample (DRAW_MAX) over
    # the density of all its points.
    assert result["points"] == [7_500] * 4 + [10_000]  # DRAW_MAX per level panel; the cross panel's 5,000 x 2
    density = page.evaluate("""() => Array.from(document.querySelectorAll('#big .hs-plot')).map(gd =>
        gd.data.filter(t => t.type === 'heatmap').map(t => t.z.flat().reduce((a, b) => a + b, 0)))""")
    assert density == [[50_000]] * 4 + [[]]
    assert timings["payload_bytes"] < 6_000_000
    assert result["afterplot"] >= t0 and result["renderMs"] >= 0


def test_marks_are_points_that_are_no_rows():
    """An uploaded clip's frames placed on a panel: drawn as marks, absent where not given."""
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    v = panels_value({"local": a, "global": a}, marks={"global": [[0.5, 0.25], [2.0, 3.0]]}, marks_name="clip")
    local, glob = v["panels"]
    assert "marks" not in local
    assert glob["marks"] == {"name": "clip", "x": [0.5, 2.0], "y": [0.25, 3.0]}
    assert v["ids"] == [0, 1]  # marks add no rows


@pytestmark_browser
def test_a_dense_panel_selects_every_point_inside_and_draws_more_when_zoomed(browser_app):
    """A panel of 50,000 points draws 7,500; a lasso still selects every point inside it, drawn or
    not, and zooming in draws the points of the new range."""
    page = browser_app["page"]
    big = "document.querySelector('#big .hs-root').parentElement.__hicoScatter"
    if page.evaluate(f"{big}.value.ids.length") != 50_000:
        page.click("#load-big")
        page.wait_for_function(f"{big}.value.ids.length === 50000 && {big}.plots.every(p => p.ready)", timeout=60_000)
    coords = _big_value(50_000)["panels"][0]["layers"][0]
    xy = np.array([coords["x"], coords["y"]], dtype=float).T
    sel = "#big .hs-plot[data-panel='0']"
    page.locator(sel).scroll_into_view_if_needed()
    area, (xr, yr) = page.evaluate(f"""() => {{ const gd = document.querySelector("{sel}");
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [{{left: r.left, top: r.top, width: r.width, height: r.height}},
                [gd._fullLayout.xaxis.range, gd._fullLayout.yaxis.range]]; }}""")
    px = lambda x, y: (area["left"] + (x - xr[0]) / (xr[1] - xr[0]) * area["width"],  # noqa: E731
                       area["top"] + (yr[1] - y) / (yr[1] - yr[0]) * area["height"])
    page.mouse.move(*px(-1, -1))
    page.mouse.down()
    for corner in ((1, -1), (1, 1), (-1, 1), (-1, -1)):
        page.mouse.move(*px(*corner), steps=8)
    page.mouse.up()
    expected = int(((np.abs(xy) < 1).all(axis=1)).sum())
    page.wait_for_function(f"{big}.selected && {big}.selected.size > 0", timeout=30_000)
    selected = page.evaluate(f"{big}.selected.size")
    assert abs(selected - expected) <= 0.03 * expected, (selected, expected)  # a pixel at the edges: ~0.03 units
    drawn_inside = page.evaluate(f"""() => document.querySelector("{sel}").data.filter(t => t.mode === 'markers')
        .reduce((s, t) => s + t.x.filter((x, i) => Math.abs(x) < 1 && Math.abs(t.y[i]) < 1).length, 0)""")
    assert drawn_inside < 0.5 * selected  # most of what was selected is not drawn at this zoom
    page.mouse.dblclick(*px(3.5, 3.5))
    page.evaluate(f"""() => window.__hicoPlotly.then(P => P.relayout(document.querySelector("{sel}"),
        {{'xaxis.range': [-0.5, 0.5], 'yaxis.range': [-0.5, 0.5]}}))""")
    inside = int(((np.abs(xy) <= 0.5).all(axis=1)).sum())
    page.wait_for_function(f"""() => document.querySelector("{sel}").data.filter(t => t.mode === 'markers')
        .every(t => t.x.every((x, i) => Math.abs(x) <= 0.5 && Math.abs(t.y[i]) <= 0.5))""", timeout=30_000)
    drawn = page.evaluate(f"""() => document.querySelector("{sel}").data.filter(t => t.mode === 'markers')
        .reduce((s, t) => s + t.x.length, 0)""")
    assert drawn == min(inside, 7_500)


@pytestmark_browser
def test_a_dense_panel_being_filled_in_draws_the_rows_that_have_points(browser_app):
    """A partial view of a big table (most rows not embedded yet: no coordinates) still draws every
    row that has a point, up to the sample's size, not a sample of empty rows."""
    page = browser_app["page"]
    big = "document.querySelector('#big .hs-root').parentElement"
    before = page.evaluate(f"{big}.dataset.renderSeq")
    page.click("#load-partial")
    page.wait_for_function(f"{big}.dataset.renderSeq !== {json.dumps(before)} && "
                           f"{big}.__hicoScatter.plots.every(p => p.ready)", timeout=60_000)
    drawn = page.evaluate(f"""{big}.__hicoScatter.plots.slice(0, 4).map(p => p.div.data.filter(t => t.mode === 'markers')
        .reduce((s, t) => s + t.x.filter(v => v !== null).length, 0))""")
    assert drawn == [PARTIAL_ROWS] * 4
