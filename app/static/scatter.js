// Body of the gr.HTML `js_on_load` of app/scatter.py. Gradio runs it once per component with
// `element`, `trigger`, `props`, `server`, `upload` and `watch` in scope.
// It draws the panels of `props.value` (schema in app/scatter.py) with plotly.js loaded from
// this Gradio server, and sends selections ("select") and point clicks ("click") to Python.

const SYMBOL_GLYPHS = {
  "circle": "\u25CF", "circle-open": "\u25CB", "diamond": "\u25C6", "diamond-open": "\u25C7",
  "square": "\u25A0", "square-open": "\u25A1", "x": "\u00D7", "cross": "+", "triangle-up": "\u25B2",
};
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779",
                 "#6ece58", "#b5de2b", "#fde725"];
const HOVER_FETCH_DELAY_MS = 90;   // wait this long on one point before asking the server
// A panel of this many points or more gets density shading below its points (a 2-D histogram,
// transparent where empty, darker where many points overlap), and its points are more transparent.
const DENSITY_MIN_POINTS = 10000;
const DENSITY_BINS = 60;
const DENSITY_SCALE = [[0, "rgba(40,44,52,0)"], [0.02, "rgba(40,44,52,0.07)"], [0.25, "rgba(40,44,52,0.22)"],
                       [1, "rgba(40,44,52,0.5)"]];
const THUMB_CACHE_SIZE = 600;

const root = element.querySelector(".hs-root");
const legendEl = root.querySelector(".hs-legend");
const gridEl = root.querySelector(".hs-grid");
const tipEl = root.querySelector(".hs-tip");
const tipImg = tipEl.querySelector("img");
const tipText = tipEl.querySelector(".hs-tip-text");
const hasThumbs = !!(server && typeof server.thumbnail === "function");
if (!hasThumbs) tipImg.style.display = "none";
root.style.setProperty("--hs-height", `${props.panel_height || 320}px`);
root.style.setProperty("--hs-wide-height", `${props.wide_height || 520}px`);

const st = {
  timing: {},
  value: null, plots: [], structure: "", seq: 0, hidden: new Set(), categoryKey: "",
  syncing: 0, hoverId: null, hoverTimer: null, hideTimer: null, thumbs: new Map(), pending: new Map(),
  selected: null, down: null, clickedAt: 0,   // the user's selection (rows) and the last single click
};
// For tests and debugging: the live state of this component.
element.__hicoScatter = st;

// Our own plotly.js instance, loaded once per page. Gradio's gr.Plot also sets window.Plotly (its
// bundled 3.x) when it loads, so the instance is kept here and window.Plotly is given back.
let Plotly = null;
function loadPlotly() {
  if (!window.__hicoPlotly) {
    const cfg = window.gradio_config || {};
    const base = `${(cfg.root || "").replace(/\/+$/, "")}${cfg.api_prefix || "/gradio_api"}`;
    window.__hicoPlotly = new Promise((resolve, reject) => {
      const previous = window.Plotly;
      const s = document.createElement("script");
      s.src = `${base}/file=${encodeURI(props.plotly_path)}`;
      s.onload = () => {
        const ours = window.Plotly;
        if (previous) window.Plotly = previous;
        resolve(ours);
      };
      s.onerror = () => reject(new Error(`could not load plotly.js from ${s.src}`));
      document.head.appendChild(s);
    });
  }
  return window.__hicoPlotly;
}

function markerSize(value) {
  if (value.marker_size) return value.marker_size;
  const n = Math.max(1, (value.ids || []).length);
  return Math.min(8, Math.max(2.5, 12 * Math.pow(n / 100, -0.25)));
}

function panelRows(panel) {
  if (panel.rows) return panel.rows;
  const n = panel.layers.length ? panel.layers[0].x.length : 0;
  return Array.from({ length: n }, (_, i) => i);
}

