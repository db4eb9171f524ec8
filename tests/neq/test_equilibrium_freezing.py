"""`EquilibriumFreezing` inside `fit`: masks, warm-up, unfreezing, skips."""

import json
import warnings

import harness
import keras
import numpy as np
import pytest
from harness import assert_config_round_trip
from two_cpus import run_on_two_cpus

import keras_serene as ks
from keras_serene.core import masking as masks_lib
from keras_serene.core.masking_optimizer import MaskingOptimizer

DEAD = 2  # conv channel built dead (zero kernel, bias -10 before the ReLU)
HISTORY_FIELDS = {
    "epoch",
    "frozen_fraction",
    "backprop_flops_saved",
    "backprop_flops_skipped",
    "skipped",
    "frozen",
    "probe_seconds",
}


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


def _compile(model, optimizer, mask=True):
    if mask and not isinstance(optimizer, (MaskingOptimizer, str)):
        optimizer = MaskingOptimizer(optimizer)
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
    # The user's optimizer chain is left as compiled.
    wrapper = revive.optimizer
    assert isinstance(wrapper, MaskingOptimizer)
    assert wrapper.inner_optimizer is inner
    assert model.optimizer is wrapper
    # Epoch 0 is the warm-up; the dead channel did not move: frozen after.
    np.testing.assert_array_equal(revive.frozen[0], [False, False, True])
    # Epoch 1: the revived channel gets gradients but is frozen, bit-exact.
    kernel_b, bias_b = snaps.begin[1]["conv"]
    kernel_e, bias_e = snaps.end[1]["conv"]
    np.testing.assert_array_equal(kernel_b[..., DEAD], kernel_e[..., DEAD])
    assert bias_b[DEAD] == bias_e[DEAD]
    # ... while the other channels and the (output, unwatched) Dense move.
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
    # Masked, not skipped: every gradient is still computed.
    assert logs["backprop_flops_skipped"] == [0.0, 0.0, 0.0]
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
    # Every epoch's record has the same fields (the probe's duration among
    # them: benchmarks/neq.py reads it; its value is not a test's business).
    assert all(set(h) == HISTORY_FIELDS for h in neq.history)
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


@keras.saving.register_keras_serializable(package="keras_serene_tests")
class _CountingMasking(MaskingOptimizer):
    """Counts traces: `apply` runs in Python only while a step is traced."""

    traces = 0

    def apply(self, grads, trainable_variables=None):
        type(self).traces += 1
        super().apply(grads, trainable_variables)


def test_fully_frozen_conv_and_bn_stop_computing_gradients_bn_in_training():
    x, y = _data()
    model = _conv_model(batch_norm=True)
    _CountingMasking.traces = 0
    _compile(model, _CountingMasking(keras.optimizers.Adam(0.01)))
    neq = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0)
    seen = _Trainability()
    snaps = _Snapshots(["conv", "bn", "fc"])
    moments = _AdamMoments(
        ("conv_kernel_momentum", "bn_gamma_momentum", "fc_kernel_momentum")
    )
    model.fit(
        x,
        y,
        epochs=4,
        batch_size=16,
        verbose=0,
        callbacks=[neq, seen, snaps, moments],
    )
    # The optimizer step skips the conv's and BN's variables (their Adam
    # moments stand still) and updates the output Dense (not watched).
    for i, moving in enumerate((False, False, True)):
        assert not np.array_equal(moments.begin[0][i], moments.end[0][i])
        same = np.array_equal(moments.begin[1][i], moments.end[1][i])
        assert same != moving
    assert seen.seen[0]["variables"] == 6
    for epoch in (1, 2, 3):
        # Layers stay trainable (a non-trainable BN would run in inference
        # mode); their variables do not: only fc's kernel and bias train.
        assert seen.seen[epoch]["trainable"] == {
            "conv": True,
            "bn": True,
            "fc": True,
        }
        assert seen.seen[epoch]["variables"] == 2
    assert seen.seen[1]["function"] is not seen.seen[0]["function"]
    assert seen.seen[3]["function"] is seen.seen[1]["function"]
    # Two traces in four epochs: all trainable, then conv and BN skipped
    # (not one retrace per epoch).
    assert _CountingMasking.traces == 2
    assert neq.train_functions_made == 1
    assert [h["skipped"] for h in neq.history] == [
        [],
        ["conv", "bn"],
        ["conv", "bn"],
        ["conv", "bn"],
    ]
    # Nothing before them trains, so their whole backprop share is not
    # computed: conv 1824; BN 4 * 16 * 3 = 192; the Dense head (not
    # watched) 388.
    skipped = [h["backprop_flops_skipped"] for h in neq.history]
    saved = [h["backprop_flops_saved"] for h in neq.history]
    np.testing.assert_allclose(skipped, [0.0] + [(1824 + 192) / 2404] * 3)
    np.testing.assert_allclose(saved, [0.0] + [(1824 + 192) / 2404] * 3)
    for name in ("conv", "bn"):
        # kernel and bias, or gamma and beta.
        for before, after in zip(
            snaps.begin[1][name][:2], snaps.end[1][name][:2]
        ):
            np.testing.assert_array_equal(before, after)
    assert not np.array_equal(snaps.begin[1]["fc"][0], snaps.end[1]["fc"][0])
    # BN ran in training mode: its moving mean kept moving in epoch 1.
    assert not np.array_equal(snaps.begin[1]["bn"][2], snaps.end[1]["bn"][2])
    # Between epochs, and after fit, every variable is trainable again.
    assert all(la.trainable for la in model.layers)
    assert len(model.trainable_variables) == 6
    # A second fit reuses the cached functions: no new trace.
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[neq])
    assert _CountingMasking.traces == 2


