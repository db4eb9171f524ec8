"""keras_serene.app.report: JSON report -> PNG figures, and its CLI."""

import json

import pytest

pytest.importorskip("matplotlib", reason="plots need the matplotlib extra")

import matplotlib.image  # noqa: E402

from keras_serene.app import report  # noqa: E402

REPORT = {
    "name": "demo",
    "history": {
        "loss": [1.0, 0.5, 0.4],
        "accuracy": [0.5, 0.7, 0.8],
        "sparsity": [0.0, 0.4, 0.8],
        "alive_neurons": [100, 90, 60],
        "frozen_fraction": [0.0, 0.2, 0.3],
        "config": {"lr": 0.1},
    },
    "runs": [
        {"name": "dense", "accuracy": 0.9, "sparsity": 0.0},
        {"name": "pruned", "accuracy": 0.88, "compression": 10.0},
        {"name": "broken"},
    ],
    "psp_entropy": {"fc1": [0.5, 1.0, 1.5]},
}


def _assert_png(path):
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50


def test_write_report_from_json_next_to_it(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({k: v for k, v in REPORT.items() if k != "name"})
    )
    paths = report.write_report(str(path))
    assert paths == [
        str(tmp_path / "run_history.png"),
        str(tmp_path / "run_accuracy_vs_compression.png"),
        str(tmp_path / "run_psp_entropy.png"),
    ]
    for png in paths:
        _assert_png(png)


def test_read_report_is_tolerant_and_notes_what_it_skipped():
    sections, name, notes = report.read_report(REPORT)
    assert name == "demo"
    assert sorted(sections["history"]) == [
        "accuracy",
        "alive_neurons",
        "frozen_fraction",
        "loss",
        "sparsity",
    ]
    # Dense: compression from sparsity 0 -> 1; "broken" has no accuracy.
    assert sections["runs"] == [
        {"name": "dense", "accuracy": 0.9, "compression": 1.0},
        {"name": "pruned", "accuracy": 0.88, "compression": 10.0},
    ]
    assert notes == [
        "history: skipped non-numeric keys ['config']",
        "runs: 'broken' has no 'accuracy', skipped",
    ]


def test_partial_report_writes_only_its_sections(tmp_path):
    paths = report.write_report({"runs": REPORT["runs"]}, tmp_path / "out")
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "report_accuracy_vs_compression.png"
    ]
    _assert_png(paths[0])


def test_errors():
    with pytest.raises(ValueError, match="none of the sections"):
        report.write_report({"other": 1}, "/tmp")
    with pytest.raises(ValueError, match="`out_dir` is required"):
        report.write_report(REPORT)
    with pytest.raises(TypeError, match="JSON object"):
        report.write_report([1, 2], "/tmp")


def test_main_cli(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(REPORT))
    out_dir = tmp_path / "figs"
    assert report.main([str(path), "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "note: history: skipped non-numeric keys ['config']"
    # File names follow the JSON file's stem; "name" only titles figures.
    assert printed[-3:] == [
        str(out_dir / "r_history.png"),
        str(out_dir / "r_accuracy_vs_compression.png"),
        str(out_dir / "r_psp_entropy.png"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert report.main([str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# The demo's runs as it writes them: each network's own `compression`
# (params / nonzero) put the slim network left of the pruned one.
DEMO_RUNS = [
    {
        "name": "dense",
        "params": 50610,
        "nonzero": 50604,
        "accuracy": 0.9666,
        "compression": 1.0001,
    },
    {
        "name": "pruned",
        "params": 50610,
        "nonzero": 6766,
        "accuracy": 0.9694,
        "compression": 7.48,
    },
    {
        "name": "slim",
        "params": 32900,
        "nonzero": 6766,
        "accuracy": 0.9694,
        "compression": 4.86,
    },
]


def test_slim_sits_on_the_pruned_point_when_they_are_the_same_network():
    sections, _, notes = report.read_report({"runs": DEMO_RUNS})
    runs = {r["name"]: r["compression"] for r in sections["runs"]}
    # One basis: dense params / nonzero params, 50610 / 6766 = 7.48x both.
    assert runs["slim"] == runs["pruned"] == pytest.approx(50610 / 6766)
    assert runs["dense"] == pytest.approx(50610 / 50604)
    assert notes == []


def test_slim_and_pruned_from_a_real_network_share_a_point():
    import keras

    import keras_serene as ks

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu", name="h"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    hidden = model.get_layer("h")
    kernel, bias = hidden.get_weights()
    kernel[:, :2], bias[:2] = 0.0, 0.0  # two dead neurons
    kernel[0, 4] = 0.0  # and one unstructured zero
    hidden.set_weights([kernel, bias])
    out = model.get_layer("out")
    w, b = out.get_weights()
    w[:2] = 0.0  # nothing reads the dead neurons
    out.set_weights([w, b])
    slim = ks.slim(model)
    runs = []
    for name, net in (("pruned", model), ("slim", slim)):
        total = ks.summary(net, print_fn=False)["total"]
        runs.append(
            {"name": name, "accuracy": 0.5, **total, "params": total["params"]}
        )
    assert runs[1]["params"] < runs[0]["params"]  # slim is smaller
    assert runs[1]["nonzero"] == runs[0]["nonzero"]  # same nonzero weights
    dense_params = 6 * 5 + 5 + 5 * 3 + 3
    sections, _, _ = report.read_report(
        {"runs": runs, "reference_params": dense_params}
    )
    pruned, slim_run = sections["runs"]
    assert slim_run["compression"] == pruned["compression"]
    # Nonzero by hand (biases start at zero): hidden kernel 30 - 12 - 1,
    # output kernel 15 - 6; the slim one keeps the same 17 + 9.
    assert runs[0]["nonzero"] == 26
    assert pruned["compression"] == pytest.approx(53 / 26)


def test_baseline_history_is_drawn_beside_the_run(tmp_path):
    data = {
        "history": {"accuracy": [0.5, 0.8], "sparsity": [0.0, 0.5]},
        "baseline_history": {"accuracy": [0.6, 0.9]},
    }
    sections, _, _ = report.read_report(data)
    assert list(sections["baseline_history"]) == ["accuracy"]
    (path,) = report.write_report(data, tmp_path)
    _assert_png(path)
    with pytest.raises(ValueError, match="none of the sections"):
        report.write_report({"baseline_history": {"loss": [1.0]}}, tmp_path)


LATENCY = {
    "dense": {
        "ratio": 1.0,
        "ratio_min": 1.0,
        "ratio_max": 1.0,
        "latency_ms": 0.0106,
        "latency_ms_min": 0.0098,
        "latency_ms_max": 0.0121,
        "repeats": 7,
        "reference": "dense",
    },
    "slim": {
        "ratio": 0.48,
        "ratio_min": 0.41,
        "ratio_max": 0.55,
        "latency_ms": 0.0051,
        "latency_ms_min": 0.0046,
        "latency_ms_max": 0.0060,
        "repeats": 7,
        "reference": "dense",
    },
}


def test_latency_table_prints_ratios_with_their_spread(tmp_path, capsys):
    table = report.format_latency_table(LATENCY)
    lines = table.splitlines()
    assert "latency / dense" in lines[0] and "min-max" in lines[0]
    assert lines[3].split() == [
        "slim",
        "0.48",
        "0.41-0.55",
        "0.0051",
        "0.0046-0.0060",
    ]
    assert "7 interleaved repeats" in lines[-1]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"runs": DEMO_RUNS, "latency": LATENCY}))
    assert report.main([str(path)]) == 0
    assert table in capsys.readouterr().out
