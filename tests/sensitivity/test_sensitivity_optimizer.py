"""SensitivityOptimizer: hand-computed updates, masks, Keras integration."""

import keras
import numpy as np
import pytest
from harness import assert_config_round_trip
from harness import assert_saving_round_trip
from two_cpus import run_on_two_cpus

import keras_serene as ks
from keras_serene.core import masking as masks

W0 = np.array([[1.0, -2.0], [0.5, 0.0]], dtype="float32")
G = np.array([[0.5, 2.0], [0.0, -0.25]], dtype="float32")


def _kernel(value=W0, name="kernel"):
    return keras.Variable(np.array(value), name=name)


def test_lobster_update_by_hand():
    w = _kernel()
    opt = ks.SensitivityOptimizer(keras.optimizers.SGD(0.1), decay=0.5)
    opt.apply([G], [w])
    # SGD step, then w -= 0.5 * w * relu(1 - |g|), no lr factor.
    stepped = np.array([[0.95, -2.2], [0.5, 0.025]])
    insensitivity = np.array([[0.5, 0.0], [1.0, 0.75]])
    expected = stepped - 0.5 * stepped * insensitivity
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(
        w.numpy(), [[0.7125, -2.2], [0.25, 0.015625]], rtol=1e-6
    )


def test_decay_has_no_learning_rate_factor():
    insensitivity = np.maximum(0.0, 1.0 - np.abs(G))
    for lr in (0.01, 1.0):
        w = _kernel()
        opt = ks.SensitivityOptimizer(keras.optimizers.SGD(lr), decay=0.5)
        opt.apply([G], [w])
        stepped = W0 - lr * G
        # The decay is the full 0.5 * w * relu(1 - |g|) whatever the lr.
        expected = stepped - 0.5 * stepped * insensitivity
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)


def test_rescaled_loss_sensitivity():
    w = _kernel()
    opt = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.0),
        sensitivity=ks.sensitivity.LossSensitivity(rescaled=True),
        decay=0.5,
    )
    opt.apply([G], [w])
    s = np.abs(G) / np.abs(G).max()
    np.testing.assert_allclose(w.numpy(), W0 - 0.5 * W0 * (1 - s), rtol=1e-6)


def test_only_regularized_variables_decay_and_exclude():
    kernel, bias = _kernel(), _kernel(W0[0], name="bias")
    other = _kernel(name="embeddings")
    opt = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.0), decay=0.5, exclude=["bias"]
    )
    opt.apply([G, G[0] * 0, G * 0], [kernel, bias, other])
    assert not np.allclose(kernel.numpy(), W0)
    np.testing.assert_array_equal(bias.numpy(), W0[0])
    np.testing.assert_array_equal(other.numpy(), W0)
    assert [v.path for v in opt.regularized_variables] == ["kernel"]


@pytest.mark.parametrize(
    "inner",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.Adam(0.1),
        lambda: keras.optimizers.AdamW(0.1, weight_decay=0.5),
    ],
    ids=["sgd_momentum", "adam", "adamw"],
)
def test_pruned_stay_zero_and_frozen_bit_exact(inner):
    w = _kernel()
    opt = ks.SensitivityOptimizer(inner(), decay=1e-2)
    opt.apply([G], [w])  # Builds momentum / moments with a nonzero history.
    masks.set_flag(
        opt, w, masks.PRUNED, [[True, False], [False, False]], zero=True
    )
    masks.set_flag(opt, w, masks.FROZEN, [[False, True], [False, False]])
    frozen_value = w.numpy()[0, 1]
    for _ in range(5):
        opt.apply([G], [w])
    assert w.numpy()[0, 0] == 0.0
    assert w.numpy()[0, 1] == frozen_value  # Bit for bit.
    assert w.numpy()[1, 0] != W0[1, 0]
    # Unfreezing lets the entry move again; the pruned one stays pruned.
    masks.set_flag(opt, w, masks.FROZEN, np.zeros((2, 2), bool))
    opt.apply([G], [w])
    assert w.numpy()[0, 1] != frozen_value
    assert w.numpy()[0, 0] == 0.0
    assert masks.pruned(opt, w)[0, 0] and not masks.frozen(opt, w).any()


def test_masks_cost_one_byte_per_parameter():
    w = _kernel()
    opt = ks.SensitivityOptimizer(keras.optimizers.SGD(0.1))
    opt.build([w])
    assert masks.mask_bytes(opt) == w.numpy().size


