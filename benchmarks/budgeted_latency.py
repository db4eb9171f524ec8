"""LeNet-300 latencies of the budgeted rows, interleaved: issue 13's goal (b).

`budgeted.py` times each run's export once, one after the other, on a
shared machine: two runs with the same slim widths differed by 30%. The
latency of a float32 or int8 Dense stack depends on its shapes (and, for a
sparse-format export, on how many entries are nonzero), not on the values
of the weights, so this rebuilds every timed variant from the shapes in
`results_budgeted.json` with seeded weights and times them all side by
side (`ks.export.latency_ratios`: each repeat times every flatbuffer in
turn, median of `runs`; the ratio's median and min-max over the repeats):

- `tfmot98 sparse f32`: 784-300-100-10 with 2% of each kernel nonzero (tfmot
  98% prunes every layer to 98%), `EXPERIMENTAL_SPARSITY`: the reference;
- `tfmot98 int8`: the same as a dense int8 export, since LiteRT's XNNPACK
  cannot run the sparse int8 flatbuffer (recorded when it fails);
- `dense f32` / `dense int8`, and each structured row's slim widths, f32 and
  int8.

    python benchmarks/budgeted_latency.py [--json docs/results_budgeted.json]

Adds a `latency` entry to the JSON (`budgeted_report.py` prints it) and
prints the table.
"""

import argparse
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_serene as ks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = "tfmot98 sparse f32"


def _mlp(widths, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((784,))
    x = inputs
    for width in widths[:-1]:
        x = keras.layers.Dense(width, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(widths[-1])(x))


def _sparse(model, keep, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers[1:]:
        kernel, bias = layer.get_weights()
        mask = np.zeros(kernel.size, bool)
        mask[
            rng.permutation(kernel.size)[: max(1, round(keep * kernel.size))]
        ] = True
        layer.set_weights([kernel * mask.reshape(kernel.shape), bias])
    return model


def blobs_for(runs, calibration):
    """`{name: flatbuffer}` of the reference variants and each slim width."""
    dense = _mlp([300, 100, 10], 0)
    tfmot = _sparse(_mlp([300, 100, 10], 0), 0.02, 0)
    blobs = {REFERENCE: ks.to_tflite(tfmot, sparse=True)}
    notes = []
    try:
        blobs["tfmot98 sparse int8"] = ks.to_tflite(
            tfmot, sparse=True, quantization="int8",
            representative_data=calibration,
        )  # fmt: skip
    except (RuntimeError, ValueError) as error:
        notes.append(
            "tfmot98 sparse int8 does not run in LiteRT: "
            + str(error).splitlines()[0][:160]
        )
    int8 = dict(quantization="int8", representative_data=calibration)
    blobs["tfmot98 int8"] = ks.to_tflite(tfmot, **int8)
    blobs["dense f32"] = ks.to_tflite(dense)
    blobs["dense int8"] = ks.to_tflite(dense, **int8)
    widths = {}
    for run in runs:
        if run["row"].startswith("st") and run.get("slim_widths"):
            widths.setdefault(run["slim_widths"], []).append(run["row"])
    for text, rows in sorted(widths.items()):
        hidden = [int(w) for w in text.split("-")[1:]]
        slim = _mlp(hidden, 0)
        label = f"{text} ({', '.join(sorted(rows))})"
        blobs[f"slim {label} f32"] = ks.to_tflite(slim)
        blobs[f"slim {label} int8"] = ks.to_tflite(slim, **int8)
    return blobs, notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json",
        default=os.path.join(HERE, "..", "docs", "results_budgeted.json"),
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    with open(args.json) as f:
        saved = json.load(f)
    runs = [
        r for r in saved["runs"] if r["model"] == "lenet300" and r["seed"] == 0
    ]
    calibration = np.random.default_rng(0).random((200, 784)).astype("float32")
    blobs, notes = blobs_for(runs, calibration)
    result = ks.export.latency_ratios(
        blobs, reference=REFERENCE, repeats=args.repeats, runs=args.runs
    )
    saved["latency"] = {
        "command": "python benchmarks/budgeted_latency.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "reference": REFERENCE,
        "notes": notes,
        "results": {
            name: {**value, "bytes": len(blobs[name])}
            for name, value in result.items()
        },
    }
    with open(args.json, "w") as f:
        json.dump(saved, f, indent=1)
    print(
        f"{'flatbuffer':48s} {'bytes':>9s} {'ms':>8s}  "
        "speed vs reference (min-max)"
    )
    for name, value in result.items():
        print(
            f"{name:48s} {len(blobs[name]):9,d} {value['latency_ms']:8.4f}  "
            f"{1 / value['ratio']:.2f}x "
            f"({1 / value['ratio_max']:.2f}-{1 / value['ratio_min']:.2f})"
        )
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
