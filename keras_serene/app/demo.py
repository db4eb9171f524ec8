"""`keras-serene demo`: train, prune, slim and export one network, end to end.

The main job of the package, on scikit-learn's digits by default (no
network) or Fashion-MNIST (`--dataset fashion_mnist`):

1. a dense baseline: the network trained with plain SGD;
2. the same network, from the same initial weights, trained with
   `ks.SensitivityOptimizer` (LOBSTER by default, or SeReNe / the NeurIPS 2018
   output sensitivity through `ks.SensitivityModel`) and
   `ks.callbacks.SensitivityPruning(target_sparsity=...)`: the budgeted
   schedule, a cubic ramp to the target by 70% of the epochs (`--structured`:
   the fraction of hidden neurons removed), then recovery;
3. `ks.strip_masks`, then `ks.slim` (dead neurons physically removed), then
   `ks.to_tflite` (builtins-only LiteRT flatbuffer, verified);
4. a before/after table (parameters, nonzero, test accuracy, `.tflite`
   bytes, single-thread LiteRT latency) and, in `--out`, the models, the
   flatbuffers (the pruned one in LiteRT's sparse format, the slim one
   dense: its zeros are gone) and `report.json` (plus PNG plots when
   matplotlib is there; `keras-serene report out/report.json` draws them).

`--schedule plateau` runs the papers' plateau + bisection schedule instead.
LOBSTER's plateau rule (a plateau is 1% above the best validation loss for
`patience` epochs) rarely fires within a few dozen epochs, so the demo then
asks for a 1% improvement (`plateau_tolerance=-0.01`). Both train with SGD
0.05, momentum 0.9 (the dense baseline too).
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from keras_serene.app import datasets
from keras_serene.app import report as report_lib
from keras_serene.app import zoo

#: Per-dataset budget: batch size, then (epochs, plateau patience) of a full
#: and of a `--quick` run. `"tfds:NAME"` datasets get Fashion-MNIST's.
BUDGETS = {
    "digits": (32, {"full": (60, 3), "quick": (20, 1)}),
    "fashion_mnist": (100, {"full": (20, 2), "quick": (6, 1)}),
}


def _dataset(name):
    if name in BUDGETS or (name.startswith("tfds:") and len(name) > 5):
        return name
    raise argparse.ArgumentTypeError(
        f"--dataset must be 'digits', 'fashion_mnist' or 'tfds:NAME'; got "
        f"{name!r}"
    )


def build_parser(parser=None):
    """Adds the demo's arguments to `parser` (a new one if None)."""
    if parser is None:
        parser = argparse.ArgumentParser(prog="keras-serene demo")
    parser.add_argument(
        "--dataset",
        type=_dataset,
        default="digits",
        help="digits, fashion_mnist or tfds:NAME",
    )
    parser.add_argument(
        "--data-dir",
        default=datasets.DEFAULT_FASHION_MNIST_DIR,
        help="folder of the Fashion-MNIST IDX files",
    )
    parser.add_argument(
        "--model", choices=["lenet300", "lenet5"], default="lenet300"
    )
    parser.add_argument(
        "--sensitivity",
        choices=["loss", "neuron", "output"],
        default="loss",
        help="loss: LOBSTER; neuron: SeReNe; output: NeurIPS 2018",
    )
    parser.add_argument(
        "--decay",
        type=float,
        default=None,
        help="regularization strength (default by dataset)",
    )
    parser.add_argument(
        "--schedule",
        choices=["budgeted", "plateau"],
        default="budgeted",
        help="budgeted: a ramp to --target-sparsity; plateau: the papers'",
    )
    parser.add_argument(
        "--target-sparsity",
        type=float,
        default=0.9,
        help="budgeted: fraction of weights (--structured: neurons) removed",
    )
    parser.add_argument(
        "--structured",
        action="store_true",
        help="budgeted: remove whole neurons / channels (ks.slim shrinks)",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--patience",
        type=int,
        default=None,
        help="plateau patience (default by dataset)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="loss increase a pruning step may cost (twt)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (smoke test)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default="keras_serene_demo",
        help="folder for the models and report.json",
    )
    parser.add_argument(
        "--verbose", type=int, default=1, help="0: only the final table"
    )
    return parser


def _compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def _accuracy(model, x, y):
    _compile(model, "sgd")
    return float(model.evaluate(x, y, verbose=0)[1])


def _measure(name, model, x_test, y_test, out_dir, sparse=False):
    import keras_serene as ks

    report = ks.summary(model, print_fn=False)
    path = os.path.join(out_dir, f"{name}.tflite")
    blob = ks.to_tflite(model, path, sparse=sparse)
    return blob, {
        "name": name,
        "params": report["total"]["params"],
        "nonzero": report["total"]["nonzero"],
        "sparsity": report["total"]["sparsity"],
        "compression": report["total"]["compression"],
        "architecture": report["architecture"].split(" -> ")[-1],
        "accuracy": _accuracy(model, x_test, y_test),
        "tflite_bytes": len(blob),
    }