// The counts of a panel's points (every layer) on a DENSITY_BINS x DENSITY_BINS grid over their
// extent, as a heatmap trace: counted once per value (a 2-D histogram trace would count its
// points again at every restyle, and a selection restyles every panel).
function densityTrace(panel) {
  if (!panel._density) {
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const { x, y } of panel.layers) {
      for (let i = 0; i < x.length; i++) {
        if (x[i] === null || y[i] === null) continue;
        x0 = Math.min(x0, x[i]); x1 = Math.max(x1, x[i]); y0 = Math.min(y0, y[i]); y1 = Math.max(y1, y[i]);
      }
    }
    const b = DENSITY_BINS;
    const wx = (x1 - x0) / b || 1;
    const wy = (y1 - y0) / b || 1;
    const z = Array.from({ length: b }, () => new Array(b).fill(0));
    for (const { x, y } of panel.layers) {
      for (let i = 0; i < x.length; i++) {
        if (x[i] === null || y[i] === null) continue;
        z[Math.min(b - 1, Math.floor((y[i] - y0) / wy))][Math.min(b - 1, Math.floor((x[i] - x0) / wx))] += 1;
      }
    }
    const centres = (lo, w) => Array.from({ length: b }, (_, i) => lo + (i + 0.5) * w);
    panel._density = { type: "heatmap", x: centres(x0, wx), y: centres(y0, wy), z, zmin: 0, zsmooth: "best",
                       colorscale: DENSITY_SCALE, showscale: false, hoverinfo: "skip", name: "density" };
  }
  return panel._density;
}

// A panel of more than DRAW_MAX points draws DRAW_MAX of them (a fixed random order's first
// DRAW_MAX inside the axes' range, drawn again after each zoom or pan: zoomed in, more of a region's
// points show) over the density shading of all of them. In software WebGL (headless Chromium, two
// cores), four panels of 100,000 points panned at 7 frames per second and a lasso took 400 ms to
// show on every panel; drawing 7,500 per panel, 48 frames per second and 140 ms (10,000: 40 and
// 190 to 215 ms). Selections still take every point inside the lasso or box (`shapeRows`).
const DRAW_MAX = 7500;

function drawOrder(panel) {   // the panel's positions in a fixed pseudo-random order (seeded, cached)
  if (!panel._order) {
    const n = panel.layers[0].x.length;
    const order = Array.from({ length: n }, (_, i) => i);
    let seed = 12345;
    for (let i = n - 1; i > 0; i--) {   // Fisher-Yates with a small LCG: the same order on every page
      seed = (seed * 1103515245 + 12345) % 2147483648;
      const j = seed % (i + 1);
      [order[i], order[j]] = [order[j], order[i]];
    }
    panel._order = order;
  }
  return panel._order;
}

// The positions (into the panel's layer arrays) drawn: all, or DRAW_MAX inside range ([x0, x1, y0, y1]).
function drawnPositions(panel, range) {
  const n = panel.layers.length ? panel.layers[0].x.length : 0;
  if (n <= DRAW_MAX || panel.layers.length !== 1) return null;   // null: every position
  const { x, y } = panel.layers[0];
  const out = [];
  for (const i of drawOrder(panel)) {
    if (x[i] === null || y[i] === null) continue;   // a row not embedded yet (a partial view): nothing to draw
    if (range && !(x[i] >= range[0] && x[i] <= range[1] && y[i] >= range[2] && y[i] <= range[3])) continue;
    out.push(i);
    if (out.length === DRAW_MAX) break;
  }
  return out.sort((a, b) => a - b);
}

