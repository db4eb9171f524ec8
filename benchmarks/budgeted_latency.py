"""LeNet-300 latencies of the budgeted rows, interleaved: issue 13's goal (b).

`budgeted.py` times each run's export once, one after the other, on a
shared machine: two runs with the same slim widths differed by 30%. The
latency of a float32 or int8 Dense stack depends on its shapes (and, for a
sparse-format export, on how many entries are nonzero), not on the values
of the weights, so this rebuilds every timed variant from the shapes in
`results_budgeted.json` with seeded weights (LeNet-300 as the zoo builds
it: a 28x28x1 input and its `Flatten`) and times them all side by side
(`ks.export.latency_ratios`: each repeat times every flatbuffer in turn,
median of `runs`), twice: with a dynamic batch (`ks.to_tflite`'s default)
and with `batch_size=1` (the `Flatten`'s shape ops folded away), each
against the reference exported the same way. This machine's speed changes
over minutes (the reference took 8.7 us in one run and 17 us in the next,
and the dense XNNPACK exports slow down less than its sparse kernel), so
the timing runs in `--rounds` rounds `--pause` seconds apart, both modes
in each: a ratio is the median over the rounds of each round's ratio of
medians, its range the rounds' min-max, and the JSON keeps the reference's
time per round.

- `tfmot98 sparse f32`: 784-300-100-10 with 2% of each kernel nonzero (tfmot
  98% prunes every layer to 98%), `EXPERIMENTAL_SPARSITY`: the reference;
- `tfmot98 int8`: the same as a dense int8 export, since LiteRT's XNNPACK
  cannot run the sparse int8 flatbuffer (recorded when it fails);
- `dense f32` / `dense int8`, and each structured row's slim widths, f32 and
  int8;
- `slim sparse ROW f32`: each row that exported its slim model with
  `sparse=True`, with its seed-0 run's own weights (`budgeted.py` keeps
  them in `benchmarks/` beside the JSON): where its zeros inside the kept
  neurons lie decides its latency, so it is timed as trained.

    python benchmarks/budgeted_latency.py [--json docs/results_budgeted.json]

Adds a `latency` entry to the JSON (`budgeted_report.py` prints it) and
prints the table.
"""

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.export.latency import summarize_latencies  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = "tfmot98 sparse f32"


def _mlp(widths, seed):
    """LeNet-300 as `zoo.lenet300` builds it, with these Dense widths."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    for i, width in enumerate(widths[:-1]):
        x = keras.layers.Dense(width, activation="relu", name=f"fc{i + 1}")(x)
    outputs = keras.layers.Dense(widths[-1], name=f"fc{len(widths)}")(x)
    return keras.Model(inputs, outputs)


def _sparse(model, keep, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers[2:]:  # Past the input and the Flatten.
        kernel, bias = layer.get_weights()
        mask = np.zeros(kernel.size, bool)
        mask[
            rng.permutation(kernel.size)[: max(1, round(keep * kernel.size))]
        ] = True
        layer.set_weights([kernel * mask.reshape(kernel.shape), bias])
    return model


def blobs_for(runs, calibration, root, batch_size=None):
    """`{name: flatbuffer}` of the reference variants, each slim width and
    each saved slim sparse model (paths relative to `root`)."""
    dense = _mlp([300, 100, 10], 0)
    tfmot = _sparse(_mlp([300, 100, 10], 0), 0.02, 0)

    def export(model, **kwargs):
        return ks.to_tflite(model, batch_size=batch_size, **kwargs)

    blobs = {REFERENCE: export(tfmot, sparse=True)}
    notes = []
    try:
        blobs["tfmot98 sparse int8"] = export(
            tfmot, sparse=True, quantization="int8",
            representative_data=calibration,
        )  # fmt: skip
    except (RuntimeError, ValueError) as error:
        notes.append(
            "tfmot98 sparse int8 does not run in LiteRT: "
            + str(error).splitlines()[0][:160]
        )
    int8 = dict(quantization="int8", representative_data=calibration)
    blobs["tfmot98 int8"] = export(tfmot, **int8)
    blobs["dense f32"] = export(dense)
    blobs["dense int8"] = export(dense, **int8)
    widths = {}
    for run in runs:
        if run["row"].startswith("st") and run.get("slim_widths"):
            widths.setdefault(run["slim_widths"], []).append(run["row"])
    for text, rows in sorted(widths.items()):
        hidden = [int(w) for w in text.split("-")[1:]]
        slim = _mlp(hidden, 0)
        label = f"{text} ({', '.join(sorted(rows))})"
        blobs[f"slim {label} f32"] = export(slim)
        blobs[f"slim {label} int8"] = export(slim, **int8)
    for run in runs:
        if run.get("slim_weights"):
            weights = np.load(os.path.join(root, run["slim_weights"]))
            widths = [int(w) for w in run["slim_widths"].split("-")[1:]]
            slim = _mlp(widths, 0)
            slim.set_weights([weights[f"arr_{i}"] for i in range(len(weights))])
            blobs[f"slim sparse {run['row']} f32"] = export(slim, sparse=True)
    return blobs, notes


def cpu_model():
    """The processor's model name (ratios differ between processors)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: `latency` keys of the two export modes.
