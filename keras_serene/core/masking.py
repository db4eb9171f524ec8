"""The masks' host-side API: set and read the PRUNED/FROZEN bits.

The masks are state of a `MaskingOptimizer`
(`keras_serene.core.masking_optimizer`, which explains the rule: after each
step, an entry whose mask is not zero gets its value from before the step
back; LOBSTER, arXiv 2011.09905, Sec. 3.3; NEq, arXiv 2207.09455, Sec. 3.2).
`ks.SensitivityOptimizer` and `ks.ImportanceOptimizer` are masking optimizers
too. The functions below
are what callbacks (`SensitivityPruning`, `EquilibriumFreezing`),
`strip_masks` and `ks.summary` use; the optimizer applies the masks in the
train step.

One `uint8` per parameter, bit flags: `PRUNED = 1`, `FROZEN = 2`.
"""

import keras
import numpy as np

from keras_serene.core.masking_optimizer import FROZEN  # noqa: F401
from keras_serene.core.masking_optimizer import PRUNED
from keras_serene.core.masking_optimizer import MaskingOptimizer  # noqa: F401
from keras_serene.core.masking_optimizer import keep_masked  # noqa: F401
from keras_serene.core.masking_optimizer import masking_layers


def mask_optimizer(model_or_optimizer, caller="keras_serene"):
    """Returns the `MaskingOptimizer` holding the masks.

    Accepts a compiled model or an optimizer, and looks through any wrapper
    with an `inner_optimizer` (a `LossScaleOptimizer`, added by Keras under
    a `mixed_float16` policy). `ks.SensitivityOptimizer` and
    `ks.ImportanceOptimizer` are masking optimizers.

    Raises:
        ValueError: naming `caller`, when the chain holds no masks.
    """
    optimizer = model_or_optimizer
    if isinstance(model_or_optimizer, keras.Model):
        optimizer = getattr(model_or_optimizer, "optimizer", None)
    found = masking_layers(optimizer)
    if not found:
        raise ValueError(
            f"{caller}: the model's `optimizer` must hold the pruning and "
            "freezing masks: compile with `ks.MaskingOptimizer(optimizer)` "
            "(masks only) or `ks.SensitivityOptimizer(optimizer, ...)` "
            "(masks and the sensitivity decay) around your optimizer. "
            f"Received: optimizer={type(optimizer).__name__}"
        )
    return found[0]


def ensure_built(optimizer, model):
    """Builds the model's optimizer chain on `model.trainable_variables`.

    The outermost optimizer (a `LossScaleOptimizer` under `mixed_float16`)
    is built first, so the `MaskingOptimizer` inside it is built once,
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
        optimizer: the `MaskingOptimizer` holding the masks (built).
        variable: a trainable variable the optimizer was built with.
        flag: `PRUNED` or `FROZEN`.
        where: boolean array broadcastable to the variable's shape.
        zero: if True, also set the flagged entries of `variable` to 0.0
            (what pruning does).
    """
    if flag not in (PRUNED, FROZEN):
        raise ValueError(
            "set_flag: `flag` must be PRUNED (1) or FROZEN (2). Received: "
            f"flag={flag!r}"
        )
    mask_variable = optimizer.mask_for(variable)
    if mask_variable is None:
        raise ValueError(
            f"set_flag: variable {variable.path!r} has no mask: it is not "
            f"among the variables the {type(optimizer).__name__} was built "
            "with."
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
