"""The sensitivity estimator interface.

A sensitivity `S` says how much a quantity (the loss, the outputs) depends on
a parameter. The sensitivity optimizer decays each regularized parameter by
its insensitivity, `w <- w - decay * w * relu(1 - S)` (NeurIPS 2018, arXiv
1810.11764, Eq. 9; LOBSTER, arXiv 2011.09905, Eq. 11). Estimators only
*compute* S; `ks.SensitivityOptimizer` is the one place that applies it
(optax's split between a transform's statistics and its application).

An estimator returns, for each regularized variable, a tensor that broadcasts
to the variable's shape (per entry, or per neuron). Estimators that need
quantities the training gradient does not hold (the outputs' gradients, the
pre-activations) set `requires_model = True`: `ks.SensitivityModel` computes
them in its `train_step` and hands the result to the optimizer explicitly.
"""

import keras


class Sensitivity:
    """Base class of the sensitivity estimators.

    Subclasses implement `__call__(gradients, variables)` (estimators that
    reuse the training gradient) or `from_model(...)` (estimators that need
    `ks.SensitivityModel`), plus `get_config`.
    """

    #: True when S needs an extra pass through the model
    #: (`ks.SensitivityModel`), False when the training gradient suffices.
    requires_model = False

    def build(self, optimizer, variables):
        """Creates state, e.g. with `optimizer.add_variable`. Optional."""

    def __call__(self, gradients, variables):
        raise NotImplementedError(
            f"{type(self).__name__} computes its sensitivities from the model "
            "(it needs `ks.SensitivityModel`), not from the training gradient."
        )

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def serialize(estimator):
    return keras.saving.serialize_keras_object(estimator)


def deserialize(config, custom_objects=None):
    return keras.saving.deserialize_keras_object(
        config, custom_objects=custom_objects
    )
