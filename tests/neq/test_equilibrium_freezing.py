"""`EquilibriumFreezing` inside `fit`: masks, warm-up, unfreezing, skips."""

import warnings

import keras
import numpy as np
import pytest
from two_cpus import run_on_two_cpus

import keras_serene as ks
from keras_serene.core import masking as masks_lib

DEAD = 2  # conv channel built dead (zero kernel, bias -10 before the ReLU)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 6, 6, 1)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    return x, y


def _conv_model(batch_norm=False, seed=1):
    """6x6x1 -> conv 3x3 (3 ch) [-> BN] -> ReLU -> flatten -> dense 2."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(2, name="fc")(h)
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., DEAD] = 0.0
    bias[:] = [0.5, 0.5, -10.0]
    model.get_layer("conv").set_weights([kernel, bias])
    return model


def _compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def _values(layer):
    return [np.array(w) for w in layer.get_weights()]


class _Snapshots(keras.callbacks.Callback):
    """Layer weights at every epoch start and end."""

    def __init__(self, names):
        super().__init__()
        self.names = names
        self.begin, self.end = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = {
            n: _values(self.model.get_layer(n)) for n in self.names
        }

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = {
            n: _values(self.model.get_layer(n)) for n in self.names
        }


class _Revive(keras.callbacks.Callback):
    """After epoch 0, brings the dead channel to life (records NEq's masks)."""

    def __init__(self, neq):
        super().__init__()
        self.neq = neq
        self.frozen = {}

    def on_epoch_end(self, epoch, logs=None):
        self.optimizer = self.model.optimizer
        self.frozen[epoch] = self.neq.frozen["conv"]
        if epoch == 0:
            conv = self.model.get_layer("conv")
            kernel, bias = conv.get_weights()
            kernel[..., DEAD] = 0.5
            bias[DEAD] = 0.5
            conv.set_weights([kernel, bias])


OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.5),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_frozen_slices_are_bit_exact_and_unfreeze(name):
    x, y = _data()
    model = _conv_model()
    inner = OPTIMIZERS[name]()
    _compile(model, inner)
    neq = ks.callbacks.EquilibriumFreezing(
        x, subset=32, skip_frozen_layers=False
    )
    revive = _Revive(neq)
    snaps = _Snapshots(["conv", "fc"])
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[neq, revive, snaps],
    )
    # Wrapped during fit (inner optimizer and its state kept), put back after.
    wrapper = revive.optimizer
    assert isinstance(wrapper, ks.SensitivityOptimizer)
    assert wrapper.inner_optimizer is inner
    assert wrapper.decay == 0.0
    assert model.optimizer is inner
    # Epoch 0 is the warm-up; the dead channel did not move: frozen after.
    np.testing.assert_array_equal(revive.frozen[0], [False, False, True])
    # Epoch 1: the revived channel gets gradients but is frozen, bit-exact.
    kernel_b, bias_b = snaps.begin[1]["conv"]
    kernel_e, bias_e = snaps.end[1]["conv"]
    np.testing.assert_array_equal(kernel_b[..., DEAD], kernel_e[..., DEAD])
    assert bias_b[DEAD] == bias_e[DEAD]
    # ... while the other channels and the (unwatched) Dense layer move.
    assert np.all(kernel_b[..., :DEAD] != kernel_e[..., :DEAD])
    assert np.all(bias_b[:DEAD] != bias_e[:DEAD])
    assert np.all(snaps.begin[1]["fc"][0] != snaps.end[1]["fc"][0])
    # Its outputs changed a lot: it left equilibrium and trains in epoch 2.
    np.testing.assert_array_equal(revive.frozen[1], [False, False, False])
    kernel_b, bias_b = snaps.begin[2]["conv"]
    kernel_e, bias_e = snaps.end[2]["conv"]
    assert np.all(kernel_b[..., DEAD] != kernel_e[..., DEAD])
    assert bias_b[DEAD] != bias_e[DEAD]
    # 1 of 3 neurons frozen in epoch 1 only.
    np.testing.assert_allclose(
        history.history["frozen_fraction"], [0.0, 1 / 3, 0.0]
    )
    # Frozen flags are training state: cleared at the end of fit.
    conv = model.get_layer("conv")
    assert not masks_lib.frozen(wrapper, conv.kernel).any()


