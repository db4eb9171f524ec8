"""Tests for keras_serene.app.report: JSON report -> PNG figures, and its CLI."""

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
