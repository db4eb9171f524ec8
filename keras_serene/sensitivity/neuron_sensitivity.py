"""Neuron sensitivity: SeReNe (Tartaglione, Bragagnolo, Odierna, Fiandrotti,
Grangetto, IEEE TNNLS 2022, arXiv 2102.03773, Sec. III, Eq. 6-9).

A neuron `n` (a Dense unit, a Conv1D/2D/3D output channel, a DepthwiseConv
channel, a BatchNormalization channel) gets one sensitivity, taken with
respect to its **pre-activation** `z_n`,

    S_n = sum_k a |d y_k / d z_n|,        a = 1/K,            (Eq. 6)

averaged over the batch and, for a convolution channel, over its spatial
positions (per channel; the authors' code takes channel 0's value for all
channels of a 4-D tensor, which we do not reproduce). Every parameter of the
neuron, bias included, shares it: `w_nj <- w_nj - decay * w_nj *
relu(1 - S_n)` (Eq. 9), so a neuron the outputs do not need shrinks as a
whole and can then be removed (`ks.slim`). Which weights belong to which
neuron comes from `keras_serene.core.neurons`.

Estimators (authors' code: `EIDOSLAB/SeReNe`,
`src/utilities/pruning/sensitivity/SERENE.py` and `NeuronLOBSTER.py`):

- `"lower_bound"` (default): one extra backward pass, seeded with `a` on every
  output of every sample (the code's `output.backward(ones)`):
  `S_n = mean_{b,p} |sum_k a dy_bk/dz_bnp|`, a lower bound of the exact S_n.
- `"full"`: K extra backward passes,
  `S_n = mean_{b,p} sum_k a |d(sum_b' y_b'k)/dz_bnp|`. (The code seeds each
  pass with the batch mean of y_k, which scales S by 1/batch; we keep the
  per-sample derivative, as for the lower bound, so that lower bound <=
  full holds.)
- `"local"`: no backward pass: `S_n = 1` when the neuron's mean
  pre-activation is > 0, else 0, so only neurons that are off on average
  decay.
- `"loss"` (NeuronLOBSTER): no extra pass: the loss gradient of the training
  step is also taken w.r.t. the pre-activations, `m_n = mean_{b,p}
  dL/dz_bnp`, smoothed by the code's momentum buffer `buf <- 0.9 buf + m_n`
  (the first step gives `buf = m_n`), and `S_n = |buf|`.

All four read pre-activations, so they train through `ks.SensitivityModel`;
`per_neuron = True` makes `ks.callbacks.SensitivityPruning` structured.
"""

import keras
from keras import ops

from keras_serene.core import distribute as _distribute
from keras_serene.core import layer_table
from keras_serene.core import neurons as neurons_lib
from keras_serene.core import preactivations as preactivations_lib
from keras_serene.sensitivity.output_sensitivity import single_output
from keras_serene.sensitivity.sensitivity import Sensitivity

ESTIMATORS = ("lower_bound", "full", "local", "loss")


def per_channel_mean(layer, values):
    """Mean of `values` (shaped like `z`) over every axis but the channel."""
    rank = len(values.shape)
    axis = layer_table.entry_for(layer).neuron_axis(layer, rank)
    axes = tuple(i for i in range(len(values.shape)) if i != axis)
    return ops.mean(ops.cast(values, "float32"), axis=axes)


def _state_key(weights):
    """Where a neuron layer's estimator state is kept: the path of its first
    neuron weight (`weights` is its `NeuronWeight` list)."""
    return weights[0].variable.path


