"""`MaskingOptimizer`: the masking layer every keras_serene optimizer builds on.

Pruning (LOBSTER, arXiv 2011.09905, Sec. 3.3: "p *= mask" after every step,
`EIDOSLAB/LOBSTER` `src/utilities/train.py`) and freezing (NEq, NeurIPS 2022,
arXiv 2207.09455, Sec. 3.2: "a neuron at equilibrium is not updated",
`EIDOSLAB/NEq` `src/optim/sgd.py`) are one operation: after the inner
optimizer's step, an entry whose mask is not zero takes its value from
*before* the step,

    w <- where(mask == 0, w_after_step, w_before_step)

so a pruned entry (set to 0 when it was pruned) stays exactly 0.0 and a frozen
one keeps every bit, whatever momentum, Adam moments or decoupled weight decay
did. With `mask_gradients=True` the gradient of a masked entry is also set to
zero *before* the inner step, as the authors' `MaskedSGD` does (`d_p *= mask`
before the momentum buffer): its momentum (or Adam moments) then decays
instead of following the gradient. The restore after the step stays, so the
entry does not move in either mode.

One `uint8` per parameter, bit flags: `PRUNED = 1`, `FROZEN = 2`. Pruning and
freezing set their own bit, so NEq unfreezing never revives a pruned entry.
The masks are optimizer state (one variable per trainable variable, built
next to the inner optimizer's slots and found again by
`_get_variable_index`, as Keras's SGD finds its momenta), so `.keras` files,
`save_weights` and `BackupAndRestore` keep them. The user's model stays a
plain Keras model. The host-side API (set a flag, read a mask) is in
`keras_serene.core.masking`.

The wrapper follows Keras's `LossScaleOptimizer` (`OptimizerWrapper`):
`ks.SensitivityOptimizer` (adds the sensitivity decay) and
`ks.ImportanceOptimizer` (adds RNI's gradient multiplier) subclass it.
"""

import keras
from keras import ops

from keras_serene.core import distribute as _distribute
from keras_serene.core.optimizer_wrapper import OptimizerWrapper

PRUNED = 1
FROZEN = 2


def keep_masked(new_value, old_value, mask):
    """Graph-side: the new value where `mask == 0`, the old one elsewhere."""
    return ops.where(ops.equal(mask, 0), new_value, old_value)


def _decay_and_mask(values, old_values, factors, masks, decay):
    """`w - decay * w * factor` where a factor is given, then the masks."""
    new_values = []
    for value, old, factor, mask in zip(values, old_values, factors, masks):
        if factor is not None:
            value = value - decay * value * factor
        new_values.append(keep_masked(value, old, mask))
    return new_values


_FUSED = None


def fused_update(values, old_values, factors, masks, decay):
    """Runs `_decay_and_mask` as one fused XLA computation on TensorFlow.

    Dozens of small elementwise ops per step cost more in dispatch than in
    arithmetic on a CPU; one compiled function keeps the wrapper's overhead
    near the inner step's (inside a train step that is already compiled
    with XLA, the default, it is simply inlined). Other backends run the
    same maths directly.
    """
    if keras.backend.backend() != "tensorflow":
        return _decay_and_mask(values, old_values, factors, masks, decay)
    import tensorflow as tf

    global _FUSED
    if _FUSED is None:
        _FUSED = tf.function(
            _decay_and_mask, jit_compile=True, reduce_retracing=True
        )
    return _FUSED(
        values, old_values, factors, [ops.copy(m) for m in masks], decay
    )


def masking_layers(optimizer):
    """The `MaskingOptimizer`s in `optimizer`'s chain, outermost first."""
    found = []
    while optimizer is not None:
        if isinstance(optimizer, MaskingOptimizer):
            found.append(optimizer)
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return found


