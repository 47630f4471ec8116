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
from pathlib import Path

import numpy as np
import pandas as pd

from hico.checkpoint import find_checkpoint, read_sidecar
from hico.data import assign_splits, build_cache, find_clips
from hico.errors import HiCoError
from hico.files import atomic_path
from hico.inference import embed_frames, load_run, resolve_device
from hico.io import ClipLimits
from hico.paths import expand_path

log = logging.getLogger(__name__)
VECTOR_COLUMNS = ("backbone", "local", "medium", "global", "z_local", "z_medium", "z_global")
LEVEL_COLUMNS = ("local", "medium", "global", "backbone")


def default_output(run_dir: Path, data_dir: Path, checkpoint: str, step: int, max_frames: int) -> Path:
    """RUN_DIR/embeddings/<data>-<checkpoint>-<digest of data and frame limit>-step<k>.parquet"""
    key = f"{Path(data_dir).expanduser().resolve()}|{checkpoint}|{max_frames}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(run_dir) / "embeddings" / f"{Path(data_dir).stem or 'data'}-{checkpoint}-{digest}-step{step}.parquet"


def _drop_stale(target: Path) -> None:
    """Remove the tables (and their projections and results) of earlier steps of the same checkpoint."""
    prefix = target.name.rsplit("-step", 1)[0] + "-step"
    for old in target.parent.glob(prefix + "*"):
        if not old.name.startswith(target.stem + "."):
            old.unlink(missing_ok=True)


def embed_dataset(run_dir: str | Path, data_dir: str | Path, out: str | Path | None = None,
                  checkpoint: str = "auto", device: str = "auto", batch_size: int = 64,
                  max_frames: int | None = None, reuse: bool = True, progress: bool = True) -> tuple[pd.DataFrame, Path]:
    """Embed every frame of every clip under data_dir with a run's checkpoint.

    Writes the table as Parquet (to `out`, or a file in RUN_DIR/embeddings named for the data,
    checkpoint and step) and returns (table, path). With `reuse`, an existing table for the same
    data, checkpoint and step is read instead of recomputed.
    """
    run_dir, data_dir = expand_path(run_dir), expand_path(data_dir)
    name = find_checkpoint(run_dir, checkpoint)
    sidecar = read_sidecar(run_dir / "checkpoints", name)
    frames_cap = sidecar["config"]["data"]["max_frames"] if max_frames is None else max_frames
    target = Path(out) if out else default_output(run_dir, data_dir, name, sidecar["step"], frames_cap)
    if reuse and out is None and target.is_file():
        return load_embeddings(target), target
    dev = resolve_device(device)
    loaded = load_run(run_dir, name, dev)
    cfg, sidecar = loaded.cfg, loaded.sidecar
    dataset = find_clips(data_dir, cfg.data.frame_folders)
    same_data = bool(cfg.data.root) and expand_path(cfg.data.root).resolve() == data_dir.resolve()
    splits = assign_splits(dataset, cfg.data.val_fraction, cfg.train.seed) if same_data else None
    cache_dir = expand_path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    cache = build_cache([c.path for c in dataset.clips], cfg.data.size, frames_cap, cache_dir, progress,
                        limits=ClipLimits.from_config(cfg.data))
    vectors = embed_frames(loaded.model, cache.frames, dev, batch_size, progress)
    rows = {"video_id": [], "frame": [], "label": [], "path": [], "split": []}
    for i, clip in enumerate(dataset.clips):
        n = int(cache.lengths[i])
        rows["video_id"] += [clip.video_id] * n
        rows["frame"] += list(range(n))
        rows["label"] += [clip.label] * n
        rows["path"] += [str(clip.path)] * n
        rows["split"] += [(clip.split or (splits[i] if splits else "external"))] * n
    table = pd.DataFrame(rows)
    for col in VECTOR_COLUMNS:
        table[col] = list(vectors[col])
    table.attrs.update({"checkpoint": name, "step": sidecar["step"]})
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


def load_projections(table_path: str | Path) -> dict[str, np.ndarray]:
    """The cached UMAP coordinates of a table ({view: N x 2}), empty when none or unreadable."""
    path = projections_path(table_path)
    if not path.is_file():
        return {}
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError):  # a torn write: the projections are computed again
        return {}


def save_projections(table_path: str | Path, projections: dict[str, np.ndarray]) -> Path:
    """Write {view: N x 2} beside the table, atomically (a reader sees the old file or the new)."""
    path = projections_path(table_path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **projections)
    return path


EXACT_KNN_MAX = 20_000  # up to this many rows UMAP gets exact neighbours from a matrix product
UMAP_MIN_ROWS = 5


def cosine_knn(x: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine distance, each row's own index first.

    x: N x d. Returns (indices: N x k int64, distances: N x k float32, ascending), computed as
    blocks of 1 - u u^T on the unit rows u, so memory stays at block x N floats.
    """
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be between 1 and the number of rows ({x.shape[0]}), got {k}")
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = unit.shape[0]
    indices, distances = np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        dist = 1.0 - unit[rows] @ unit.T
        dist[np.arange(len(rows)), rows] = -1.0  # a row is its own nearest neighbour, whatever ties
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        part_dist = np.take_along_axis(dist, part, axis=1)
        order = np.argsort(part_dist, axis=1, kind="stable")
        indices[rows] = np.take_along_axis(part, order, axis=1)
        distances[rows] = np.maximum(np.take_along_axis(part_dist, order, axis=1), 0.0)
    return indices, distances


def project(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """N x d -> N x 2 with PCA (instant) or UMAP (cosine metric; slower, first call compiles).

    UMAP gets exact cosine neighbours from `cosine_knn` up to EXACT_KNN_MAX rows: umap-learn's
    own exact search for small sets calls a Python function per pair (on 3,200 rows: 16 s,
    against 3 s for all the rest of UMAP); above that it uses its approximate NN-descent. UMAP's spectral start needs
    at least UMAP_MIN_ROWS rows; fewer are laid out by PCA.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"project needs an N x d matrix with N >= 2, got shape {x.shape}")
    if method == "pca" or (method == "umap" and x.shape[0] < UMAP_MIN_ROWS):
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        out = centred @ vt[:2].T
        return np.pad(out, ((0, 0), (0, 2 - out.shape[1]))).astype(np.float32)
    if method == "umap":
        import umap  # imported here: it takes seconds and only projections need it

        neighbours = max(2, min(15, x.shape[0] - 1))
        knn = None
        if x.shape[0] <= EXACT_KNN_MAX:
            indices, distances = cosine_knn(x, neighbours)
            knn = (indices, distances, None)
        reducer = umap.UMAP(n_neighbors=neighbours, metric="cosine", random_state=seed, n_jobs=1,
                            precomputed_knn=knn or (None, None, None))
        with warnings.catch_warnings():  # that a precomputed kNN rules out transform(), which is not used
            warnings.filterwarnings("ignore", message=".*precomputed.*", category=UserWarning)
            return reducer.fit_transform(x).astype(np.float32)
    raise ValueError(f"method must be pca or umap, got {method!r}")
