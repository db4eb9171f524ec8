"""`SensitivityOptimizer`: the one wrapper that applies sensitivity decay.

After the wrapped optimizer's own step, every regularized parameter decays in
proportion to its insensitivity,

    w <- w - decay * w * relu(1 - S)

(NeurIPS 2018, arXiv 1810.11764, Eq. 9; LOBSTER, arXiv 2011.09905, Eq. 11;
SeReNe, arXiv 2102.03773, Eq. 9), then the masks put pruned entries back to
exactly 0.0 and frozen ones to their value from before the step
(`keras_serene.core.masking`). As in the authors' code (`EIDOSLAB/LOBSTER`,
`src/utilities/train.py`: `p -= lmbda * p * relu(1 - |g|)` after
`optimizer.step()`), the decay is **not** multiplied by the learning rate, and
S is computed from the minibatch-mean gradient from before the step.

The wrapper follows Keras's `LossScaleOptimizer` (`OptimizerWrapper`): it owns
no learning rate, delegates `learning_rate` and `iterations` to the inner
optimizer (so `ReduceLROnPlateau` and schedules work), and nests the inner
optimizer in its config. Any Keras optimizer can be the inner one: there is
no `LobsterSGD`.
"""

import re

import keras
from keras import ops

from keras_serene.core import distribute as _distribute
from keras_serene.core import masking as masks_lib
from keras_serene import sensitivity as sensitivity_lib
from keras_serene.core.optimizer_wrapper import OptimizerWrapper

#: Weight names regularized by default: Dense/Conv kernels and biases and
#: BatchNormalization scale and shift, as the authors' code regularizes
#: Linear, Conv2d and BatchNorm parameters.
REGULARIZED_WEIGHTS = (
    "kernel",
    "bias",
    "depthwise_kernel",
    "pointwise_kernel",
    "gamma",
    "beta",
)


def is_regularized(variable, exclude=()):
    """True when `variable` gets the sensitivity decay.

    Its name (the last part of `variable.path`) must be one of
    `REGULARIZED_WEIGHTS`, and no `exclude` pattern may match its path
    (`re.search`, as Keras's `exclude_from_weight_decay` matches names).
    """
    if variable.path.split("/")[-1] not in REGULARIZED_WEIGHTS:
        return False
    return not any(re.search(pattern, variable.path) for pattern in exclude)


def _decay_and_mask(values, old_values, sensitivities, masks, decay):
    """`w - decay * w * relu(1 - S)` where S is given, then the masks."""
    new_values = []
    for value, old, s, mask in zip(values, old_values, sensitivities, masks):
        if s is not None:
            value = value - decay * value * ops.relu(1.0 - s)
        new_values.append(masks_lib.keep_masked(value, old, mask))
    return new_values


def _fused_update(values, old_values, sensitivities, masks, decay):
    """Runs `_decay_and_mask` as one fused XLA computation on TensorFlow.

    Dozens of small elementwise ops per step cost more in dispatch than in
    arithmetic on a CPU; one compiled function keeps the wrapper's overhead
    near the inner step's. Other backends run the same maths directly.
    """
    if keras.backend.backend() != "tensorflow":
        return _decay_and_mask(values, old_values, sensitivities, masks, decay)
    import tensorflow as tf

    global _FUSED
    if _FUSED is None:
        _FUSED = tf.function(
            _decay_and_mask, jit_compile=True, reduce_retracing=True
        )
    return _FUSED(
        values, old_values, sensitivities, [ops.copy(m) for m in masks], decay
    )


_FUSED = None


