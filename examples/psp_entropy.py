"""PSP-entropy: how class-specific each neuron's on/off state becomes.

Tartaglione, Bragagnolo, Grangetto, "Pruning artificial neural networks: a way
to find well-generalizing, high-entropy sharp minima", ICANN 2020,
https://arxiv.org/abs/2004.14765.

A neuron's post-synaptic potential (PSP) is its pre-activation `z`. Per class
`k`, `p_ik` is the share of that class's samples for which neuron `i` is on
(`z > 0`); its PSP-entropy is `H_i = sum_k H(p_ik)` in bits. A low `H_ik`
means the neuron is reliably on (or off) for class `k`. The paper uses it to
compare pruning methods (gradual, sensitivity-based pruning keeps higher
entropy than one-shot magnitude pruning; `benchmarks/psp_entropy.py` runs
that comparison).

What it shows:

1. `ks.metrics.psp_entropy(model, x, y)`: per-layer `H_i`, before and after
   training;
2. `ks.callbacks.PSPEntropyLogger`: the per-layer mean in the training logs
   (`history.history["psp_entropy/conv1"]`, ...);
3. `keras_serene.app.plots` (matplotlib): a histogram PNG of `H_i` per layer,
   initial vs trained, and the training curves.

Run:
    python examples/psp_entropy.py           # Fashion-MNIST (digits if absent)
    python examples/psp_entropy.py --quick   # scikit-learn digits, seconds
"""

import argparse
import json
import os

import keras

import keras_serene as ks
from keras_serene.app import datasets
from keras_serene.app import plots
from keras_serene.app import zoo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny run on digits"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", default="psp_entropy_out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    name, data = datasets.load_available(small=args.quick)
    (x_train, y_train), (x_test, y_test) = data
    epochs = args.epochs or (5 if args.quick else 6)
    batch_size = 32 if name == "digits" else 100
    # Hold out the last 10% of the training set for the logger.
    n_val = len(x_train) // 10
    x_val, y_val = x_train[-n_val:], y_train[-n_val:]
    x_fit, y_fit = x_train[:-n_val], y_train[:-n_val]
    # A few thousand test samples are plenty for the class frequencies.
    x_probe, y_probe = x_test[:2000], y_test[:2000]

    model = zoo.lenet5(input_shape=x_train.shape[1:])
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # Every Dense/Conv layer by default; `per="neuron"` (the authors' code)
    # counts every element of a conv output map as one neuron.
    initial = ks.metrics.psp_entropy(model, x_probe, y_probe)
    logger = ks.callbacks.PSPEntropyLogger((x_val, y_val), frequency=1)
    history = model.fit(
        **datasets.fit_arrays(x_fit, y_fit, batch_size, args.seed, 0.0),
        validation_data=(x_val, y_val),
        epochs=epochs,
        callbacks=[logger],
        verbose=args.verbose,
    )
    trained = ks.metrics.psp_entropy(model, x_probe, y_probe)

    print(f"\n{'layer':<8}{'neurons':>9}{'initial H':>11}{'trained H':>11}")
    for layer, r in trained.items():
        print(
            f"{layer:<8}{r['entropy'].size:>9}"
            f"{initial[layer]['mean']:>11.3f}{r['mean']:>11.3f}"
        )
    print("logged per epoch (validation split):")
    for key, values in history.history.items():
        if key.startswith("psp_entropy/"):
            print(f"  {key}: " + " ".join(f"{v:.3f}" for v in values))

    os.makedirs(args.out, exist_ok=True)
    histogram = os.path.join(args.out, "psp_entropy_histogram.png")
    plots.plot_psp_entropy(
        {"initial": initial, "trained": trained},
        path=histogram,
        title=f"PSP-entropy of LeNet-5 neurons on {name}",
    )
    curves = os.path.join(args.out, "training_curves.png")
    plots.plot_history(history, path=curves)
    print(f"wrote {histogram} and {curves}")

    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    result = {
        "dataset": name,
        "epochs": epochs,
        "test_accuracy": round(float(accuracy), 4),
        "initial_mean_entropy": {
            k: round(v["mean"], 4) for k, v in initial.items()
        },
        "trained_mean_entropy": {
            k: round(v["mean"], 4) for k, v in trained.items()
        },
        "neurons": {k: int(v["entropy"].size) for k, v in trained.items()},
        "logged": {
            k: [round(float(v), 4) for v in values]
            for k, values in history.history.items()
            if k.startswith("psp_entropy/")
        },
        "histogram_png": histogram,
        "curves_png": curves,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
