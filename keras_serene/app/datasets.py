"""Datasets for the demo, the examples and the benchmarks.

Two sources, both usable with no network:
- `load_digits`: scikit-learn's 8x8 digits (1,797 images, shipped inside the
  scikit-learn wheel), padded to 1 channel. The embedded default.
- `load_fashion_mnist`: Fashion-MNIST from its IDX files (Debian's
  `dataset-fashion-mnist` puts them in `/usr/share/datasets/fashion-mnist`),
  falling back to `keras.datasets.fashion_mnist` (a download) when the files
  are missing.

Every loader returns `((x_train, y_train), (x_test, y_test))` with images as
float32 in [0, 1] of shape `(n, height, width, 1)` and integer labels.
"""

import gzip
import os

import numpy as np

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path):
    """Reads one IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(
            f"{path} is not an unsigned-byte IDX file (header {data[:4]!r})."
        )
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return array.reshape(shape)


def _find_idx(data_dir, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    return None


def load_fashion_mnist(data_dir=DEFAULT_FASHION_MNIST_DIR, allow_download=True):
    """Loads Fashion-MNIST (60k train, 10k test, 28x28x1, 10 classes).

    Args:
        data_dir: String. Folder holding the four IDX files (plain or
            `.gz`). Defaults to Debian's `/usr/share/datasets/fashion-mnist`.
        allow_download: Bool. When the files are missing, fall back to
            `keras.datasets.fashion_mnist` (needs the network). Defaults to
            `True`.
    """
    paths = {key: _find_idx(data_dir, stem) for key, stem in _IDX_FILES.items()}
    if all(paths.values()):
        arrays = {key: read_idx(path) for key, path in paths.items()}
        x_train, y_train = arrays["x_train"], arrays["y_train"]
        x_test, y_test = arrays["x_test"], arrays["y_test"]
    elif allow_download:
        import keras

        (x_train, y_train), (x_test, y_test) = (
            keras.datasets.fashion_mnist.load_data()
        )
    else:
        missing = [_IDX_FILES[k] for k, p in paths.items() if p is None]
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files {missing} not found in "
            f"data_dir={data_dir!r}. Install Debian's `dataset-fashion-mnist` "
            "or pass the folder holding them."
        )
    return _as_images(x_train, y_train), _as_images(x_test, y_test)


def fashion_mnist_available(data_dir=DEFAULT_FASHION_MNIST_DIR):
    """True when the Fashion-MNIST IDX files are on disk."""
    return all(_find_idx(data_dir, stem) for stem in _IDX_FILES.values())


def load_digits(test_fraction=0.2, seed=0):
    """Loads scikit-learn's digits (8x8x1, 10 classes), split train/test.

    Args:
        test_fraction: Float in (0, 1). Fraction held out for testing,
            stratified by class. Defaults to `0.2`.
        seed: Int. Seed of the split. Defaults to `0`.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"`test_fraction` must be in (0, 1). Received: {test_fraction}"
        )
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.images / 16.0).astype("float32")
    y = bunch.target.astype("int64")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        n_test = int(round(len(idx) * test_fraction))
        test[rng.choice(idx, size=n_test, replace=False)] = True
    return _as_images(x[~test], y[~test]), _as_images(x[test], y[test])


def load_available(small=False, data_dir=DEFAULT_FASHION_MNIST_DIR):
    """`(name, data)`: Fashion-MNIST when its files are on disk, else digits.

    The examples' and benchmarks' choice: the embedded digits when `small`
    (a smoke run) or when no Fashion-MNIST files are installed, so nothing
    needs the network.
    """
    if small or not fashion_mnist_available(data_dir):
        return "digits", load_digits()
    return "fashion_mnist", load_fashion_mnist(data_dir)


def load(name, data_dir=DEFAULT_FASHION_MNIST_DIR):
    """Loads a dataset by name: `"digits"` or `"fashion_mnist"`."""
    if name == "digits":
        return load_digits()
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    raise ValueError(
        f"Unknown dataset {name!r}. Expected one of 'digits', 'fashion_mnist'."
    )


def _as_images(x, y):
    x = np.asarray(x, dtype="float32")
    if x.max() > 1.0:
        x = x / 255.0
    if x.ndim == 3:
        x = x[..., None]
    return x, np.asarray(y, dtype="int64")