@keras.saving.register_keras_serializable(package="keras_serene")
class SensitivityOptimizer(OptimizerWrapper):
    """Wraps an optimizer and decays parameters by their insensitivity.

    After the inner optimizer's step, each regularized variable `w` (Dense
    and Conv kernels and biases, BatchNormalization `gamma` and `beta`)
    becomes `w - decay * w * relu(1 - S)`, with `S` from the `sensitivity`
    estimator; no learning-rate factor, as in the authors' code. Then the
    masks keep pruned entries at exactly zero and frozen entries unchanged.
    Use it with `ks.callbacks.SensitivityPruning`, which thresholds the
    decayed parameters and sets the masks.

    Example:

    ```python
    model.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.1), sensitivity="loss", decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, validation_split=0.1, epochs=100,
              callbacks=[ks.callbacks.SensitivityPruning(patience=20)])
    ```

    Args:
        inner_optimizer: `keras.optimizers.Optimizer`. The optimizer taking
            the gradient step (SGD, Adam, AdamW, ...). Set `clipnorm`,
            `weight_decay` and the like on it.
        sensitivity: String or `ks.sensitivity.Sensitivity`. `"loss"`
            (LOBSTER, `S = |dL/dw|`, no extra pass), `"output"` (NeurIPS
            2018) or `"neuron"` (SeReNe); the last two need
            `ks.SensitivityModel`. Defaults to `"loss"`.
        decay: Float >= 0. The regularization strength lambda. Defaults to
            `1e-4`.
        exclude: List of regex strings. Variables whose path matches one are
            not regularized (they are still masked). Defaults to `None`.
        name: String. Defaults to `None`.

    References:
        - [Tartaglione et al., 2018](https://arxiv.org/abs/1810.11764), Eq. 9.
        - [Tartaglione et al., 2022](https://arxiv.org/abs/2011.09905),
          Eq. 11.
    """

    def __init__(
        self,
        inner_optimizer,
        sensitivity="loss",
        decay=1e-4,
        exclude=None,
        name=None,
        **kwargs,
    ):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)):
            raise TypeError(
                "SensitivityOptimizer: `decay` must be a float. Received "
                f"decay={decay!r}"
            )
        if decay < 0:
            raise ValueError(
                "SensitivityOptimizer: `decay` must be >= 0. Received "
                f"decay={decay}"
            )
        if exclude is None:
            exclude = []
        if isinstance(exclude, str) or not all(
            isinstance(p, str) for p in exclude
        ):
            raise TypeError(
                "SensitivityOptimizer: `exclude` must be a list of regex "
                f"strings. Received exclude={exclude!r}"
            )
        super().__init__(inner_optimizer, name=name, **kwargs)
        self.sensitivity = sensitivity_lib.get(sensitivity)
        #: The estimator's optimizer state: what `sensitivity.build`
        #: returned (a dict of variables), handed back at every step.
        self.sensitivity_state = {}
        self.decay = float(decay)
        self.exclude = list(exclude)

    def build(self, var_list):
        """Builds the inner optimizer, the masks and the estimator's state."""
        if self.built:  # Once only: a wrapper around us may build us again.
            return
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
        self._regularized = [
            is_regularized(variable, self.exclude) for variable in var_list
        ]
        super().build(var_list)
        self.sensitivity_state = self.sensitivity.build(
            self, [v for v, r in zip(var_list, self._regularized) if r]
        )

    @property
    def regularized_variables(self):
        """The variables that get the sensitivity decay (once built)."""
        return [
            v for v, r in zip(self._trainable_variables, self._regularized) if r
        ]

    def mask_for(self, variable):
        """The uint8 mask variable of `variable`, or None."""
        if not self.built:
            return None
        try:
            return self.masks[self._get_variable_index(variable)]
        except KeyError:
            return None

    def apply(self, grads, trainable_variables=None, sensitivities=None):
        """Inner step, then `w -= decay * w * relu(1 - S)`, then masks.

        Args:
            grads: list of gradients, one per variable.
            trainable_variables: the variables (defaults to those the
                optimizer was built with).
            sensitivities: optional list, one per variable (None entries for
                variables without one): S computed outside the optimizer
                (`ks.SensitivityModel` passes them). When omitted, the
                estimator computes S from `grads`.
        """
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "SensitivityOptimizer.apply: pass `trainable_variables` "
                    "or build the optimizer first."
                )
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"SensitivityOptimizer.apply: got {len(grads)} gradients for "
                f"{len(trainable_variables)} variables."
            )
        indices = [self._get_variable_index(v) for v in trainable_variables]
        old_values = [ops.copy(v) for v in trainable_variables]
        decayed = [
            i
            for i, index in enumerate(indices)
            if self._regularized[index] and grads[i] is not None
        ]
        s_values = self._sensitivities(
            grads, trainable_variables, decayed, sensitivities
        )
        self.inner_optimizer.apply(grads, trainable_variables)

        decay = [
            ops.cast(s_values[i], variable.dtype) if i in s_values else None
            for i, variable in enumerate(trainable_variables)
        ]
        new_values = _fused_update(
            [ops.copy(v) for v in trainable_variables],
            old_values,
            decay,
            [self.masks[index] for index in indices],
            self.decay,
        )
        _distribute.assign_all(trainable_variables, new_values)

    def _sensitivities(self, grads, variables, decayed, sensitivities):
        if self.decay == 0.0 or not decayed:
            return {}
        if sensitivities is not None:
            if len(sensitivities) != len(variables):
                raise ValueError(
                    "SensitivityOptimizer.apply: got "
                    f"{len(sensitivities)} sensitivities for "
                    f"{len(variables)} variables."
                )
            return {
                i: sensitivities[i]
                for i in decayed
                if sensitivities[i] is not None
            }
        if self.sensitivity.requires_model:
            raise ValueError(
                f"SensitivityOptimizer: sensitivity={self.sensitivity!r} "
                "needs an extra pass through the model, which a plain "
                "`model.fit` does not run. Train through "
                "`ks.SensitivityModel(model)` (compile and fit it instead of "
                "`model`), or use sensitivity='loss'."
            )
        reduced = _distribute.all_reduce_sum([grads[i] for i in decayed])
        values = self.sensitivity(
            reduced, [variables[i] for i in decayed], self.sensitivity_state
        )
        return dict(zip(decayed, values))

    def wrapper_config(self):
        return {
            "sensitivity": sensitivity_lib.serialize(self.sensitivity),
            "decay": self.decay,
            "exclude": list(self.exclude),
        }

    @classmethod
    def deserialize_arguments(cls, config, custom_objects=None):
        config = dict(config)
        config["sensitivity"] = sensitivity_lib.deserialize(
            config["sensitivity"], custom_objects=custom_objects
        )
        return config
