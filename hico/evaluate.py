"""Linear-probe and kNN accuracy of each level's frozen embeddings, split by video.

Protocol (the linear evaluation USCL and HiCo publish): features standardised, then logistic
regression (L2, C = 1, solved to its optimum: hico.linear_probe) and a k-nearest-neighbour
classifier (k = 10). Folds are by video: no frame of a
test video is ever in training. With a manifest `test` split, that split is the test set;
otherwise stratified group k-fold over the labelled videos. Accuracy is reported per frame and
per video (the mean of a video's frame probabilities), and for the linear probe per class (which
level separates which class: the synthetic classes differ at different scales).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from hico.config import LEVELS
from hico.embed import LEVEL_COLUMNS, embed_dataset, level_matrix
from hico.errors import HiCoError
from hico.files import atomic_path
from hico.linear_probe import LinearProbe

log = logging.getLogger(__name__)
FEATURES = (*LEVEL_COLUMNS, "concat")  # concat = local + medium + global
CLASS_PREFIX = "class:"  # per-class columns: class:<label>_acc, class:<label>_std (linear probe)


def video_folds(table: pd.DataFrame, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) pairs with every video wholly on one side."""
    if "test" in set(table["split"]):
        test = (table["split"] == "test").to_numpy()
        return [(np.flatnonzero(~test), np.flatnonzero(test))]
    per_class = table.groupby("label")["video_id"].nunique()
    if len(per_class) < 2:
        raise HiCoError("Evaluation needs labelled clips of at least two classes.")
    n = int(min(folds, per_class.min()))
    if n < 2:
        raise HiCoError(f"Evaluation needs at least two labelled videos per class; class {per_class.idxmin()!r} "
                        f"has {per_class.min()}.")
    splitter = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(table)), table["label"], groups=table["video_id"]))


def video_accuracy(probs: np.ndarray, classes: np.ndarray, labels: np.ndarray, videos: np.ndarray) -> float:
    frame = pd.DataFrame(probs, columns=classes)
    frame["video"] = videos
    mean = frame.groupby("video").mean()
    truth = pd.Series(labels, index=videos).groupby(level=0).first().loc[mean.index]
    return float((mean.idxmax(axis=1).to_numpy() == truth.to_numpy()).mean())


def _fold_scores(x: np.ndarray, labels: np.ndarray, videos: np.ndarray, train: np.ndarray, test: np.ndarray,
                 k: int) -> dict[str, float]:
    """Frame and video accuracy of the linear probe and kNN trained on `train` rows, on `test` rows,
    and the linear probe's accuracy on the test frames of each class (`class:<label>`)."""
    probe = LinearProbe().fit(x[train], labels[train])
    standardise = lambda rows: (x[rows] - probe.mean_) / probe.scale_  # noqa: E731
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train))).fit(standardise(train), labels[train])
    scores = {}
    for name, classes, probs in (("linear", probe.classes_, probe.predict_proba(x[test])),
                                 ("knn", knn.classes_, knn.predict_proba(standardise(test)))):
        right = classes[probs.argmax(axis=1)] == labels[test]
        scores[name] = float(right.mean())
        scores[f"{name}_video"] = video_accuracy(probs, classes, labels[test], videos[test])
        if name == "linear":
            for label in sorted(set(labels[test])):
                scores[f"{CLASS_PREFIX}{label}"] = float(right[labels[test] == label].mean())
    return scores


def feature_matrix(table: pd.DataFrame, feature: str) -> np.ndarray:
    """N x d features of one of FEATURES (concat joins local, medium and global)."""
    if feature == "concat":
        return np.concatenate([level_matrix(table, c) for c in LEVELS], axis=1)
    return level_matrix(table, feature)


