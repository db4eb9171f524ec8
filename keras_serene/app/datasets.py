"""Datasets for the demo, the examples and the benchmarks.

Three sources:
- `load_digits`: scikit-learn's 8x8 digits (1,797 images, shipped inside the
  scikit-learn wheel), padded to 1 channel. The embedded default.
- `load_fashion_mnist`: Fashion-MNIST from its IDX files (Debian's
  `dataset-fashion-mnist` puts them in `/usr/share/datasets/fashion-mnist`),
  falling back to `keras.datasets.fashion_mnist` (a download) when the files
  are missing.
- `load_tfds`: any image classification dataset of `tensorflow-datasets`
  (`pip install keras-serene[tfds]`), through `tfds.load(name,
  as_supervised=True)`: downloaded and prepared on first use into
  `data_dir` (tfds's `~/tensorflow_datasets` by default), like tfds itself.
  `load("tfds:NAME")` is the short form.

Every loader returns `((x_train, y_train), (x_test, y_test))` with images as
float32 in [0, 1] of shape `(n, height, width, channels)` and integer labels;
`load_tfds(..., as_dataset=True)` returns batched `tf.data.Dataset`s of the
same `(image, label)` pairs instead, for datasets too large for memory.

`fit_arrays(x, y, batch_size, seed)` feeds arrays to `model.fit` in a new
order every epoch (`model.fit(x, y)` under `keras.utils.set_random_seed`
replays one order: `shuffled_batches`).
"""

import gzip
import os

import numpy as np

from keras_serene.core import checks

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