// One scattergl trace per (layer, category) so categories toggle and colour consistently;
// traceRows[t][i] is the row (index into value.ids) of point i of trace t.
function buildTraces(value, panel, range = null) {
  const allRows = panelRows(panel);
  const drawn = drawnPositions(panel, range);
  const rows = drawn ? drawn.map((i) => allRows[i]) : allRows;
  const sub = (arr) => (drawn ? drawn.map((i) => arr[i]) : arr);
  const color = value.color || null;
  const size = markerSize(value);
  const n = (value.ids || []).length;   // dense clouds: let colours mix, and the shading show
  const opacity = n >= DENSITY_MIN_POINTS ? 0.45 : n > 5000 ? 0.7 : 0.9;
  const traces = [];
  const traceRows = [];
  const traceCodes = [];
  const common = {
    type: "scattergl", mode: "markers", hoverinfo: "none", showlegend: false,
    selected: { marker: { opacity: 1 } }, unselected: { marker: { opacity: 0.12 } },
  };
  if (panel.links) {   // the first traces, even empty: a selection redraws them (drawLinks)
    binLinks(panel, panel.links).forEach((bin, k) => {
      traces.push({
        type: "scattergl", mode: "lines", x: bin.x, y: bin.y, hoverinfo: "skip",
        showlegend: false, line: { color: LINK_COLOURS[k], width: k ? 1.5 : 1 },
      });
      traceRows.push(null);
      traceCodes.push(null);
    });
  }
  if (allRows.length >= DENSITY_MIN_POINTS && !panel.links) {   // where points overlap: how many, as shading below them
    traces.push(densityTrace(panel));
    traceRows.push(null);
    traceCodes.push(null);
  }
  const buckets = new Map();
  if (color && color.kind === "category") {
    for (let i = 0; i < rows.length; i++) {
      const c = color.codes[rows[i]];
      if (!buckets.has(c)) buckets.set(c, []);
      buckets.get(c).push(i);
    }
  }
  panel.layers.forEach((whole) => {
    const layer = drawn ? { ...whole, x: sub(whole.x), y: sub(whole.y) } : whole;
    const symbol = layer.symbol || "circle";
    const pick = (idx) => ({ x: idx.map((i) => layer.x[i]), y: idx.map((i) => layer.y[i]) });
    if (color && color.kind === "category") {
      const codes = Array.from(buckets.keys()).sort((a, b) => a - b);
      for (const c of codes) {
        const idx = buckets.get(c);
        traces.push({
          ...common, ...pick(idx), name: `${color.names[c]} (${layer.name || ""})`,
          visible: !st.hidden.has(c), marker: { size, symbol, opacity, color: color.colors[c] },
        });
        traceRows.push(idx.map((i) => rows[i]));
        traceCodes.push(c);
      }
    } else if (color && color.kind === "continuous") {
      traces.push({
        ...common, x: layer.x, y: layer.y, name: layer.name || "",
        marker: {
          size, symbol, opacity, color: rows.map((r) => color.values[r]), colorscale: "Viridis",
          cmin: color.min, cmax: color.max, showscale: false,
        },
      });
      traceRows.push(rows);
      traceCodes.push(null);
    } else {
      traces.push({ ...common, x: layer.x, y: layer.y, name: layer.name || "",
                    marker: { size, symbol, opacity, color: layer.color || "#3b6ea8" } });
      traceRows.push(rows);
      traceCodes.push(null);
    }
  });
  if (panel.marks) {   // points that are no row (an uploaded clip's frames): on top, inert
    traces.push({
      type: "scattergl", mode: "markers", x: panel.marks.x, y: panel.marks.y, hoverinfo: "skip",
      showlegend: false, name: panel.marks.name,
      marker: { symbol: "star", size: 15, color: "#111827", line: { color: "#fde047", width: 1.5 } },
    });
    traceRows.push(null);
    traceCodes.push(null);
  }
  return { traces, traceRows, traceCodes, decimated: !!drawn };
}

// Every row with a point of panel k inside the selection plotly reports (ev.range for a box,
// ev.lassoPoints for a lasso, in data units), drawn or not: a decimated panel's selection.
function shapeRows(k, ev) {
  const panel = st.value.panels[k];
  const all = panelRows(panel);
  const rows = new Set();
  let inside = null;
  if (ev && ev.range && ev.range.x && ev.range.y) {
    const [x0, x1] = span(ev.range.x);
    const [y0, y1] = span(ev.range.y);
    inside = (x, y) => x >= x0 && x <= x1 && y >= y0 && y <= y1;
  } else if (ev && ev.lassoPoints && ev.lassoPoints.x) {
    const px = ev.lassoPoints.x;
    const py = ev.lassoPoints.y;
    const [bx0, bx1, by0, by1] = [...span(px), ...span(py)];
    inside = (x, y) => {   // even-odd rule, inside the lasso's bounding box
      if (x < bx0 || x > bx1 || y < by0 || y > by1) return false;
      let c = false;
      for (let i = 0, j = px.length - 1; i < px.length; j = i++) {
        if ((py[i] > y) !== (py[j] > y) && x < ((px[j] - px[i]) * (y - py[i])) / (py[j] - py[i]) + px[i]) c = !c;
      }
      return c;
    };
  }
  if (inside) {
    for (const layer of panel.layers) {
      for (let i = 0; i < layer.x.length; i++) {
        if (layer.x[i] !== null && inside(layer.x[i], layer.y[i]) && !st.hidden.has(categoryOf(all[i]))) rows.add(all[i]);
      }
    }
  }
  return selection(rows);
}

