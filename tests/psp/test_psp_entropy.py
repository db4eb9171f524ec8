"""Tests for ks.metrics.psp_entropy and ks.callbacks.PSPEntropyLogger."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import assert_config_round_trip
from harness import assert_saving_round_trip
from keras import layers
from two_cpus import run_on_two_cpus

import keras_serene as ks

# Binary entropies (bits) worked out by hand:
# H(3/4) = 0.75 * log2(4/3) + 0.25 * 2 = 0.811278...
# H(clamped 0) = H(clamped 1) = -(1e-4 log2 1e-4 + 0.9999 log2 0.9999)
H_THREE_QUARTERS = 0.8112781244591328
H_HALF = 1.0
H_CLAMPED = 0.0014730335283281598

# Six samples, two classes (four of class 0, two of class 1). With an
# identity kernel and no bias, the pre-activations are the inputs:
#   neuron 0: class 0 z = [1, 1, 1, -1] -> p = 3/4; class 1 z = [-1, -1] -> 0
#   neuron 1: class 0 z = [2, 0, -1, 3] -> p = 1/2 (z = 0 is off);
#             class 1 z = [1, 1] -> p = 1
X_HAND = np.array(
    [[1, 2], [1, 0], [1, -1], [-1, 3], [-1, 1], [-1, 1]], dtype="float32"
)
Y_HAND = np.array([0, 0, 0, 0, 1, 1])
H_NEURON_0 = H_THREE_QUARTERS + H_CLAMPED  # 0.812751...
H_NEURON_1 = H_HALF + H_CLAMPED  # 1.001473...


def _two_neuron_model(activation="sigmoid", fused=True):
    """Dense(2) with identity kernel; sigmoid output is > 0 for every z."""
    inputs = keras.Input((2,))
    dense = layers.Dense(
        2,
        activation=activation if fused else None,
        use_bias=False,
        kernel_initializer="identity",
        name="dense",
    )
    x = dense(inputs)
    if not fused:
        x = layers.Activation(activation, name="act")(x)
    outputs = layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def _small_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = layers.Conv2D(3, 3, activation="relu", name="conv")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(4, activation="relu", name="fc")(x)
    outputs = layers.Dense(3, name="out")(x)
    return keras.Model(inputs, outputs)


def _cnn_data(n=37, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=n)
    return x, y


def _assert_results_equal(a, b):
    assert list(a) == list(b)
    for name in a:
        for key in ("entropy", "class_entropy", "on_probability"):
            np.testing.assert_array_equal(a[name][key], b[name][key])
        assert a[name]["mean"] == b[name]["mean"]


def test_hand_computed_two_neurons_two_classes():
    model = _two_neuron_model("sigmoid", fused=True)
    result = ks.metrics.psp_entropy(model, X_HAND, Y_HAND, layers=["dense"])
    r = result["dense"]
    np.testing.assert_allclose(
        r["on_probability"], [[0.75, 0.0], [0.5, 1.0]], atol=1e-12
    )
    np.testing.assert_allclose(
        r["class_entropy"],
        [[H_THREE_QUARTERS, H_CLAMPED], [H_HALF, H_CLAMPED]],
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        r["entropy"], [H_NEURON_0, H_NEURON_1], rtol=1e-9
    )
    assert r["mean"] == pytest.approx((H_NEURON_0 + H_NEURON_1) / 2, 1e-9)
    np.testing.assert_array_equal(r["class_counts"], [4, 2])
    assert r["neuron_shape"] == (2,)


def test_clamping_keeps_always_on_neuron_above_zero():
    # A neuron on for every sample: p = 1 in both classes, clamped to
    # 0.9999, so H = 2 * H_CLAMPED rather than 0 (or NaN from log2(0)).
    model = _two_neuron_model("relu", fused=True)
    x = np.abs(X_HAND) + 0.5
    r = ks.metrics.psp_entropy(model, x, Y_HAND, layers=["dense"])["dense"]
    np.testing.assert_allclose(r["class_entropy"], H_CLAMPED, rtol=1e-9)
    np.testing.assert_allclose(r["entropy"], 2 * H_CLAMPED, rtol=1e-9)
    assert np.all(np.isfinite(r["entropy"]))


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "softplus"])
def test_fused_and_separate_activation_agree(activation):
    fused = _two_neuron_model(activation, fused=True)
    separate = _two_neuron_model(activation, fused=False)
    separate.set_weights(fused.get_weights())
    a = ks.metrics.psp_entropy(fused, X_HAND, Y_HAND, layers=["dense"])
    b = ks.metrics.psp_entropy(separate, X_HAND, Y_HAND, layers=["dense"])
    _assert_results_equal(a, b)
    np.testing.assert_allclose(
        a["dense"]["entropy"], [H_NEURON_0, H_NEURON_1], rtol=1e-9
    )


def test_per_neuron_and_per_channel_shapes():
    model = _small_cnn()
    x, y = _cnn_data()
    neuron = ks.metrics.psp_entropy(model, x, y, num_classes=3)
    channel = ks.metrics.psp_entropy(model, x, y, per="channel")
    assert list(neuron) == ["conv", "fc", "out"]
    assert neuron["conv"]["entropy"].shape == (4 * 4 * 3,)
    assert neuron["conv"]["class_entropy"].shape == (48, 3)
    assert neuron["conv"]["neuron_shape"] == (4, 4, 3)
    assert channel["conv"]["entropy"].shape == (3,)
    assert channel["conv"]["class_entropy"].shape == (3, 3)
    assert channel["conv"]["neuron_shape"] == (3,)
    # Dense layers: a channel is a neuron.
    _assert_results_equal({"fc": neuron["fc"]}, {"fc": channel["fc"]})
    # Channel p_ck is the fraction of (sample, position) pairs that are on,
    # i.e. the mean over positions of the per-element p.
    per_position = neuron["conv"]["on_probability"].reshape(16, 3, 3)
    np.testing.assert_allclose(
        channel["conv"]["on_probability"], per_position.mean(axis=0)
    )


def test_per_channel_hand_computed():
    # Conv1D(1, kernel 1, identity) on 2 positions: class 0 maps
    # [1, -1] and [1, 1] -> 3 of 4 pairs on; class 1 [-1, -1] -> 0 of 2.
    inputs = keras.Input((2, 1))
    conv = layers.Conv1D(
        1, 1, use_bias=False, kernel_initializer="ones", activation="relu"
    )
    model = keras.Model(inputs, conv(inputs))
    x = np.array([[1, -1], [1, 1], [-1, -1]], "float32")[..., None]
    r = ks.metrics.psp_entropy(model, x, [0, 0, 1], per="channel")
    r = r[conv.name]
    np.testing.assert_allclose(r["on_probability"], [[0.75, 0.0]])
    np.testing.assert_allclose(
        r["entropy"], [H_THREE_QUARTERS + H_CLAMPED], rtol=1e-9
    )


def test_streamed_equals_all_at_once():
    model = _small_cnn()
    x, y = _cnn_data()
    whole = ks.metrics.psp_entropy(model, x, y, batch_size=len(x))
    for batch_size in (1, 5):
        streamed = ks.metrics.psp_entropy(model, x, y, batch_size=batch_size)
        _assert_results_equal(whole, streamed)


def test_tf_data_and_one_hot_labels_match_arrays():
    model = _small_cnn()
    x, y = _cnn_data()
    expected = ks.metrics.psp_entropy(model, x, y, per="channel")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    _assert_results_equal(
        expected, ks.metrics.psp_entropy(model, dataset, per="channel")
    )
    one_hot = np.eye(3)[y]
    _assert_results_equal(
        expected, ks.metrics.psp_entropy(model, x, one_hot, per="channel")
    )


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i):
        window = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return self.x[window], self.y[window]


def test_py_dataset_matches_arrays():
    model = _small_cnn()
    x, y = _cnn_data()
    _assert_results_equal(
        ks.metrics.psp_entropy(model, x, y),
        ks.metrics.psp_entropy(model, _Batches(x, y, 10)),
    )


def test_missing_class_is_nan_column_and_left_out():
    model = _two_neuron_model("sigmoid")
    r = ks.metrics.psp_entropy(
        model, X_HAND, Y_HAND, layers=["dense"], num_classes=3
    )["dense"]
    assert r["class_entropy"].shape == (2, 3)
    assert np.all(np.isnan(r["class_entropy"][:, 2]))
    np.testing.assert_array_equal(r["class_counts"], [4, 2, 0])
    np.testing.assert_allclose(
        r["entropy"], [H_NEURON_0, H_NEURON_1], rtol=1e-9
    )


def test_normalization_layer_named_explicitly():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,))
    x = layers.Dense(3, use_bias=False, name="fc")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    outputs = layers.ReLU(name="relu")(x)
    model = keras.Model(inputs, outputs)
    x_data = np.random.default_rng(0).normal(size=(10, 4)).astype("float32")
    y_data = np.arange(10) % 2
    result = ks.metrics.psp_entropy(model, x_data, y_data, layers=["bn"])
    # A fresh BN (mean 0, var 1, gamma 1, beta 0) keeps the sign of z.
    fc = ks.metrics.psp_entropy(model, x_data, y_data, layers=["fc"])
    np.testing.assert_array_equal(result["bn"]["entropy"], fc["fc"]["entropy"])


def test_does_not_mutate_the_model():
    model = _two_neuron_model("relu")
    config = model.get_config()
    weights = [w.copy() for w in model.get_weights()]
    names = [layer.name for layer in model.layers]
    before = model.predict_on_batch(X_HAND)
    ks.metrics.psp_entropy(model, X_HAND, Y_HAND)
    assert model.get_config() == config
    assert [layer.name for layer in model.layers] == names
    assert model.get_layer("dense").activation is keras.activations.relu
    for a, b in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before, model.predict_on_batch(X_HAND))


def test_a_dense_subclass_is_measured_by_default():
    class MyDense(layers.Dense):  # the layer table's class-hierarchy lookup
        pass

    inputs = keras.Input((4,))
    h = MyDense(3, activation="relu", name="mine")(inputs)
    model = keras.Model(inputs, layers.Dense(2, name="out")(h))
    x_data = np.random.default_rng(0).normal(size=(10, 4)).astype("float32")
    result = ks.metrics.psp_entropy(model, x_data, np.arange(10) % 2)
    assert sorted(result) == ["mine", "out"]
    assert result["mine"]["entropy"].shape == (3,)


def test_bad_inputs_name_the_problem():
    model = _small_cnn()
    x, y = _cnn_data()
    with pytest.raises(
        ValueError, match=r"as many samples in x as in y \(x: 37, y: 36\)"
    ):
        ks.metrics.psp_entropy(model, x, y[:-1])
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        ks.metrics.psp_entropy(model, x, y, layers=["nope"])
    with pytest.raises(ValueError, match="'flatten' \\(Flatten\\) has no pre"):
        ks.metrics.psp_entropy(model, x, y, layers=["flatten"])
    with pytest.raises(ValueError, match="'pool' \\(MaxPooling2D\\)"):
        ks.metrics.psp_entropy(model, x, y, layers=["conv", "pool"])
    with pytest.raises(ValueError, match="per=.*'pixel'"):
        ks.metrics.psp_entropy(model, x, y, per="pixel")
    with pytest.raises(ValueError, match="batch_size=0"):
        ks.metrics.psp_entropy(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="out of range for num_classes=2"):
        ks.metrics.psp_entropy(model, x, y, num_classes=2)
    with pytest.raises(
        ValueError, match="`y` must hold the labels.*Received: y=None"
    ):
        ks.metrics.psp_entropy(model, x)
    with pytest.raises(TypeError, match="list of layer names"):
        ks.metrics.psp_entropy(model, x, y, layers="conv")
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(ValueError, match="be batched"):
        ks.metrics.psp_entropy(model, unbatched)
    with pytest.raises(
        ValueError, match="`y` must be None when `x` is a dataset"
    ):
        ks.metrics.psp_entropy(model, unbatched.batch(4), y)


def test_subclassed_model_is_refused():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = layers.Dense(2)

        def call(self, x):
            return self.fc(x)

    model = Tiny()
    model(X_HAND)
    with pytest.raises(
        ValueError, match="psp_entropy: model .tiny.* subclassed"
    ):
        ks.metrics.psp_entropy(model, X_HAND, Y_HAND)


# PSPEntropyLogger ------------------------------------------------------


def test_logger_direct_call_writes_layer_means():
    model = _small_cnn()
    x, y = _cnn_data()
    logger = ks.callbacks.PSPEntropyLogger((x, y), per="channel")
    logger.set_model(model)
    logs = {}
    logger.on_epoch_end(0, logs)
    expected = ks.metrics.psp_entropy(model, x, y, per="channel")
    assert set(logs) == {f"psp_entropy/{n}" for n in ("conv", "fc", "out")}
    for name, r in expected.items():
        assert logs[f"psp_entropy/{name}"] == r["mean"]
    assert logger.result_epoch == 0
    _assert_results_equal(logger.result, expected)


def test_logger_in_fit_every_other_epoch():
    model = _small_cnn()
    x, y = _cnn_data()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    logger = ks.callbacks.PSPEntropyLogger(dataset, layers=["fc"], frequency=2)
    history = model.fit(
        x, y, epochs=3, batch_size=8, verbose=0, callbacks=[logger]
    )
    values = history.history["psp_entropy/fc"]
    assert len(values) == 3
    assert math.isnan(values[1]) and not math.isnan(values[0])
    final = ks.metrics.psp_entropy(model, x, y, layers=["fc"])
    assert values[2] == pytest.approx(final["fc"]["mean"], abs=1e-12)
    assert logger.result_epoch == 2


def test_logger_bad_layer_fails_before_training():
    model = _small_cnn()
    x, y = _cnn_data()
    model.compile(optimizer="sgd", loss="mse")
    logger = ks.callbacks.PSPEntropyLogger((x, y), layers=["flatten"])
    with pytest.raises(ValueError, match="'flatten' \\(Flatten\\) has no pre"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[logger])
    assert model.optimizer.iterations.numpy() == 0


def test_logger_config_round_trip_and_registration():
    x, y = _cnn_data()
    logger = ks.callbacks.PSPEntropyLogger(
        (x, y),
        layers=["conv"],
        per="channel",
        frequency=3,
        batch_size=7,
        num_classes=3,
        prefix="H/",
        verbose=1,
    )
    config = logger.get_config()
    assert config == {
        "layers": ["conv"],
        "per": "channel",
        "frequency": 3,
        "batch_size": 7,
        "num_classes": 3,
        "prefix": "H/",
        "verbose": 1,
    }
    cls = keras.saving.get_registered_object("keras_serene>PSPEntropyLogger")
    assert cls is ks.callbacks.PSPEntropyLogger
    assert_config_round_trip(logger, cls, validation_data=(x, y))
    with pytest.raises(ValueError, match="validation_data"):
        cls.from_config(config)


def test_logger_validates_arguments():
    data = _cnn_data()
    logger_cls = ks.callbacks.PSPEntropyLogger
    with pytest.raises(ValueError, match="frequency=0"):
        logger_cls(data, frequency=0)
    with pytest.raises(ValueError, match="per='x'"):
        logger_cls(data, per="x")
    with pytest.raises(ValueError, match="validation_data=None"):
        logger_cls(None)
    with pytest.raises(
        ValueError,
        match=r"`validation_data` must be a tuple \(x, y\).*"
        r"Received: validation_data=tuple\(",
    ):
        logger_cls((data[0], data[1], data[1]))
    with pytest.raises(TypeError, match="layers='conv'"):
        logger_cls(data, layers="conv")


def test_logger_refuses_bad_validation_data_at_construction():
    x, y = _cnn_data()
    logger_cls = ks.callbacks.PSPEntropyLogger
    with pytest.raises(
        ValueError,
        match=r"PSPEntropyLogger: `validation_data` must hold as many "
        r"samples in x as in y \(x: 37, y: 30\)",
    ):
        logger_cls((x, y[:30]))
    with pytest.raises(ValueError, match="must be batched"):
        logger_cls(tf.data.Dataset.from_tensor_slices((x, y)))
    with pytest.raises(ValueError, match=r"yield \(x, y\)"):
        logger_cls(tf.data.Dataset.from_tensor_slices(x).batch(4))
    # The whole array never lands in the message: shape and dtype only.
    with pytest.raises(ValueError) as info:
        logger_cls((x, y[:30]))
    assert "shape=(37, 6, 6, 1)" in str(info.value)
    assert len(str(info.value)) < 400


def test_logger_in_fit_with_tf_data_validation_equals_arrays():
    x, y = _cnn_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    logged = []
    for data in ((x, y), dataset):
        model = _small_cnn()
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        logger = ks.callbacks.PSPEntropyLogger(data, per="channel")
        history = model.fit(
            x, y, epochs=2, batch_size=8, verbose=0, callbacks=[logger]
        )
        logged.append(history.history["psp_entropy/conv"])
        # What was logged is the metric on the final weights.
        expected = ks.metrics.psp_entropy(model, x, y, per="channel")
        assert logged[-1][-1] == pytest.approx(expected["conv"]["mean"])
    np.testing.assert_allclose(logged[0], logged[1], rtol=1e-6)


def test_model_trained_with_logger_saves_and_loads(tmp_path):
    model = _small_cnn()
    x, y = _cnn_data()
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    names = [layer.name for layer in model.layers]
    logger = ks.callbacks.PSPEntropyLogger((x, y))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[logger])
    # The side model's linear copies are not attached to the user's model.
    assert [layer.name for layer in model.layers] == names
    assert len(model.get_config()["layers"]) == 6
    loaded = assert_saving_round_trip(model, x, tmp_path)
    _assert_results_equal(
        ks.metrics.psp_entropy(model, x, y),
        ks.metrics.psp_entropy(loaded, x, y),
    )


MIRRORED = """
    import numpy as np
    import tensorflow as tf
    import keras
    import keras_serene as ks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, 64)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 6, 1))
        h = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inputs)
        h = keras.layers.Flatten()(h)
        outputs = keras.layers.Dense(3, name="out")(h)
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logger = ks.callbacks.PSPEntropyLogger((x, y), per="channel")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0,
                        callbacks=[logger])
    assert model.distribute_strategy.num_replicas_in_sync == 2
    expected = ks.metrics.psp_entropy(model, x, y, per="channel")
    logged = history.history["psp_entropy/conv"]
    assert logged[-1] == expected["conv"]["mean"], (logged, expected)
    """


@pytest.mark.slow
def test_logger_under_mirrored_strategy():
    run_on_two_cpus(MIRRORED)
