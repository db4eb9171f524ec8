"""Receding Neuron Importances: bounded BN scales, one-shot channel pruning.

Suteu & Guo, "Receding Neuron Importances for Structured Pruning",
https://arxiv.org/abs/2204.06404.

What it shows:

1. `ks.layers.BoundedBatchNormalization`: batch normalization whose scale is
   `sigmoid(w)`, so every channel's importance lies in (0, 1);
2. `ks.regularizers.RecedingImportance(strength, shift)` on `w`: the penalty
   `s (1 - ln s)` with `s = sigmoid(w + shift)` pushes unimportant channels
   towards 0 and leaves important ones alone;
3. `ks.ImportanceOptimizer` (`keras_serene.rni.importance_optimizer`): the
   authors' recipe trains the bounded scales with 10x the learning rate and
   no weight decay; the wrapper does that for any SGD;
4. `ks.prune_by_importance(model, ratio)`: the `ratio` least important
   channels of the whole network go at once (at least 3 per layer), and the
   result is a new, physically smaller model of plain Keras layers;
5. a short fine-tune of the small model, without the regulariser.

Run:
    python examples/rni.py           # Fashion-MNIST (digits if absent)
    python examples/rni.py --quick   # scikit-learn digits, seconds
"""

import argparse
import json

import keras
import numpy as np

import keras_serene as ks
from keras_serene.app import datasets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny run on digits"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--ratio", type=float, default=0.3, help="share of channels pruned"
    )
    parser.add_argument("--strength", type=float, default=1e-3)
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2)
    return parser.parse_args(argv)


def build_model(input_shape, widths, strength, shift):
    """Conv -> BoundedBN (RNI-regularised) -> ReLU blocks, GAP, logits."""
    inputs = keras.Input(input_shape)
    x = inputs
    i = 0
    for width in widths:
        if width == "M":
            x = keras.layers.MaxPooling2D(2)(x)
            continue
        i += 1
        x = keras.layers.Conv2D(
            width, 3, padding="same", use_bias=False, name=f"conv{i}"
        )(x)
        x = ks.layers.BoundedBatchNormalization(
            momentum=0.9,  # PyTorch's default, as the authors' code
            gamma_regularizer=ks.regularizers.RecedingImportance(
                strength=strength, shift=shift
            ),
            name=f"bn{i}",
        )(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="rni_cnn")


def channels(model):
    """Output channels of each convolution, by layer name."""
    return {
        layer.name: int(layer.filters)
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    }


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    name, data = datasets.load_available(small=args.quick)
    (x_train, y_train), (x_test, y_test) = data
    epochs = args.epochs or (8 if args.quick else 6)
    finetune_epochs = 2
    batch_size = 32 if name == "digits" else 100
    # Small enough for a CPU: 28x28 inputs are pooled before the wide convs.
    widths = (16, 16, "M", 32, 32) if args.quick else (16, "M", 32, "M", 64)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model = build_model(x_train.shape[1:], widths, args.strength, args.shift)
    sgd = keras.optimizers.SGD(
        0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    model.compile(
        # Bounded scales: 10x the learning rate, no weight decay.
        optimizer=ks.ImportanceOptimizer(sgd, multiplier=10.0),
        loss=loss,
        metrics=["accuracy"],
    )
    model.fit(
        **datasets.fit_arrays(x_train, y_train, batch_size, args.seed, 0.0),
        epochs=epochs,
        verbose=args.verbose,
    )
    trained_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]

    # Importance of each channel: sigmoid(w) of its bounded BN.
    importances = np.concatenate(
        [
            keras.ops.convert_to_numpy(layer.importance)
            for layer in model.layers
            if isinstance(layer, ks.layers.BoundedBatchNormalization)
        ]
    )
    counts, edges = np.histogram(importances, bins=10, range=(0.0, 1.0))
    print("\nchannel importances sigmoid(w), 10 bins over [0, 1]:")
    print("  " + " ".join(f"{c:>3}" for c in counts))

    # A short run leaves the importances spread over (0, 1) (the paper
    # trains 160 epochs, after which they are bimodal), so pruning costs
    # accuracy here and the fine-tune wins it back.
    small = ks.prune_by_importance(model, ratio=args.ratio, min_channels=3)
    print(f"\nchannels before: {channels(model)}")
    print(f"channels after:  {channels(small)}")
    small.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=loss,
        metrics=["accuracy"],
    )
    pruned_accuracy = small.evaluate(x_test, y_test, verbose=0)[1]
    print(f"\nfine-tuning the pruned model for {finetune_epochs} epochs")
    small.fit(
        **datasets.fit_arrays(x_train, y_train, batch_size, args.seed, 0.0),
        epochs=finetune_epochs,
        verbose=args.verbose,
    )
    finetuned_accuracy = small.evaluate(x_test, y_test, verbose=0)[1]

    result = {
        "dataset": name,
        "epochs": epochs,
        "ratio": args.ratio,
        "trained_accuracy": round(float(trained_accuracy), 4),
        "pruned_accuracy": round(float(pruned_accuracy), 4),
        "finetuned_accuracy": round(float(finetuned_accuracy), 4),
        "params": model.count_params(),
        "pruned_params": small.count_params(),
        "channels": channels(model),
        "pruned_channels": channels(small),
        "importance_histogram": counts.tolist(),
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
