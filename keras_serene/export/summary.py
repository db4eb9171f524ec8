"""`ks.summary`: per-layer parameters, sparsity and alive neurons.

The pruning analogue of `model.summary()` (larq's `larq.models.summary` is
the model for a domain summary). For each layer: parameters, nonzero
parameters, sparsity and, for layers holding neurons (the table in
`keras_serene.core.neurons`), alive neurons, i.e. those with a nonzero incoming
weight. Totals report the compression ratio `|theta| / |theta != 0|`
(LOBSTER, arXiv 2011.09905, Sec. 4) and the architecture before and after,
e.g. `784-300-100-10 -> 784-61-32-10` (SeReNe, arXiv 2102.03773, Table I).

Parameters are the learned weights. State that is not learned, BatchNorm's
moving mean and variance above all, is left out of the counts (a moving
variance is never zero and a fresh moving mean is all zeros, so counting
them would fake sparsity); the dict reports it per layer as `statistics`.
A variable is state when its layer is trainable and the variable is not, or
when it is named like a normalization statistic (`moving_mean`,
`moving_variance`, ...), which also covers frozen layers.
"""

import keras
import numpy as np

from keras_serene.core import checks
from keras_serene.core import neurons as neurons_lib

#: Variable names of normalization statistics (Keras BatchNormalization and
#: its renorm variant): never parameters, even in a frozen layer.
STATISTICS = (
    "moving_mean",
    "moving_variance",
    "moving_stddev",
    "renorm_mean",
    "renorm_stddev",
)


def summary(model, print_fn=None):
    """Prints a per-layer pruning table and returns the numbers as a dict.

    Example:

    ```python
    report = ks.summary(model)
    report["total"]["compression"]   # e.g. 12.3
    report["architecture"]           # "784-300-100-10 -> 784-61-32-10"
    ```

    Args:
        model: A built `keras.Model`.
        print_fn: Callable taking a string, or `False` to print nothing.
            Defaults to `print`.

    Returns:
        A dict with `layers` (one dict per layer with weights: `name`,
        `class`, `params`, `nonzero`, `sparsity`, `statistics` (the
        non-learned values left out, e.g. BN moving statistics), and `neurons`,
        `alive_neurons` for layers holding neurons), `total` (`params`,
        `nonzero`, `sparsity`, `compression`, `neurons`, `alive_neurons`)
        and `architecture` (widths before -> alive widths).
    """
    checks.check_type(
        "summary", "model", model, keras.Model, "be a keras.Model"
    )
    if not model.built:
        checks.fail(
            "summary",
            "model",
            "be built (call it on data first); it is not",
            model,
        )
    if (
        print_fn is not None
        and print_fn is not False
        and not callable(print_fn)
    ):
        checks.fail(
            "summary",
            "print_fn",
            "be a callable, None or False",
            print_fn,
            TypeError,
        )
    alive_by_layer = {
        id(layer): neurons_lib.alive_neurons(weights)
        for layer, weights in neurons_lib.neuron_layers(model)
    }
    rows = []
    for layer in neurons_lib.iter_layers(model):
        if not layer.weights:
            continue
        learned = [w for w in layer.weights if not _is_state(layer, w)]
        values = [keras.ops.convert_to_numpy(w) for w in learned]
        params = int(sum(v.size for v in values))
        nonzero = int(sum(np.count_nonzero(v) for v in values))
        row = {
            "name": layer.name,
            "class": type(layer).__name__,
            "params": params,
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / params if params else 0.0,
            "statistics": int(
                sum(
                    int(np.prod(w.shape))
                    for w in layer.weights
                    if _is_state(layer, w)
                )
            ),
        }
        alive = alive_by_layer.get(id(layer))
        if alive is not None:
            row["neurons"] = int(alive.size)
            row["alive_neurons"] = int(alive.sum())
        rows.append(row)
    params = sum(r["params"] for r in rows)
    nonzero = sum(r["nonzero"] for r in rows)
    neurons = sum(r.get("neurons", 0) for r in rows)
    alive = sum(r.get("alive_neurons", 0) for r in rows)
    widths = [r for r in rows if "neurons" in r]
    inputs = _input_width(model)
    before = "-".join([inputs] + [str(r["neurons"]) for r in widths])
    after = "-".join([inputs] + [str(r["alive_neurons"]) for r in widths])
    result = {
        "layers": rows,
        "total": {
            "params": params,
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / params if params else 0.0,
            "compression": params / nonzero if nonzero else float("inf"),
            "neurons": neurons,
            "alive_neurons": alive,
        },
        "architecture": f"{before} -> {after}",
    }
    if print_fn is not False:
        (print_fn or print)(format_summary(result, model.name))
    return result


def format_summary(result, title="model"):
    """Renders the dict returned by `summary` as a text table."""
    header = (
        f"{'layer':<24}{'class':<22}{'params':>10}{'nonzero':>10}"
        f"{'sparsity':>10}{'neurons':>14}"
    )
    lines = [f"keras_serene summary: {title}", header, "-" * len(header)]
    for r in result["layers"]:
        neurons = (
            f"{r['alive_neurons']}/{r['neurons']}" if "neurons" in r else ""
        )
        lines.append(
            f"{r['name'][:23]:<24}{r['class'][:21]:<22}{r['params']:>10,}"
            f"{r['nonzero']:>10,}{r['sparsity']:>10.1%}{neurons:>14}"
        )
    t = result["total"]
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<46}{t['params']:>10,}{t['nonzero']:>10,}"
        f"{t['sparsity']:>10.1%}{t['alive_neurons']:>7}/{t['neurons']:<6}"
    )
    lines.append(
        f"compression {t['compression']:.2f}x; architecture "
        f"{result['architecture']}"
    )
    return "\n".join(lines)


def _is_state(layer, variable):
    """True for a variable that is state, not a learned parameter."""
    name = variable.path.rsplit("/", 1)[-1]
    if name in STATISTICS:
        return True
    return layer.trainable and not variable.trainable


def _input_width(model):
    try:
        shape = model.inputs[0].shape
    except (AttributeError, IndexError, TypeError):
        return "?"
    dims = [d for d in shape[1:] if d is not None]
    return str(int(np.prod(dims))) if dims else "?"
