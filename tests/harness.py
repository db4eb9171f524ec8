"""The shared test kit: round trips and the small standard models.

On public API only, as keras-hub's `TestCase` (`run_serialization_test`,
`run_model_saving_test`): every public class gets a config round trip, and
everything that touches a model a `.keras` save -> load -> equal outputs.
Import it from any test module (`from harness import ...`): pytest puts the
`tests/` folder on `sys.path` through its `conftest.py`.
"""

import os

import keras
import numpy as np


def assert_config_round_trip(obj, cls=None, **from_config_kwargs):
    """`from_config(get_config())` and Keras (de)serialization both give an
    equal config; returns the object rebuilt by Keras's deserializer.

    Args:
        obj: the object (optimizer, callback, estimator, layer, model...).
        cls: the class to rebuild with (defaults to `type(obj)`).
        **from_config_kwargs: entries merged into the config before
            `from_config` (a callback's `validation_data`, which configs do
            not carry).
    """
    cls = cls or type(obj)
    config = obj.get_config()
    restored = cls.from_config({**config, **from_config_kwargs})
    assert type(restored) is cls
    assert restored.get_config() == config
    if from_config_kwargs:
        return restored
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(obj)
    )
    assert type(again) is cls, type(again)
    assert again.get_config() == config
    return again


def assert_saving_round_trip(model, x, tmp_path, name="model.keras", rtol=1e-6):
    """Saves `model` as `.keras`, loads it, checks equal predictions and
    returns the loaded model."""
    path = os.path.join(str(tmp_path), name)
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=rtol
    )
    return loaded


def mlp(inputs=8, hidden=(6,), classes=3, seed=0, name="mlp"):
    """A small ReLU MLP ending in logits (layers `hidden`, `hidden_1`...,
    `logits`)."""
    keras.utils.set_random_seed(seed)
    x = inputs_ = keras.Input((inputs,))
    for i, width in enumerate(hidden):
        x = keras.layers.Dense(
            width, activation="relu", name="hidden" + (f"_{i}" if i else "")
        )(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs_, outputs, name=name)


def conv_bn_net(shape=(8, 8, 1), filters=(4, 6), classes=3, seed=0):
    """A small Conv-BN-ReLU network ending in logits (`conv`, `conv_1`...,
    their `bn`, `bn_1`..., `logits`)."""
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input(shape)
    for i, width in enumerate(filters):
        suffix = f"_{i}" if i else ""
        x = keras.layers.Conv2D(width, 3, padding="same", name="conv" + suffix)(
            x
        )
        x = keras.layers.BatchNormalization(name="bn" + suffix)(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="conv_bn_net")


def classification_data(n=32, shape=(8,), classes=3, seed=0):
    """Random float32 inputs and int labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, classes, size=(n,))
    return x, y


def hand_net(weights):
    """The 2-2-2 ReLU network of the hand-worked sensitivity tests (layers
    `d1`, `d2`, logits), with `weights = [W1, B1, W2, B2]`."""
    inputs = keras.Input((2,))
    h = keras.layers.Dense(2, activation="relu", name="d1")(inputs)
    outputs = keras.layers.Dense(2, name="d2")(h)
    model = keras.Model(inputs, outputs)
    model.set_weights(weights)
    return model


class Interrupt(keras.callbacks.Callback):
    """Kills a fit (raises) at the end of `epoch`, or after its `batch`.

    Listed after `keras.callbacks.BackupAndRestore`, so the backup has
    saved first: `batch=None` kills between epochs, an integer mid-epoch.
    """

    def __init__(self, epoch, batch=None):
        super().__init__()
        self.epoch, self.batch, self._current = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._current == self.epoch and batch == self.batch:
            raise RuntimeError("interrupted")

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch and self.batch is None:
            raise RuntimeError("interrupted")


#: Kill points of the resume tests: between epochs, and mid-epoch with the
#: backup saving every 2 batches (so its last save is part-way through).
KILL_POINTS = {"epoch_end": (None, "epoch"), "mid_epoch": (2, 2)}


def backup_for(directory, kill):
    """`(BackupAndRestore, Interrupt factory)` of a `KILL_POINTS` name."""
    batch, save_freq = KILL_POINTS[kill]
    backup = keras.callbacks.BackupAndRestore(directory, save_freq=save_freq)
    return backup, lambda epoch: Interrupt(epoch, batch)


def assert_killed_mid_epoch(directory):
    """Keras's backup was written part-way through an epoch."""
    import json

    with open(os.path.join(directory, "training_metadata.json")) as f:
        assert json.load(f)["batch"] > 0


def state_files(directory, name):
    """Our callback-state files (`keras_serene.core.callback_backup`)."""
    if not os.path.isdir(directory):
        return []
    return [f for f in os.listdir(directory) if f.startswith(name + "-")]
