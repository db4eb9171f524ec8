"""NEq's probe subset: the fixed inputs whose outputs are compared each epoch.

NEq measures each neuron on a small validation subset Xi, the same samples in
the same order every epoch (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022,
arXiv 2207.09455, Sec. 3: "a subset of the validation set"; the authors' code,
`EIDOSLAB/NEq` `src/train_classification.py`, draws 1% of the training set
once). `subset_inputs` turns `validation_data` (arrays, an `(x, y)` tuple or a
batched dataset, read once) into that fixed set of NumPy inputs, drawn once
with a seed and kept in data order. Hold it out of the training data, as the
authors do, so the probe sees samples the step never fits.
"""

import keras
import numpy as np

from keras_serene.core.data import check_xy
from keras_serene.core.data import is_dataset

CALLER = "EquilibriumFreezing"


def _inputs_of(data):
    """The inputs of `validation_data` as NumPy arrays (a dataset is read)."""
    if data is None:
        raise ValueError(
            f"{CALLER}: `validation_data` is required (inputs, an (x, y) "
            "tuple or a batched dataset). Received validation_data=None"
        )
    if is_dataset(data):
        if isinstance(data, keras.utils.PyDataset):
            elements = (data[i] for i in range(len(data)))
        else:
            elements = iter(data)
        batches = []
        for element in elements:
            if isinstance(element, tuple):
                element = element[0]
            batches.append(keras.tree.map_structure(np.asarray, element))
        if not batches:
            raise ValueError(
                f"{CALLER}: the validation subset is empty: "
                "`validation_data` yielded no batch."
            )
        return keras.tree.map_structure(
            lambda *parts: np.concatenate(parts, axis=0), *batches
        )
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError(
                f"{CALLER}: a tuple `validation_data` must be (x, y) or "
                f"(x, y, sample_weight). Received a tuple of length "
                f"{len(data)}"
            )
        check_xy(CALLER, "validation_data", tuple(data[:2]))
        data = data[0]
    return keras.tree.map_structure(np.asarray, data)


def num_samples(x):
    leaves = keras.tree.flatten(x)
    if not leaves or any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError(
            f"{CALLER}: `validation_data` must hold arrays with a sample "
            f"axis. Received {type(x).__name__}"
        )
    lengths = {len(leaf) for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(
            f"{CALLER}: the inputs in `validation_data` have different "
            f"numbers of samples: {sorted(lengths)}"
        )
    return lengths.pop()


def _subset_size(subset, n):
    if subset is None:
        k = n
    elif isinstance(subset, bool) or not isinstance(
        subset, (int, float, np.integer, np.floating)
    ):
        raise TypeError(
            f"{CALLER}: `subset` must be None, an int >= 1 or a float in "
            f"(0, 1]. Received subset={subset!r}"
        )
    elif isinstance(subset, (int, np.integer)):
        if subset < 1 or subset > n:
            raise ValueError(
                f"{CALLER}: an int `subset` must be in [1, {n}] (the "
                f"samples in `validation_data`). Received subset={subset}"
            )
        k = int(subset)
    else:
        if not 0.0 < subset <= 1.0:
            raise ValueError(
                f"{CALLER}: a float `subset` must be in (0, 1]. Received "
                f"subset={subset}"
            )
        k = int(np.floor(subset * n))
    if k == 0:
        raise ValueError(
            f"{CALLER}: the validation subset is empty: subset={subset!r} "
            f"of {n} samples leaves none. Pass more data or a larger subset."
        )
    return k


def subset_inputs(data, subset, seed):
    """The fixed subset of inputs: drawn once with `seed`, in data order."""
    x = _inputs_of(data)
    n = num_samples(x)
    k = _subset_size(subset, n)
    if k < n:
        rng = np.random.default_rng(int(seed))
        index = np.sort(rng.choice(n, size=k, replace=False))
        x = keras.tree.map_structure(lambda a: a[index], x)
    return x
