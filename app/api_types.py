"""What each API endpoint returns, field by field: the endpoints' return annotations, so that
`gradio_client`'s `view_api()` (and the page's "Use via API") list the fields and their types
instead of `Any`. Every answer has `ok`; a user error is `{"ok": false, "message": "<sentence>"}`
and the fields marked NotRequired are then absent (or empty)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import gradio as gr


class Reply(TypedDict):
    """ok, and a sentence saying what happened (or what is wrong)."""

    ok: bool
    message: str


class StartReply(Reply):
    run: str | None  # the run's name under $HICO_HOME/runs


class ExportReply(Reply):
    model: NotRequired[gr.FileData]  # model.onnx (hico.export)
    encoder: NotRequired[gr.FileData]  # resnet18_encoder.pt: the backbone under torchvision's names
    card: NotRequired[gr.FileData]  # MODEL_CARD.md


class UploadReply(Reply):
    dataset: str | None  # the path to pass as /start_training's dataset


class StatusReply(TypedDict):
    active: bool  # a run is training now
    run: dict[str, Any] | None  # name, folder, state, step, total_steps, epoch, epochs, images_per_s, eta_s,
    #                             device, error, stopped_by (why it stopped unasked), owner, gpu
    #                             ({name, total_gb, memory_gb, util} on a GPU, else None), last
    #                             (its latest metrics line)
    runs: list[dict[str, Any]]  # every run: run, state, step, loss mode, size, started, owner
    startup: str  # what the app's first start is doing before the demo run exists ("" once done)


class CompareReply(Reply):
    runs: list[dict[str, Any]]  # run, mode, seed, state, step, latest {field: value}, series {field: [[step, value]]}


class EmbeddingsReply(TypedDict):
    ok: bool
    message: NotRequired[str]
    run: NotRequired[str]
    method: NotRequired[str]  # pca | umap
    frames: NotRequired[int]
    checkpoint: NotRequired[str]
    step: NotRequired[int]  # the checkpoint's step the table holds
    newer_step: NotRequired[int | None]  # the run's newer checkpoint, when it has one (refresh=true loads it)
    coords: NotRequired[dict[str, list[list[float]]]]  # level -> N x 2
    video_id: NotRequired[list[str]]
    frame: NotRequired[list[int]]
    label: NotRequired[list[str | None]]
    split: NotRequired[list[str]]
    accuracy_state: NotRequired[str]  # ready | pending | failed
    accuracy_message: NotRequired[str]
    accuracy: NotRequired[list[dict[str, Any]] | None]  # one row per feature, as `hico eval` writes it


class SimilarReply(TypedDict):
    ok: bool
    message: NotRequired[str]
    run: NotRequired[str]
    frames: NotRequired[int]  # frames in the dataset's table
    levels: NotRequired[dict[str, list[dict[str, Any]]]]  # level -> [{row, video_id, frame, label, distance}]
    placed: NotRequired[dict[str, list[list[float]]]]  # level -> T x 2: the clip's frames on that Explore panel
    method: NotRequired[dict[str, str]]  # level -> pca | umap: the projection `placed` is in


class TimelineReply(Reply):
    run: NotRequired[str]
    level: str
    steps: list[int]
    points: list[dict[str, Any]]  # {"step", "x": [N], "y": [N]}, aligned across steps
    labels: list[str]
    video_id: list[str]
    frame: list[int]
    split: NotRequired[list[str]]
    moved: NotRequired[list[float | None]]
    class_agreement: NotRequired[list[float | None]]


class PredictReply(TypedDict):
    ok: bool
    message: NotRequired[str]
    run: NotRequired[str]
    prediction: NotRequired[str]
    classes: NotRequired[list[str]]
    clip_probs: NotRequired[list[float]]
    frame_probs: NotRequired[list[list[float]]]  # T x K
    level_predictions: NotRequired[dict[str, str]]
    calibrated: NotRequired[bool]  # clip_probs and frame_probs divided by the run's fitted temperature
    temperature: NotRequired[float]
    mask_method: NotRequired[str | None]
    mask: NotRequired[str]  # what the screen mask applied, in words
    unfamiliar: NotRequired[bool | None]  # null when it cannot be told; true: the classes do not apply
    unfamiliar_score: NotRequired[float | None]  # above hico.familiarity.LIMIT (1.1): unfamiliar
    unfamiliar_reason: NotRequired[str | None]
    familiarity_note: NotRequired[str]
    overlay_video: NotRequired[gr.FileData]  # mp4, or png for a one-frame input
    frames_csv: NotRequired[gr.FileData]
