"""OutputSensitivity: hand-computed S, Jacobian checks, fit, errors."""

import harness
import keras
import numpy as np
import pytest
import tensorflow as tf
from harness import assert_config_round_trip

import keras_serene as ks
from keras_serene.sensitivity.sensitivity_model import ModelPass

# A 2-2-2 ReLU net with hand-set weights, two samples, worked out by hand:
# z1 = x W1 + b1 = [[3, 1], [-1.5, 0.5]], h = relu(z1) = [[3, 1], [0, .5]],
# y = h W2 + b2 = [[0, 7], [-2.5, 0.5]].
X = np.array([[1.0, 1.0], [0.5, -1.0]], "float32")
LABELS = np.array([1, 0])
W1 = np.array([[1.0, -1.0], [2.0, 0.5]], "float32")
B1 = np.array([0.0, 1.5], "float32")
W2 = np.array([[1.0, 2.0], [-1.0, 1.0]], "float32")
B2 = np.array([-2.0, 0.0], "float32")

# S = sum_k a_k |d ybar_k / dw| (exact) and |d sum_k a_k ybar_k / dw|
# (bound), ybar_k the batch mean of a_bk y_bk; order W1, b1, W2, b2.
UNSPECIFIC_BOUND = [
    [[0.75, 0.0], [0.75, 0.0]],  # sum_k W2[1, k] = 0: column 1 cancels.
    [0.75, 0.0],
    [[0.75, 0.75], [0.375, 0.375]],
    [0.5, 0.5],
]
UNSPECIFIC_EXACT = [
    [[0.75, 0.75], [0.75, 0.0]],
    [0.75, 1.0],
    [[0.75, 0.75], [0.375, 0.375]],
    [0.5, 0.5],
]
SPECIFIC_BOUND = [
    [[1.0, 0.25], [1.0, 1.0]],
    [1.0, 0.0],
    [[0.0, 1.5], [0.25, 0.5]],
    [0.5, 0.5],
]
SPECIFIC_EXACT = [
    [[1.0, 0.75], [1.0, 1.0]],
    [1.0, 1.0],
    [[0.0, 1.5], [0.25, 0.5]],
    [0.5, 0.5],
]


def hand_net():
    return harness.hand_net([W1, B1, W2, B2])