def test_learning_rate_and_iterations_are_delegated():
    inner = keras.optimizers.SGD(0.1)
    opt = ks.SensitivityOptimizer(inner)
    w = _kernel()
    opt.apply([G], [w])
    opt.apply([G], [w])
    assert int(opt.iterations.numpy()) == 2 == int(inner.iterations.numpy())
    opt.learning_rate = 0.01
    np.testing.assert_allclose(float(inner.learning_rate.numpy()), 0.01)


def test_config_round_trip():
    opt = ks.SensitivityOptimizer(
        keras.optimizers.Adam(0.01),
        sensitivity=ks.sensitivity.LossSensitivity(rescaled=True),
        decay=3e-4,
        exclude=["bias"],
        name="sens",
    )
    config = opt.get_config()
    restored = assert_config_round_trip(opt)
    assert isinstance(restored.inner_optimizer, keras.optimizers.Adam)
    assert restored.sensitivity.rescaled is True
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, ks.SensitivityOptimizer)
    assert again.get_config() == config


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"decay": -1.0}, ValueError, "decay=-1.0"),
        ({"decay": "big"}, TypeError, "decay='big'"),
        ({"decay": float("nan")}, ValueError, "finite.*Received: decay=nan"),
        ({"decay": float("inf")}, ValueError, "finite.*Received: decay=inf"),
        ({"decay": -float("inf")}, ValueError, "decay=-inf"),
        ({"mask_gradients": "yes"}, TypeError, "mask_gradients='yes'"),
        ({"sensitivity": "gradient"}, ValueError, "sensitivity='gradient'"),
        ({"clipnorm": 1.0}, ValueError, "set `clipnorm` on the"),
        ({"weight_decay": 0.1}, ValueError, "set `weight_decay` on the"),
        ({"exclude": "bias"}, TypeError, "exclude='bias'"),
        ({"foo": 1}, ValueError, "foo"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ks.SensitivityOptimizer(keras.optimizers.SGD(0.1), **kwargs)


def test_inner_must_be_keras_optimizer():
    with pytest.raises(TypeError, match="inner_optimizer"):
        ks.SensitivityOptimizer("sgd")


def test_a_sensitivity_optimizer_of_a_sensitivity_optimizer_is_refused():
    # It would decay twice and hold two sets of masks.
    inner = ks.SensitivityOptimizer(keras.optimizers.SGD(0.1))
    with pytest.raises(
        ValueError,
        match=r"SensitivityOptimizer: `inner_optimizer` must not hold masks"
        r".*contains a SensitivityOptimizer",
    ):
        ks.SensitivityOptimizer(inner)


def test_mask_gradients_round_trips_and_zeroes_masked_gradients():
    opt = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9), decay=0.0, mask_gradients=True
    )
    restored = ks.SensitivityOptimizer.from_config(opt.get_config())
    assert restored.mask_gradients is True
    w = keras.Variable(np.ones((2, 2), "float32"))
    opt.build([w])
    masks.set_flag(opt, w, masks.FROZEN, [[True, False], [False, False]])
    opt.apply([np.ones((2, 2), "float32")], [w])
    momentum = keras.ops.convert_to_numpy(opt.inner_optimizer.momentums[0])
    np.testing.assert_allclose(momentum, [[0.0, -0.1], [-0.1, -0.1]])


def _mlp():
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(3),
        ]
    )
    return model


def _data(n=64):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n, 8)).astype("float32"), rng.integers(0, 3, n))


def _compile(model, decay=0.1, jit_compile=False):
    model.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.9), decay=decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_keeps_pruned_entries_at_zero(jit_compile):
    x, y = _data()
    model = _compile(_mlp(), jit_compile=jit_compile)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    kernel = model.layers[0].kernel
    opt = masks.mask_optimizer(model)
    where = np.zeros(kernel.shape, bool)
    where[0] = True
    masks.set_flag(opt, kernel, masks.PRUNED, where, zero=True)
    before = kernel.numpy()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(kernel.numpy()[0] == 0.0)
    assert np.all(kernel.numpy()[1:] != before[1:])


