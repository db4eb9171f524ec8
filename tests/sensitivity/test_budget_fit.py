"""SensitivityPruning(target_sparsity=...) inside fit, on digits."""

import os

import harness
import keras
import numpy as np
import pytest
from two_cpus import run_on_two_cpus

import keras_serene as ks
from keras_serene.app.datasets import load_digits
from keras_serene.core import masking as masks


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_test, y_test) = load_digits()
    return x, y, x_test, y_test


def _compile(model, decay=1e-4):
    model.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.05, momentum=0.9), decay=decay
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _mlp():
    keras.utils.set_random_seed(0)
    return _compile(
        keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
    )


def _cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(12, 3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10)(x)
    return _compile(keras.Model(inputs, outputs))


def _fit(model, x, y, pruner, epochs=5, **kwargs):
    return model.fit(
        x,
        y,
        validation_split=0.1,
        epochs=epochs,
        batch_size=64,
        verbose=0,
        callbacks=[pruner, *kwargs.pop("callbacks", [])],
        **kwargs,
    ).history


def test_unstructured_reaches_the_target_by_end_epoch(digits):
    x, y, x_test, y_test = digits
    model = _mlp()
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.9, frequency=3, verbose=0
    )
    logs = _fit(model, x, y, pruner, epochs=5)
    # end_epoch = 0.7 * 5 = 3.5: reached inside epoch 4, held after.
    sparsity = np.array(logs["sparsity"])
    assert sparsity[0] > 0.3  # Already pruning in the first epoch.
    assert np.all(np.abs(sparsity[3:] - 0.9) <= 0.005)
    assert np.all(np.diff(sparsity) >= 0)  # Never decreases.
    assert logs["scheduled_sparsity"][-1] == 0.9
    # The logged threshold is the last cut that pruned, never reset to 0 by
    # the final step (which, at the ramp's flat end, adds no entry).
    assert min(logs["pruning_threshold"]) > 0
    assert logs["pruning_threshold"][-1] == pruner.threshold
    # 21 steps per epoch (1295 / 64), every 7 steps, and at T = 74 (3.5 x 21).
    steps = [h["step"] for h in pruner.history]
    assert steps[:3] == [7, 14, 21] and steps[-1] == 74
    # 10% of a 64-32-16-10 MLP after 5 epochs: well above chance (0.1).
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.6


def test_blocks_reach_the_target_whole_and_export_block_sparse(digits):
    x, y, x_test, y_test = digits
    model = _mlp()
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.9, block_size=4, verbose=0
    )
    logs = _fit(model, x, y, pruner, epochs=4)
    sparsity = np.array(logs["sparsity"])
    assert np.all(np.diff(sparsity) >= 0)
    # Whole blocks: the target is met and passed by less than one block.
    total = sum(int(np.prod(v.shape)) for v in pruner._variables())
    assert 0.9 <= sparsity[-1] < 0.9 + 4 / total
    for layer in model.layers[1:]:
        kernel = layer.kernel.numpy()
        blocks = kernel.reshape(-1, 4, kernel.shape[1]) == 0
        # Every block of 4 neighbouring inputs is all zero or all kept.
        assert np.all(blocks.all(axis=1) | ~blocks.any(axis=1)), layer.name
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.5
    stripped = ks.strip_masks(model)
    blob = ks.to_tflite(stripped, sparse=True, verify_samples=4)
    # LiteRT keeps the block-sparse kernels (no DENSIFY back to dense).
    ops = ks.export.tflite_ops(blob)
    assert "FULLY_CONNECTED" in ops and "DENSIFY" not in ops, ops