@keras.saving.register_keras_serializable(package="keras_serene")
class NeuronSensitivity(Sensitivity):
    """Neuron sensitivity (SeReNe): one S per neuron, for all its weights.

    `S_n = sum_k |dy_k/dz_n| / K` with `z_n` the neuron's pre-activation,
    averaged over the batch and a channel's positions, is shared by every
    parameter of neuron `n` (its kernel slice and its bias), so the decay
    `w <- w - decay * w * relu(1 - S_n)` shrinks insensitive neurons as a
    whole. Train through `ks.SensitivityModel`, which reads the
    pre-activations; prune with `ks.callbacks.SensitivityPruning`, which is
    structured for this estimator (dead neurons masked, bias included).

    Example:

    ```python
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.1),
        sensitivity=ks.sensitivity.NeuronSensitivity("lower_bound"),
        decay=1e-4)
    trainer = ks.SensitivityModel(model)
    trainer.compile(optimizer=optimizer, loss=..., metrics=["accuracy"])
    trainer.fit(x, y, validation_split=0.1, epochs=50,
                callbacks=[ks.callbacks.SensitivityPruning(patience=10)])
    ks.summary(model)   # e.g. 784-300-100-10 -> 784-61-32-10
    ```

    Args:
        estimator: String. `"lower_bound"` (one extra backward pass, a lower
            bound of S), `"full"` (K extra passes), `"local"` (no pass: S is
            1 for neurons with a positive mean pre-activation, else 0) or
            `"loss"` (NeuronLOBSTER: |momentum-averaged mean dL/dz|, no
            extra pass). Defaults to `"lower_bound"`.
        momentum: Float in [0, 1). The momentum of the `"loss"` estimator's
            buffer (`buf <- momentum * buf + mean dL/dz`). Defaults to `0.9`.

    References:
        - [Tartaglione et al., 2022](https://arxiv.org/abs/2102.03773),
          Sec. III, Eq. 6-9.
    """

    requires_model = True
    per_neuron = True
    needs_preactivations = True

    def __init__(self, estimator="lower_bound", momentum=0.9):
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"NeuronSensitivity: `estimator` must be one of {ESTIMATORS}. "
                f"Received estimator={estimator!r}"
            )
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(
                "NeuronSensitivity: `momentum` must be a float. Received "
                f"momentum={momentum!r}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                "NeuronSensitivity: `momentum` must be in [0, 1). Received "
                f"momentum={momentum}"
            )
        self.estimator = estimator
        self.momentum = float(momentum)
        self._layout = []

    @property
    def needs_loss_gradients(self):
        return self.estimator == "loss"

    @property
    def uses_extra_pass(self):
        return self.estimator in ("lower_bound", "full")

    @property
    def vanishes_on_softmax(self):
        return self.estimator == "lower_bound"

    def probed_layers(self, model, variables):
        """The neuron layers of `model` holding a regularized variable.

        Raises a ValueError naming the layer and its class for a regularized
        variable outside the neuron table, or a layer whose pre-activation
        cannot be read.
        """
        table = neurons_lib.neuron_weights_by_variable(model)
        owners = {
            id(v): layer
            for layer in neurons_lib.iter_layers(model)
            for v in layer.trainable_weights
        }
        chosen = {}
        for variable in variables:
            weight = table.get(id(variable))
            if weight is None:
                layer = owners.get(id(variable))
                where = (
                    f"layer {layer.name!r} ({type(layer).__name__})"
                    if layer is not None
                    else "no layer of the model"
                )
                raise ValueError(
                    "NeuronSensitivity cannot handle the regularized weight "
                    f"{variable.path!r} of {where}: it holds no neurons in "
                    "`keras_serene.core.neurons.NEURON_WEIGHTS`. Exclude it "
                    "(`SensitivityOptimizer(exclude=[...])`), register the "
                    "layer with `keras_serene.core.neurons."
                    "register_neuron_weights`, or use sensitivity='loss'."
                )
            chosen[id(weight.layer)] = weight.layer
        layers = [
            layer
            for layer, _ in neurons_lib.neuron_layers(model)
            if id(layer) in chosen
        ]
        for layer in layers:
            preactivations_lib.check_probeable(layer, "NeuronSensitivity")
        return layers

    def bind(self, model, variables):
        """Checks `model` and records its neuron layers (for the `"loss"`
        estimator's buffers). Called by `ks.SensitivityModel.compile`."""
        outputs = getattr(model, "outputs", None)
        if outputs is not None and len(outputs) != 1:
            single_output(outputs, "NeuronSensitivity")
        super().bind(model, variables)
        probed = {id(la) for la in self.probed_layers(model, variables)}
        self._layout = []
        for layer, weights in neurons_lib.neuron_layers(model):
            if id(layer) in probed:
                count = neurons_lib.num_neurons(
                    weights[0].kind, weights[0].variable.shape
                )
                self._layout.append((_state_key(weights), count))

    def build(self, optimizer, variables):
        """The `"loss"` estimator's state: one momentum buffer per probed
        neuron layer, created as optimizer state (saved with it) and keyed
        by the layer's first neuron weight (`variable.path`)."""
        if self.estimator != "loss":
            return {}
        return {
            key: optimizer.add_variable(
                shape=(count,),
                initializer="zeros",
                dtype="float32",
                name=f"{key.replace('/', '_')}_neuron_sensitivity",
            )
            for key, count in self._layout
        }

    def from_model(self, model_pass):
        """S for the regularized variables of one `ks.SensitivityModel`
        step: one per-neuron vector per layer, broadcast to its weights.

        `model_pass` carries `variables`, `regularized`, `outputs`,
        `state` (what `build` returned), `preactivations` (list of
        `(layer, z, neuron weights)`),
        `loss_gradients` (dL/dz, aligned), `recording()`,
        `gradient(target, sources)` and `replica_mean(tensors)` (see
        `keras_serene.sensitivity.sensitivity_model`).
        """
        layers = [layer for layer, _, _ in model_pass.preactivations]
        zs = [z for _, z, _ in model_pass.preactivations]
        if self.estimator == "local":
            means = model_pass.replica_mean(
                [per_channel_mean(la, z) for la, z in zip(layers, zs)]
            )
            values = [ops.cast(m > 0, "float32") for m in means]
        elif self.estimator == "loss":
            means = model_pass.replica_mean(
                [
                    per_channel_mean(la, g)
                    for la, g in zip(layers, model_pass.loss_gradients)
                ]
            )
            values = self._update_buffers(
                model_pass.state,
                [ws for _, _, ws in model_pass.preactivations],
                means,
            )
        else:
            values = self._output_sensitivities(model_pass, layers, zs)
        return self._broadcast(model_pass, values)

    def _output_sensitivities(self, model_pass, layers, zs):
        with model_pass.recording():
            y = single_output(model_pass.outputs, "NeuronSensitivity")
            alpha = 1.0 / float(y.shape[-1])
            if self.estimator == "lower_bound":
                seeds = [alpha * ops.sum(y)]
            else:
                seeds = [alpha * ops.sum(y[:, k]) for k in range(y.shape[-1])]
        stats = None
        for seed in seeds:
            grads = model_pass.gradient(seed, zs)
            terms = [
                per_channel_mean(la, ops.abs(g)) for la, g in zip(layers, grads)
            ]
            stats = (
                terms
                if stats is None
                else [s + t for s, t in zip(stats, terms)]
            )
        return model_pass.replica_mean(stats)

    def _update_buffers(self, state, layer_weights, means):
        buffers = []
        for weights in layer_weights:
            buffer = state.get(_state_key(weights))
            if buffer is None:
                raise ValueError(
                    "NeuronSensitivity(estimator='loss') has no buffer for "
                    f"layer {weights[0].layer.name!r}: compile "
                    "`ks.SensitivityModel` "
                    "with a fresh `ks.SensitivityOptimizer`."
                )
            buffers.append(buffer)
        new = [
            ops.cast(self.momentum, "float32") * ops.convert_to_tensor(b) + m
            for b, m in zip(buffers, means)
        ]
        _distribute.assign_all(buffers, new)
        return [ops.abs(v) for v in new]

    def _broadcast(self, model_pass, values):
        result = [None] * len(model_pass.variables)
        index = {id(v): i for i, v in enumerate(model_pass.variables)}
        for (_, _, weights), value in zip(model_pass.preactivations, values):
            for weight in weights:
                i = index.get(id(weight.variable))
                if i is None or not model_pass.regularized[i]:
                    continue
                result[i] = neurons_lib.broadcast_neurons(
                    value, weight.kind, weight.variable.shape
                )
        return result

    def get_config(self):
        return {"estimator": self.estimator, "momentum": self.momentum}
