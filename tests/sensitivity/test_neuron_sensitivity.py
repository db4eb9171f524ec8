"""NeuronSensitivity (SeReNe) and the pre-activation probe: hand-computed
S per neuron, per-channel means, structured pruning through fit, errors."""

import harness
import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import assert_config_round_trip

import keras_serene as ks
from keras_serene import KerasSereneWarning
from keras_serene.app.datasets import load_digits
from keras_serene.core import masking as masks
from keras_serene.core import neurons
from keras_serene.core.preactivations import linear_part
from keras_serene.core.preactivations import preactivation_model
from keras_serene.sensitivity.sensitivity_model import ModelPass

# The hand net of test_output_sensitivity: z1 = [[3, 1], [-1.5, 0.5]],
# y = z2 = [[0, 7], [-2.5, 0.5]], a = 1/2.
X = np.array([[1.0, 1.0], [0.5, -1.0]], "float32")
LABELS = np.array([1, 0])
W1 = np.array([[1.0, -1.0], [2.0, 0.5]], "float32")
B1 = np.array([0.0, 1.5], "float32")
W2 = np.array([[1.0, 2.0], [-1.0, 1.0]], "float32")
B2 = np.array([-2.0, 0.0], "float32")
# Per neuron of d1 and d2.
EXPECTED = {
    # mean_b |a sum_k W2[i, k] [z_bi > 0]|: sample 1 gives [1.5, 0].
    "lower_bound": ([0.75, 0.0], [0.5, 0.5]),
    # mean_b a sum_k |W2[i, k]| [z_bi > 0]: [1.5, 1] and [0, 1].
    "full": ([0.75, 1.0], [0.5, 0.5]),
    # 1 where the mean pre-activation is > 0: [.75, .75] and [-1.25, 3.75].
    "local": ([1.0, 1.0], [0.0, 1.0]),
}


def hand_net():
    return harness.hand_net([W1, B1, W2, B2])


def _loss(labels, y):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, y
    )


def neuron_sensitivities(estimator, model, x, labels=None, state=None):
    """`estimator.from_model` on one tape (with the estimator's optimizer
    `state`); returns S per variable."""
    probe = preactivation_model(model)
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        y, zs = probe(x)
        loss = _loss(labels, y) if labels is not None else None
    loss_grads = tape.gradient(loss, zs) if labels is not None else []
    weights = {id(la): ws for la, ws in neurons.neuron_layers(model)}
    model_pass = ModelPass(
        tape,
        variables,
        [True] * len(variables),
        y,
        labels,
        [(la, z, weights[id(la)]) for la, z in zip(probe.layers, zs)],
        loss_grads,
        1,
        state,
    )
    return [np.asarray(s) for s in estimator.from_model(model_pass)]


@pytest.mark.parametrize("estimator", sorted(EXPECTED))
def test_by_hand(estimator):
    result = neuron_sensitivities(
        ks.sensitivity.NeuronSensitivity(estimator), hand_net(), X
    )
    s1, s2 = EXPECTED[estimator]
    # Every parameter of a neuron shares its S: kernel columns and bias.
    for got, want in zip(result, [[s1], s1, [s2], s2]):
        np.testing.assert_allclose(got, want, atol=1e-6)
        assert got.ndim in (1, 2)