function categoryOf(row) {
  const color = st.value.color;
  return color && color.kind === "category" ? color.codes[row] : null;
}

// A decimated panel, zoomed or panned: draw the points of the new range (see DRAW_MAX), keep the
// selection's highlight.
async function redrawDrawn(k) {
  const plot = st.plots[k];
  const full = plot.div._fullLayout;
  const range = [...span(full.xaxis.range), ...span(full.yaxis.range)];
  const { traces, traceRows, traceCodes } = buildTraces(st.value, st.value.panels[k], range);
  plot.traceRows = traceRows;
  plot.traceCodes = traceCodes;
  plot.redrawing = true;
  try {
    await Plotly.react(plot.div, traces, plot.div.layout, PLOT_CONFIG);
  } finally {
    plot.redrawing = false;
  }
  if (st.selected) await highlightOthers(-1, st.selected);
}

function axis(range) {
  const a = { zeroline: false, showline: true, mirror: true, linecolor: "#c9ced4", gridcolor: "#eef0f2",
              ticks: "", tickfont: { size: 9, color: "#57606a" }, automargin: false };
  if (range) { a.range = range; a.autorange = false; } else { a.autorange = true; }
  return a;
}

function buildLayout(value, panel) {
  return {
    uirevision: `${value.view || ""}|${panel.view || ""}|${panel.title}`,
    dragmode: "lasso", hovermode: "closest", showlegend: false, clickmode: "event",
    margin: { l: 32, r: 6, t: 24, b: 20 }, paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff",
    font: { size: 10, color: "#1f2328" },
    title: { text: panel.title || "", x: 0.01, xanchor: "left", y: 0.99, yanchor: "top",
             font: { size: 12, color: "#1f2328" } },
    xaxis: axis(panel.xrange), yaxis: axis(panel.yrange),
  };
}

const PLOT_CONFIG = {
  displaylogo: false, responsive: false, scrollZoom: true, doubleClickDelay: 300,
  modeBarButtonsToRemove: ["autoScale2d", "toggleSpikelines", "hoverClosestCartesian",
                           "hoverCompareCartesian", "hoverClosestGl2d"],
};

function selectionIds(k, points) {
  const plot = st.plots[k];
  const rows = new Set();
  for (const pt of points || []) {
    const tr = plot.traceRows[pt.curveNumber];
    if (!tr) continue;
    rows.add(tr[pt.pointIndex ?? pt.pointNumber]);
  }
  return selection(rows);
}

// A selection's rows and the sorted ids Python hears of.
function selection(rows) {
  const ids = Array.from(rows, (r) => st.value.ids[r]);
  ids.sort((a, b) => a - b);
  return { rows, ids };
}

// [min, max] of a few numbers (a range plotly reports in either order, a lasso's corners).
function span(values) {
  return [Math.min(...values), Math.max(...values)];
}

// Show the rows selected on panel k as selected on every other panel. A panel's own selection
// outline would re-apply its old selection on redraw, so it goes; the events this update causes
// are ignored (st.syncing) so Python only hears about the user's selection.
async function highlightOthers(k, rows) {
  st.syncing += 1;
  try {
    await Promise.all(st.plots.map((plot, j) => {
      if (j === k || !plot.ready) return null;
      const update = [];
      const indices = [];
      plot.traceRows.forEach((tr, t) => {
        if (!tr) return;
        indices.push(t);
        if (rows === null) { update.push(null); return; }
        const sel = [];
        for (let i = 0; i < tr.length; i++) if (rows.has(tr[i])) sel.push(i);
        update.push(sel);
      });
      const outline = (plot.div.layout.selections || []).length ? { selections: [] } : {};
      return indices.length ? Plotly.update(plot.div, { selectedpoints: update }, outline, indices) : null;
    }));
  } finally {
    st.syncing -= 1;
  }
}

