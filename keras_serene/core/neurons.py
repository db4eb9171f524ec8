"""Which weights belong to which neuron (the layer table's `neuron_weights`).

A *neuron* is a Dense unit or a convolution output channel (SeReNe, TNNLS
2022, arXiv 2102.03773, Sec. III: "all parameters of the neuron"; NEq,
NeurIPS 2022, Sec. 3: a BatchNormalization channel is a neuron too). For every
supported layer class, the layer table (`core/layer_table.py`, looked up
through the class hierarchy) names the weights that hold neurons and
how each weight's shape lines up with the neuron vector:

- `"last"`: neurons on the last axis (Dense `[in, out]`, Conv `[..., in, out]`,
  a SeparableConv pointwise kernel).
- `"second_last"`: neurons on the axis before the last (ConvTranspose
  kernels are `[..., out, in]`).
- `"depthwise"`: the last two axes `[in, multiplier]` flatten to the
  `in * multiplier` output channels (TensorFlow's channel order).
- `"vector"`: a per-neuron vector (bias, BatchNormalization gamma/beta).

`neuron_shape(kind, shape)` is the shape a per-neuron vector reshapes to so
that it broadcasts against the weight: the sensitivity optimizer, the
structured pruning callback, NEq and `ks.summary` all use it. Add a layer
class with `register_neuron_weights`.
"""

import keras
import numpy as np

from keras_serene.core import layer_table

#: Layer class name -> {weight name: kind}: the `neuron_weights` field of
#: the layer table (`core/layer_table.py`), read and written as a dict.
NEURON_WEIGHTS = layer_table.FieldView("neuron_weights")

KINDS = layer_table.NEURON_KINDS


def register_neuron_weights(layer_class_name, weights):
    """Declares which weights of a layer class hold neurons.

    Sets the `neuron_weights` field of the class's layer-table row
    (`keras_serene.core.layer_table.register_layer`).

    Args:
        layer_class_name: String or class. The layer's class (name).
        weights: Dict. Weight name (the last part of `variable.path`) to
            one of `"last"`, `"second_last"`, `"depthwise"`, `"vector"`.
    """
    layer_table.register_layer(layer_class_name, neuron_weights=dict(weights))


def neuron_shape(kind, shape):
    """Broadcast shape of a per-neuron vector against a weight of `shape`."""
    shape = tuple(shape)
    if kind == "vector":
        return shape
    if kind == "last":
        return (1,) * (len(shape) - 1) + shape[-1:]
    if kind == "second_last":
        return (1,) * (len(shape) - 2) + (shape[-2], 1)
    if kind == "depthwise":
        return (1,) * (len(shape) - 2) + shape[-2:]
    raise ValueError(f"Unknown neuron kind {kind!r}; expected one of {KINDS}.")


def num_neurons(kind, shape):
    """Number of neurons a weight of `shape` holds."""
    return int(np.prod(neuron_shape(kind, shape)))


def per_neuron(values, kind, reduce="max"):
    """Reduces a weight-shaped numpy array to a flat per-neuron vector."""
    values = np.asarray(values)
    target = neuron_shape(kind, values.shape)
    axes = tuple(i for i, b in enumerate(target) if b == 1)
    reducer = {
        "max": np.max,
        "sum": np.sum,
        "mean": np.mean,
        "any": np.any,
        "all": np.all,
    }[reduce]
    out = reducer(values, axis=axes, keepdims=True) if axes else values
    return np.reshape(out, (-1,))


def broadcast_neurons(vector, kind, shape):
    """Reshapes a per-neuron vector (keras tensor) to broadcast to `shape`."""
    return keras.ops.reshape(vector, neuron_shape(kind, shape))


class NeuronWeight:
    """One weight of a layer that holds neurons (layer, variable, kind)."""

    __slots__ = ("layer", "variable", "kind")

    def __init__(self, layer, variable, kind):
        self.layer = layer
        self.variable = variable
        self.kind = kind

    @property
    def num_neurons(self):
        return num_neurons(self.kind, self.variable.shape)

    def __repr__(self):
        return (
            f"NeuronWeight({self.layer.name}/{_short_name(self.variable)},"
            f" kind={self.kind!r})"
        )


def _short_name(variable):
    return variable.path.split("/")[-1]


def iter_layers(model):
    """Yields every layer of `model`, recursing into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) or (
            hasattr(layer, "layers")
            and layer.layers
            and not isinstance(layer, keras.layers.InputLayer)
        ):
            yield from iter_layers(layer)
        else:
            yield layer


def neuron_layers(model):
    """Yields `(layer, [NeuronWeight, ...])` for each layer holding neurons.

    A layer appears when its class (or a parent class) is in
    `NEURON_WEIGHTS`; only weights that exist are listed (no bias when
    `use_bias=False`, no beta when `center=False`).
    """
    for layer in iter_layers(model):
        table = _table_for(layer)
        if table is None:
            continue
        weights = []
        for variable in layer.weights:
            kind = table.get(_short_name(variable))
            if kind is not None and variable.trainable:
                weights.append(NeuronWeight(layer, variable, kind))
        if weights:
            yield layer, weights


def neuron_weights_by_variable(model):
    """Maps `id(variable)` to its `NeuronWeight` for every neuron weight."""
    return {
        id(w.variable): w
        for _, weights in neuron_layers(model)
        for w in weights
    }


def _table_for(layer):
    entry = layer_table.entry_for(layer)
    return None if entry is None else entry.neuron_weights


def alive_neurons(weights):
    """Per-neuron bools: True where some incoming weight is nonzero.

    `weights` is the `NeuronWeight` list of one layer (see `neuron_layers`).
    Incoming weights are the kernels (every kind but `"vector"`); returns
    None for a layer without any (BatchNormalization).
    """
    live = None
    for w in weights:
        if w.kind == "vector":
            continue
        nonzero = per_neuron(
            keras.ops.convert_to_numpy(w.variable) != 0, w.kind, "any"
        )
        live = nonzero if live is None else live | nonzero
    return live