def _folder(data_dir):
    return DEFAULT_FASHION_MNIST_DIR if data_dir is None else data_dir


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
            `.gz`). `None` or omitted: Debian's
            `/usr/share/datasets/fashion-mnist`.
        allow_download: Bool. When the files are missing, fall back to
            `keras.datasets.fashion_mnist` (needs the network). Defaults to
            `True`.
    """
    data_dir = _folder(data_dir)
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
    data_dir = _folder(data_dir)
    return all(_find_idx(data_dir, stem) for stem in _IDX_FILES.values())


def load_digits(test_fraction=0.2, seed=0):
    """Loads scikit-learn's digits (8x8x1, 10 classes), split train/test.

    Args:
        test_fraction: Float in (0, 1). Fraction held out for testing,
            stratified by class. Defaults to `0.2`.
        seed: Int. Seed of the split. Defaults to `0`.
    """
    owner = "datasets.load_digits"
    checks.check_number(
        owner,
        "test_fraction",
        test_fraction,
        minimum=0.0,
        maximum=1.0,
        min_inclusive=False,
        max_inclusive=False,
    )
    checks.check_int(owner, "seed", seed)
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


def load_available(small=False, data_dir=DEFAULT_FASHION_MNIST_DIR, name=None):
    """`(name, data)`: Fashion-MNIST when its files are on disk, else digits.

    The examples' and benchmarks' choice: the embedded digits when `small`
    (a smoke run) or when no Fashion-MNIST files are installed, so nothing
    needs the network. `name` (`"digits"`, `"fashion_mnist"`,
    `"tfds:NAME"`) asks for one dataset instead, e.g. from a script's
    `--dataset` flag; `small` does not override it.
    """
    if name is not None:
        return name, load(name, data_dir)
    if small or not fashion_mnist_available(data_dir):
        return "digits", load_digits()
    return "fashion_mnist", load_fashion_mnist(data_dir)


def shuffled_batches(x, y, batch_size, seed):
    """`(x, y)` arrays as batches in a new order every epoch, reproducibly.

    What `model.fit(x, y, shuffle=True)` should give, and does not after
    `keras.utils.set_random_seed` on the TensorFlow backend (Keras 3.15, TF
    2.21): its array adapter draws the epoch's permutation with an unseeded
    `tf.random.shuffle` inside a dataset that each epoch iterates afresh, so
    under a global seed every epoch replays the first epoch's order (tf_keras
    reshuffles; `benchmarks/keras_shuffle.py` shows it). On full
    Fashion-MNIST that one fixed order cost a dense LeNet-5 about a point of
    test accuracy (`docs/results.md`, budgeted section, the 2026-12-03
    note). Here a seeded `tf.data` shuffle with
    `reshuffle_each_iteration=True` draws a new order each epoch, the same
    sequence of orders for the same `seed`; the dataset's length is known,
    so `fit` knows its steps per epoch. The shuffle buffer holds indices,
    not samples (the same orders as shuffling the samples): a buffer of the
    samples would copy all of full Fashion-MNIST (186 MB as float32) and
    refill it in a background thread at every epoch start.

    Args:
        x: Array of inputs.
        y: Array of labels, as long as `x`.
        batch_size: Positive int.
        seed: Int. Seed of the sequence of orders.
    """
    owner = "datasets.shuffled_batches"
    checks.check_int(owner, "batch_size", batch_size, minimum=1)
    checks.check_int(owner, "seed", seed)
    if len(x) != len(y) or not len(x):
        raise ValueError(
            f"{owner}: `x` and `y` must hold the same number (> 0) of "
            f"samples. Received len(x)={len(x)}, len(y)={len(y)}"
        )
    import tensorflow as tf

    x, y = tf.constant(x), tf.constant(y)
    return (
        tf.data.Dataset.range(len(x))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda i: (tf.gather(x, i), tf.gather(y, i)))
    )


def fit_arrays(x, y, batch_size, seed, validation_split=0.1):
    """`model.fit` keyword arguments for `(x, y)` arrays, reshuffled each epoch.

    `model.fit(**fit_arrays(x, y, 100, seed), epochs=20)` does what
    `model.fit(x, y, batch_size=100, validation_split=0.1, epochs=20)` means:
    the last `validation_split` of the samples validate, the rest come in a
    new order every epoch (`shuffled_batches`), the same orders for the same
    `seed`.

    Args:
        x: Array of inputs.
        y: Array of labels, as long as `x`.
        batch_size: Positive int.
        seed: Int. Seed of the sequence of orders.
        validation_split: Float in [0, 1). The last fraction of the samples
            held out as `validation_data` (none for `0.0`). Defaults to
            `0.1`.
    """
    checks.check_number(
        "datasets.fit_arrays",
        "validation_split",
        validation_split,
        minimum=0.0,
        maximum=1.0,
        max_inclusive=False,
    )
    split = int(np.floor(len(x) * (1.0 - validation_split)))
    kwargs = {
        "x": shuffled_batches(x[:split], y[:split], batch_size, seed),
        "shuffle": False,  # the dataset shuffles
    }
    if split < len(x):
        kwargs["validation_data"] = (x[split:], y[split:])
    return kwargs


TFDS_PREFIX = "tfds:"


def load(name, data_dir=DEFAULT_FASHION_MNIST_DIR):
    """Loads a dataset by name: `"digits"`, `"fashion_mnist"`, `"tfds:NAME"`.

    `"tfds:NAME"` is `load_tfds(NAME)` (e.g. `"tfds:mnist"`,
    `"tfds:cifar10"`), into arrays. `data_dir` is the Fashion-MNIST IDX
    folder, or tfds's data folder for `"tfds:"` names (the Fashion-MNIST
    default then means tfds's own default).
    """
    checks.check_type(
        "datasets.load",
        "name",
        name,
        str,
        "be a string ('digits', 'fashion_mnist' or 'tfds:NAME')",
    )
    if name == "digits":
        return load_digits()
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    if name.startswith(TFDS_PREFIX) and len(name) > len(TFDS_PREFIX):
        tfds_dir = None if data_dir == DEFAULT_FASHION_MNIST_DIR else data_dir
        return load_tfds(name[len(TFDS_PREFIX) :], data_dir=tfds_dir)
    raise ValueError(
        "datasets.load: `name` must be 'digits', 'fashion_mnist' or "
        f"'tfds:NAME' (a tensorflow-datasets name). Received: name={name!r}"
    )


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "datasets.load_tfds needs tensorflow-datasets, an optional "
            "extra: `pip install keras-serene[tfds]` (or `pip install "
            "tensorflow-datasets`)."
        ) from e
    return tfds


def _tfds_splits(tfds, name, data_dir):
    """(train split, test split): 'test', else 'validation', else 10%."""
    try:
        splits = set(tfds.builder(name, data_dir=data_dir).info.splits)
    except Exception as e:  # tfds raises DatasetNotFoundError and others
        raise ValueError(
            f"datasets.load_tfds: `name` must be a tensorflow-datasets "
            f"dataset ({e.__class__.__name__}: {str(e)[:200]}). "
            f"Received: name={name!r}"
        ) from None
    if not splits or {"train", "test"} <= splits:
        return "train", "test"
    if "train" in splits and "validation" in splits:
        return "train", "validation"
    if "train" in splits:
        return "train[:90%]", "train[90%:]"
    raise ValueError(
        f"datasets.load_tfds: dataset {name!r} has no 'train' split "
        f"(splits: {sorted(splits)})."
    )


def load_tfds(
    name,
    data_dir=None,
    as_dataset=False,
    batch_size=128,
    image_size=None,
    download=True,
):
    """Loads an image classification dataset of `tensorflow-datasets`.

    `tfds.load(name, split=[train, test], as_supervised=True)` with test
    the `"test"` split (else `"validation"`, else the last 10% of
    `"train"`); images are scaled to float32 in [0, 1] (uint8 divided by
    255), given a channel axis when they have none and, with `image_size`,
    resized; labels are int64.

    Example:

    ```python
    (x, y), (x_test, y_test) = ks.datasets.load_tfds("mnist")
    train, test = ks.datasets.load_tfds("cifar10", as_dataset=True)
    ```

    Args:
        name: String. A tfds name, e.g. `"mnist"`, `"cifar10"`,
            `"fashion_mnist"` (with a version if wanted, `"mnist:3.*.*"`).
        data_dir: String or `None`. tfds's data folder. Defaults to `None`
            (tfds's default, `~/tensorflow_datasets`).
        as_dataset: Bool. Return batched `tf.data.Dataset`s of
            `(image, label)` instead of NumPy arrays. Defaults to `False`.
        batch_size: Int. Batch size when `as_dataset`. Defaults to `128`.
        image_size: `(height, width)` or `None`. Resize every image (needed
            when a dataset's images differ in size). Defaults to `None`.
        download: Bool. Download and prepare when missing (tfds's
            `download=`). Defaults to `True`.

    Returns:
        `((x_train, y_train), (x_test, y_test))` arrays, or
        `(train_dataset, test_dataset)` when `as_dataset`.
    """
    owner = "datasets.load_tfds"
    checks.check_type(owner, "name", name, str, "be a tfds dataset name")
    checks.check_bool(owner, "as_dataset", as_dataset)
    checks.check_int(owner, "batch_size", batch_size, minimum=1)
    checks.check_bool(owner, "download", download)
    if image_size is not None and (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(d, int) and d > 0 for d in image_size)
    ):
        checks.fail(
            owner,
            "image_size",
            "be (height, width) of positive ints or None",
            image_size,
        )
    tfds = _tfds()
    import tensorflow as tf

    splits = _tfds_splits(tfds, name, data_dir)
    try:
        train, test = tfds.load(
            name,
            split=list(splits),
            as_supervised=True,
            data_dir=data_dir,
            download=download,
        )
    except ValueError as e:
        raise ValueError(
            f"datasets.load_tfds: dataset {name!r} has no (image, label) "
            f"supervised keys: {str(e)[:200]}"
        ) from None
    image_spec, label_spec = train.element_spec
    if image_spec.shape.rank not in (2, 3) or label_spec.shape.rank != 0:
        raise ValueError(
            f"datasets.load_tfds: dataset {name!r} is not image "
            "classification: it yields (image, label) of shapes "
            f"{image_spec.shape} and {label_spec.shape}; expected an image "
            "(height, width[, channels]) and a scalar label."
        )

    def normalise(image, label):
        image = tf.cast(image, tf.float32)
        if image_spec.dtype == tf.uint8:
            image = image / 255.0
        if image.shape.rank == 2:
            image = image[..., None]
        if image_size is not None:
            image = tf.image.resize(image, image_size)
        return image, tf.cast(label, tf.int64)

    train = train.map(normalise, num_parallel_calls=tf.data.AUTOTUNE)
    test = test.map(normalise, num_parallel_calls=tf.data.AUTOTUNE)
    if as_dataset:
        return (
            train.batch(batch_size).prefetch(tf.data.AUTOTUNE),
            test.batch(batch_size).prefetch(tf.data.AUTOTUNE),
        )
    return _to_arrays(train, name), _to_arrays(test, name)


def _to_arrays(dataset, name):
    images, labels = [], []
    for image, label in dataset.as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if not images:
        raise ValueError(f"datasets.load_tfds: dataset {name!r} is empty.")
    if len({image.shape for image in images}) > 1:
        raise ValueError(
            f"datasets.load_tfds: the images of {name!r} differ in size; "
            "pass `image_size=(height, width)` to resize them."
        )
    return np.stack(images).astype("float32"), np.asarray(labels, "int64")


def _as_images(x, y):
    x = np.asarray(x, dtype="float32")
    if x.max() > 1.0:
        x = x / 255.0
    if x.ndim == 3:
        x = x[..., None]
    return x, np.asarray(y, dtype="int64")