def test_warm_up_then_every_watched_neuron_frozen_and_flops_by_hand():
    x, y = _data()
    model = _conv_model()
    _compile(model, keras.optimizers.SGD(0.1, momentum=0.9))
    # |v| <= 2 / (1 - mu) = 4 < 10: all watched neurons at equilibrium.
    neq = ks.callbacks.EquilibriumFreezing(
        (x, y), epsilon=10.0, skip_frozen_layers=False
    )
    snaps = _Snapshots(["conv", "fc"])
    history = model.fit(
        x, y, epochs=3, batch_size=16, verbose=0, callbacks=[neq, snaps]
    )
    logs = history.history
    assert logs["frozen_fraction"] == [0.0, 1.0, 1.0]
    # Conv: 4x4 positions, kernel 27: 4 * 16 * 27 + bias 2 * 16 * 3 = 1824.
    # Dense (not watched): kernel 48 * 2: 4 * 96 + bias 2 * 2 = 388.
    np.testing.assert_allclose(
        logs["backprop_flops_saved"], [0.0, 1824 / 2212, 1824 / 2212]
    )
    assert neq.layer_stats == {
        "conv": {
            "neurons": 3,
            "frozen": 3,
            "backprop_flops": 1824.0,
            "skipped": False,
        }
    }
    assert [h["epoch"] for h in neq.history] == [1, 2, 3]
    assert neq.history[1]["frozen"] == {"conv": 3}
    # Only the previous outputs are kept: 64 samples x 4x4x3 float32.
    assert neq.stored_bytes == 64 * 48 * 4
    # The last decision stays readable after fit cleared the masks.
    assert neq.frozen["conv"].all()
    # Warm-up epoch trains the conv; afterwards it is frozen, Dense is not.
    changed = [
        not np.array_equal(snaps.begin[e]["conv"][0], snaps.end[e]["conv"][0])
        for e in range(3)
    ]
    assert changed == [True, False, False]
    assert not np.array_equal(snaps.begin[2]["fc"][0], snaps.end[2]["fc"][0])
    # A second fit starts over: new reference outputs, one warm-up epoch.
    history = model.fit(
        x, y, epochs=2, batch_size=16, verbose=0, callbacks=[neq]
    )
    assert history.history["frozen_fraction"] == [0.0, 1.0]


class _Trainability(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = {}

    def on_train_batch_begin(self, batch, logs=None):
        epoch = len(self.seen)
        if batch == 0:
            self.seen[epoch] = {
                "trainable": {
                    la.name: la.trainable
                    for la in self.model.layers
                    if la.weights
                },
                "variables": len(self.model.trainable_variables),
                "function": self.model.train_function,
            }


class _AdamMoments(keras.callbacks.Callback):
    """Adam first moments whose path ends with the given names."""

    def __init__(self, suffixes):
        super().__init__()
        self.suffixes = suffixes
        self.begin, self.end = {}, {}

    def _read(self):
        by_path = {v.path: v for v in self.model.optimizer.variables}
        return [
            keras.ops.convert_to_numpy(
                next(v for p, v in by_path.items() if p.endswith(s))
            )
            for s in self.suffixes
        ]

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = self._read()

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = self._read()


def test_fully_frozen_conv_layers_stop_computing_gradients_but_bn_does_not():
    x, y = _data()
    model = _conv_model(batch_norm=True)
    _compile(model, keras.optimizers.Adam(0.01))
    neq = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0, include_dense=True)
    seen = _Trainability()
    snaps = _Snapshots(["conv", "bn", "fc"])
    moments = _AdamMoments(("conv_kernel_momentum", "bn_gamma_momentum"))
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[neq, seen, snaps, moments],
    )
    # The optimizer step skips the conv's variables (its Adam moment stands
    # still) but still updates BN's moments (masked afterwards).
    np.testing.assert_array_equal(moments.begin[1][0], moments.end[1][0])
    assert not np.array_equal(moments.begin[1][1], moments.end[1][1])
    assert not np.array_equal(moments.begin[0][0], moments.end[0][0])
    assert seen.seen[0]["variables"] == 6
    for epoch in (1, 2):
        # Conv and Dense skipped; BN stays trainable (training-mode BN).
        assert seen.seen[epoch]["trainable"] == {
            "conv": False,
            "bn": True,
            "fc": False,
        }
        assert seen.seen[epoch]["variables"] == 2  # gamma, beta
    assert seen.seen[1]["function"] is not seen.seen[0]["function"]
    assert seen.seen[2]["function"] is seen.seen[1]["function"]  # no retrace
    assert neq.history[1]["skipped"] == ["conv", "fc"]
    for name in ("conv", "bn", "fc"):
        # kernel and bias, or gamma and beta (BN frozen by its masks).
        for before, after in zip(
            snaps.begin[1][name][:2], snaps.end[1][name][:2]
        ):
            np.testing.assert_array_equal(before, after)
    # BN ran in training mode: its moving mean kept moving in epoch 1.
    assert not np.array_equal(snaps.begin[1]["bn"][2], snaps.end[1]["bn"][2])
    # Restored at the end of fit.
    assert all(la.trainable for la in model.layers)
    assert len(model.trainable_variables) == 6


