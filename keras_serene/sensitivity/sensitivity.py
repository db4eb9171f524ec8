"""The sensitivity estimator protocol.

A sensitivity `S` says how much a quantity (the loss, the outputs) depends on
a parameter. The sensitivity optimizer decays each regularized parameter by
its insensitivity, `w <- w - decay * w * relu(1 - S)` (NeurIPS 2018, arXiv
1810.11764, Eq. 9; LOBSTER, arXiv 2011.09905, Eq. 11). Estimators only
*compute* S; `ks.SensitivityOptimizer` is the one place that applies it
(optax's split between a transform's statistics and its application).

An estimator returns, for each regularized variable, a tensor that broadcasts
to the variable's shape (per entry, or per neuron). Everything the train step
needs to know about an estimator is a declared attribute of `Sensitivity`
(no `hasattr` probing), and an estimator holds no training state: what it
carries from step to step (NeuronLOBSTER's momentum buffers) is optimizer
state that `build` creates and returns, and that comes back to it, optax
style, as `model_pass.state` (`ks.SensitivityModel`) or `state`
(`__call__`).
"""

import warnings

import keras

from keras_serene import KerasSereneWarning
from keras_serene.sensitivity.degenerate import softmax_output_layer


class Sensitivity:
    """Base class of the sensitivity estimators.

    Subclasses implement `__call__(gradients, variables, state)` (estimators
    that reuse the training gradient) or `from_model(model_pass)`
    (estimators that need `ks.SensitivityModel`), plus `get_config`, and
    declare what they need with the class attributes below.

    Attributes:
        requires_model: Bool. S needs `ks.SensitivityModel`'s train step
            (the outputs, the pre-activations), not just the gradient.
        per_neuron: Bool. One S per neuron, shared by its weights; makes
            `ks.callbacks.SensitivityPruning` structured by default.
        needs_preactivations: Bool. The train step must read the neuron
            layers' pre-activations (`model_pass.preactivations`).
        needs_loss_gradients: Bool. The train step must also take the loss
            gradient w.r.t. the pre-activations (`model_pass.loss_gradients`).
        uses_extra_pass: Bool. S needs backward passes from the outputs
            beyond the training one (the tape is kept for them).
        vanishes_on_softmax: Bool. S is identically zero when the model ends
            in a softmax (the one-pass bound differentiates `sum_k y_k = 1`);
            `bind` warns.
    """

    requires_model = False
    per_neuron = False
    needs_preactivations = False
    needs_loss_gradients = False
    uses_extra_pass = False
    vanishes_on_softmax = False

    def bind(self, model, variables):
        """Checks `model` before training (`ks.SensitivityModel.compile`).

        The base class warns when `vanishes_on_softmax` and the model ends
        in a softmax. Subclasses call `super().bind(model, variables)`.
        """
        if not self.vanishes_on_softmax:
            return
        layer = softmax_output_layer(model)
        if layer is not None:
            warnings.warn(
                f"{self!r}: model {model.name!r} ends in a softmax (layer "
                f"{layer.name!r}), so sum_k y_k = 1 and this one-pass bound "
                "of S is identically zero: training would be a plain decay. "
                "End the model with logits (activation=None, and "
                "`from_logits=True` in the loss), or use the exact form "
                "(`OutputSensitivity(exact=True)`, "
                "`NeuronSensitivity('full')`) or mode='specific'.",
                KerasSereneWarning,
                stacklevel=3,
            )

    def build(self, optimizer, variables):
        """Creates the estimator's optimizer state and returns it.

        Args:
            optimizer: the `SensitivityOptimizer` being built
                (`optimizer.add_variable` creates state it saves).
            variables: the regularized variables.

        Returns:
            A dict of state variables (empty by default), handed back to the
            estimator at every step.
        """
        return {}

    def __call__(self, gradients, variables, state=None):
        raise NotImplementedError(
            f"{type(self).__name__} computes its sensitivities from the model "
            "(it needs `ks.SensitivityModel`), not from the training gradient."
        )

    def from_model(self, model_pass):
        raise NotImplementedError(
            f"{type(self).__name__} computes its sensitivities from the "
            "training gradient; it does not need `ks.SensitivityModel`."
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