def evaluate_embeddings(table: pd.DataFrame, folds: int = 5, k: int = 10, seed: int = 0,
                        features: tuple[str, ...] = FEATURES, workers: int | None = None,
                        partial: str | Path | None = None) -> pd.DataFrame:
    """One row per feature (local, medium, global, backbone, concat) with mean and std over folds of
    frame- and video-level accuracy for the linear probe (at its optimum, see hico.linear_probe)
    and kNN. The feature x fold fits run on `workers` threads (default: one per core).

    partial: a JSON-lines file that keeps each fit's scores as it finishes, so an evaluation that
    is interrupted (the app closed, the process killed) resumes where it was; the caller removes it
    once the results are saved."""
    table = table[table["label"].notna()].reset_index(drop=True)
    if table.empty:
        raise HiCoError("Evaluation needs labelled clips, and this dataset has none.")
    splits = video_folds(table, folds, seed)
    labels, videos = table["label"].to_numpy(), table["video_id"].to_numpy()
    matrices = {feature: feature_matrix(table, feature) for feature in features}
    jobs = [(feature, fold) for feature in features for fold in range(len(splits))]
    tag = {"folds": len(splits), "k": k, "seed": seed, "rows": len(table)}
    done = _read_partial(partial, tag)
    # the widest features first: two threads then finish together rather than one waiting for a last wide fit
    todo = sorted((job for job in jobs if job not in done), key=lambda job: -matrices[job[0]].shape[1])
    workers = workers or max(1, min(len(todo), os.cpu_count() or 1))

    def fit(job):
        feature, fold = job
        train, test = splits[fold]
        scores = _fold_scores(matrices[feature], labels, videos, train, test, k)
        if partial is not None:
            line = json.dumps({**tag, "feature": feature, "fold": fold, "scores": scores}) + "\n"
            with open(partial, "a") as f:  # one short append per fit: whole lines, even from threads
                f.write(line)
        return job, scores

    # One BLAS thread per fit and one fit per core: the fits are small, so this beats threaded BLAS.
    if todo:
        with threadpool_limits(limits=1), ThreadPoolExecutor(workers) as pool:
            done.update(pool.map(fit, todo))
    rows = []
    for feature in features:
        per_fold = [done[(feature, fold)] for fold in range(len(splits))]
        row = {"feature": feature, "dim": matrices[feature].shape[1]}
        for key in dict.fromkeys(key for scores in per_fold for key in scores):  # a class may miss a fold
            values = [scores[key] for scores in per_fold if key in scores]
            row[f"{key}_acc"] = float(np.mean(values))
            row[f"{key}_std"] = float(np.std(values))
        row.update(folds=len(splits), videos=int(pd.unique(videos).size), frames=len(table))
        rows.append(row)
    results = pd.DataFrame(rows)
    tail = [c for c in results.columns if c.startswith(CLASS_PREFIX)]  # per-class columns last
    return results[[c for c in results.columns if c not in tail] + tail]


def per_class(results: pd.DataFrame) -> pd.DataFrame | None:
    """The linear probe's accuracy on each class's test frames (mean over folds): classes as rows,
    features as columns; None for results saved before it was measured."""
    columns = [c for c in results.columns if c.startswith(CLASS_PREFIX) and c.endswith("_acc")]
    if not columns:
        return None
    table = results.set_index("feature")[columns].T
    table.index = [c[len(CLASS_PREFIX):-len("_acc")] for c in columns]
    table.index.name = "class"
    return table


def _read_partial(path: str | Path | None, tag: dict) -> dict[tuple[str, int], dict]:
    """The fits a partial file holds for this evaluation (same folds, k, seed and rows); a line cut
    short by a kill is skipped."""
    done: dict[tuple[str, int], dict] = {}
    if path is None or not Path(path).is_file():
        return done
    for line in Path(path).read_text().splitlines():
        try:
            item = json.loads(line)
            if all(item.get(key) == value for key, value in tag.items()):
                done[(item["feature"], int(item["fold"]))] = dict(item["scores"])
        except (ValueError, KeyError, TypeError):
            continue
    return done