def format_table(runs):
    """The before/after table the demo prints."""
    header = (
        f"{'model':<10}{'params':>10}{'nonzero':>10}{'accuracy':>10}"
        f"{'tflite bytes':>14}{'latency/dense':>15}  architecture"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        lines.append(
            f"{r['name']:<10}{r['params']:>10,}{r['nonzero']:>10,}"
            f"{r['accuracy']:>10.4f}{r['tflite_bytes']:>14,}"
            f"{r['latency_ratio']:>15.2f}  {r['architecture']}"
        )
    return "\n".join(lines)


def run(args):
    """Runs the demo for parsed `args`; returns the report dict."""
    import keras_serene as ks

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = datasets.load(
        args.dataset, args.data_dir
    )
    batch_size, budgets = BUDGETS.get(args.dataset, BUDGETS["fashion_mnist"])
    epochs, patience = budgets["quick" if args.quick else "full"]
    epochs = args.epochs or epochs
    patience = args.patience or patience
    budgeted = args.schedule == "budgeted"
    decay = (
        args.decay if args.decay is not None else (1e-4 if budgeted else 1e-3)
    )
    os.makedirs(args.out, exist_ok=True)
    say = print if args.verbose else (lambda *a, **k: None)
    say(
        f"keras-serene demo: {args.model} on {args.dataset} "
        f"({len(x_train)} train / {len(x_test)} test), {epochs} epochs, "
        f"sensitivity={args.sensitivity!r}, decay={decay}, "
        + (
            f"budgeted schedule to {args.target_sparsity:.0%} of the "
            + ("neurons" if args.structured else "weights")
            if budgeted
            else "plateau schedule"
        )
    )

    build = zoo.get(
        args.model,
        input_shape=x_train.shape[1:],
        num_classes=int(y_train.max()) + 1,
    )
    initial_weights = build.get_weights()
    # The last 10% validate; both runs see the same new order of the rest
    # every epoch (`model.fit` on arrays under a global seed would replay
    # one order: `datasets.shuffled_batches`).
    fit_kwargs = dict(epochs=epochs, verbose=args.verbose)

    def batches():
        return datasets.fit_arrays(x_train, y_train, batch_size, args.seed)

    say("\n[1/3] dense baseline (plain SGD)")
    start = time.perf_counter()
    dense = zoo.get(
        args.model,
        input_shape=x_train.shape[1:],
        num_classes=int(y_train.max()) + 1,
    )
    dense.set_weights(initial_weights)
    _compile(dense, _sgd())
    dense_history = dense.fit(**batches(), **fit_kwargs)
    dense_seconds = time.perf_counter() - start

    say(f"\n[2/3] sensitivity training + pruning ({args.sensitivity})")
    start = time.perf_counter()
    model = build
    optimizer = ks.SensitivityOptimizer(
        _sgd(), sensitivity=args.sensitivity, decay=decay
    )
    trainer = (
        model if args.sensitivity == "loss" else ks.SensitivityModel(model)
    )
    _compile(trainer, optimizer)
    if budgeted:
        pruning = ks.callbacks.SensitivityPruning(
            target_sparsity=args.target_sparsity,
            structured=args.structured,
            verbose=0,
        )
    else:
        pruning = ks.callbacks.SensitivityPruning(
            patience=patience,
            tolerance=args.tolerance,
            plateau_tolerance=-0.01,
            verbose=args.verbose,
        )
    history = trainer.fit(**batches(), callbacks=[pruning], **fit_kwargs)
    pruned_seconds = time.perf_counter() - start

    say("\n[3/3] strip masks, slim, export to LiteRT")
    pruned = ks.strip_masks(model)
    start = time.perf_counter()
    slim = ks.slim(pruned)
    slim_seconds = time.perf_counter() - start
    pruned.save(os.path.join(args.out, "pruned.keras"))
    slim.save(os.path.join(args.out, "slim.keras"))
    measured = [
        _measure("dense", dense, x_test, y_test, args.out),
        # Unstructured zeros only shrink the file with the sparse format.
        _measure("pruned", pruned, x_test, y_test, args.out, sparse=True),
        _measure("slim", slim, x_test, y_test, args.out),
    ]
    # Single timings on a shared machine do not reproduce: ratios of
    # interleaved repeats do (median and min-max in report["latency"]).
    latency = ks.export.latency_ratios(
        {run["name"]: blob for blob, run in measured},
        repeats=3 if args.quick else 7,
        runs=50 if args.quick else 200,
    )
    runs = [run for _, run in measured]
    for run_ in runs:
        run_["latency_ratio"] = latency[run_["name"]]["ratio"]
        run_["latency_ms"] = latency[run_["name"]]["latency_ms"]
    print()
    ks.summary(pruned)
    print()
    print(format_table(runs))
    print()
    print(report_lib.format_latency_table(latency))
    report = {
        "name": f"{args.model}-{args.dataset}-{args.sensitivity}",
        "config": {k: v for k, v in vars(args).items() if k != "command"},
        "epochs": epochs,
        "history": {
            k: [float(v) for v in values]
            for k, values in history.history.items()
        },
        "baseline_history": {
            k: [float(v) for v in values]
            for k, values in dense_history.history.items()
        },
        "pruning_steps": pruning.history,
        "runs": runs,
        "latency": latency,
        "seconds": {
            "dense_training": dense_seconds,
            "sensitivity_training": pruned_seconds,
            "slim": slim_seconds,
        },
    }
    path = os.path.join(args.out, "report.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=_json_default)
    print(f"\nwrote {args.out}/: pruned.keras slim.keras *.tflite report.json")
    try:
        pngs = report_lib.write_report(path)
        print("plots: " + ", ".join(pngs))
    except ImportError:
        print("(plots skipped: pip install keras-serene[plots])")
    return report


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def main(argv=None):
    """`keras-serene demo [...]`; returns the exit code."""
    run(build_parser().parse_args(argv))
    return 0
