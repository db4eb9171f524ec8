"""LOBSTER's pruning schedule: a plateau detector and a threshold bisection.

Pure policy, no model (tfmot's `pruning_schedule.py` lesson): the callback
`ks.callbacks.SensitivityPruning` wires it to `fit`. Follows the authors' code
(`EIDOSLAB/LOBSTER`, `src/utilities/pruning/thresholding/plateau_scheduler.py`
and `threshold_scheduler.py`; LOBSTER, arXiv 2011.09905, Sec. 3.3 and
Algorithm 1):

Plateau, after each epoch with validation loss `vl`::

    if vl < best * (1 + plateau_tolerance): bad = 0
        and if vl < best: best = vl (the caller keeps a copy of the weights)
    else: bad += 1
    if bad >= patience: plateau -> restore the best weights, reset, prune
    if vl is NaN or inf: diverged -> restore the last good weights, no prune

Threshold search, one global magnitude threshold `T`::

    bound = L0 * (1 + tolerance)
    if loss(T=meanT) < bound: a, La = meanT, that loss; b, Lb = maxT, inf
    else:                     a, La = minT, L0;         b, Lb = meanT, that
    while |La - Lb| >= stop_fraction * bound:
        c = (a + b) / 2  (stop when c moves by <= 1e-10)
        if loss(T=c) <= bound: a, La = c, that   else: b, Lb = c, that
    return a   (the lower end: never worse than the bound)
"""

import math

import numpy as np


class Plateau:
    """Detects a plateau of a minimized quantity (the validation loss).

    `update(value)` returns `"improved"` (a new best: keep the weights),
    `"plateau"` (patience ran out: restore the best weights and prune; the
    detector resets itself), `"wait"`, or `"diverged"` for a NaN or
    infinite value: the authors' rule (`EIDOSLAB/LOBSTER`,
    `plateau_scheduler.py`) rolls back to the last good weights instead of
    pruning a broken model; the counters are left as they were.

    Args:
        patience: Int >= 1. Epochs without a relative improvement before a
            plateau is declared (LOBSTER's `pwe`). Defaults to `20`.
        tolerance: Float > -1. Relative tolerance: a value below
            `best * (1 + tolerance)` resets the counter. LOBSTER's 0.01
            declares a plateau only when the loss stays 1% above its best;
            a negative value instead demands a relative improvement of that
            size (like `ReduceLROnPlateau`'s `min_delta`), which finds
            plateaus in short runs. Defaults to `0.01`.
    """

    def __init__(self, patience=20, tolerance=0.01):
        if isinstance(patience, bool) or not isinstance(patience, int):
            raise TypeError(
                f"Plateau: `patience` must be an int. Received {patience!r}"
            )
        if patience < 1:
            raise ValueError(
                "Plateau: `patience` must be >= 1. Received "
                f"patience={patience}"
            )
        if not -1.0 < tolerance:
            raise ValueError(
                "Plateau: `tolerance` must be > -1. Received "
                f"tolerance={tolerance}"
            )
        self.patience = patience
        self.tolerance = float(tolerance)
        self.reset()

    def reset(self):
        self.best = math.inf
        self.bad_epochs = 0

    def update(self, value):
        value = float(value)
        if not math.isfinite(value):
            return "diverged"
        status = "wait"
        if value < self.best * (1.0 + self.tolerance):
            self.bad_epochs = 0
            if value < self.best:
                self.best = value
                status = "improved"
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.reset()
            return "plateau"
        return status


class ThresholdSearch:
    """The result of `bisect_threshold`: threshold, its loss, the trials."""

    def __init__(self, threshold, loss, bound, trials):
        self.threshold = threshold
        self.loss = loss
        self.bound = bound
        self.trials = trials

    def __repr__(self):
        return (
            f"ThresholdSearch(threshold={self.threshold:.6g}, "
            f"loss={self.loss:.6g}, bound={self.bound:.6g}, "
            f"trials={len(self.trials)})"
        )


def magnitude_statistics(arrays):
    """`(minT, meanT, maxT)` of LOBSTER's search from weight arrays.

    `meanT` is the mean over tensors of the mean |w| over nonzero entries;
    `minT` / `maxT` are the global min / max |w| over nonzero entries.
    Returns None when every entry is zero.
    """
    means, lows, highs = [], [], []
    for array in arrays:
        magnitudes = np.abs(np.asarray(array, dtype=np.float64)).ravel()
        magnitudes = magnitudes[magnitudes > 0]
        if magnitudes.size:
            means.append(magnitudes.mean())
            lows.append(magnitudes.min())
            highs.append(magnitudes.max())
    if not means:
        return None
    return min(lows), float(np.mean(means)), max(highs)


def bisect_threshold(
    loss_at,
    initial_loss,
    statistics,
    tolerance=0.05,
    stop_fraction=0.05,
    min_step=1e-10,
    max_trials=64,
):
    """Bisects the largest global threshold whose loss stays under a bound.

    Args:
        loss_at: Callable `T -> loss` of the model with every regularized
            entry `|w| < T` zeroed (on a copy).
        initial_loss: Float. The loss before pruning, `L0`.
        statistics: `(minT, meanT, maxT)`, see `magnitude_statistics`.
        tolerance: Float >= 0. `bound = L0 * (1 + tolerance)` (LOBSTER's
            `twt`). Defaults to `0.05`.
        stop_fraction: Float > 0. Stop when the bracket's losses differ by
            less than `stop_fraction * bound`. Defaults to `0.05`.
        min_step: Float. Stop when the midpoint moves by less. Defaults to
            `1e-10`.
        max_trials: Int. A safety cap on evaluations. Defaults to `64`.

    Returns:
        A `ThresholdSearch`; its `threshold` is the lower end of the final
        bracket, whose loss is <= the bound (0 prunes nothing new).
    """
    if tolerance < 0:
        raise ValueError(
            f"bisect_threshold: `tolerance` must be >= 0. Received {tolerance}"
        )
    min_t, mean_t, max_t = statistics
    bound = initial_loss * (1.0 + tolerance)
    trials = []

    def evaluate(threshold):
        loss = float(loss_at(threshold))
        trials.append((threshold, loss))
        return loss

    loss_mean = evaluate(mean_t)
    if loss_mean < bound:
        a, loss_a, b, loss_b = mean_t, loss_mean, max_t, math.inf
    else:
        a, loss_a, b, loss_b = min_t, initial_loss, mean_t, loss_mean
    previous = None
    while abs(loss_a - loss_b) >= stop_fraction * bound:
        c = 0.5 * (a + b)
        if previous is not None and abs(c - previous) <= min_step:
            break
        if len(trials) >= max_trials:
            break
        previous = c
        loss_c = evaluate(c)
        if loss_c <= bound:
            a, loss_a = c, loss_c
        else:
            b, loss_b = c, loss_c
    return ThresholdSearch(a, loss_a, bound, trials)
