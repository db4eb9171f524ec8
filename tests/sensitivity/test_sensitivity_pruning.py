"""SensitivityPruning inside fit: thresholds, masks, logs, errors."""

import re

import harness
import keras
import numpy as np
import pytest
from harness import assert_config_round_trip

import keras_serene as ks
from keras_serene.app.datasets import load_digits
from keras_serene.core import masking as masks


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_test, y_test) = load_digits()
    return x.reshape(len(x), -1), y, x_test.reshape(len(x_test), -1), y_test


def _model(compile_with=None, decay=1e-3):
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=compile_with
        or ks.SensitivityOptimizer(keras.optimizers.SGD(0.1), decay=decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _pruner(**kwargs):
    # A negative plateau tolerance finds plateaus within a few epochs.
    defaults = dict(
        patience=1, tolerance=0.2, plateau_tolerance=-0.05, verbose=0
    )
    return ks.callbacks.SensitivityPruning(**{**defaults, **kwargs})


def test_prunes_and_logs_with_validation_split(digits):
    x, y, x_test, y_test = digits
    model = _model()
    pruner = _pruner()
    history = model.fit(
        x,
        y,
        validation_split=0.2,
        epochs=12,
        batch_size=16,
        verbose=0,
        callbacks=[pruner],
    )
    logs = history.history
    assert len(logs["sparsity"]) == 12
    assert logs["sparsity"][-1] > 0.2
    assert logs["pruning_threshold"][-1] == pytest.approx(pruner.threshold)
    assert pruner.threshold > 0
    assert np.all(np.diff(logs["sparsity"]) >= -1e-12)  # Monotone.
    assert 0 < logs["alive_neurons"][-1] <= 1
    # Every pruning step respected the loss bound.
    for step in pruner.history:
        assert step["loss_after"] <= step["bound"] + 1e-6
    # Pruned entries are masked and stay exactly zero through training.
    opt = masks.mask_optimizer(model)
    kernel = model.layers[0].kernel
    pruned = masks.pruned(opt, kernel)
    assert pruned.any()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.all(kernel.numpy()[pruned] == 0.0)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert accuracy > 0.8


def test_callback_validation_data_matches_fit_validation(digits):
    """Trials on the callback's own data equal trials on fit's cached data."""
    x, y, _, _ = digits
    split = int(0.8 * len(x))
    validation = (x[split:], y[split:])
    results = []
    for own_data in (False, True):
        keras.utils.set_random_seed(0)
        model = _model()
        pruner = _pruner(
            validation_data=validation if own_data else None,
        )
        model.fit(
            x[:split],
            y[:split],
            validation_data=validation,
            epochs=8,
            batch_size=16,
            verbose=0,
            shuffle=False,
            callbacks=[pruner],
        )
        results.append(pruner.history)
    assert results[0], "no pruning step happened"
    assert [s["threshold"] for s in results[0]] == pytest.approx(
        [s["threshold"] for s in results[1]], rel=1e-5
    )


def test_missing_validation_is_a_clear_error(digits):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match="val_loss.*validation_split"):
        _model().fit(x, y, epochs=1, verbose=0, callbacks=[_pruner()])


def test_plain_optimizer_is_a_clear_error(digits):
    x, y, _, _ = digits
    model = _model(compile_with=keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="SensitivityOptimizer"):
        model.fit(
            x,
            y,
            validation_split=0.2,
            epochs=1,
            verbose=0,
            callbacks=[_pruner()],
        )


def test_reusable_across_fits(digits):
    x, y, _, _ = digits
    model = _model()
    pruner = _pruner()
    first = model.fit(
        x,
        y,
        validation_split=0.2,
        epochs=8,
        batch_size=16,
        verbose=0,
        callbacks=[pruner],
    ).history["sparsity"]
    assert pruner.history, "no pruning step happened"
    pruner.plateau.bad_epochs = 99  # on_train_begin must reset the detector.
    second = model.fit(
        x,
        y,
        validation_split=0.2,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[pruner],
    ).history["sparsity"]
    assert len(second) == 3
    assert second[0] >= first[-1] > 0  # Continues from the masks.


def test_structured_mode_masks_dead_neurons_whole(digits):
    x, y, _, _ = digits
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    kernel, bias = model.layers[0].kernel, model.layers[0].bias
    # Prune neuron 3's incoming weights by hand; its bias stays trainable.
    where = np.zeros(kernel.shape, bool)
    where[:, 3] = True
    masks.set_flag(
        masks.mask_optimizer(model), kernel, masks.PRUNED, where, zero=True
    )
    bias.assign(np.full(bias.shape, 0.5, "float32"))
    pruner = _pruner(structured=True)
    model.fit(
        x,
        y,
        validation_split=0.2,
        epochs=8,
        batch_size=16,
        verbose=0,
        callbacks=[pruner],
    )
    assert pruner.history, "no pruning step happened"
    opt = masks.mask_optimizer(model)
    assert bias.numpy()[3] == 0.0 and masks.pruned(opt, bias)[3]
    assert np.all(masks.pruned(opt, kernel)[:, 3])
    model.fit(x, y, epochs=1, verbose=0)
    assert bias.numpy()[3] == 0.0 and np.all(kernel.numpy()[:, 3] == 0)