@keras.saving.register_keras_serializable(package="keras_serene")
class MaskingOptimizer(OptimizerWrapper):
    """Wraps an optimizer and keeps masked entries from moving.

    Holds one `uint8` mask per trainable variable (`PRUNED` and `FROZEN`
    bits, set by `ks.callbacks.SensitivityPruning` and
    `ks.callbacks.EquilibriumFreezing` through `keras_serene.core.masking`).
    After the inner optimizer's step, every entry whose mask is not zero gets
    its value from before the step back, bit for bit. Everything else is
    the inner optimizer's: `learning_rate`, `iterations`, its state.

    Example:

    ```python
    model.compile(
        optimizer=ks.MaskingOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.9), mask_gradients=True),
        loss=..., metrics=["accuracy"])
    model.fit(x, y, epochs=30,
              callbacks=[ks.callbacks.EquilibriumFreezing(x, subset=0.01)])
    ```

    Args:
        inner_optimizer: `keras.optimizers.Optimizer`. The optimizer taking
            the step (SGD, Adam, AdamW, ...). Must not itself hold masks
            (no `MaskingOptimizer` inside).
        mask_gradients: Bool. Also zero the gradients of masked entries
            before the inner step, as the NEq authors' `MaskedSGD`: the
            momentum (Adam moments) of a frozen entry then decays instead of
            following its gradient. Defaults to `False` (the state follows
            the gradient; only the values are held).
        name: String. Defaults to `None`.

    References:
        - [Bragagnolo et al., NeurIPS 2022](https://arxiv.org/abs/2207.09455),
          Sec. 3.2.
        - [Tartaglione et al., 2022](https://arxiv.org/abs/2011.09905),
          Sec. 3.3.
    """

    def __init__(
        self, inner_optimizer, mask_gradients=False, name=None, **kwargs
    ):
        cls = type(self).__name__
        if not isinstance(mask_gradients, bool):
            raise TypeError(
                f"{cls}: `mask_gradients` must be True or False. Received: "
                f"mask_gradients={mask_gradients!r}"
            )
        nested = masking_layers(inner_optimizer)
        if nested:
            raise ValueError(
                f"{cls}: `inner_optimizer` must not hold masks itself: it "
                f"contains a {type(nested[0]).__name__}, so the step would "
                "be masked twice (and decayed twice by nested "
                "SensitivityOptimizers). Wrap the plain optimizer once, e.g. "
                f"`{cls}(keras.optimizers.SGD(...))`. Received: "
                f"inner_optimizer={inner_optimizer!r}"
            )
        super().__init__(inner_optimizer, name=name, **kwargs)
        self.mask_gradients = mask_gradients

    def build(self, var_list):
        """Builds the inner optimizer, then one mask per variable."""
        if self.built:  # Once only: a wrapper around us may build us again.
            return
        var_list = list(var_list)
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        self.masks = [
            self.add_variable(
                shape=variable.shape,
                dtype="uint8",
                initializer="zeros",
                aggregation="none",
                name=f"{variable.path.replace('/', '_')}_mask",
            )
            for variable in var_list
        ]
        super().build(var_list)

    def mask_for(self, variable):
        """The uint8 mask variable of `variable`, or None."""
        if not self.built:
            return None
        try:
            return self.masks[self._get_variable_index(variable)]
        except KeyError:
            return None

    def apply(self, grads, trainable_variables=None):
        """Inner step, then masked entries get their old values back."""
        grads, variables, indices = self._prepare(grads, trainable_variables)
        self._masked_step(grads, variables, indices)

    def _prepare(self, grads, trainable_variables):
        """Builds if needed; returns `(grads, variables, mask indices)`."""
        cls = type(self).__name__
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    f"{cls}.apply: pass `trainable_variables` or build the "
                    "optimizer first."
                )
            trainable_variables = self._trainable_variables
        variables = list(trainable_variables)
        if not self.built:
            self.build(variables)
        if len(grads) != len(variables):
            raise ValueError(
                f"{cls}.apply: got {len(grads)} gradients for "
                f"{len(variables)} variables."
            )
        return (
            grads,
            variables,
            [self._get_variable_index(v) for v in variables],
        )

    def _masked_step(self, grads, variables, indices, factors=None, decay=0.0):
        """The inner step between `mask_gradients` and the restore.

        `factors` (one tensor or None per variable) and `decay` add
        `w -= decay * w * factor` after the step, fused with the restore
        (`ks.SensitivityOptimizer` passes `relu(1 - S)`).
        """
        masks = [self.masks[index] for index in indices]
        if self.mask_gradients:
            grads = [
                None
                if grad is None
                else ops.where(ops.equal(mask, 0), grad, ops.zeros_like(grad))
                for grad, mask in zip(grads, masks)
            ]
        old_values = [ops.copy(v) for v in variables]
        self.inner_optimizer.apply(grads, variables)
        if factors is None:
            factors = [None] * len(variables)
        new_values = fused_update(
            [ops.copy(v) for v in variables], old_values, factors, masks, decay
        )
        _distribute.assign_all(variables, new_values)

    def wrapper_config(self):
        return {"mask_gradients": self.mask_gradients}