@pytest.mark.parametrize("estimator", ["lower_bound", "local"])
def test_fit_step_applies_the_neuron_decay(estimator):
    """One step with lr 0: w_n <- w_n - 0.5 * w_n * relu(1 - S_n)."""
    model = hand_net()
    trainer = ks.SensitivityModel(model)
    trainer.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.0),
            sensitivity=ks.sensitivity.NeuronSensitivity(estimator),
            decay=0.5,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    trainer.fit(X, LABELS, batch_size=2, epochs=1, shuffle=False, verbose=0)
    s1, s2 = (np.asarray(s) for s in EXPECTED[estimator])
    keep1, keep2 = (
        1 - 0.5 * np.maximum(0, 1 - s1),
        1 - 0.5 * (np.maximum(0, 1 - s2)),
    )
    expected = [W1 * keep1, B1 * keep1, W2 * keep2, B2 * keep2]
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_lower_bound_is_below_full():
    inputs = keras.Input((5,))
    h = keras.layers.Dense(6, activation="tanh")(inputs)
    h = keras.layers.Dense(4, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    x = np.random.default_rng(2).normal(size=(8, 5)).astype("float32")
    low = neuron_sensitivities(
        ks.sensitivity.NeuronSensitivity("lower_bound"), model, x
    )
    full = neuron_sensitivities(
        ks.sensitivity.NeuronSensitivity("full"), model, x
    )
    for a, b in zip(low, full):
        assert np.all(a <= b + 1e-6)
    assert np.any(low[0] < full[0] - 1e-4)


def _loss_gradients(model):
    """Independent dL/dz1 and dL/dz2 of the hand net, batch means."""
    z1 = X @ W1 + B1
    y = np.maximum(z1, 0) @ W2 + B2
    p = np.exp(y - y.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dy = (p - np.eye(2)[LABELS]) / len(X)
    dz1 = (dy @ W2.T) * (z1 > 0)
    return dz1.mean(0), dy.mean(0)


def test_loss_estimator_momentum_buffer():
    model = hand_net()
    estimator = ks.sensitivity.NeuronSensitivity("loss", momentum=0.9)
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.0), sensitivity=estimator
    )
    estimator.bind(model, model.trainable_variables)
    optimizer.build(model.trainable_variables)
    m1, m2 = _loss_gradients(model)
    state = optimizer.sensitivity_state
    # One buffer per neuron layer, optimizer state keyed by its kernel.
    assert sorted(state) == sorted(
        model.get_layer(name).kernel.path for name in ("d1", "d2")
    )
    first = neuron_sensitivities(estimator, model, X, LABELS, state)
    second = neuron_sensitivities(estimator, model, X, LABELS, state)
    owned = {id(v) for v in optimizer.variables}
    assert {id(v) for v in state.values()} <= owned
    np.testing.assert_allclose(first[1], np.abs(m1), rtol=1e-5)
    np.testing.assert_allclose(first[3], np.abs(m2), rtol=1e-5)
    # buf <- 0.9 buf + m, the first step starting from 0 (buf = m).
    np.testing.assert_allclose(second[1], 1.9 * np.abs(m1), rtol=1e-5)
    np.testing.assert_allclose(second[2], [1.9 * np.abs(m2)], rtol=1e-5)


