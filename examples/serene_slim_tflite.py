"""SeReNe: prune whole neurons, slim the network, export it to LiteRT.

Tartaglione, Bragagnolo, Odierna, Fiandrotti, Grangetto, "SeReNe: Sensitivity
based Regularization of Neurons for Structured Sparsity in Neural Networks",
IEEE TNNLS 2022, https://arxiv.org/abs/2102.03773.

What it shows:

1. `sensitivity="neuron"`: one sensitivity per neuron, taken at its
   pre-activation, shared by all its weights, so insensitive neurons shrink
   as a whole. It needs an extra backward pass: train through
   `ks.SensitivityModel(model)` (training it trains `model`);
2. `ks.callbacks.SensitivityPruning(target_sparsity=0.8, structured=True)`:
   the budgeted schedule over whole neurons, a cubic ramp to 80% of the
   hidden neurons (conv channels) removed by 70% of the epochs. A removed
   neuron's incoming weights are masked; its bias stays (`ks.slim` folds its
   constant output exactly);
3. `ks.slimming_plan` (the coupled channel groups and what each keeps) and
   `ks.slim`: a new, physically smaller model computing the same outputs;
4. `ks.to_tflite` in float32 and full-integer int8 (calibrated on training
   images), both verified in the LiteRT runtime, and
   `ks.export.tflite_latency` (median single-thread invoke time).

Run:
    python examples/serene_slim_tflite.py           # Fashion-MNIST
    python examples/serene_slim_tflite.py --quick   # scikit-learn digits
    python examples/serene_slim_tflite.py --model lenet5   # conv channels
"""

import argparse
import json
import os

import keras
import numpy as np

import keras_serene as ks
from keras_serene.app import datasets
from keras_serene.app import zoo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny run on digits"
    )
    parser.add_argument(
        "--model",
        choices=["lenet300", "lenet5"],
        default="lenet300",
        help="lenet5 prunes conv channels too (slower on a CPU)",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--decay", type=float, default=1e-4, help="sensitivity decay"
    )
    parser.add_argument(
        "--target",
        type=float,
        default=0.8,
        help="fraction of the hidden neurons / channels removed",
    )
    parser.add_argument("--out", default="serene_out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2)
    return parser.parse_args(argv)


def tflite_accuracy(blob, x, y):
    """Test accuracy of a flatbuffer, run in the LiteRT interpreter."""
    (logits,) = ks.export.run_tflite(blob, [x])
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    name, data = datasets.load_available(small=args.quick)
    (x_train, y_train), (x_test, y_test) = data
    model_name = args.model
    epochs = args.epochs or (12 if args.quick else 20)
    batch_size = 32 if name == "digits" else 100
    decay = args.decay
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = zoo.get(model_name, input_shape=x_train.shape[1:], num_classes=10)
    trainer = ks.SensitivityModel(model)  # runs the extra backward pass
    trainer.compile(
        optimizer=ks.SensitivityOptimizer(
            keras.optimizers.SGD(0.05, momentum=0.9),
            sensitivity="neuron",  # = ks.sensitivity.NeuronSensitivity()
            decay=decay,
        ),
        loss=loss,
        metrics=["accuracy"],
    )
    # The size you ask for, in the epochs you have: 80% of the neurons go.
    pruning = ks.callbacks.SensitivityPruning(
        target_sparsity=args.target, structured=True, verbose=0
    )
    trainer.fit(
        **datasets.fit_arrays(x_train, y_train, batch_size, args.seed),
        epochs=epochs,
        callbacks=[pruning],
        verbose=args.verbose,
    )

    pruned = ks.strip_masks(model)  # plain Keras model, zeros baked in
    ks.summary(pruned)
    plan = ks.slimming_plan(pruned)
    print(plan)
    small = ks.slim(pruned, plan)  # a new model: dead neurons removed
    ks.summary(small)
    # The slim model computes what the pruned one does.
    gap = float(
        np.max(
            np.abs(
                pruned.predict(x_test, verbose=0)
                - small.predict(x_test, verbose=0)
            )
        )
    )
    print(f"max |pruned - slim| output difference on the test set: {gap:.2e}")

    os.makedirs(args.out, exist_ok=True)
    small.save(os.path.join(args.out, "serene_slim.keras"))
    float_blob = ks.to_tflite(
        small, os.path.join(args.out, "serene_slim_float32.tflite")
    )
    int8_blob = ks.to_tflite(
        small,
        os.path.join(args.out, "serene_slim_int8.tflite"),
        quantization="int8",
        representative_data=x_train[:200],  # calibration images
    )
    dense_blob = ks.to_tflite(
        zoo.get(model_name, input_shape=x_train.shape[1:], num_classes=10)
    )
    latency = {
        key: ks.export.tflite_latency(blob, num_threads=1) * 1e3
        for key, blob in (
            ("dense_float32", dense_blob),
            ("slim_float32", float_blob),
            ("slim_int8", int8_blob),
        )
    }
    for key, ms in latency.items():
        print(f"LiteRT latency, 1 thread, batch 1, {key}: {ms:.4f} ms")

    accuracy = {}
    for key, m in (("pruned", pruned), ("slim", small)):
        m.compile(loss=loss, metrics=["accuracy"])
        accuracy[key] = m.evaluate(x_test, y_test, verbose=0)[1]
    result = {
        "dataset": name,
        "model": model_name,
        "epochs": epochs,
        "pruned_accuracy": round(float(accuracy["pruned"]), 4),
        "slim_accuracy": round(float(accuracy["slim"]), 4),
        "slim_float32_accuracy": round(
            tflite_accuracy(float_blob, x_test, y_test), 4
        ),
        "slim_int8_accuracy": round(
            tflite_accuracy(int8_blob, x_test, y_test), 4
        ),
        "dense_params": model.count_params(),
        "slim_params": small.count_params(),
        "architecture": ks.summary(pruned, print_fn=False)["architecture"],
        "channels_removed": plan.num_removed,
        "max_output_gap": gap,
        "tflite_bytes": {
            "dense_float32": len(dense_blob),
            "slim_float32": len(float_blob),
            "slim_int8": len(int8_blob),
        },
        "latency_ms": {k: round(v, 4) for k, v in latency.items()},
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
