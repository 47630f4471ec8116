"""The Explore tab: its layout, its handlers and the /embeddings endpoint.

`ExploreTab` is mixed into `app.ui.HiCoApp` and uses its shared state (`explorer`, `access`,
`home`, `run_path`, `model_runs`, `refresh_choices`, and `diagnoser`'s model to embed an uploaded clip);
what the handlers compute lives in app/explore.py and `hico.embed`.
"""

from __future__ import annotations

import gradio as gr
import numpy as np

from hico.config import VIEWS
from hico.errors import HiCoError

from app.api_types import EmbeddingsReply, TimelineReply
from app.default import synth_dir
from app.diagnose import embed_clip
from app.explore import NEIGHBOURS, PAIRS, SHOW_WAIT_S, cross_summary, latest_step, linked_rows, place, similar
from app.scatter import palette, panels_value, scatter, table_value
from app.timeline_view import LEVELS as TIMELINE_LEVELS
from app.timeline_view import api_payload

LEVEL_PANELS = VIEWS
TICK_S = 3.0  # how often a page asks for what changed while its view fills in
IDLE_TICK_S = 10.0  # and once all is drawn (whether the run has a newer checkpoint)
MAX_WAIT_S = 300.0  # the longest an /embeddings request waits for the background (UMAP, accuracy)
ACCURACY_COLUMNS = ("feature", "linear_acc", "knn_acc", "linear_video_acc", "knn_video_acc")
ACCURACY_HEADERS = ("level", "probe", "kNN", "probe, videos", "kNN, videos")  # short: the table fits its column
QUALITY_COLUMNS = ("panel", "layout", "class 2-D", "class embedding", "neighbours kept", "own position")
CROSS_COLUMNS = ("class", "frames", "line length", "shared neighbours")


