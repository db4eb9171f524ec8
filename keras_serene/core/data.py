"""Batch iteration over `(x, y)` arrays or a batched dataset.

The measurements that run the model on held-out data outside `fit` (PSP
entropy, NEq's velocities) accept the same three forms as `model.fit`'s
`validation_data`:

- `(x, y)` arrays (a list/dict of arrays for a multi-input model), cut into
  batches of `batch_size`;
- a batched `tf.data.Dataset` yielding `(x, y)` or `(x, y, sample_weight)`;
- a `keras.utils.PyDataset` yielding the same.

`check_xy` validates them at construction, so a mistake (`(x[:100],
y[:90])`, an unbatched dataset) fails when the callback is built, not in the
middle of `fit`; `iterate_batches` yields `(x_batch, y_batch)`.
"""

import keras
import numpy as np

from keras_serene.core import checks


def is_dataset(x):
    """True for a `tf.data.Dataset` or a `keras.utils.PyDataset`."""
    if isinstance(x, keras.utils.PyDataset):
        return True
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - TF is a dependency
        return False
    return isinstance(x, tf.data.Dataset)


def check_xy(owner, arg, data, need_labels=True):
    """Validates `(x, y)` arrays or a dataset; returns `data` unchanged.

    Arrays: `x`'s leaves and `y` must have the same number of samples, and
    there must be at least one. A `tf.data.Dataset` must yield batched
    tuples (its `element_spec` is read; nothing is iterated).
    """
    if data is None:
        checks.fail(owner, arg, "be (x, y) arrays or a batched dataset", data)
    if is_dataset(data):
        _check_dataset_spec(owner, arg, data, need_labels)
        return data
    if not need_labels and not isinstance(data, tuple):
        leaves = keras.tree.flatten(data)
        if not leaves or not all(hasattr(a, "shape") for a in leaves):
            checks.fail(owner, arg, "be arrays or a batched dataset", data)
        checks.check_same_length(
            owner, arg, leaves, names=("the inputs",), shown=data
        )
        return data
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        checks.fail(
            owner,
            arg,
            "be a tuple (x, y) of arrays or a batched dataset yielding (x, y)",
            data,
        )
    x, y = data
    leaves = keras.tree.flatten(x)
    if not leaves or any(np.ndim(a) == 0 for a in leaves):
        checks.fail(owner, arg, "hold arrays of samples in x", data)
    if np.ndim(y) == 0:
        checks.fail(owner, arg, "hold one label per sample in y", data)
    n = checks.check_same_length(
        owner,
        arg,
        leaves + [y],
        names=("x",) * len(leaves) + ("y",),
        shown=data,
    )
    if n == 0:
        checks.fail(owner, arg, "hold at least one sample", data)
    return data


def _check_dataset_spec(owner, arg, dataset, need_labels):
    spec = getattr(dataset, "element_spec", None)
    if spec is None:  # PyDataset: checked batch by batch.
        return
    if need_labels and not (isinstance(spec, tuple) and len(spec) in (2, 3)):
        checks.fail(
            owner,
            arg,
            "yield (x, y) or (x, y, sample_weight) tuples (the dataset's "
            "element_spec is not a tuple of 2 or 3)",
            dataset,
        )
    label = spec[1] if need_labels else keras.tree.flatten(spec)[0]
    shape = getattr(label, "shape", None)
    if shape is not None and shape.rank == 0:
        checks.fail(
            owner,
            arg,
            "be batched (e.g. `dataset.batch(128)`): it yields one sample "
            "at a time",
            dataset,
        )


def check_inputs_match(owner, arg, model, x):
    """`x` (arrays or a dataset's inputs) fits `model.inputs`' shapes.

    Called once the model is known (a callback's `on_train_begin`, a
    metric's start), so a wrongly shaped input fails with its shape and the
    model's, not inside a side model Keras names for itself.
    """
    try:
        expected = [tuple(t.shape) for t in model.inputs]
    except (AttributeError, TypeError, ValueError):
        return  # A subclassed model: Keras checks on the first call.
    if is_dataset(x):
        _check_dataset_spec(owner, arg, x, need_labels=True)
        spec = getattr(x, "element_spec", None)
        if not isinstance(spec, tuple) or not spec:
            return
        got = [
            (None,) + tuple(s.shape[1:])
            for s in keras.tree.flatten(spec[0])
            if getattr(s, "shape", None) is not None
        ]
        leaves = None
    else:
        leaves = keras.tree.flatten(x)
        got = [tuple(np.shape(a)) for a in leaves]
    if len(got) != len(expected):
        checks.fail(
            owner,
            arg,
            f"hold {len(expected)} input array(s), one per model input of "
            f"model {model.name!r}",
            x,
        )
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        ok = len(want) == len(have) and all(
            w is None or h is None or int(w) == int(h)
            for w, h in zip(want[1:], have[1:], strict=True)
        )
        if not ok:
            shape = tuple("batch" if d is None else d for d in want)
            part = arg if len(got) == 1 else f"{arg} (input {i})"
            checks.fail(
                owner,
                part,
                f"have samples shaped {shape}, the input of model "
                f"{model.name!r}".replace("'batch'", "batch"),
                x if leaves is None else leaves[i],
            )


def iterate_batches(x, y, batch_size, caller):
    """Yields `(x_batch, y_batch)` from arrays or a batched dataset."""
    if is_dataset(x):
        if y is not None:
            checks.fail(
                caller, "y", "be None when `x` is a dataset yielding (x, y)", y
            )
        if isinstance(x, keras.utils.PyDataset):
            elements = (x[i] for i in range(len(x)))
        else:
            elements = iter(x)
        for element in elements:
            if not isinstance(element, (tuple, list)) or len(element) not in (
                2,
                3,
            ):
                checks.fail(
                    caller,
                    "x",
                    "yield (x, y) or (x, y, sample_weight) tuples",
                    element,
                )
            xb, yb = element[0], element[1]
            if np.ndim(yb) == 0:
                checks.fail(
                    caller,
                    "x",
                    "be batched (e.g. `dataset.batch(128)`): it yields one "
                    "sample at a time",
                    x,
                )
            yield xb, yb
        return
    if y is None:
        checks.fail(caller, "y", "hold the labels when `x` is an array", y)
    leaves = keras.tree.flatten(x)
    if not leaves:
        checks.fail(caller, "x", "hold at least one array", x)
    y = np.asarray(y)
    if y.ndim == 0:
        checks.fail(caller, "y", "hold one label per sample of `x`", y)
    n = checks.check_same_length(
        caller, "x, y", leaves + [y], names=("x",) * len(leaves) + ("y",)
    )
    for start in range(0, n, batch_size):
        window = slice(start, start + batch_size)
        yield (
            keras.tree.map_structure(lambda a, w=window: a[w], x),
            y[window],
        )