MODES = {"results": None, "results_batch1": 1}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json",
        default=os.path.join(HERE, "..", "docs", "results_budgeted.json"),
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="timing rounds, --pause seconds apart: this machine's speed "
        "changes over minutes, so a ratio is the median over the rounds "
        "(each round: the median over --repeats), with the rounds' min-max",
    )
    parser.add_argument("--pause", type=float, default=30.0)
    args = parser.parse_args(argv)
    with open(args.json) as f:
        saved = json.load(f)
    runs = [
        r for r in saved["runs"] if r["model"] == "lenet300" and r["seed"] == 0
    ]
    calibration = (
        np.random.default_rng(0).random((200, 28, 28, 1)).astype("float32")
    )
    root = os.path.dirname(os.path.abspath(args.json))
    saved["latency"] = {
        "command": "python benchmarks/budgeted_latency.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPU cores",
        "reference": REFERENCE,
        "rounds": args.rounds,
        "pause_s": args.pause,
    }
    exports = {
        key: blobs_for(runs, calibration, root, batch_size)
        for key, batch_size in MODES.items()
    }
    notes = exports["results"][1]
    seconds = {key: {name: [] for name in exports[key][0]} for key in MODES}
    for round_ in range(args.rounds):
        if round_:
            time.sleep(args.pause)
        for key, (blobs, _) in exports.items():  # Both modes each round.
            result = ks.export.latency_ratios(
                blobs, reference=REFERENCE, repeats=args.repeats, runs=args.runs
            )
            for name, value in result.items():
                seconds[key][name].append(value["latency_ms"] / 1e3)
    saved["latency"]["notes"] = notes
    for key, batch_size in MODES.items():
        blobs = exports[key][0]
        result = summarize_latencies(seconds[key], REFERENCE)
        saved["latency"][key] = {
            name: {**value, "bytes": len(blobs[name])}
            for name, value in result.items()
        }
        saved["latency"][f"{key}_reference_us_by_round"] = [
            round(t * 1e6, 2) for t in seconds[key][REFERENCE]
        ]
        print(
            f"\nbatch: {batch_size or 'dynamic'}\n{'flatbuffer':48s} "
            f"{'bytes':>9s} {'ms':>8s}  speed vs reference (min-max)"
        )
        for name, value in result.items():
            print(
                f"{name:48s} {len(blobs[name]):9,d} "
                f"{value['latency_ms']:8.4f}  {1 / value['ratio']:.2f}x "
                f"({1 / value['ratio_max']:.2f}-{1 / value['ratio_min']:.2f})"
            )
    with open(args.json, "w") as f:
        json.dump(saved, f, indent=1)
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
