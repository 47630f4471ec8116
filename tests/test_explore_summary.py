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
