"""Benchmark: PSP-entropy after gradual vs one-shot pruning (LeNet-5, F-MNIST).

The claim tested (Tartaglione, Bragagnolo, Grangetto, ICANN 2020,
arXiv:2004.14765, experiments): at the same sparsity, gradual
sensitivity-driven pruning (LOBSTER) leaves the neurons with a higher
PSP-entropy (they are less class-specific) than one-shot magnitude pruning
followed by fine-tuning, and generalizes at least as well.

Protocol (a small-budget version of the paper's):
1. Dense warm-up: `keras_serene.app.zoo.lenet5` trained with plain SGD(0.1),
   batch 100, on a Fashion-MNIST subset (10% of it held out for validation).
2. Gradual arm, from the warm-up weights: LOBSTER,
   `ks.SensitivityOptimizer(SGD(0.1), sensitivity="loss", decay=1e-4)` and
   `ks.callbacks.SensitivityPruning(patience, tolerance=0.05,
   plateau_tolerance=-0.01)`, for `--gradual-epochs` epochs;
   `PSPEntropyLogger` records the per-layer mean PSP-entropy on validation
   samples each epoch. The plateau rule differs from LOBSTER's code (0.01: a
   loss within 1% above the best resets the counter, so pruning waits for
   the validation loss to rise for `patience` epochs): here a plateau is
   `patience` epochs without a 1% improvement, so that several pruning
   steps fit in a 15-minute budget.
3. One-shot arm, from the same warm-up weights: zero the smallest-magnitude
   kernel and bias entries globally until the sparsity equals the gradual
   arm's final sparsity, then fine-tune with SGD(0.1) for as many epochs as
   the gradual arm (`--finetune-epochs`) with those entries masked
   (`SensitivityOptimizer(decay=0)` and the pruned flags of
   `keras_serene.core.masking`, the library's one mask mechanism).
4. Control: the warm-up model trained on densely with SGD(0.1) for as many
   epochs, to tell what pruning changes from what more training changes.
5. On test samples: accuracy (`--test-samples`, all 10,000 by default)
   and PSP-entropy (`--psp-samples`, 2,000 by default) per
   layer (`per="neuron"`, the authors' definition, and `per="channel"`),
   and the fraction of constant neurons (never or always on).

Outputs: a table on stdout, and in `--out-dir` a JSON report (schema of
`keras_serene.app.report`) and its PNG figures.

Run: `python benchmarks/psp_entropy.py` (~15 min on 2 CPU cores) or
`python benchmarks/psp_entropy.py --quick` (1-2 min, numbers only indicative).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.app import datasets  # noqa: E402
from keras_serene.app import report as report_lib  # noqa: E402
from keras_serene.app import zoo  # noqa: E402
from keras_serene.core import masking as masks_lib  # noqa: E402

FULL = dict(
    train=12000,
    dense_epochs=4,
    gradual_epochs=30,
    patience=2,
    plateau_tolerance=-0.01,
    psp_samples=2000,
    logger_samples=500,
    test_samples=10000,
)
QUICK = dict(
    train=2000,
    dense_epochs=4,
    gradual_epochs=8,
    patience=1,
    plateau_tolerance=-0.03,
    psp_samples=500,
    logger_samples=200,
    test_samples=2000,
)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1-2 minute smoke run (smaller budget)",
    )
    parser.add_argument("--train", type=int, help="training subset size")
    parser.add_argument("--dense-epochs", type=int)
    parser.add_argument("--gradual-epochs", type=int)
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        help="one-shot fine-tune epochs (default: as many as the gradual arm)",
    )
    parser.add_argument("--patience", type=int)
    parser.add_argument(
        "--psp-samples", type=int, help="test samples for the PSP-entropy"
    )
    parser.add_argument(
        "--logger-samples",
        type=int,
        help="validation samples for PSPEntropyLogger",
    )
    parser.add_argument(
        "--test-samples", type=int, help="test samples for the accuracy"
    )
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument(
        "--plateau-tolerance",
        type=float,
        help="SensitivityPruning plateau_tolerance (LOBSTER's code: 0.01; "
        "here -0.01, --quick -0.03)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="runs/psp_entropy")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.finetune_epochs is None:
        args.finetune_epochs = args.gradual_epochs
    return args


def load_data(args):
    if not datasets.fashion_mnist_available():
        sys.exit(
            "Fashion-MNIST IDX files not found in "
            f"{datasets.DEFAULT_FASHION_MNIST_DIR}; install Debian's "
            "dataset-fashion-mnist."
        )
    (x, y), (x_test, y_test) = datasets.load_fashion_mnist(allow_download=False)
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(x))[: args.train]
    n_val = len(idx) // 10  # LOBSTER: 10% of the training set held out.
    val, train = idx[:n_val], idx[n_val:]
    test_order = rng.permutation(len(x_test))
    psp_idx = test_order[: args.psp_samples]
    test_idx = test_order[: args.test_samples]
    return (
        (x[train], y[train]),
        (x[val], y[val]),
        (x_test[test_idx], y_test[test_idx]),
        (x_test[psp_idx], y_test[psp_idx]),
    )


def regularized(model):
    """Dense/Conv kernels and biases: what LOBSTER decays and prunes."""
    return [
        v
        for v in model.trainable_weights
        if v.path.split("/")[-1] in ("kernel", "bias")
    ]


def sparsity(model):
    values = [keras.ops.convert_to_numpy(v) for v in regularized(model)]
    total = sum(v.size for v in values)
    return sum(int(np.count_nonzero(v == 0)) for v in values) / total


def one_shot_prune(model, target):
    """Zeros the `target` fraction of smallest |w| (global); returns masks."""
    variables = regularized(model)
    values = [keras.ops.convert_to_numpy(v) for v in variables]
    flat = np.concatenate([np.abs(v).ravel() for v in values])
    k = int(round(target * flat.size))
    pruned_flat = np.zeros(flat.size, dtype=bool)
    pruned_flat[np.argsort(flat, kind="stable")[:k]] = True
    wheres, start = [], 0
    for variable, value in zip(variables, values):
        where = pruned_flat[start : start + value.size].reshape(value.shape)
        start += value.size
        variable.assign(np.where(where, 0.0, value))
        wheres.append(where)
    return list(zip(variables, wheres))


def new_model(weights):
    model = zoo.lenet5()
    model.set_weights(weights)
    return model


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=1000, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == y))


def psp_summary(model, x, y):
    neuron = ks.metrics.psp_entropy(model, x, y, per="neuron", batch_size=250)
    channel = ks.metrics.psp_entropy(model, x, y, per="channel", batch_size=250)
    table = {}
    for name, r in neuron.items():
        p = r["on_probability"]
        constant = np.all(p == 0, axis=1) | np.all(p == 1, axis=1)
        table[name] = {
            "mean_neuron": r["mean"],
            "mean_channel": channel[name]["mean"],
            "constant_fraction": float(constant.mean()),
            "neurons": int(r["entropy"].size),
        }
    return table, neuron


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    train, val, test, psp_data = load_data(args)
    timings = {}
    print(
        f"Budget: {len(train[0])} train / {len(val[0])} val samples, "
        f"dense warm-up {args.dense_epochs} epochs, gradual "
        f"{args.gradual_epochs} epochs (patience {args.patience}, tolerance "
        f"{args.tolerance}, plateau_tolerance {args.plateau_tolerance}), "
        f"one-shot fine-tune {args.finetune_epochs} epochs; dense control "
        f"{args.gradual_epochs} epochs; PSP on {len(psp_data[0])} test "
        f"samples; accuracy on {len(test[0])} test samples; seed {args.seed}."
    )

    t = time.perf_counter()
    dense = zoo.lenet5()
    dense.compile(keras.optimizers.SGD(0.1), LOSS, metrics=["accuracy"])
    dense.fit(
        *train,
        batch_size=100,
        epochs=args.dense_epochs,
        verbose=2,
        validation_data=val,
    )
    warm = dense.get_weights()
    timings["dense"] = time.perf_counter() - t

    t = time.perf_counter()
    gradual = new_model(warm)
    gradual.compile(
        ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.1), sensitivity="loss", decay=1e-4
        ),
        LOSS,
        metrics=["accuracy"],
    )
    logger_data = (val[0][: args.logger_samples], val[1][: args.logger_samples])
    history = gradual.fit(
        *train,
        batch_size=100,
        epochs=args.gradual_epochs,
        verbose=2,
        validation_data=val,
        callbacks=[
            ks.callbacks.SensitivityPruning(
                patience=args.patience,
                tolerance=args.tolerance,
                plateau_tolerance=args.plateau_tolerance,
                verbose=1,
            ),
            ks.callbacks.PSPEntropyLogger(logger_data),
        ],
    )
    target = sparsity(gradual)
    timings["gradual"] = time.perf_counter() - t

    t = time.perf_counter()
    one_shot = new_model(warm)
    optimizer = ks.SensitivityOptimizer(keras.optimizers.SGD(0.1), decay=0.0)
    one_shot.compile(optimizer, LOSS, metrics=["accuracy"])
    masks_lib.ensure_built(optimizer, one_shot)
    for variable, where in one_shot_prune(one_shot, target):
        masks_lib.set_flag(
            optimizer, variable, masks_lib.PRUNED, where, zero=True
        )
    no_finetune = new_model(one_shot.get_weights())
    one_shot.fit(
        *train,
        batch_size=100,
        epochs=args.finetune_epochs,
        verbose=2,
        validation_data=val,
    )
    timings["one_shot"] = time.perf_counter() - t

    t = time.perf_counter()
    dense_long = new_model(warm)
    dense_long.compile(keras.optimizers.SGD(0.1), LOSS, metrics=["accuracy"])
    dense_long.fit(
        *train,
        batch_size=100,
        epochs=args.gradual_epochs,
        verbose=2,
        validation_data=val,
    )
    timings["dense_control"] = time.perf_counter() - t

    t = time.perf_counter()
    runs = {
        "dense (warm-up)": dense,
        "dense (same epochs)": dense_long,
        "gradual (LOBSTER)": gradual,
        "one-shot + fine-tune": one_shot,
        "one-shot, no fine-tune": no_finetune,
    }
    results, psp_vectors = {}, {}
    for name, model in runs.items():
        table, vectors = psp_summary(model, *psp_data)
        s = sparsity(model)
        results[name] = {
            "accuracy": accuracy(model, *test),
            "sparsity": s,
            "compression": 1.0 / (1.0 - s),
            "layers": table,
        }
        psp_vectors[name] = {
            layer: np.round(r["entropy"], 4).tolist()
            for layer, r in vectors.items()
        }
    timings["evaluation"] = time.perf_counter() - t

    print_table(results)
    total = time.perf_counter() - start
    print(
        "Wall time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; total {total:.0f} s."
    )
    os.makedirs(args.out_dir, exist_ok=True)
    report = {
        "name": "psp_entropy_benchmark",
        "budget": {**vars(args), "wall_seconds": total, "timings": timings},
        "history": history.history,
        "runs": [
            {
                "name": n,
                "accuracy": r["accuracy"],
                "compression": r["compression"],
            }
            for n, r in results.items()
        ],
        "results": results,
        "psp_entropy": {
            n: v
            for n, v in psp_vectors.items()
            if n
            in (
                "dense (same epochs)",
                "gradual (LOBSTER)",
                "one-shot + fine-tune",
            )
        },
    }
    path = os.path.join(args.out_dir, "psp_entropy_benchmark.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, default=float)
    print(f"Report: {path}")
    for png in report_lib.write_report(path):
        print(f"Figure: {png}")
    return results


def print_table(results):
    layers = list(next(iter(results.values()))["layers"])
    header = f"{'run':<24}{'test acc':>9}{'sparsity':>10}{'compr.':>8}"
    header += "".join(f"{name + ' H':>14}" for name in layers)
    print("\nMean PSP-entropy per layer (bits; per neuron, [per channel]):")
    print(header)
    for name, r in results.items():
        line = (
            f"{name:<24}{r['accuracy']:>9.4f}{r['sparsity']:>10.2%}"
            f"{r['compression']:>7.1f}x"
        )
        for layer in layers:
            cell = r["layers"][layer]
            line += f"{cell['mean_neuron']:>7.3f} [{cell['mean_channel']:.2f}]"
        print(line)
    print("Fraction of constant neurons (never or always on) per layer:")
    for name, r in results.items():
        print(
            f"  {name:<24}"
            + "  ".join(
                f"{layer} {r['layers'][layer]['constant_fraction']:.1%}"
                for layer in layers
            )
        )


if __name__ == "__main__":
    main()
