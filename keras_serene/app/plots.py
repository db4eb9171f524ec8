"""Figures for pruning runs: PSP-entropy, training curves, accuracy/compression.

matplotlib is an optional extra (`pip install keras-serene[plots]`), imported
only when a figure is drawn. The figures are `matplotlib.figure.Figure`
objects made without `pyplot`, so no global backend or figure state is
touched; pass `path=` to save a PNG, or call `fig.savefig` yourself.

- `plot_psp_entropy(result)`: one histogram of the neuron PSP-entropies
  `H_i` per layer, with the layer mean marked (several runs overlaid when
  given a dict of results). PSP-entropy: Tartaglione, Bragagnolo, Grangetto,
  ICANN 2020, arXiv:2004.14765 (H_i = sum_k H_ik).
- `plot_history(history)`: every per-epoch series of a `History` (or its
  `.history` dict) against the epoch, grouped into panels: `val_x` goes with
  `x`, `a/b` with `a` (so `psp_entropy/conv1` and `psp_entropy/fc1` share a
  panel). Known keys come first, in this order: accuracy, loss, sparsity,
  compression, pruning_threshold, alive_neurons, frozen_fraction,
  psp_entropy.
- `plot_accuracy_vs_compression(runs)`: accuracy against compression ratio
  `|theta| / |theta != 0|` (LOBSTER, arXiv:2011.09905), one point
  (or line, for a list of values) per run; the x axis is logarithmic when
  the ratios span more than a factor 10.
"""

import importlib
import math
from collections.abc import Mapping

import numpy as np

INSTALL_HINT = "pip install keras-serene[plots]"
KNOWN_GROUPS = (
    "accuracy",
    "loss",
    "sparsity",
    "compression",
    "pruning_threshold",
    "alive_neurons",
    "frozen_fraction",
    "psp_entropy",
)


def plot_psp_entropy(result, bins=30, path=None, title=None):
    """Histograms of the per-neuron PSP-entropy, one panel per layer.

    Example:

    ```python
    from keras_serene.app import plots

    result = ks.metrics.psp_entropy(model, x_test, y_test)
    plots.plot_psp_entropy(result, path="psp.png")
    plots.plot_psp_entropy({"LOBSTER": r1, "one-shot": r2})  # overlay
    ```

    Args:
        result: The dict `psp_entropy` returns (layer name -> dict with an
            `"entropy"` array), or layer name -> array of `H_i`; or a dict
            run label -> such a dict, to overlay several runs.
        bins: Int. Histogram bins per panel. Defaults to `30`.
        path: String or `None`. Where to save a PNG. Defaults to `None`.
        title: String or `None`. Figure title. Defaults to `None`.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    runs = _psp_runs(result)
    layer_names = []
    for layers in runs.values():
        layer_names += [n for n in layers if n not in layer_names]
    fig, axes = _grid(len(layer_names))
    for ax, name in zip(axes, layer_names, strict=False):
        values = [v[name] for v in runs.values() if name in v]
        edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
        means = []
        for label, layers in runs.items():
            if name not in layers:
                continue
            h = layers[name]
            _, _, patches = ax.hist(
                h,
                bins=edges,
                alpha=0.6 if len(runs) > 1 else 0.9,
                label=label,
            )
            means.append(f"{h.mean():.3f}")
            color = "black" if len(runs) == 1 else patches[0].get_facecolor()
            ax.axvline(h.mean(), color=color, linestyle="--", linewidth=1.5)
        ax.set_title(f"{name} (mean H = {' / '.join(means)} bits)", fontsize=9)
        ax.set_xlabel("PSP-entropy H_i (bits)")
        ax.set_ylabel("neurons")
        if len(runs) > 1:
            ax.legend(fontsize=8)
    return _finish(fig, axes, len(layer_names), path, title)


def plot_history(history, keys=None, path=None, title=None):
    """Per-epoch training logs against the epoch, one panel per quantity.

    Example:

    ```python
    from keras_serene.app import plots

    history = model.fit(..., callbacks=[ks.callbacks.SensitivityPruning()])
    plots.plot_history(history, path="history.png")
    plots.plot_history(history, keys=["sparsity", "accuracy"])
    ```

    Args:
        history: A `keras.callbacks.History`, its `.history` dict (key ->
            per-epoch list; `None` entries are gaps), or a dict with such a
            dict under `"history"` (a JSON report).
        keys: List of keys or panel names (`"accuracy"` selects
            `accuracy` and `val_accuracy`, `"psp_entropy"` every
            `psp_entropy/<layer>`), or `None` for every numeric series.
            Defaults to `None`.
        path: String or `None`. Where to save a PNG. Defaults to `None`.
        title: String or `None`. Figure title. Defaults to `None`.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    series = history_series(history)
    if keys is not None:
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)):
            raise TypeError(
                "plot_history: `keys` must be a list of keys or None. "
                f"Received: keys={keys!r}"
            )
        unknown = [
            k for k in keys if k not in series and k not in _groups(series)
        ]
        if unknown:
            raise ValueError(
                f"plot_history: no series for keys {unknown}. Available: "
                f"keys {sorted(series)}, panels {sorted(_groups(series))}."
            )
        series = {
            k: v for k, v in series.items() if k in keys or _group_of(k) in keys
        }
    if not series:
        raise ValueError(
            "plot_history: the history holds no numeric per-epoch series."
        )
    groups = _groups(series)
    fig, axes = _grid(len(groups))
    for ax, (group, members) in zip(axes, groups.items(), strict=False):
        for key in members:
            values = series[key]
            epochs = np.arange(1, len(values) + 1)
            finite = np.isfinite(values)
            style = "o-" if finite.sum() < 2 or not finite.all() else "-"
            ax.plot(
                epochs[finite], values[finite], style, markersize=3, label=key
            )
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_ticker().MaxNLocator(integer=True))
        if group == "pruning_threshold" and _spans_decades(series, members):
            ax.set_yscale("log")
        if len(members) > 1:
            ax.legend(fontsize=7)
    return _finish(fig, axes, len(groups), path, title)


