"""One test per entry of the slimming rules table (adding a rule adds a test).

Each case builds a tiny model `producer -> layer under test -> consumer`,
kills channel 1 of the producer (its kernel slice zero, its bias 0.25 so the
constant `act(0.25)` must be folded), slims it and checks the outputs are the
same and the parameter count drops by the hand-computed number.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402
from keras import ops  # noqa: E402

from keras_serene.rni.bounded_batch_normalization import (  # noqa: E402
    BoundedBatchNormalization,
)
from keras_serene.slimming import RULES  # noqa: E402
from keras_serene.slimming import slim  # noqa: E402

BIAS = 0.25


def _kill(model, name, channels, bias=BIAS):
    layer = model.get_layer(name)
    weights = layer.get_weights()
    axis = -2 if "Transpose" in type(layer).__name__ else -1
    index = [slice(None)] * weights[0].ndim
    index[axis] = list(channels)
    weights[0][tuple(index)] = 0.0
    if len(weights) > 1:
        weights[-1][list(channels)] = bias
    layer.set_weights(weights)


def _chain(rank, middle, consumer="conv", dead=(1,), bias=BIAS, width=4):
    """Input -> producer(width, kernel 1) -> middle -> consumer -> output.

    Per dead channel the producer loses 2 kernel entries + 1 bias (= 3) and
    a 1x1 conv or Dense(3) consumer loses 3 input rows: 6 in all.
    """
    spatial = {1: (6,), 2: (6, 6), 3: (4, 4, 4)}[rank]
    conv = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}[rank]
    inputs = keras.Input(spatial + (2,))
    x = conv(width, 1, name="producer")(inputs)
    for layer in middle if isinstance(middle, list) else [middle]:
        x = layer(x)
    if consumer == "conv":
        x = conv(3, 1, name="consumer")(x)
        x = layers.Flatten()(x)
    elif consumer == "dense":
        if len(x.shape) > 2:
            x = layers.Flatten()(x)
        x = layers.Dense(3, name="consumer")(x)
    model = keras.Model(inputs, x)
    _kill(model, "producer", dead, bias)
    return model


def _two(rank, merge, dead=(1,), widths=(4, 4)):
    """Two producers merged; channel 1 dead in both: 3 + 3 + 3 = 9."""
    inputs = keras.Input((6, 6, 2))
    a = layers.Conv2D(widths[0], 1, name="a")(inputs)
    b = layers.Conv2D(widths[1], 1, name="b")(inputs)
    x = merge([a, b])
    x = layers.Conv2D(3, 1, name="consumer")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    _kill(model, "a", dead, 0.5)
    _kill(model, "b", dead, 0.75)
    return model


def _producer(layer_fn, rank, drop_own):
    """The layer under test produces channels; consumer 1x1 conv (3 each)."""
    spatial = {1: (6,), 2: (6, 6), 3: (4, 4, 4)}[rank]
    conv = {1: layers.Conv1D, 2: layers.Conv2D, 3: layers.Conv3D}[rank]
    inputs = keras.Input(spatial + (2,))
    x = layer_fn()(inputs)
    x = conv(3, 1, name="consumer")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    _kill(model, "producer", (1,))
    return model, drop_own + 3


def _adapted_normalization():
    layer = layers.Normalization(axis=-1)
    layer.adapt(np.arange(16, dtype="float32").reshape(4, 4) + 1.0)
    return layer


def _op(fn):
    """A Keras operation applied to a symbolic tensor, as a `_chain` step."""
    return fn


def _two_ops(fn, dead=(1,)):
    return _two(2, lambda ab: fn(*ab), dead=dead)


def _application_layer(app, class_name, **kwargs):
    """A fresh instance of a layer class that ships in keras.applications."""
    model = app(weights=None, **kwargs)
    for layer in model.layers:
        for inner in getattr(layer, "layers", [layer]):
            if type(inner).__name__ == class_name:
                return type(inner)
    raise AssertionError(f"{class_name} not found in {app.__name__}")


def _layer_scale_case():
    cls = _application_layer(
        keras.applications.ConvNeXtTiny, "LayerScale", input_shape=(32, 32, 3)
    )
    return _chain(2, cls(0.5, 4)), 6 + 1


def _custom_scale_case():
    # The class from InceptionResNetV2 (a + b * scale); its build is slow,
    # so a lookalike subclass of the same name stands in: same rule by MRO.
    class CustomScaleLayer(layers.Layer):
        def __init__(self, scale, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

        def get_config(self):
            return {**super().get_config(), "scale": self.scale}

        def call(self, inputs):
            return inputs[0] + inputs[1] * self.scale

    return _two(2, CustomScaleLayer(0.17)), 9


OPS_CASES = {
    "ops.Add": lambda: (_two_ops(ops.add), 9),
    "ops.Subtract": lambda: (_two_ops(ops.subtract), 9),
    "ops.Multiply": lambda: (_two_ops(ops.multiply), 9),
    "ops.Maximum": lambda: (_two_ops(ops.maximum), 9),
    "ops.Minimum": lambda: (_two_ops(ops.minimum), 9),
    "ops.Divide": lambda: (_two_ops(ops.divide), 9),
    "ops.TrueDivide": lambda: (_two_ops(ops.true_divide), 9),
    "ops.Relu": lambda: (_chain(2, _op(ops.relu)), 6),
    "ops.Relu6": lambda: (_chain(2, _op(ops.relu6)), 6),
    "ops.Sigmoid": lambda: (_chain(2, _op(ops.sigmoid)), 6),
    "ops.HardSigmoid": lambda: (_chain(2, _op(ops.hard_sigmoid)), 6),
    "ops.HardSilu": lambda: (_chain(2, _op(ops.hard_silu)), 6),
    "ops.Silu": lambda: (_chain(2, _op(ops.silu)), 6),
    "ops.Gelu": lambda: (_chain(2, _op(ops.gelu)), 6),
    "ops.Elu": lambda: (_chain(2, _op(ops.elu)), 6),
    "ops.Selu": lambda: (_chain(2, _op(ops.selu)), 6),
    "ops.LeakyRelu": lambda: (_chain(2, _op(ops.leaky_relu)), 6),
    "ops.Softplus": lambda: (_chain(2, _op(ops.softplus)), 6),
    "ops.Tanh": lambda: (_chain(2, _op(ops.tanh)), 6),
    "ops.Exp": lambda: (_chain(2, _op(ops.exp)), 6),
    "ops.Negative": lambda: (_chain(2, _op(ops.negative)), 6),
    "ops.Absolute": lambda: (_chain(2, _op(ops.absolute)), 6),
    "ops.Square": lambda: (_chain(2, _op(ops.square)), 6),
    "ops.Clip": lambda: (_chain(2, _op(lambda x: ops.clip(x, -1, 0.1))), 6),
    "ops.Cast": lambda: (_chain(2, _op(lambda x: ops.cast(x, "float32"))), 6),
    "ops.Erf": lambda: (_chain(2, _op(ops.erf)), 6),
    "ops.StopGradient": lambda: (_chain(2, _op(ops.stop_gradient)), 6),
    # A zero constant (bias 0) survives padding: it goes.
    "ops.Pad": lambda: (
        _chain(
            2,
            _op(lambda x: ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])),
            bias=0,
        ),
        6,
    ),
    "ops.Concatenate": lambda: (
        _two(2, lambda ab: ops.concatenate(ab, axis=-1), widths=(4, 5)),
        12,
    ),
    "ops.Softmax": lambda: (_chain(2, _op(ops.softmax)), 0),
}


# Each entry: () -> (model, expected parameter drop).
CASES = {
    "InputLayer": lambda: (_chain(2, []), 6),
    "Dense": lambda: (
        _producer_dense(),
        5 + 1 + 3,  # kernel column (5) + bias, consumer row (3)
    ),
    "Conv1D": lambda: _producer(
        lambda: layers.Conv1D(4, 3, name="producer"), 1, 3 * 2 + 1
    ),
    "Conv2D": lambda: _producer(
        lambda: layers.Conv2D(4, 3, name="producer"), 2, 9 * 2 + 1
    ),
    "Conv3D": lambda: _producer(
        lambda: layers.Conv3D(4, 2, name="producer"), 3, 8 * 2 + 1
    ),
    "Conv1DTranspose": lambda: _producer(
        lambda: layers.Conv1DTranspose(4, 2, strides=2, name="producer"),
        1,
        2 * 2 + 1,
    ),
    "Conv2DTranspose": lambda: _producer(
        lambda: layers.Conv2DTranspose(4, 2, strides=2, name="producer"),
        2,
        4 * 2 + 1,
    ),
    "Conv3DTranspose": lambda: _producer(
        lambda: layers.Conv3DTranspose(4, 2, strides=2, name="producer"),
        3,
        8 * 2 + 1,
    ),
    # As consumer: depthwise 3 + pointwise 3 rows; producer 3.
    "SeparableConv1D": lambda: (
        _chain(1, layers.SeparableConv1D(3, 3), consumer=None),
        3 + 3 + 3,
    ),
    "SeparableConv2D": lambda: (
        _chain(2, layers.SeparableConv2D(3, 3), consumer=None),
        3 + 9 + 3,
    ),
    "DepthwiseConv1D": lambda: (_chain(1, layers.DepthwiseConv1D(3)), 6 + 4),
    "DepthwiseConv2D": lambda: (_chain(2, layers.DepthwiseConv2D(3)), 6 + 10),
    "BatchNormalization": lambda: (
        _chain(2, layers.BatchNormalization()),
        6 + 4,
    ),
    "LayerNormalization": lambda: (
        _chain(2, layers.LayerNormalization()),
        0,  # normalizes across channels: pinned
    ),
    # Channels 0 and 1 are group 0 of 2: the whole group goes (2 x (6 + 2)).
    "GroupNormalization": lambda: (
        _chain(2, layers.GroupNormalization(2), dead=(0, 1)),
        16,
    ),
    "Activation": lambda: (_chain(2, layers.Activation("relu6")), 6),
    "ReLU": lambda: (_chain(2, layers.ReLU()), 6),
    "LeakyReLU": lambda: (_chain(2, layers.LeakyReLU(0.2)), 6),
    "ELU": lambda: (_chain(2, layers.ELU()), 6),
    "PReLU": lambda: (_chain(2, layers.PReLU(shared_axes=[1, 2])), 6 + 1),
    "Softmax": lambda: (_chain(2, layers.Softmax()), 0),
    "Dropout": lambda: (_chain(2, layers.Dropout(0.5)), 6),
    "SpatialDropout1D": lambda: (_chain(1, layers.SpatialDropout1D(0.5)), 6),
    "SpatialDropout2D": lambda: (_chain(2, layers.SpatialDropout2D(0.5)), 6),
    "SpatialDropout3D": lambda: (_chain(3, layers.SpatialDropout3D(0.5)), 6),
    "GaussianNoise": lambda: (_chain(2, layers.GaussianNoise(0.1)), 6),
    "GaussianDropout": lambda: (_chain(2, layers.GaussianDropout(0.1)), 6),
    "AlphaDropout": lambda: (_chain(2, layers.AlphaDropout(0.1)), 6),
    "Identity": lambda: (_chain(2, layers.Identity()), 6),
    "MaxPooling1D": lambda: (_chain(1, layers.MaxPooling1D(2)), 6),
    "MaxPooling2D": lambda: (_chain(2, layers.MaxPooling2D(2)), 6),
    "MaxPooling3D": lambda: (_chain(3, layers.MaxPooling3D(2)), 6),
    "AveragePooling1D": lambda: (_chain(1, layers.AveragePooling1D(2)), 6),
    "AveragePooling2D": lambda: (
        _chain(2, layers.AveragePooling2D(2, padding="same")),
        6,
    ),
    "AveragePooling3D": lambda: (_chain(3, layers.AveragePooling3D(2)), 6),
    "GlobalMaxPooling1D": lambda: (
        _chain(1, layers.GlobalMaxPooling1D(), "dense"),
        6,
    ),
    "GlobalMaxPooling2D": lambda: (
        _chain(2, layers.GlobalMaxPooling2D(), "dense"),
        6,
    ),
    "GlobalMaxPooling3D": lambda: (
        _chain(3, layers.GlobalMaxPooling3D(), "dense"),
        6,
    ),
    "GlobalAveragePooling1D": lambda: (
        _chain(1, layers.GlobalAveragePooling1D(), "dense"),
        6,
    ),
    "GlobalAveragePooling2D": lambda: (
        _chain(2, layers.GlobalAveragePooling2D(), "dense"),
        6,
    ),
    "GlobalAveragePooling3D": lambda: (
        _chain(3, layers.GlobalAveragePooling3D(), "dense"),
        6,
    ),
    # Padding makes a non-zero constant position-dependent: a zero constant
    # (bias 0) goes, the 1x1 valid consumer then folds nothing.
    "ZeroPadding1D": lambda: (_chain(1, layers.ZeroPadding1D(), bias=0), 6),
    "ZeroPadding2D": lambda: (_chain(2, layers.ZeroPadding2D(), bias=0), 6),
    "ZeroPadding3D": lambda: (_chain(3, layers.ZeroPadding3D(), bias=0), 6),
    "Cropping1D": lambda: (_chain(1, layers.Cropping1D(1)), 6),
    "Cropping2D": lambda: (_chain(2, layers.Cropping2D(1)), 6),
    "Cropping3D": lambda: (_chain(3, layers.Cropping3D(1)), 6),
    "UpSampling1D": lambda: (_chain(1, layers.UpSampling1D()), 6),
    "UpSampling2D": lambda: (_chain(2, layers.UpSampling2D()), 6),
    "UpSampling3D": lambda: (_chain(3, layers.UpSampling3D()), 6),
    # 6x6 positions x 3 outputs of the Dense consumer + 3 producer entries.
    "Flatten": lambda: (_chain(2, layers.Flatten(), "dense"), 3 + 36 * 3),
    "Reshape": lambda: (
        _chain(2, [layers.Reshape((36, 4)), layers.Conv1D(3, 1)], None),
        6,
    ),
    "Add": lambda: (_two(2, layers.Add()), 9),
    "Subtract": lambda: (_two(2, layers.Subtract()), 9),
    "Multiply": lambda: (_two(2, layers.Multiply()), 9),
    "Average": lambda: (_two(2, layers.Average()), 9),
    "Maximum": lambda: (_two(2, layers.Maximum()), 9),
    "Minimum": lambda: (_two(2, layers.Minimum()), 9),
    # Channel 1 of both operands: 2 x (3 producer + 3 consumer rows).
    "Concatenate": lambda: (_two(2, layers.Concatenate(), widths=(4, 5)), 12),
    "Rescaling": lambda: (
        _chain(2, layers.Rescaling([1.0, 2.0, 3.0, 4.0], offset=0.5)),
        6,
    ),
    "Normalization": lambda: (_chain(2, _adapted_normalization()), 6 + 2),
    # gamma, moving mean, moving variance (no beta by default).
    "BoundedBatchNormalization": lambda: (
        _chain(2, BoundedBatchNormalization()),
        6 + 3,
    ),
    "LayerScale": _layer_scale_case,
    "CustomScaleLayer": _custom_scale_case,
    **OPS_CASES,
}


def _producer_dense():
    inputs = keras.Input((5,))
    x = layers.Dense(4, activation="relu", name="producer")(inputs)
    x = layers.Dense(3, name="consumer")(x)
    model = keras.Model(inputs, x)
    _kill(model, "producer", (1,))
    return model


def _assert_same_outputs(model, small, seed=0):
    shape = (3,) + tuple(model.input.shape[1:])
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    expected = np.asarray(model(x, training=False))
    got = np.asarray(small(x, training=False))
    assert got.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("class_name", sorted(RULES))
def test_rule(class_name):
    if class_name not in CASES:
        pytest.fail(f"rule {class_name!r} has no test case in CASES")
    keras.utils.set_random_seed(1)
    model, expected_drop = CASES[class_name]()
    small = slim(model)
    _assert_same_outputs(model, small)
    assert model.count_params() - small.count_params() == expected_drop
    used = {_key(op) for op in model.operations}
    assert class_name in used or class_name == "InputLayer"


def _key(operation):
    name = type(operation).__name__
    return name if isinstance(operation, layers.Layer) else f"ops.{name}"


def test_group_normalization_partial_group_is_kept():
    keras.utils.set_random_seed(1)
    model = _chain(2, layers.GroupNormalization(2), dead=(0,))
    small = slim(model)
    _assert_same_outputs(model, small)
    assert small.count_params() == model.count_params()


def test_zero_padding_keeps_position_dependent_constant():
    keras.utils.set_random_seed(1)
    model = _chain(2, layers.ZeroPadding2D(), bias=0.5)
    small = slim(model)
    _assert_same_outputs(model, small)
    assert small.count_params() == model.count_params()
    # A Dense consumer after Flatten absorbs the padded map exactly.
    model = _chain(2, layers.ZeroPadding2D(), "dense", bias=0.5)
    small = slim(model)
    _assert_same_outputs(model, small)
    assert model.count_params() - small.count_params() == 3 + 64 * 3


def test_softmax_activation_pins():
    keras.utils.set_random_seed(1)
    model = _chain(2, layers.Activation("softmax"))
    small = slim(model)
    _assert_same_outputs(model, small)
    assert small.count_params() == model.count_params()
