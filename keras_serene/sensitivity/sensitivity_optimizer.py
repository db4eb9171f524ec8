"""`SensitivityOptimizer`: the one wrapper that applies sensitivity decay.

After the wrapped optimizer's own step, every regularized parameter decays in
proportion to its insensitivity,

    w <- w - decay * w * relu(1 - S)

(NeurIPS 2018, arXiv 1810.11764, Eq. 9; LOBSTER, arXiv 2011.09905, Eq. 11;
SeReNe, arXiv 2102.03773, Eq. 9), then the masks put pruned entries back to
exactly 0.0 and frozen ones to their value from before the step: the class
builds on the masking layer, `MaskingOptimizer`
(`keras_serene.core.masking_optimizer`), which holds the masks. As in the
authors' code (`EIDOSLAB/LOBSTER`, `src/utilities/train.py`:
`p -= lmbda * p * relu(1 - |g|)` after `optimizer.step()`), the decay is
**not** multiplied by the learning rate, and S is computed from the
minibatch-mean gradient from before the step.

The wrapper follows Keras's `LossScaleOptimizer` (`OptimizerWrapper`): it owns
no learning rate, delegates `learning_rate` and `iterations` to the inner
optimizer (so `ReduceLROnPlateau` and schedules work), and nests the inner
optimizer in its config. Any Keras optimizer can be the inner one: there is
no `LobsterSGD`.
"""

import math
import re

import keras
from keras import ops

from keras_serene import sensitivity as sensitivity_lib
from keras_serene.core import checks
from keras_serene.core import distribute as _distribute
from keras_serene.core import layer_table
from keras_serene.core.masking_optimizer import MaskingOptimizer

#: Weight names regularized by default: Dense/Conv kernels and biases and
#: BatchNormalization scale and shift, as the authors' code regularizes
#: Linear, Conv2d and BatchNorm parameters. The optimizer sees variables,
#: not layers, so it takes the layer table's name set.
REGULARIZED_WEIGHTS = layer_table.DEFAULT_REGULARIZED


def is_regularized(variable, exclude=()):
    """True when `variable` gets the sensitivity decay.

    Its name (the last part of `variable.path`) must be one of
    `REGULARIZED_WEIGHTS`, and no `exclude` pattern may match its path
    (`re.search`, as Keras's `exclude_from_weight_decay` matches names).
    """
    if variable.path.split("/")[-1] not in REGULARIZED_WEIGHTS:
        return False
    return not any(re.search(pattern, variable.path) for pattern in exclude)


@keras.saving.register_keras_serializable(package="keras_serene")
class SensitivityOptimizer(MaskingOptimizer):
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
        mask_gradients: Bool. Also zero the gradients of masked entries
            before the inner step (their momentum decays), as
            `ks.MaskingOptimizer`. Defaults to `False`.
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
        mask_gradients=False,
        name=None,
        **kwargs,
    ):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)):
            raise TypeError(
                "SensitivityOptimizer: `decay` must be a finite float >= 0. "
                f"Received: decay={decay!r}"
            )
        if not math.isfinite(decay) or decay < 0:
            raise ValueError(
                "SensitivityOptimizer: `decay` must be a finite float >= 0. "
                f"Received: decay={decay}"
            )
        exclude = checks.check_patterns(
            "SensitivityOptimizer", "exclude", exclude
        )
        super().__init__(
            inner_optimizer, mask_gradients=mask_gradients, name=name, **kwargs
        )
        self.sensitivity = sensitivity_lib.get(
            sensitivity, caller="SensitivityOptimizer"
        )
        #: The estimator's optimizer state: what `sensitivity.build`
        #: returned (a dict of variables), handed back at every step.
        self.sensitivity_state = {}
        self.decay = float(decay)
        self.exclude = list(exclude)

    def build(self, var_list):
        """Builds the inner optimizer, the masks and the estimator's state."""
        if self.built:  # Once only: a wrapper around us may build us again.
            return
        var_list = list(var_list)
        super().build(var_list)  # the inner optimizer, then the masks
        self._regularized = [
            is_regularized(variable, self.exclude) for variable in var_list
        ]
        self.sensitivity_state = self.sensitivity.build(
            self, [v for v, r in zip(var_list, self._regularized) if r]
        )

    @property
    def regularized_variables(self):
        """The variables that get the sensitivity decay (once built)."""
        return [
            v for v, r in zip(self._trainable_variables, self._regularized) if r
        ]

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
        grads, variables, indices = self._prepare(grads, trainable_variables)
        decayed = [
            i
            for i, index in enumerate(indices)
            if self._regularized[index] and grads[i] is not None
        ]
        s_values = self._sensitivities(grads, variables, decayed, sensitivities)
        factors = [
            ops.relu(1.0 - ops.cast(s_values[i], variable.dtype))
            if i in s_values
            else None
            for i, variable in enumerate(variables)
        ]
        self._masked_step(grads, variables, indices, factors, self.decay)

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
            "mask_gradients": self.mask_gradients,
        }

    @classmethod
    def deserialize_arguments(cls, config, custom_objects=None):
        config = dict(config)
        config["sensitivity"] = sensitivity_lib.deserialize(
            config["sensitivity"], custom_objects=custom_objects
        )
        return config
