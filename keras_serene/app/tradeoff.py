"""Accuracy against compression, on one basis, with labels that never overlap.

`plot_accuracy_vs_compression(runs)` (public as
`keras_serene.app.plots.plot_accuracy_vs_compression`) draws accuracy
(percent) against the compression ratio. One basis for every run:

    compression = dense parameters / nonzero parameters (as deployed)

LOBSTER's `|theta| / |theta != 0|` (Tartaglione et al., Neural Networks 2022,
arXiv:2011.09905) with the dense network's `|theta|` as numerator for every
run, so a slimmed network sits where its pruned parent sits: slimming removes
only zeros. (Dividing each network by its own total put the same network at
4.86x slim and 7.48x pruned.) `compression_ratios` computes it from the runs'
`params`/`nonzero`; `label_clusters` merges the labels of points that
coincide (`"pruned = slim"`) and stacks those of close points.
"""

import math
from collections.abc import Mapping

import numpy as np

from keras_serene.app.figures import finish as _finish
from keras_serene.app.figures import grid as _grid
from keras_serene.app.figures import ticker as _ticker

COMPRESSION_LABEL = "compression = dense params / nonzero params (deployed)"


def compression_ratios(runs, reference_params=None):
    """Compression of each run on one basis: dense params / nonzero params.

    Args:
        runs: List of dicts with `"nonzero"` (and `"params"`), e.g. the
            demo's runs or `ks.summary(...)["total"]` with a `"name"`.
        reference_params: Int or `None`. The dense network's parameter
            count. Defaults to `None`: the `params` of the run named
            `"dense"`, else the largest `params`.

    Returns:
        List of floats, one per run (`inf` for a run with no nonzero).
    """
    if reference_params is None:
        dense = [r for r in runs if r.get("name") == "dense" and "params" in r]
        reference_params = (
            dense[0]["params"]
            if dense
            else max(r.get("params", 0) for r in runs)
        )
    if not reference_params or reference_params <= 0:
        raise ValueError(
            "compression_ratios: `reference_params` must be a positive "
            "count (give the runs `params`, or a run named 'dense'). "
            f"Received: reference_params={reference_params!r}"
        )
    return [
        reference_params / r["nonzero"] if r["nonzero"] else math.inf
        for r in runs
    ]


def plot_accuracy_vs_compression(runs, path=None, title=None):
    """Accuracy against compression ratio, one marker or line per run.

    Compression is `dense params / nonzero params` of each network as
    deployed (see `compression_ratios`; the report computes it so). Points
    that coincide get one label (`"pruned = slim"`), close ones stacked
    labels.

    Example:

    ```python
    from keras_serene.app import plots

    plots.plot_accuracy_vs_compression([
        {"name": "LOBSTER", "accuracy": 0.91, "compression": 12.5},
        {"name": "one-shot", "accuracy": 0.88, "compression": 12.5},
    ], path="tradeoff.png")
    ```

    Args:
        runs: List of dicts with `"name"` (string), `"accuracy"` (fraction)
            and `"compression"` (numbers, or equal-length lists for a
            trajectory), compression >= 1 on the basis above.
        path: String or `None`. Where to save a PNG. Defaults to `None`.
        title: String or `None`. Figure title. Defaults to `None`.

    Returns:
        The `matplotlib.figure.Figure`.
    """
    points = _tradeoff_points(runs)
    fig, axes = _grid(1, columns=1, size=(6.4, 4.2))
    ax = axes[0]
    for i, (name, comp, acc) in enumerate(points):
        # Later runs drawn smaller on top: coinciding points stay visible.
        size = max(4.0, 10.0 - 2.0 * i)
        style = "o-" if len(comp) > 1 else "o"
        ax.plot(comp, acc, style, markersize=size, label=name, zorder=2 + i)
    all_comp = np.concatenate([comp for _, comp, _ in points])
    all_acc = np.concatenate([acc for _, _, acc in points])
    log_x = all_comp.min() > 0 and all_comp.max() > 10 * all_comp.min()
    if log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(
            _ticker().LogLocator(base=10, subs=(1.0, 2.0, 5.0))
        )
    ax.xaxis.set_major_formatter(_ticker().FormatStrFormatter("%gx"))
    singles = [(n, c[0], a[0]) for n, c, a in points if len(c) == 1]
    middle = _middle(all_comp, log_x)
    for text, x, y in label_clusters(singles, log_x):
        right = x > middle  # Labels point inwards, never off the axes.
        ax.annotate(
            text,
            (x, y),
            fontsize=8,
            textcoords="offset points",
            xytext=(-7 if right else 7, 5),
            ha="right" if right else "left",
            va="bottom",
        )
    ax.set_xlabel(COMPRESSION_LABEL)
    ax.set_ylabel("test accuracy")
    percent_axis(ax.yaxis, all_acc)
    ax.margins(x=0.15, y=0.2)  # room for the point labels
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _finish(fig, axes, 1, path, title)


def percent_axis(axis, values):
    """Percent ticks on `axis` (a matplotlib x/y axis) for fractions.

    Ticks fall on 1, 2 or 5 times a power of ten (of percent), and get as
    many decimals as that step needs, so no label is rounded.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    span = float(np.ptp(values)) if values.size else 1.0
    decimals = 0 if span >= 0.05 else 1 if span >= 0.005 else 2
    ticker = _ticker()
    axis.set_major_locator(ticker.MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
    axis.set_major_formatter(ticker.PercentFormatter(xmax=1, decimals=decimals))


def _middle(values, log_x):
    low, high = float(np.min(values)), float(np.max(values))
    if log_x:
        return math.sqrt(low * high)
    return (low + high) / 2


def label_clusters(points, log_x=False, near=0.04):
    """Merges the labels of points that coincide or nearly do.

    `points` is a list of `(name, x, y)`. Points equal to within 1e-9
    (relative) share a label `"a = b"`; points closer than `near` (a
    fraction of the axis span, `x` in log10 when `log_x`) are stacked
    into one multi-line label, so no two labels overlap. Returns a list of
    `(text, x, y)`, placed at the highest point of each cluster.
    """
    if not points:
        return []
    xs = np.array([p[1] for p in points], dtype=float)
    ys = np.array([p[2] for p in points], dtype=float)
    sx = np.log10(np.maximum(xs, 1e-12)) if log_x else xs
    span_x = max(np.ptp(sx), 1e-12)
    span_y = max(np.ptp(ys), 1e-12)
    clusters = []  # lists of indices
    for i in range(len(points)):
        for cluster in clusters:
            j = cluster[0]
            if (
                abs(sx[i] - sx[j]) / span_x < near
                and abs(ys[i] - ys[j]) / span_y < near
            ):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    labels = []
    for cluster in clusters:
        lines = []  # one line per group of identical points
        for i in cluster:
            for line in lines:
                k = line[0]
                if np.isclose(xs[i], xs[k], rtol=1e-9, atol=0) and np.isclose(
                    ys[i], ys[k], rtol=1e-9, atol=0
                ):
                    line.append(i)
                    break
            else:
                lines.append([i])
        text = "\n".join(
            " = ".join(points[i][0] for i in line) for line in lines
        )
        top = max(cluster, key=lambda i: ys[i])
        labels.append((text, xs[top], ys[top]))
    return labels


def _tradeoff_points(runs):
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
    return points