@pytest.mark.parametrize("threshold", [1.0, 0.5, 0.3])
def test_skip_threshold_freezes_a_mostly_settled_layer_whole(threshold):
    # The dead channel (1 of 3) settles in the warm-up; the others keep
    # moving. Only a threshold <= 1/3 turns that into a skipped conv.
    x, y = _data()
    model = _conv_model()
    _compile(model, keras.optimizers.SGD(0.1, momentum=0.9))
    neq = ks.callbacks.EquilibriumFreezing(
        x, subset=32, skip_threshold=threshold
    )
    snaps = _Snapshots(["conv"])
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[neq, snaps])
    whole = threshold <= 1 / 3
    assert neq.history[1]["frozen"] == {"conv": 3 if whole else 1}
    assert neq.history[1]["skipped"] == (["conv"] if whole else [])
    kernel_b, _ = snaps.begin[1]["conv"]
    kernel_e, _ = snaps.end[1]["conv"]
    np.testing.assert_array_equal(kernel_b[..., DEAD], kernel_e[..., DEAD])
    moved = kernel_b[..., :DEAD] != kernel_e[..., :DEAD]
    assert not moved.any() if whole else moved.all()


@pytest.mark.parametrize("forced_epochs", [None, 1, 2])
def test_forced_epochs_lets_a_layer_frozen_whole_train_again(forced_epochs):
    # The conv is frozen whole when its dead channel settles (threshold
    # 0.3); frozen, in front of the network, its outputs stop changing, so
    # its live channels look settled too and it would stay frozen for good.
    # With forced_epochs=k the live channels train again after k epochs.
    x, y = _data()
    model = _conv_model()
    _compile(model, keras.optimizers.SGD(0.1, momentum=0.9))
    neq = ks.callbacks.EquilibriumFreezing(
        x, subset=32, skip_threshold=0.3, forced_epochs=forced_epochs
    )
    snaps = _Snapshots(["conv"])
    model.fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=[neq, snaps])
    trained = {None: [0], 1: [0, 2, 4], 2: [0, 3]}[forced_epochs]
    frozen = [h["frozen"]["conv"] for h in neq.history]
    # Epoch 0 is the warm-up; a released epoch freezes the dead channel only.
    assert frozen == [
        0 if e == 0 else (1 if e in trained else 3) for e in range(6)
    ]
    for epoch in range(6):
        kernel_b, _ = snaps.begin[epoch]["conv"]
        kernel_e, _ = snaps.end[epoch]["conv"]
        moved = (kernel_b != kernel_e).any(axis=(0, 1, 2))
        assert moved.tolist() == [epoch in trained] * 2 + [False], epoch
        assert neq.history[epoch]["skipped"] == (
            [] if epoch in trained else ["conv"]
        )


