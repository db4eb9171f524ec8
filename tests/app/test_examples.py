"""Every `examples/*.py` runs with `--quick` and reports what it claims.

Each example runs in a fresh subprocess (as a user would run it), in a
temporary working directory so its output files land there, and must exit 0
and print one `RESULT {json}` line. A new example is picked up automatically;
`CHECKS` adds facts specific to an example that could fail (sparsity after
LOBSTER, a smaller slim model after SeReNe, a PNG after PSP-entropy...).
"""

import ast
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.glob("*.py") if p.name[0] != "_")
# A hang guard, not a timing assertion.
HANG_GUARD_SECONDS = 600


def _run(path, cwd):
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH")) if p
    )
    env.pop("TF_USE_LEGACY_KERAS", None)
    return subprocess.run(
        [sys.executable, str(path), "--quick"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )


def _result(completed):
    lines = [
        line
        for line in completed.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    assert len(lines) == 1, (
        f"expected one RESULT line, found {len(lines)}; stdout tail:\n"
        + completed.stdout[-3000:]
    )
    result = json.loads(lines[0][len("RESULT ") :])
    assert isinstance(result, dict) and result
    return result


def check_lobster(result, cwd):
    assert result["dataset"] == "digits"
    assert result["pruning_steps"] >= 1
    assert result["sparsity"] > 0.5
    assert result["nonzero"] < result["params"]
    assert result["compression"] == pytest.approx(
        result["params"] / result["nonzero"], rel=1e-2
    )
    assert result["alive_neurons"] <= result["neurons"]
    # Accuracy of the stripped model reloaded by plain Keras.
    assert result["test_accuracy"] > 0.85
    saved = cwd / result["saved"]
    assert saved.is_file() and saved.stat().st_size > 0


def check_serene_slim_tflite(result, cwd):
    assert result["channels_removed"] > 0
    assert result["slim_params"] < result["dense_params"]
    before, after = result["architecture"].split(" -> ")
    assert before != after
    # Slimming keeps the function, and so does the float32 export.
    assert result["max_output_gap"] < 1e-4
    assert result["slim_accuracy"] == pytest.approx(
        result["pruned_accuracy"], abs=1e-9
    )
    assert result["slim_float32_accuracy"] == pytest.approx(
        result["slim_accuracy"], abs=0.01
    )
    assert result["slim_int8_accuracy"] > 0.8
    assert result["pruned_accuracy"] > 0.85
    sizes = result["tflite_bytes"]
    assert sizes["slim_float32"] < sizes["dense_float32"]
    assert sizes["slim_int8"] < sizes["slim_float32"]
    assert all(v > 0 for v in result["latency_ms"].values())
    for name in (
        "serene_slim.keras",
        "serene_slim_float32.tflite",
        "serene_slim_int8.tflite",
    ):
        assert (cwd / "serene_out" / name).stat().st_size > 0


def check_output_sensitivity(result, cwd):
    for mode in ("unspecific", "specific"):
        run = result[mode]
        assert run["pruning_steps"] >= 1, mode
        assert run["sparsity"] > 0.3, mode
        assert run["test_accuracy"] > 0.85, mode
        assert run["alive_neurons"] <= run["neurons"], mode
    # Same initial weights and batches, different estimators.
    assert result["unspecific"] != result["specific"]


def check_neq(result, cwd):
    frozen = result["frozen_fraction"]
    saved = result["backprop_flops_saved"]
    assert len(frozen) == len(saved) == result["epochs"]
    # The first epoch is NEq's warm-up: nothing is frozen during it.
    assert frozen[0] == 0.0 and saved[0] == 0.0
    assert all(0.0 <= f <= 1.0 for f in frozen + saved)
    assert max(frozen) > 0.0, "NEq never froze a neuron"
    assert result["mean_backprop_flops_saved"] == pytest.approx(
        sum(saved) / len(saved), abs=1e-3
    )
    # Skipped work (a whole layer frozen) is part of the masked work.
    skipped = result["backprop_flops_skipped"]
    assert len(skipped) == len(saved)
    assert all(0.0 <= k <= s + 1e-9 for k, s in zip(skipped, saved))
    # LeNet-5's conv channels and fc1 units (the output layer is not watched).
    assert result["neurons"] == 20 + 50 + 500
    assert result["plain_accuracy"] > 0.85
    assert result["neq_accuracy"] > 0.85


def check_rni(result, cwd):
    before = result["channels"]
    after = result["pruned_channels"]
    assert set(before) == set(after)
    assert result["pruned_params"] < result["params"]
    removed = sum(before.values()) - sum(after.values())
    assert 0 < removed <= math.floor(result["ratio"] * sum(before.values()))
    assert all(3 <= after[k] <= before[k] for k in before)
    assert sum(result["importance_histogram"]) == sum(before.values())
    assert result["trained_accuracy"] > 0.85
    assert result["finetuned_accuracy"] > 0.8


def check_psp_entropy(result, cwd):
    layers = {"conv1", "conv2", "fc1", "fc2"}
    assert set(result["trained_mean_entropy"]) == layers
    assert set(result["initial_mean_entropy"]) == layers
    # H_i = sum over 10 classes of binary entropies: in [0, 10] bits.
    for means in (
        result["initial_mean_entropy"],
        result["trained_mean_entropy"],
    ):
        assert all(0.0 <= h <= 10.0 for h in means.values())
    assert result["initial_mean_entropy"] != result["trained_mean_entropy"]
    assert set(result["logged"]) == {f"psp_entropy/{k}" for k in layers}
    assert all(len(v) == result["epochs"] for v in result["logged"].values())
    for key in ("histogram_png", "curves_png"):
        png = cwd / result[key]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", key
    assert result["test_accuracy"] > 0.8


def check_phone_export(result, cwd):
    assert result["slim_params"] < result["dense_params"]
    assert result["max_output_gap"] < 1e-4  # Slimming keeps the function.
    # fc1 went to LiteRT's block-sparse kernel, with no batch shape ops.
    ops = result["sparse_ops"]
    assert "DENSIFY" not in ops and "SHAPE" not in ops, ops
    assert 0 < result["slim_fc1_nonzero"] < 0.2
    sizes = result["tflite_bytes"]
    assert (
        sizes["slim, block-sparse float32"]
        < sizes["slim, float32"]
        < sizes["dense network, float32"]
    )
    # The sparse export computes what the slim Keras model does.
    assert result["tflite_accuracy"] == pytest.approx(
        result["keras_accuracy_same_images"], abs=0.01
    )
    assert result["accuracy"] > 0.85
    assert all(v > 0 for v in result["latency_vs_dense"].values())
    assert (cwd / "phone_out" / "slim_block_sparse.tflite").stat().st_size > 0


CHECKS = {
    "lobster": check_lobster,
    "serene_slim_tflite": check_serene_slim_tflite,
    "output_sensitivity": check_output_sensitivity,
    "neq": check_neq,
    "rni": check_rni,
    "psp_entropy": check_psp_entropy,
    "phone_export": check_phone_export,
}


def test_examples_folder_is_not_empty():
    assert {p.stem for p in EXAMPLES} >= set(CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_quick(path, tmp_path):
    if path.stem == "psp_entropy":
        pytest.importorskip("matplotlib", reason="the example draws PNGs")
    completed = _run(path, tmp_path)
    assert completed.returncode == 0, (
        f"{path.name} --quick exited {completed.returncode}\nstdout tail:\n"
        f"{completed.stdout[-3000:]}\nstderr tail:\n{completed.stderr[-3000:]}"
    )
    result = _result(completed)
    check = CHECKS.get(path.stem)
    if check is not None:
        check(result, tmp_path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_a_documented_script(path):
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    assert doc, f"{path.name} has no module docstring"
    assert "arxiv.org/abs/" in doc, f"{path.name} cites no paper"
    source = path.read_text()
    assert '"--quick"' in source and "RESULT " in source
    assert "keras.src" not in source and "tf_keras" not in source
    readme = (EXAMPLES_DIR / "README.md").read_text()
    assert f"examples/{path.name}" in readme, (
        f"examples/README.md does not list {path.name}"
    )
