"""Benchmark: NEq (neurons at equilibrium) on Fashion-MNIST, and what it saves.

The claims tested (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022,
https://openreview.net/forum?id=LGDfv0U7MJR, its experiments and its
random-freezing ablation): freezing the neurons at equilibrium keeps the
test accuracy of the same training without freezing while skipping part of
the backward pass, and freezing as many neurons *at random* (same
per-layer, per-epoch budget) hurts more. Beyond the paper: zeroing gradients
saves no time on a CPU or GPU, so `EquilibriumFreezing(skip_frozen_layers=
True)` stops computing the weight gradients of Dense/Conv layers whose
neurons are all frozen; we measure the wall-clock effect.

Protocol, per model (`keras_serene.app.zoo.lenet5`, and `small_resnet` with
`width=8` to fit the CPU budget), a Fashion-MNIST training subset, SGD with
momentum 0.9 and a cosine learning-rate decay to 0 (the paper's schedules
decay the rate too, which is when neurons settle), one seed for all runs
(same initial weights, same batch order):

1. `baseline`: plain training.
2. `neq`: `ks.callbacks.EquilibriumFreezing(x_train, subset=256,
   epsilon=1e-3, velocity_momentum=0.5)` (paper defaults; Conv and BN
   neurons, as the authors' code), skipping fully frozen layers.
3. `neq_no_skip`: the same with `skip_frozen_layers=False` (masks only).
4. `random`: each epoch, as many neurons per layer as `neq` froze in that
   epoch, drawn at random, frozen through the same masks.

Reported: test accuracy; mean frozen fraction and total `backprop_flops_saved`
(mean over epochs of the per-epoch share: epochs have the same number of
steps); fit wall time. Then the layer skip in isolation, on the trained
`neq` model: train-step time with some layers made non-trainable (the layers
`neq` skipped, if any were ever fully frozen; the first conv; all conv
layers) vs all trainable, on the same batches, the two compiled train
functions alternated step by step (median), so that the other load on the
shared cores hits both alike. Wall times on 2 shared cores are noisy: the
`neq` and `neq_no_skip` runs do the same work when no layer is skipped, so
their fit-time ratio shows the noise level.

Run: `python benchmarks/neq.py` (~15 min on 2 CPU cores) or
`python benchmarks/neq.py --quick` (1-2 min, numbers only indicative).
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.app import datasets  # noqa: E402
from keras_serene.core import masking as masks_lib  # noqa: E402
from keras_serene.core import neurons as neurons_lib  # noqa: E402
from keras_serene.app import zoo  # noqa: E402

FULL = {
    "lenet5": dict(train=5000, epochs=12, batch=64, lr=0.05, kwargs={}),
    "small_resnet": dict(
        train=3000, epochs=10, batch=32, lr=0.02, kwargs={"width": 8}
    ),
    "test": 5000,
    "timing_steps": 20,
    "timing_rounds": 4,
}
QUICK = {
    "lenet5": dict(train=800, epochs=3, batch=64, lr=0.05, kwargs={}),
    "small_resnet": dict(
        train=400, epochs=2, batch=32, lr=0.02, kwargs={"width": 8}
    ),
    "test": 500,
    "timing_steps": 5,
    "timing_rounds": 2,
}
RUNS = ("baseline", "neq", "neq_no_skip", "random")


class RandomFreezing(keras.callbacks.Callback):
    """Control: each epoch, freezes `counts[epoch][i]` random neurons of the
    `i`-th neuron layer (`keras_serene.core.neurons.neuron_layers` order)."""

    def __init__(self, counts, seed=0):
        super().__init__()
        self.counts = counts
        self.rng = np.random.default_rng(seed)

    def on_train_begin(self, logs=None):
        self.optimizer = masks_lib.mask_optimizer(self.model, "RandomFreezing")
        masks_lib.ensure_built(self.optimizer, self.model)
        self.layers = [
            weights for _, weights in neurons_lib.neuron_layers(self.model)
        ]

    def on_epoch_begin(self, epoch, logs=None):
        counts = self.counts[epoch] if epoch < len(self.counts) else {}
        for i, weights in enumerate(self.layers):
            size = weights[0].num_neurons
            frozen = np.zeros(size, dtype=bool)
            frozen[self.rng.choice(size, counts.get(i, 0), False)] = True
            for w in weights:
                where = np.reshape(
                    frozen, neurons_lib.neuron_shape(w.kind, w.variable.shape)
                )
                masks_lib.set_flag(
                    self.optimizer, w.variable, masks_lib.FROZEN, where
                )

    def on_train_end(self, logs=None):
        for weights in self.layers:
            for w in weights:
                masks_lib.set_flag(
                    self.optimizer, w.variable, masks_lib.FROZEN, False
                )


def _build(name, cfg, seed):
    keras.utils.set_random_seed(seed)
    model = zoo.get(name, **cfg["kwargs"])
    steps = cfg["epochs"] * int(np.ceil(cfg["train"] / cfg["batch"]))
    lr = keras.optimizers.schedules.CosineDecay(cfg["lr"], steps)
    inner = keras.optimizers.SGD(lr, momentum=0.9)
    return model, inner


def _compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def train(name, cfg, run, data, seed, args, neq_counts=None):
    (x, y), (xt, yt) = data
    model, inner = _build(name, cfg, seed)
    callbacks = []
    neq = None
    if run in ("neq", "neq_no_skip"):
        _compile(model, inner)
        neq = ks.callbacks.EquilibriumFreezing(
            x,
            subset=min(256, len(x)),
            epsilon=args.epsilon,
            include_dense=args.include_dense,
            skip_frozen_layers=run == "neq",
            seed=seed,
        )
        callbacks.append(neq)
    elif run == "random":
        _compile(model, ks.SensitivityOptimizer(inner, decay=0.0))
        callbacks.append(RandomFreezing(neq_counts, seed=seed))
    else:
        _compile(model, inner)
    keras.utils.set_random_seed(seed)  # same batch order in every run
    start = time.perf_counter()
    history = model.fit(
        x,
        y,
        batch_size=cfg["batch"],
        epochs=cfg["epochs"],
        verbose=0,
        callbacks=callbacks,
    )
    fit_s = time.perf_counter() - start
    _, accuracy = model.evaluate(xt, yt, batch_size=256, verbose=0)
    result = {"test_accuracy": float(accuracy), "fit_s": fit_s}
    if neq is not None:
        logs = history.history
        result["frozen_fraction"] = logs["frozen_fraction"]
        result["backprop_flops_saved"] = logs["backprop_flops_saved"]
        order = [la.name for la, _ in neurons_lib.neuron_layers(model)]
        result["counts"] = [
            {order.index(n): c for n, c in h["frozen"].items()}
            for h in neq.history
        ]
        result["skipped"] = [h["skipped"] for h in neq.history]
        result["layer_flops"] = {
            k: v["backprop_flops"] for k, v in neq.layer_stats.items()
        }
    return model, result


def time_skip(model, layers, x, y, cfg, steps, rounds):
    """Median train-step seconds with all layers trainable, and `layers` not.

    The two compiled train functions run alternately, step by step (the
    order flips every round), on the same batches, so that the other load on
    the machine hits both alike.
    """
    batch = cfg["batch"]
    batches = [
        (x[i : i + batch], y[i : i + batch])
        for i in range(0, steps * batch, batch)
    ]
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    functions = {}
    for key in ("skip", "all"):
        # A train function traces on its first call, reading which variables
        # are trainable then: trace each while its setting holds.
        for layer in layers:
            layer.trainable = key == "all"
        model.make_train_function(force=True)
        model.train_on_batch(*batches[0])
        functions[key] = model.train_function
    samples = {"all": [], "skip": []}
    for round_ in range(rounds):
        order = ("all", "skip") if round_ % 2 == 0 else ("skip", "all")
        for xb, yb in batches:
            for key in order:
                model.train_function = functions[key]
                start = time.perf_counter()
                model.train_on_batch(xb, yb)
                samples[key].append(time.perf_counter() - start)
    model.make_train_function(force=True)
    return {k: statistics.median(v) for k, v in samples.items()}


def _skip_timing(model, result, data, cfg, config):
    """Step times for the layers `neq` skipped, the first conv, all convs."""
    convs = [
        la.name for la in model.layers if isinstance(la, keras.layers.Conv2D)
    ]
    scenarios = [("first conv", convs[:1]), ("all convs", convs)]
    skipped = sorted({n for s in result["skipped"] for n in s})
    if skipped:
        scenarios.insert(0, ("skipped by neq", skipped))
    out = []
    for label, names in scenarios:
        timing = time_skip(
            model,
            [model.get_layer(n) for n in names],
            data[0][0],
            data[0][1],
            cfg,
            config["timing_steps"],
            config["timing_rounds"],
        )
        out.append({"label": label, "layers": names, **timing})
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--models", default="lenet5,small_resnet", help="comma separated"
    )
    parser.add_argument("--epsilon", type=float, default=1e-3)
    parser.add_argument("--include-dense", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    models = [m for m in args.models.split(",") if m]
    if not datasets.fashion_mnist_available():
        print("Fashion-MNIST IDX files not found; see keras_serene.app.datasets.")
        return 1
    (x_all, y_all), (xt_all, yt_all) = datasets.load_fashion_mnist(
        allow_download=False
    )
    print(
        "NEq benchmark ("
        + ("quick" if args.quick else "full")
        + f"), epsilon={args.epsilon}, mu=0.5, include_dense="
        f"{args.include_dense}, {config['test']} test samples. Budget:"
    )
    for name in models:
        c = config[name]
        print(
            f"  {name}{c['kwargs'] or ''}: {c['train']} train samples x "
            f"{c['epochs']} epochs, batch {c['batch']}, SGD(m=0.9) cosine "
            f"from {c['lr']}, {len(RUNS)} runs {RUNS}"
        )
    t0 = time.perf_counter()
    results = {}
    for name in models:
        cfg = config[name]
        rng = np.random.default_rng(args.seed)
        index = rng.permutation(len(x_all))[: cfg["train"]]
        data = (
            (x_all[index], y_all[index]),
            (xt_all[: config["test"]], yt_all[: config["test"]]),
        )
        out = results[name] = {}
        for run in RUNS:
            counts = out.get("neq", {}).get("counts")
            model, out[run] = train(
                name, cfg, run, data, args.seed, args, counts
            )
            print(
                f"  [{time.perf_counter() - t0:6.0f}s] {name} {run}: test "
                f"accuracy {out[run]['test_accuracy']:.4f}, fit "
                f"{out[run]['fit_s']:.1f}s",
                flush=True,
            )
            if run == "neq":
                out["skip_timing"] = _skip_timing(
                    model, out[run], data, cfg, config
                )
    _print_table(results)
    print(f"Total time {time.perf_counter() - t0:.0f}s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _print_table(results):
    print()
    print(
        f"{'model':<13} {'run':<12} {'test acc':>8} {'frozen':>7} "
        f"{'bp FLOPs saved':>14} {'fit s':>7}"
    )
    for name, out in results.items():
        neq = out["neq"]
        for run in RUNS:
            r = out[run]
            if run == "baseline":
                frozen = flops = "-"
            else:  # random uses neq's budget: same fractions by design
                frozen = f"{np.mean(neq['frozen_fraction']):.3f}"
                flops = f"{np.mean(neq['backprop_flops_saved']):.3f}"
            print(
                f"{name:<13} {run:<12} {r['test_accuracy']:>8.4f} "
                f"{frozen:>7} {flops:>14} {r['fit_s']:>7.1f}"
            )
        base = out["baseline"]["test_accuracy"]
        print(
            f"{'':<13} accuracy vs baseline: neq "
            f"{neq['test_accuracy'] - base:+.4f}, random "
            f"{out['random']['test_accuracy'] - base:+.4f}; last-epoch "
            f"frozen fraction {neq['frozen_fraction'][-1]:.3f}"
        )
        print(
            f"{'':<13} fit time neq / neq_no_skip: "
            f"{neq['fit_s'] / out['neq_no_skip']['fit_s']:.3f} (epochs "
            "with a skipped layer: "
            f"{sum(bool(s) for s in neq['skipped'])}/{len(neq['skipped'])})"
        )
        for t in out["skip_timing"]:
            print(
                f"{'':<13} train step, {t['label']} ({len(t['layers'])} "
                f"layers) non-trainable: {1e3 * t['skip']:.2f} ms vs "
                f"{1e3 * t['all']:.2f} ms (ratio {t['skip'] / t['all']:.3f})"
            )


if __name__ == "__main__":
    sys.exit(main())