def test_exclude_leaves_the_matching_variables_dense(digits):
    x, y, _, _ = digits
    model = _mlp()
    head = model.layers[-1].name
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.8, exclude=["bias", head], verbose=0
    )
    logs = _fit(model, x, y, pruner, epochs=3)
    kernels = [layer.kernel for layer in model.layers[1:-1]]
    assert [v.path for v in pruner._variables()] == [v.path for v in kernels]
    zeros = sum(int(np.sum(k.numpy() == 0)) for k in kernels)
    total = sum(int(np.prod(k.shape)) for k in kernels)
    assert zeros == round(0.8 * total)
    assert logs["sparsity"][-1] == pytest.approx(zeros / total)
    assert np.all(model.layers[-1].kernel.numpy() != 0)
    assert all(np.all(layer.bias.numpy() != 0) for layer in model.layers[1:])
    everything = ks.callbacks.SensitivityPruning(
        target_sparsity=0.5, exclude=["."], verbose=0
    )
    with pytest.raises(ValueError, match="matches every regularized"):
        _fit(_mlp(), x, y, everything, epochs=1)


def test_structured_mlp_removes_exactly_the_fraction_and_slims(digits):
    x, y, x_test, _ = digits
    model = _mlp()
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.75, structured=True, verbose=0
    )
    logs = _fit(model, x, y, pruner, epochs=4)
    # 48 prunable neurons (not the 10 outputs): 36 go, 24 + 12.
    assert logs["removed_neurons"][-1] == pytest.approx(36 / 48)
    first = model.layers[1]
    dead = np.all(first.kernel.numpy() == 0, axis=0)
    assert dead.sum() == 24
    assert np.any(first.bias.numpy()[dead] != 0)  # Biases are kept.
    slim = ks.slim(ks.strip_masks(model))
    dense = [x for x in slim.layers if isinstance(x, keras.layers.Dense)]
    widths = [layer.units for layer in dense]
    assert widths == [8, 4, 10]
    np.testing.assert_allclose(
        slim.predict(x_test, verbose=0),
        model.predict(x_test, verbose=0),
        atol=1e-4,
    )


def test_per_layer_targets_size_each_layer_and_slim(digits):
    """A dict target removes each named layer's own fraction on the ramp;
    the layers not named stay whole."""
    x, y, x_test, _ = digits
    model = _mlp()
    first, second = (layer.name for layer in model.layers[1:3])
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity={first: 0.875}, structured=True, end_epoch=2,
        verbose=0,
    )  # fmt: skip
    logs = _fit(model, x, y, pruner, epochs=3)
    # 28 of fc1's 32 neurons, none of the 16 of the next layer: 28 / 48.
    assert logs["removed_neurons"][-1] == pytest.approx(28 / 48)
    assert logs["scheduled_removed_neurons"][-1] == pytest.approx(28 / 48)
    assert logs["removed_neurons"][0] < 28 / 48  # On the ramp, not at once.
    slim = ks.slim(ks.strip_masks(model))
    widths = [
        layer.units
        for layer in slim.layers
        if isinstance(layer, keras.layers.Dense)
    ]
    assert widths == [4, 16, 10]
    np.testing.assert_allclose(
        slim.predict(x_test, verbose=0),
        model.predict(x_test, verbose=0),
        atol=1e-4,
    )
    model = _mlp()
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity={model.layers[1].name: 0.5, model.layers[2].name: 0.75},
        verbose=0,
    )
    logs = _fit(model, x, y, pruner, epochs=2)
    widths = [
        layer.units
        for layer in ks.slim(ks.strip_masks(model)).layers
        if isinstance(layer, keras.layers.Dense)
    ]
    assert widths == [16, 4, 10]
    assert logs["removed_neurons"][-1] == pytest.approx(28 / 48)