def test_sparsity_counts_only_regularized_variables(digits):
    x, y, _, _ = digits
    model = _model()
    model.fit(
        x, y, validation_split=0.2, epochs=1, verbose=0, callbacks=[_pruner()]
    )
    opt = masks.mask_optimizer(model)
    assert len(opt.regularized_variables) == 4


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tolerance": -0.1}, ValueError, "tolerance=-0.1"),
        ({"patience": 0}, ValueError, "patience=0"),
        ({"monitor": ""}, ValueError, "monitor=''"),
        ({"structured": "yes"}, TypeError, "structured='yes'"),
        ({"block_size": 0}, ValueError, "block_size=0"),
        ({"exclude": "bias"}, TypeError, "exclude='bias'"),
        ({"exclude": ["fc1", "("]}, ValueError, "valid regexes"),
        (
            {"exclude": ["bias"], "target_sparsity": 0.5, "structured": True},
            ValueError,
            "structured=True",
        ),
        ({"block_size": 2.0}, TypeError, "block_size=2.0"),
        ({"block_size": 4}, ValueError, "target_sparsity=None"),
        (
            {"block_size": 4, "target_sparsity": 0.5, "structured": True},
            ValueError,
            "structured=True",
        ),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ks.callbacks.SensitivityPruning(**kwargs)


def test_config_round_trip():
    pruner = ks.callbacks.SensitivityPruning(
        patience=7, tolerance=0.1, structured=True, verbose=0
    )
    assert_config_round_trip(pruner)
    blocks = ks.callbacks.SensitivityPruning(
        target_sparsity=0.9, block_size=4, exclude=["bias"]
    )
    assert_config_round_trip(blocks)


@pytest.mark.parametrize("fit_verbose", [0, 2])
def test_verbose_lines_break_a_progress_bar_only(digits, capsys, fit_verbose):
    x, y, _, _ = digits
    model = _model()
    pruner = ks.callbacks.SensitivityPruning(target_sparsity=0.5, verbose=1)
    model.fit(
        x[:200], y[:200], validation_split=0.2, epochs=2, batch_size=40,
        verbose=fit_verbose, callbacks=[pruner],
    )  # fmt: skip
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "SensitivityPruning" in line]
    assert lines, out
    if fit_verbose == 0:  # no progress bar: no blank line before a message
        assert out.startswith("Step") and "\n\n" not in out, out
    else:
        assert "\nStep" in out


@pytest.mark.parametrize("kill", sorted(harness.KILL_POINTS))
def test_plateau_schedule_resumes_bit_identical(digits, tmp_path, kill):
    x, y, _, _ = digits
    backup_dir = str(tmp_path / "backup")

    def run(extra, backup=None):
        keras.utils.set_random_seed(0)
        model = _model()
        # Demand a 30% improvement per epoch: plateaus come every few epochs.
        pruner = _pruner(backup_dir=backup, plateau_tolerance=-0.3)
        history = model.fit(
            x, y, validation_split=0.25, epochs=6, batch_size=16,
            shuffle=False, verbose=0, callbacks=[pruner, *extra],
        )  # fmt: skip
        return model, pruner, history.history

    model, pruner, logs = run([])
    assert pruner.history, "the uninterrupted run never pruned"
    expected = [w.copy() for w in model.get_weights()]
    backup, interrupt = harness.backup_for(backup_dir, kill)
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, interrupt(3)], backup_dir)
    if kill == "mid_epoch":
        harness.assert_killed_mid_epoch(backup_dir)
    backup, _ = harness.backup_for(backup_dir, kill)
    resumed, resumed_pruner, resumed_logs = run([backup], backup_dir)
    first = 4 if kill == "epoch_end" else 3  # epoch 5 (mid-epoch: 4) on
    assert len(resumed_logs["sparsity"]) == 6 - first
    assert resumed_pruner.history == pruner.history
    assert resumed_logs["sparsity"] == logs["sparsity"][first:]
    for got, want in zip(resumed.get_weights(), expected):
        np.testing.assert_array_equal(got, want)
    # Our state goes with the backup when fit completes.
    assert not harness.state_files(backup_dir, "sensitivity_pruning")


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"block_size": 4}, "block_size=4"),
        ({"exclude": ["bias"]}, "exclude=['bias']"),
    ],
)
def test_entry_options_refuse_a_per_neuron_sensitivity(digits, kwargs, named):
    """`structured=None` follows the optimizer: a neuron sensitivity makes
    the pruning structured, where entry blocks and excludes do not apply."""
    x, y, _, _ = digits
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.1), sensitivity="neuron"
    )
    model = _model(compile_with=optimizer)
    pruner = ks.callbacks.SensitivityPruning(
        target_sparsity=0.5, verbose=0, **kwargs
    )
    with pytest.raises(
        ValueError, match="structured=False.*" + re.escape(named)
    ):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[pruner])
