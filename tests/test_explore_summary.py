"""The cross-level summary the Explore tab shows beside the cross-level panel (app.explore.cross_summary)."""

import numpy as np
import pytest

from app.explore import cross_summary


def test_cross_summary_per_class_line_length_and_shared_neighbours():
    labels = ["lung", "lung", "liver", None, "liver"]
    a = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [5.0, 5.0], [0.0, 3.0]])
    b = a + np.array([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, -2.0]])  # lengths 5, 1, 0, 1, 2
    agreement = np.array([0.2, 0.4, 1.0, np.nan, 0.5])
    table = cross_summary(labels, a, b, agreement)
    assert table["class"].tolist() == ["(none)", "liver", "lung", "all"]
    assert table["frames"].tolist() == [1, 2, 2, 5]
    assert table["line_length"].tolist() == pytest.approx([1.0, 1.0, 3.0, 9 / 5])
    shared = table["shared_neighbours"].tolist()
    assert np.isnan(shared[0]) and shared[1:] == pytest.approx([0.75, 0.3, 2.1 / 4])  # NaN left out of the mean


def test_cross_summary_while_the_agreement_is_computed():
    table = cross_summary(["a", "b"], np.zeros((2, 2)), np.ones((2, 2)), None)
    assert table["line_length"].tolist() == pytest.approx([2 ** 0.5] * 3)
    assert table["shared_neighbours"].isna().all()


def test_neighbours_come_from_other_clips_by_default_with_their_distances():
    """A clip's own frames are its nearest; by default they are left out (they teach nothing), on
    request they count; the picked frame itself never does; distances ascend; captions are whole."""
    import pandas as pd

    from app.explore import Embedded, Explorer
    from app.explore_tab import neighbour_caption
    from hico.config import DataConfig

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    rows = []
    for clip in range(4):
        for frame in range(5):  # a clip's frames lie close together, clips 0 and 1 near each other
            centre = centres[clip] if clip != 1 else centres[0] + 0.5
            rows.append({"video_id": f"lung_effusion/clip{clip}", "frame": frame, "label": "lung_effusion",
                         "global": (centre + 0.01 * rng.normal(size=8)).astype(np.float32)})
    item = Embedded(pd.DataFrame(rows), None, DataConfig())
    explorer = Explorer()
    near, dist = explorer.neighbours(item, 0, "global", k=6)
    assert len(near) == 6 and 0 not in near
    clips = item.table.loc[near, "video_id"].tolist()
    assert "lung_effusion/clip0" not in clips
    assert clips[:2] == ["lung_effusion/clip1"] * 2  # the near clip first, at most 2 frames of any clip
    assert all(clips.count(c) == 2 for c in set(clips)) and len(set(clips)) == 3
    assert np.all(np.diff(dist[:2]) >= 0) and dist[0] > 0
    own, own_dist = explorer.neighbours(item, 0, "global", k=6, same_clip=True)
    assert set(own[:4]) == {1, 2, 3, 4} and own_dist[0] < dist[0]
    caption = neighbour_caption(item.table.loc[int(near[0])], float(dist[0]))
    assert caption == f"lung_effusion · clip1 · frame {item.table.loc[int(near[0]), 'frame']} · d {dist[0]:.3f}"
    lone = Embedded(pd.DataFrame(rows[:5]), None, DataConfig())
    assert len(explorer.neighbours(lone, 0, "global")[0]) == 0  # one clip: no other clip to show
    from app.explore_tab import enlarged

    assert enlarged(np.zeros((96, 96), np.uint8)).shape == (256, 256)
    assert enlarged(np.zeros((96, 128, 3), np.uint8)).shape == (192, 256, 3)