def test_per_layer_unstructured_target_prunes_each_layer_to_its_own(digits):
    """`structured=False`: each named layer's kernel zeroed to its own
    fraction (ranked within the layer), the other layers untouched."""
    x, y, _, _ = digits
    model = _mlp()
    first, second, last = (layer.name for layer in model.layers[1:4])
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity={first: 0.9, last: 0.5}, structured=False,
        exclude=["bias"], end_epoch=2, verbose=0,
    )  # fmt: skip
    logs = _fit(model, x, y, pruner, epochs=3)
    opt = masks.mask_optimizer(model)
    zeros = {}
    for layer in model.layers[1:4]:
        kernel = layer.kernel
        zeros[layer.name] = int(np.sum(kernel.numpy() == 0))
        assert int(masks.pruned(opt, kernel).sum()) == zeros[layer.name]
        assert not masks.pruned(opt, layer.bias).any()
    assert zeros[first] == round(0.9 * 64 * 32)
    assert zeros[last] == round(0.5 * 16 * 10)
    assert zeros[second] == 0
    expected = (zeros[first] + zeros[last]) / (64 * 32 + 16 * 10)
    assert logs["sparsity"][-1] == pytest.approx(expected)
    assert logs["scheduled_sparsity"][-1] == pytest.approx(expected, 1e-3)
    assert logs["sparsity"][0] < expected  # On the ramp, not at once.
    assert np.all(np.diff(logs["sparsity"]) >= 0)
    for exclude in (None, ["bias"]):
        with pytest.raises(ValueError, match="names layer 'fc9'"):
            _fit(
                _mlp(), x, y,
                ks.callbacks.SensitivityPruning(
                    target_sparsity={"fc9": 0.5}, structured=False,
                    exclude=exclude, verbose=0,
                ),
                epochs=1,
            )  # fmt: skip


def test_per_layer_target_naming_no_prunable_layer_is_an_error(digits):
    x, y, _, _ = digits
    model = _mlp()
    output = model.layers[-1].name
    for name in ("fc9", output):
        pruner = ks.callbacks.SensitivityPruning(
            target_sparsity={name: 0.5}, verbose=0
        )
        with pytest.raises(ValueError, match=f"names layer '{name}'"):
            _fit(model, x, y, pruner, epochs=1)


def test_structured_and_unstructured_in_one_fit(digits):
    """Two callbacks on one optimizer's masks: neurons go, then zeros
    inside the kept ones; the slim model keeps the structured widths."""
    x, y, x_test, _ = digits
    model = _mlp()
    neurons = ks.callbacks.SensitivityPruning(
        target_sparsity=0.75, structured=True, verbose=0
    )
    entries = ks.callbacks.SensitivityPruning(target_sparsity=0.9, verbose=0)
    logs = _fit(model, x, y, neurons, epochs=4, callbacks=[entries])
    assert logs["removed_neurons"][-1] >= 36 / 48
    # Each ramp logs under its own key: neither overwrites the other.
    assert logs["scheduled_removed_neurons"][-1] == 0.75
    assert logs["scheduled_sparsity"][-1] == 0.9
    opt = masks.mask_optimizer(model)
    variables = entries._variables()
    pruned = sum(int(masks.pruned(opt, v).sum()) for v in variables)
    total = sum(int(np.prod(v.shape)) for v in variables)
    assert pruned == round(0.9 * total)
    first = model.layers[1]
    alive = ~np.all(first.kernel.numpy() == 0, axis=0)
    assert np.any(first.kernel.numpy()[:, alive] == 0)  # Zeros inside.
    slim = ks.slim(ks.strip_masks(model))
    widths = [
        layer.units for layer in slim.layers
        if isinstance(layer, keras.layers.Dense)
    ]  # fmt: skip
    assert widths[0] == alive.sum() <= 8 and widths[-1] == 10
    np.testing.assert_allclose(
        slim.predict(x_test, verbose=0),
        model.predict(x_test, verbose=0),
        atol=1e-4,
    )


