"""Tests for `ks.layers.BoundedBatchNormalization` and its plain-BN export."""

import json
import math

import keras
import numpy as np
import pytest
from harness import assert_config_round_trip
from harness import assert_saving_round_trip

import keras_serene as ks
from keras_serene.rni import bounded_batch_normalization
from keras_serene.rni.bounded_batch_normalization import BOUNDED_SCALE_TAG

# Two samples, two channels: mean [2, 4], variance [1, 4].
X = np.array([[1.0, 2.0], [3.0, 6.0]], dtype="float32")
# sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4.
W = np.array([0.0, math.log(3.0)], dtype="float32")
EPS = 1e-3


def _layer(**kwargs):
    layer = ks.layers.BoundedBatchNormalization(
        momentum=0.9, epsilon=EPS, **kwargs
    )
    layer.build((None, 2))
    layer.gamma.assign(W)
    return layer


def _small_model(center=False, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = ks.layers.BoundedBatchNormalization(
        center=center,
        gamma_regularizer=ks.regularizers.RecedingImportance(1e-3, 3.0),
        name="bbn",
    )(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bbn")
    # Non-trivial moving statistics so that inference is not the identity.
    bn.moving_mean.assign([0.1, -0.2, 0.3, 0.0])
    bn.moving_variance.assign([0.5, 2.0, 1.0, 1.5])
    if center:
        bn.beta.assign([0.1, 0.2, -0.3, 0.4])
    return model


def _inputs(n=3, seed=1):
    return (
        np.random.default_rng(seed).normal(size=(n, 6, 6, 2)).astype("float32")
    )


def test_training_forward_is_bn_with_sigmoid_scale():
    layer = _layer()
    y = keras.ops.convert_to_numpy(layer(X, training=True))
    # By hand: (x - mean) / sqrt(var + eps) times [1/2, 3/4].
    expected = np.array(
        [
            [
                0.5 * -1.0 / math.sqrt(1.0 + EPS),
                0.75 * -2.0 / math.sqrt(4 + EPS),
            ],
            [0.5 * 1.0 / math.sqrt(1.0 + EPS), 0.75 * 2.0 / math.sqrt(4 + EPS)],
        ]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    # Moving statistics: 0.9 * init + 0.1 * batch statistic.
    np.testing.assert_allclose(layer.moving_mean.numpy(), [0.2, 0.4], 1e-6)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), [1.0, 1.3], rtol=1e-6
    )


def test_inference_forward_uses_moving_statistics_and_beta():
    layer = _layer(center=True)
    layer.moving_mean.assign([1.0, -1.0])
    layer.moving_variance.assign([3.0, 0.5])
    layer.beta.assign([0.25, -0.5])
    y = keras.ops.convert_to_numpy(layer(X, training=False))
    expected = np.array(
        [
            [
                0.5 * 0.0 / math.sqrt(3 + EPS) + 0.25,
                0.75 * 3.0 / math.sqrt(0.5 + EPS) - 0.5,
            ],
            [
                0.5 * 2.0 / math.sqrt(3 + EPS) + 0.25,
                0.75 * 7.0 / math.sqrt(0.5 + EPS) - 0.5,
            ],
        ]
    )
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.importance), [0.5, 0.75], rtol=1e-6
    )


def test_masked_statistics_ignore_masked_steps():
    layer = ks.layers.BoundedBatchNormalization(epsilon=EPS)
    x = np.array([[[1.0], [3.0], [100.0]]], dtype="float32")  # (1, 3, 1)
    mask = np.array([[True, True, False]])
    layer.build(x.shape)
    layer.gamma.assign([0.0])
    y = keras.ops.convert_to_numpy(layer(x, training=True, mask=mask))
    # Mean 2 and variance 1 over the two unmasked steps.
    np.testing.assert_allclose(
        y[0, :2, 0],
        [-0.5 / math.sqrt(1 + EPS), 0.5 / math.sqrt(1 + EPS)],
        rtol=1e-5,
    )


