"""Exact nearest neighbours, and numbers that say how well a 2-D layout keeps them.

A clip's frames are each other's nearest neighbours, so a neighbour graph of frames is made of
clips. Every function here can take `groups` (one video id per row) and then limits or excludes
neighbours from a row's own video: the layout is built from, and judged by, how clips relate.
"""

from __future__ import annotations

import numpy as np

SCORE_K = 10  # neighbours compared by the scores
SCORE_SAMPLE = 2000  # rows whose neighbours are compared (all rows are candidate neighbours)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """N x d rows scaled to unit length (a zero row stays zero): cosine similarity is then a dot product."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _codes(groups, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    values = np.asarray(groups, dtype=object)
    if values.shape != (n,):
        raise ValueError(f"groups must have one value per row ({n}), got shape {values.shape}")
    _, codes = np.unique(values.astype(str), return_inverse=True)
    return codes.ravel()


def knn(x: np.ndarray, k: int, metric: str = "cosine", groups=None, same_group: int | None = None,
        queries: np.ndarray | None = None, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query row among all rows, the query row itself first.

    x: N x d. metric: "cosine" (1 - cos, as UMAP's cosine metric) or "euclidean".
    groups: N labels (e.g. video ids) with same_group: at most that many neighbours besides the
    row itself from the row's own group (0: none); None: no limit.
    queries: the rows to answer for (default all N, in order).
    Returns (indices: Q x k int64, distances: Q x k float32, ascending), computed in blocks of
    block x N distances. A row with fewer than k allowed candidates gets distance inf in its last
    columns (and an index of some excluded row).
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows ({n}), got {k}")
    if metric == "cosine":
        data = unit_rows(x)
    elif metric == "euclidean":
        data = np.asarray(x, dtype=np.float64)
        squares = (data * data).sum(axis=1)
    else:
        raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")
    codes = _codes(groups, n) if same_group is not None else None
    queries = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    indices, distances = np.empty((len(queries), k), np.int64), np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), block):
        rows = queries[start:start + block]
        local = np.arange(len(rows))
        if metric == "cosine":
            dist = 1.0 - data[rows] @ data.T
        else:
            dist = np.sqrt(np.maximum(squares[rows, None] + squares[None, :] - 2.0 * data[rows] @ data.T, 0.0))
        dist[local, rows] = -1.0  # a row is its own nearest neighbour, whatever ties
        if codes is not None:
            same = codes[rows, None] == codes[None, :]
            same[local, rows] = False
            keep = None
            if same_group > 0:  # the same_group nearest of the row's own group stay candidates
                own = np.where(same, dist, np.inf)
                m = min(same_group, n - 1)
                keep = np.argpartition(own, m - 1, axis=1)[:, :m]
                kept = np.take_along_axis(own, keep, axis=1)
            dist[same] = np.inf
            if keep is not None:  # (a group smaller than same_group + 1 brings inf entries: skip them)
                kept = np.where(np.isfinite(kept), kept, np.take_along_axis(dist, keep, axis=1))
                np.put_along_axis(dist, keep, kept, axis=1)
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        part_dist = np.take_along_axis(dist, part, axis=1)
        order = np.argsort(part_dist, axis=1, kind="stable")
        indices[start:start + len(rows)] = np.take_along_axis(part, order, axis=1)
        distances[start:start + len(rows)] = np.maximum(np.take_along_axis(part_dist, order, axis=1), 0.0)
    return indices, distances


