"""Tests for `ks.regularizers.RecedingImportance` and the RNI training recipe
(`ks.ImportanceOptimizer`: lr x 10 and no weight decay on the bounded scales;
`importance_vgg`: RNI and its baselines)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import assert_config_round_trip
from harness import assert_saving_round_trip
from two_cpus import run_on_two_cpus

import keras_serene as ks
from keras_serene.rni.importance_optimizer import importance_vgg

# s = sigmoid(w + shift) = 1/2, 3/4, 1/4 for shift = 0.
W = np.array([0.0, math.log(3.0), -math.log(3.0)], dtype="float32")
S = np.array([0.5, 0.75, 0.25])


def test_value_on_hand_picked_points():
    reg = ks.regularizers.RecedingImportance(strength=0.1, shift=0.0)
    expected = 0.1 * (
        0.5 * (1 + math.log(2.0))
        + 0.75 * (1 - math.log(0.75))
        + 0.25 * (1 + math.log(4.0))
    )
    value = float(keras.ops.convert_to_numpy(reg(W)))
    assert value == pytest.approx(expected, rel=1e-6)


def test_shift_moves_the_sigmoid():
    reg = ks.regularizers.RecedingImportance(strength=2.0, shift=3.0)
    # w = -3 with shift 3 gives s = 1/2: 2 * 0.5 * (1 + ln 2).
    value = float(keras.ops.convert_to_numpy(reg(np.array([-3.0]))))
    assert value == pytest.approx(2.0 * 0.5 * (1 + math.log(2.0)), rel=1e-6)


def test_gradient_is_minus_strength_log_s_s_one_minus_s():
    reg = ks.regularizers.RecedingImportance(strength=0.1, shift=0.0)
    w = tf.Variable(W)
    with tf.GradientTape() as tape:
        value = reg(w)
    grad = tape.gradient(value, w).numpy()
    expected = -0.1 * np.log(S) * S * (1 - S)
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    # Important channels (s -> 1) feel no pull; small ones are pushed down.
    assert np.all(grad > 0)


def test_finite_for_extreme_values():
    reg = ks.regularizers.RecedingImportance(strength=1.0, shift=0.0)
    w = tf.Variable(np.array([-200.0, 200.0], dtype="float32"))
    with tf.GradientTape() as tape:
        value = reg(w)
    grad = tape.gradient(value, w).numpy()
    assert np.isfinite(value.numpy()) and np.all(np.isfinite(grad))
    # s -> 0 and s -> 1 both give s (1 - ln s) -> 0 and 1.
    assert float(value) == pytest.approx(1.0, abs=1e-6)


def test_config_round_trip_and_serialization():
    reg = ks.regularizers.RecedingImportance(strength=1e-4, shift=0.0)
    assert reg.get_config() == {"strength": 1e-4, "shift": 0.0}
    assert_config_round_trip(reg)
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(reg))
    assert isinstance(restored, ks.regularizers.RecedingImportance)
    assert restored.get_config() == reg.get_config()


def test_layer_loss_uses_the_regulariser():
    reg = ks.regularizers.RecedingImportance(strength=0.1, shift=0.0)
    layer = ks.layers.BoundedBatchNormalization(gamma_regularizer=reg)
    layer.build((None, 3))
    layer.gamma.assign(W)
    layer(np.ones((2, 3), dtype="float32"))
    (loss,) = layer.losses
    assert float(loss) == pytest.approx(float(reg(W)), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"strength": -1e-3}, ValueError),
        ({"strength": float("nan")}, ValueError),
        ({"strength": "1e-3"}, TypeError),
        ({"shift": float("inf")}, ValueError),
        ({"shift": True}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="RecedingImportance.*Received"):
        ks.regularizers.RecedingImportance(**kwargs)


# ImportanceOptimizer ------------------------------------------------------


def _scale_and_kernel():
    bn = ks.layers.BoundedBatchNormalization()
    bn.build((None, 2))
    bn.gamma.assign([0.5, -0.5])
    dense = keras.layers.Dense(2, use_bias=False)
    dense.build((None, 2))
    dense.kernel.assign(np.ones((2, 2)))
    return bn.gamma, dense.kernel


def _step(optimizer, steps=1, grad_value=1.0):
    gamma, kernel = _scale_and_kernel()
    start = [gamma.numpy().copy(), kernel.numpy().copy()]
    for _ in range(steps):
        grads = [
            tf.fill(gamma.shape, grad_value),
            tf.fill(kernel.shape, grad_value),
        ]
        optimizer.apply(grads, [gamma, kernel])
    return gamma.numpy() - start[0], kernel.numpy() - start[1]


@pytest.mark.parametrize(
    "make_sgd",
    [
        lambda: keras.optimizers.SGD(0.1),
        lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    ],
)
def test_scale_moves_ten_times_as_far(make_sgd):
    plain_gamma, plain_kernel = _step(make_sgd(), steps=2)
    wrapped_gamma, wrapped_kernel = _step(
        ks.ImportanceOptimizer(make_sgd()), steps=2
    )
    np.testing.assert_allclose(wrapped_gamma, 10 * plain_gamma, rtol=1e-5)
    np.testing.assert_allclose(wrapped_kernel, plain_kernel, rtol=1e-6)
    # Plain SGD, lr 0.1, grad 1, two steps: -0.2 (no momentum).
    assert plain_gamma[0] < 0


def test_weight_decay_skips_the_scale():
    def sgd():
        return keras.optimizers.SGD(0.1, weight_decay=0.5)

    plain_gamma, plain_kernel = _step(sgd(), grad_value=0.0)
    wrapped_gamma, wrapped_kernel = _step(
        ks.ImportanceOptimizer(sgd()), grad_value=0.0
    )
    # Decoupled decay w <- w - lr * wd * w = 0.95 w on the kernel (w = 1).
    np.testing.assert_allclose(plain_kernel, -0.05 * np.ones((2, 2)), 1e-6)
    np.testing.assert_allclose(wrapped_kernel, plain_kernel, rtol=1e-6)
    np.testing.assert_allclose(plain_gamma, [-0.025, 0.025], rtol=1e-5)
    np.testing.assert_array_equal(wrapped_gamma, [0.0, 0.0])


def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return importance_vgg(
        "rni", widths=(3, "M", 4), input_shape=(4, 4, 1), num_classes=2
    )


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4, 4, 1)).astype("float32")
    y = np.array([0, 1] * 4)
    return x, y


def test_in_compiled_fit_the_scale_moves_ten_times_as_far():
    x, y = _data()
    deltas = {}
    for wrapped in (False, True):
        model = _tiny_model()
        before = {w.path: w.numpy().copy() for w in model.trainable_weights}
        sgd = keras.optimizers.SGD(0.1)
        optimizer = ks.ImportanceOptimizer(sgd) if wrapped else sgd
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        deltas[wrapped] = {
            w.path: w.numpy() - before[w.path] for w in model.trainable_weights
        }
        assert int(model.optimizer.iterations.numpy()) == 1
    for path, plain in deltas[False].items():
        factor = 10.0 if path.endswith("gamma") else 1.0  # bounded scales
        np.testing.assert_allclose(
            deltas[True][path], factor * plain, rtol=1e-3, atol=1e-6
        )
    assert np.abs(deltas[False]["bn1/gamma"]).max() > 0


def test_config_round_trip_and_delegation():
    inner = keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-4)
    opt = ks.ImportanceOptimizer(
        inner, multiplier=5.0, weight_decay_exclude_names=["bias"]
    )
    config = opt.get_config()
    assert config["multiplier"] == 5.0
    again = assert_config_round_trip(opt)
    assert isinstance(again.inner_optimizer, keras.optimizers.SGD)
    assert again.inner_optimizer.weight_decay == 1e-4
    opt.learning_rate = 0.05
    assert float(inner.learning_rate) == pytest.approx(0.05)
    assert float(opt.learning_rate) == pytest.approx(0.05)


def test_keras_save_load_with_the_optimizer(tmp_path):
    x, y = _data()
    model = _tiny_model()
    model.compile(
        optimizer=ks.ImportanceOptimizer(keras.optimizers.SGD(0.01)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    loaded = assert_saving_round_trip(model, x, tmp_path, "rni.keras", rtol=0)
    assert isinstance(loaded.optimizer, ks.ImportanceOptimizer)
    assert loaded.optimizer.multiplier == 10.0
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations.numpy()) == 2


def test_mixed_float16_fit_with_loss_scaling():
    x, y = _data()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = _tiny_model()
        model.compile(
            optimizer=ks.ImportanceOptimizer(keras.optimizers.SGD(0.01)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        before = model.get_layer("bn1").gamma.numpy().copy()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    after = model.get_layer("bn1").gamma.numpy()
    assert model.get_layer("bn1").gamma.dtype == "float32"
    assert np.all(np.isfinite(after)) and np.abs(after - before).max() > 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"multiplier": 0.0}, ValueError, "multiplier"),
        ({"multiplier": float("inf")}, ValueError, "multiplier"),
        ({"learning_rate": 0.1}, ValueError, "inner_optimizer"),
        ({"weight_decay_exclude_names": "bias"}, TypeError, "exclude"),
    ],
)
def test_bad_arguments_optimizer(kwargs, error, match):
    with pytest.raises(error, match=match):
        ks.ImportanceOptimizer(keras.optimizers.SGD(0.1), **kwargs)


def test_rejects_non_optimizers_and_built_inner():
    with pytest.raises(TypeError, match="ImportanceOptimizer"):
        ks.ImportanceOptimizer("sgd")
    inner = keras.optimizers.SGD(0.1)
    inner.build([keras.Variable(np.zeros(2))])
    with pytest.raises(ValueError, match="not built"):
        ks.ImportanceOptimizer(inner)


def test_model_without_bounded_scales_fails_at_build():
    opt = ks.ImportanceOptimizer(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="no BoundedBatchNormalization"):
        opt.build([keras.Variable(np.zeros(2))])


def test_adaptive_inner_optimizer_warns():
    with pytest.warns(ks.KerasSereneWarning, match="only for SGD"):
        ks.ImportanceOptimizer(keras.optimizers.Adam(1e-3))


MIRRORED = """
    import numpy as np
    import tensorflow as tf
    import keras
    import keras_serene as ks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.integers(0, 3, 32)

    def build():
        keras.utils.set_random_seed(0)
        return keras.Sequential([
            keras.Input((5,)),
            keras.layers.Dense(4, use_bias=False),
            ks.layers.BoundedBatchNormalization(
                synchronized=True,
                gamma_regularizer=ks.regularizers.RecedingImportance(0.1, 0.0)),
            keras.layers.ReLU(),
            keras.layers.Dense(3),
        ])

    init = build().get_weights()

    def run(strategy):
        with strategy.scope():
            model = build()
            model.set_weights(init)
            model.compile(
                optimizer=ks.ImportanceOptimizer(keras.optimizers.SGD(
                    0.1, momentum=0.9, weight_decay=0.1)),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
        return model

    single = run(tf.distribute.get_strategy())
    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert np.abs(single.layers[1].gamma.numpy() - init[1]).max() > 1e-3
    """


def test_mirrored_strategy_matches_single_device():
    run_on_two_cpus(MIRRORED)


# importance_vgg: RNI and its baselines ------------------------------------


def test_importance_vgg_methods():
    rni = importance_vgg("rni", widths=(4, "M", 4), input_shape=(8, 8, 1))
    l1 = importance_vgg("l1", widths=(4, "M", 4), input_shape=(8, 8, 1))
    none = importance_vgg("none", widths=(4, "M", 4), input_shape=(8, 8, 1))
    bn = rni.get_layer("bn1")
    assert isinstance(bn, ks.layers.BoundedBatchNormalization)
    assert bn.gamma_regularizer.get_config() == {"strength": 1e-3, "shift": 3.0}
    bn = l1.get_layer("bn2")
    assert type(bn) is keras.layers.BatchNormalization
    assert isinstance(bn.gamma_regularizer, keras.regularizers.L1)
    assert float(bn.gamma_regularizer.l1) == pytest.approx(1e-4)
    np.testing.assert_array_equal(bn.gamma.numpy(), 0.5 * np.ones(4))
    assert none.get_layer("bn1").gamma_regularizer is None
    assert rni.output_shape == (None, 10)


@pytest.mark.parametrize(
    "kwargs",
    [{"method": "l2"}, {"strength": -1.0}, {"widths": (4, "X")}],
)
def test_importance_vgg_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="importance_vgg"):
        importance_vgg(**kwargs)