def test_neurons_then_blocks_in_the_first_layer_export_block_sparse(digits):
    """The recipe of the benchmark's `+mag98.5b4=fc1` rows: neurons go, then
    1x4 blocks inside the first layer's kept ones; the slim model's export
    keeps LiteRT's block-sparse kernel."""
    x, y, x_test, _ = digits
    model = _mlp()
    first = model.layers[1]
    neurons = ks.callbacks.SensitivityPruning(
        target_sparsity=0.5, structured=True, verbose=0
    )
    blocks = ks.callbacks.SensitivityPruning(
        target_sparsity=0.9, block_size=4, verbose=0,
        exclude=[f"^(?!(.*/)?{first.name}/kernel$)"],  # All but its kernel.
    )  # fmt: skip
    logs = _fit(model, x, y, neurons, epochs=4, callbacks=[blocks])
    assert logs["sparsity"][-1] >= 0.9  # The first kernel alone.
    assert [v.path for v in blocks._variables()] == [first.kernel.path]
    assert np.all(model.layers[2].kernel.numpy()[:, ~np.all(
        model.layers[2].kernel.numpy() == 0, axis=0)] != 0)  # fmt: skip
    slim = ks.slim(ks.strip_masks(model))
    kernel = slim.layers[1].kernel.numpy()
    # Half of the 32 neurons left, or fewer: blocks may empty a neuron.
    assert kernel.shape[0] == 64 and kernel.shape[1] <= 16
    zero = kernel.reshape(16, 4, -1) == 0
    assert np.all(zero.all(axis=1) | ~zero.any(axis=1))  # Whole blocks.
    assert 0.7 < zero.mean() < 0.9  # 10% of 32 columns' entries, in <= 16.
    blob = ks.to_tflite(slim, sparse=True, batch_size=1)
    ops = ks.export.tflite_ops(blob)
    assert "DENSIFY" not in ops and "SHAPE" not in ops, ops
    np.testing.assert_allclose(
        slim.predict(x_test, verbose=0),
        model.predict(x_test, verbose=0),
        atol=1e-4,
    )


def test_structured_cnn_with_batch_norm_slims_with_equal_outputs(digits):
    x, y, x_test, _ = digits
    model = _cnn()
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.5, structured=True, criterion="magnitude_global",
        verbose=0,
    )  # fmt: skip
    logs = _fit(model, x, y, pruner, epochs=3)
    assert logs["removed_neurons"][-1] == pytest.approx(10 / 20)
    opt = masks.mask_optimizer(model)
    conv, bn = model.layers[1], model.layers[2]
    dead = np.all(conv.kernel.numpy() == 0, axis=(0, 1, 2))
    # The BN channel goes with its conv: gamma masked to zero.
    assert np.all(bn.gamma.numpy()[dead] == 0)
    assert np.all(masks.pruned(opt, bn.gamma)[dead])
    slim = ks.slim(ks.strip_masks(model))
    channels = sum(
        c.filters for c in slim.layers if isinstance(c, keras.layers.Conv2D)
    )
    assert channels == 20 - 10
    np.testing.assert_allclose(
        slim.predict(x_test, verbose=0),
        model.predict(x_test, verbose=0),
        atol=1e-4,
    )


@pytest.mark.parametrize("criterion", ["taylor", "taylor_global", "serene"])
def test_data_criteria_reach_the_target(digits, criterion):
    x, y, x_test, y_test = digits
    model = _mlp()
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.8,
        criterion=criterion,
        validation_data=(x_test, y_test),
        end_epoch=2,
        verbose=0,
    )
    logs = _fit(model, x, y, pruner, epochs=3)
    assert logs["sparsity"][-1] == pytest.approx(0.8, abs=0.005)


