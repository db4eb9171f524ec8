"""NEq: stop updating the neurons that reached equilibrium.

Bragagnolo, Tartaglione, Grangetto, "To update or not to update? Neurons at
equilibrium in deep models", NeurIPS 2022, https://arxiv.org/abs/2207.09455
(Sec. 3).

After each epoch `ks.callbacks.EquilibriumFreezing` runs a fixed subset of
inputs through the model, compares every neuron's outputs with the previous
epoch's (cosine similarity `phi`), and freezes for the next epoch the neurons
whose velocity `v = dphi - mu * v` is below `epsilon`: their weights are not
updated (the model is compiled with `ks.MaskingOptimizer` around the plain
SGD: it holds the masks), and a layer whose neurons are all frozen is not
even back-propagated. Each epoch's logs get `frozen_fraction` (share of
neurons frozen during the epoch) and `backprop_flops_saved` (share of the
backward FLOPs spent on frozen neurons).

The example trains LeNet-5 twice from the same initial weights, plainly and
with NEq, and compares test accuracy, the backward work NEq skipped and the
wall time. Every Conv channel and Dense unit but the output layer's is a
neuron. As the authors do, the probe subset (1% of the training images) is
held out of the training data. The learning rate decays (cosine), as in the
paper's schedules: neurons settle as it shrinks, and NEq freezes more and
more of them. To stay a few minutes on a CPU, the default run trains on
12,000 Fashion-MNIST images (`--train-samples 0` for all 60,000).

Run:
    python examples/neq.py           # Fashion-MNIST (digits if absent)
    python examples/neq.py --quick   # scikit-learn digits, seconds
"""

import argparse
import json
import time

import keras
import numpy as np

import keras_serene as ks
from keras_serene.app import datasets
from keras_serene.app import zoo
from keras_serene.core.masking_optimizer import MaskingOptimizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny run on digits"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--epsilon", type=float, default=1e-3, help="equilibrium threshold"
    )
    parser.add_argument(
        "--train-samples",
        type=int,
        default=12000,
        help="Fashion-MNIST training images used (0: all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2)
    return parser.parse_args(argv)


def train(x, y, initial, callbacks, epochs, batch_size, seed, verbose):
    """LeNet-5 from `initial` weights, SGD + momentum, cosine lr decay."""
    model = zoo.lenet5(input_shape=x.shape[1:])
    model.set_weights(initial)
    steps = epochs * -(-len(x) // batch_size)
    learning_rate = keras.optimizers.schedules.CosineDecay(0.01, steps)
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
    if callbacks:  # NEq sets its FROZEN bits in the masking layer
        optimizer = MaskingOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        **datasets.fit_arrays(x, y, batch_size, seed, 0.0),
        epochs=epochs,
        callbacks=callbacks,
        verbose=verbose,
    )
    history.seconds = time.perf_counter() - start
    return model, history


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    name, data = datasets.load_available(small=args.quick)
    (x_train, y_train), (x_test, y_test) = data
    # The probe subset: 1% of the training images (at least 64), held out.
    n_probe = max(64, len(x_train) // 100)
    x_probe = x_train[:n_probe]
    x_train, y_train = x_train[n_probe:], y_train[n_probe:]
    if name == "fashion_mnist" and args.train_samples:
        x_train = x_train[: args.train_samples]
        y_train = y_train[: args.train_samples]
    epochs = args.epochs or (8 if args.quick else 10)
    batch_size = 32 if name == "digits" else 100
    initial = zoo.lenet5(input_shape=x_train.shape[1:]).get_weights()

    fit_kwargs = dict(
        epochs=epochs,
        batch_size=batch_size,
        seed=args.seed,
        verbose=args.verbose,
    )

    print("== plain SGD ==")
    keras.utils.set_random_seed(args.seed)  # same batches for both runs
    plain, plain_history = train(x_train, y_train, initial, [], **fit_kwargs)
    print("\n== SGD + EquilibriumFreezing (NEq) ==")
    neq = ks.callbacks.EquilibriumFreezing(
        x_probe,  # held out of training, as the authors' 1% subset
        epsilon=args.epsilon,
        velocity_momentum=0.5,
        verbose=1,
    )
    keras.utils.set_random_seed(args.seed)
    model, history = train(x_train, y_train, initial, [neq], **fit_kwargs)

    frozen = history.history["frozen_fraction"]
    saved = history.history["backprop_flops_saved"]
    skipped = history.history["backprop_flops_skipped"]
    print(
        f"\n{'epoch':>5}{'frozen_fraction':>17}{'backprop_flops_saved':>22}"
        f"{'backprop_flops_skipped':>24}"
    )
    for epoch, row in enumerate(zip(frozen, saved, skipped), start=1):
        print(f"{epoch:>5}{row[0]:>17.3f}{row[1]:>22.3f}{row[2]:>24.3f}")
    print("last epoch, per layer:")
    for layer, stats in neq.layer_stats.items():
        print(f"  {layer}: {stats['frozen']}/{stats['neurons']} frozen")

    accuracy = {}
    for key, m in (("plain", plain), ("neq", model)):
        accuracy[key] = round(
            float(m.evaluate(x_test, y_test, verbose=0)[1]), 4
        )
    result = {
        "dataset": name,
        "epochs": epochs,
        "train_samples": len(x_train),
        "plain_accuracy": accuracy["plain"],
        "neq_accuracy": accuracy["neq"],
        "frozen_fraction": [round(float(f), 4) for f in frozen],
        "backprop_flops_saved": [round(float(s), 4) for s in saved],
        "mean_backprop_flops_saved": round(float(np.mean(saved)), 4),
        "backprop_flops_skipped": [round(float(s), 4) for s in skipped],
        "probe_samples": n_probe,
        "wall_time_ratio": round(history.seconds / plain_history.seconds, 3),
        "neurons": sum(s["neurons"] for s in neq.layer_stats.values()),
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()