def test_matches_manual_lobster_step_inside_fit():
    """One fit step equals SGD + the decay computed from the same gradient."""
    import tensorflow as tf

    x, y = _data(16)
    model = _mlp()
    reference = _mlp()
    reference.set_weights(model.get_weights())
    model.compile(
        optimizer=ks.SensitivityOptimizer(keras.optimizers.SGD(0.1), decay=0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, reference(x))
    grads = tape.gradient(loss, reference.trainable_variables)
    for v, g, got in zip(
        reference.trainable_variables, grads, model.trainable_variables
    ):
        g = g.numpy()
        w = v.numpy() - 0.1 * g
        w = w - 0.5 * w * np.maximum(0.0, 1.0 - np.abs(g))
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-5, atol=1e-6)


def test_mixed_precision_unscales_gradients_before_sensitivity():
    x, y = _data(16)
    weights = None
    results = {}
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        model = _mlp()
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.compile(
            optimizer=ks.SensitivityOptimizer(
                keras.optimizers.SGD(0.0), decay=0.5
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
        results[policy] = model.layers[0].kernel.numpy()
    keras.config.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # With the 2**15 loss scale left in, S would be huge and nothing would
    # decay; unscaled, both runs decay alike (up to float16 rounding).
    assert not np.allclose(results["float32"], weights[0])
    np.testing.assert_allclose(
        results["mixed_float16"], results["float32"], rtol=2e-2, atol=2e-3
    )


def test_save_load_keeps_masks_and_state(tmp_path):
    x, y = _data()
    model = _compile(_mlp())
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    opt = masks.mask_optimizer(model)
    kernel = model.layers[0].kernel
    where = np.zeros(kernel.shape, bool)
    where[:, 0] = True
    masks.set_flag(opt, kernel, masks.PRUNED, where, zero=True)
    loaded = assert_saving_round_trip(model, x, tmp_path, "m.keras")
    loaded_opt = masks.mask_optimizer(loaded)
    assert isinstance(loaded_opt.inner_optimizer, keras.optimizers.SGD)
    np.testing.assert_array_equal(
        masks.read_mask(loaded_opt, loaded.layers[0].kernel),
        masks.read_mask(opt, kernel),
    )
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )
    # Training continues identically from the saved state.
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.all(loaded.layers[0].kernel.numpy()[:, 0] == 0.0)


MIRRORED = """
    import numpy as np
    import tensorflow as tf
    import keras
    import keras_serene as ks
    from keras_serene.core import masking as masks

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, 64)
    keras.utils.set_random_seed(0)
    init = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6),
                             keras.layers.Dense(3)]).get_weights()

    def run(strategy):
        with strategy.scope():
            model = keras.Sequential([keras.Input((8,)),
                                      keras.layers.Dense(6),
                                      keras.layers.Dense(3)])
            model.set_weights(init)
            model.compile(
                optimizer=ks.SensitivityOptimizer(
                    keras.optimizers.SGD(0.1, momentum=0.9), decay=0.5),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False)
        opt = masks.mask_optimizer(model)
        kernel = model.layers[0].kernel
        where = np.zeros(kernel.shape, bool)
        where[0] = True
        masks.set_flag(opt, kernel, masks.PRUNED, where, zero=True)
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
        return model

    single = run(tf.distribute.get_strategy())
    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert np.all(mirrored.layers[0].kernel.numpy()[0] == 0.0)
    """


def test_mirrored_strategy_matches_single_device():
    run_on_two_cpus(MIRRORED)


def test_inner_loss_scale_factor_is_honoured():
    """The wrapper scales the loss as its inner optimizer unscales grads."""
    x, y = _data(16)
    results = []
    for factor in (None, 128.0):
        keras.utils.set_random_seed(0)
        model = _mlp()
        model.compile(
            optimizer=ks.SensitivityOptimizer(
                keras.optimizers.SGD(0.1, loss_scale_factor=factor),
                decay=0.0,
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_built_once_under_loss_scale_optimizer():
    """Masks set before the first step survive a LossScaleOptimizer."""
    keras.config.set_dtype_policy("mixed_float16")
    x, y = _data(32)
    model = _compile(_mlp())
    keras.config.set_dtype_policy("float32")
    opt = masks.mask_optimizer(model)
    masks.ensure_built(opt, model)
    assert model.optimizer.built and opt.built
    count = len(model.optimizer.variables)
    kernel = model.layers[0].kernel
    where = np.zeros(kernel.shape, bool)
    where[0] = True
    masks.set_flag(opt, kernel, masks.PRUNED, where, zero=True)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert len(model.optimizer.variables) == count
    assert np.all(kernel.numpy()[0] == 0.0)
