"""Output sensitivity (NeurIPS 2018): specific vs unspecific regularization.

Tartaglione, Lepsøy, Fiandrotti, Francini, "Learning Sparse Neural Networks
via Sensitivity-Driven Regularization", NeurIPS 2018,
https://arxiv.org/abs/1810.11764 (Eq. 4-9).

The sensitivity of the output to a parameter, `S = sum_k a_k |dy_k/dw|`,
decides how fast it decays: `w <- w - decay * w * relu(1 - S)`. The paper has
two flavours, both here as `ks.sensitivity.OutputSensitivity(mode=...)`:

- `"unspecific"`: `a_k = 1/K`, every output counts;
- `"specific"`: `a_k` is the one-hot label, only the true class's output
  counts, so a weight that only serves other classes may decay.

Both need an extra backward pass (from the outputs, not the loss), which
`ks.SensitivityModel(model)` runs; training it trains `model`. The example
trains LeNet-300-100 twice from the same initial weights, once per mode,
with the same budgeted pruning (`ks.callbacks.SensitivityPruning(
target_sparsity=0.9)`, a ramp to 90% zeros by 70% of the epochs), and
compares sparsity, alive neurons and accuracy.

Run:
    python examples/output_sensitivity.py           # Fashion-MNIST
    python examples/output_sensitivity.py --quick   # scikit-learn digits
"""

import argparse
import json

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
    parser.add_argument("--target-sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    name, data = datasets.load_available(small=args.quick)
    (x_train, y_train), (x_test, y_test) = data
    epochs = args.epochs or (8 if args.quick else 15)
    batch_size = 32 if name == "digits" else 100
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    initial = zoo.lenet300(input_shape=x_train.shape[1:]).get_weights()

    result = {"dataset": name, "epochs": epochs}
    for mode in ("unspecific", "specific"):
        print(f"\n== OutputSensitivity(mode={mode!r}) ==")
        keras.utils.set_random_seed(args.seed)  # same batches for both
        model = zoo.lenet300(input_shape=x_train.shape[1:])
        model.set_weights(initial)
        trainer = ks.SensitivityModel(model)
        trainer.compile(
            optimizer=ks.SensitivityOptimizer(
                keras.optimizers.SGD(0.05, momentum=0.9),
                sensitivity=ks.sensitivity.OutputSensitivity(mode=mode),
                decay=args.decay,
            ),
            loss=loss,
            metrics=["accuracy"],
        )
        # The budgeted schedule: a ramp to the target by 70% of the epochs.
        pruning = ks.callbacks.SensitivityPruning(
            target_sparsity=args.target_sparsity, verbose=0
        )
        trainer.fit(
            **datasets.fit_arrays(x_train, y_train, batch_size, args.seed),
            epochs=epochs,
            callbacks=[pruning],
            verbose=args.verbose,
        )
        _, accuracy = trainer.evaluate(x_test, y_test, verbose=0)
        report = ks.summary(model)
        total = report["total"]
        result[mode] = {
            "test_accuracy": round(float(accuracy), 4),
            "sparsity": round(total["sparsity"], 4),
            "compression": round(total["compression"], 2),
            "alive_neurons": total["alive_neurons"],
            "neurons": total["neurons"],
            "architecture": report["architecture"],
            "pruning_steps": len(pruning.history),
        }

    print(f"\n{'mode':<12}{'accuracy':>10}{'sparsity':>10}  architecture")
    for mode in ("unspecific", "specific"):
        r = result[mode]
        print(
            f"{mode:<12}{r['test_accuracy']:>10.4f}{r['sparsity']:>10.2%}  "
            f"{r['architecture']}"
        )
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