class ExploreTab:
    """Explore: per-level scatters, the cross-level view, selection gallery, neighbours, accuracy,
    and the run's projection over training (app/timeline_view.py). Its caches are the app's
    (HiCoApp: explorer, timeline_views)."""

    def _item(self, run, dataset, pinned: str | None = None):
        """The table of a run and dataset: the one the page shows (`pinned`, its source) while it is
        cached (perhaps still being embedded), else the run's newest checkpoint's, whole (embedded
        if need be: only a request that asks for it, Show embeddings or an API call, waits for that)."""
        run_dir, data_dir = self._paths(run, dataset)
        return self.explorer.pinned(pinned, run_dir, data_dir) or self.explorer.load(run_dir, data_dir)

    def _paths(self, run, dataset):
        """(run folder, dataset folder) a request names, checked; HiCoError for what it may not read."""
        return self.run_path(run), self.access.dataset(dataset or str(synth_dir(self.home)))

    def _similar(self, clip, run, dataset, k: int = NEIGHBOURS, pinned: str | None = None):
        """(the explore item, Similar) of an uploaded clip in a dataset's embeddings by a run: what
        Diagnose's find-similar, /find_similar and Explore's placed clip (on its `pinned` table) show.
        The clip is embedded by the checkpoint the table was, or HiCoError says the run moved on."""
        path = self.access.uploaded(clip)
        run_dir = self.run_path(run)
        try:
            item = self.explorer.whole(self._item(run, dataset, pinned))
            loaded = self.diagnoser.model(run_dir)
            if (loaded.checkpoint, loaded.step) != (item.checkpoint, item.step):
                raise HiCoError(f"The run has moved on to step {loaded.step} since this view (step {item.step}); "
                                f"press Show embeddings, then place the clip.")
            vectors = embed_clip(loaded, path)
        except HiCoError as exc:
            raise HiCoError(str(exc).replace(str(path), path.name)) from None
        return item, similar(self.explorer, item, vectors, k=k)

    def explore_value(self, item, colour: str, pair: str, placed: dict | None = None) -> tuple[dict, str, int]:
        """The scatter value for the four level panels and the cross-level panel, a note on which
        panels are UMAP yet (each swaps from PCA as soon as its UMAP is done), and how many are.
        placed: a page's uploaded clip ({source, nearest: {level: T x K rows}}, `place_clip`), drawn
        as stars on each level panel where its frames fall in the projection shown now."""
        coords = {column: self.explorer.projection(item, column)[0] for column in (*LEVEL_PANELS, pair)}
        marks = None
        if placed and placed.get("source") == item.source:
            marks = {level: place(coords[level], nearest) for level, nearest in placed["nearest"].items()}
        umap_done = self.explorer.umap_ready(item, (*LEVEL_PANELS, pair))
        rows = linked_rows(len(item.table))
        a, b = PAIRS[pair]
        joint = coords.pop(pair)
        for name, part in ((a, joint[:len(rows)]), (b, joint[len(rows):])):
            full = np.full((len(item.table), 2), np.nan)
            full[rows] = part
            coords[name] = full
        column = {"class": "label", "video": "video_id", "split": "split", "level": None}[colour]
        if item.complete:  # each panel names its own layout: one swapping to UMAP leaves the others' zoom alone
            note, view = self._umap_note(item, pair), "whole"
        else:  # one view name while the table fills in: a user's zoom is kept across the redraws
            note, view = self.explorer.projection(item, LEVEL_PANELS[0])[1], "partial"
        value = table_value(item.table, coords, column, view=view, show=list(LEVEL_PANELS),
                            cross=(a, b), cross_rows=rows, source=item.source,
                            layer_colors=level_colours(), marks=marks, marks_name="uploaded clip")
        for panel, name in zip(value["panels"], (*LEVEL_PANELS, pair)):
            panel["view"] = "umap" if name in umap_done else "pca"
        return value, note, len(umap_done)

    def show_embeddings(self, run, dataset, colour, pair, placed=None):
        """Show embeddings: the run's newest checkpoint, pinned on the page. A table not embedded yet
        is embedded in the background: this waits for its first chunk (SHOW_WAIT_S at most) and
        shows what is in; the page's tick fills in the rest."""
        try:
            item = self.explorer.start(*self._paths(run, dataset))
        except HiCoError as exc:
            return f"⚠️ {exc}", gr.update(), None, None, None, "", None
        if item.first.wait(SHOW_WAIT_S) and item.done is not None and item.done.all():
            item.embedded.wait(SHOW_WAIT_S)  # a small table, in one chunk: whole a moment later
        return self._explore_view(item, colour, pair, placed)

    def explore(self, run, dataset, colour, pair, placed=None, pinned=None):
        """A control changed: the table the page shows (`pinned`) drawn again at once, never
        re-embedded. -> (message, scatter value, accuracy, layout quality, cross-level summary,
        shown state, pinned source)."""
        try:
            item = self.explorer.pinned(pinned, *self._paths(run, dataset)) if pinned else None
        except HiCoError as exc:
            return f"⚠️ {exc}", gr.update(), None, None, None, "", pinned
        if item is None:
            return "Press **Show embeddings** to embed and show this run.", gr.update(), None, None, None, "", None
        return self._explore_view(item, colour, pair, placed)

    def _explore_view(self, item, colour, pair, placed=None):
        """Everything the page shows of an item, as it stands: the whole view, the part embedded so
        far (PCA of those rows), or a progress line while its clips are read."""
        if item.error:
            return f"⚠️ {item.error}", gr.update(), None, None, None, "", None
        if item.table is None:
            return (self._progress_message(item), {"panels": [], "empty": f"Reading the clips ({item.progress})…"},
                    *self._pending_tables(), "embedding:0", item.source)
        value, note, _ = self.explore_value(item, colour, pair, placed)
        tables = (self._accuracy(item), self.quality_table(item), self.cross_table(item, pair))
        return self._explore_message(item, note), value, *tables, self._drawn(item, pair), item.source

    def _drawn(self, item, pair) -> str:
        """What a view of the item draws now: `embedding:<rows in>` while it is embedded, then
        `ready:<panels in UMAP>`; a tick redraws the plot only when this changes."""
        if not item.complete:
            return f"embedding:{item.count}"
        return f"ready:{len(self.explorer.umap_ready(item, (*LEVEL_PANELS, pair)))}"

    def explore_tick(self, run, dataset, colour, pair, shown, placed=None, pinned=None):
        """Fill the view in as the table is embedded, swap each panel from PCA to UMAP as its UMAP is
        done, fill the tables when computed, and say when the run has a newer checkpoint than the
        one shown (never loading it unasked)."""
        unchanged = (gr.update(),) * 5 + (shown, pinned)
        if not run or not shown or not pinned:
            return unchanged
        try:
            item = self.explorer.pinned(pinned, *self._paths(run, dataset))
        except HiCoError:
            return unchanged
        if item is None:
            return unchanged
        if shown == "done":  # all drawn: only whether the run has a newer checkpoint can change
            return (self._explore_message(item, self._umap_note(item, pair)), *unchanged[1:])
        if not item.complete and item.table is not None and item.count == len(item.table):
            return (self._explore_message(item, "PCA"), *unchanged[1:])  # whole in a moment: drawn once then
        drawn = self._drawn(item, pair)
        finished = item.accuracy is not None or item.accuracy_error is not None
        state = "done" if drawn == f"ready:{len(LEVEL_PANELS) + 1}" and finished else drawn
        if item.error or item.table is None or shown != drawn:
            return *self._explore_view(item, colour, pair, placed)[:5], state, pinned
        note = self.explorer.projection(item, LEVEL_PANELS[0])[1] if not item.complete else self._umap_note(item, pair)
        tables = self._accuracy(item), self.quality_table(item), self.cross_table(item, pair)
        return self._explore_message(item, note), gr.update(), *tables, state, pinned

    def place_clip(self, clip, run, dataset, colour, pair, pinned=None):
        """An uploaded clip placed among the dataset's points: (a note, the scatter value with its frames
        as stars, the page's placed state). Each frame sits at the mean position of its 5 nearest
        frames in the table at that level (app.explore.similar)."""
        if not clip:
            return "", gr.update(), None
        try:
            item, found = self._similar(clip, run, dataset, pinned=pinned)
        except HiCoError as exc:
            return f"⚠️ {exc}", gr.update(), None
        placed = {"source": item.source, "nearest": {level: found.nearest[level].tolist() for level in LEVEL_PANELS}}
        value, _, _ = self.explore_value(item, colour, pair, placed)
        frames = len(found.nearest[LEVEL_PANELS[0]])
        return (f"The uploaded clip's {frames} frame(s) are the ★ on each level panel, each where its 5 nearest "
                f"frames of this dataset lie."), value, placed

    def _umap_note(self, item, pair) -> str:
        """Which panels of a whole table are laid out by UMAP yet."""
        umap_done = self.explorer.umap_ready(item, (*LEVEL_PANELS, pair))
        if len(umap_done) == len(LEVEL_PANELS) + 1:
            return "UMAP"
        if umap_done:
            return f"UMAP for {', '.join(umap_done)}; PCA for the rest until their UMAP is done"
        return "PCA (UMAP still running)"

    @staticmethod
    def _pending_tables():
        return ([["computing…", None, None, None, None]], [[panel, "", "computing…", None, None, None] for panel in LEVEL_PANELS],
                [["computing…", None, None, None]])

    def _progress_message(self, item) -> str:
        return (f"Embedding the dataset with checkpoint {item.checkpoint} at step {item.step}: {item.progress}. "
                f"Points appear as chunks of frames are embedded; nothing else waits for this.")

    def quality_table(self, item) -> list[list]:
        """One row per level panel: how well the layout it shows keeps the embedding's neighbours
        (hico.neighbours.projection_scores), or "computing…"."""
        rows = []
        for panel in LEVEL_PANELS:
            method = "umap" if ("umap", panel) in item.projections else "pca"
            score = item.scores.get((method, panel))
            if score is None:
                rows.append([panel, method.upper(), "computing…", None, None, None])
                continue
            rows.append([panel, method.upper(), *(None if score[k] is None else round(score[k], 3)
                                                  for k in ("class_2d", "class_embedding", "overlap", "distinct"))])
        return rows

    def cross_table(self, item, pair: str):
        """Per class of the cross-level panel: mean line length and shared neighbours (app.explore.cross_summary)."""
        if not item.complete:
            return self._pending_tables()[2]
        joint = self.explorer.projection(item, pair)[0]
        rows = linked_rows(len(item.table))
        summary = cross_summary(item.table["label"].to_numpy()[rows], joint[:len(rows)], joint[len(rows):],
                                item.agreement.get(pair))
        summary.columns = list(CROSS_COLUMNS)
        return summary.round(3)

    @staticmethod
    def _explore_message(item, method: str) -> str:
        """What the page shows: frames, layout, the checkpoint and step, and whether the run has a
        newer checkpoint (offered, never loaded unasked)."""
        table = item.table
        if not item.complete:
            method = f"{method} ({item.progress}; the rest fill in)"
        newer = ""
        try:
            _, latest = latest_step(item.run_dir)
            if latest > item.step:
                newer = f" · **step {latest} is available: press Show embeddings to refresh**"
        except HiCoError:  # the run's checkpoints are gone: the page keeps what it shows
            pass
        return (f"{len(table):,} frames of {table['video_id'].nunique():,} clips · {method} · "
                f"checkpoint {item.checkpoint or table.attrs.get('checkpoint', '')} at step {item.step}{newer} · "
                f"box or lasso to select frames, click one for its nearest neighbours")

    @staticmethod
    def _accuracy(item):
        if item.accuracy is not None:
            return item.accuracy[list(ACCURACY_COLUMNS)].round(3).set_axis(list(ACCURACY_HEADERS), axis=1)
        if item.accuracy_error:
            return [[item.accuracy_error, None, None, None, None]]
        return [["computing…", None, None, None, None]]

    def selected_frames(self, run, dataset, pinned, evt: gr.EventData):
        """A box/lasso selection -> gallery of the selected frames (the first 60)."""
        try:
            item = self._item(run, dataset, pinned)
        except HiCoError:
            return [], "Nothing selected."
        if item.table is None:
            return [], "Nothing selected."
        ids = _row_ids(evt, len(item.table))
        rows = item.table.loc[ids]
        # the clip's own name and the frame: a gallery tile has room for a dozen characters, and the
        # class folder in the id repeats the label
        gallery = [(self.explorer.frame(item, i), f"{str(r.video_id).rsplit('/', 1)[-1]} #{r.frame}")
                   for i, r in zip(ids[:60], rows.head(60).itertuples())]
        return gallery, f"{len(ids)} frames selected" + (" (first 60 shown)" if len(ids) > 60 else "")

    def neighbours(self, run, dataset, same_clip, pinned, evt: gr.EventData):
        """A clicked frame -> itself, shown large, and its nearest frames at each level side by side
        (from other clips unless `same_clip`), each captioned with class, clip, frame and distance."""
        empty = [[]] * len(LEVEL_PANELS)
        try:
            item = self._item(run, dataset, pinned)
        except HiCoError:
            return None, "", *empty
        if item.table is None:
            return None, "", *empty
        ids = _row_ids(evt, len(item.table))
        if not ids:
            return None, "", *empty
        row = ids[0]
        picked = item.table.loc[row]
        galleries = []
        for column in LEVEL_PANELS:
            near, distance = self.explorer.neighbours(item, row, column, same_clip=bool(same_clip))
            galleries.append([(self.explorer.frame(item, i), neighbour_caption(item.table.loc[i], d))
                              for i, d in zip(near, distance)])
        where = "any clip, its own included" if same_clip else "other clips"
        caption = (f"**Picked:** {picked['label']} · {picked['video_id']} · frame {picked['frame']} · "
                   f"{picked['split']}. Its nearest frames at each level, from {where} (cosine distance d):")
        return enlarged(self.explorer.frame(item, row)), caption, *galleries

    def thumbnail(self, row_id: int, source: str) -> str | None:
        """The thumbnail of a row of the table a page shows (its scatter value's `source`)."""
        item = self.explorer.by_source(source)
        if item is None or not 0 <= row_id < len(item.table):
            return None
        return self.explorer.thumbnail(item, row_id)

    def api_embeddings(self, run: str = "", dataset: str = "", method: str = "pca",
                       wait_s: float = 0, refresh: bool = False) -> EmbeddingsReply:
        """Per-frame 2-D projections of every level (local, medium, global, backbone) for a run and dataset,
        with video id, frame, label and split per frame, and the linear-probe / kNN accuracy per level.
        The accuracy is computed in the background after the projections: accuracy_state says
        ready, pending (accuracy null; call again, or pass wait_s to wait up to that many seconds,
        300 at most) or failed (accuracy_message says why). method=umap waits (up to 300 s) for
        the app's one background UMAP of the table, which every page and request shares.
        A table already embedded for the run is answered at once (`step`), with `newer_step` when
        the run has a newer checkpoint; refresh=true embeds the newest (and waits for it)."""
        if method not in ("pca", "umap"):
            return {"ok": False, "message": f"method must be pca or umap, not {str(method)[:40]!r}."}
        try:
            run = run or self.default_run() or ""
            run_dir, data_dir = self._paths(run, dataset)
            item = (None if refresh else self.explorer.cached(run_dir, data_dir)) or self.explorer.start(run_dir,
                                                                                                      data_dir)
            item = self.explorer.whole(item)
            _, latest = latest_step(run_dir)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc)}
        if method == "umap":
            if not item.projected.wait(MAX_WAIT_S):
                return {"ok": False, "message": "The UMAP of this table is still being computed; call again, "
                                                "or ask for method=pca."}
            if not all(("umap", c) in item.projections for c in LEVEL_PANELS):
                return {"ok": False, "message": "The UMAP of this table failed (the app's log says why); "
                                                "method=pca works."}
        coords = {column: item.projections[(method, column)].round(5).tolist() for column in LEVEL_PANELS}
        if wait_s and wait_s > 0:
            item.evaluated.wait(min(float(wait_s), MAX_WAIT_S))
        table = item.table
        state = "ready" if item.accuracy is not None else ("failed" if item.accuracy_error else "pending")
        return {"ok": True, "run": run, "method": method, "frames": len(table), "checkpoint": item.checkpoint,
                "step": item.step, "newer_step": latest if latest > item.step else None,
                "accuracy_state": state, "accuracy_message": item.accuracy_error or "",
                "video_id": table["video_id"].tolist(), "frame": table["frame"].astype(int).tolist(),
                "label": [None if lab is None else str(lab) for lab in table["label"]],
                "split": table["split"].tolist(), "coords": coords,
                "accuracy": None if item.accuracy is None else item.accuracy.to_dict(orient="records")}

    # ---- over training ----------------------------------------------------------------------
    def _timeline(self, run, level):
        return self.timeline_views.get(self.run_path(run), level or "global")

    @staticmethod
    def timeline_caption(view, index: int) -> str:
        """What the slider's position shows: the step, how far points moved, the kNN class agreement."""
        step = view.steps[index]
        parts = [f"**step {step:,}** (snapshot {index + 1} of {len(view.steps)})"]
        if view.moved[index] is not None:
            parts.append(f"moved {view.moved[index]:.3f} since step {view.steps[index - 1]:,} (mean distance, "
                         f"layout radius 1)")
        if view.class_agreement[index] is not None:
            parts.append(f"kNN class agreement {view.class_agreement[index]:.3f} (share of a frame's 10 nearest "
                         f"frames from other clips with its class)")
        return " · ".join(parts)

    def timeline_value(self, view, index: int, run: str) -> dict:
        """The scatter value of one step: one panel, fixed axes, the same point ids at every step."""
        xrange, yrange = view.ranges()
        labels = [lab or "unlabelled" for lab in view.label]
        hover = [f"{v} · frame {f} · {lab} · {s}" for v, f, lab, s in zip(view.video_id, view.frame, labels, view.split)]
        title = f"{view.level} at step {view.steps[index]:,}"
        return panels_value({title: view.coords[index]}, labels, hover=hover, color_title="class", categorical=True,
                            view=f"timeline:{run}:{view.level}", ranges={title: (xrange, yrange)},
                            source=f"timeline:{run}")

    def show_timeline(self, run, level):
        """-> (message, slider, scatter value, caption) for the run's last snapshot."""
        try:
            view = self._timeline(run, level)
        except HiCoError as exc:
            return f"⚠️ {exc}", gr.update(maximum=0, value=0, label="Snapshot"), None, ""
        last = len(view.steps) - 1
        message = (f"{len(view.steps)} snapshots of {len(view.video_id)} frames, steps {view.steps[0]:,} to "
                   f"{view.steps[-1]:,}; PCA per snapshot, each aligned to the next one (Procrustes)")
        slider = gr.update(minimum=0, maximum=max(last, 1), value=last, step=1, interactive=last > 0,
                           label=f"Snapshot (step {view.steps[last]:,})")
        return message, slider, self.timeline_value(view, last, run), self.timeline_caption(view, last)

    def timeline_step(self, run, level, index):
        """The slider moved: the plot and caption of that snapshot (the view is cached)."""
        try:
            view = self._timeline(run, level)
        except HiCoError:
            return gr.update(), gr.update(), gr.update()
        index = min(max(int(index or 0), 0), len(view.steps) - 1)
        return (self.timeline_value(view, index, run), self.timeline_caption(view, index),
                gr.update(label=f"Snapshot (step {view.steps[index]:,})"))

    def api_timeline(self, run: str, level: str = "global") -> TimelineReply:
        """A run's timeline snapshots at one level projected to 2-D and aligned across steps: steps,
        points [{step, x, y}] (the same frames in the same order at every step), labels, video_id,
        frame, split, and per step the mean displacement since the previous step and the kNN class
        agreement."""
        try:
            if level not in TIMELINE_LEVELS:
                raise HiCoError(f"Level must be one of {', '.join(TIMELINE_LEVELS)}, not {level!r}.")
            view = self._timeline(run, level)
        except HiCoError as exc:
            return {"ok": False, "message": str(exc), "steps": [], "level": level, "points": [], "labels": [],
                    "video_id": [], "frame": []}
        return api_payload(view, run)

    def explore_tab(self) -> gr.Dropdown:
        """The tab's components and events; returns its run dropdown (filled on page load)."""
        with gr.Row():
            run = gr.Dropdown(self.model_runs(), label="Model (run)", elem_id="explore-run", scale=2)
            dataset = self.dataset_dropdown(label="Dataset", scale=3, elem_id="explore-dataset")
            colour = gr.Radio(["class", "video", "split", "level"], value="class", label="Colour by", scale=2)
            pair = gr.Radio(list(PAIRS), value=list(PAIRS)[0], label="Cross-level view", scale=2)
            show = gr.Button("Show embeddings", variant="primary", scale=1, elem_id="explore-go")
        message = gr.Markdown(elem_id="explore-message")
        with gr.Accordion("Place a clip among these points", open=False):
            place_file = gr.File(label="A clip (video, DICOM or image): its frames are drawn as ★ where they "
                                       "fall on each level", type="filepath", elem_id="explore-place")
            place_note = gr.Markdown(elem_id="explore-place-note")
        plot = scatter(thumbnail=self.thumbnail, elem_id="explore-scatter",
                       empty_text="Pick a run and press Show embeddings.")
        gr.Markdown("**Cross-level view** (the wide panel): each frame is drawn at both levels in one shared "
                    "space (each level centred and rotated onto the other); a short line means the two levels "
                    "agree about the frame, a long one marks a frame they place differently. Lines are grey for "
                    "the third of frames whose levels agree most, orange for the middle third, red for the third "
                    "they place furthest apart.",
                    elem_id="explore-cross-caption")
        with gr.Row():
            quality = gr.Dataframe(headers=list(QUALITY_COLUMNS), interactive=False, elem_id="explore-quality",
                                   label="How well each layout keeps the embedding: of a frame's 10 nearest frames "
                                         "from other clips, the share of its class in 2-D and in the embedding, the "
                                         "share of the embedding's neighbours kept in 2-D, and the share of frames "
                                         "with a position of their own")
            cross = gr.Dataframe(headers=list(CROSS_COLUMNS), interactive=False, elem_id="explore-cross",
                                 label="Cross-level view per class: mean line length (panel units; short: the levels "
                                       "agree), and the share of a frame's 10 nearest frames from other clips at one "
                                       "level that are also nearest at the other")
        with gr.Row():
            with gr.Column(scale=3):
                selection_note = gr.Markdown()
                gallery = gr.Gallery(label="Selected frames", columns=6, height=320, elem_id="explore-gallery")
            with gr.Column(scale=2):
                accuracy = gr.Dataframe(headers=list(ACCURACY_HEADERS), interactive=False, elem_id="explore-accuracy",
                                        wrap=True,
                                        label="Linear probe and kNN accuracy (frames, and videos by mean "
                                              "probability; folds split by video)")
        gr.Markdown("### Nearest frames\nClick a point: the frame, and its nearest frames at each level side by "
                    "side, so you see which level groups what.")
        with gr.Row(elem_classes="hico-neighbours"):
            with gr.Column(scale=1, min_width=200):
                picked = gr.Image(label="Picked frame", interactive=False, height=260, elem_id="explore-picked")
                same_clip = gr.Checkbox(False, label="Include frames of the picked frame's own clip",
                                        elem_id="explore-same-clip")
            # one tile per row: at 1366 px the four levels sit side by side with tiles over 200 px wide
            near = [gr.Gallery(label=f"Nearest at {name}", columns=1, height=600, scale=1, min_width=220,
                               object_fit="contain", elem_id=f"explore-near-{name}")
                    for name in LEVEL_PANELS]
        picked_note = gr.Markdown(elem_id="explore-picked-note")
        gr.Markdown("### Over training\nThe run's projection at each validation: the same frames, laid out "
                    "by PCA per snapshot and aligned so that points do not jump between steps.")
        with gr.Row():
            t_level = gr.Radio(list(TIMELINE_LEVELS), value="global", label="Level", scale=3,
                               elem_id="timeline-level")
            t_show = gr.Button("Show over training", scale=1, elem_id="timeline-go")
        t_message = gr.Markdown(elem_id="timeline-message")
        t_slider = gr.Slider(0, 1, value=0, step=1, label="Snapshot", interactive=False, elem_id="timeline-slider")
        t_caption = gr.Markdown(elem_id="timeline-caption")
        t_plot = scatter(elem_id="timeline-scatter", columns=1, panel_height=520,
                         empty_text="Pick a run and press Show over training.")
        t_show.click(self.show_timeline, [run, t_level], [t_message, t_slider, t_plot, t_caption],
                     api_visibility="private")
        t_level.change(self.show_timeline, [run, t_level], [t_message, t_slider, t_plot, t_caption],
                       api_visibility="private", show_progress="hidden")
        t_slider.input(self.timeline_step, [run, t_level, t_slider], [t_plot, t_caption, t_slider],
                       api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        shown = gr.State(None)
        placed = gr.State(None)  # this page's uploaded clip, placed among the points (place_clip)
        pinned = gr.State(None)  # the table this page shows (its source): kept while the run trains on
        inputs = [run, dataset, colour, pair, placed]
        outputs = [message, plot, accuracy, quality, cross, shown, pinned]
        show.click(self.show_embeddings, inputs, outputs, api_visibility="private")
        for control in (colour, pair):  # applied at once to the table shown: no re-embed
            control.change(self.explore, [*inputs, pinned], outputs, api_visibility="private",
                           show_progress="hidden")
        timer = gr.Timer(TICK_S)
        timer.tick(self.explore_tick, [run, dataset, colour, pair, shown, placed, pinned], outputs,
                   api_visibility="private", show_progress="hidden")
        # every event makes the page snapshot its components (Gradio's get_data; a tenth of a core
        # at this rate): once all is drawn the page only looks for a newer checkpoint, less often
        shown.change(lambda state: gr.Timer(IDLE_TICK_S if state == "done" else TICK_S), shown, timer,
                     api_visibility="private", show_progress="hidden")
        place_file.change(self.place_clip, [place_file, run, dataset, colour, pair, pinned], [place_note, plot, placed],
                          api_visibility="private")
        plot.select(self.selected_frames, [run, dataset, pinned], [gallery, selection_note], api_visibility="private")
        plot.click(self.neighbours, [run, dataset, same_clip, pinned], [picked, picked_note, *near],
                   api_visibility="private")
        run.focus(self.refresh_choices, None, run, api_visibility="private")
        return run


def enlarged(frame: np.ndarray, side: int = 256) -> np.ndarray:
    """A frame at the model's input size (often 96 px) scaled up to `side` px, readable on the page."""
    from PIL import Image

    image = Image.fromarray(frame)
    if max(image.size) >= side:
        return frame
    scale = side / max(image.size)
    return np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))


def neighbour_caption(record, distance: float) -> str:
    """A neighbour tile's caption, in full: class, clip, frame and cosine distance."""
    clip = str(record["video_id"]).rsplit("/", 1)[-1]
    return f"{record['label']} · {clip} · frame {record['frame']} · d {distance:.3f}"


def level_colours() -> dict[str, str]:
    """A colour per level for "colour by level": its pooled map and its projection-head embedding
    (the cross-level view's points) share it."""
    colours = dict(zip(LEVEL_PANELS, palette(len(LEVEL_PANELS))))
    return {**colours, **{f"z_{level}": colour for level, colour in colours.items()}}


def _row_ids(evt: gr.EventData, rows: int) -> list[int]:
    """The row ids an event from the page names, keeping only whole numbers within the table."""
    ids = getattr(evt, "ids", None)
    if not isinstance(ids, list):
        return []
    return [int(i) for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < rows]