def test_conv_sensitivity_is_a_per_channel_mean():
    inputs = keras.Input((4, 4, 1))
    conv = keras.layers.Conv2D(3, 2, activation="relu", name="conv")
    h = keras.layers.Flatten()(conv(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    x = np.random.default_rng(3).normal(size=(5, 4, 4, 1)).astype("float32")
    result = neuron_sensitivities(ks.sensitivity.NeuronSensitivity(), model, x)
    # Independent: differentiate the network written out with raw ops.
    dense = model.layers[-1]
    z = tf.Variable(
        keras.ops.conv(x, conv.kernel) + keras.ops.reshape(conv.bias, (-1,))
    )
    with tf.GradientTape() as tape:
        y = tf.matmul(tf.reshape(tf.nn.relu(z), (5, -1)), dense.kernel)
        seed = tf.reduce_sum(y + dense.bias) / 2.0
    per_channel = np.abs(tape.gradient(seed, z).numpy()).mean(axis=(0, 1, 2))
    assert per_channel.shape == (3,)
    assert np.ptp(per_channel) > 1e-3  # Channels differ (no channel-0 copy).
    np.testing.assert_allclose(result[0].shape, (1, 1, 1, 3))
    np.testing.assert_allclose(result[0].ravel(), per_channel, rtol=1e-5)
    np.testing.assert_allclose(result[1], per_channel, rtol=1e-5)


def test_depthwise_channels_follow_the_neuron_table():
    inputs = keras.Input((3, 3, 2))
    depthwise = keras.layers.DepthwiseConv2D(1, depth_multiplier=2)
    h = keras.layers.Flatten()(depthwise(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    x = np.random.default_rng(4).normal(size=(3, 3, 3, 2)).astype("float32")
    result = neuron_sensitivities(ks.sensitivity.NeuronSensitivity(), model, x)
    dense = model.layers[-1]
    z = tf.Variable(linear_part(depthwise, x))
    with tf.GradientTape() as tape:
        y = tf.matmul(tf.reshape(z, (3, -1)), dense.kernel)
        seed = tf.reduce_sum(y)
    per_channel = np.abs(tape.gradient(seed, z).numpy()).mean(axis=(0, 1, 2))
    # Kernel [1, 1, in, multiplier]: channel i * multiplier + m.
    assert result[0].shape == (1, 1, 2, 2)
    np.testing.assert_allclose(
        result[0], per_channel.reshape(1, 1, 2, 2), rtol=1e-5
    )


LAYERS = [
    (keras.layers.Dense, dict(units=3), (4,)),
    (keras.layers.Conv1D, dict(filters=3, kernel_size=2), (5, 2)),
    (
        keras.layers.Conv1D,
        dict(filters=3, kernel_size=3, padding="causal", dilation_rate=2),
        (6, 2),
    ),
    (keras.layers.Conv2D, dict(filters=3, kernel_size=2, strides=2), (4, 4, 2)),
    (keras.layers.Conv3D, dict(filters=2, kernel_size=2), (3, 3, 3, 1)),
    (keras.layers.DepthwiseConv1D, dict(kernel_size=2), (5, 2)),
    (
        keras.layers.DepthwiseConv2D,
        dict(kernel_size=2, depth_multiplier=2, padding="same"),
        (4, 4, 2),
    ),
    (keras.layers.SeparableConv1D, dict(filters=3, kernel_size=2), (5, 2)),
    (keras.layers.SeparableConv2D, dict(filters=3, kernel_size=2), (4, 4, 2)),
    (keras.layers.Conv1DTranspose, dict(filters=3, kernel_size=2), (4, 2)),
    (
        keras.layers.Conv2DTranspose,
        dict(filters=3, kernel_size=3, strides=2, padding="same"),
        (3, 3, 2),
    ),
]


@pytest.mark.parametrize(
    "cls, kwargs, shape", LAYERS, ids=lambda v: getattr(v, "__name__", None)
)
def test_linear_part_matches_the_layer(cls, kwargs, shape):
    layer = cls(activation="relu", bias_initializer="random_normal", **kwargs)
    x = np.random.default_rng(5).normal(size=(2,) + shape).astype("float32")
    expected = layer(x)
    z = linear_part(layer, x)
    assert np.any(np.asarray(z) < 0)  # A true pre-activation.
    np.testing.assert_allclose(
        keras.ops.relu(z), expected, rtol=1e-5, atol=1e-6
    )


def test_probe_shares_layers_and_leaves_the_model_alone():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="relu"),
            keras.Sequential([keras.layers.Dense(3, activation="tanh")]),
            keras.layers.Dense(2),
        ]
    )
    config = model.get_config()
    x = np.random.default_rng(6).normal(size=(4, 3)).astype("float32")
    before = model(x)
    probe = preactivation_model(model)
    y, zs = probe(x)
    np.testing.assert_allclose(y, before, rtol=1e-6)
    assert [la.name for la in probe.layers] == [
        la.name for la, _ in neurons.neuron_layers(model)
    ]
    assert len(zs) == 3  # The nested Sequential's Dense is followed.
    np.testing.assert_allclose(
        zs[0],
        x @ model.layers[0].kernel.numpy() + (model.layers[0].bias.numpy()),
        rtol=1e-5,
    )
    assert model.get_config() == config
    np.testing.assert_allclose(model(x), before, rtol=1e-6)


def test_probe_errors():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        preactivation_model(sub)
    shared = keras.layers.Dense(3, name="shared")
    inputs = keras.Input((3,))
    twice = keras.Model(inputs, shared(shared(inputs)))
    with pytest.raises(ValueError, match="'shared'.*called 2 times"):
        preactivation_model(twice)


def _digits(n=480):
    (x, y), _ = load_digits()
    return x[:n].reshape(n, -1), y[:n]


def _trainer(sensitivity, decay=1e-3, lr=0.1):
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu", name="hidden"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    trainer = ks.SensitivityModel(model)
    trainer.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(lr), sensitivity=sensitivity, decay=decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model, trainer


def test_dead_neuron_is_masked_whole_and_stays_dead_through_fit():
    x, y = _digits()
    model, trainer = _trainer("neuron")
    trainer.fit(x, y, epochs=1, batch_size=32, verbose=0)
    hidden = model.get_layer("hidden")
    optimizer = masks.mask_optimizer(trainer)
    where = np.zeros(hidden.kernel.shape, bool)
    where[:, 3] = True  # Neuron 3: incoming weights pruned, bias alive.
    masks.set_flag(optimizer, hidden.kernel, masks.PRUNED, where, zero=True)
    hidden.bias.assign(np.full((16,), 0.5, "float32"))
    pruner = ks.callbacks.SensitivityPruning(
        patience=1, tolerance=0.2, plateau_tolerance=-0.5, verbose=0
    )
    history = trainer.fit(
        x,
        y,
        validation_split=0.25,
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[pruner],
    )
    assert pruner.history, "no pruning step happened"
    assert hidden.bias.numpy()[3] == 0.0
    assert masks.pruned(optimizer, hidden.bias)[3]
    assert np.all(masks.pruned(optimizer, hidden.kernel)[:, 3])
    assert "alive_neurons" in history.history
    assert history.history["alive_neurons"][-1] < 1.0
    # tolerance=0.2 prunes every hidden weight here, so `hidden` no longer
    # reaches the output: its S is 0 and the epoch's check says so.
    with pytest.warns(KerasSereneWarning, match="hidden' stayed 0"):
        trainer.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert hidden.bias.numpy()[3] == 0.0
    assert np.all(hidden.kernel.numpy()[:, 3] == 0.0)
    report = ks.summary(model, print_fn=False)
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["hidden"]["alive_neurons"] <= 15
    assert report["architecture"].startswith("64-16-10 -> 64-")


@pytest.mark.parametrize("estimator", ["local", "loss"])
def test_other_estimators_train_through_fit(estimator):
    x, y = _digits(160)
    model, trainer = _trainer(
        ks.sensitivity.NeuronSensitivity(estimator), decay=0.05
    )
    before = model.get_weights()
    history = trainer.fit(x, y, epochs=1, batch_size=40, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert not np.allclose(before[0], model.get_weights()[0])


def test_unsupported_layer_is_named_at_compile():
    inputs = keras.Input((4,))
    h = keras.layers.LayerNormalization(name="norm")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    trainer = ks.SensitivityModel(model)
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.1), sensitivity="neuron"
    )
    with pytest.raises(ValueError, match="'norm' \\(LayerNormalization\\)"):
        trainer.compile(optimizer=optimizer, loss="mse")
    # Excluding its weights makes the model trainable.
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.1), sensitivity="neuron", exclude=["norm"]
    )
    trainer.compile(optimizer=optimizer, loss="mse")


