"""Tests for keras_serene.app.plots: figures are drawn, saved and readable."""

import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="plots need the matplotlib extra")

import keras  # noqa: E402
import matplotlib.image  # noqa: E402

from keras_serene.app import plots  # noqa: E402

PSP_RESULT = {
    "conv1": {"entropy": np.array([0.1, 0.5, 0.5, 1.9]), "mean": 0.75},
    "fc1": {"entropy": np.array([2.0, 3.0, 4.0])},
}
HISTORY = {
    "loss": [2.0, 1.0, 0.5],
    "val_loss": [2.1, 1.2, 0.7],
    "accuracy": [0.3, 0.6, 0.8],
    "val_accuracy": [0.3, 0.55, None],
    "sparsity": [0.0, 0.5, 0.9],
    "pruning_threshold": [1e-5, 1e-3, 1e-2],
    "psp_entropy/conv1": [1.0, float("nan"), 1.2],
    "psp_entropy/fc1": [2.0, float("nan"), 2.5],
    "learning_rate": [0.1, 0.1, 0.01],
    "note": "not a series",
}


def _assert_png(path):
    assert path.exists() and path.stat().st_size > 0
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    # Not a blank canvas: some pixels differ from the background.
    assert np.ptp(image[..., :3]) > 0


def _titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_visible()]


def test_psp_entropy_histograms(tmp_path):
    path = tmp_path / "psp.png"
    fig = plots.plot_psp_entropy(PSP_RESULT, bins=4, path=str(path))
    _assert_png(path)
    assert _titles(fig) == [
        "conv1 (mean H = 0.750 bits)",
        "fc1 (mean H = 3.000 bits)",
    ]
    # 4 bins over [0.1, 1.9], width 0.45: {0.1, 0.5, 0.5}, {}, {}, {1.9}.
    counts = [p.get_height() for p in fig.axes[0].patches]
    assert counts == [3, 0, 0, 1]


def test_psp_entropy_overlay_of_runs_and_plain_arrays(tmp_path):
    path = tmp_path / "overlay.png"
    runs = {"gradual": PSP_RESULT, "one-shot": {"conv1": [0.2, 0.3]}}
    fig = plots.plot_psp_entropy(runs, path=str(path))
    _assert_png(path)
    assert _titles(fig)[0] == "conv1 (mean H = 0.750 / 0.250 bits)"
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["gradual", "one-shot"]


def test_history_panels_from_dict_and_history_object(tmp_path):
    path = tmp_path / "history.png"
    fig = plots.plot_history(HISTORY, path=str(path))
    _assert_png(path)
    assert _titles(fig) == [
        "accuracy",
        "loss",
        "sparsity (weights at zero)",
        "pruning_threshold",
        "psp_entropy",
        "learning_rate",
    ]
    psp_axis = fig.axes[4]
    assert [line.get_label() for line in psp_axis.get_lines()] == [
        "psp_entropy/conv1",
        "psp_entropy/fc1",
    ]
    # NaN epochs are left out: two points at epochs 1 and 3.
    np.testing.assert_array_equal(psp_axis.get_lines()[0].get_xdata(), [1, 3])
    assert fig.axes[3].get_yscale() == "log"

    history = keras.callbacks.History()
    history.history = {"loss": [1.0, 0.5]}
    assert _titles(plots.plot_history(history)) == ["loss"]
    report = {"history": HISTORY}
    fig = plots.plot_history(report, keys=["accuracy", "sparsity"])
    assert _titles(fig) == ["accuracy", "sparsity (weights at zero)"]


def test_history_errors():
    with pytest.raises(ValueError, match=r"no series for keys \['frozen"):
        plots.plot_history(HISTORY, keys=["frozen_fraction"])
    with pytest.raises(ValueError, match="no numeric per-epoch series"):
        plots.plot_history({"note": "x"})
    with pytest.raises(TypeError, match="keras History"):
        plots.plot_history([1, 2])


def test_accuracy_vs_compression(tmp_path):
    path = tmp_path / "tradeoff.png"
    runs = [
        {"name": "LOBSTER", "accuracy": 0.91, "compression": 12.5},
        {"name": "one-shot", "accuracy": 0.88, "compression": 12.5},
        {
            "name": "trajectory",
            "accuracy": [0.9, 0.8],
            "compression": [2.0, 50.0],
        },
    ]
    fig = plots.plot_accuracy_vs_compression(runs, path=str(path))
    _assert_png(path)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == [
        "LOBSTER",
        "one-shot",
        "trajectory",
    ]
    # Ratios within a factor 10: linear axis.
    narrow = plots.plot_accuracy_vs_compression(runs[:2])
    assert narrow.axes[0].get_xscale() == "linear"
    with pytest.raises(ValueError, match="run 0 must be a dict"):
        plots.plot_accuracy_vs_compression([{"name": "x", "accuracy": 1}])
    with pytest.raises(ValueError, match="non-empty list"):
        plots.plot_accuracy_vs_compression([])