@pytest.mark.parametrize("loss_scale", [False, True])
def test_wrapped_during_fit_then_saves_and_loads_cleanly(tmp_path, loss_scale):
    x, y = _data(32)
    model = _conv_model()
    inner = keras.optimizers.SGD(0.1, momentum=0.9)
    compiled = (
        keras.optimizers.LossScaleOptimizer(inner) if loss_scale else inner
    )

    class Seen(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            optimizer = self.model.optimizer
            self.wrapper = getattr(optimizer, "inner_optimizer", None)
            if not loss_scale:
                self.wrapper = optimizer

    seen = Seen()
    _compile(model, compiled)
    neq = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[neq, seen])
    wrapper = seen.wrapper
    assert isinstance(wrapper, ks.SensitivityOptimizer)
    assert wrapper.inner_optimizer is inner
    assert model.optimizer is compiled
    if loss_scale:
        assert model.optimizer.inner_optimizer is inner
    path = str(tmp_path / "neq.keras")
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Skipping variable loading"
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        model.predict_on_batch(x), loaded.predict_on_batch(x)
    )
    saved = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    restored = [
        keras.ops.convert_to_numpy(v) for v in loaded.optimizer.variables
    ]
    assert len(saved) == len(restored)
    for a, b in zip(saved, restored):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("compiled_with", ["wrapper", "plain"])
def test_works_with_sensitivity_pruning_and_keeps_pruned_bits(compiled_with):
    x, y = _data()
    model = _conv_model()
    conv = model.get_layer("conv")
    pruned = np.zeros(conv.kernel.shape, dtype=bool)
    if compiled_with == "wrapper":
        _compile(model, ks.SensitivityOptimizer(keras.optimizers.SGD(0.1)))
        model.optimizer.build(model.trainable_variables)
        pruned[0, 0, 0, :] = True  # one entry of every channel, dead one too
        masks_lib.add_flag(
            model.optimizer, conv.kernel, masks_lib.PRUNED, pruned, zero=True
        )
    else:  # NEq wraps the plain optimizer; listed first, pruning finds it.
        _compile(model, keras.optimizers.SGD(0.1))
    neq = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0)
    pruning = ks.callbacks.SensitivityPruning(
        patience=1, plateau_tolerance=-0.5, verbose=0
    )
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        validation_data=(x, y),
        callbacks=[neq, pruning],
    )
    assert history.history["frozen_fraction"] == [0.0, 1.0, 1.0]
    assert pruning.history, "the plateau rule should have pruned once"
    # Entries stay pruned, so the wrapper stays in either case.
    assert isinstance(model.optimizer, ks.SensitivityOptimizer)
    mask = masks_lib.read_mask(model.optimizer, conv.kernel)
    assert not (mask & masks_lib.FROZEN).any()
    pruned |= (mask & masks_lib.PRUNED) != 0
    assert pruned.any()
    assert (mask[pruned] & masks_lib.PRUNED).all()
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    assert (kernel[pruned] == 0.0).all()


def test_dataset_subset_is_seeded_and_fixed():
    import tensorflow as tf

    x, y = _data(40)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    a = ks.callbacks.EquilibriumFreezing(dataset, subset=0.25, seed=3)
    b = ks.callbacks.EquilibriumFreezing(x, subset=10, seed=3)
    c = ks.callbacks.EquilibriumFreezing(x, subset=10, seed=4)
    assert a.num_samples == 10
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(b.inputs, c.inputs)
    index = np.sort(np.random.default_rng(3).choice(40, 10, replace=False))
    np.testing.assert_array_equal(b.inputs, x[index])


def test_config_round_trip():
    x, _ = _data(8)
    neq = ks.callbacks.EquilibriumFreezing(
        x,
        epsilon=2e-3,
        velocity_momentum=0.25,
        velocity_form="code",
        include_dense=True,
        skip_frozen_layers=False,
        subset=4,
        seed=7,
        verbose=1,
    )
    config = neq.get_config()
    assert config == {
        "epsilon": 2e-3,
        "velocity_momentum": 0.25,
        "velocity_form": "code",
        "include_dense": True,
        "skip_frozen_layers": False,
        "subset": 4,
        "seed": 7,
        "verbose": 1,
    }
    cls = keras.saving.get_registered_object("keras_serene>EquilibriumFreezing")
    assert cls is ks.callbacks.EquilibriumFreezing
    restored = cls.from_config({**config, "validation_data": x})
    assert restored.get_config() == config
    np.testing.assert_array_equal(restored.inputs, neq.inputs)
    with pytest.raises(ValueError, match="validation_data"):
        cls.from_config(config)


