"""The decoded-frame cache: every clip decoded once, resized to the training size, kept as uint8.

On disk: one `.npy` per clip (T x C x S x S uint8) under `<cache_dir>/<S>px/`, named by a hash of
the clip's path, modification time, byte size, the frame limit and whether the screen is masked,
so an edited clip is decoded again. With `mask_screen` (config data.mask_screen) everything but
tissue (the black border around the sector, burned-in text, scales and bars: hico.screen) is set
to black on the full-resolution frames before they are resized, exactly as `hico predict` does;
otherwise a contrastive model tells videos apart by their overlays rather than their anatomy. In memory: one packed tensor of all frames with per-clip offsets, which can live on the
GPU so that batches are gathered there without touching the host.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hico.errors import HiCoError
from hico.io import ClipLimits, read_clip
from hico.paths import hico_home
from hico.screen import mask_frames

CACHE_VERSION = 1
DECODE_THREADS = 8  # at most; never more than the machine's cores
_RESIZE_PIXELS = 16_000_000  # source pixels (x channels) resized per step


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """T x H x W x C uint8 -> T x C x size x size uint8 (antialiased bilinear, aspect not kept,
    as the published pipeline resizes to a square).

    Frames are resized a few at a time (about 16 M source pixels per step): the float copy
    the interpolation needs is four times the uint8 frames, which for a clip near
    data.max_clip_pixels would be gigabytes at once.
    """
    x = torch.from_numpy(np.require(frames, np.uint8, ["C", "W"])).permute(0, 3, 1, 2)
    if x.shape[-2:] == (size, size):
        return x.contiguous().numpy()
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    step = max(1, _RESIZE_PIXELS // max(1, x.shape[1] * x.shape[2] * x.shape[3]))
    for start in range(0, x.shape[0], step):
        chunk = F.interpolate(x[start:start + step].float(), size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)
        out[start:start + step] = chunk.round_().clamp_(0, 255)
    return out.numpy()


def _fingerprint(path: Path) -> str:
    if path.is_dir():
        stats = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
        mtime, size = max((s.st_mtime_ns for s in stats), default=0), sum(s.st_size for s in stats)
    else:
        st = path.stat()
        mtime, size = st.st_mtime_ns, st.st_size
    return f"{path.resolve()}|{mtime}|{size}"


def cache_path(cache_dir: Path, clip_path: Path, size: int, max_frames: int, mask_screen: bool = False) -> Path:
    key = f"v{CACHE_VERSION}|{_fingerprint(clip_path)}|{size}|{max_frames}" + ("|mask" if mask_screen else "")
    return cache_dir / f"{size}px" / (hashlib.sha1(key.encode()).hexdigest() + ".npy")


def load_clip_frames(clip_path: Path, size: int, max_frames: int = 0, cache_dir: Path | None = None,
                     limits: ClipLimits | None = None, mask_screen: bool = False) -> np.ndarray:
    """A clip's frames as T x C x size x size uint8, from the disk cache or decoded and stored.

    A clip not yet cached is decoded within `limits` (ClipLimits.from_config(cfg.data); None:
    the defaults): a clip over them is a HiCoError naming it and the key to raise.
    """
    return _cached_frames(clip_path, size, max_frames, cache_dir, mmap=False, limits=limits,
                          mask_screen=mask_screen)[0]


def _cached_frames(clip_path: Path, size: int, max_frames: int, cache_dir: Path | None,
                   mmap: bool, limits: ClipLimits | None = None, mask_screen: bool = False) -> tuple[np.ndarray, Path]:
    """(frames, the cache file holding them); with `mmap` a cached clip is memory-mapped, read only."""
    cache_dir = Path(cache_dir) if cache_dir else hico_home() / "cache"
    target = cache_path(cache_dir, clip_path, size, max_frames, mask_screen)
    if target.is_file():
        try:
            return np.load(target, allow_pickle=False, mmap_mode="r" if mmap else None), target
        except (OSError, ValueError):
            target.unlink(missing_ok=True)  # a torn write from a killed process: decode again
    frames = read_clip(clip_path, max_frames=max_frames or None, limits=limits)
    if mask_screen:
        frames = mask_frames(frames)[0]
    frames = resize_frames(frames, size)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, frames, allow_pickle=False)
    os.replace(tmp, target)
    return frames, target


@dataclass
class FrameCache:
    """All frames of a list of clips, packed.

    frames:  N x C x S x S uint8, C = 1 when every clip is gray, else 3 (gray clips replicated)
    offsets: V int64 (numpy, on the host), index of each clip's first frame
    lengths: V int64 (numpy, on the host), frames per clip
    Only `frames` moves to a device; indices stay on the host so sampling never syncs.
    """

    frames: torch.Tensor
    offsets: np.ndarray
    lengths: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.frames.shape[1])

    @property
    def size(self) -> int:
        return int(self.frames.shape[-1])

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device: torch.device | str) -> "FrameCache":
        device = torch.device(device)
        frames = self.frames.to(device, non_blocking=True)
        if device.type == "cpu" and torch.cuda.is_available():
            frames = frames.pin_memory()
        return FrameCache(frames, self.offsets, self.lengths)

    def clip(self, i: int) -> torch.Tensor:
        start = int(self.offsets[i])
        return self.frames[start:start + int(self.lengths[i])]


def build_cache(paths: list[Path], size: int, max_frames: int = 0, cache_dir: Path | None = None,
                progress: bool = True, desc: str = "decoding clips",
                limits: ClipLimits | None = None, mask_screen: bool = False,
                on_clip: Callable[[int, int], None] | None = None) -> FrameCache:
    """Decode (or load) every clip at `size` and pack them; raise HiCoError naming a bad clip.

    Clips not yet cached are decoded within `limits` (ClipLimits.from_config(cfg.data); None: the
    defaults): one over them stops the build with a HiCoError naming the clip and the key to raise.
    `mask_screen`: black out all but tissue first (see the module docstring).

    Clips are decoded by a few threads at once (the decoders and the resize release the GIL):
    on two cores that takes 45% off decoding the embedded dataset, and more on bigger machines.
    Peak host memory is one copy of the packed frames plus a clip per thread.
    `on_clip(done, total)` is called as each clip is decoded or found cached (a progress line).
    """
    if not paths:
        raise HiCoError("There are no clips to decode.")
    # Two passes keep the host memory at one copy of the frames, however many there are: first
    # every clip is decoded into the disk cache (only its shape is kept), then one packed array is
    # allocated and each cached clip is copied into its slice from a memory map.
    def cache_one(path) -> tuple[Path, tuple[int, ...]]:
        frames, file = _cached_frames(Path(path), size, max_frames, cache_dir, mmap=True, limits=limits,
                                      mask_screen=mask_screen)
        return file, frames.shape

    files, shapes = zip(*_threaded(cache_one, paths, progress, desc, on_clip))
    channels = max(shape[1] for shape in shapes)
    lengths = np.array([shape[0] for shape in shapes], dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    packed = np.empty((int(lengths.sum()), channels, size, size), dtype=np.uint8)

    def fill(i: int) -> None:  # a gray clip among colour ones is broadcast to three channels
        packed[offsets[i]:offsets[i] + lengths[i]] = np.load(files[i], allow_pickle=False, mmap_mode="r")

    _threaded(fill, range(len(paths)), False, "packing")
    frames = torch.from_numpy(packed)
    return FrameCache(frames, offsets, lengths)


def _threaded(work, items, progress: bool, desc: str, on_item: Callable[[int, int], None] | None = None) -> list:
    """[work(item) for item in items] on a few threads, in order; the first error ends the rest.
    on_item(done, total) after each result, in order."""
    items = list(items)
    workers = max(1, min(DECODE_THREADS, len(items), os.cpu_count() or 1))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    try:
        results = []
        for result in tqdm(pool.map(work, items), total=len(items), desc=desc, unit="clip", disable=not progress,
                           leave=False):
            results.append(result)
            if on_item is not None:
                on_item(len(results), len(items))
        return results
    finally:  # a bad clip (or Ctrl-C) ends the decoding: the clips still queued are dropped
        pool.shutdown(wait=True, cancel_futures=True)
