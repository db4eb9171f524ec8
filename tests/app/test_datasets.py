"""`ks.datasets`: digits, and any tfds image dataset (mocked: no network)."""

import numpy as np
import pytest

import keras_serene as ks

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason="tensorflow-datasets is the optional `tfds` extra",
)


def test_load_tfds_mnist_arrays_normalised():
    with tfds.testing.mock_data(num_examples=12):
        (x, y), (x_test, y_test) = ks.datasets.load_tfds("mnist")
        short = ks.datasets.load("tfds:mnist")
    assert x.shape == (12, 28, 28, 1) and x_test.shape == (12, 28, 28, 1)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert set(np.unique(y)) <= set(range(10))
    # The mock yields the same examples both times: one code path.
    np.testing.assert_array_equal(short[0][0], x)
    np.testing.assert_array_equal(short[1][1], y_test)


def test_load_tfds_as_batched_dataset_and_resized():
    with tfds.testing.mock_data(num_examples=10):
        train, test = ks.datasets.load_tfds(
            "cifar10", as_dataset=True, batch_size=4, image_size=(8, 8)
        )
        batches = list(train.as_numpy_iterator())
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    images, labels = batches[0]
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.float32
    assert labels.dtype == np.int64
    assert tuple(test.element_spec[0].shape) == (None, 8, 8, 3)


def test_tfds_data_trains_a_model_with_psp_logger():
    import keras

    with tfds.testing.mock_data(num_examples=16):
        (x, y), _ = ks.datasets.load_tfds("mnist")
        _, test = ks.datasets.load_tfds("mnist", as_dataset=True, batch_size=8)
        model = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(4, activation="relu", name="fc"),
                keras.layers.Dense(10, name="out"),
            ]
        )
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        logger = ks.callbacks.PSPEntropyLogger(test, layers=["fc"])
        history = model.fit(
            x, y, epochs=1, batch_size=8, verbose=0, callbacks=[logger]
        )
        expected = ks.metrics.psp_entropy(model, test, layers=["fc"])
    assert history.history["psp_entropy/fc"] == [expected["fc"]["mean"]]


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="Received: name='imagenet_typo_x'"):
        ks.datasets.load_tfds("imagenet_typo_x")
    with pytest.raises(
        ValueError, match=r"'tfds:NAME'.*Received: name='mnist'"
    ):
        ks.datasets.load("mnist")
    with pytest.raises(ValueError, match="Received: name='tfds:'"):
        ks.datasets.load("tfds:")
    with pytest.raises(TypeError, match="name=3"):
        ks.datasets.load(3)
    with pytest.raises(ValueError, match="image_size=.8,."):
        ks.datasets.load_tfds("mnist", image_size=(8,))


def test_load_available_takes_a_name():
    with tfds.testing.mock_data(num_examples=6):
        name, ((x, _), _) = ks.datasets.load_available(
            small=True, name="tfds:mnist"
        )
    assert name == "tfds:mnist" and x.shape == (6, 28, 28, 1)
    name, ((x, _), _) = ks.datasets.load_available(small=True)
    assert name == "digits" and x.shape[1:] == (8, 8, 1)


def test_digits_by_name():
    (x, y), (x_test, y_test) = ks.datasets.load("digits")
    assert x.shape[1:] == (8, 8, 1) and len(x) + len(x_test) == 1797
    assert x.max() <= 1.0 and y.dtype == np.int64


def test_demo_quick_on_tfds_mock(tmp_path):
    from keras_serene.app import demo

    if "tfds" not in demo.build_parser().format_help():
        pytest.skip("the demo does not take --dataset tfds:NAME yet")
    with tfds.testing.mock_data(num_examples=64):
        args = demo.build_parser().parse_args(
            [
                "--dataset",
                "tfds:mnist",
                "--quick",
                "--epochs",
                "2",
                "--out",
                str(tmp_path),
                "--verbose",
                "0",
            ]
        )
        report = demo.run(args)
    names = [r["name"] for r in report["runs"]]
    assert names == ["dense", "pruned", "slim"]
    assert (tmp_path / "report.json").exists()