def test_history_with_dense_baseline_and_percent_axes(tmp_path):
    path = tmp_path / "history.png"
    pruned = {
        "accuracy": [0.5, 0.8],
        "val_accuracy": [0.4, 0.7],
        "sparsity": [0.0, 0.9],
        "scheduled_sparsity": [0.1, 0.9],
        "alive_neurons": [1.0, 1.0],
        "loss": [1.0, 0.5],
    }
    dense = {
        "accuracy": [0.6, 0.9],
        "val_accuracy": [0.5, 0.8],
        "loss": [1, 0.4],
    }
    fig = plots.plot_history(pruned, path=str(path), baseline=dense)
    _assert_png(path)
    accuracy, loss, sparsity, alive = fig.axes[:4]
    assert [line.get_label() for line in accuracy.get_lines()] == [
        "pruned: accuracy",
        "pruned: val_accuracy",
        "dense: accuracy",
        "dense: val_accuracy",
    ]
    assert [line.get_linestyle() for line in accuracy.get_lines()] == [
        "-",
        "-",
        "--",
        "--",
    ]
    np.testing.assert_array_equal(
        accuracy.get_lines()[2].get_ydata(), [0.6, 0.9]
    )
    # The schedule shares the sparsity panel; the dense run has no sparsity.
    assert [line.get_label() for line in sparsity.get_lines()] == [
        "pruned: scheduled_sparsity",
        "pruned: sparsity",
    ]
    # Fractions on percent axes; a flat 100% alive is drawn on 0-100%.
    formatter = sparsity.yaxis.get_major_formatter()
    assert formatter.__class__.__name__ == "PercentFormatter"
    assert formatter(0.9, 0) == "90%"
    assert alive.get_ylim()[0] < 0.0 and alive.get_ylim()[1] > 1.0
    assert alive.get_title() == "alive neurons"
    fmt = loss.yaxis.get_major_formatter()
    assert fmt.__class__.__name__ != "PercentFormatter"


def test_label_clusters_merge_coinciding_and_stack_close_points():
    points = [
        ("dense", 1.0, 0.97),
        ("pruned", 2.6, 0.969),
        ("slim", 2.6, 0.969),
        ("other", 2.61, 0.9692),  # close but not equal: stacked
        ("far", 1.8, 0.95),
    ]
    labels = plots.label_clusters(points)
    texts = [text for text, _, _ in labels]
    assert texts == ["dense", "pruned = slim\nother", "far"]
    # Placed at the highest point of its cluster.
    assert labels[1][1:] == (2.61, 0.9692)


def test_coinciding_points_get_one_label(tmp_path):
    runs = [
        {"name": "dense", "accuracy": 0.9665, "compression": 1.0},
        {"name": "pruned", "accuracy": 0.9693, "compression": 2.6},
        {"name": "slim", "accuracy": 0.9693, "compression": 2.6},
    ]
    fig = plots.plot_accuracy_vs_compression(runs, path=str(tmp_path / "a.png"))
    ax = fig.axes[0]
    texts = sorted(child.get_text() for child in ax.texts)
    assert texts == ["dense", "pruned = slim"]
    assert ax.get_xlabel().startswith("compression = dense params / nonzero")
    assert ax.yaxis.get_major_formatter()(0.97, 0).startswith("97")
    assert ax.yaxis.get_major_formatter()(0.97, 0).endswith("%")


def test_compression_ratios_one_basis():
    # Same nonzero count: same compression, whatever each network's size.
    runs = [
        {"name": "dense", "params": 1000, "nonzero": 1000},
        {"name": "pruned", "params": 1000, "nonzero": 125},
        {"name": "slim", "params": 400, "nonzero": 125},
    ]
    assert plots.compression_ratios(runs) == [1.0, 8.0, 8.0]
    assert plots.compression_ratios(runs, reference_params=500) == [
        0.5,
        4.0,
        4.0,
    ]
    with pytest.raises(ValueError, match="reference_params=0"):
        plots.compression_ratios([{"name": "a", "nonzero": 3}])


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.ticker", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"keras-serene\[plots\]"):
        plots.plot_psp_entropy(PSP_RESULT)


def test_structured_schedule_shares_the_removed_neurons_panel():
    history = {
        "sparsity": [0.3, 0.9],
        "scheduled_sparsity": [0.4, 0.9],
        "removed_neurons": [0.2, 0.75],
        "scheduled_removed_neurons": [0.25, 0.75],
    }
    sparsity, removed = plots.plot_history(history).axes[:2]
    assert [line.get_label() for line in removed.get_lines()] == [
        "removed_neurons",
        "scheduled_removed_neurons",
    ]
    assert removed.get_title() == "removed neurons (structured)"
    formatter = removed.yaxis.get_major_formatter()
    assert formatter.__class__.__name__ == "PercentFormatter"
    assert len(sparsity.get_lines()) == 2
