"""LOBSTER: prune LeNet-300-100 by loss sensitivity, then save a plain model.

Tartaglione, Bragagnolo, Fiandrotti, Grangetto, "LOss-Based SensiTivity
rEgulaRization: towards deep sparse neural networks", Neural Networks 2022,
https://arxiv.org/abs/2011.09905.

What it shows (the user flow of keras_serene's design):

1. any Keras optimizer wrapped in `ks.SensitivityOptimizer(...,
   sensitivity="loss")`: after each step, parameters with a small loss
   gradient decay, `w <- w - decay * w * relu(1 - |dL/dw|)`;
2. `ks.callbacks.SensitivityPruning(target_sparsity=0.95)`: the budgeted
   schedule, a cubic ramp of one global magnitude threshold to 95% zeros by
   70% of the epochs (four pruning steps per epoch), held at exactly 0 by
   the masks while the rest of the epochs recover (`--plateau`: the paper's
   schedule, one bisected threshold each time the validation loss
   plateaus);
3. `ks.summary`: per-layer sparsity and alive neurons;
4. `ks.strip_masks` and `.keras`: a plain Keras model that loads without
   keras_serene.

Run:
    python examples/lobster.py           # Fashion-MNIST (digits if absent)
    python examples/lobster.py --quick   # scikit-learn digits, seconds
"""

import argparse
import json
import os

import keras

import keras_serene as ks
from keras_serene.app import datasets
from keras_serene.app import zoo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny run on digits"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--decay", type=float, default=1e-4)
    parser.add_argument("--target-sparsity", type=float, default=0.95)
    parser.add_argument(
        "--plateau",
        action="store_true",
        help="the paper's plateau + bisection schedule instead",
    )
    parser.add_argument("--out", default="lobster_out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    name, data = datasets.load_available(small=args.quick)
    (x_train, y_train), (x_test, y_test) = data
    epochs = args.epochs or (12 if args.quick else 30)
    batch_size = 32 if name == "digits" else 100

    model = zoo.lenet300(input_shape=x_train.shape[1:], num_classes=10)
    model.compile(
        # Any Keras optimizer is the inner one; the wrapper adds the decay.
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.05, momentum=0.9),
            sensitivity="loss",
            decay=args.decay,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # The budgeted schedule: the size you ask for, in the epochs you have.
    pruning = ks.callbacks.SensitivityPruning(
        target_sparsity=args.target_sparsity, verbose=0
    )
    if args.plateau:
        pruning = ks.callbacks.SensitivityPruning(
            # LOBSTER's rule (authors' code) prunes only when the val loss
            # stays >= 1% above its best for `patience` epochs, which rarely
            # happens in a short run. plateau_tolerance=-0.01 instead asks
            # for a 1% improvement every `patience` epochs.
            patience=1 if args.quick else 2,
            plateau_tolerance=-0.01,
            tolerance=0.05,
        )
    history = model.fit(
        **datasets.fit_arrays(x_train, y_train, batch_size, args.seed),
        epochs=epochs,
        callbacks=[pruning],
        verbose=args.verbose,
    )
    # The callback's figures are in the logs, one value per epoch.
    print(
        "sparsity per epoch:", [f"{s:.3f}" for s in history.history["sparsity"]]
    )

    report = ks.summary(model)
    plain = ks.strip_masks(model)  # masks baked in, no keras_serene inside
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "lobster_lenet300.keras")
    plain.save(path)

    # A process without keras_serene could do just this:
    reloaded = keras.models.load_model(path)
    reloaded.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    _, accuracy = reloaded.evaluate(x_test, y_test, verbose=0)
    total = report["total"]
    result = {
        "dataset": name,
        "epochs": epochs,
        "test_accuracy": round(float(accuracy), 4),
        "params": total["params"],
        "nonzero": total["nonzero"],
        "sparsity": round(total["sparsity"], 4),
        "compression": round(total["compression"], 2),
        "alive_neurons": total["alive_neurons"],
        "neurons": total["neurons"],
        "architecture": report["architecture"],
        "pruning_steps": len(pruning.history),
        "saved": path,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
