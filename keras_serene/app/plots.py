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
  compression, pruning_threshold, alive_neurons, removed_neurons,
  frozen_fraction, psp_entropy (`scheduled_sparsity` shares the sparsity panel,
  `scheduled_removed_neurons` the `removed_neurons` one).
  `baseline=` overlays a dense run's history (dashed) on the panels they
  share. Fractions (accuracy, sparsity, alive and removed neurons, frozen
  fraction, when in [0, 1]) are drawn on percent axes.
- `plot_accuracy_vs_compression(runs)` (in `keras_serene.app.tradeoff`,
  re-exported here): accuracy (percent) against the compression ratio, one
  point (or line, for a list of values) per run. One basis for every run:
  `compression = dense parameters / nonzero parameters` of the network as
  deployed (LOBSTER's `|theta| / |theta != 0|`,
  arXiv:2011.09905, with the dense network's `|theta|` as numerator), so a
  slimmed network sits where its pruned parent sits: slimming removes only
  zeros. `compression_ratios` computes it from `params`/`nonzero`. Points
  that coincide share one label ("pruned = slim"); close ones get stacked
  labels, so labels never overlap. The x axis is logarithmic when the
  ratios span more than a factor 10.
"""

import math
from collections.abc import Mapping

import numpy as np

from keras_serene.app.figures import INSTALL_HINT  # noqa: F401
from keras_serene.app.figures import finish as _finish
from keras_serene.app.figures import grid as _grid
from keras_serene.app.figures import ticker as _ticker
from keras_serene.app.tradeoff import compression_ratios  # noqa: F401
from keras_serene.app.tradeoff import label_clusters  # noqa: F401
from keras_serene.app.tradeoff import percent_axis
from keras_serene.app.tradeoff import plot_accuracy_vs_compression  # noqa: F401
from keras_serene.core import checks

KNOWN_GROUPS = (
    "accuracy",
    "loss",
    "sparsity",
    "compression",
    "pruning_threshold",
    "alive_neurons",
    "removed_neurons",
    "frozen_fraction",
    "psp_entropy",
)
#: Groups whose values are fractions: percent axes when within [0, 1].
FRACTION_GROUPS = (
    "accuracy",
    "sparsity",
    "alive_neurons",
    "removed_neurons",
    "frozen_fraction",
)
#: Keys drawn in another key's panel (the schedule beside what it reached).
PANEL_OF = {
    "scheduled_sparsity": "sparsity",
    "scheduled_removed_neurons": "removed_neurons",
}
#: Panel titles that say what the number is.
TITLES = {
    "sparsity": "sparsity (weights at zero)",
    "alive_neurons": "alive neurons",
    "removed_neurons": "removed neurons (structured)",
    "frozen_fraction": "frozen neurons",
}


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
    checks.check_int("plot_psp_entropy", "bins", bins, minimum=1)
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


def plot_history(history, keys=None, path=None, title=None, baseline=None):
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
        baseline: A dense run's history (same forms as `history`) or
            `None`. Drawn dashed, labelled `dense: <key>`, on the panels it
            shares with `history`. Defaults to `None`.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    series = history_series(history)
    base = {} if baseline is None else history_series(baseline)
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
        prefix = "pruned: " if base else ""
        for key in members:
            line = ":" if key.startswith("scheduled_") else "-"
            _plot_series(ax, series[key], line, prefix + key)
        shared = [k for k in sorted(base, key=_member_order) if k in members]
        for key in shared:
            _plot_series(ax, base[key], "--", "dense: " + key, alpha=0.8)
        ax.set_title(TITLES.get(group, group), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(_ticker().MaxNLocator(integer=True))
        if group == "pruning_threshold" and _spans_decades(series, members):
            ax.set_yscale("log")
        values = np.concatenate(
            [series[k] for k in members] + [base[k] for k in shared]
        )
        values = values[np.isfinite(values)]
        if group in FRACTION_GROUPS and values.min() >= 0 and values.max() <= 1:
            if group != "accuracy":
                ax.set_ylim(-0.03, 1.03)  # 0-100%: a flat 100% reads so
                values = np.array([0.0, 1.0])
            percent_axis(ax.yaxis, values)
        if len(members) + len(shared) > 1:
            ax.legend(fontsize=7)
    return _finish(fig, axes, len(groups), path, title)


def _plot_series(ax, values, line, label, alpha=1.0):
    epochs = np.arange(1, len(values) + 1)
    finite = np.isfinite(values)
    style = "o" + line if finite.sum() < 2 or not finite.all() else line
    ax.plot(
        epochs[finite],
        values[finite],
        style,
        markersize=3,
        label=label,
        alpha=alpha,
    )


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
    key = key.split("/", 1)[0]
    return PANEL_OF.get(key, key)


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
