"""`core/callback_backup`: the epoch-begin snapshot and its rewind."""

import keras
import numpy as np
import pytest

from keras_serene.core import callback_backup


def _model(units):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(units)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_rewind_puts_back_the_snapshot(tmp_path):
    model = _model(2)
    before = [np.array(v.numpy()) for v in model.variables]
    callback_backup.snapshot(str(tmp_path), "cb", 3, model)
    for v in model.variables:
        v.assign(v + 1.0)
    assert callback_backup.rewind(str(tmp_path), "cb", 3, model)
    for v, b in zip(model.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    # No snapshot of epoch 4: nothing to rewind, silently.
    assert not callback_backup.rewind(str(tmp_path), "cb", 4, model)


def test_rewind_of_another_model_warns_and_leaves_it(tmp_path):
    callback_backup.snapshot(str(tmp_path), "cb", 1, _model(2))
    other = _model(4)
    before = [np.array(v.numpy()) for v in other.variables]
    with pytest.warns(UserWarning, match=r"cb: .* not of this model .*shape"):
        assert not callback_backup.rewind(str(tmp_path), "cb", 1, other)
    for v, b in zip(other.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