def test_taylor_global_removes_uneven_layers_and_slims_exactly(digits):
    x, y, x_test, y_test = digits
    model = _mlp()
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.6,
        structured=True,
        criterion="taylor_global",
        validation_data=(x_test, y_test),
        end_epoch=2,
        verbose=0,
    )
    logs = _fit(model, x, y, pruner, epochs=3)
    assert logs["removed_neurons"][-1] == pytest.approx(0.6, abs=0.005)
    slim = ks.slim(ks.strip_masks(model))
    dense = [la for la in slim.layers if isinstance(la, keras.layers.Dense)]
    first, second, _ = [la.units for la in dense]
    assert (32 - first) + (16 - second) == 29  # round(0.6 * 48)
    # Ranked across layers: the two layers lose different fractions (an
    # equal split would differ by one channel at most, 1/16).
    assert abs((32 - first) / 32 - (16 - second) / 16) > 1 / 16
    np.testing.assert_allclose(
        slim.predict(x_test, verbose=0),
        model.predict(x_test, verbose=0),
        atol=1e-4,
    )


def test_masks_survive_keras_save_load_mid_ramp(digits, tmp_path):
    x, y, _, _ = digits
    model = _mlp()
    settings = dict(target_sparsity=0.9, end_epoch=4, verbose=0)
    first = _fit(model, x, y, ks.callbacks.SensitivityPruning(**settings), 2)
    assert 0.3 < first["sparsity"][-1] < 0.85  # Mid-ramp.
    path = os.path.join(tmp_path, "mid.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    opt, loaded_opt = masks.mask_optimizer(model), masks.mask_optimizer(loaded)
    kernel, loaded_kernel = model.layers[1].kernel, loaded.layers[1].kernel
    np.testing.assert_array_equal(
        masks.pruned(opt, kernel), masks.pruned(loaded_opt, loaded_kernel)
    )
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)
    resumed = _fit(
        loaded, x, y, ks.callbacks.SensitivityPruning(**settings), 5,
        initial_epoch=2,
    )  # fmt: skip
    assert resumed["sparsity"][0] >= first["sparsity"][-1]
    assert resumed["sparsity"][-1] == pytest.approx(0.9, abs=0.005)
    # Entries pruned before saving are still pruned.
    assert np.all(loaded_kernel.numpy()[masks.pruned(opt, kernel)] == 0)


@pytest.mark.parametrize("kill", sorted(harness.KILL_POINTS))
def test_backup_and_restore_resumes_bit_identical(digits, tmp_path, kill):
    x, y, _, _ = digits
    directory = str(tmp_path / "backup")
    # The ramp follows the optimizer's steps (saved by the backup); the
    # state `backup_dir` adds is the epoch-begin snapshot a mid-epoch kill
    # rewinds to, and the data criterion's running sums.
    settings = dict(
        target_sparsity=0.8, end_epoch=3, criterion="taylor",
        validation_data=(x[:128], y[:128]), backup_dir=directory, verbose=0,
    )  # fmt: skip

    def run(callbacks):
        return _fit(
            model, x, y, ks.callbacks.SensitivityPruning(**settings), 4,
            shuffle=False, callbacks=callbacks,
        )  # fmt: skip

    model = _mlp()
    run([])
    expected = [w.copy() for w in model.get_weights()]
    model = _mlp()
    backup, interrupt = harness.backup_for(directory, kill)
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, interrupt(1)])
    if kill == "mid_epoch":
        harness.assert_killed_mid_epoch(directory)
    assert harness.state_files(directory, "sensitivity_pruning")
    model = _mlp()  # A fresh process would rebuild the model the same way.
    backup, _ = harness.backup_for(directory, kill)
    logs = run([backup])
    assert len(logs["sparsity"]) == (2 if kill == "epoch_end" else 3)
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_array_equal(got, want)
    assert not harness.state_files(directory, "sensitivity_pruning")


