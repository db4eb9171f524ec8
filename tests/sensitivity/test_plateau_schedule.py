"""The LOBSTER schedule alone: plateau detector and threshold bisection."""

import math

import numpy as np
import pytest

from keras_serene.sensitivity.plateau_schedule import Plateau
from keras_serene.sensitivity.plateau_schedule import bisect_threshold
from keras_serene.sensitivity.plateau_schedule import magnitude_statistics


def test_plateau_follows_the_authors_rule():
    plateau = Plateau(patience=2, tolerance=0.01)
    # 1.0 best; 1.005 is within 1% (resets the counter, not a new best).
    assert plateau.update(1.0) == "improved"
    assert plateau.update(1.005) == "wait"
    assert plateau.bad_epochs == 0 and plateau.best == 1.0
    assert plateau.update(0.9) == "improved"
    assert plateau.update(0.95) == "wait"  # 0.95 >= 0.909: bad epoch 1.
    assert plateau.bad_epochs == 1
    assert plateau.update(0.96) == "plateau"  # Bad epoch 2 = patience.
    # The detector resets after a plateau.
    assert plateau.best == math.inf and plateau.bad_epochs == 0
    assert plateau.update(5.0) == "improved"


def test_plateau_negative_tolerance_demands_improvement():
    plateau = Plateau(patience=1, tolerance=-0.1)
    assert plateau.update(1.0) == "improved"
    assert plateau.update(0.95) == "plateau"  # Not 10% better.


@pytest.mark.parametrize(
    "kwargs, match",
    [({"patience": 0}, "patience=0"), ({"tolerance": -1.0}, "tolerance=-1.0")],
)
def test_plateau_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Plateau(**kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_plateau_reports_divergence_and_keeps_its_counters(value):
    plateau = Plateau(patience=2, tolerance=0.0)
    assert plateau.update(1.0) == "improved"
    assert plateau.update(1.2) == "wait"  # Bad epoch 1.
    assert plateau.update(value) == "diverged"
    # Neither a bad epoch nor a new best: the next bad epoch is the 2nd.
    assert plateau.best == 1.0 and plateau.bad_epochs == 1
    assert plateau.update(1.1) == "plateau"


def test_magnitude_statistics_ignore_zeros():
    stats = magnitude_statistics(
        [np.array([0.0, -2.0, 4.0]), np.array([[1.0, 0.0]])]
    )
    # Means over nonzero entries per tensor: 3 and 1 -> 2.
    assert stats == (1.0, 2.0, 4.0)
    assert magnitude_statistics([np.zeros(3)]) is None


def test_bisection_upper_branch_by_hand():
    # loss(T) = 1 + T: L0 = 1, tolerance 0.5 -> bound 1.5.
    # meanT = 0.2 (loss 1.2 < 1.5): a = 0.2, b = maxT = 1.0, Lb = inf.
    # c = 0.6 (1.6 > 1.5): b = 0.6; c = 0.4 (1.4): a = 0.4;
    # |1.4 - 1.6| = 0.2 >= 0.075: c = 0.5 (1.5 <= 1.5): a = 0.5;
    # |1.5 - 1.6| = 0.1 >= 0.075: c = 0.55 (1.55): b = 0.55;
    # |1.5 - 1.55| = 0.05 < 0.075: stop, return a = 0.5.
    search = bisect_threshold(
        lambda t: 1.0 + t, 1.0, (0.01, 0.2, 1.0), tolerance=0.5
    )
    assert [round(t, 6) for t, _ in search.trials] == [0.2, 0.6, 0.4, 0.5, 0.55]
    assert search.threshold == pytest.approx(0.5)
    assert search.loss == pytest.approx(1.5)
    assert search.bound == pytest.approx(1.5)


def test_bisection_lower_branch_never_exceeds_bound():
    # Pruning at meanT is too costly: search between minT and meanT.
    def loss(t):
        return 1.0 + 10 * t

    search = bisect_threshold(loss, 1.0, (0.0, 0.5, 2.0), tolerance=0.05)
    assert search.trials[0] == (0.5, 6.0)
    assert 0 < search.threshold < 0.5
    assert loss(search.threshold) <= search.bound
    # The bracket's upper end exceeds the bound: the answer is near 0.005.
    assert search.threshold == pytest.approx(0.005, abs=0.005)


def test_bisection_returns_min_when_nothing_is_affordable():
    search = bisect_threshold(
        lambda t: 1.0 + 1e-3 * t, 1.0, (0.1, 0.5, 1.0), tolerance=0.0
    )
    # loss(meanT) > bound, |L0 - loss(meanT)| < 0.05 * bound: no bisection.
    assert search.threshold == 0.1 and len(search.trials) == 1