def test_mlp_defaults_freeze_dense_units_but_never_the_output_layer():
    x, y = _data()
    x = x.reshape(len(x), -1)
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((36,)),
            keras.layers.Dense(5, activation="relu", name="h1"),
            keras.layers.Dense(4, activation="relu", name="h2"),
            keras.layers.Dense(2, name="logits"),
            keras.layers.Softmax(name="probs"),
        ],
        name="mlp",
    )
    model.compile(
        optimizer=MaskingOptimizer(keras.optimizers.SGD(0.1, momentum=0.9)),
        loss="sparse_categorical_crossentropy",
    )
    # Masks only, so the layer skip does not hide the masks' work.
    neq = ks.callbacks.EquilibriumFreezing(
        x, epsilon=10.0, skip_frozen_layers=False
    )
    snaps = _Snapshots(["h1", "h2", "logits"])
    history = model.fit(
        x, y, epochs=2, batch_size=16, verbose=0, callbacks=[neq, snaps]
    )
    assert sorted(neq.frozen) == ["h1", "h2"]  # the head is not watched
    assert history.history["frozen_fraction"] == [0.0, 1.0]
    for name in ("h1", "h2"):
        for before, after in zip(snaps.begin[1][name], snaps.end[1][name]):
            np.testing.assert_array_equal(before, after)  # bit-exact
    assert not np.array_equal(
        snaps.begin[1]["logits"][0], snaps.end[1]["logits"][0]
    )
    # Select by name: only h2; exclude: everything but h1.
    only = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0, layers=["^h2$"])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[only])
    assert sorted(only.frozen) == ["h2"]
    but = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0, exclude=["2"])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[but])
    assert sorted(but.frozen) == ["h1"]
    # The output layer is watched when named.
    head = ks.callbacks.EquilibriumFreezing(x, layers=["logits"])
    model.fit(x, y, epochs=1, verbose=0, callbacks=[head])
    assert sorted(head.frozen) == ["logits"]


@pytest.mark.parametrize("watched", [["^h2$"], ["^h1$", "^h2$"]])
def test_skipped_work_counts_input_gradients_only_if_nothing_before_trains(
    watched,
):
    # h1 36 -> 5, h2 5 -> 4, logits 4 -> 2 (Dense: one position each).
    # Backward FLOPs, 4 per kernel MAC + 2 per bias: h1 720 + 10, h2 80 + 8,
    # logits 32 + 4: 854 in all. h2's input gradient is 2 x 20 = 40 of its
    # 88: spent while h1 trains, not when h1 is skipped too.
    x, y = _data()
    x = x.reshape(len(x), -1)
    keras.utils.set_random_seed(3)
    inputs = keras.Input((36,))
    hidden = keras.layers.Dense(5, activation="relu", name="h1")(inputs)
    hidden = keras.layers.Dense(4, activation="relu", name="h2")(hidden)
    outputs = keras.layers.Dense(2, name="logits")(hidden)
    model = keras.Model(inputs, outputs)
    _compile(model, keras.optimizers.SGD(0.1, momentum=0.9))
    neq = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0, layers=watched)
    history = model.fit(
        x, y, epochs=2, batch_size=16, verbose=0, callbacks=[neq]
    )
    skipped = [h["skipped"] for h in neq.history]
    assert skipped == [[], [w.strip("^$") for w in watched]]
    share = (88 - 40) / 854 if len(watched) == 1 else (730 + 88) / 854
    np.testing.assert_allclose(
        history.history["backprop_flops_skipped"], [0.0, share]
    )
    saved = (88 if len(watched) == 1 else 730 + 88) / 854
    np.testing.assert_allclose(
        history.history["backprop_flops_saved"], [0.0, saved]
    )


