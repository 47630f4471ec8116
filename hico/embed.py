"""Per-frame embeddings of a dataset at every level, as a pandas table, and 2-D projections.

Table columns (one row per frame):
    video_id, frame, label (class name or None), path, split (train / val / test, or
    "external" for a dataset the run was not trained on)
    backbone          pooled C5 (512 floats for ResNet-18)
    local, medium, global        pooled FPN maps of the three levels (fpn_dim floats)
    z_local, z_medium, z_global  the projection-head outputs the loss compares (proj_dim floats)
Vector columns hold float32 arrays; `level_matrix(table, name)` stacks one into N x d.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from hico.config import LEVELS, VIEWS
from hico.data import assign_splits, build_cache, find_clips
from hico.errors import HiCoError
from hico.files import atomic_path
from hico.inference import embed_frames, load_run, resolve_device
from hico.io import ClipLimits
from hico.neighbours import knn, limit_group, unit_rows
from hico.paths import expand_path
from hico.runs import EMBEDDINGS, Checkpoint, Run

log = logging.getLogger(__name__)
VECTOR_COLUMNS = ("backbone", *LEVELS, *(f"z_{level}" for level in LEVELS))
LEVEL_COLUMNS = VIEWS


def default_output(run_dir: Path, data_dir: Path, checkpoint: str, step: int, max_frames: int) -> Path:
    """RUN_DIR/embeddings/<data>-<checkpoint>-<digest of data and frame limit>-step<k>.parquet"""
    key = f"{Path(data_dir).expanduser().resolve()}|{checkpoint}|{max_frames}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(run_dir) / EMBEDDINGS / f"{Path(data_dir).stem or 'data'}-{checkpoint}-{digest}-step{step}.parquet"


def _drop_stale(target: Path) -> None:
    """Remove the tables (and their projections and results) of earlier steps of the same checkpoint."""
    prefix = target.name.rsplit("-step", 1)[0] + "-step"
    for old in target.parent.glob(prefix + "*"):
        if not old.name.startswith(target.stem + "."):
            old.unlink(missing_ok=True)


CHUNK_FRAMES = 256  # the first chunk of frames embedded; each later chunk is three times the one before


def embed_order(lengths: np.ndarray, seed: int = 0, first: int = CHUNK_FRAMES) -> list[np.ndarray]:
    """Frame indices (into the packed frames of clips of these `lengths`) in the chunks they are
    embedded in: whole clips in a seeded random order, so that the first chunks already hold every
    class, in chunks of `first` frames or more, each at least three times the one before (few
    chunks: the app redraws its partial view after each)."""
    lengths = np.asarray(lengths, np.int64)
    offsets = np.cumsum(lengths) - lengths
    chunks, current, size, target = [], [], 0, first
    for clip in np.random.default_rng(seed).permutation(len(lengths)):
        current.append(np.arange(offsets[clip], offsets[clip] + lengths[clip]))
        size += int(lengths[clip])
        if size >= target:
            chunks.append(np.concatenate(current))
            current, size, target = [], 0, 3 * target
    if current:
        chunks.append(np.concatenate(current))
    return chunks


def embed_dataset(run: Run | str | Path, data_dir: str | Path, out: str | Path | None = None,
                  checkpoint: str | Checkpoint = "auto", device: str = "auto", batch_size: int = 64,
                  max_frames: int | None = None, reuse: bool = True, progress: bool = True,
                  on_clip: Callable[[int, int], None] | None = None,
                  on_chunk: Callable[[pd.DataFrame, dict[str, np.ndarray], np.ndarray], None] | None = None,
                  ) -> tuple[pd.DataFrame, Path]:
    """Embed every frame of every clip under data_dir with a run's checkpoint.

    Writes the table as Parquet (to `out`, or a file in RUN_DIR/embeddings named for the data,
    checkpoint and step) and returns (table, path). With `reuse`, an existing table for the same
    data, checkpoint and step is read instead of recomputed.

    Frames are embedded in chunks of whole clips in a random order (`embed_order`), so a caller can
    show a part that already spans the dataset: `on_clip(done, total)` as clips are decoded, then
    `on_chunk(meta, vectors, done)` after each chunk, with meta the table's N rows without vectors,
    vectors {column: N x d float32} for every vector column (rows filled where done is true), and
    done (N bools, a new array each time). The table's rows are in the dataset's order.
    """
    chosen = checkpoint if isinstance(checkpoint, Checkpoint) else Run.of(run).checkpoint(checkpoint)
    run_dir, data_dir = chosen.run.path, expand_path(data_dir)
    frames_cap = chosen.config.data.max_frames if max_frames is None else max_frames
    target = Path(out) if out else default_output(run_dir, data_dir, chosen.name, chosen.step, frames_cap)
    if reuse and out is None and target.is_file():
        return load_embeddings(target), target
    dev = resolve_device(device)
    loaded = load_run(chosen, device=dev)
    cfg, sidecar = loaded.cfg, loaded.sidecar
    dataset = find_clips(data_dir, cfg.data.frame_folders)
    same_data = bool(cfg.data.root) and expand_path(cfg.data.root).resolve() == data_dir.resolve()
    splits = assign_splits(dataset, cfg.data.val_fraction, cfg.train.seed) if same_data else None
    cache_dir = expand_path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    cache = build_cache([c.path for c in dataset.clips], cfg.data.size, frames_cap, cache_dir, progress,
                        limits=ClipLimits.from_config(cfg.data), mask_screen=cfg.data.mask_screen, on_clip=on_clip)
    lengths = np.asarray(cache.lengths, np.int64)
    table = pd.DataFrame({
        "video_id": np.repeat([c.video_id for c in dataset.clips], lengths).tolist(),
        "frame": np.concatenate([np.arange(n) for n in lengths]).tolist(),
        "label": np.repeat(np.array([c.label for c in dataset.clips], dtype=object), lengths).tolist(),
        "path": np.repeat([str(c.path) for c in dataset.clips], lengths).tolist(),
        "split": np.repeat([clip.split or (splits[i] if splits else "external")
                            for i, clip in enumerate(dataset.clips)], lengths).tolist()})
    vectors: dict[str, np.ndarray] = {}
    done = np.zeros(len(table), bool)
    with tqdm(total=len(table), desc="embedding", unit="frame", disable=not progress, leave=False) as bar:
        for rows in embed_order(lengths):
            part = embed_frames(loaded.model, cache.frames[torch.from_numpy(rows)], dev, batch_size)
            for col in VECTOR_COLUMNS:
                if col not in vectors:
                    vectors[col] = np.zeros((len(table), part[col].shape[1]), np.float32)
                vectors[col][rows] = part[col]
            done = done.copy()
            done[rows] = True
            bar.update(len(rows))
            if on_chunk is not None:
                on_chunk(table, vectors, done)
    table = table.copy()
    for col in VECTOR_COLUMNS:
        table[col] = list(vectors[col])
    table.attrs.update({"checkpoint": loaded.checkpoint, "step": sidecar["step"]})
    target.parent.mkdir(parents=True, exist_ok=True)
    if out is None:
        _drop_stale(target)
    with atomic_path(target) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("wrote %d frame embeddings to %s", len(table), target)
    return table, target


def load_embeddings(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise HiCoError(f"Embeddings table {path} does not exist.")
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise HiCoError(f"Embeddings table {path} cannot be read ({type(exc).__name__}).") from None
    return table


def level_matrix(table: pd.DataFrame, column: str) -> np.ndarray:
    """Stack a vector column into an N x d float32 matrix."""
    if column not in table.columns:
        raise HiCoError(f"Embeddings table has no column {column!r} (it has {', '.join(table.columns)}).")
    return np.stack([np.asarray(v, dtype=np.float32) for v in table[column]])


def projections_path(table_path: str | Path) -> Path:
    """Where the UMAP coordinates of a table's views are kept: beside it, as <table>.umap.npz."""
    return Path(table_path).with_suffix(".umap.npz")


