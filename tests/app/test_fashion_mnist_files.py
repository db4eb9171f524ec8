"""`load_fashion_mnist` reads the IDX files it is pointed at (no network)."""

import gzip
import os

import numpy as np
import pytest

from keras_serene.app import datasets


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_files(folder, n_train=6, n_test=4):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)),
        "y_train": rng.integers(0, 10, n_train),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)),
        "y_test": rng.integers(0, 10, n_test),
    }
    for key, stem in datasets._IDX_FILES.items():
        _write_idx(os.path.join(folder, stem + ".gz"), arrays[key])
    return arrays


def test_reads_gzipped_idx_files_as_unit_images(tmp_path):
    arrays = _fake_files(str(tmp_path))
    (x, y), (x_test, y_test) = datasets.load_fashion_mnist(
        str(tmp_path), allow_download=False
    )
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], arrays["x_train"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y, arrays["y_train"])
    assert x_test.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert datasets.fashion_mnist_available(str(tmp_path))


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k.*not found in data_dir="):
        datasets.load_fashion_mnist(str(tmp_path), allow_download=False)
    assert not datasets.fashion_mnist_available(str(tmp_path))


def test_none_means_the_default_folder():
    assert datasets.fashion_mnist_available(None) == (
        datasets.fashion_mnist_available()
    )