def test_saved_mid_run_the_model_loads_plain_and_with_its_masks(tmp_path):
    x, y = _data(32)
    model = _conv_model()
    _compile(model, keras.optimizers.SGD(0.1, momentum=0.9))
    path = str(tmp_path / "neq.keras")

    class SaveAfterEpoch1(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.save(path)
                self.masks = [
                    keras.ops.convert_to_numpy(m)
                    for m in self.model.optimizer.masks
                ]
                self.predictions = self.model.predict_on_batch(x)

    save = SaveAfterEpoch1()
    neq = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[neq, save])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Skipping variable loading"
        loaded = keras.models.load_model(path)
    # Saved while the conv was frozen and skipped: the file holds the layer
    # trainable (skips last one epoch) and the FROZEN bits in its masks.
    assert loaded.get_layer("conv").trainable
    assert isinstance(loaded.optimizer, MaskingOptimizer)
    restored = [keras.ops.convert_to_numpy(m) for m in loaded.optimizer.masks]
    for a, b in zip(save.masks, restored):
        np.testing.assert_array_equal(a, b)
    kernel_mask = masks_lib.read_mask(
        loaded.optimizer, loaded.get_layer("conv").kernel
    )
    assert (kernel_mask == masks_lib.FROZEN).all()
    np.testing.assert_array_equal(save.predictions, loaded.predict_on_batch(x))


@pytest.mark.parametrize("schedule", ["plateau", "budgeted"])
def test_works_with_sensitivity_pruning_and_keeps_pruned_bits(schedule):
    x, y = _data()
    model = _conv_model()
    conv = model.get_layer("conv")
    _compile(model, ks.SensitivityOptimizer(keras.optimizers.SGD(0.1)))
    if schedule == "plateau":
        pruning = ks.callbacks.SensitivityPruning(
            patience=1, plateau_tolerance=-0.5, verbose=0
        )
    else:
        pruning = ks.callbacks.SensitivityPruning(
            target_sparsity=0.5, end_epoch=2, frequency=1, verbose=0
        )
    neq = ks.callbacks.EquilibriumFreezing(x, epsilon=10.0)
    compiled = model.optimizer
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
    assert model.optimizer is compiled  # never swapped
    mask = masks_lib.read_mask(model.optimizer, conv.kernel)
    assert not (mask & masks_lib.FROZEN).any()  # cleared after fit
    pruned = (mask & masks_lib.PRUNED) != 0
    assert pruned.any(), "pruning should have pruned some conv entries"
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    assert (kernel[pruned] == 0.0).all()
    fc = model.get_layer("fc").kernel
    fc_pruned = masks_lib.pruned(model.optimizer, fc)
    assert (keras.ops.convert_to_numpy(fc)[fc_pruned] == 0.0).all()


def test_a_plain_optimizer_is_refused_with_the_fix():
    x, y = _data(16)
    model = _conv_model()
    _compile(model, keras.optimizers.SGD(0.1), mask=False)
    with pytest.raises(
        ValueError, match=r"EquilibriumFreezing: .*ks.MaskingOptimizer"
    ):
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[ks.callbacks.EquilibriumFreezing(x)],
        )
    assert isinstance(model.optimizer, keras.optimizers.SGD)


def _backup_model():
    model = _conv_model(batch_norm=True)
    schedule = keras.optimizers.schedules.CosineDecay(0.1, 5 * 4)
    _compile(model, keras.optimizers.SGD(schedule, momentum=0.9))
    return model