// The lines of a cross-level panel: for the selected rows (at most panel.link_limit, spread evenly
// over them), or the value's own sample when nothing is selected (rows === null).
function linkSegments(panel, rows) {
  if (rows === null) return panel.links;
  const prow = panelRows(panel);
  const picked = [];
  for (let i = 0; i < prow.length; i++) if (rows.has(prow[i])) picked.push(i);
  const limit = panel.link_limit || picked.length;
  let chosen = picked;
  if (picked.length > limit) {   // evenly spread, as app/scatter.py `spread` (integer rounding, halves up)
    const m = picked.length;
    chosen = limit <= 1 ? picked.slice(0, limit) : Array.from({ length: limit },
      (_, j) => picked[Math.floor((2 * j * (m - 1) + (limit - 1)) / (2 * (limit - 1)))]);
  }
  const [a, b] = panel.layers;
  const x = [];
  const y = [];
  for (const i of chosen) { x.push(a.x[i], b.x[i], null); y.push(a.y[i], b.y[i], null); }
  return { x, y };
}

// A cross-level panel's lines coloured by length (how far apart a frame's two levels place it):
// one trace per bin of panel.link_breaks (panel units), grey for the shortest, red for the longest.
const LINK_COLOURS = ["rgba(80,86,94,0.35)", "rgba(230,145,40,0.75)", "rgba(205,35,35,0.9)"];

function binLinks(panel, seg) {
  const breaks = (panel.link_breaks || []).slice(0, LINK_COLOURS.length - 1);
  const bins = Array.from({ length: breaks.length + 1 }, () => ({ x: [], y: [] }));
  for (let i = 0; i + 1 < seg.x.length; i += 3) {
    const length = Math.hypot(seg.x[i + 1] - seg.x[i], seg.y[i + 1] - seg.y[i]);
    let k = 0;
    while (k < breaks.length && length > breaks[k]) k++;
    bins[k].x.push(seg.x[i], seg.x[i + 1], null);
    bins[k].y.push(seg.y[i], seg.y[i + 1], null);
  }
  return bins;
}

async function drawLinks(rows) {
  st.syncing += 1;
  try {
    await Promise.all(st.plots.map((plot, j) => {
      const panel = st.value.panels[j];
      if (!plot.ready || !panel.links || panel.layers.length !== 2) return null;
      const bins = binLinks(panel, linkSegments(panel, rows));
      return Plotly.restyle(plot.div, { x: bins.map((b) => b.x), y: bins.map((b) => b.y) }, bins.map((_, k) => k));
    }));
  } finally {
    st.syncing -= 1;
  }
}

function placeTip(ev) {
  const pad = 14;
  const w = tipEl.offsetWidth || 140;
  const h = tipEl.offsetHeight || 160;
  let x = ev.clientX + pad;
  let y = ev.clientY + pad;
  if (x + w > window.innerWidth) x = ev.clientX - pad - w;
  if (y + h > window.innerHeight) y = ev.clientY - pad - h;
  tipEl.style.left = `${Math.max(0, x)}px`;
  tipEl.style.top = `${Math.max(0, y)}px`;
}

// Thumbnails are keyed by the value's `source` (which table the row ids index) and the row id:
// another table's row 5 is another frame.
function thumbKey(id) {
  return `${(st.value && st.value.source) || ""}:${id}`;
}

function rememberThumb(key, uri) {
  st.thumbs.set(key, uri);
  if (st.thumbs.size > THUMB_CACHE_SIZE) st.thumbs.delete(st.thumbs.keys().next().value);
}

function fetchThumb(id) {
  const key = thumbKey(id);
  if (!st.pending.has(key)) {
    const source = (st.value && st.value.source) || "";
    const p = Promise.resolve(server.thumbnail(id, source))
      .then((uri) => { if (uri) rememberThumb(key, uri); return uri; })
      .catch(() => null)
      .finally(() => st.pending.delete(key));
    st.pending.set(key, p);
  }
  return st.pending.get(key);
}

