"""Neurons at equilibrium: the pure maths of NEq, without a model.

For each neuron `i` (a Dense unit, a convolution output channel or a
BatchNormalization channel), NEq compares its outputs on a fixed validation
subset Xi at the end of consecutive epochs (Bragagnolo, Tartaglione, Grangetto,
"To update or not to update? Neurons at equilibrium in deep models", NeurIPS
2022, https://openreview.net/forum?id=LGDfv0U7MJR, arXiv 2207.09455, Sec. 3,
the equations defining phi, delta phi, the velocity and equilibrium):

    phi_i^t   = mean over xi in Xi of cos(y_i,xi^t, y_i,xi^(t-1))   (phi)
    dphi_i^t  = phi_i^t - phi_i^(t-1)                              (dphi)
    v_i^t     = dphi_i^t - mu * v_i^(t-1)                          (velocity)
    frozen    = |v_i^t| < epsilon                                  (equilibrium)

`cos` runs over the neuron's flattened spatial map for one sample; two zero
maps count as identical (1), one zero map as unrelated (0). A neuron without a
spatial map (a Dense unit on a 2-D input) is compared over the vector of its
outputs on the whole subset, as the authors' code (`EIDOSLAB/NEq`,
`src/general_utils.py`, `cosine_similarity` with `dim=0` for 2-D outputs)
does: a per-sample cosine of two scalars would only compare their signs.

The authors' code updates its velocity differently (`Hook.get_velocity` and
`Hook.update_velocity`); unrolled, it computes

    v_i^t = dphi_i^t - (1 - mu) * sum_{j < t} mu^(t-1-j) * dphi_i^j,

which agrees with the paper's recursion for the first two epochs when
`mu = 0.5` and differs after. `paper_velocity` is the paper's form,
`code_velocity` the code's, carried by a decaying trace
`tau^t = mu * tau^(t-1) + dphi^t`. Before the first epoch, `phi^(-1) = 1`
and `v^(-1) = tau^(-1) = 0` (the code starts its delta buffer at 0), so
after one warm-up epoch `dphi^0 = phi^0 - 1`.

Everything here is NumPy on host arrays (float64 accumulation), so it can be
tested on hand-made activations; `ks.callbacks.EquilibriumFreezing` wires it
to `fit`.
"""

import numpy as np

VELOCITY_FORMS = ("paper", "code")


def check_epsilon(epsilon, caller):
    """Returns `epsilon` as a float; it must be a number > 0."""
    if isinstance(epsilon, bool) or not isinstance(
        epsilon, (int, float, np.floating, np.integer)
    ):
        raise TypeError(
            f"{caller}: `epsilon` must be a float > 0. Received "
            f"epsilon={epsilon!r} of type {type(epsilon).__name__}"
        )
    if not np.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(
            f"{caller}: `epsilon` must be a finite float > 0. Received "
            f"epsilon={epsilon}"
        )
    return float(epsilon)


def check_momentum(momentum, caller):
    """Returns `momentum` as a float; it must lie in [0, 1)."""
    if isinstance(momentum, bool) or not isinstance(
        momentum, (int, float, np.floating, np.integer)
    ):
        raise TypeError(
            f"{caller}: `velocity_momentum` must be a float in [0, 1). "
            f"Received velocity_momentum={momentum!r} of type "
            f"{type(momentum).__name__}"
        )
    if not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"{caller}: `velocity_momentum` must be in [0, 1). Received "
            f"velocity_momentum={momentum}"
        )
    return float(momentum)


def check_form(form, caller):
    """Returns `form`; it must be one of `VELOCITY_FORMS`."""
    if form not in VELOCITY_FORMS:
        raise ValueError(
            f"{caller}: `velocity_form` must be one of {VELOCITY_FORMS}. "
            f"Received velocity_form={form!r}"
        )
    return form


def to_neuron_maps(outputs, channel_axis=-1):
    """Reshapes a layer output to `(samples, positions, neurons)`.

    A 2-D output `(samples, neurons)` is returned as it is.

    Args:
        outputs: Array of shape `(samples, ..., neurons, ...)`.
        channel_axis: Int. The axis holding the neurons. Defaults to `-1`.
    """
    outputs = np.asarray(outputs)
    if outputs.ndim < 2:
        raise ValueError(
            "to_neuron_maps: a layer output needs a sample axis and a neuron "
            f"axis. Received shape {outputs.shape}"
        )
    if outputs.ndim == 2:
        return outputs
    outputs = np.moveaxis(outputs, channel_axis, -1)
    return outputs.reshape(outputs.shape[0], -1, outputs.shape[-1])


