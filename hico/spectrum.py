"""How many directions a level's features use: the participation ratio of their covariance.

A representation that collapses puts its variance into a few directions: its kNN and linear-probe
accuracy fall with it, first on data unlike the training set. The participation ratio of the
covariance's eigenvalues lambda_1..lambda_d,

    PR = (sum_i lambda_i)^2 / sum_i lambda_i^2,

is 1 when one direction holds all the variance and d when all d hold equal shares; it is the
"effective rank" a run logs per level at each validation (val_rank_<level>, over the watched
frames of every video, see hico.val_accuracy), and the Train tab draws beside the accuracy.
`top_share(x, k)` is the share of the variance in the k largest eigenvalues.
"""

from __future__ import annotations

import numpy as np

from hico.config import VIEWS


def _eigenvalues(x: np.ndarray) -> np.ndarray:
    """The covariance eigenvalues of N x d features, largest first (float64; from the centred rows'
    singular values, so a d much larger than N costs no d x d matrix)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be N x d, got shape {x.shape}")
    if len(x) < 2:
        return np.zeros(0)
    singular = np.linalg.svd(x - x.mean(axis=0), compute_uv=False)
    return singular**2 / (len(x) - 1)


def participation_ratio(x: np.ndarray) -> float:
    """(sum of eigenvalues)^2 / sum of squared eigenvalues of the covariance of N x d features:
    1 to min(N - 1, d); 0 for features with no variance (or fewer than two rows)."""
    values = _eigenvalues(x)
    total = float(values.sum())
    return total**2 / float((values**2).sum()) if total > 0 else 0.0


def top_share(x: np.ndarray, k: int = 3) -> float:
    """Share of the variance of N x d features in the covariance's k largest eigenvalues."""
    values = _eigenvalues(x)
    total = float(values.sum())
    return float(values[:k].sum()) / total if total > 0 else 0.0


def effective_ranks(vectors: dict[str, np.ndarray]) -> dict[str, float]:
    """{val_rank_<level>: participation ratio} of every view (local, medium, global, backbone) in
    `vectors` ({view: N x d})."""
    return {f"val_rank_{view}": participation_ratio(vectors[view]) for view in VIEWS if view in vectors}