function showTip(k, ev) {
  const plot = st.plots[k];
  const pt = (ev.points || []).find((p) => plot.traceRows[p.curveNumber]);
  if (!pt || !st.value) return;
  const row = plot.traceRows[pt.curveNumber][pt.pointIndex ?? pt.pointNumber];
  const id = st.value.ids[row];
  clearTimeout(st.hideTimer);
  const text = (st.value.hover && st.value.hover[row]) || `row ${id}`;
  if (st.hoverId !== id) {
    st.hoverId = id;
    tipText.textContent = text;
    st.timing.hoverAt = performance.now();   // when the tooltip showed this point (benchmarks read it)
    clearTimeout(st.hoverTimer);
    tipEl.dataset.id = String(id);
    if (hasThumbs) {
      // A thumbnail is shown only while its point is the one hovered: a late answer for a point
      // passed on the way never replaces the current point's (tipImg.dataset.id says whose it is).
      if (st.thumbs.has(thumbKey(id))) {
        tipImg.src = st.thumbs.get(thumbKey(id));
        tipImg.dataset.id = String(id);
      } else {
        tipImg.removeAttribute("src");
        delete tipImg.dataset.id;
        st.hoverTimer = setTimeout(() => {
          fetchThumb(id).then((uri) => {
            if (uri && st.hoverId === id) { tipImg.src = uri; tipImg.dataset.id = String(id); }
          });
        }, HOVER_FETCH_DELAY_MS);
      }
    }
  }
  tipEl.style.display = "block";
  if (ev.event) placeTip(ev.event);
}

function hideTip() {
  clearTimeout(st.hideTimer);
  st.hideTimer = setTimeout(() => {
    clearTimeout(st.hoverTimer);
    st.hoverId = null;
    tipEl.style.display = "none";
  }, 60);
}

// A single click (to pick a frame) in lasso or box mode makes plotly drop the selection; the user
// meant to pick, not to clear: only a double click clears. True right after such a click.
function justClicked() {
  return Date.now() - st.clickedAt < 600;
}

// Keep the user's selection after a click dropped it: every panel highlights its rows again
// (the clicked panel's outline is gone, its points stay highlighted), and Python hears nothing.
function keepSelection() {
  return Promise.all([highlightOthers(-1, st.selected), drawLinks(st.selected)]);
}

// plotly covers the page while the button is down, so the release is heard on the window (capture:
// before plotly's own handler, which drops the selection).
window.addEventListener("mouseup", (ev) => {
  // A double click clears the selection, even one plotly no longer holds (a redraw kept it): after
  // plotly's own handling, which clears what it holds. Its second press may land on plotly's cover,
  // so it counts when the first press was on a panel just before.
  if (ev.detail >= 2 && st.lastDown && Date.now() - st.lastDown.t < 800) {
    const { k } = st.lastDown;
    setTimeout(() => clearSelection(k), 50);
  }
  if (!st.down) return;
  const still = Math.hypot(ev.clientX - st.down.x, ev.clientY - st.down.y) < 4;
  st.clickedAt = still && ev.detail === 1 ? Date.now() : 0;   // detail 2: the second click of a double
  st.down = null;
  if (st.deferred) { st.deferred = false; setTimeout(renderSafely, 0); }   // after plotly's own mouseup
}, true);

function clearSelection(k) {
  if (!st.value || !st.selected) return;
  st.selected = null;
  trigger("select", { ids: [], panel: k, title: st.value.panels[k].title || "" });
  highlightOthers(-1, null);
  drawLinks(null);
}

function bindEvents(k, div) {
  div.addEventListener("mousedown", (ev) => {
    st.down = { x: ev.clientX, y: ev.clientY, t: Date.now() };
    st.lastDown = { k, t: Date.now() };
  }, true);
  div.on("plotly_selected", (ev) => {
    if (!st.value || st.syncing) return;
    const { rows, ids } = st.plots[k].decimated ? shapeRows(k, ev) : selectionIds(k, ev && ev.points);
    if (!rows.size && st.selected && justClicked()) { keepSelection(); return; }
    st.selected = rows.size ? rows : null;
    trigger("select", { ids, panel: k, title: st.value.panels[k].title || "" });
    Promise.all([highlightOthers(k, st.selected), drawLinks(st.selected)]).then(() => {
      st.timing.selectedAt = performance.now();   // every panel shows the selection (benchmarks read it)
    });
  });
  div.on("plotly_deselect", () => {
    if (!st.value || st.syncing || !st.selected) return;   // nothing selected: nothing to clear
    if (justClicked()) { keepSelection(); return; }
    st.selected = null;
    trigger("select", { ids: [], panel: k, title: st.value.panels[k].title || "" });
    highlightOthers(k, null);
    drawLinks(null);
  });
  div.on("plotly_click", (ev) => {
    if (!st.value) return;
    const plot = st.plots[k];
    const pt = (ev.points || []).find((p) => plot.traceRows[p.curveNumber]);
    if (!pt) return;
    const row = plot.traceRows[pt.curveNumber][pt.pointIndex ?? pt.pointNumber];
    trigger("click", { ids: [st.value.ids[row]], panel: k, title: st.value.panels[k].title || "" });
  });
  div.on("plotly_relayout", () => {
    const plot = st.plots[k];
    if (plot && plot.decimated && !plot.redrawing && !st.syncing) redrawDrawn(k);
  });
  div.on("plotly_hover", (ev) => showTip(k, ev));
  div.on("plotly_unhover", hideTip);
  div.addEventListener("mouseleave", hideTip);
  // plotly throttles hover events; keep the tooltip glued to the cursor in between.
  div.addEventListener("mousemove", (ev) => { if (tipEl.style.display === "block") placeTip(ev); });
}