def results_path(table_path: str | Path, folds: int = 5, k: int = 10, seed: int = 0) -> Path:
    """Where the evaluation of an embeddings table is kept: `<table>.eval.csv` for the default
    protocol, with the settings in the name otherwise."""
    table_path = Path(table_path)
    if (folds, k, seed) == (5, 10, 0):
        return table_path.with_suffix(".eval.csv")
    return table_path.with_suffix(f".eval-f{folds}-k{k}-s{seed}.csv")


def evaluate_table(table: pd.DataFrame, table_path: str | Path, folds: int = 5, k: int = 10, seed: int = 0,
                   reuse: bool = True) -> tuple[pd.DataFrame, Path]:
    """The evaluation of a saved embeddings table, read from results_path when it was done before
    (with `reuse`), else computed (resuming a partial one) and saved there."""
    target = results_path(table_path, folds, k, seed)
    if reuse and target.is_file() and target.stat().st_mtime >= Path(table_path).stat().st_mtime:
        return pd.read_csv(target), target
    partial = target.with_suffix(".partial.jsonl")
    results = evaluate_embeddings(table, folds, k, seed, partial=partial)
    with atomic_path(target) as tmp:
        results.to_csv(tmp, index=False)
    partial.unlink(missing_ok=True)
    return results, target


def evaluate_run(run_dir: str | Path, data_dir: str | Path, folds: int = 5, k: int = 10, seed: int = 0,
                 device: str = "auto", progress: bool = True, reuse: bool = True) -> tuple[pd.DataFrame, Path]:
    """Embed data_dir with the run (reusing a cached table), evaluate every level (reusing an
    earlier evaluation of that table with `reuse`), and write the results as CSV beside the
    embeddings table; returns (results, csv path)."""
    table, table_path = embed_dataset(run_dir, data_dir, device=device, progress=progress)
    return evaluate_table(table, table_path, folds, k, seed, reuse)


def calibration_on_data(loaded, data_dir: str | Path, device: str = "auto") -> dict | None:
    """The classifier's expected calibration error on a labelled dataset's frames, at temperature 1
    and at the temperature the run fitted (hico.calibration); None when the run has no classifier
    or the dataset no frames of the run's classes. `loaded`: the run (hico.inference.LoadedRun),
    whose checkpoint's embeddings table of the dataset is read (embedded on `device` if missing).
    {frames, ece_before, ece_after, temperature}."""
    from hico.calibration import expected_calibration_error, softmax

    if loaded.model.classifier is None or not loaded.classes:
        return None
    table, _ = embed_dataset(loaded.run_dir, data_dir, checkpoint=loaded.checkpoint, device=device, progress=False)
    _, labels, logits = classifier_logits(loaded, table)
    if logits is None:
        return None
    fitted = loaded.calibration
    temperature = fitted.temperature if fitted is not None else 1.0
    return {"frames": int(len(labels)), "temperature": temperature,
            "ece_before": expected_calibration_error(softmax(logits), labels),
            "ece_after": expected_calibration_error(softmax(logits, temperature), labels)}


def classifier_logits(loaded, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The run's classifier on the frames of an embeddings table (of that run's checkpoint) whose
    label is one of the run's classes: (their rows in the table M, class indices M, logits M x K),
    the classifier applied to
    the table's pooled C5 (`backbone`) as the model applies it. Logits None when no frame's label
    is one of the run's classes, or the run has no classifier."""
    import torch

    index = {name: i for i, name in enumerate(loaded.classes)}
    labels = np.array([index.get(label, -1) for label in table["label"]], dtype=np.int64)
    known = labels >= 0
    rows = np.flatnonzero(known)
    if loaded.model.classifier is None or not known.any():
        return rows, labels[known], None
    with torch.no_grad():
        backbone = torch.from_numpy(level_matrix(table, "backbone")[known]).to(loaded.device)
        logits = loaded.model.classifier(backbone).float().cpu().numpy()
    return rows, labels[known], logits
