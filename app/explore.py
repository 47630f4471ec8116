"""What the Explore tab does: embeddings per (checkpoint, dataset), their 2-D projections (PCA at
once, UMAP in the background, both cached on disk), how well each layout keeps the embedding's
neighbours, the cross-level summary, thumbnails, nearest neighbours, accuracy.

Everything heavy is `hico.embed` / `hico.evaluate`; this module keeps results and threads.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from hico.config import DataConfig
from hico.data import load_clip_frames
from hico.embed import (LEVEL_COLUMNS, VECTOR_COLUMNS, embed_dataset, level_matrix, load_projections, project,
                        save_projections, shared_space)
from hico.neighbours import cross_level_agreement, projection_scores, unit_rows
from hico.evaluate import evaluate_table
from hico.errors import HiCoError
from hico.io import ClipLimits
from hico.paths import expand_path
from hico.runs import Checkpoint, Run

log = logging.getLogger(__name__)
PAIRS = {"global ↔ local": ("z_global", "z_local"), "global ↔ medium": ("z_global", "z_medium")}
MAX_LINKED = 2000  # frames drawn in the cross-level view (sampled when there are more)
THUMB = 72
KEEP_ITEMS = 6  # (checkpoint, dataset) tables kept in memory
KEEP_CLIPS = 256  # decoded clips kept for thumbnails and galleries
NEIGHBOURS = 6  # nearest frames shown per level for a clicked frame
PER_CLIP = 2  # of which at most this many from any one other clip


SHOW_WAIT_S = 4.0  # Show embeddings waits this long for the first chunk of a table being embedded


@dataclass
class Embedded:
    """One (checkpoint, dataset) pair: the table, its matrices, projections and evaluation.

    A table is embedded in the background in chunks (`Explorer.start`): `table` holds every row's
    video, frame, label and split once the clips are decoded, `done` says which rows are embedded
    yet (None: all), and `progress` says what is happening in words. `first` is set once the
    first chunk is in, `embedded` once the whole table is (or `error` says why it is not).

    `source` names it to the page (the scatter value carries it, and hover thumbnails ask for
    it), so each browser session reads the frames of the table it shows."""

    table: pd.DataFrame | None
    path: Path | None
    data: DataConfig  # the run's `data` config (config.run_config): size, max_frames, cache_dir, limits, mask_screen
    source: str = ""
    run_dir: str = ""  # the run and dataset (resolved) and the checkpoint and step the table holds
    data_dir: str = ""
    checkpoint: str = ""
    step: int = 0
    done: np.ndarray | None = None  # N bools: the rows embedded so far; None once all are
    progress: str = ""
    error: str | None = None
    matrices: dict[str, np.ndarray] = field(default_factory=dict)
    projections: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    scores: dict[tuple[str, str], dict] = field(default_factory=dict)  # (method, level) -> projection_scores
    agreement: dict[str, np.ndarray] = field(default_factory=dict)  # pair -> per linked row, cross_level_agreement
    accuracy: pd.DataFrame | None = None
    accuracy_error: str | None = None
    first: threading.Event = field(default_factory=threading.Event)  # set once the first chunk is in
    embedded: threading.Event = field(default_factory=threading.Event)  # set once all is in, or it failed
    evaluated: threading.Event = field(default_factory=threading.Event)  # set once accuracy or its error is in
    projected: threading.Event = field(default_factory=threading.Event)  # set once the UMAP stage is over
    partial: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)  # view -> (rows done, its PCA)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.table is not None and self.done is None:  # made from a whole table
            self.first.set()
            self.embedded.set()

    @property
    def complete(self) -> bool:
        return self.embedded.is_set() and self.error is None and self.table is not None

    @property
    def count(self) -> int:
        """Rows embedded so far."""
        if self.table is None:
            return 0
        return len(self.table) if self.done is None else int(self.done.sum())

    def matrix(self, column: str) -> np.ndarray:
        if column not in self.matrices:
            self.matrices[column] = level_matrix(self.table, column)
        return self.matrices[column]

    def groups(self, view: str) -> np.ndarray:
        """The video id of each row of a view's matrix: the table's for a level, and the linked
        rows' twice over for a cross-level pair (see `Explorer.stacked`)."""
        videos = self.table["video_id"].astype(str).to_numpy()
        if view in PAIRS:
            rows = linked_rows(len(self.table))
            return np.concatenate([videos[rows], videos[rows]])
        return videos


def _keys(run_dir: str | Path, data_dir: str | Path) -> tuple[str, str]:
    """A run's and a dataset's resolved paths, as the cache keys its tables."""
    return str(Path(run_dir).resolve()), str(Path(data_dir).expanduser().resolve())


