"""The one layer table: one test per row and consumer (adding a row adds tests).

`core/layer_table.py` rows are read by the slimmer (`channel_rule`, tested
per row in `tests/slimming/test_slimming_rules.py`), `core/neurons.py`
(`neuron_weights`), `core/preactivations.py` (`linear_part`) and the
optimizer (`regularized_weights`). Each row here is checked on a real layer
instance: the neuron weights exist and line up with the layer's outputs,
the linear part plus bias and activation reproduces the layer, the
regularized weights exist.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

from keras_serene.core import layer_table  # noqa: E402
from keras_serene.core import neurons  # noqa: E402
from keras_serene.core import preactivations  # noqa: E402
from keras_serene.core.channel_rules import Passes  # noqa: E402
from keras_serene.rni.bounded_batch_normalization import (  # noqa: E402
    BoundedBatchNormalization,
)
from keras_serene.slimming import RULES  # noqa: E402

# Class name -> (layer, input shape): a small built instance of each row.
INSTANCES = {
    "Dense": lambda: (layers.Dense(3, activation="relu"), (2, 4)),
    "EinsumDense": lambda: (
        layers.EinsumDense("ab,bc->ac", (3,), bias_axes="c"),
        (2, 4),
    ),
    "Conv1D": lambda: (layers.Conv1D(3, 2, activation="tanh"), (2, 5, 2)),
    "Conv2D": lambda: (layers.Conv2D(3, 2, activation="relu"), (2, 5, 5, 2)),
    "Conv3D": lambda: (layers.Conv3D(3, 2), (2, 4, 4, 4, 2)),
    "Conv1DTranspose": lambda: (layers.Conv1DTranspose(3, 2), (2, 5, 2)),
    "Conv2DTranspose": lambda: (
        layers.Conv2DTranspose(3, 2, activation="relu"),
        (2, 4, 4, 2),
    ),
    "Conv3DTranspose": lambda: (layers.Conv3DTranspose(3, 2), (2, 3, 3, 3, 2)),
    "SeparableConv1D": lambda: (layers.SeparableConv1D(3, 2), (2, 5, 2)),
    "SeparableConv2D": lambda: (
        layers.SeparableConv2D(3, 2, activation="relu"),
        (2, 5, 5, 2),
    ),
    "DepthwiseConv1D": lambda: (layers.DepthwiseConv1D(2), (2, 5, 3)),
    "DepthwiseConv2D": lambda: (
        layers.DepthwiseConv2D(2, activation="relu"),
        (2, 5, 5, 3),
    ),
    "BatchNormalization": lambda: (layers.BatchNormalization(), (2, 4, 3)),
    "LayerNormalization": lambda: (layers.LayerNormalization(), (2, 4, 3)),
    "GroupNormalization": lambda: (layers.GroupNormalization(3), (2, 4, 3)),
}

NEURON_ROWS = sorted(layer_table.FieldView("neuron_weights"))
LINEAR_ROWS = sorted(layer_table.FieldView("linear_part"))
REGULARIZED_ROWS = sorted(layer_table.FieldView("regularized_weights"))


def _built(name):
    if name not in INSTANCES:
        pytest.fail(f"layer-table row {name!r} has no instance in INSTANCES")
    layer, shape = INSTANCES[name]()
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    y = np.asarray(layer(x))
    return layer, x, y


@pytest.mark.parametrize("name", NEURON_ROWS)
def test_neuron_weights_line_up_with_outputs(name):
    layer, x, y = _built(name)
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    found = dict(neurons.neuron_layers(model))
    assert layer in found
    declared = layer_table.entry_for(layer).neuron_weights
    names = {w.variable.path.split("/")[-1] for w in found[layer]}
    assert names == set(declared) & {v.name for v in layer.weights}
    axis = layer_table.entry_for(layer).neuron_axis(layer, y.ndim)
    for weight in found[layer]:
        assert weight.num_neurons == y.shape[axis]


@pytest.mark.parametrize("name", LINEAR_ROWS)
def test_linear_part_reproduces_the_layer(name):
    layer, x, y = _built(name)
    z = preactivations.linear_part(layer, x)
    np.testing.assert_allclose(
        np.asarray(layer.activation(z)), y, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("name", REGULARIZED_ROWS)
def test_regularized_weights_exist(name):
    layer, _, _ = _built(name)
    names = {v.name for v in layer.weights}
    declared = layer_table.regularized_weights(layer)
    assert set(declared) & names == names - {"moving_mean", "moving_variance"}


def test_lookup_walks_the_class_hierarchy_field_by_field():
    class MyDense(layers.Dense):
        pass

    entry = layer_table.entry_for(MyDense(2))
    assert entry.key == "Dense" and entry.channel_rule is RULES["Dense"]
    # BoundedBatchNormalization overrides only the channel rule.
    bounded = layer_table.entry_for(BoundedBatchNormalization())
    plain = layer_table.entry_for(layers.BatchNormalization())
    assert bounded.channel_rule.constant_weight is None
    assert plain.channel_rule.constant_weight == "gamma"
    assert bounded.neuron_weights == plain.neuron_weights
    assert bounded.regularized_weights == ("gamma", "beta")
    assert layer_table.entry_for(keras.layers.Layer()) is None
    assert layer_table.regularized_weights(keras.layers.Layer()) == (
        layer_table.DEFAULT_REGULARIZED
    )


def test_neuron_axis():
    conv = layers.Conv2D(2, 1, data_format="channels_first")
    assert layer_table.entry_for(conv).neuron_axis(conv, 4) == 1
    bn = layers.BatchNormalization(axis=1)
    assert layer_table.entry_for(bn).neuron_axis(bn, 4) == 1
    dense = layers.Dense(2)
    assert layer_table.entry_for(dense).neuron_axis(dense, 3) == 2
    assert layer_table.entry_for(dense).neuron_axis(dense) == -1


def test_one_registration_serves_every_consumer():
    class Scaled(layers.Layer):
        def build(self, shape):
            self.kernel = self.add_weight(shape=(shape[-1],), name="kernel")

        def call(self, x):
            return x * self.kernel

    rule = Passes(channel_weights={"kernel": 0}, constant_weight="kernel")
    try:
        layer_table.register_layer(
            Scaled,
            channel_rule=rule,
            neuron_weights={"kernel": "vector"},
            regularized_weights=("kernel",),
        )
        assert RULES["Scaled"] is rule
        assert neurons.NEURON_WEIGHTS["Scaled"] == {"kernel": "vector"}
        assert layer_table.regularized_weights(Scaled()) == ("kernel",)
        assert "Scaled" not in preactivations.LINEAR_PARTS
        model = keras.Sequential([keras.Input((3,)), Scaled()])
        [(layer, weights)] = list(neurons.neuron_layers(model))
        assert weights[0].num_neurons == 3
    finally:
        for field in ("channel_rule", "neuron_weights", "regularized_weights"):
            layer_table.unregister_field("Scaled", field)
    assert layer_table.entry_for(Scaled()) is None


def test_registration_errors_name_the_argument():
    with pytest.raises(ValueError, match="neuron kind 'rows'"):
        layer_table.register_layer("X", neuron_weights={"kernel": "rows"})
    with pytest.raises(TypeError, match="`channel_rule` must be a ChannelRule"):
        layer_table.register_layer("X", channel_rule="passes")
    with pytest.raises(TypeError, match="unknown fields"):
        layer_table.register_layer("X", channel_axis=1)
    assert layer_table.entry_for(keras.layers.Layer()) is None