def cosine(a, b, axis):
    """Cosine similarity along `axis`, with NEq's rules for zero vectors.

    `dot(a, b) / (|a| |b|)`; 1.0 where both vectors are zero, 0.0 where
    exactly one is. Computed in float64.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    dot = np.sum(a * b, axis=axis)
    return _cosine_from_sums(
        dot, np.sum(a * a, axis=axis), np.sum(b * b, axis=axis)
    )


def _cosine_from_sums(dot, squared_a, squared_b):
    a_zero = squared_a == 0
    b_zero = squared_b == 0
    norms = np.sqrt(squared_a) * np.sqrt(squared_b)
    safe = np.where(a_zero | b_zero, 1.0, norms)
    value = np.clip(dot / safe, -1.0, 1.0)
    value = np.where(a_zero | b_zero, 0.0, value)
    return np.where(a_zero & b_zero, 1.0, value)


class PhiAccumulator:
    """Streams `phi` of one layer over batches of the subset.

    Feed `update(current, previous)` with the neuron maps (see
    `to_neuron_maps`) of the same samples at epochs `t` and `t - 1`, batch
    after batch; `result()` gives one `phi` per neuron. With maps of shape
    `(samples, positions, neurons)` it averages the per-sample cosines; with
    2-D outputs `(samples, neurons)` it returns the cosine of each neuron's
    output vector over all samples. Only running sums are held.
    """

    def __init__(self):
        self.samples = 0
        self._sum = None  # per-sample cosines summed (maps)
        self._sums = None  # dot, |a|^2, |b|^2 (2-D outputs)

    def update(self, current, previous):
        current = np.asarray(current)
        previous = np.asarray(previous)
        if current.shape != previous.shape:
            raise ValueError(
                "PhiAccumulator.update: current and previous outputs differ "
                f"in shape: {current.shape} vs {previous.shape}."
            )
        if current.ndim == 2:
            a = current.astype(np.float64)
            b = previous.astype(np.float64)
            sums = np.stack([(a * b).sum(0), (a * a).sum(0), (b * b).sum(0)])
            self._sums = sums if self._sums is None else self._sums + sums
        else:
            total = cosine(current, previous, axis=1).sum(axis=0)
            self._sum = total if self._sum is None else self._sum + total
        self.samples += current.shape[0]

    def add_sums(self, sums, samples):
        """Adds sums computed elsewhere (on device) for `samples` samples.

        `sums` is the summed per-sample cosines `(neurons,)` for maps, or the
        stacked `dot, |a|^2, |b|^2` sums `(3, neurons)` for 2-D outputs.
        """
        sums = np.asarray(sums, np.float64)
        if sums.ndim == 2:
            self._sums = sums if self._sums is None else self._sums + sums
        else:
            self._sum = sums if self._sum is None else self._sum + sums
        self.samples += int(samples)

    def result(self):
        if self.samples == 0:
            raise ValueError("PhiAccumulator.result: no samples were fed.")
        if self._sums is not None:
            return _cosine_from_sums(*self._sums)
        return self._sum / self.samples


def phi(current, previous, channel_axis=-1):
    """`phi` per neuron (the paper's `phi`) from two whole layer outputs.

    Args:
        current: Array `(samples, ..., neurons)`: outputs at epoch `t`.
        previous: Array of the same shape: outputs at epoch `t - 1`.
        channel_axis: Int. The neuron axis. Defaults to `-1`.

    Returns:
        Float64 array of shape `(neurons,)`.
    """
    accumulator = PhiAccumulator()
    accumulator.update(
        to_neuron_maps(current, channel_axis),
        to_neuron_maps(previous, channel_axis),
    )
    return accumulator.result()


def delta_phi(phi_now, phi_before):
    """`dphi^t = phi^t - phi^(t-1)` ."""
    return np.asarray(phi_now, np.float64) - np.asarray(phi_before, np.float64)


def paper_velocity(dphi, previous_velocity, momentum):
    """The paper's velocity: `v^t = dphi^t - mu * v^(t-1)`."""
    return np.asarray(dphi, np.float64) - momentum * np.asarray(
        previous_velocity, np.float64
    )


def code_velocity(dphi, previous_trace, momentum):
    """The authors' code: returns `(v^t, tau^t)`.

    `v^t = dphi^t - (1 - mu) * tau^(t-1)` and `tau^t = mu * tau^(t-1) +
    dphi^t`, so `tau^(t-1) = sum_{j < t} mu^(t-1-j) dphi^j`.
    """
    dphi = np.asarray(dphi, np.float64)
    previous_trace = np.asarray(previous_trace, np.float64)
    velocity = dphi - (1.0 - momentum) * previous_trace
    return velocity, momentum * previous_trace + dphi


def velocity_step(form, dphi, state, momentum):
    """One velocity update in `form`; returns `(velocity, new_state)`.

    The state is `v^(t-1)` for `"paper"` and `tau^(t-1)` for `"code"`;
    start it at zeros.
    """
    if form == "paper":
        velocity = paper_velocity(dphi, state, momentum)
        return velocity, velocity
    if form == "code":
        return code_velocity(dphi, state, momentum)
    raise ValueError(
        f"velocity_step: form must be one of {VELOCITY_FORMS}. Received "
        f"form={form!r}"
    )


def at_equilibrium(velocity, epsilon):
    """Equilibrium: True where `|v| < epsilon` (frozen for the next epoch)."""
    return np.abs(np.asarray(velocity)) < epsilon


def backprop_flops_saved(flops, frozen_fractions):
    """`sum_l flops_l * frozen_l / sum_l flops_l`; 0.0 when no FLOPs."""
    flops = np.asarray(flops, np.float64)
    frozen_fractions = np.asarray(frozen_fractions, np.float64)
    if flops.shape != frozen_fractions.shape:
        raise ValueError(
            "backprop_flops_saved: one frozen fraction per layer is needed. "
            f"Received {flops.shape} FLOPs and {frozen_fractions.shape} "
            "fractions."
        )
    total = flops.sum()
    if total <= 0:
        return 0.0
    return float((flops * frozen_fractions).sum() / total)
