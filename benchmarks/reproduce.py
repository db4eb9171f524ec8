"""One reproduction run: every method on LeNet-300-100 and LeNet-5.

Fashion-MNIST (Debian's `dataset-fashion-mnist`; scikit-learn's digits when
its files are absent), fixed seed, one epoch budget per model, beside the
dense baseline and tfmot's magnitude pruning (in its own process, Keras 2).
For each run: test accuracy, nonzero fraction, alive neurons per layer, the
slimmed network's parameters, `.tflite` bytes (float32 and int8),
single-thread LiteRT latency (of the slimmed model), training time relative
to dense. Writes `docs/results.md` and `docs/results.json` and names the
machine and versions that produced them.

    python benchmarks/reproduce.py            # full run (about an hour)
    python benchmarks/reproduce.py --train-size 0   # all 60,000 images
    python benchmarks/reproduce.py --quick    # minutes: a subset, 2 epochs
    python benchmarks/reproduce.py --from-json docs/results.json  # re-render
    python benchmarks/reproduce.py --budgeted   # issue 13's budgeted section
    python benchmarks/reproduce.py --budgeted --full  # its whole grid

The budgeted section (`benchmarks/budgeted.py`): all 60,000 images, SGD 0.05
momentum 0.9, 20 epochs, dense / tfmot / `SensitivityPruning(target_sparsity)`
rows. Sized for 2 cores by default (three seeds for the rows that decide the
goals, one for the rest, LeNet-5 structured rows on `--lenet5-train-size`
images); `--full` runs every row on both models with `--seeds` seeds.

Methods: `dense`, `lobster` (loss sensitivity), `serene` (neuron
sensitivity, SensitivityModel), `neurips18` (output sensitivity,
SensitivityModel), `neq` (dense SGD + EquilibriumFreezing), `tfmot90`,
`tfmot98`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.app import datasets  # noqa: E402
from keras_serene.app import zoo  # noqa: E402
from keras_serene.core.masking_optimizer import MaskingOptimizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from budgeted import compile_classifier  # noqa: E402

METHODS = (
    "dense",
    "lobster",
    "serene",
    "neurips18",
    "neq",
    "tfmot90",
    "tfmot98",
)
#: Full-run epochs per model (the budget that fits about an hour here).
EPOCHS = {"lenet300": 20, "lenet5": 6}
#: Training images used by a full run (the first N of the 60,000).
TRAIN_SIZE = 20000
BATCH_SIZE = 100
LEARNING_RATE = 0.1
DECAY = 1e-3


def _seeds(text):
    """`"3"` -> [0, 1, 2]; `"1,2"` -> [1, 2]; `"2,"` -> [2]."""
    if "," in text:
        return [int(t) for t in text.split(",") if t]
    if int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"--seeds {text}: a count must be >= 1 (seed 0 alone: '0,')"
        )
    return list(range(int(text)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override the per-model epoch budget",
    )
    parser.add_argument(
        "--train-size",
        type=int,
        default=TRAIN_SIZE,
        help="use the first N training images (0: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="6,000 training images, 2 epochs"
    )
    parser.add_argument(
        "--data-dir", default=datasets.DEFAULT_FASHION_MNIST_DIR
    )
    parser.add_argument("--out", default=os.path.join(HERE, "..", "docs"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budgeted",
        action="store_true",
        help="run the budgeted section (benchmarks/budgeted.py)",
    )
    parser.add_argument(
        "--full", action="store_true", help="budgeted: the whole grid"
    )
    parser.add_argument(
        "--seeds",
        type=_seeds,
        default="3",
        help="budgeted seeds: a count N (seeds 0..N-1) or a list: 1,2 "
        "(2, alone: seed 2)",
    )
    parser.add_argument(
        "--rows",
        default=None,
        help="budgeted: only these MODEL/ROW pairs (comma-separated, e.g. "
        "lenet5/dense,lenet5/st80-mag-nd), each for every seed; runs "
        "already in the --out JSON are kept",
    )
    parser.add_argument(
        "--lenet5-train-size",
        type=int,
        default=12000,
        help="budgeted sized run: LeNet-5 on the first N images (0: all)",
    )
    parser.add_argument(
        "--from-json",
        default=None,
        help="re-render results.md and its figures from a results.json",
    )
    return parser.parse_args(argv)


def load(args):
    if datasets.fashion_mnist_available(args.data_dir):
        name = "fashion_mnist"
        (x, y), (x_test, y_test) = datasets.load_fashion_mnist(args.data_dir)
    else:
        name = "digits"
        (x, y), (x_test, y_test) = datasets.load_digits()
    if args.train_size:
        x, y = x[: args.train_size], y[: args.train_size]
    if args.quick:
        x, y = x[:6000], y[:6000]
        x_test, y_test = x_test[:2000], y_test[:2000]
    return name, (x, y), (x_test, y_test)


def _fit(trainer, x, y, epochs, callbacks=()):
    start = time.perf_counter()
    history = trainer.fit(
        x,
        y,
        validation_split=0.1,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        verbose=0,
        callbacks=list(callbacks),
    )
    return history, time.perf_counter() - start


def _pruning(epochs):
    # Short budgets: demand a 1% improvement to call a plateau (LOBSTER's
    # own rule waits for the loss to rise 1% above its best).
    return ks.callbacks.SensitivityPruning(
        patience=2 if epochs >= 10 else 1,
        tolerance=0.05,
        plateau_tolerance=-0.01,
        verbose=0,
    )


def train(method, model_name, data, epochs, seed, workdir):
    """Trains one run; returns (plain Keras model, seconds, extra dict)."""
    (x, y), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = zoo.get(
        model_name, input_shape=x.shape[1:], num_classes=int(y.max()) + 1
    )
    extra = {}
    sgd = keras.optimizers.SGD(LEARNING_RATE)
    if method == "dense":
        compile_classifier(model, sgd)
        _, seconds = _fit(model, x, y, epochs)
    elif method in ("lobster", "serene", "neurips18"):
        sensitivity = {
            "lobster": "loss",
            "serene": "neuron",
            "neurips18": "output",
        }[method]
        trainer = model if method == "lobster" else ks.SensitivityModel(model)
        compile_classifier(
            trainer,
            ks.SensitivityOptimizer(sgd, sensitivity=sensitivity, decay=DECAY),
        )
        pruning = _pruning(epochs)
        _, seconds = _fit(trainer, x, y, epochs, [pruning])
        extra["pruning_steps"] = len(pruning.history)
        model = ks.strip_masks(model)
    elif method == "neq":
        # NEq needs the masks: the masking layer around the plain SGD
        # (every Dense/Conv layer but the output one is watched by default).
        compile_classifier(model, MaskingOptimizer(sgd))
        neq = ks.callbacks.EquilibriumFreezing(x, subset=0.01)
        _, seconds = _fit(model, x, y, epochs, [neq])
        saved = [h.get("backprop_flops_saved", 0.0) for h in neq.history]
        extra["backprop_flops_saved"] = float(np.mean(saved)) if saved else 0
        model = ks.strip_masks(model)
    elif method.startswith("tfmot"):
        sparsity = int(method[5:]) / 100
        npz = os.path.join(workdir, "data.npz")
        if not os.path.exists(npz):
            np.savez(npz, x_train=x, y_train=y, x_test=x_test, y_test=y_test)
        out = os.path.join(workdir, f"{method}-{model_name}.npz")
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
        result = subprocess.run(
            [
                sys.executable,
                os.path.join(HERE, "_tfmot_run.py"),
                "--model",
                model_name,
                "--sparsity",
                str(sparsity),
                "--epochs",
                str(epochs),
                "--data",
                npz,
                "--out",
                out,
                "--seed",
                str(seed),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"tfmot run failed:\n{result.stderr[-3000:]}")
        info = json.loads(result.stdout.strip().splitlines()[-1])
        weights = np.load(out)
        model.set_weights([weights[f"arr_{i}"] for i in range(len(weights))])
        seconds = info["train_seconds"]
        extra["versions"] = {k: info[k] for k in ("tf_keras", "tfmot")}
    else:
        raise ValueError(f"unknown method {method!r}")
    return model, seconds, extra


def measure(model, data, workdir):
    (x, _), (x_test, y_test) = data
    compile_classifier(model, "sgd")
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    report = ks.summary(model, print_fn=False)
    slim = ks.slim(model)
    slim_report = ks.summary(slim, print_fn=False)
    blob = ks.to_tflite(slim)
    int8 = ks.to_tflite(slim, quantization="int8", representative_data=x[:200])
    return {
        "accuracy": accuracy,
        "params": report["total"]["params"],
        "nonzero_fraction": report["total"]["nonzero"]
        / report["total"]["params"],
        "alive": report["architecture"].split(" -> ")[-1],
        "slim_params": slim_report["total"]["params"],
        "tflite_bytes": len(blob),
        "tflite_int8_bytes": len(int8),
        "latency_ms": ks.export.tflite_latency(blob, runs=200) * 1e3,
    }


def environment():
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.system()}",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_serene": ks.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def to_markdown(results, meta):
    lines = [
        "# keras_serene results",
        "",
        f"Produced by `{meta['command']}` on {meta['env']['date']}: "
        f"{meta['env']['machine']}; Python {meta['env']['python']}, "
        f"TensorFlow {meta['env']['tensorflow']}, Keras "
        f"{meta['env']['keras']}"
        + (
            f", tfmot {meta['tfmot']['tfmot']} with tf_keras "
            f"{meta['tfmot']['tf_keras']}"
            if meta.get("tfmot")
            else ""
        )
        + ".",
        "",
        f"Data: {meta['dataset']} ({meta['train_size']} training images, 10% "
        f"held out for validation, {meta['test_size']} test). SGD lr "
        f"{LEARNING_RATE}, batch {BATCH_SIZE}, decay {DECAY}, seed "
        f"{meta['seed']}. Latency: single-thread `ai_edge_litert`, batch 1, "
        "median of 200, of the slimmed float32 model. Train time: relative "
        "to the dense run of the same model (tfmot's in its own process).",
        "",
    ]
    for model_name, runs in results.items():
        epochs = meta["epochs"][model_name]
        lines += [
            f"## {model_name} ({epochs} epochs)",
            "",
            "| method | accuracy | nonzero | alive neurons | slim params "
            "| .tflite f32 | .tflite int8 | latency ms | train time |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        dense_seconds = runs.get("dense", {}).get("train_seconds")
        for method, r in runs.items():
            ratio = (
                f"{r['train_seconds'] / dense_seconds:.2f}x"
                if dense_seconds
                else f"{r['train_seconds']:.0f} s"
            )
            lines.append(
                f"| {method} | {r['accuracy']:.4f} | "
                f"{r['nonzero_fraction']:.2%} | {r['alive']} | "
                f"{r['slim_params']:,} | {r['tflite_bytes']:,} | "
                f"{r['tflite_int8_bytes']:,} | {r['latency_ms']:.4f} | "
                f"{ratio} |"
            )
        notes = [
            f"{m}: mean backprop FLOPs saved {r['backprop_flops_saved']:.1%}"
            for m, r in runs.items()
            if "backprop_flops_saved" in r
        ]
        notes += [
            f"{m}: {r['pruning_steps']} pruning steps"
            for m, r in runs.items()
            if "pruning_steps" in r
        ]
        lines += ["", "; ".join(notes) + ".", ""] if notes else [""]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        print(rewrite_from_json(args.from_json))
        return 0
    if args.budgeted:
        return run_budgeted(args, argv)
    dataset, train_data, test_data = load(args)
    data = (train_data, test_data)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {METHODS}")
    results, epochs_used, tfmot_versions = {}, {}, None
    with tempfile.TemporaryDirectory() as workdir:
        for model_name in models:
            epochs = args.epochs or (2 if args.quick else EPOCHS[model_name])
            epochs_used[model_name] = epochs
            results[model_name] = {}
            for method in methods:
                print(
                    f"{model_name} / {method}: {epochs} epochs ...", flush=True
                )
                model, seconds, extra = train(
                    method, model_name, data, epochs, args.seed, workdir
                )
                row = {
                    **measure(model, data, workdir),
                    "train_seconds": seconds,
                    **extra,
                }
                tfmot_versions = row.pop("versions", tfmot_versions)
                results[model_name][method] = row
                print(f"  {json.dumps(row)}", flush=True)
    command = (
        "python benchmarks/reproduce.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    meta = {
        "command": command,
        "env": environment(),
        "dataset": dataset,
        "train_size": len(train_data[0]),
        "test_size": len(test_data[0]),
        "epochs": epochs_used,
        "seed": args.seed,
        "tfmot": tfmot_versions,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    print(write_page(results, meta, args.out))
    return 0


def run_budgeted(args, argv):
    """The budgeted section: full Fashion-MNIST, issue 13's settings."""
    import budgeted
    import budgeted_report

    (x, y), test = datasets.load_fashion_mnist(args.data_dir)
    if args.quick:
        (x, y), test = (x[:3000], y[:3000]), (test[0][:1000], test[1][:1000])

    def load_for(model_name):
        size = 0 if args.full else args.lenet5_train_size
        if model_name == "lenet5" and size:
            return (x[:size], y[:size]), test
        return (x, y), test

    command = "python benchmarks/reproduce.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    meta = {"command": command.strip(), "env": environment()}
    path = budgeted.main(args, load_for, meta)
    print(budgeted_report.write(path, args.out))
    return 0


