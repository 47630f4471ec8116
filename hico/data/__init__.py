"""Datasets and splits, the decoded-frame cache, pair sampling with mixup, batch augmentation."""

from hico.data.cache import FrameCache, build_cache, load_clip_frames, resize_frames
from hico.data.dataset import Clip, Dataset, find_clips
from hico.data.splits import assign_splits, held_out_note, labelled_mask
from hico.data.views import draw_frames, sample_views

__all__ = ["Clip", "Dataset", "FrameCache", "assign_splits", "build_cache", "held_out_note", "draw_frames", "find_clips",
           "labelled_mask", "load_clip_frames", "resize_frames", "sample_views"]