const resizer = new ResizeObserver((entries) => {
  for (const e of entries) {
    const div = e.target;
    if (div._hsReady && e.contentRect.width > 0) Plotly.Plots.resize(div);
  }
});

function structureOf(value) {
  return JSON.stringify((value.panels || []).map((p) => [p.title || "", !!p.wide]));
}

function rebuildGrid(value) {
  for (const plot of st.plots) {
    resizer.unobserve(plot.div);
    Plotly.purge(plot.div);
  }
  gridEl.replaceChildren();
  st.plots = (value.panels || []).map((p, k) => {
    const div = document.createElement("div");
    div.className = `hs-panel hs-plot${p.wide ? " hs-wide" : ""}`;
    div.dataset.panel = String(k);
    gridEl.appendChild(div);
    return { div, traceRows: [], traceCodes: [], ready: false, bound: false };
  });
  const narrow = (value.panels || []).filter((p) => !p.wide).length;
  gridEl.style.setProperty("--hs-cols", String(Math.max(1, Math.min(narrow, props.columns || 4))));
  st.structure = structureOf(value);
}

const MAX_LEGEND_ENTRIES = 20;

function renderLegend(value) {
  legendEl.replaceChildren();
  const color = value.color;
  if (color && color.kind === "category") {
    const key = JSON.stringify(color.names);
    if (key !== st.categoryKey) { st.hidden.clear(); st.categoryKey = key; }
    if (color.title) {
      const t = document.createElement("span");
      t.className = "hs-legend-title";
      t.textContent = color.title;
      legendEl.appendChild(t);
    }
    if (color.names.length > MAX_LEGEND_ENTRIES) {  // e.g. one colour per video: a legend would fill the page
      const n = document.createElement("span");
      n.className = "hs-legend-note";
      n.textContent = `${color.names.length} values, one colour each (hover a point to see its own)`;
      legendEl.appendChild(n);
    }
    const counts = new Array(color.names.length).fill(0);
    for (const c of color.codes) counts[c] += 1;
    if (color.names.length <= MAX_LEGEND_ENTRIES) color.names.forEach((name, c) => {
      const b = document.createElement("button");
      b.type = "button";
      b.className = `hs-legend-item${st.hidden.has(c) ? " hs-off" : ""}`;
      b.dataset.code = String(c);
      b.title = "click: show or hide this category in every panel";
      const sw = document.createElement("span");
      sw.className = "hs-swatch";
      sw.style.background = color.colors[c];
      b.append(sw, document.createTextNode(`${name} (${counts[c]})`));
      b.addEventListener("click", () => toggleCategory(c, b));
      legendEl.appendChild(b);
    });
  } else if (color && color.kind === "continuous") {
    const t = document.createElement("span");
    t.className = "hs-legend-title";
    t.textContent = color.title || "";
    const lo = document.createElement("span");
    lo.textContent = String(color.min);
    const ramp = document.createElement("span");
    ramp.className = "hs-ramp";
    ramp.style.background = `linear-gradient(to right, ${VIRIDIS.join(", ")})`;
    const hi = document.createElement("span");
    hi.textContent = String(color.max);
    legendEl.append(t, lo, ramp, hi);
  }
  const layers = new Map();  // a layer's marker in the legend: its symbol, and its colour when it has one
  for (const p of value.panels || []) {
    for (const l of p.layers) {
      if (p.layers.length > 1 || l.color) layers.set(l.name, [l.symbol || "circle", l.color || null]);
    }
  }
  for (const [name, [symbol, colour]] of layers) {
    const s = document.createElement("span");
    s.className = "hs-layer";
    const glyph = document.createElement("span");
    glyph.textContent = SYMBOL_GLYPHS[symbol] || "\u25CF";
    if (colour) glyph.style.color = colour;
    s.append(glyph, document.createTextNode(` ${name}`));
    legendEl.appendChild(s);
  }
}