def write_figures(results, out):
    """One accuracy-vs-compression PNG per model; returns their file names."""
    from keras_serene.app import plots

    names = []
    for model_name, runs in results.items():
        points = [
            {
                "name": method,
                "accuracy": r["accuracy"],
                "compression": 1.0 / r["nonzero_fraction"],
            }
            for method, r in runs.items()
        ]
        name = f"results_{model_name}.png"
        figure = plots.plot_accuracy_vs_compression(
            points,
            path=os.path.join(out, name),
            title=f"{model_name}: test accuracy vs compression",
        )
        figure.clf()
        names.append(name)
    return names


def write_page(results, meta, out):
    """Writes `results.md` (tables and figures) in `out`; returns its text."""
    markdown = to_markdown(results, meta)
    figures = write_figures(results, out)
    markdown += "\n" + "\n".join(f"![{name}]({name})" for name in figures)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown + "\n")
    budgeted = os.path.join(out, "results_budgeted.json")
    if os.path.exists(budgeted):  # Keep the budgeted section on the page.
        import budgeted_report

        budgeted_report.write(budgeted, out)
    return markdown


def rewrite_from_json(path):
    """Re-renders `results.md` and its figures from a `results.json`."""
    with open(path) as f:
        saved = json.load(f)
    return write_page(saved["results"], saved["meta"], os.path.dirname(path))


if __name__ == "__main__":
    sys.exit(main())
