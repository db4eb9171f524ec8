"""`datasets.shuffled_batches` / `fit_arrays`: a new order every epoch."""

import keras
import numpy as np
import pytest

from keras_serene.app import datasets


def _epoch_orders(dataset, epochs):
    return [
        np.concatenate([x.numpy()[:, 0] for x, _ in dataset])
        for _ in range(epochs)
    ]


def test_shuffled_batches_reshuffle_every_epoch_reproducibly():
    keras.utils.set_random_seed(0)  # what froze `fit`'s order
    x = np.arange(50, dtype="float32")[:, None]
    y = np.arange(50)
    orders = _epoch_orders(datasets.shuffled_batches(x, y, 8, seed=3), 3)
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), x[:, 0])
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    again = _epoch_orders(datasets.shuffled_batches(x, y, 8, seed=3), 3)
    for a, b in zip(orders, again):
        np.testing.assert_array_equal(a, b)
    other = _epoch_orders(datasets.shuffled_batches(x, y, 8, seed=4), 1)
    assert not np.array_equal(orders[0], other[0])
    # Labels travel with their images.
    for xb, yb in datasets.shuffled_batches(x, y, 8, seed=3):
        np.testing.assert_array_equal(xb.numpy()[:, 0], yb.numpy())


def test_shuffled_batches_orders_match_shuffling_the_samples():
    # The buffer holds indices; the orders are those of a buffer of samples
    # (earlier benchmark runs used that), and `fit` knows the length.
    import tensorflow as tf

    x = np.arange(50, dtype="float32")[:, None]
    y = np.arange(50)
    ours = datasets.shuffled_batches(x, y, 8, seed=3)
    samples = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(50, seed=3, reshuffle_each_iteration=True)
        .batch(8)
    )
    for a, b in zip(_epoch_orders(ours, 3), _epoch_orders(samples, 3)):
        np.testing.assert_array_equal(a, b)
    assert int(ours.cardinality()) == 7


def test_fit_arrays_holds_out_the_last_fraction_like_validation_split():
    x = np.arange(40, dtype="float32")[:, None]
    y = np.arange(40) % 3
    kwargs = datasets.fit_arrays(x, y, 5, seed=0, validation_split=0.25)
    x_val, y_val = kwargs["validation_data"]
    np.testing.assert_array_equal(x_val, x[30:])
    np.testing.assert_array_equal(y_val, y[30:])
    assert kwargs["shuffle"] is False
    seen = np.concatenate([xb.numpy()[:, 0] for xb, _ in kwargs["x"]])
    np.testing.assert_array_equal(np.sort(seen), x[:30, 0])
    assert "validation_data" not in datasets.fit_arrays(x, y, 5, 0, 0.0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(3)])
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(**kwargs, epochs=2, verbose=0)
    assert len(history.history["val_loss"]) == 2


def test_shuffled_batches_bad_input_names_it():
    x = np.zeros((4, 1), "float32")
    with pytest.raises(ValueError, match="len\\(x\\)=4, len\\(y\\)=3"):
        datasets.shuffled_batches(x, np.zeros(3), 2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        datasets.shuffled_batches(x, np.zeros(4), 0, seed=0)
    with pytest.raises(ValueError, match="validation_split"):
        datasets.fit_arrays(x, np.zeros(4), 2, seed=0, validation_split=1.0)
