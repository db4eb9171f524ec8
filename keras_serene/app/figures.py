"""Shared figure plumbing of `keras_serene.app.plots`: no pyplot, lazy import.

matplotlib is an optional extra (`pip install keras-serene[plots]`), imported
only when a figure is drawn; figures are `matplotlib.figure.Figure` objects
made without `pyplot`, so no global backend or figure state is touched.
"""

import importlib
import math

import numpy as np

INSTALL_HINT = "pip install keras-serene[plots]"


def matplotlib_module(module):
    """Imports `matplotlib.<module>`, naming the extra when it is missing."""
    try:
        return importlib.import_module(f"matplotlib.{module}")
    except ImportError as e:
        raise ImportError(
            "keras_serene.app.plots needs matplotlib, an optional extra: "
            f"`{INSTALL_HINT}` (or `pip install matplotlib`)."
        ) from e


def ticker():
    return matplotlib_module("ticker")


def grid(count, columns=3, size=(4.0, 3.0)):
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    fig = matplotlib_module("figure").Figure(
        figsize=(size[0] * columns, size[1] * rows), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    return fig, list(axes)


def finish(fig, axes, used, path, title):
    for ax in axes[used:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
