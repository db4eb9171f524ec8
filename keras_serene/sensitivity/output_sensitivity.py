"""Output sensitivity (Tartaglione, Lepsøy, Fiandrotti, Francini, NeurIPS
2018, arXiv 1810.11764, Eq. 4-9).

The sensitivity of the network output to a parameter `w` is

    S(y, w) = sum_k a_k |d y_k / d w|                       (Eq. 4, 6)

with `a_k = 1/K` ("unspecific", every output counts) or `a_k = y*_k`, the
one-hot label ("specific", only the true class's output counts). The
sensitivity optimizer then applies `w <- w - decay * w * relu(1 - S)`
(Eq. 9), so a parameter that barely moves the outputs decays to zero.

Which `y`: the model's own output tensor, as it is: the logits when the model
ends without a softmax (as the lab's models do), the probabilities when it
ends with one. On a softmax the unspecific one-pass bound vanishes
identically (`sum_k y_k = 1`): `bind` warns and names the fix (logits, or
`exact=True`, or `mode="specific"`). A model must have a single output; it
is flattened to `(batch, K)`.

Batch: the paper defines S for one input. We estimate it on the minibatch
with the **batch mean** of the outputs, `ybar_k = mean_b a_bk y_bk`, so S
does not grow with the batch size, as LOBSTER's S is the minibatch-mean loss
gradient (and SeReNe's code averages its neuron sensitivities over the
batch). Then:

- `exact=False` (default): one extra backward pass, from the scalar
  `sum_k ybar_k`: `S = |d(sum_k ybar_k) / dw|`. By the triangle inequality it
  is a **lower bound** of the exact S, so it shrinks a little harder.
- `exact=True`: K extra backward passes, `S = sum_k |d ybar_k / dw|`, the
  absolute value inside the sum.

Both need the extra pass that `ks.SensitivityModel` runs; a plain
`model.fit` fails at its first step with an error naming it.
"""

import keras
from keras import ops

from keras_serene.sensitivity.sensitivity import Sensitivity

MODES = ("unspecific", "specific")


def single_output(outputs, caller):
    """The one output tensor of a model, flattened to `(batch, K)`."""
    flat = keras.tree.flatten(outputs)
    if len(flat) != 1:
        raise ValueError(
            f"{caller}: the model has {len(flat)} output tensors; the "
            "sensitivity S = sum_k a_k |dy_k/dw| needs a single output "
            "`y` (no weighting a_k across several outputs is defined). Give "
            "the model one output (e.g. concatenate them), or use "
            "sensitivity='loss'."
        )
    y = ops.cast(flat[0], "float32")
    if len(y.shape) == 0:
        raise ValueError(f"{caller}: the model output is a scalar.")
    k = 1
    for dim in y.shape[1:]:
        if dim is None:
            raise ValueError(
                f"{caller}: the model output shape {tuple(y.shape)} has an "
                "undefined non-batch dimension; K must be known."
            )
        k *= int(dim)
    return ops.reshape(y, (-1, k))


def label_weights(labels, k, caller):
    """The specific weights `a_bk`: the one-hot (or soft) labels."""
    if labels is None:
        raise ValueError(
            f"{caller}: mode='specific' weighs the outputs by the one-hot "
            "label, but the data has no labels."
        )
    labels = keras.tree.flatten(labels)
    if len(labels) != 1:
        raise ValueError(
            f"{caller}: mode='specific' needs one label tensor; received "
            f"{len(labels)}."
        )
    labels = labels[0]
    shape = tuple(labels.shape)
    if len(shape) == 1:
        labels = ops.expand_dims(labels, -1)
        shape = shape + (1,)
    if shape[-1] == 1 and k > 1:
        index = ops.cast(ops.reshape(labels, (-1,)), "int32")
        return ops.one_hot(index, k, dtype="float32")
    if shape[-1] == k:
        return ops.reshape(ops.cast(labels, "float32"), (-1, k))
    raise ValueError(
        f"{caller}: labels of shape {shape} match neither integer class "
        f"labels nor one-hot labels for K={k} outputs."
    )


