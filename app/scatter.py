"""Interactive WebGL scatter panels for the Explore tab.

`gr.Plot` draws plotly figures but sends no box/lasso selections to Python. `scatter()` builds a
`gr.HTML` component that draws plotly.js `scattergl` panels itself and sends:

- `select`: a box or lasso selection on any panel (and `ids: []` when the user clears it), with
  event data `{"ids": [row ids, sorted, unique], "panel": k, "title": str}`; the union over the
  panel's traces, so on the cross-level panel a frame counts if either of its points is inside;
- `click`: a click on one point, with `{"ids": [row id], "panel": k, "title": str}`.

The cross-level panel joins a frame's two points by a line for a sample of at most MAX_LINKS
frames, and while a selection is made (on any panel) for the selected frames instead (again at
most MAX_LINKS, spread evenly over them): a line per frame for thousands of frames is a hairball.

Wire them like any Gradio event; the data arrives as `gr.EventData` (not `gr.SelectData`, which
expects `index`/`value` keys)::

    plot = scatter(thumbnail=frame_thumbnail)     # frame_thumbnail(row_id, source) -> "data:image/png;base64,..."
    def on_select(evt: gr.EventData):
        return table.loc[evt.ids]
    plot.select(on_select, None, frames_table)    # do not list `plot` as an input: its value is large
    plot.click(on_click, None, frame_view)
    colour.change(lambda c: table_value(table, coords, c, view="umap"), colour, plot)

Hovering a point shows a tooltip with the row's `hover` text and a thumbnail fetched lazily from
the server function `thumbnail(row_id, source)`, debounced and cached in the page. `source` is the
value's own `source` string (which table its row ids index): each page asks for the frames of the
table it shows, whatever other sessions show. A selection on one
panel is highlighted on the others (the same rows); the legend, shown once above the panels,
hides or shows a category in every panel.

plotly.js comes from the installed `plotly` package: its `package_data/plotly.min.js` is made a
Gradio static file and loaded by the page from `<root>/gradio_api/file=<absolute path>`; the page
loads nothing from the internet.

The value is a JSON dict (build it with `panels_value` or `table_value`)::

    {"view": str,                     # same view => a redraw keeps each panel's zoom; new view => reset
                                      # (a panel may add its own "view": the same rule, per panel)
     "source": str,                   # names the table the ids index; passed back to thumbnail()
     "ids": [int] * N,                # row id of every point; what select/click/thumbnail receive
     "hover": [str] * N | None,       # tooltip text per row
     "color": None
            | {"kind": "category", "title": str, "names": [str] * K, "colors": [css colour] * K,
               "codes": [int] * N}
            | {"kind": "continuous", "title": str, "values": [float | None] * N, "min": float, "max": float},
     "marker_size": float,            # pixels; smaller for more points
     "panels": [{"title": str, "wide": bool,          # wide: a larger panel on its own row
                 "rows": [int] * M,                   # optional: positions into ids/hover/color (default all N)
                 "layers": [{"name": str, "symbol": str, "x": [float] * M, "y": [float] * M}, ...],
                 "links": {"x": [...], "y": [...]},   # optional: segments, each `a, b, None`
                 "link_limit": int,                   # with links: most lines drawn for a selection
                 "link_breaks": [float, float],       # with links: lengths where a line turns orange, red
                 "marks": {"name": str, "x": [float], "y": [float]},  # optional: points that are no row
                                                      # (an uploaded clip's frames), drawn on top as stars
                 "xrange": [lo, hi], "yrange": [lo, hi]}]}   # optional fixed axes

A value with no panels shows its `empty` text, if any, in place of the plots (else the
component's `empty_text`): what is on the way, for instance.

Coordinates are rounded to 4 decimals and non-finite ones become None (plotly skips them).
The component turns the dict into one JSON string on its way to the page (`to_wire`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import orjson
import pandas as pd

STATIC = Path(__file__).resolve().parent / "static"
DECIMALS = 4
MAX_CATEGORIES_FOR_INTS = 20
# Readable on white, distinct for the first ten; more categories cycle through hues.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#4d4d4d",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#a0a0a0", "#dbdb8d", "#9edae5")
CROSS_SYMBOLS = ("circle", "diamond-open")
MAX_LINKS = 300  # lines drawn on the cross-level panel: for a sample, or for the selected frames


def plotly_js_path() -> Path:
    """The plotly.js bundle shipped inside the installed `plotly` Python package."""
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


@functools.cache
def _serve_plotly_js() -> str:
    # Static paths are interpreter-wide in Gradio; register the one file once.
    path = plotly_js_path()
    gr.set_static_paths([path])
    return str(path)


def scatter(value: dict | None = None, *, thumbnail: Callable[[int, str], str | None] | None = None,
            panel_height: int = 320, wide_height: int = 520, columns: int = 4,
            empty_text: str = "Nothing to show yet.", elem_id: str | None = None,
            **html_kwargs: Any) -> gr.HTML:
    """A gr.HTML that draws `value` (see the module docstring) and emits `select` and `click`.

    thumbnail: `(row_id, source) -> data URI` (e.g. a PNG as `data:image/png;base64,...`) or None;
    called from the page through Gradio's component server when the mouse rests on a point, with
    the `source` of the value the page shows.
    panel_height / wide_height: pixel heights of the small panels and of wide ones.
    columns: at most this many small panels per row.
    """
    server_functions = [_as_server_function(thumbnail)] if thumbnail is not None else None
    component = gr.HTML(
        to_wire(value),
        html_template=(STATIC / "scatter.html").read_text(encoding="utf-8"),
        css_template=(STATIC / "scatter.css").read_text(encoding="utf-8"),
        js_on_load=(STATIC / "scatter.js").read_text(encoding="utf-8"),
        apply_default_css=False,
        server_functions=server_functions,
        elem_id=elem_id,
        plotly_path=_serve_plotly_js(),
        panel_height=int(panel_height),
        wide_height=int(wide_height),
        columns=int(columns),
        empty_text=empty_text,
        **html_kwargs,
    )
    # Values travel as one JSON string (see `to_wire`); the app keeps handing over dicts.
    component.postprocess = to_wire
    component.preprocess = from_wire
    return component


def to_wire(value: dict | str | None) -> str | None:
    """The value as one JSON string, which is how it travels to the page.

    Gradio 6.31's HTML component makes a dict value a deep reactive object in the page and
    compares it with JSON.stringify on every update: a 4 MB value (4 x 50,000 points) took 14.6 s
    from the event to the page's watch callback, against 0.8 s for the same data as a string.
    """
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def from_wire(payload: str | dict | None) -> dict | None:
    """The inverse of `to_wire`, for an event that lists the scatter as an input."""
    if payload is None or isinstance(payload, dict):
        return payload
    return orjson.loads(payload) if payload else None


def _as_server_function(fn: Callable[[int, str], str | None]) -> Callable:
    # The page calls `server.thumbnail(id, source)`: the name is fixed, and Gradio marks the
    # function with an attribute, which a bound method or a partial would not accept. Gradio hands
    # a call with several arguments over as one list ([id, source]), and one argument as itself.
    def thumbnail(payload, source: str = "") -> str | None:
        if isinstance(payload, (list, tuple)):
            payload, source = (list(payload) + [""])[:2]
        try:
            row = int(payload)
        except (TypeError, ValueError):
            return None
        return fn(row, str(source or ""))

    return thumbnail


def marker_size(n: int) -> float:
    """Marker diameter in pixels: 8 for a few hundred points, down to 2.5 at 50,000."""
    if n <= 0:
        return 8.0
    return round(min(8.0, max(2.5, 12.0 * (n / 100.0) ** -0.25)), 2)


def rounded(values: Any) -> list[float | None]:
    """A 1-D array as a JSON list: 4 decimals, non-finite values as None."""
    arr = np.round(np.asarray(values, dtype=np.float64).ravel(), DECIMALS)
    finite = np.isfinite(arr)
    if finite.all():
        return arr.tolist()
    return [v if ok else None for v, ok in zip(arr.tolist(), finite.tolist())]


def palette(k: int) -> list[str]:
    """k distinct colours, the same for the same k (so panels and redraws agree)."""
    if k <= len(PALETTE):
        return list(PALETTE[:k])
    extra = [f"hsl({(i * 137.508) % 360:.0f}, 60%, 45%)" for i in range(k - len(PALETTE))]
    return list(PALETTE) + extra


def encode_color(values: Any, title: str = "", categorical: bool | None = None) -> dict | None:
    """Colour by a column: categories as codes + names + colours, or numbers on a colour ramp.

    categorical=None decides from the data: strings, booleans, pandas categoricals and integers
    with at most 20 distinct values are categories; other numbers are continuous. Missing
    categories (None / NaN) become a last category named "(none)".
    """
    if values is None:
        return None
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if categorical is None:
        dtype = series.dtype
        if isinstance(dtype, pd.CategoricalDtype) or dtype == bool or dtype == object or \
                pd.api.types.is_string_dtype(dtype):
            categorical = True
        elif pd.api.types.is_integer_dtype(dtype):
            categorical = series.nunique() <= MAX_CATEGORIES_FOR_INTS
        else:
            categorical = False
    if not categorical:
        numbers = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64)
        finite = numbers[np.isfinite(numbers)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        return {"kind": "continuous", "title": title, "values": rounded(numbers),
                "min": round(lo, DECIMALS), "max": round(hi, DECIMALS)}
    cat = pd.Categorical(series)
    names = [str(c) for c in cat.categories]
    codes = np.asarray(cat.codes, dtype=np.int64)
    if (codes < 0).any():
        codes = np.where(codes < 0, len(names), codes)
        names.append("(none)")
    return {"kind": "category", "title": title, "names": names, "colors": palette(len(names)),
            "codes": codes.tolist()}


def link_breaks(a: np.ndarray, b: np.ndarray) -> list[float]:
    """The lengths (panel units) between which a cross-level panel's lines change colour: the
    thirds of every frame's line length (a, b: M x 2, the frames' points at the two levels), so
    grey marks the third of frames whose levels agree most and red the third they place furthest
    apart; [] without finite lines."""
    length = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1)
    length = length[np.isfinite(length)]
    return [] if length.size == 0 else [round(float(q), 6) for q in np.quantile(length, [1 / 3, 2 / 3])]


def link_segments(a: np.ndarray, b: np.ndarray) -> dict[str, list[float | None]]:
    """Line segments a[i] -> b[i] as one plotly lines trace: x = [a0x, b0x, None, a1x, b1x, None, ...]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"link_segments needs two M x 2 arrays of one shape, got {a.shape} and {b.shape}")
    out = {}
    for axis, name in ((0, "x"), (1, "y")):
        seg = np.full((a.shape[0], 3), None, dtype=object)
        seg[:, 0] = rounded(a[:, axis])
        seg[:, 1] = rounded(b[:, axis])
        out[name] = seg.ravel().tolist()
    return out