def test_mirrored_strategy_reaches_the_target():
    run_on_two_cpus(
        """
        import keras, numpy as np
        import keras_serene as ks
        from keras_serene.app.datasets import load_digits
        (x, y), _ = load_digits()
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        with strategy.scope():
            model = keras.Sequential([
                keras.Input((8, 8, 1)), keras.layers.Flatten(),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10)])
            model.compile(
                optimizer=ks.SensitivityOptimizer(keras.optimizers.SGD(0.05)),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
        pruner = ks.callbacks.SensitivityPruning(
            target_sparsity=0.7, end_epoch=2, verbose=0)
        logs = model.fit(x, y, validation_split=0.1, epochs=3,
                         batch_size=64, verbose=0, callbacks=[pruner]).history
        assert abs(logs["sparsity"][-1] - 0.7) <= 0.005, logs["sparsity"]
        kernel = model.layers[1].kernel.numpy()
        assert abs(np.mean(kernel == 0) - 0.7) < 0.05
        """
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"target_sparsity": 1.0}, ValueError, "target_sparsity=1.0"),
        ({"target_sparsity": 0.0}, ValueError, "target_sparsity=0.0"),
        ({"target_sparsity": "0.5"}, TypeError, "target_sparsity='0.5'"),
        ({"begin_epoch": -1}, ValueError, "begin_epoch=-1"),
        ({"begin_epoch": 3, "end_epoch": 2}, ValueError, "end_epoch=2"),
        ({"end_epoch": 0}, ValueError, "end_epoch=0"),
        ({"frequency": 0}, ValueError, "frequency=0"),
        ({"frequency": 2.5}, TypeError, "frequency=2.5"),
        ({"patience": -1}, ValueError, "SensitivityPruning.*patience=-1"),
        ({"criterion": "l3"}, ValueError, "criterion='l3'"),
        ({"target_sparsity": {"fc1": 1.0}}, ValueError, "'fc1'.*1.0"),
        ({"target_sparsity": {"fc1": "a"}}, TypeError, "'fc1'"),
        ({"target_sparsity": {}}, TypeError, "target_sparsity={}"),
        ({"target_sparsity": {1: 0.5}}, TypeError, "layer names"),
        (
            {"target_sparsity": {"fc1": 0.5}, "exclude": ["bias"]},
            ValueError,
            "exclude=.*structured=True",
        ),
        (
            {"target_sparsity": {"fc1": 0.5}, "criterion": "taylor_global"},
            ValueError,
            "'taylor_global' chooses each layer's share",
        ),
        (
            {"target_sparsity": {"fc1": 0.5}, "block_size": 4},
            ValueError,
            "block_size=4",
        ),
    ],
)
def test_bad_arguments_name_sensitivity_pruning(kwargs, error, match):
    kwargs = {"target_sparsity": 0.5, **kwargs}
    with pytest.raises(error, match=match) as info:
        ks.callbacks.SensitivityPruning(**kwargs)
    assert str(info.value).startswith("SensitivityPruning")


def test_criterion_without_target_is_an_error():
    with pytest.raises(ValueError, match="target_sparsity"):
        ks.callbacks.SensitivityPruning(criterion="taylor")


def test_data_criterion_without_data_is_a_clear_error(digits):
    x, y, _, _ = digits
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.5, criterion="taylor", verbose=0
    )
    with pytest.raises(ValueError, match="validation_data"):
        _fit(_mlp(), x, y, pruner, epochs=1)


def test_budgeted_config_round_trip():
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.9, structured=True, begin_epoch=1, end_epoch=5.5,
        frequency=2, criterion="magnitude_global", verbose=0,
    )  # fmt: skip
    config = pruner.get_config()
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(pruner)
    )
    assert isinstance(again, ks.callbacks.SensitivityPruning)
    assert again.get_config() == config
    assert config["end_epoch"] == 5.5 and config["criterion"] == (
        "magnitude_global"
    )
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity={"fc1": 0.9, "outer/fc2": 0.5}, verbose=0
    )
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(pruner)
    )
    assert again.target_sparsity == {"fc1": 0.9, "outer/fc2": 0.5}
    assert again.get_config() == pruner.get_config()
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity={"fc1": 0.9}, structured=False, exclude=["bias"],
        block_size=4, verbose=0,
    )  # fmt: skip
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(pruner)
    )
    assert again.get_config() == pruner.get_config()
    assert again.structured is False and again.exclude == ["bias"]
