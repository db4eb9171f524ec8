"""The README's main job: `keras-serene demo --quick` end to end."""

import json
import os
import subprocess
import sys

import pytest

from keras_serene.app import cli
from keras_serene.app import demo


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    args = demo.build_parser().parse_args(
        ["--quick", "--out", out, "--verbose", "0"]
    )
    return out, demo.run(args)


def test_demo_prunes_slims_and_exports(quick_demo):
    out, report = quick_demo
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"dense", "pruned", "slim"}
    assert runs["pruned"]["nonzero"] < 0.8 * runs["dense"]["nonzero"]
    assert runs["slim"]["params"] <= runs["pruned"]["params"]
    # Slimming keeps the function: same test accuracy as the pruned model.
    assert runs["slim"]["accuracy"] == pytest.approx(
        runs["pruned"]["accuracy"], abs=1e-9
    )
    assert runs["dense"]["accuracy"] > 0.85
    assert runs["pruned"]["accuracy"] > 0.85
    assert report["pruning_steps"], "the quick demo never pruned"
    # The budgeted default: pruning from the first epoch, the 90% target
    # reached by 70% of the epochs and held (not a last-epoch prune).
    sparsity = report["history"]["sparsity"]
    assert sparsity[0] > 0.15  # 0.9 (1 - (13/14)^3) = 0.18 after epoch 1.
    assert sparsity[13] == pytest.approx(0.9, abs=0.005)  # 14 of 20 epochs.
    assert sparsity[-1] == pytest.approx(0.9, abs=0.005)
    for name in (
        "dense.tflite",
        "pruned.tflite",
        "slim.tflite",
        "pruned.keras",
        "slim.keras",
        "report.json",
    ):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["runs"] == json.loads(json.dumps(report["runs"]))
    table = demo.format_table(report["runs"])
    assert "slim" in table and "tflite bytes" in table
    # Latency as ratios to dense over interleaved repeats, with their spread.
    assert report["latency"]["dense"]["ratio"] == pytest.approx(1.0)
    for name in ("pruned", "slim"):
        entry = report["latency"][name]
        assert entry["ratio_min"] <= entry["ratio"] <= entry["ratio_max"]
        assert runs[name]["latency_ratio"] == entry["ratio"]
    # The dense run's curves go beside the pruned run's in the figure.
    assert set(report["baseline_history"]) >= {"loss", "accuracy"}
    assert len(report["baseline_history"]["loss"]) == report["epochs"]


def test_cli_lists_subcommands(capsys):
    assert cli.main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_cli_rejects_unknown_subcommand():
    with pytest.raises(SystemExit):
        cli.main(["bogus"])


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "keras_serene", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--dataset" in result.stdout and "--quick" in result.stdout