def cosine_knn(x: np.ndarray, k: int, block: int = 2048, groups=None,
               same_group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine distance, each row's own index first (see `knn`).

    x: N x d. Returns (indices: N x k int64, distances: N x k float32, ascending).
    """
    return knn(x, k, "cosine", groups, same_group, block=block)


def limit_group(indices: np.ndarray, distances: np.ndarray, groups, k: int, same_group: int,
                queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """From Q x w candidate neighbours (self first, ascending), the k best with at most
    `same_group` besides the row itself from the row's own group; where too few candidates are
    from other groups, the nearest of its own group fill the last places.

    groups: N labels of all rows; queries: the Q rows the candidates are for (default all N).
    Returns (indices: Q x k, distances: Q x k), each row still ascending apart from those fillers."""
    queries = np.arange(indices.shape[0]) if queries is None else np.asarray(queries, dtype=np.int64)
    codes = _codes(groups, len(groups))
    n, w = indices.shape
    same = codes[indices] == codes[queries, None]
    same[:, 0] = False  # the row itself
    rank = np.cumsum(same, axis=1)  # how many own-group candidates up to and including this one
    late = same & (rank > same_group)
    order = np.lexsort((np.broadcast_to(np.arange(w), (n, w)), late), axis=-1)[:, :k]
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(distances, order, axis=1)


def sample_rows(n: int, size: int = SCORE_SAMPLE) -> np.ndarray:
    """At most `size` row positions spread evenly over 0..n-1 (all when n <= size); deterministic."""
    if n <= size:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, size).round().astype(np.int64))


def other_neighbours(x: np.ndarray, k: int, metric: str, groups, queries: np.ndarray) -> np.ndarray:
    """Q x k' indices of each query's nearest rows outside its group (k' = k, fewer for tiny sets)."""
    codes = _codes(groups, x.shape[0])
    allowed = x.shape[0] - 1
    if codes is not None:
        allowed = x.shape[0] - int(np.bincount(codes).max())
    k = min(k, allowed)
    if k < 1:
        return np.empty((len(queries), 0), np.int64)
    indices, _ = knn(x, k + 1, metric, groups, 0 if codes is not None else None, queries)
    return indices[:, 1:]


def distinct_fraction(xy: np.ndarray, resolution: int = 1000) -> float:
    """The share of points at a position of their own on a grid of `resolution` cells across the
    layout's larger side (as on a plot 1,000 pixels wide): 1.0 when no two points share a cell.

    xy: N x 2 (non-finite rows are left out)."""
    xy = np.asarray(xy, dtype=np.float64)
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) == 0:
        return 0.0
    lo = xy.min(axis=0)
    extent = float((xy.max(axis=0) - lo).max()) or 1.0
    cells = np.floor((xy - lo) / extent * resolution).astype(np.int64)
    return len(np.unique(cells, axis=0)) / len(xy)


def projection_scores(x: np.ndarray, xy: np.ndarray, labels=None, groups=None, k: int = SCORE_K,
                      sample: int = SCORE_SAMPLE) -> dict:
    """How well a 2-D layout keeps the embedding's neighbours, judged on neighbours from other clips.

    x: N x d embedding (cosine distance); xy: N x 2 layout (euclidean); labels: N class names
    (None or NaN for unlabelled rows); groups: N video ids. For each of `sample` rows spread
    evenly over the table, its k nearest rows outside its own video are found in both spaces.
    Returns floats in [0, 1] (None where undefined):
        overlap          mean share of the 2-D neighbours that are also embedding neighbours
        class_2d         mean share of the 2-D neighbours with the row's class
        class_embedding  the same share for the embedding's neighbours (what class_2d can reach)
        distinct         `distinct_fraction(xy)`
    """
    x = np.asarray(x)
    xy = np.asarray(xy, dtype=np.float64)
    if x.shape[0] != xy.shape[0] or xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"projection_scores needs N x d and N x 2, got {x.shape} and {xy.shape}")
    queries = sample_rows(x.shape[0], sample)
    high = other_neighbours(x, k, "cosine", groups, queries)
    low = other_neighbours(np.nan_to_num(xy, nan=1e9), k, "euclidean", groups, queries)
    out = {"overlap": None, "class_2d": None, "class_embedding": None, "distinct": distinct_fraction(xy)}
    if high.shape[1] == 0:
        return out
    out["overlap"] = float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(high, low)]) / high.shape[1])
    if labels is not None:
        names = np.array(["" if _missing(v) else str(v) for v in labels], dtype=object)
        labelled = names[queries] != ""
        if labelled.any():
            same_low = names[low[labelled]] == names[queries[labelled], None]
            same_high = names[high[labelled]] == names[queries[labelled], None]
            out["class_2d"] = float(same_low.mean())
            out["class_embedding"] = float(same_high.mean())
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def cross_level_agreement(a: np.ndarray, b: np.ndarray, groups=None, k: int = SCORE_K,
                          queries: np.ndarray | None = None) -> np.ndarray:
    """Per row: the share of its k nearest rows at level A (cosine, outside its own video) that are
    also among its k nearest at level B. a: N x d_a, b: N x d_b, the same N rows in the same order.
    Returns a float array of len(queries) (default all N) in [0, 1]; NaN when no row is outside
    the video."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"cross_level_agreement needs the same rows at both levels, got {a.shape[0]} and {b.shape[0]}")
    queries = np.arange(a.shape[0]) if queries is None else np.asarray(queries, dtype=np.int64)
    near_a = other_neighbours(a, k, "cosine", groups, queries)
    near_b = other_neighbours(b, k, "cosine", groups, queries)
    if near_a.shape[1] == 0:
        return np.full(len(queries), np.nan)
    return np.array([len(np.intersect1d(p, q)) for p, q in zip(near_a, near_b)], dtype=np.float64) / near_a.shape[1]
