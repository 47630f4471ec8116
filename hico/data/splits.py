"""Splits by video, never by frame, and the labelled share of the semi-supervised setting.

Both are pure functions of the clip list and a seed, so a resumed run, `hico embed` and the
app see the same assignment as the run that was trained.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from hico.data.dataset import Dataset


def _by_class(dataset: Dataset, indices) -> dict:
    groups = defaultdict(list)
    for i in indices:
        groups[dataset.clips[i].label].append(i)
    return groups


def assign_splits(dataset: Dataset, val_fraction: float, seed: int) -> list[str]:
    """One of train, val, test per clip.

    A manifest's split column wins. Otherwise `val_fraction` of the videos of each class
    (unlabelled videos form a group of their own) go to val, chosen with `seed`; at least one
    video always stays in train. Rounded per class, a small set of many classes would hold out
    nothing (12 videos of 8 classes at 0.2): then videos of the classes with the most videos
    still in train go to val too, never a class's last one, until `val_fraction` of all videos
    (at least one) is held out, where the data allows (`held_out_note` says when it does not).
    """
    splits = [c.split or "" for c in dataset.clips]
    free = [i for i, s in enumerate(splits) if not s]
    rng = np.random.default_rng([seed, 17])
    trains = {}
    for label, members in sorted(_by_class(dataset, free).items(), key=lambda kv: str(kv[0])):
        members = list(rng.permutation(members))
        n_val = int(round(val_fraction * len(members)))
        for j, i in enumerate(members):
            splits[i] = "val" if j < n_val else "train"
        trains[str(label)] = [int(i) for i in members[n_val:]]
    if val_fraction > 0 and free:
        target = max(1, int(round(val_fraction * len(free))))
        held = sum(splits[i] == "val" for i in free)
        while held < target:
            label = max(sorted(trains), key=lambda name: len(trains[name]))  # most videos left; ties by name
            if len(trains[label]) < 2:
                break
            splits[trains[label].pop(0)] = "val"
            held += 1
    if splits and "train" not in splits:
        splits[int(np.argmax([s == "val" for s in splits]))] = "train"
    return splits


def labelled_mask(dataset: Dataset, label_fraction: float, seed: int, splits: list[str] | None = None) -> list[bool]:
    """Which clips keep their label: `label_fraction` of the labelled videos of each class
    (at least one per class when the fraction is above 0), chosen with `seed`.

    Given the clips' `splits` (assign_splits), the share is taken of each class's *training*
    videos, so that every class keeps a labelled video to train on, and clips outside training
    (held-out videos, which are only ever measured on) keep their labels.
    """
    keep = [False] * len(dataset.clips)
    labelled = [i for i, c in enumerate(dataset.clips) if c.label is not None]
    if splits is not None:
        for i in labelled:
            keep[i] = splits[i] != "train"
        labelled = [i for i in labelled if splits[i] == "train"]
    rng = np.random.default_rng([seed, 29])
    for label, members in sorted(_by_class(dataset, labelled).items()):
        n = int(round(label_fraction * len(members)))
        if label_fraction > 0:
            n = max(n, 1)
        for i in rng.permutation(members)[:n]:
            keep[int(i)] = True
    return keep


def held_out_note(splits: list[str], val_fraction: float) -> str | None:
    """A sentence when `val_fraction` asked for held-out videos and none could be held out (every
    class has a single video), else None."""
    if val_fraction > 0 and "val" not in splits:
        return (f"data.val_fraction is {val_fraction} but no video could be held out (each class has one video): "
                f"held-out loss and accuracy will not be measured; add videos, or give a manifest split column.")
    return None