LAYOUT_VERSION = 3  # of how views are laid out: cached layouts of another version are made again (3: the
# cross-level views' two levels in one shared space, `shared_space`)
_VERSION_KEY = "_layout_version"


def load_projections(table_path: str | Path) -> dict[str, np.ndarray]:
    """The cached UMAP coordinates of a table ({view: N x 2}), empty when none, unreadable, or
    made by an earlier LAYOUT_VERSION (before version 2 a clip's frames collapsed into one dot)."""
    path = projections_path(table_path)
    if not path.is_file():
        return {}
    try:
        with np.load(path) as data:
            if _VERSION_KEY not in data.files or int(data[_VERSION_KEY]) != LAYOUT_VERSION:
                return {}
            return {key: data[key] for key in data.files if key != _VERSION_KEY}
    except (OSError, ValueError, EOFError):  # a torn write: the projections are computed again
        return {}


def save_projections(table_path: str | Path, projections: dict[str, np.ndarray]) -> Path:
    """Write {view: N x 2} beside the table, atomically (a reader sees the old file or the new)."""
    path = projections_path(table_path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **projections, **{_VERSION_KEY: np.array(LAYOUT_VERSION)})
    return path


def shared_space(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same M frames at two levels (M x d each) placed in one space, for the cross-level view.

    Each level's embeddings sit in a region of their own (the projection heads differ), so laid out
    together the levels fall into two halves and every frame's line is long whatever the levels
    think of it. Each level is centred on its own mean and scaled to unit RMS norm, then `b` is
    rotated onto `a` by orthogonal Procrustes (the rotation that best lays all of b's frames on
    a's): rigid moves that keep each level's own geometry, so what is left of a frame's line is
    where its two levels disagree. Returns (a', b'), M x d each (float64)."""
    a, b = (np.asarray(x, np.float64) for x in (a, b))
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"shared_space needs two M x d arrays of one shape, got {a.shape} and {b.shape}")

    def unit_rms(x: np.ndarray) -> np.ndarray:
        centred = x - x.mean(axis=0)
        return centred / max(float(np.sqrt((centred ** 2).sum(axis=1).mean())), 1e-12)

    a, b = unit_rms(a), unit_rms(b)
    u, _, vt = np.linalg.svd(b.T @ a)
    return a, b @ (u @ vt)


EXACT_KNN_MAX = 20_000  # up to this many rows UMAP gets exact neighbours from a matrix product
UMAP_MIN_ROWS = 5
UMAP_NEIGHBOURS = 15  # neighbours per point in UMAP's graph
UMAP_SAME_GROUP = 2  # of which at most this many from the point's own video (when videos are given)
UMAP_MIN_DIST = 0.3  # UMAP's default 0.1 stacks near-identical frames of a clip on one spot
NN_DESCENT_MAX = 128  # most candidates per point asked of NN-descent (above EXACT_KNN_MAX rows)
UMAP_FIT_MAX = 20_000  # UMAP lays out at most this many rows; the others are placed among them
PLACE_NEIGHBOURS = 5  # sample rows whose positions place one other row


DENSE_EIGH_MAX = 64  # Gram matrices up to this size get a dense eigensolver


def principal_axes(x: np.ndarray) -> np.ndarray:
    """N x d -> N x 2 float64: the rows' coordinates on the first two principal axes (signs
    arbitrary; zeros where there is no second axis). Only the top two eigenvectors of the smaller
    Gram matrix are computed, not a full SVD: 32 timeline snapshots of 800 frames at the 512-wide
    backbone took 7 s by SVD on two shared cores."""
    centred = np.asarray(x, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    n, d = centred.shape
    gram = centred.T @ centred if d <= n else centred @ centred.T
    size = gram.shape[0]
    if size > DENSE_EIGH_MAX:  # Lanczos for the top two: 4x faster than a dense solver at 512
        from scipy.sparse.linalg import eigsh

        start = np.random.default_rng(0).normal(size=size)  # fixed: the same answer every time
        values, vectors = eigsh(gram, k=2, which="LA", v0=start)
    else:
        from scipy.linalg import eigh

        top = min(2, size)
        values, vectors = eigh(gram, subset_by_index=[size - top, size - 1])
    order = np.argsort(values)[::-1]
    vectors, values = vectors[:, order], values[order]
    out = centred @ vectors if d <= n else vectors * np.sqrt(np.maximum(values, 0.0))
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def project(x: np.ndarray, method: str = "pca", seed: int = 0, groups=None, neighbours: int = UMAP_NEIGHBOURS,
            same_group: int | None = UMAP_SAME_GROUP, min_dist: float = UMAP_MIN_DIST,
            fit_max: int = UMAP_FIT_MAX) -> np.ndarray:
    """N x d -> N x 2 with PCA (instant) or UMAP (cosine metric; slower, first call compiles).

    groups: N video ids. A clip's frames are each other's nearest neighbours, so with the plain
    k-nearest graph (k = 15, clips of 16 frames or more) the graph is made of clips, with no edge
    between them: UMAP draws each clip as one dot and spreads the clips evenly, whatever their
    class (on a short run's table of 3,200 frames of 200 clips, 22 % of the frames had a position
    of their own on a 1,000 x 1,000 grid). With groups, each point keeps at most `same_group`
    neighbours from its own video and takes the rest from other videos (95 % on that table), so
    the graph links clips to similar clips and a clip is a small cloud of distinct frames.

    UMAP gets exact cosine neighbours from `hico.neighbours.knn` up to EXACT_KNN_MAX rows:
    umap-learn's own exact search for small sets calls a Python function per pair (on 3,200 rows:
    16 s, against 3 s for all the rest of UMAP); above that it uses NN-descent, with groups for
    `neighbours` + the longest video's rows candidates (NN_DESCENT_MAX at most), cut down by
    `hico.neighbours.limit_group` (where a video is longer than that, its frames may keep more clip
    mates). UMAP's spectral start needs at least UMAP_MIN_ROWS rows; fewer are laid out by PCA.

    Above `fit_max` rows UMAP lays out a random sample of fit_max rows and every other row is placed
    among them (`place_rows`): on 100,000 frames that took about a third of the time of UMAP on all
    of them, for a slightly less faithful layout (class share of a frame's 10 nearest other clips in
    2-D 0.956 against 0.992; benchmarks/RESULTS.md, `python -m benchmarks.explore_scale`).
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"project needs an N x d matrix with N >= 2, got shape {x.shape}")
    if method == "pca" or (method == "umap" and x.shape[0] < UMAP_MIN_ROWS):
        return principal_axes(x).astype(np.float32)
    if method == "umap" and x.shape[0] > fit_max:
        sample = np.sort(np.random.default_rng(seed).choice(x.shape[0], fit_max, replace=False))
        sample_groups = None if groups is None else np.asarray(groups)[sample]
        laid = project(x[sample], "umap", seed, sample_groups, neighbours, same_group, min_dist, fit_max)
        return place_rows(x, sample, laid)
    if method == "umap":
        import umap  # imported here: it takes seconds and only projections need it

        k = max(2, min(neighbours, x.shape[0] - 1))
        indices, distances = _umap_neighbours(x, k, groups, same_group if groups is not None else None, seed)
        reducer = umap.UMAP(n_neighbors=k, metric="cosine", random_state=seed, n_jobs=1, min_dist=min_dist,
                            precomputed_knn=(indices, distances))
        with warnings.catch_warnings():  # that a precomputed kNN rules out transform(), which is not used
            warnings.filterwarnings("ignore", message=".*precomputed.*", category=UserWarning)
            return reducer.fit_transform(x).astype(np.float32)
    raise ValueError(f"method must be pca or umap, got {method!r}")