def test_fused_activation_without_linear_part_is_named(monkeypatch):
    class Scaled(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.activation = keras.activations.relu

        def build(self, shape):
            self.kernel = self.add_weight(shape=(shape[-1],), name="kernel")

        def call(self, x):
            return self.activation(x * self.kernel)

    monkeypatch.setitem(neurons.NEURON_WEIGHTS, "Scaled", {"kernel": "last"})
    inputs = keras.Input((3,))
    model = keras.Model(inputs, Scaled(name="scaled")(inputs))
    trainer = ks.SensitivityModel(model)
    with pytest.raises(ValueError, match="'scaled' \\(Scaled\\).*fused"):
        trainer.compile(
            optimizer=ks.SensitivityOptimizer(
                keras.optimizers.SGD(0.1), sensitivity="neuron"
            ),
            loss="mse",
        )


def test_registered_name_and_config_round_trip():
    estimator = ks.sensitivity.get("neuron")
    assert isinstance(estimator, ks.sensitivity.NeuronSensitivity)
    assert estimator.per_neuron and estimator.requires_model
    assert estimator.estimator == "lower_bound"
    original = ks.sensitivity.NeuronSensitivity("loss", momentum=0.5)
    config = original.get_config()
    assert config == {"estimator": "loss", "momentum": 0.5}
    again = assert_config_round_trip(original)
    assert not again.uses_extra_pass and again.needs_loss_gradients


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"estimator": "exact"}, ValueError, "estimator='exact'"),
        ({"momentum": 1.0}, ValueError, "momentum=1.0"),
        ({"momentum": "0.9"}, TypeError, "momentum='0.9'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ks.sensitivity.NeuronSensitivity(**kwargs)