def sensitivities(estimator, model, x, labels=None):
    """Runs `estimator.from_model` on one tape, all variables regularized."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(x)
    model_pass = ModelPass(
        tape, variables, [True] * len(variables), outputs, labels, [], [], 1
    )
    return [s.numpy() for s in estimator.from_model(model_pass)]


@pytest.mark.parametrize(
    "mode, exact, expected",
    [
        ("unspecific", False, UNSPECIFIC_BOUND),
        ("unspecific", True, UNSPECIFIC_EXACT),
        ("specific", False, SPECIFIC_BOUND),
        ("specific", True, SPECIFIC_EXACT),
    ],
)
def test_by_hand(mode, exact, expected):
    estimator = ks.sensitivity.OutputSensitivity(mode=mode, exact=exact)
    result = sensitivities(estimator, hand_net(), X, LABELS)
    for got, want in zip(result, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_specific_accepts_one_hot_labels():
    estimator = ks.sensitivity.OutputSensitivity(mode="specific")
    one_hot = np.eye(2, dtype="float32")[LABELS]
    result = sensitivities(estimator, hand_net(), X, one_hot)
    for got, want in zip(result, SPECIFIC_BOUND):
        np.testing.assert_allclose(got, want, atol=1e-6)


def _random_net():
    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, activation="tanh")(inputs)
    h = keras.layers.Dense(4, activation="relu")(h)
    outputs = keras.layers.Dense(3)(h)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("mode", ["unspecific", "specific"])
def test_exact_is_jacobian_sum_and_bound_is_below(mode):
    model = _random_net()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5)).astype("float32")
    labels = rng.integers(0, 3, 6)
    a = np.full((6, 3), 1 / 3, "float32")
    if mode == "specific":
        a = np.eye(3, dtype="float32")[labels]
    # Independent: the Jacobian of ybar_k = mean_b a_bk y_bk.
    with tf.GradientTape(persistent=True) as tape:
        ybar = tf.reduce_mean(a * model(x), axis=0)
    jacobians = tape.jacobian(ybar, model.trainable_variables)
    exact = sensitivities(
        ks.sensitivity.OutputSensitivity(mode, exact=True), model, x, labels
    )
    bound = sensitivities(
        ks.sensitivity.OutputSensitivity(mode), model, x, labels
    )
    for jac, e, b in zip(jacobians, exact, bound):
        jac = jac.numpy()
        np.testing.assert_allclose(e, np.abs(jac).sum(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b, np.abs(jac.sum(0)), rtol=1e-5, atol=1e-7)
        assert np.all(b <= e + 1e-6)
    assert any(np.any(b < e - 1e-4) for b, e in zip(bound, exact))


def _compile(trainer, sensitivity, lr=0.0, decay=0.5):
    trainer.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(lr), sensitivity=sensitivity, decay=decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


@pytest.mark.parametrize(
    "exact, expected", [(False, UNSPECIFIC_BOUND), (True, UNSPECIFIC_EXACT)]
)
def test_fit_step_applies_the_decay(exact, expected):
    """One step with lr 0: w <- w - 0.5 * w * relu(1 - S), S by hand."""
    model = hand_net()
    trainer = ks.SensitivityModel(model)
    _compile(trainer, ks.sensitivity.OutputSensitivity(exact=exact))
    trainer.fit(X, LABELS, batch_size=2, epochs=1, shuffle=False, verbose=0)
    for w0, s, w in zip([W1, B1, W2, B2], expected, model.get_weights()):
        want = w0 - 0.5 * w0 * np.maximum(0.0, 1.0 - np.asarray(s))
        np.testing.assert_allclose(w, want, rtol=1e-6)


def test_registered_name_and_config_round_trip():
    estimator = ks.sensitivity.get("output")
    assert isinstance(estimator, ks.sensitivity.OutputSensitivity)
    assert estimator.requires_model and not estimator.per_neuron
    original = ks.sensitivity.OutputSensitivity(mode="specific", exact=True)
    config = original.get_config()
    assert config == {"mode": "specific", "exact": True}
    assert_config_round_trip(original)
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.1), sensitivity=original
    )
    restored = ks.SensitivityOptimizer.from_config(optimizer.get_config())
    assert restored.sensitivity.get_config() == config


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"mode": "both"}, ValueError, "mode='both'"),
        ({"exact": 1}, TypeError, "exact=1"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ks.sensitivity.OutputSensitivity(**kwargs)


def test_multiple_outputs_are_rejected_at_compile():
    inputs = keras.Input((2,))
    a = keras.layers.Dense(2)(inputs)
    b = keras.layers.Dense(3)(inputs)
    trainer = ks.SensitivityModel(keras.Model(inputs, [a, b]))
    with pytest.raises(ValueError, match="2 output tensors"):
        _compile(trainer, "output")


def test_specific_label_errors():
    estimator = ks.sensitivity.OutputSensitivity(mode="specific")
    with pytest.raises(ValueError, match="no labels"):
        sensitivities(estimator, hand_net(), X, None)
    with pytest.raises(ValueError, match="match neither"):
        sensitivities(estimator, hand_net(), X, np.zeros((2, 5), "float32"))


def _softmax_model(sequential):
    if sequential:
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(5, activation="relu"),
                keras.layers.Dense(3, activation="softmax", name="probs"),
            ]
        )
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="relu")(inputs)
    logits = keras.layers.Dense(3)(h)
    return keras.Model(inputs, keras.layers.Softmax(name="probs")(logits))


@pytest.mark.parametrize("sequential", [True, False])
@pytest.mark.parametrize(
    "estimator, vanishes",
    [
        (ks.sensitivity.OutputSensitivity(), True),
        (ks.sensitivity.NeuronSensitivity("lower_bound"), True),
        (ks.sensitivity.OutputSensitivity(exact=True), False),
        (ks.sensitivity.OutputSensitivity(mode="specific"), False),
        (ks.sensitivity.NeuronSensitivity("full"), False),
    ],
)
def test_one_pass_bound_on_a_softmax_warns(estimator, vanishes, sequential):
    from keras_serene import KerasSereneWarning

    model = _softmax_model(sequential)
    trainer = ks.SensitivityModel(model)
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.0), sensitivity=estimator, decay=0.5
    )
    compile_args = dict(optimizer=optimizer, loss="categorical_crossentropy")
    if vanishes:
        match = r"softmax \(layer 'probs'\)"
        with pytest.warns(KerasSereneWarning, match=match):
            trainer.compile(**compile_args)
    else:
        trainer.compile(**compile_args)  # filterwarnings=error: no warning
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    y = keras.ops.one_hot(np.arange(8) % 3, 3)
    before = [w.copy() for w in model.get_weights()]
    if vanishes:  # and the epoch's check names the layers whose S stayed 0
        with pytest.warns(KerasSereneWarning, match="stayed 0"):
            trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    else:
        trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # lr 0: only the decay moves weights, by 0.5 * relu(1 - S). A vanishing
    # S decays the first kernel by exactly one half everywhere.
    ratio = model.get_weights()[0] / before[0]
    if vanishes:
        np.testing.assert_allclose(ratio, 0.5, atol=1e-6)
    else:
        assert np.max(np.abs(ratio - 0.5)) > 1e-4