def place_rows(x: np.ndarray, sample: np.ndarray, laid: np.ndarray, k: int = PLACE_NEIGHBOURS,
               block: int = 4096) -> np.ndarray:
    """N x 2: the `sample` rows (indices into x, N x d) where `laid` (len(sample) x 2) put them, and
    every other row at the mean position of its k nearest sample rows by cosine similarity,
    weighted by similarity (so frames that share neighbours still spread a little)."""
    out = np.empty((x.shape[0], 2), np.float32)
    out[sample] = laid
    rest = np.setdiff1d(np.arange(x.shape[0]), sample)
    reference = unit_rows(np.asarray(x[sample], np.float32))
    k = min(k, len(sample))
    for start in range(0, len(rest), block):
        rows = rest[start:start + block]
        sims = unit_rows(np.asarray(x[rows], np.float32)) @ reference.T
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.maximum(np.take_along_axis(sims, near, axis=1), 0.0) + 1e-6
        out[rows] = (laid[near] * weights[..., None]).sum(axis=1) / weights.sum(axis=1, keepdims=True)
    return out


def _umap_neighbours(x: np.ndarray, k: int, groups, same_group: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """UMAP's k-nearest graph (N x k indices and cosine distances, ascending, self first), with at
    most `same_group` neighbours from a row's own group when groups are given (see `project`);
    a row with too few rows outside its group fills up with its own group's nearest."""
    n = x.shape[0]
    longest = 0 if same_group is None else int(pd.Series(np.asarray(groups, dtype=str)).value_counts().max())
    if n <= EXACT_KNN_MAX:
        indices, distances = knn(x, k, "cosine", groups, same_group)
        short = np.flatnonzero(~np.isfinite(distances).all(axis=1))
        if len(short):
            wide = knn(x, min(n, k + longest), "cosine", queries=short)
            indices[short], distances[short] = limit_group(*wide, groups, k, same_group, queries=short)
    else:
        import umap

        wide = min(n - 1, k + longest, max(NN_DESCENT_MAX, k))
        indices, distances, _ = umap.umap_.nearest_neighbors(x, wide, "cosine", {}, False,
                                                             np.random.RandomState(seed), n_jobs=1)
        if same_group is None:
            return indices[:, :k], distances[:, :k]
        indices, distances = limit_group(indices, distances, groups, k, same_group)
    order = np.argsort(distances, axis=1, kind="stable")  # fillers in their place; self stays first
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(distances, order, axis=1)
