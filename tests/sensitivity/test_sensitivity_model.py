"""SensitivityModel: the extra pass inside fit, Keras integration, errors."""

import keras
import numpy as np
import pytest
from harness import assert_config_round_trip
from harness import assert_saving_round_trip
from two_cpus import run_on_two_cpus

import keras_serene as ks
from keras_serene.core import masking as masks

RNG = np.random.default_rng(0)
X = RNG.normal(size=(48, 6)).astype("float32")
Y = RNG.integers(0, 3, 48)


def sequential():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ]
    )


def functional():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, name="hidden")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def optimizer(sensitivity="neuron", decay=1e-2, lr=0.1):
    return ks.SensitivityOptimizer(
        keras.optimizers.SGD(lr), sensitivity=sensitivity, decay=decay
    )


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("sensitivity", ["output", "neuron"])
def test_plain_fit_fails_at_first_step_naming_sensitivity_model(sensitivity):
    model = sequential()
    model.compile(optimizer=optimizer(sensitivity), loss=LOSS)
    before = model.get_weights()
    with pytest.raises(ValueError, match="ks.SensitivityModel"):
        model.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_without_decay_it_trains_like_plain_fit():
    """decay=0: same weights and logged loss as `model.fit` itself."""
    plain = sequential()
    wrapped = sequential()
    wrapped.set_weights(plain.get_weights())
    plain.compile(optimizer=optimizer("loss", decay=0.0), loss=LOSS)
    trainer = ks.SensitivityModel(wrapped)
    trainer.compile(optimizer=optimizer("output", decay=0.0), loss=LOSS)
    kwargs = dict(epochs=2, batch_size=16, shuffle=False, verbose=0)
    a = plain.fit(X, Y, **kwargs).history["loss"]
    b = trainer.fit(X, Y, **kwargs).history["loss"]
    np.testing.assert_allclose(a, b, rtol=1e-5)
    for u, v in zip(plain.get_weights(), wrapped.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_functional_fit_validation_metrics_evaluate_predict():
    model = functional()
    config = model.get_config()
    trainer = ks.SensitivityModel(model)
    assert trainer.trainable_variables == model.trainable_variables
    trainer.compile(optimizer=optimizer(), loss=LOSS, metrics=["accuracy"])
    history = trainer.fit(
        X[:36],
        Y[:36],
        validation_data=(X[36:], Y[36:]),
        epochs=2,
        batch_size=12,
        verbose=0,
    )
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(
        history.history
    )
    np.testing.assert_allclose(
        trainer.predict(X, verbose=0), model.predict(X, verbose=0), rtol=1e-6
    )
    loss, _ = trainer.evaluate(X, Y, verbose=0)
    assert np.isfinite(loss)
    # Training went through the user's model, which is otherwise untouched.
    assert model.get_config() == config
    assert not model.compiled


def test_jit_compile_gives_the_same_step():
    weights = sequential().get_weights()
    results = []
    for jit in (False, True):
        model = sequential()
        model.set_weights(weights)
        trainer = ks.SensitivityModel(model)
        trainer.compile(
            optimizer=optimizer(
                ks.sensitivity.OutputSensitivity(exact=True), decay=0.1
            ),
            loss=LOSS,
            jit_compile=jit,
        )
        trainer.fit(X, Y, epochs=1, batch_size=16, shuffle=False, verbose=0)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_keras_round_trip_of_the_trained_model(tmp_path):
    model = functional()
    trainer = ks.SensitivityModel(model)
    trainer.compile(optimizer=optimizer(), loss=LOSS)
    trainer.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    assert_saving_round_trip(model, X, tmp_path)


def test_keras_round_trip_of_the_sensitivity_model(tmp_path):
    model = sequential()
    trainer = ks.SensitivityModel(model)
    trainer.compile(
        optimizer=optimizer(ks.sensitivity.NeuronSensitivity("loss")),
        loss=LOSS,
    )
    trainer.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    opt = masks.mask_optimizer(trainer)
    kernel = model.get_layer("hidden").kernel
    where = np.zeros(kernel.shape, bool)
    where[0] = True
    masks.set_flag(opt, kernel, masks.PRUNED, where, zero=True)
    loaded = assert_saving_round_trip(trainer, X, tmp_path, "trainer.keras")
    loaded_opt = masks.mask_optimizer(loaded)
    assert loaded_opt.sensitivity.get_config() == {
        "estimator": "loss",
        "momentum": 0.9,
    }
    assert len(opt.variables) == len(loaded_opt.variables)
    for a, b in zip(opt.variables, loaded_opt.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    loaded_kernel = loaded.model.get_layer("hidden").kernel
    assert masks.pruned(loaded_opt, loaded_kernel)[0].all()
    loaded.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    assert np.all(loaded_kernel.numpy()[0] == 0.0)


def test_config_round_trip():
    trainer = ks.SensitivityModel(sequential(), name="trainer")
    again = assert_config_round_trip(trainer)
    assert again.name == "trainer"
    assert again.model.get_config() == trainer.model.get_config()


def test_subclassed_model_with_output_sensitivity():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

    net = Net()
    net(X[:1])
    trainer = ks.SensitivityModel(net)
    trainer.compile(optimizer=optimizer("output"), loss=LOSS)
    history = trainer.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(ValueError, match="subclassed"):
        trainer.compile(optimizer=optimizer("neuron"), loss=LOSS)


def test_mixed_float16_is_rejected_and_bfloat16_trains():
    model = sequential()
    keras.config.set_dtype_policy("mixed_float16")
    trainer = ks.SensitivityModel(model)
    with pytest.raises(ValueError, match="mixed_float16"):
        trainer.compile(optimizer=optimizer(), loss=LOSS)
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = sequential()
    trainer = ks.SensitivityModel(model)
    trainer.compile(optimizer=optimizer(), loss=LOSS)
    history = trainer.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.get_layer("hidden").kernel.dtype == "float32"


def test_bad_arguments():
    with pytest.raises(TypeError, match="must be a keras.Model"):
        ks.SensitivityModel("model")
    trainer = ks.SensitivityModel(sequential())
    with pytest.raises(ValueError, match="already a SensitivityModel"):
        ks.SensitivityModel(trainer)
    with pytest.raises(ValueError, match="not built"):
        ks.SensitivityModel(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(TypeError, match="ks.SensitivityOptimizer"):
        trainer.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)


MIRRORED = """
    import tensorflow as tf
    import keras
    import numpy as np
    import keras_serene as ks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 3, 64)
    keras.utils.set_random_seed(1)
    init = keras.Sequential([keras.Input((6,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(3)]).get_weights()

    def run(sensitivity, strategy=None):
        scope = strategy.scope() if strategy else tf.device("/cpu:0")
        with scope:
            model = keras.Sequential([keras.Input((6,)),
                keras.layers.Dense(8, activation="relu"),
                keras.layers.Dense(3)])
            model.set_weights(init)
            trainer = ks.SensitivityModel(model)
            trainer.compile(
                optimizer=ks.SensitivityOptimizer(
                    keras.optimizers.SGD(0.1), sensitivity=sensitivity,
                    decay=0.05),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
        trainer.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        return trainer, model.get_weights()

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for sensitivity in ["output", "neuron",
                        ks.sensitivity.NeuronSensitivity("loss")]:
        _, single = run(sensitivity)
        trainer, mirrored = run(sensitivity, strategy)
        assert trainer.distribute_strategy.num_replicas_in_sync == 2
        for a, b in zip(single, mirrored):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        print("OK", sensitivity)
    """


def test_mirrored_strategy_matches_single_device():
    run_on_two_cpus(MIRRORED)


@pytest.mark.parametrize(
    "estimator",
    [
        ks.sensitivity.OutputSensitivity(),
        ks.sensitivity.NeuronSensitivity("lower_bound"),
    ],
)
def test_a_layer_whose_sensitivity_stays_zero_is_named_once(estimator):
    from keras_serene import KerasSereneWarning

    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, activation="relu", name="cut")(inputs)
    outputs = keras.layers.Dense(3, name="head")(h)
    model = keras.Model(inputs, outputs)
    head = model.get_layer("head")
    head.kernel.assign(np.zeros(head.kernel.shape, "float32"))
    # With lr 0 the head's kernel stays 0: `cut` no longer reaches the output.
    trainer = ks.SensitivityModel(model)
    trainer.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.0), sensitivity=estimator, decay=0.1
        ),
        loss=LOSS,
    )
    with pytest.warns(KerasSereneWarning, match="layer 'cut' stayed 0") as got:
        trainer.fit(X, Y, epochs=3, batch_size=16, verbose=0)
    named = [str(w.message) for w in got if "stayed 0" in str(w.message)]
    assert len(named) == 1  # once, not per epoch; `head` is not named
    assert "'head'" not in named[0]