def test_defaults_no_shift_standard_normal_scale_and_weight_names():
    keras.utils.set_random_seed(3)
    layer = ks.layers.BoundedBatchNormalization()
    layer.build((None, 4000))
    assert [w.name for w in layer.weights] == [
        "gamma",
        "moving_mean",
        "moving_variance",
    ]
    assert layer.beta is None
    w = layer.gamma.numpy()
    assert abs(w.mean()) < 0.06  # N(0, 1): mean error ~ 1/sqrt(4000)
    assert 0.95 < w.std() < 1.05
    assert getattr(layer.gamma, BOUNDED_SCALE_TAG) is True


def test_centered_layer_has_beta_in_keras_order():
    layer = ks.layers.BoundedBatchNormalization(center=True)
    layer.build((None, 3))
    assert [w.name for w in layer.weights] == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    ]


def test_gradient_reaches_the_free_scale():
    import tensorflow as tf

    layer = _layer()
    with tf.GradientTape() as tape:
        y = layer(X, training=True)
        loss = keras.ops.sum(y * np.array([[1.0, 1.0], [2.0, 0.0]]))
    (grad,) = tape.gradient(loss, [layer.gamma.value])
    # dL/dw = sigmoid'(w) * sum x_hat * upstream = s (1 - s) * ...
    x_hat = np.array(
        [
            [-1 / math.sqrt(1 + EPS), -2 / math.sqrt(4 + EPS)],
            [1 / math.sqrt(1 + EPS), 2 / math.sqrt(4 + EPS)],
        ]
    )
    upstream = np.array([[1.0, 1.0], [2.0, 0.0]])
    s = np.array([0.5, 0.75])
    expected = s * (1 - s) * (x_hat * upstream).sum(axis=0)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-5)


def test_config_round_trip():
    layer = ks.layers.BoundedBatchNormalization(
        axis=1,
        momentum=0.8,
        epsilon=1e-4,
        center=True,
        gamma_regularizer=ks.regularizers.RecedingImportance(2e-3, 1.0),
        name="b",
    )
    config = layer.get_config()
    clone = assert_config_round_trip(layer)
    assert config["center"] is True and config["axis"] == 1
    assert isinstance(
        clone.gamma_regularizer, ks.regularizers.RecedingImportance
    )
    assert clone.gamma_regularizer.strength == 2e-3
    assert config["gamma_initializer"]["config"]["stddev"] == 1.0


def test_keras_save_load_equal_outputs(tmp_path):
    model = _small_model(center=True)
    x = _inputs()
    loaded = assert_saving_round_trip(model, x, tmp_path, "bbn.keras", rtol=0)
    bn = loaded.get_layer("bbn")
    assert isinstance(bn, ks.layers.BoundedBatchNormalization)
    assert isinstance(bn.gamma_regularizer, ks.regularizers.RecedingImportance)
    assert getattr(bn.gamma, BOUNDED_SCALE_TAG) is True


def test_mixed_float16_policy():
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float16")
    mixed = ks.layers.BoundedBatchNormalization(dtype="mixed_float16")
    plain = ks.layers.BoundedBatchNormalization()
    for layer in (mixed, plain):
        layer.build((None, 5))
        layer.gamma.assign(np.linspace(-2, 2, 5).astype("float32"))
    assert mixed.gamma.dtype == "float32"
    y = mixed(x, training=True)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    y32 = plain(x.astype("float32"), training=True)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(y).astype("float32"),
        keras.ops.convert_to_numpy(y32),
        atol=2e-3,
    )
    assert mixed.moving_mean.dtype == "float32"
    np.testing.assert_allclose(
        mixed.moving_mean.numpy(), plain.moving_mean.numpy(), atol=1e-3
    )


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"scale": False}, ValueError),
        ({"renorm": True}, ValueError),
        ({"center": "yes"}, TypeError),
        ({"momentum": 1.5}, ValueError),
        ({"epsilon": 0.0}, ValueError),
        ({"epsilon": float("inf")}, ValueError),
        ({"momentum": float("nan")}, ValueError),
        ({"axis": [1, 2]}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error):
    ((arg, value),) = kwargs.items()
    with pytest.raises(
        error, match=rf"BoundedBatchNormalization: `{arg}` must .*Received: "
    ):
        ks.layers.BoundedBatchNormalization(**kwargs)


