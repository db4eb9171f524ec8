"""tfmot's magnitude pruning, run in its own process (Keras 2 / tf_keras).

`tensorflow-model-optimization` is the baseline keras_serene is compared
with, never one of its dependencies: it only works with Keras 2, so this
script runs under `TF_USE_LEGACY_KERAS=1` in a subprocess of
`benchmarks/reproduce.py`. It trains the same architecture with
`prune_low_magnitude` and a `PolynomialDecay` schedule to `--sparsity`,
strips the wrappers and writes the weights (in Keras 3 layer order) and its
measurements to `--out` (an `.npz`), so the parent measures size, accuracy
and latency with the same code as for its own models.

    TF_USE_LEGACY_KERAS=1 python benchmarks/_tfmot_run.py --model lenet300 \
        --sparsity 0.9 --epochs 20 --out tfmot.npz
"""

import argparse
import json
import os
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras as keras  # noqa: E402


def build(name, input_shape, num_classes):
    layers = keras.layers
    if name == "lenet300":
        return keras.Sequential(
            [
                layers.Flatten(input_shape=input_shape),
                layers.Dense(300, activation="relu"),
                layers.Dense(100, activation="relu"),
                layers.Dense(num_classes),
            ]
        )
    if name == "lenet5":
        return keras.Sequential(
            [
                layers.Conv2D(
                    20, 5, activation="relu", input_shape=input_shape
                ),
                layers.MaxPooling2D(2),
                layers.Conv2D(50, 5, activation="relu"),
                layers.MaxPooling2D(2),
                layers.Flatten(),
                layers.Dense(500, activation="relu"),
                layers.Dense(num_classes),
            ]
        )
    raise ValueError(f"unknown model {name!r}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--data", required=True, help=".npz with the splits")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    data = np.load(args.data)
    x, y = data["x_train"], data["y_train"]
    model = build(args.model, x.shape[1:], int(y.max()) + 1)
    steps = int(np.ceil(0.9 * len(x) / args.batch_size)) * args.epochs
    end_step = max(1, int(0.7 * steps))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=args.sparsity,
        begin_step=0,
        end_step=end_step,
        frequency=max(1, min(100, end_step // 10)),
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=schedule
    )
    pruned.compile(
        optimizer=keras.optimizers.SGD(args.lr, momentum=args.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    pruned.fit(
        x,
        y,
        validation_split=0.1,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    seconds = time.perf_counter() - start
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    stripped.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    _, accuracy = stripped.evaluate(data["x_test"], data["y_test"], verbose=0)
    weights = stripped.get_weights()
    np.savez(args.out, *weights)
    print(
        json.dumps(
            {
                "accuracy": float(accuracy),
                "train_seconds": seconds,
                "tf_keras": keras.__version__,
                "tfmot": tfmot.__version__,
                "tensorflow": tf.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