def latest_step(run_dir: str | Path) -> tuple[str, int]:
    """The checkpoint a new view of the run would embed, and its step (its sidecar; cheap)."""
    chosen = Run(run_dir).checkpoint()
    return chosen.name, chosen.step


def linked_rows(n: int, seed: int = 0) -> np.ndarray:
    """Row indices drawn in the cross-level view: all, or MAX_LINKED sampled."""
    if n <= MAX_LINKED:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_LINKED, replace=False))


def cross_summary(labels, a_xy: np.ndarray, b_xy: np.ndarray, agreement: np.ndarray | None) -> pd.DataFrame:
    """Per class, what the cross-level panel shows: how far a frame's two points lie apart, and how
    many of its neighbours its two levels share.

    labels: M class names (None or NaN: counted as "(none)"); a_xy, b_xy: M x 2, the same frames'
    points at level A and level B in the panel; agreement: M shares (`cross_level_agreement`,
    NaN where undefined), or None while it is computed.
    Returns one row per class (sorted by name), then "all", with columns class, frames,
    line_length (mean distance between a frame's two points, in the panel's units) and
    shared_neighbours (mean agreement; NaN while computed).
    """
    names = pd.Series(["(none)" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in labels])
    length = np.linalg.norm(np.asarray(a_xy, np.float64) - np.asarray(b_xy, np.float64), axis=1)
    shared = np.full(len(names), np.nan) if agreement is None else np.asarray(agreement, np.float64)
    frame = pd.DataFrame({"class": names, "line_length": length, "shared_neighbours": shared})
    groups = [(name, part) for name, part in frame.groupby("class", sort=True)] + [("all", frame)]
    return pd.DataFrame([{"class": name, "frames": len(part), "line_length": _mean(part["line_length"]),
                          "shared_neighbours": _mean(part["shared_neighbours"])} for name, part in groups])


def _mean(values: pd.Series) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def steady(coords: np.ndarray, before: np.ndarray | None) -> np.ndarray:
    """coords (K x 2, NaN for rows not drawn) turned and mirrored (a 2 x 2 orthogonal map) to lie
    as close as it can to `before`, the same rows' previous layout, on the rows both have: a
    view that fills in as its table is embedded, or swaps a partial PCA for the whole one, keeps
    its orientation instead of flipping at each redraw."""
    if before is None:
        return coords
    both = np.isfinite(coords).all(axis=1) & np.isfinite(before).all(axis=1)
    if both.sum() < 3:
        return coords
    a = coords[both] - coords[both].mean(axis=0)
    b = before[both] - before[both].mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    return (coords @ (u @ vt)).astype(np.float32)


