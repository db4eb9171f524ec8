"""Masks: the one mechanism that keeps entries from moving.

Pruning (LOBSTER, arXiv 2011.09905, Sec. 3.3: "p *= mask" after every step,
`EIDOSLAB/LOBSTER` `src/utilities/train.py`) and freezing (NEq, NeurIPS 2022,
Sec. 3.2: "a neuron at equilibrium is not updated", `EIDOSLAB/NEq`
`src/optim/sgd.py` zeroes the update after momentum and weight decay) are one
operation: after the optimizer step, an entry whose mask is not zero takes its
value from *before* the step,

    w <- where(mask == 0, w_after_step, w_before_step)

so a pruned entry (set to 0 when it was pruned) stays exactly 0.0 and a frozen
one keeps every bit, whatever momentum, Adam moments or weight decay did.

One `uint8` per parameter, bit flags: `PRUNED = 1`, `FROZEN = 2`. Pruning and
freezing set their own bit, so NEq unfreezing never revives a pruned entry.
The mask variables are optimizer state of `SensitivityOptimizer` (built next
to the inner optimizer's slots, keyed like them by variable), so `.keras`
files and checkpoints keep them. The user's model stays a plain Keras model.

The functions below are the host-side API (callbacks, `strip_masks`,
`ks.summary`); the optimizer applies the masks in the train step.
"""

import keras
import numpy as np
from keras import ops

PRUNED = 1
FROZEN = 2


def keep_masked(new_value, old_value, mask):
    """Graph-side: the new value where `mask == 0`, the old one elsewhere."""
    return ops.where(ops.equal(mask, 0), new_value, old_value)


def mask_optimizer(model_or_optimizer, caller="keras_serene"):
    """Returns the `SensitivityOptimizer` holding the masks.

    Accepts a compiled model or an optimizer, and looks through a
    `LossScaleOptimizer` (added by Keras under a `mixed_float16` policy).

    Raises:
        ValueError: naming `caller`, when no `SensitivityOptimizer` is found.
    """
    from keras_serene.sensitivity.sensitivity_optimizer import SensitivityOptimizer

    optimizer = model_or_optimizer
    if isinstance(model_or_optimizer, keras.Model):
        optimizer = getattr(model_or_optimizer, "optimizer", None)
    seen = optimizer
    while optimizer is not None and not isinstance(
        optimizer, SensitivityOptimizer
    ):
        optimizer = getattr(optimizer, "inner_optimizer", None)
    if optimizer is None:
        raise ValueError(
            f"{caller} needs the model to be compiled with "
            "`ks.SensitivityOptimizer(inner_optimizer, ...)`, which holds the "
            f"pruning and freezing masks. Received optimizer: {seen!r}"
        )
    return optimizer


def ensure_built(optimizer, model):
    """Builds the model's optimizer chain on `model.trainable_variables`.

    The outermost optimizer (a `LossScaleOptimizer` under `mixed_float16`)
    is built first, so the `SensitivityOptimizer` inside it is built once,
    by it: building the inner one alone would let the outer one build it
    again at the first step.
    """
    outer = getattr(model, "optimizer", None)
    if outer is not None and not outer.built:
        outer.build(model.trainable_variables)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)


def read_mask(optimizer, variable):
    """The uint8 numpy mask of `variable` (all zeros when it has none)."""
    mask = optimizer.mask_for(variable)
    if mask is None:
        return np.zeros(tuple(variable.shape), dtype=np.uint8)
    return np.asarray(keras.ops.convert_to_numpy(mask), dtype=np.uint8)


def pruned(optimizer, variable):
    """Boolean numpy array: entries of `variable` that are pruned."""
    return (read_mask(optimizer, variable) & PRUNED) != 0


def frozen(optimizer, variable):
    """Boolean numpy array: entries of `variable` that are frozen."""
    return (read_mask(optimizer, variable) & FROZEN) != 0


def set_flag(optimizer, variable, flag, where, zero=False):
    """Sets `flag` on the entries `where` is True and clears it elsewhere.

    Args:
        optimizer: the `SensitivityOptimizer` holding the masks (built).
        variable: a trainable variable the optimizer was built with.
        flag: `PRUNED` or `FROZEN`.
        where: boolean array broadcastable to the variable's shape.
        zero: if True, also set the flagged entries of `variable` to 0.0
            (what pruning does).
    """
    if flag not in (PRUNED, FROZEN):
        raise ValueError(
            f"set_flag: flag must be PRUNED (1) or FROZEN (2). Received {flag}"
        )
    mask_variable = optimizer.mask_for(variable)
    if mask_variable is None:
        raise ValueError(
            f"Variable {variable.path!r} has no mask: it is not among the "
            "variables the SensitivityOptimizer was built with."
        )
    shape = tuple(variable.shape)
    where = np.broadcast_to(np.asarray(where, dtype=bool), shape)
    mask = read_mask(optimizer, variable)
    mask = np.where(where, mask | flag, mask & ~np.uint8(flag)).astype(np.uint8)
    mask_variable.assign(mask)
    if zero:
        values = keras.ops.convert_to_numpy(variable)
        variable.assign(np.where(where, np.zeros_like(values), values))


def add_flag(optimizer, variable, flag, where, zero=False):
    """Like `set_flag`, but keeps the flag on entries already flagged."""
    current = (read_mask(optimizer, variable) & flag) != 0
    where = np.broadcast_to(np.asarray(where, dtype=bool), current.shape)
    set_flag(optimizer, variable, flag, current | where, zero=zero)


def mask_bytes(optimizer):
    """Bytes held by the masks (one per masked parameter)."""
    return int(
        sum(
            np.prod(m.shape) * np.dtype(m.dtype).itemsize
            for m in optimizer.masks
            if m is not None
        )
    )