FORCED = dict(skip_threshold=0.5, forced_epochs=1)


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("kill", sorted(harness.KILL_POINTS))
def test_backup_and_restore_resumes_bit_identical(tmp_path, kill, forced):
    x, y = _data()
    kwargs = dict(epochs=5, batch_size=16, verbose=0, shuffle=False)
    neq_kwargs = dict(epsilon=0.02, **(FORCED if forced else {}))
    reference = _backup_model()
    neq = ks.callbacks.EquilibriumFreezing(x, **neq_kwargs)
    reference.fit(x, y, callbacks=[neq], **kwargs)
    if forced:  # frozen whole in epochs 1 and 3, released in 2 and 4
        skipped = [bool(h["skipped"]) for h in neq.history]
        assert skipped == [False, True, False, True, False], skipped
    frozen = [h["frozen_fraction"] for h in neq.history]
    # Neurons are frozen in the epochs after the kill: the resumed fit can
    # only match if it restores NEq's state, not start with a warm-up.
    assert frozen[0] == 0.0 and min(frozen[3:]) > 0.0, frozen

    directory = str(tmp_path / "backup")
    model = _backup_model()
    backup, interrupt = harness.backup_for(directory, kill)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x,
            y,
            callbacks=[
                ks.callbacks.EquilibriumFreezing(
                    x, backup_dir=directory, **neq_kwargs
                ),
                backup,
                interrupt(2),
            ],
            **kwargs,
        )
    if kill == "mid_epoch":
        harness.assert_killed_mid_epoch(directory)
    assert harness.state_files(directory, "equilibrium_freezing")
    resumed = _backup_model()  # a fresh process would start like this
    neq_resumed = ks.callbacks.EquilibriumFreezing(
        x, backup_dir=directory, **neq_kwargs
    )
    backup, _ = harness.backup_for(directory, kill)
    resumed.fit(x, y, callbacks=[backup, neq_resumed], **kwargs)
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)

    def decisions(history):  # the probe's timing differs between runs
        return json.dumps(
            [
                {k: v for k, v in h.items() if k != "probe_seconds"}
                for h in history
            ]
        )

    assert decisions(neq_resumed.history) == decisions(neq.history)
    assert not harness.state_files(directory, "equilibrium_freezing")


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
        layers=["conv"],
        exclude=["bn"],
        skip_frozen_layers=True,
        skip_threshold=0.75,
        forced_epochs=2,
        subset=4,
        seed=7,
        backup_dir="/tmp/neq",
        verbose=1,
    )
    config = neq.get_config()
    assert config == {
        "epsilon": 2e-3,
        "velocity_momentum": 0.25,
        "velocity_form": "code",
        "layers": ["conv"],
        "exclude": ["bn"],
        "skip_frozen_layers": True,
        "skip_threshold": 0.75,
        "forced_epochs": 2,
        "subset": 4,
        "seed": 7,
        "backup_dir": "/tmp/neq",
        "verbose": 1,
    }
    cls = keras.saving.get_registered_object("keras_serene>EquilibriumFreezing")
    assert cls is ks.callbacks.EquilibriumFreezing
    restored = assert_config_round_trip(neq, cls, validation_data=x)
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
    with pytest.raises(TypeError, match="skip_frozen_layers=1"):
        cls(x, skip_frozen_layers=1)
    for threshold in (0.0, 1.5):
        with pytest.raises(
            ValueError,
            match=rf"skip_threshold` must be > 0.0 and <= 1.0.*={threshold}",
        ):
            cls(x, skip_threshold=threshold)
    with pytest.raises(
        ValueError, match="skip_frozen_layers=False.*skip_threshold=0.5"
    ):
        cls(x, skip_threshold=0.5, skip_frozen_layers=False)
    with pytest.raises(ValueError, match=r">= 1.*forced_epochs=0"):
        cls(x, skip_threshold=0.5, forced_epochs=0)
    with pytest.raises(TypeError, match="forced_epochs=1.5"):
        cls(x, skip_threshold=0.5, forced_epochs=1.5)
    with pytest.raises(ValueError, match="skip_threshold=1.0.*forced_epochs=2"):
        cls(x, forced_epochs=2)
    with pytest.raises(TypeError, match="layers='conv'"):
        cls(x, layers="conv")
    with pytest.raises(TypeError, match="backup_dir=3"):
        cls(x, backup_dir=3)
    # Nothing left to watch (the only Dense is the output), and inputs of
    # the wrong rank.
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    _compile(dense, keras.optimizers.SGD())
    with pytest.raises(
        ValueError, match=r"must leave a layer.*Received: layers=None"
    ):
        dense.fit(
            np.zeros((4, 4)),
            np.zeros(4),
            verbose=0,
            callbacks=[cls(np.zeros((4, 4)))],
        )
    model = _conv_model()
    _compile(model, keras.optimizers.SGD())
    with pytest.raises(ValueError, match=r"\[4\].*ranks \[3\]"):
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
    from keras_serene.core.masking_optimizer import MaskingOptimizer

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
            optimizer=MaskingOptimizer(
                keras.optimizers.SGD(0.1, momentum=0.9)),
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
    assert isinstance(model.optimizer, MaskingOptimizer)  # as compiled
    """


def test_mirrored_strategy_freezes_too():
    run_on_two_cpus(MIRRORED)
