"""The budgeted pruning schedule: a polynomial ramp to a target sparsity.

Pure policy, no model (tfmot's `pruning_schedule.py` lesson): the callback
`ks.callbacks.SensitivityPruning(target_sparsity=...)` wires it to `fit`.
The ramp is Zhu & Gupta's gradual pruning schedule ("To prune, or not to
prune", arXiv 1710.01878, Eq. 1), the one tfmot's `PolynomialDecay` runs:

    s(t) = s_f * (1 - (1 - (t - t0) / (T - t0)) ** power),   t0 <= t <= T

with `s(t) = 0` before `t0` and `s_f` after `T`; `power = 3` by default.
Pruning happens every `interval` steps from `t0` on, and always at `T`, so
the target is reached exactly at `T` and held afterwards.

Steps are the optimizer's iterations (`optimizer.iterations`, which `.keras`
files, checkpoints and `keras.callbacks.BackupAndRestore` keep), so the
schedule is a function of one saved counter: a resumed run picks up the ramp
where it stopped.
"""

import math


class PolynomialRamp:
    """`s(t) = s_f (1 - (1 - (t - t0)/(T - t0))^power)`, pruning every k steps.

    Example:

    >>> ramp = PolynomialRamp(0.9, begin_step=0, end_step=10, interval=5)
    >>> [round(ramp.sparsity(t), 4) for t in (0, 5, 10, 20)]
    [0.0, 0.7875, 0.9, 0.9]
    >>> [t for t in range(12) if ramp.is_pruning_step(t)]
    [0, 5, 10]

    Args:
        target: Float in [0, 1). The final sparsity `s_f`.
        begin_step: Int >= 0. `t0`, the first pruning step.
        end_step: Int >= begin_step. `T`, the step the target is reached.
        interval: Int >= 1. Steps between pruning steps. Defaults to `1`.
        power: Float >= 1. The ramp's exponent. Defaults to `3`.
    """

    def __init__(self, target, begin_step, end_step, interval=1, power=3):
        for name, value in (
            ("begin_step", begin_step),
            ("end_step", end_step),
            ("interval", interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(
                    f"PolynomialRamp: `{name}` must be an int. Received "
                    f"{name}={value!r}"
                )
        if not 0.0 <= target < 1.0:
            raise ValueError(
                "PolynomialRamp: `target` must be in [0, 1). Received "
                f"target={target}"
            )
        if begin_step < 0 or end_step < begin_step:
            raise ValueError(
                "PolynomialRamp: need 0 <= begin_step <= end_step. Received "
                f"begin_step={begin_step}, end_step={end_step}"
            )
        if interval < 1:
            raise ValueError(
                "PolynomialRamp: `interval` must be >= 1. Received "
                f"interval={interval}"
            )
        if not power >= 1:
            raise ValueError(
                f"PolynomialRamp: `power` must be >= 1. Received power={power}"
            )
        self.target = float(target)
        self.begin_step = begin_step
        self.end_step = end_step
        self.interval = interval
        self.power = float(power)

    def sparsity(self, step):
        """The scheduled sparsity after `step` optimizer steps."""
        if step < self.begin_step:
            return 0.0
        if step >= self.end_step:
            return self.target
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        return self.target * (1.0 - (1.0 - progress) ** self.power)

    def is_pruning_step(self, step):
        """True at `t0 + k * interval` (while `<= T`) and at `T`."""
        if step < self.begin_step or step > self.end_step:
            return False
        return step == self.end_step or (
            (step - self.begin_step) % self.interval == 0
        )

    def next_pruning_step(self, step):
        """The first pruning step `>= step`, or None after `T`."""
        if step <= self.begin_step:
            return self.begin_step
        if step > self.end_step:
            return None
        k = math.ceil((step - self.begin_step) / self.interval)
        return min(self.begin_step + k * self.interval, self.end_step)

    def __repr__(self):
        return (
            f"PolynomialRamp(target={self.target}, begin_step="
            f"{self.begin_step}, end_step={self.end_step}, interval="
            f"{self.interval}, power={self.power:g})"
        )


def ramp_for_fit(
    target, begin_epoch, end_epoch, frequency, steps_per_epoch, epochs
):
    """Builds the `PolynomialRamp` of one `fit` from epoch-level arguments.

    Args:
        target: Float. The final sparsity.
        begin_epoch: Float >= 0. Epoch (may be fractional) the ramp starts.
        end_epoch: Float or None. Epoch the target is reached; None means
            70% of `epochs`.
        frequency: Int >= 1. Pruning steps per epoch.
        steps_per_epoch: Int >= 1. Optimizer steps per epoch.
        epochs: Int. The epochs `fit` was called with.
    """
    if end_epoch is None:
        end_epoch = 0.7 * epochs
    begin_step = int(round(begin_epoch * steps_per_epoch))
    end_step = max(begin_step, int(round(end_epoch * steps_per_epoch)))
    interval = max(1, int(round(steps_per_epoch / frequency)))
    return PolynomialRamp(target, begin_step, end_step, interval)