class Explorer:
    """Caches embeddings and projections; embeds tables, computes UMAP and accuracy in background
    threads.

    Shared by every browser session: it holds only caches keyed by what they were computed from,
    and nothing that says what one session is looking at."""

    def __init__(self, keep: int = KEEP_ITEMS):
        self.items: dict[tuple[str, str], Embedded] = {}
        self.keep = keep
        self._lock = threading.Lock()
        self._frames: dict[tuple[str, int, int], np.ndarray] = {}

    def start(self, run_dir: str | Path, data_dir: str | Path) -> Embedded:
        """The table of the run's newest checkpoint and this dataset: the cached one, or one that
        starts embedding now in the background (and is returned at once; see Embedded). Two
        sessions asking for the same table share one."""
        chosen = Run(run_dir).checkpoint()  # its sidecar read once, for the key, the config and the embedding
        name, step = chosen.name, chosen.step
        run_key, data_key = _keys(run_dir, data_dir)
        key = (f"{run_key}:{name}:{step}", data_key)
        with self._lock:
            item = self.items.get(key)
            if item is not None and item.error is None and (item.path is None or item.path.is_file()):
                return item
            item = Embedded(None, None, chosen.config.data, hashlib.sha1(repr(key).encode()).hexdigest()[:16],
                            run_key, data_key, name, step, progress="starting")
            self.items[key] = item
            while len(self.items) > self.keep:  # the oldest table goes first (one being embedded finishes)
                del self.items[next(iter(self.items))]
        threading.Thread(target=self._embed, args=(item, chosen), daemon=True, name="hico-embed").start()
        return item

    def load(self, run_dir: str | Path, data_dir: str | Path) -> Embedded:
        """`start`, then wait for the whole table; HiCoError if it cannot be embedded."""
        return self.whole(self.start(run_dir, data_dir))

    @staticmethod
    def whole(item: Embedded) -> Embedded:
        """The item once its whole table is embedded; HiCoError if that failed."""
        item.embedded.wait()
        if item.error:
            raise HiCoError(item.error)
        return item

    def _embed(self, item: Embedded, chosen: Checkpoint) -> None:
        """Embed the item's table chunk by chunk (each chunk's rows at once usable), then its PCA
        layouts; then UMAP, scores and accuracy (`_background`)."""

        def on_clip(done: int, total: int) -> None:
            item.progress = f"reading clips: {done:,} of {total:,}"

        def on_chunk(meta: pd.DataFrame, vectors: dict[str, np.ndarray], done: np.ndarray) -> None:
            if item.table is None:
                item.table, item.matrices = meta, vectors
            item.done = done
            item.progress = f"embedding: {int(done.sum()):,} of {len(done):,} frames"
            item.first.set()

        try:
            table, path = embed_dataset(chosen.run, item.data_dir, checkpoint=chosen, progress=False,
                                        on_clip=on_clip, on_chunk=on_chunk)
            if len(table) < 2:
                raise HiCoError(f"Dataset {Path(item.data_dir).name} gives {len(table)} frame(s); a layout needs "
                                f"at least 2.")
            whole = Embedded(table, path, item.data)
            for column in VECTOR_COLUMNS:  # the chunks' matrices, or the cached table's
                whole.matrices[column] = item.matrices[column] if column in item.matrices else whole.matrix(column)
            for key, coords in load_projections(path).items():
                item.projections[("umap", key)] = coords
            for view in (*LEVEL_COLUMNS, *PAIRS):
                item.projections[("pca", view)] = steady(self.pca(whole, view, None), self._last_partial(item, view))
            with item.lock:
                item.table, item.path, item.matrices, item.done, item.progress = table, path, whole.matrices, None, ""
        except HiCoError as exc:
            item.error = str(exc)
        except Exception as exc:  # a bug: logged in full, and the page says so in a sentence
            log.exception("embedding %s with %s failed", item.data_dir, item.run_dir)
            item.error = f"Embedding failed ({type(exc).__name__}); the app's log has the details."
        finally:
            item.first.set()
            item.embedded.set()
        if item.error is None:
            self._background(item)

    @staticmethod
    def _last_partial(item: Embedded, view: str) -> np.ndarray | None:
        last = item.partial.get(view)
        return None if last is None else last[1]

    def pca(self, item: Embedded, view: str, done: np.ndarray | None) -> np.ndarray:
        """PCA of a view over the rows embedded (done; None: all): N x 2 for a level (2M x 2 for a
        cross-level pair's linked rows at both levels), NaN for rows not embedded yet."""
        n = len(item.table)
        done = np.ones(n, bool) if done is None else done
        if view in PAIRS:
            rows = linked_rows(n)
            ok = done[rows]
            shown = np.concatenate([ok, ok])
            matrix = self.stacked(item, PAIRS[view], rows[ok]) if ok.sum() >= 2 else None
        else:
            shown = done
            matrix = item.matrix(view)[done] if done.sum() >= 2 else None
        out = np.full((len(shown), 2), np.nan, np.float32)
        if matrix is not None:
            out[shown] = project(matrix, "pca")
        return out

    def partial_pca(self, item: Embedded, view: str) -> np.ndarray:
        """The PCA of a view over the rows embedded so far, computed once per chunk for every page
        and kept steady (`steady`) from one chunk to the next."""
        with item.lock:
            done = item.done
            if done is None:  # finished meanwhile
                return item.projections[("pca", view)]
            count = int(done.sum())
            last = item.partial.get(view)
            if last is not None and last[0] == count:
                return last[1]
            coords = steady(self.pca(item, view, done), None if last is None else last[1])
            item.partial[view] = (count, coords)
            return coords

    def pinned(self, source: str | None, run_dir: str | Path, data_dir: str | Path) -> Embedded | None:
        """The table a page shows (its `source`), if it is still cached and is of this run and dataset:
        a page keeps exploring the checkpoint it showed while the run trains on, and never waits for a
        re-embed it did not ask for."""
        item = self.by_source(source) if source else None
        return item if item is not None and (item.run_dir, item.data_dir) == _keys(run_dir, data_dir) else None

    def cached(self, run_dir: str | Path, data_dir: str | Path) -> Embedded | None:
        """The newest cached table of this run and dataset (any step; perhaps still being embedded), or None."""
        keys = _keys(run_dir, data_dir)
        with self._lock:
            mine = [item for item in self.items.values()
                    if (item.run_dir, item.data_dir) == keys and item.error is None]
        return max(mine, key=lambda item: item.step, default=None)

    def by_source(self, source: str) -> Embedded | None:
        """The cached table a page's scatter value names, or None (gone from the cache, or unknown)."""
        with self._lock:
            return next((item for item in self.items.values() if item.source == source), None)

    @staticmethod
    def stacked(item: Embedded, columns: tuple[str, str], rows: np.ndarray | None = None) -> np.ndarray:
        """2M x d: the linked rows' embeddings (or these `rows`' of them) at one level, then at the
        other (M = len(rows)), in one shared space (hico.embed.shared_space), so a frame's line is
        short where its levels agree."""
        rows = linked_rows(len(item.table)) if rows is None else rows
        return np.concatenate(shared_space(item.matrix(columns[0])[rows], item.matrix(columns[1])[rows]))

    def view_matrix(self, item: Embedded, view: str) -> np.ndarray:
        """The matrix a view lays out: a level column's, or a cross-level pair's stacked rows."""
        return self.stacked(item, PAIRS[view]) if view in PAIRS else item.matrix(view)

    def umap(self, item: Embedded, view: str) -> np.ndarray:
        """The view's UMAP (N x 2), its neighbour graph drawn across clips (hico.embed.project)."""
        return project(self.view_matrix(item, view), "umap", groups=item.groups(view))

    def _background(self, item: Embedded) -> None:
        """The PCA layouts' scores, the accuracy table (a user waits for it; seconds), the cross-level
        agreement, then the UMAP of every view not cached yet (each saved as soon as it is done, and
        its layout scored)."""
        try:
            for column in LEVEL_COLUMNS:
                self._score(item, "pca", column)
        except Exception:  # scores are a help, not the view: logged, and the rest goes on
            log.exception("layout scores failed for %s", item.path)
        self._evaluate(item)
        try:
            for pair, (a, b) in PAIRS.items():
                rows = linked_rows(len(item.table))
                item.agreement[pair] = cross_level_agreement(item.matrix(a)[rows], item.matrix(b)[rows],
                                                             item.groups(pair)[:len(rows)])
            for view in (*LEVEL_COLUMNS, *PAIRS):
                if ("umap", view) not in item.projections:
                    item.projections[("umap", view)] = self.umap(item, view)
                    save_projections(item.path, {k[1]: v for k, v in item.projections.items() if k[0] == "umap"})
                if view in LEVEL_COLUMNS:
                    self._score(item, "umap", view)
        except Exception:  # a projection failing must not take the app down; PCA stays
            log.exception("UMAP failed for %s", item.path)
        finally:
            item.projected.set()

    @staticmethod
    def _score(item: Embedded, method: str, column: str) -> None:
        item.scores[(method, column)] = projection_scores(item.matrix(column), item.projections[(method, column)],
                                                          item.table["label"].to_numpy(), item.groups(column))

    def _evaluate(self, item: Embedded) -> None:
        """The accuracy table, as `hico eval` keeps it beside the embeddings: reused once done, and
        resumed fit by fit when an earlier evaluation was cut short (the app closed mid-way)."""
        try:
            item.accuracy, _ = evaluate_table(item.table, item.path)
        except HiCoError as exc:
            item.accuracy_error = str(exc)
        finally:
            item.evaluated.set()

    @staticmethod
    def umap_ready(item: Embedded, views) -> list[str]:
        """Which of these views (level columns or cross-level pairs) have their UMAP already."""
        return [v for v in views if ("umap", v) in item.projections]

    def projection(self, item: Embedded, view: str) -> tuple[np.ndarray, str]:
        """The best projection ready for a level column or a cross-level pair: (N x 2, method);
        while the table is embedded, the PCA of its rows embedded so far (NaN for the others)."""
        if not item.complete:
            return self.partial_pca(item, view), f"PCA of the {item.count:,} frames embedded so far"
        if ("umap", view) in item.projections:
            return item.projections[("umap", view)], "UMAP"
        return item.projections[("pca", view)], "PCA (UMAP still running)"

    def thumbnail(self, item: Embedded, row: int) -> str:
        """A PNG data URI of one frame, from the decoded-frame cache."""
        frame = self.frame(item, row)
        image = Image.fromarray(frame).resize((THUMB, THUMB), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def frame(self, item: Embedded, row: int) -> np.ndarray:
        """H x W (gray) or H x W x 3 uint8 of one table row, at the model's input size."""
        record = item.table.iloc[int(row)]
        data = item.data
        key = (str(record["path"]), int(data.size), int(data.max_frames))
        with self._lock:
            frames = self._frames.get(key)
        if frames is None:  # the same frames the embedding saw: same size, frame limit and cache
            cache_dir = expand_path(data.cache_dir) if data.cache_dir else None
            frames = load_clip_frames(Path(key[0]), key[1], key[2], cache_dir, ClipLimits.from_config(data),
                                      mask_screen=data.mask_screen)
            with self._lock:
                if len(self._frames) >= KEEP_CLIPS:
                    self._frames.pop(next(iter(self._frames)))
                self._frames[key] = frames
        frame = frames[int(record["frame"])]
        return frame[0] if frame.shape[0] == 1 else frame.transpose(1, 2, 0)

    def neighbours(self, item: Embedded, row: int, column: str, k: int = NEIGHBOURS,
                   same_clip: bool = False, per_clip: int = PER_CLIP) -> tuple[np.ndarray, np.ndarray]:
        """The k rows nearest to `row` by cosine similarity in one level's embedding, nearest first,
        and their cosine distances: from other clips only unless `same_clip` (a clip's own frames
        are always its nearest, which teaches nothing), at most `per_clip` frames of any one clip
        (so the row shows which clips a level groups with it); never the row itself."""
        unit = unit_rows(item.matrix(column))
        sims = unit @ unit[int(row)]
        sims[int(row)] = -np.inf
        if item.done is not None:  # a table still being embedded: only the rows in so far
            sims[~item.done] = -np.inf
        videos = item.table["video_id"].to_numpy()
        if not same_clip:
            sims[videos == videos[int(row)]] = -np.inf
        # the picked frame's own clip, when asked for, is not capped
        top = capped_nearest(sims, videos, k, per_clip, uncapped=videos[int(row)])
        return top, 1.0 - sims[top]


def capped_nearest(sims: np.ndarray, videos: np.ndarray, k: int, per_clip: int, uncapped=None) -> np.ndarray:
    """The rows of the k highest finite `sims` (N), highest first, with at most `per_clip` rows of
    any one video (N ids) but `uncapped`."""
    chosen, taken = [], {}
    for i in np.argsort(-sims, kind="stable"):
        if not np.isfinite(sims[i]) or len(chosen) == k:
            break
        video = videos[i]
        if video != uncapped and taken.get(video, 0) >= per_clip:
            continue
        taken[video] = taken.get(video, 0) + 1
        chosen.append(i)
    return np.array(chosen, np.int64)


@dataclass
class Similar:
    """A clip's nearest frames in a dataset's table, per level (Explorer.similar).

    rows / distances: {level: k table rows, nearest first, and their cosine distances};
    nearest: {level: T x PLACE_K}, each of the clip's T frames' nearest table rows; placed:
    {level: T x 2}, where each frame falls on that level's panel now (`place`); method: the
    panels' projection."""

    rows: dict[str, np.ndarray]
    distances: dict[str, np.ndarray]
    nearest: dict[str, np.ndarray]
    placed: dict[str, np.ndarray]
    method: dict[str, str]


def place(coords: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """T x 2 positions of T frames that are not in a table: each at the mean of the positions
    (coords: N x 2, a panel's projection) of its nearest table rows (nearest: T x K)."""
    return np.asarray(coords, np.float64)[np.asarray(nearest, np.int64)].mean(axis=1)


PLACE_K = 5  # table frames whose mean position places one of an uploaded clip's frames


def similar(explorer: Explorer, item: Embedded, vectors: dict[str, np.ndarray], k: int = NEIGHBOURS,
            per_clip: int = PER_CLIP) -> Similar:
    """An uploaded clip's nearest frames in `item`'s table at each level: vectors {level: T x d}
    (the clip's frames, embedded by the table's run and checkpoint). A table frame's similarity to
    the clip is its best cosine similarity to any of the clip's frames; at most `per_clip` frames
    of any one table clip are kept."""
    rows, distances, nearest, placed, method = {}, {}, {}, {}, {}
    videos = item.table["video_id"].to_numpy()
    for column in LEVEL_COLUMNS:
        sims = unit_rows(np.asarray(vectors[column], np.float32)) @ unit_rows(item.matrix(column)).T  # T x N
        best = sims.max(axis=0)
        rows[column] = capped_nearest(best, videos, k, per_clip)
        distances[column] = 1.0 - best[rows[column]]
        xy, method[column] = explorer.projection(item, column)
        nearest[column] = np.argpartition(-sims, min(PLACE_K, sims.shape[1]) - 1, axis=1)[:, :PLACE_K]
        placed[column] = place(xy, nearest[column])
    return Similar(rows, distances, nearest, placed, method)