@keras.saving.register_keras_serializable(package="keras_serene")
class OutputSensitivity(Sensitivity):
    """Output sensitivity `S = sum_k a_k |dy_k/dw|` (NeurIPS 2018).

    How much the model's output (logits, for a model without a final
    softmax) moves with each parameter, estimated on the minibatch mean of
    the outputs. `mode="unspecific"` weighs every output by `1/K`;
    `mode="specific"` by the one-hot label, so only the true class counts.
    `exact=False` runs one extra backward pass and returns the lower bound
    `|d(sum_k a_k ybar_k)/dw|`; `exact=True` runs K passes and returns
    `sum_k a_k |d ybar_k/dw|`. Train through `ks.SensitivityModel`, which
    runs the extra pass.

    Example:

    ```python
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.1),
        sensitivity=ks.sensitivity.OutputSensitivity(mode="unspecific"),
        decay=1e-4)
    trainer = ks.SensitivityModel(model)
    trainer.compile(optimizer=optimizer, loss=..., metrics=["accuracy"])
    trainer.fit(x, y, validation_split=0.1, epochs=10)  # trains `model`
    ```

    Args:
        mode: String. `"unspecific"` (`a_k = 1/K`) or `"specific"`
            (`a_k` = the one-hot label; integer or one-hot labels accepted).
            Defaults to `"unspecific"`.
        exact: Bool. False: one extra pass, a lower bound of S. True: K
            extra passes, the absolute value inside the sum over outputs.
            Defaults to `False`.

    References:
        - [Tartaglione et al., 2018](https://arxiv.org/abs/1810.11764),
          Eq. 4-9.
    """

    requires_model = True
    uses_extra_pass = True

    def __init__(self, mode="unspecific", exact=False):
        if mode not in MODES:
            raise ValueError(
                f"OutputSensitivity: `mode` must be one of {MODES}. "
                f"Received mode={mode!r}"
            )
        if not isinstance(exact, bool):
            raise TypeError(
                "OutputSensitivity: `exact` must be a bool. Received "
                f"exact={exact!r}"
            )
        self.mode = mode
        self.exact = exact

    @property
    def vanishes_on_softmax(self):
        return self.mode == "unspecific" and not self.exact

    def bind(self, model, variables):
        """Checks that `model` has one output to differentiate, and warns
        when the one-pass unspecific bound vanishes on its softmax."""
        outputs = getattr(model, "outputs", None)
        if outputs is not None and len(outputs) != 1:
            single_output(outputs, "OutputSensitivity")
        super().bind(model, variables)

    def weights(self, y, labels):
        """`a_bk` for outputs `y` of shape `(batch, K)`."""
        k = y.shape[-1]
        if self.mode == "specific":
            return label_weights(labels, k, "OutputSensitivity")
        return ops.ones_like(y) / float(k)

    def from_model(self, model_pass):
        """S for the regularized variables of one `ks.SensitivityModel`
        step (None for the others).

        `model_pass` carries `variables`, `regularized` (bools), `outputs`,
        `labels`, `recording()`, `gradient(target, sources)` and
        `replica_mean(tensors)` (see
        `keras_serene.sensitivity.sensitivity_model`).
        """
        targets = [
            v for v, r in zip(model_pass.variables, model_pass.regularized) if r
        ]
        if not targets:
            return [None] * len(model_pass.variables)
        with model_pass.recording():
            y = single_output(model_pass.outputs, "OutputSensitivity")
            weighted = self.weights(y, model_pass.labels) * y
            if self.exact:
                scalars = [ops.mean(weighted[:, k]) for k in range(y.shape[-1])]
            else:
                scalars = [ops.mean(ops.sum(weighted, axis=1))]
        sensitivities = None
        for scalar in scalars:
            grads = model_pass.replica_mean(
                model_pass.gradient(scalar, targets)
            )
            terms = [ops.abs(ops.cast(g, "float32")) for g in grads]
            sensitivities = (
                terms
                if sensitivities is None
                else [s + t for s, t in zip(sensitivities, terms)]
            )
        result = iter(sensitivities)
        return [next(result) if r else None for r in model_pass.regularized]

    def get_config(self):
        return {"mode": self.mode, "exact": self.exact}