def plot_accuracy_vs_compression(runs, path=None, title=None):
    """Accuracy against compression ratio, one marker or line per run.

    Example:

    ```python
    from keras_serene.app import plots

    plots.plot_accuracy_vs_compression([
        {"name": "LOBSTER", "accuracy": 0.91, "compression": 12.5},
        {"name": "one-shot", "accuracy": 0.88, "compression": 12.5},
    ], path="tradeoff.png")
    ```

    Args:
        runs: List of dicts with `"name"` (string), `"accuracy"` and
            `"compression"` (numbers, or equal-length lists for a
            trajectory). Compression is `|theta| / |theta != 0|` (>= 1).
        path: String or `None`. Where to save a PNG. Defaults to `None`.
        title: String or `None`. Figure title. Defaults to `None`.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    if not isinstance(runs, (list, tuple)) or not runs:
        raise ValueError(
            "plot_accuracy_vs_compression: `runs` must be a non-empty list "
            f"of dicts. Received: {runs!r}"
        )
    points = []
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping) or not {
            "accuracy",
            "compression",
        } <= set(run):
            raise ValueError(
                "plot_accuracy_vs_compression: run "
                f"{i} must be a dict with 'accuracy' and 'compression'. "
                f"Received: {run!r}"
            )
        acc = np.atleast_1d(np.asarray(run["accuracy"], dtype=float))
        comp = np.atleast_1d(np.asarray(run["compression"], dtype=float))
        if acc.shape != comp.shape or not np.all(np.isfinite(comp)):
            raise ValueError(
                "plot_accuracy_vs_compression: run "
                f"{run.get('name', i)!r} needs finite compression values and "
                "as many accuracies as compressions. Received "
                f"accuracy={run['accuracy']!r}, "
                f"compression={run['compression']!r}"
            )
        points.append((str(run.get("name", f"run {i}")), comp, acc))
    fig, axes = _grid(1, columns=1, size=(6.0, 4.0))
    ax = axes[0]
    for name, comp, acc in points:
        ax.plot(comp, acc, "o-" if len(comp) > 1 else "o", label=name)
        if len(comp) == 1:
            ax.annotate(
                name,
                (comp[0], acc[0]),
                fontsize=8,
                textcoords="offset points",
                xytext=(4, 4),
            )
    all_comp = np.concatenate([comp for _, comp, _ in points])
    if all_comp.min() > 0 and all_comp.max() > 10 * all_comp.min():
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_ticker().FormatStrFormatter("%g"))
    ax.set_xlabel("compression ratio |θ| / |θ ≠ 0|")
    ax.set_ylabel("accuracy")
    ax.margins(x=0.15, y=0.08)  # room for the point labels
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, axes, 1, path, title)


def history_series(history):
    """Numeric per-epoch series of a History / dict as float arrays."""
    if hasattr(history, "history") and isinstance(history.history, Mapping):
        history = history.history
    if isinstance(history, Mapping) and isinstance(
        history.get("history"), Mapping
    ):
        history = history["history"]
    if not isinstance(history, Mapping):
        raise TypeError(
            "plot_history: `history` must be a keras History, its `.history` "
            f"dict or a report dict. Received: {type(history).__name__}"
        )
    series = {}
    for key, values in history.items():
        if isinstance(values, (str, bytes)) or not isinstance(
            values, (list, tuple, np.ndarray)
        ):
            continue
        try:
            array = np.array(
                [math.nan if v is None else v for v in values], dtype=float
            )
        except (TypeError, ValueError):
            continue
        if array.ndim == 1 and array.size and np.isfinite(array).any():
            series[str(key)] = array
    return series


def _group_of(key):
    key = key[4:] if key.startswith("val_") else key
    return key.split("/", 1)[0]


def _groups(series):
    groups = {}
    for key in series:
        groups.setdefault(_group_of(key), []).append(key)
    known = [g for g in KNOWN_GROUPS if g in groups]
    others = sorted(g for g in groups if g not in KNOWN_GROUPS)
    return {g: sorted(groups[g], key=_member_order) for g in known + others}


def _member_order(key):
    return (key.startswith("val_"), key)


def _spans_decades(series, members):
    values = np.concatenate([series[k] for k in members])
    values = values[np.isfinite(values)]
    return (
        values.size > 1
        and values.min() > 0
        and values.max() > 100 * values.min()
    )


def _psp_runs(result):
    """Normalises to {run label or None: {layer: 1-D float array}}."""
    if not isinstance(result, Mapping) or not result:
        raise ValueError(
            "plot_psp_entropy: `result` must be a non-empty dict (the output "
            f"of psp_entropy). Received: {result!r}"
        )
    first = next(iter(result.values()))
    if isinstance(first, Mapping) and "entropy" not in first:
        runs = {str(label): _psp_layers(r) for label, r in result.items()}
    else:
        runs = {None: _psp_layers(result)}
    return runs


def _psp_layers(result):
    if not isinstance(result, Mapping) or not result:
        raise ValueError(
            "plot_psp_entropy: each result must be a non-empty dict of "
            f"layers. Received: {result!r}"
        )
    layers = {}
    for name, value in result.items():
        if isinstance(value, Mapping):
            if "entropy" not in value:
                raise ValueError(
                    f"plot_psp_entropy: layer {name!r} has no 'entropy' "
                    f"entry. Received keys: {sorted(value)}"
                )
            value = value["entropy"]
        h = np.asarray(value, dtype=float).ravel()
        h = h[np.isfinite(h)]
        if not h.size:
            raise ValueError(
                f"plot_psp_entropy: layer {name!r} has no finite entropy."
            )
        layers[str(name)] = h
    return layers


def _matplotlib(module):
    """Imports `matplotlib.<module>`, naming the extra when it is missing."""
    try:
        return importlib.import_module(f"matplotlib.{module}")
    except ImportError as e:
        raise ImportError(
            "keras_serene.app.plots needs matplotlib, an optional extra: "
            f"`{INSTALL_HINT}` (or `pip install matplotlib`)."
        ) from e


def _ticker():
    return _matplotlib("ticker")


def _grid(count, columns=3, size=(4.0, 3.0)):
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    fig = _matplotlib("figure").Figure(
        figsize=(size[0] * columns, size[1] * rows), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    return fig, list(axes)


def _finish(fig, axes, used, path, title):
    for ax in axes[used:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
