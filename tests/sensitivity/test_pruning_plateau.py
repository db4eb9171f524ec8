"""Plateau mode's NaN rollback and the one Keras-internals function."""

import keras
import numpy as np
import pytest

import keras_serene as ks
from keras_serene.app.datasets import load_digits
from keras_serene.core import masking as masks
from keras_serene.sensitivity.plateau_pruning import evaluate_fit_validation


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = load_digits()
    return x.reshape(len(x), -1), y


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=ks.SensitivityOptimizer(keras.optimizers.SGD(0.1)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class _BreakAt(keras.callbacks.Callback):
    """At `epoch`, wrecks the weights and reports a NaN validation loss."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch
        self.good = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch - 1:
            self.good = [w.copy() for w in self.model.get_weights()]
        if epoch == self.epoch:
            kernel = self.model.layers[0].kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))
            logs["val_loss"] = float("nan")


def test_nan_validation_loss_rolls_back_instead_of_pruning(digits):
    x, y = digits
    model = _model()
    opt = masks.mask_optimizer(model)
    masks.ensure_built(opt, model)
    kernel = model.layers[0].kernel
    where = np.zeros(kernel.shape, bool)
    where[:5] = True  # Pruned before fit: must stay zero after the rollback.
    masks.set_flag(opt, kernel, masks.PRUNED, where, zero=True)
    breaker = _BreakAt(epoch=2)
    # patience=1, tolerance 0: any epoch not improving would prune.
    pruner = ks.callbacks.SensitivityPruning(
        patience=1, plateau_tolerance=0.0, verbose=0
    )
    model.fit(
        x, y, validation_split=0.2, epochs=3, batch_size=64, verbose=0,
        shuffle=False, callbacks=[breaker, pruner],
    )  # fmt: skip
    assert pruner.history == []  # The NaN epoch did not prune.
    # Epochs 1-2 improved; the rollback at epoch 3 restored epoch 2's
    # weights: finite, and the rows pruned before fit are still zero.
    assert np.all(np.isfinite(kernel.numpy()))
    assert np.all(kernel.numpy()[:5] == 0.0)


def test_nan_rollback_restores_the_last_good_weights(digits):
    x, y = digits
    model = _model()
    breaker = _BreakAt(epoch=1)
    pruner = ks.callbacks.SensitivityPruning(patience=5, verbose=0)
    model.fit(
        x, y, validation_split=0.2, epochs=2, batch_size=64, verbose=0,
        callbacks=[breaker, pruner],
    )  # fmt: skip
    for got, want in zip(model.get_weights(), breaker.good):
        np.testing.assert_array_equal(got, want)


class _Probe(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.pairs = []

    def on_epoch_end(self, epoch, logs=None):
        results = evaluate_fit_validation(self.model)
        self.pairs.append((results["loss"], logs["val_loss"]))


def test_evaluate_fit_validation_matches_fits_own_val_loss(digits):
    """Fails loudly if Keras changes `_eval_epoch_iterator` or
    `evaluate(_use_cached_eval_dataset=True)` (issue 12 item 6)."""
    x, y = digits
    probe = _Probe()
    _model().fit(
        x, y, validation_split=0.2, epochs=2, batch_size=64, verbose=0,
        callbacks=[probe],
    )  # fmt: skip
    assert len(probe.pairs) == 2
    for ours, keras_own in probe.pairs:
        assert ours == pytest.approx(keras_own, rel=1e-5)


def test_evaluate_fit_validation_without_validation_is_a_clear_error():
    with pytest.raises(ValueError, match="validation_split"):
        evaluate_fit_validation(_model())
