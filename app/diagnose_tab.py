"""The Diagnose tab: its layout, its handlers and the /predict and /find_similar endpoints.

`DiagnoseTab` is mixed into `app.ui.HiCoApp` and uses its shared state (`diagnoser`, `explorer`,
`access`, `examples`, `run_path`, `model_runs`, `refresh_choices`, and ExploreTab's `_similar`);
what the handlers compute lives in app/diagnose.py and `hico.predict`.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from hico.errors import HiCoError

from app.api_types import PredictReply, SimilarReply
from app.diagnose import SALIENCY_CHOICES, summary
from app.explore import NEIGHBOURS, PER_CLIP
from app.explore_tab import LEVEL_PANELS, enlarged, neighbour_caption
from app.figures import frame_probabilities, level_bars, probability_bars


class DiagnoseTab:
    """Diagnose: upload or pick a clip, get probabilities, per-frame curves and a saliency video."""

    def diagnose(self, clip, run, level):
        """Upload or example -> (message, bars, per-frame chart, video, slider, frame, mask, csv, video file, id).

        A one-frame input (a still, a single-frame DICOM or clip) gets its overlay as a still and
        a bar chart per level instead of a video, a slider and curves over frames."""
        empty = (None, None, gr.update(value=None, visible=True), gr.update(maximum=1, value=0, visible=True), None,
                 None, None, None, None)
        if not clip:
            return ("Upload a clip or pick an example.", *empty)
        try:
            result = self._diagnose(clip, run, level)
        except HiCoError as exc:
            return (f"⚠️ {exc}", *empty)
        pred = result.prediction
        still = result.frames == 1
        if still:
            chart = level_bars(pred.classes, {"classifier": pred.frame_probs[0],
                                              **{name: p[0] for name, p in pred.level_probs.items()}})
        else:
            chart = frame_probabilities(pred.classes, pred.frame_probs, 0)
        return (summary(pred), probability_bars(pred.classes, pred.clip_probs, greyed=pred.unfamiliar), chart,
                gr.update(value=None if still else str(result.video), visible=not still),
                gr.update(maximum=max(result.frames - 1, 1), value=0, step=1, visible=not still), result.overlay[0],
                result.mask_image, str(result.csv),
                gr.update(value=str(result.video), label="Overlay image (png)" if still else "Overlay video (mp4)"),
                result.id)

    def diagnose_frame(self, result_id, index):
        result = self.diagnoser.result(result_id) if result_id else None
        if result is None:
            return None, None
        i = int(min(max(index or 0, 0), result.frames - 1))
        pred = result.prediction
        return result.overlay[i], frame_probabilities(pred.classes, pred.frame_probs, i)

    def _diagnose(self, clip, run, level, keep: bool = True):
        """Diagnose a clip the request uploaded; a message that names the file or the run names them
        as the user knows them, not by the server's paths. `keep`: for the page's frame slider."""
        path = self.access.uploaded(clip)
        run_dir = self.run_path(run)
        try:
            return self.diagnoser.diagnose(run_dir, path, level, keep=keep)
        except HiCoError as exc:
            raise HiCoError(str(exc).replace(str(path), path.name).replace(str(run_dir), run_dir.name)) from None

    def api_predict(self, clip: gr.FileData, run: str = "", level: str = "all") -> PredictReply:
        """Predict a clip (video, DICOM or image) with a run: class probabilities per clip and per frame,
        the saliency overlay video and per-frame CSV as files, and whether the clip is unlike the
        run's training data (unfamiliar: true/false, null when that cannot be told; unfamiliar_score:
        its distance to the training data over that of 95% of held-out training clips, above
        hico.familiarity.LIMIT is unfamiliar; unfamiliar_reason: why, in words; when unfamiliar
        the classes do not apply). clip_probs are calibrated when `calibrated` is true."""
        try:
            run = run or self.default_run() or ""
            result = self._diagnose(clip, run, level, keep=False)  # an API answer has no slider to feed
        except HiCoError as exc:
            return {"ok": False, "message": str(exc)}
        pred = result.prediction
        return {"ok": True, "run": run, "prediction": pred.label, "classes": pred.classes,
                "clip_probs": [float(p) for p in pred.clip_probs],
                "frame_probs": pred.frame_probs.round(6).tolist(),
                "level_predictions": {k: pred.classes[int(v.mean(0).argmax())] for k, v in pred.level_probs.items()},
                "calibrated": pred.calibrated, "temperature": pred.temperature,
                "mask_method": getattr(pred.mask, "method", None),
                "mask": pred.mask.describe() if pred.mask is not None else "off",
                "unfamiliar": getattr(pred.familiarity, "unfamiliar", None),
                "unfamiliar_score": getattr(pred.familiarity, "score", None),
                "unfamiliar_reason": pred.familiarity.reason() if pred.unfamiliar else None,
                "familiarity_note": pred.familiarity.sentence() if pred.familiarity else pred.familiarity_note,
                "overlay_video": gr.FileData(path=str(result.video)),  # a png for a one-frame input
                "frames_csv": gr.FileData(path=str(result.csv))}

    def show_similar(self, clip, run, dataset):
        """Diagnose's "Find similar frames": the clip's nearest frames in the dataset, per level side by side."""
        empty = [[]] * len(LEVEL_PANELS)
        if not clip:
            return "Upload a clip or pick an example first.", *empty
        try:
            item, found = self._similar(clip, run, dataset)
        except HiCoError as exc:
            return f"⚠️ {exc}", *empty
        galleries = [[(enlarged(self.explorer.frame(item, int(i))), neighbour_caption(item.table.loc[int(i)], float(d)))
                      for i, d in zip(found.rows[level], found.distances[level])] for level in LEVEL_PANELS]
        name = Path(str(dataset).rstrip("/")).name if dataset else "the synthetic set"
        return (f"Nearest frames to this clip in **{name}** ({len(item.table):,} frames), at most {PER_CLIP} per "
                f"clip; d is the cosine distance to the clip's nearest frame."), *galleries

    def api_find_similar(self, clip: gr.FileData, run: str = "", dataset: str = "", k: int = NEIGHBOURS
                         ) -> SimilarReply:
        """An uploaded clip's nearest frames in a dataset's embeddings by a run, per level (local, medium,
        global, backbone): {level: [{row, video_id, frame, label, distance}]}, at most 2 frames of any one
        clip, k (1 to 50) per level; and `placed`: where each of the clip's frames falls among the
        dataset's points on each level's Explore panel ({level: T x 2}, in the coordinates /embeddings
        gives for `method`)."""
        try:
            run = run or self.default_run() or ""
            k = int(k)
            if not 1 <= k <= 50:
                raise HiCoError(f"k must be between 1 and 50, not {k}.")
            item, found = self._similar(clip, run, dataset, k)
        except (HiCoError, TypeError, ValueError) as exc:
            return {"ok": False, "message": str(exc) if isinstance(exc, HiCoError) else "k must be a whole number."}
        table = item.table
        levels = {level: [{"row": int(i), "video_id": str(table.at[int(i), "video_id"]),
                           "frame": int(table.at[int(i), "frame"]), "label": None if table.at[int(i), "label"] is None
                           else str(table.at[int(i), "label"]), "distance": round(float(d), 6)}
                          for i, d in zip(found.rows[level], found.distances[level])] for level in LEVEL_PANELS}
        return {"ok": True, "run": run, "frames": len(table), "levels": levels,
                "placed": {level: found.placed[level].round(5).tolist() for level in LEVEL_PANELS},
                "method": {level: found.method[level].split(" ")[0].lower() for level in LEVEL_PANELS}}

    def diagnose_tab(self) -> gr.Dropdown:
        """The tab's components and events; returns its run dropdown (filled on page load)."""
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                clip = gr.File(label="Clip: video, DICOM (single or multi-frame) or image", type="filepath",
                               elem_id="diagnose-upload")
                gr.Examples([[e] for e in self.examples()], inputs=clip, label="Example clips (synthetic)")
                run = gr.Dropdown(self.model_runs(), label="Model (run)", elem_id="diagnose-run")
                level = gr.Radio(list(SALIENCY_CHOICES), value="all", label="Saliency (Grad-CAM) level",
                                 info="all = local, medium and global side by side; backbone = the classifier")
                go = gr.Button("Diagnose", variant="primary", elem_id="diagnose-go")
                # labels as headings, not badges: a badge covers the top left of the picture
                gr.Markdown("**Screen mask** (red: ignored text and border)")
                mask = gr.Image(label="Screen mask", show_label=False, interactive=False, elem_id="diagnose-mask")
            with gr.Column(scale=3, min_width=420):
                message = gr.Markdown(elem_id="diagnose-message")
                bars = gr.Plot(label="Clip-level probabilities", elem_id="diagnose-bars")
                gr.Markdown("**Saliency overlay** (Grad-CAM)")
                video = gr.Video(label="Saliency overlay", show_label=False, autoplay=True, loop=True,
                                 elem_id="diagnose-video")
                slider = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="diagnose-slider")
                frame = gr.Image(label="Overlay at this frame", show_label=False, interactive=False,
                                 elem_id="diagnose-frame")
                line = gr.Plot(label="Per-frame probabilities", elem_id="diagnose-line")
                with gr.Row():
                    csv = gr.DownloadButton("Per-frame results (CSV)", elem_id="download-csv")
                    video_file = gr.DownloadButton("Overlay video (mp4)", elem_id="download-video")
        gr.Markdown("### Find similar frames\nThe nearest frames to this clip in a dataset's embeddings, at each "
                    "level side by side (the dataset is embedded once by the run, as in Explore).")
        with gr.Row():
            similar_data = self.dataset_dropdown(label="Dataset to search", scale=3, elem_id="similar-dataset")
            similar_go = gr.Button("Find similar frames", scale=1, elem_id="similar-go")
        similar_note = gr.Markdown(elem_id="similar-note")
        with gr.Row(elem_classes="hico-neighbours"):
            similar_near = [gr.Gallery(label=f"Nearest at {name}", columns=1, height=600, scale=1, min_width=220,
                                       object_fit="contain", elem_id=f"similar-{name}") for name in LEVEL_PANELS]
        result_id = gr.State(None)
        outputs = [message, bars, line, video, slider, frame, mask, csv, video_file, result_id]
        go.click(self.diagnose, [clip, run, level], outputs, api_visibility="private")
        # change, not upload: picking an example runs it too (an upload is a change as well)
        clip.change(self.diagnose, [clip, run, level], outputs, api_visibility="private")
        slider.change(self.diagnose_frame, [result_id, slider], [frame, line], api_visibility="private",
                      show_progress="hidden")
        similar_go.click(self.show_similar, [clip, run, similar_data], [similar_note, *similar_near],
                         api_visibility="private")
        run.focus(self.refresh_choices, None, run, api_visibility="private")
        return run
