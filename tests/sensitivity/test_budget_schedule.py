"""The budgeted ramp alone: values worked out by hand, steps, arguments."""

import numpy as np
import pytest

from keras_serene.sensitivity.budget_schedule import PolynomialRamp
from keras_serene.sensitivity.budget_schedule import ramp_for_fit


def test_ramp_values_by_hand():
    ramp = PolynomialRamp(0.8, begin_step=10, end_step=20, interval=5)
    # Before t0: nothing; after T: the target.
    assert ramp.sparsity(0) == 0.0 and ramp.sparsity(9) == 0.0
    assert ramp.sparsity(10) == 0.0
    # t = 12: progress 0.2, 0.8 * (1 - 0.8^3) = 0.8 * 0.488 = 0.3904.
    assert ramp.sparsity(12) == pytest.approx(0.3904)
    # t = 15: progress 0.5, 0.8 * (1 - 0.125) = 0.7.
    assert ramp.sparsity(15) == pytest.approx(0.7)
    assert ramp.sparsity(20) == 0.8 and ramp.sparsity(10**6) == 0.8


def test_power_one_is_linear():
    ramp = PolynomialRamp(0.5, 0, 4, power=1)
    assert [ramp.sparsity(t) for t in range(5)] == [0, 0.125, 0.25, 0.375, 0.5]


def test_pruning_steps_every_interval_and_at_the_end():
    ramp = PolynomialRamp(0.9, begin_step=0, end_step=10, interval=3)
    assert [t for t in range(15) if ramp.is_pruning_step(t)] == [
        0, 3, 6, 9, 10
    ]  # fmt: skip
    assert ramp.next_pruning_step(1) == 3
    assert ramp.next_pruning_step(3) == 3
    assert ramp.next_pruning_step(10) == 10
    assert ramp.next_pruning_step(11) is None
    # The next pruning step is always a pruning step.
    for t in range(12):
        nxt = ramp.next_pruning_step(t)
        assert nxt is None or (nxt >= t and ramp.is_pruning_step(nxt))


def test_sparsity_never_decreases():
    ramp = PolynomialRamp(0.98, begin_step=7, end_step=333, interval=13)
    values = np.array([ramp.sparsity(t) for t in range(400)])
    assert np.all(np.diff(values) >= 0)
    assert values[-1] == 0.98


def test_ramp_for_fit_defaults_to_70_percent_of_the_epochs():
    # 20 epochs of 540 steps, 4 pruning steps per epoch.
    ramp = ramp_for_fit(0.98, 0, None, 4, 540, 20)
    assert (ramp.begin_step, ramp.end_step, ramp.interval) == (0, 7560, 135)
    ramp = ramp_for_fit(0.5, 1, 3.5, 2, 10, 100)
    assert (ramp.begin_step, ramp.end_step, ramp.interval) == (10, 35, 5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"target": 1.0}, ValueError, "target=1.0"),
        ({"target": -0.1}, ValueError, "target=-0.1"),
        ({"begin_step": 5, "end_step": 4}, ValueError, "end_step=4"),
        ({"begin_step": 1.5}, TypeError, "begin_step=1.5"),
        ({"interval": 0}, ValueError, "interval=0"),
        ({"power": 0.5}, ValueError, "power=0.5"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"target": 0.5, "begin_step": 0, "end_step": 10, **kwargs}
    with pytest.raises(error, match=match):
        PolynomialRamp(**arguments)