def test_reduction_axes_by_hand():
    reduction_axes = bounded_batch_normalization.reduction_axes
    assert reduction_axes(4, -1) == [0, 1, 2]
    assert reduction_axes(4, 1) == [0, 2, 3]
    assert reduction_axes(2, -1) == [0]
    assert reduction_axes(3, 2) == [0, 1]


def test_channels_first_statistics_match_keras():
    # axis=1 (channels first): the statistics reduce over batch, h and w.
    x = np.random.default_rng(0).normal(2.0, 3.0, (5, 3, 4, 4))
    x = x.astype("float32")
    bounded = ks.layers.BoundedBatchNormalization(
        axis=1, momentum=0.0, gamma_initializer="zeros"
    )
    plain = keras.layers.BatchNormalization(axis=1, momentum=0.0, scale=False)
    y_bounded = bounded(x, training=True)
    y_plain = plain(x, training=True)
    # sigmoid(0) = 0.5 scales the plain BN's output.
    np.testing.assert_allclose(
        np.asarray(y_bounded), 0.5 * np.asarray(y_plain), atol=1e-5
    )
    np.testing.assert_allclose(
        bounded.moving_mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-5
    )


def test_to_plain_batch_normalization_same_outputs_new_model():
    model = _small_model(center=False)
    before = [w.copy() for w in model.get_weights()]
    x = _inputs()
    plain = ks.layers.to_plain_batch_normalization(model)
    bn = plain.get_layer("bbn")
    assert type(bn) is keras.layers.BatchNormalization
    assert bn.center is False and bn.gamma_regularizer is None
    w = model.get_layer("bbn").gamma.numpy()
    np.testing.assert_allclose(bn.gamma.numpy(), 1 / (1 + np.exp(-w)), 1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-6,
        atol=1e-6,
    )
    # No keras_serene object left in the copy; the input is untouched.
    assert "keras_serene" not in json.dumps(plain.get_config())
    assert isinstance(
        model.get_layer("bbn"), ks.layers.BoundedBatchNormalization
    )
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert plain is not model


def test_to_plain_batch_normalization_nested_and_centered():
    inner = _small_model(center=True)
    outer_inputs = keras.Input((6, 6, 2))
    outer = keras.Model(
        outer_inputs, keras.layers.Softmax()(inner(outer_inputs))
    )
    x = _inputs(seed=4)
    plain = ks.layers.to_plain_batch_normalization(outer)
    nested = [layer for layer in plain.layers if isinstance(layer, keras.Model)]
    assert len(nested) == 1
    bn = nested[0].get_layer("bbn")
    assert type(bn) is keras.layers.BatchNormalization and bn.center is True
    np.testing.assert_allclose(
        bn.beta.numpy(), inner.get_layer("bbn").beta.numpy()
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)),
        keras.ops.convert_to_numpy(outer(x)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_to_plain_batch_normalization_compiled_and_sequential():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, name="d"),
            ks.layers.BoundedBatchNormalization(center=True, name="b"),
        ]
    )
    model.compile(
        optimizer=ks.ImportanceOptimizer(keras.optimizers.SGD(0.1)),
        loss="mse",
    )
    model.get_layer("b").moving_variance.assign([0.5, 1.0, 2.0, 4.0])
    plain = ks.layers.to_plain_batch_normalization(model)
    assert isinstance(plain, keras.Sequential) and not plain.compiled
    assert type(plain.get_layer("b")) is keras.layers.BatchNormalization
    x = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_to_plain_batch_normalization_rejects_non_models():
    with pytest.raises(TypeError, match="to_plain_batch_normalization"):
        ks.layers.to_plain_batch_normalization(keras.layers.Dense(2))