def test_bad_inputs_name_the_problem():
    import tensorflow as tf

    x, y = _data(10)
    cls = ks.callbacks.EquilibriumFreezing
    with pytest.raises(ValueError, match="subset is empty: subset=0.05"):
        cls(x, subset=0.05)
    with pytest.raises(ValueError, match="subset is empty"):
        cls(np.zeros((0, 6, 6, 1)))
    empty = tf.data.Dataset.from_tensor_slices((x, y)).take(0).batch(4)
    with pytest.raises(ValueError, match="subset is empty"):
        cls(empty)
    with pytest.raises(ValueError, match="validation_data=None"):
        cls(None)
    with pytest.raises(ValueError, match=r"\[1, 10\].*subset=11"):
        cls(x, subset=11)
    with pytest.raises(ValueError, match=r"\(0, 1\].*subset=1.5"):
        cls(x, subset=1.5)
    with pytest.raises(TypeError, match="subset='all'"):
        cls(x, subset="all")
    with pytest.raises(ValueError, match="tuple of length 4"):
        cls((x, y, y, y))
    for epsilon in (0.0, -1e-3):
        with pytest.raises(ValueError, match=f"epsilon={epsilon}"):
            cls(x, epsilon=epsilon)
    for mu in (1.0, -0.5):
        with pytest.raises(ValueError, match=f"velocity_momentum={mu}"):
            cls(x, velocity_momentum=mu)
    with pytest.raises(ValueError, match="velocity_form='torch'"):
        cls(x, velocity_form="torch")
    with pytest.raises(TypeError, match="include_dense=1"):
        cls(x, include_dense=1)
    # A model without Conv/BN layers, and inputs of the wrong rank.
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    _compile(dense, "sgd")
    with pytest.raises(ValueError, match="include_dense=True"):
        dense.fit(
            np.zeros((4, 4)),
            np.zeros(4),
            verbose=0,
            callbacks=[cls(np.zeros((4, 4)))],
        )
    model = _conv_model()
    _compile(model, "sgd")
    with pytest.raises(ValueError, match=r"ranks \[3\].*ranks \[4\]"):
        model.fit(x, y, verbose=0, callbacks=[cls(np.zeros((4, 6, 6)))])


def test_outputs_are_read_before_a_fused_activation():
    # Conv2D(activation="relu"): the dead channel stays dead after the ReLU
    # (zeros both epochs: cos 1, equilibrium) but its pre-activation changes
    # from a constant -10 to -10 + sum(patch): cos ~0.99, |v| > 1e-3.
    x, y = _data()
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., DEAD] = 0.0
    bias[:] = [0.5, 0.5, -10.0]
    model.get_layer("conv").set_weights([kernel, bias])
    _compile(model, keras.optimizers.SGD(0.1))

    class ShiftDead(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.frozen[epoch] = neq.frozen["conv"][DEAD]
            if epoch == 0:
                conv = self.model.get_layer("conv")
                kernel, bias = conv.get_weights()
                kernel[..., DEAD] = 1.0
                conv.set_weights([kernel, bias])

    neq = ks.callbacks.EquilibriumFreezing(x, skip_frozen_layers=False)
    shift = ShiftDead()
    shift.frozen = {}
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[neq, shift])
    assert shift.frozen == {0: True, 1: False}
    assert abs(neq.velocity["conv"][DEAD]) > 1e-3


MIRRORED = """
    import numpy as np
    import tensorflow as tf
    import keras
    import keras_serene as ks

    rng = np.random.default_rng(0)
    x = rng.random((64, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 2, 64)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((6, 6, 1))
        h = keras.layers.Conv2D(3, 3, name="conv")(inputs)
        h = keras.layers.BatchNormalization(name="bn")(h)
        outputs = keras.layers.Dense(2)(keras.layers.Flatten()(h))
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Moves(keras.callbacks.Callback):
        moved = []
        def on_epoch_begin(self, epoch, logs=None):
            self.before = [model.get_layer(n).get_weights()[0]
                           for n in ("conv", "bn")]
        def on_epoch_end(self, epoch, logs=None):
            after = [model.get_layer(n).get_weights()[0]
                     for n in ("conv", "bn")]
            self.moved.append([not np.array_equal(a, b)
                               for a, b in zip(self.before, after)])

    # The masks path (skipping is plain Keras trainability).
    neq = ks.callbacks.EquilibriumFreezing(
        x, epsilon=10.0, skip_frozen_layers=False)
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0,
                        callbacks=[neq, Moves()])
    assert history.history["frozen_fraction"] == [0.0, 1.0]
    assert Moves.moved == [[True, True], [False, False]], Moves.moved
    assert isinstance(model.optimizer, keras.optimizers.SGD)  # put back
    """


def test_mirrored_strategy_freezes_too():
    run_on_two_cpus(MIRRORED)