function toggleCategory(c, button) {
  if (st.hidden.has(c)) st.hidden.delete(c); else st.hidden.add(c);
  button.classList.toggle("hs-off", st.hidden.has(c));
  const visible = !st.hidden.has(c);
  for (const plot of st.plots) {
    const idx = [];
    plot.traceCodes.forEach((code, t) => { if (code === c) idx.push(t); });
    if (idx.length && plot.ready) Plotly.restyle(plot.div, { visible }, idx);
  }
}

async function render(value) {
  const seq = ++st.seq;
  const t0 = performance.now();
  Plotly = await loadPlotly();
  if (seq !== st.seq) return;
  if (!value || !value.panels || !value.panels.length) {
    for (const plot of st.plots) Plotly.purge(plot.div);
    st.plots = [];
    st.structure = "";
    st.value = null;
    st.selected = null;
    legendEl.replaceChildren();
    const empty = document.createElement("div");
    empty.className = "hs-empty";
    empty.textContent = (value && value.empty) || props.empty_text || "Nothing to show yet.";
    gridEl.replaceChildren(empty);
    element.dataset.renderSeq = String(seq);
    return;
  }
  if (structureOf(value) !== st.structure) rebuildGrid(value);
  // rows index the value's ids: a selection is kept across a redraw of the same rows only
  if (!st.value || st.value.source !== value.source || st.value.ids.length !== value.ids.length) st.selected = null;
  st.value = value;
  renderLegend(value);
  // A panel whose points, colours and hidden categories are as drawn is left alone: when one panel
  // swaps from PCA to UMAP the others are not drawn again (in software WebGL a panel of 3,200
  // points costs the page about a fifth of a second each time).
  const style = JSON.stringify([value.view, value.color, value.marker_size, value.ids.length, Array.from(st.hidden)]);
  const jobs = value.panels.map((panel, k) => {
    const plot = st.plots[k];
    const key = style + JSON.stringify(panel);
    if (plot.ready && plot.key === key) return null;
    plot.key = key;
    const { traces, traceRows, traceCodes, decimated } = buildTraces(value, panel);
    plot.traceRows = traceRows;
    plot.traceCodes = traceCodes;
    plot.decimated = decimated;
    return Plotly.react(plot.div, traces, buildLayout(value, panel), PLOT_CONFIG).then(() => {
      plot.ready = true;
      plot.div._hsReady = true;
      if (!plot.bound) {
        bindEvents(k, plot.div);
        resizer.observe(plot.div);
        plot.bound = true;
      }
      const axes = plot.div._fullLayout;
      if (decimated && !(axes.xaxis.autorange && axes.yaxis.autorange)) return redrawDrawn(k);   // a kept zoom
      return null;
    });
  });
  await Promise.all(jobs);
  if (seq !== st.seq) return;
  // A redraw of the same table (a new colouring, PCA giving way to UMAP) keeps the user's selection:
  // its rows are highlighted again on every panel, and the cross panel draws their lines.
  if (st.selected) await keepSelection();
  element.dataset.renderMs = String(Math.round(performance.now() - t0));
  element.dataset.renderSeq = String(seq);
}

// The value arrives as a JSON string (app/scatter.py `to_wire`): parsed once here, plotly gets
// plain arrays instead of Svelte's reactive proxies.
function renderSafely() {
  if (st.down && Date.now() - st.down.t < 15000) {   // never redraw under a drag (a lasso would be lost)
    st.deferred = true;
    return;
  }
  let value;
  const t = performance.now();
  try {
    value = typeof props.value === "string" ? (props.value ? JSON.parse(props.value) : null) : props.value;
  } catch (err) {
    gridEl.textContent = `Could not read the scatter's data: ${err.message}`;
    return;
  }
  Object.assign(st.timing, { valueAt: t, parseMs: performance.now() - t });
  render(value).catch((err) => {
    console.error("scatter: render failed", err);
    gridEl.textContent = `Could not draw the scatter: ${err.message}`;
  });
}

watch("value", renderSafely);
renderSafely();
