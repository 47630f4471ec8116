"""hico.spectrum: the effective rank (participation ratio) a run logs per level at each validation."""

import numpy as np
import pytest

from hico.spectrum import effective_ranks, participation_ratio, top_share


def test_the_participation_ratio_counts_the_directions_the_variance_uses():
    rng = np.random.default_rng(0)
    line = np.outer(rng.normal(size=500), rng.normal(size=16))  # every row on one direction
    assert participation_ratio(line) == pytest.approx(1.0)
    assert top_share(line, 1) == pytest.approx(1.0)
    plane = np.zeros((400, 16))
    plane[:, :2] = rng.choice([-1.0, 1.0], size=(400, 2))  # two directions, equal variance
    assert participation_ratio(plane) == pytest.approx(2.0, rel=0.05)
    isotropic = rng.normal(size=(20_000, 8))
    assert participation_ratio(isotropic) == pytest.approx(8.0, rel=0.02)
    assert top_share(isotropic, 3) == pytest.approx(3 / 8, rel=0.05)
    scaled = isotropic * np.array([10.0, 1, 1, 1, 1, 1, 1, 1])  # one direction dominates
    assert 1.0 < participation_ratio(scaled) < 1.2 and top_share(scaled, 1) > 0.9
    assert participation_ratio(np.ones((5, 3))) == 0.0 and participation_ratio(np.ones((1, 3))) == 0.0
    with pytest.raises(ValueError, match="N x d"):
        participation_ratio(np.ones(4))


def test_effective_ranks_name_every_view_logged():
    rng = np.random.default_rng(1)
    vectors = {"local": rng.normal(size=(300, 4)), "global": np.outer(rng.normal(size=300), np.ones(6)),
               "z_local": rng.normal(size=(300, 4))}
    ranks = effective_ranks(vectors)
    assert set(ranks) == {"val_rank_local", "val_rank_global"}
    assert ranks["val_rank_global"] == pytest.approx(1.0) and 3.5 < ranks["val_rank_local"] <= 4.0