def spread(positions: Sequence[int], limit: int = MAX_LINKS) -> np.ndarray:
    """At most `limit` of these positions, spread evenly over them in their order (all when
    there are no more): the j-th is number round(j (M - 1) / (limit - 1)), halves up, in integers
    as the page's scatter.js does for a selection; the same for the same input."""
    positions = np.asarray(positions, dtype=np.int64)
    m = len(positions)
    if m <= limit or limit <= 1:
        return positions[:max(limit, 0)] if m > limit else positions
    j = np.arange(limit, dtype=np.int64)
    return positions[(2 * j * (m - 1) + (limit - 1)) // (2 * (limit - 1))]


def panels_value(coords: Mapping[str, Any], color: Any = None, *, ids: Sequence[int] | None = None,
                 hover: Sequence[str] | None = None, color_title: str = "", categorical: bool | None = None,
                 view: str = "", show: Sequence[str] | None = None,
                 cross: tuple[str, str] | None = None, cross_rows: Sequence[int] | None = None,
                 link_limit: int = MAX_LINKS,
                 ranges: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                 size: float | None = None, source: str = "",
                 layer_colors: Mapping[str, str] | None = None,
                 marks: Mapping[str, Any] | None = None, marks_name: str = "") -> dict:
    """The scatter value for N frames projected at several levels.

    coords: level name -> N x 2 array (same N, same row order for every level), in panel order.
    color: N values to colour by (see `encode_color`), or None.
    ids: the row id of each of the N rows (default 0..N-1); hover: N tooltip strings.
    view: a name for the projection (e.g. "umap"); redraws with the same view keep the zoom.
    show: which levels get a panel of their own (default all of coords, in order; () for none).
    cross: two level names: add a wide panel where each frame is a point at both levels (two
    marker styles); cross_rows limits it to these row positions. A thin line joins a frame's two
    points for `link_limit` of its frames spread evenly over the panel (`spread`), and, in the
    page, for the selected frames while there is a selection (again at most `link_limit`).
    ranges: panel title -> (xrange, yrange) to fix its axes instead of autoscaling.
    size: marker size in pixels (default from N, see `marker_size`).
    source: a name for the table the ids index, handed back to the thumbnail function.
    layer_colors: level name -> css colour for its points, when `color` is None (colour by level:
    on the cross-level panel a frame's two points then differ in colour as well as in symbol).
    marks: panel title -> M x 2 points that are not rows (an uploaded clip's frames placed among
    them), drawn as stars named `marks_name`; they take no part in hover, selection or clicks.
    """
    arrays = {name: np.asarray(xy, dtype=np.float64) for name, xy in coords.items()}
    if not arrays:
        raise ValueError("panels_value needs at least one level of coordinates")
    n = None
    for name, xy in arrays.items():
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"coordinates of {name!r} must be N x 2, got shape {xy.shape}")
        if n is not None and xy.shape[0] != n:
            raise ValueError(f"coordinates of {name!r} have {xy.shape[0]} rows, others have {n}")
        n = xy.shape[0]
    row_ids = np.arange(n) if ids is None else np.asarray(ids)
    if row_ids.shape != (n,) or not np.issubdtype(row_ids.dtype, np.integer):
        raise ValueError(f"ids must be {n} integers, got shape {row_ids.shape} of {row_ids.dtype}")
    if hover is not None and len(hover) != n:
        raise ValueError(f"hover must have {n} strings, got {len(hover)}")
    if color is not None and len(color) != n:
        raise ValueError(f"color must have {n} values, got {len(color)}")
    ranges = ranges or {}

    def limits(title: str) -> dict:
        if title not in ranges:
            return {}
        xr, yr = ranges[title]
        return {"xrange": [float(xr[0]), float(xr[1])], "yrange": [float(yr[0]), float(yr[1])]}

    def tint(name: str) -> dict:
        return {"color": layer_colors[name]} if color is None and layer_colors and name in layer_colors else {}

    panels = []
    for name in (list(arrays) if show is None else list(show)):
        if name not in arrays:
            raise ValueError(f"show names {name!r}, which is not one of {list(arrays)}")
        xy = arrays[name]
        panel = {"title": name, "wide": False,
                 "layers": [{"name": name, "symbol": "circle", "x": rounded(xy[:, 0]),
                             "y": rounded(xy[:, 1]), **tint(name)}], **limits(name)}
        if marks and name in marks:
            placed = np.asarray(marks[name], dtype=np.float64).reshape(-1, 2)
            panel["marks"] = {"name": marks_name, "x": rounded(placed[:, 0]), "y": rounded(placed[:, 1])}
        panels.append(panel)
    if cross is not None:
        a_name, b_name = cross
        for name in cross:
            if name not in arrays:
                raise ValueError(f"cross names {name!r}, which is not one of {list(arrays)}")
        rows = np.arange(n) if cross_rows is None else np.asarray(cross_rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(f"cross_rows must be positions in 0..{n - 1}")
        a, b = arrays[a_name][rows], arrays[b_name][rows]
        linked = spread(np.arange(len(rows)), link_limit)
        title = f"{a_name} \u2194 {b_name}"
        panel = {"title": title, "wide": True,
                 "layers": [{"name": a_name, "symbol": CROSS_SYMBOLS[0], "x": rounded(a[:, 0]), "y": rounded(a[:, 1]),
                             **tint(a_name)},
                            {"name": b_name, "symbol": CROSS_SYMBOLS[1], "x": rounded(b[:, 0]), "y": rounded(b[:, 1]),
                             **tint(b_name)}],
                 "links": link_segments(a[linked], b[linked]), "link_limit": int(link_limit),
                 "link_breaks": link_breaks(a, b), **limits(title)}
        if cross_rows is not None:
            panel["rows"] = rows.tolist()
        panels.append(panel)
    return {"view": view, "source": source, "ids": row_ids.astype(np.int64).tolist(),
            "hover": None if hover is None else [str(h) for h in hover],
            "color": encode_color(color, color_title, categorical),
            "marker_size": float(size) if size is not None else marker_size(n),
            "panels": panels}


def frame_hover(table: pd.DataFrame) -> list[str]:
    """One tooltip line per row of an embeddings table: video id, frame index and label."""
    parts = []
    if "video_id" in table.columns:
        parts.append(table["video_id"].astype(str).to_numpy())
    if "frame" in table.columns:
        parts.append(np.array([f"frame {f}" for f in table["frame"]], dtype=object))
    if "label" in table.columns:
        parts.append(np.array(["" if pd.isna(lab) else str(lab) for lab in table["label"]], dtype=object))
    if not parts:
        return [f"row {i}" for i in table.index]
    return [" \u00b7 ".join(p for p in row if p) for row in zip(*parts)]


def table_value(table: pd.DataFrame, coords: Mapping[str, Any], color: str | None = "label", **kwargs: Any) -> dict:
    """`panels_value` for an embeddings table (one row per frame, as `hico.embed` writes it).

    Row ids are the table's index labels (so `table.loc[evt.ids]` gives the selected frames);
    hover text is "video · frame k · label"; `color` names the column to colour by (or None).
    Other keyword arguments go to `panels_value`.
    """
    if not pd.api.types.is_integer_dtype(table.index.dtype):
        raise ValueError("table_value needs a table with an integer index (its labels are the row ids)")
    if color is not None and color not in table.columns:
        raise ValueError(f"cannot colour by {color!r}: the table has no such column")
    kwargs.setdefault("color_title", color or "")
    return panels_value(coords, None if color is None else table[color], ids=table.index.to_numpy(),
                        hover=frame_hover(table), **kwargs)
