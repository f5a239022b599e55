"""The mined arms' frame choice: misses and ghosts of the online detector against the
auto-labels, and the seeded top-n."""

from __future__ import annotations

import numpy as np
import pytest

from data_engine.selection import disagreement, online_errors, select_top

CAR = [10.0, 10.0, 50.0, 40.0]
FAR = [200.0, 100.0, 210.0, 110.0]


def test_disagreement_counts_misses_and_ghosts() -> None:
    labels = np.array([CAR, FAR])
    assert disagreement(labels, labels) == (0, 0)
    assert disagreement(labels, np.array([CAR])) == (1, 0)  # FAR missed
    shifted = np.array(CAR) + [25.0, 0.0, 25.0, 0.0]  # IoU 0.23 with the car: no cover
    assert disagreement(np.array([CAR]), np.array([shifted])) == (1, 1)
    assert disagreement(np.array([CAR]), np.array([CAR, FAR])) == (0, 1)  # a ghost
    assert disagreement(np.zeros((0, 4)), np.array([FAR])) == (0, 1)
    assert disagreement(labels, np.zeros((0, 4))) == (2, 0)
    assert disagreement(np.zeros((0, 4)), np.zeros((0, 4))) == (0, 0)


def test_a_ghost_in_an_ignore_region_does_not_count() -> None:
    ignore = np.array([[190.0, 90.0, 230.0, 130.0]])
    assert disagreement(np.array([CAR]), np.array([CAR, FAR]), ignore) == (0, 0)
    assert disagreement(np.zeros((0, 4)), np.array([FAR]), ignore) == (0, 0)
    assert online_errors(np.array([CAR]), np.array([FAR])) == 2  # truth has no ignore


def test_select_top_takes_the_highest_and_breaks_ties_by_seed() -> None:
    scores = [0, 3, 1, 3, 0, 2, 0, 0]
    assert select_top(scores, 3) == [1, 3, 5]
    picks = {tuple(select_top(scores, 5, seed)) for seed in range(20)}
    assert all({1, 2, 3, 5} <= set(p) for p in picks)  # the fifth: one of the zeros
    assert len(picks) > 1  # ... which one depends on the seed
    assert select_top(scores, 5, 7) == select_top(scores, 5, 7)
    assert select_top(scores, len(scores)) == list(range(len(scores)))
    for bad in (0, 9):
        with pytest.raises(ValueError, match=f"cannot select {bad} of 8"):
            select_top(scores, bad)
    with pytest.raises(ValueError, match="finite"):
        select_top([1.0, float("nan")], 1)
