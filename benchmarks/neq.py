"""Benchmark: NEq on Fashion-MNIST: accuracy, backprop work saved, wall time.

The claims tested (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022,
arXiv 2207.09455, its experiments and its random-freezing ablation): freezing
the neurons at equilibrium keeps the test accuracy of the same training
without freezing while skipping part of the backward pass, and freezing as
many neurons *at random* (same per-layer, per-epoch budget) hurts more. And
ours: NEq must save wall-clock time, not only FLOPs on paper.

Protocol, per model (`keras_serene.app.zoo.lenet5`, `small_resnet`) and seed:
SGD with momentum 0.9 and a step learning-rate decay (/10 at 40% and 70% of
the epochs; `--schedule cosine` for a cosine decay to 0: the paper's
schedules decay the rate, which is when neurons settle), the same initial
weights and the same batch order in every run, the probe subset (1% of the
training images, at least 256) held out of the training data:

1. `baseline`: plain SGD.
2. `neq`: `ks.MaskingOptimizer(SGD)` + `ks.callbacks.EquilibriumFreezing`
   with its defaults (every Dense/Conv/BN layer but the output one,
   epsilon 1e-3, mu 0.5, fully frozen layers skipped).
3. `neq_faithful`: the same with `MaskingOptimizer(mask_gradients=True)`
   (the authors' MaskedSGD: a frozen entry's momentum decays).
4. `neq_skip`: `neq` with `skip_threshold` (`--skip-threshold`, default
   0.5, ours): a Dense/Conv layer with that fraction of its neurons at
   equilibrium is frozen whole and skipped (on CPU only a skipped layer
   saves time; `benchmarks/neq_partial.py`); `--forced-epochs K` lets
   such a layer's unsettled neurons train again after K epochs.
5. `random`: each epoch, as many neurons per layer as the first NEq run
   of the list (`neq`, else `neq_faithful`, else `neq_skip`) froze in that
   epoch, drawn at random, frozen through the same masks (and skipped the
   same way when a whole layer is drawn).

Interleaved timing: the fits run in one thread each that take turns epoch
by epoch (one runs at a time, A1 B1 C1 D1 A2 ...), so the load of the shared
machine drifts over all runs alike; a run's time is the sum of its own turns
(its `on_train_begin` and every epoch, NEq's probe included; compiles
included), on the wall clock and on the process CPU clock (only one fit runs
at a time, so the process's CPU time in a turn is that run's; on a machine
shared with other jobs it is the steadier figure). Reported: test accuracy,
mean `backprop_flops_saved` over epochs (masked work, on paper), mean
`backprop_flops_skipped` (work not computed: skipped layers), mean frozen
fraction, wall and CPU time and their ratios to `baseline`, the ratio of
the steady wall times (`st. x`: an epoch the machine stalled is counted
at the usual wall-to-CPU ratio of the seed's turns: `steady_wall`),
epochs with a skipped layer, NEq's probe time per epoch
(`probe_seconds`), and the goals (NEq <= 1.05x baseline; <= 0.85x where
it saves >= 30% of backprop FLOPs; accuracy within 0.3 points of baseline
and above random).

Run: `python benchmarks/neq.py` (LeNet-5 on 5,000 and the ResNet on 2,500
Fashion-MNIST images, 10 epochs, seeds 0 and 1: ~35 min on 2 busy CPU
cores); `--train 0 --epochs E` for the full training set (59,400 images and
the 600 probe images held out), `--runs baseline,neq` for the overhead alone,
`--quick` for a smoke run, `--report JSON` to print the tables of a run
saved with `--json`.
"""

import argparse
import json
import os
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.app import datasets  # noqa: E402
from keras_serene.app import zoo  # noqa: E402
from keras_serene.core import masking as masks_lib  # noqa: E402
from keras_serene.core import neurons as neurons_lib  # noqa: E402
from keras_serene.core.masking_optimizer import MaskingOptimizer  # noqa: E402
from keras_serene.neq.layer_skip import LayerSkip  # noqa: E402

#: Default budget per model, sized for ~45 min on 2 CPU cores shared with
#: other jobs (`--train 0 --epochs 30` runs the full training set).
MODELS = {
    "lenet5": dict(lr=0.05, kwargs={}, train=5000, epochs=10),
    "small_resnet": dict(lr=0.05, kwargs={"width": 8}, train=2500, epochs=10),
}


def step_decay(lr, steps_per_epoch, epochs):
    """lr for the first 40% of the epochs, lr/10 to 70%, lr/100 after
    (the paper's step schedules: neurons settle after each drop)."""
    bounds = [round(epochs * f) * steps_per_epoch for f in (0.4, 0.7)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        bounds, [lr, lr / 10, lr / 100]
    )


RUNS = ("baseline", "neq", "neq_faithful", "neq_skip", "random")


class RandomFreezing(keras.callbacks.Callback):
    """Control: each epoch freezes `counts[epoch][i]` random neurons of the
    i-th neuron layer (NEq's budget), skipping a layer drawn whole, as NEq
    does."""

    def __init__(self, counts, seed=0):
        super().__init__()
        self.counts = counts
        self.rng = np.random.default_rng(seed)

    def on_train_begin(self, logs=None):
        self.optimizer = masks_lib.mask_optimizer(self.model, "RandomFreezing")
        masks_lib.ensure_built(self.optimizer, self.model)
        self.layers = list(neurons_lib.neuron_layers(self.model))
        self.skip = LayerSkip(self.model)
        self.skip.start()
        #: Per epoch: the positions (in `neuron_layers` order) skipped.
        self.skipped = []

    def on_epoch_begin(self, epoch, logs=None):
        counts = self.counts[epoch] if epoch < len(self.counts) else {}
        whole = []
        for index, (layer, weights) in enumerate(self.layers):
            size = weights[0].num_neurons
            count = counts.get(index, 0)
            frozen = np.zeros(size, dtype=bool)
            frozen[self.rng.choice(size, count, replace=False)] = True
            for w in weights:
                where = np.reshape(
                    frozen, neurons_lib.neuron_shape(w.kind, w.variable.shape)
                )
                masks_lib.set_flag(
                    self.optimizer, w.variable, masks_lib.FROZEN, where
                )
            if count == size and len(weights) == len(layer.trainable_variables):
                whole.append(layer)
        self.skip.skip(whole)
        self.skipped.append(
            sorted(i for i, (la, _) in enumerate(self.layers) if la in whole)
        )

    def on_epoch_end(self, epoch, logs=None):
        self.skip.restore()

    def on_train_end(self, logs=None):
        self.skip.restore()
        for _, weights in self.layers:
            for w in weights:
                masks_lib.set_flag(
                    self.optimizer, w.variable, masks_lib.FROZEN, False
                )


class Baton:
    """Lets one fit thread run at a time, round robin, epoch by epoch."""

    def __init__(self, names):
        self.order = list(names)
        self.turn = 0
        self.cond = threading.Condition()
        self.spent = {n: 0.0 for n in names}
        self.cpu = {n: 0.0 for n in names}
        self.turns = {n: [] for n in names}
        self.cpu_turns = {n: [] for n in names}
        self.start = {}
        self.cpu_start = {}
        self.arrived = set()

    def arrive(self, name):
        """Waits until every fit reached `on_train_begin`: the others'
        set-up (model building, `fit`'s prologue) must not run inside the
        first run's first turn, on its clocks."""
        with self.cond:
            self.arrived.add(name)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.arrived >= set(self.order))

    def take(self, name):
        with self.cond:
            self.cond.wait_for(lambda: self.order[self.turn] == name)
        self.start[name] = time.perf_counter()
        self.cpu_start[name] = time.process_time()

    def give(self, name):
        self.turns[name].append(time.perf_counter() - self.start[name])
        self.spent[name] += self.turns[name][-1]
        self.cpu_turns[name].append(time.process_time() - self.cpu_start[name])
        self.cpu[name] += self.cpu_turns[name][-1]
        with self.cond:
            self.turn = (self.order.index(name) + 1) % len(self.order)
            self.cond.notify_all()

    def leave(self, name):
        """`name` is done: drops it from the round."""
        with self.cond:
            current = self.order[self.turn]
            index = self.order.index(name)
            self.order.pop(index)
            if self.order:
                self.turn = (
                    index % len(self.order)
                    if current == name
                    else self.order.index(current)
                )
            self.cond.notify_all()


class Take(keras.callbacks.Callback):
    """First callback: waits for the run's turn (train begin, each epoch)."""

    def __init__(self, baton, name):
        super().__init__()
        self.baton, self.name, self.held = baton, name, False

    def on_train_begin(self, logs=None):
        self.baton.arrive(self.name)
        self.baton.take(self.name)
        self.held = True

    def on_epoch_begin(self, epoch, logs=None):
        if not self.held:
            self.baton.take(self.name)
            self.held = True


class Give(keras.callbacks.Callback):
    """Last callback: hands the turn on after each epoch."""

    def __init__(self, take):
        super().__init__()
        self.take = take

    def on_epoch_end(self, epoch, logs=None):
        self.take.held = False
        self.take.baton.give(self.take.name)


def _model(name, cfg, seed, steps_per_epoch, run, schedule):
    keras.utils.set_random_seed(seed)
    model = zoo.get(name, **cfg["kwargs"])
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # PyTorch's BN momentum (the authors' code): Keras's 0.99 leaves
            # the moving statistics far from the data after a few hundred
            # steps, and test accuracy (inference mode) near chance.
            layer.momentum = 0.9
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            cfg["lr"], steps_per_epoch * cfg["epochs"]
        )
    else:
        lr = step_decay(cfg["lr"], steps_per_epoch, cfg["epochs"])
    optimizer = keras.optimizers.SGD(lr, momentum=0.9)
    if run != "baseline":
        optimizer = MaskingOptimizer(
            optimizer, mask_gradients=run == "neq_faithful"
        )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def run_seed(name, cfg, data, seed, args):
    """The runs of one model and seed, interleaved epoch by epoch."""
    (x, y), (xp,), (xt, yt) = data
    epochs = cfg["epochs"]
    steps_per_epoch = int(np.ceil(len(x) / args.batch))
    out = {}
    neq_counts = []  # filled by the `followed` run epoch by epoch
    runs = [r for r in RUNS if r in args.runs.split(",")]
    followed = next((r for r in runs if r.startswith("neq")), None)

    class Counts(keras.callbacks.Callback):
        """The followed run's per-layer counts, keyed by position in
        `neuron_layers` order: the random run's model has other automatic
        layer names."""

        def on_epoch_end(self, epoch, logs=None):
            order = [la.name for la, _ in neurons_lib.neuron_layers(self.model)]
            frozen = neq[followed].history[-1]["frozen"]
            neq_counts.append({order.index(n): c for n, c in frozen.items()})

    neq = {}
    baton = Baton(runs)
    jobs = {}
    for run in runs:
        model = _model(name, cfg, seed, steps_per_epoch, run, args.schedule)
        take = Take(baton, run)
        callbacks = [take]
        if run.startswith("neq"):
            threshold = args.skip_threshold if run == "neq_skip" else 1.0
            neq[run] = ks.callbacks.EquilibriumFreezing(
                xp,
                epsilon=args.epsilon,
                seed=seed,
                skip_threshold=threshold,
                forced_epochs=args.forced_epochs if threshold < 1.0 else None,
            )
            callbacks.append(neq[run])
            if run == followed:
                callbacks.append(Counts())
        elif run == "random":
            # neq_counts grows as the followed run goes: its epoch runs
            # first (RUNS lists every NEq run before `random`).
            random_freezing = RandomFreezing(neq_counts, seed)
            callbacks.append(random_freezing)
        callbacks.append(Give(take))
        jobs[run] = (
            model,
            callbacks,
            datasets.shuffled_batches(x, y, args.batch, seed),
        )

    def work(run):
        model, callbacks, dataset = jobs[run]
        try:
            history = model.fit(
                dataset,
                epochs=epochs,
                verbose=0,
                callbacks=callbacks,
                shuffle=False,  # the dataset shuffles, seeded
            )
            out[run] = {"history": history.history}
        finally:
            if callbacks[0].held:  # an error inside a turn
                baton.spent[run] += time.perf_counter() - baton.start[run]
            baton.leave(run)

    threads = [threading.Thread(target=work, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for run in runs:
        model = jobs[run][0]
        _, accuracy = model.evaluate(xt, yt, batch_size=512, verbose=0)
        r = out[run]
        r["test_accuracy"] = float(accuracy)
        r["time_s"] = baton.spent[run]
        r["cpu_s"] = baton.cpu[run]
        r["turn_s"] = [round(t, 3) for t in baton.turns[run]]
        r["cpu_turn_s"] = [round(t, 3) for t in baton.cpu_turns[run]]
        logs = r.pop("history")
        if run in neq:
            r["flops_saved"] = logs["backprop_flops_saved"]
            r["flops_skipped"] = logs["backprop_flops_skipped"]
            r["frozen_fraction"] = logs["frozen_fraction"]
            r["skipped_epochs"] = sum(
                bool(h["skipped"]) for h in neq[run].history
            )
            r["train_functions_made"] = neq[run].train_functions_made
            r["frozen_by_layer"] = [h["frozen"] for h in neq[run].history]
            r["skipped_by_epoch"] = [h["skipped"] for h in neq[run].history]
            r["probe_s"] = [h["probe_seconds"] for h in neq[run].history]
    if "random" in out and followed is not None:
        out["random"]["follows"] = followed
        out["random"]["flops_saved"] = out[followed]["flops_saved"]
        out["random"]["frozen_fraction"] = out[followed]["frozen_fraction"]
        order = [
            la.name for la, _ in neurons_lib.neuron_layers(jobs[followed][0])
        ]
        followed_skips = [
            sorted(order.index(n) for n in names)
            for names in out[followed]["skipped_by_epoch"]
        ]
        random_skips = random_freezing.skipped
        out["random"]["skipped_epochs"] = sum(bool(s) for s in random_skips)
        if random_skips == followed_skips:  # the same layers: the same work
            out["random"]["flops_skipped"] = out[followed]["flops_skipped"]
    return out


def warm_up(x, y):
    """One tiny untimed NEq fit: the process's one-time costs (imports,
    first traces of shared functions) must not land on the first timed run."""
    keras.utils.set_random_seed(0)
    model = zoo.lenet5()
    model.compile(
        optimizer=MaskingOptimizer(keras.optimizers.SGD(0.01)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    neq = ks.callbacks.EquilibriumFreezing(x[:256], epsilon=10.0)
    model.fit(x[:512], y[:512], epochs=3, verbose=0, callbacks=[neq])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="lenet5,small_resnet")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help="baseline and one neq run at least (random follows the first)",
    )
    parser.add_argument(
        "--train", type=int, default=None, help="images (0: all 59,400)"
    )
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epsilon", type=float, default=1e-3)
    parser.add_argument("--skip-threshold", type=float, default=0.5)
    parser.add_argument(
        "--forced-epochs",
        type=int,
        default=None,
        help="neq_skip's forced_epochs (default: None, frozen for good)",
    )
    parser.add_argument(
        "--schedule", choices=("step", "cosine"), default="step"
    )
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument(
        "--report", default=None, help="print the tables of a --json file"
    )
    args = parser.parse_args(argv)
    names = args.runs.split(",")
    if (
        "baseline" not in names
        or not any(n.startswith("neq") for n in names)
        or set(names) - set(RUNS)
    ):
        parser.error(
            f"--runs must name baseline and a neq run, from {','.join(RUNS)}"
        )
    if args.report:
        with open(args.report) as f:
            _print_table(json.load(f)["results"])
        return 0
    if args.quick:
        args.train, args.test, args.epochs = 1000, 500, 3
    if not datasets.fashion_mnist_available():
        print(
            "Fashion-MNIST IDX files not found; see keras_serene.app.datasets."
        )
        return 1
    (x_all, y_all), (xt_all, yt_all) = datasets.load_fashion_mnist(
        allow_download=False
    )
    warm_up(x_all, y_all)
    t0 = time.perf_counter()
    results = {}
    for name in [m for m in args.models.split(",") if m]:
        cfg = dict(MODELS[name])
        if args.train is not None:
            cfg["train"] = args.train
        if args.epochs is not None:
            cfg["epochs"] = args.epochs
        for seed in [int(s) for s in args.seeds.split(",")]:
            rng = np.random.default_rng(seed)
            order = rng.permutation(len(x_all))
            n_probe = max(256, len(x_all) // 100)
            probe, train = order[:n_probe], order[n_probe:]
            if cfg["train"]:
                train = train[: cfg["train"]]
            data = (
                (x_all[train], y_all[train]),
                (x_all[probe],),
                (xt_all[: args.test], yt_all[: args.test]),
            )
            results[f"{name}/seed{seed}"] = run_seed(
                name, cfg, data, seed, args
            )
            setup = (
                f"{name}{cfg['kwargs'] or ''}: {len(train)} training images "
                f"(probe of {n_probe} held out), {cfg['epochs']} epochs"
            )
            print(
                f"[{time.perf_counter() - t0:6.0f}s] {setup}, seed {seed} done",
                flush=True,
            )
            _print_table({f"{name}/seed{seed}": results[f"{name}/seed{seed}"]})
            if args.json:  # after every seed: a partial run keeps its data
                with open(args.json, "w") as f:
                    json.dump({"args": vars(args), "results": results}, f)
    print(
        f"\nNEq benchmark: {args.test} test images, batch {args.batch}, "
        f"SGD(momentum 0.9), {args.schedule} lr decay, epsilon "
        f"{args.epsilon}, runs "
        "interleaved epoch by epoch (setups above).\n"
    )
    _print_table(results)
    print(f"\nTotal time {time.perf_counter() - t0:.0f}s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


def _print_table(results):
    print(
        f"{'model/seed':<20} {'run':<13} {'test acc':>8} {'bp FLOPs':>8} "
        f"{'skipped':>7} {'frozen':>7} {'wall s':>7} {'x base':>7} "
        f"{'cpu s':>7} {'x base':>7} {'st. x':>6} {'skip ep':>7} "
        f"{'probe s/ep':>10}"
    )
    goals = []
    for key, out in results.items():
        base = out["baseline"]
        typical = typical_ratio({r: out[r] for r in RUNS if r in out})
        for run in [r for r in RUNS if r in out]:
            r = out[run]
            flops = np.mean(r["flops_saved"]) if "flops_saved" in r else 0.0
            skipped = np.mean(r.get("flops_skipped", [0.0]))
            frozen = (
                np.mean(r["frozen_fraction"]) if "frozen_fraction" in r else 0
            )
            print(
                f"{key:<20} {run:<13} {r['test_accuracy']:>8.4f} "
                f"{flops:>8.3f} {skipped:>7.3f} {frozen:>7.3f} "
                f"{r['time_s']:>7.1f} "
                f"{r['time_s'] / base['time_s']:>7.3f} {r['cpu_s']:>7.1f} "
                f"{r['cpu_s'] / base['cpu_s']:>7.3f} "
                f"{_steady_ratio(r, base, typical):>6} "
                f"{r.get('skipped_epochs', '-'):>7} "
                + (
                    f"{np.mean(r['probe_s']):>10.3f}"
                    if "probe_s" in r
                    else f"{'-':>10}"
                )
            )
        for run in [r for r in RUNS if r.startswith("neq") and r in out]:
            goals += _goals(
                f"{key} {run}", out[run], base, out.get("random"), typical
            )
    print(
        "\nGoals (each NEq run), on wall time, CPU time and the steady wall "
        "time (`st. x`: stalls out): time <= 1.05x | "
        "time <= 0.85x if >= 30% FLOPs saved | accuracy within 0.3 points "
        "of baseline | accuracy > random"
    )
    for key, *met in goals:
        words = [
            "n/a" if m is None else ("met" if m else "MISSED") for m in met
        ]
        print(f"  {key:<36} " + " | ".join(words))


def typical_ratio(runs):
    """The median wall-to-CPU ratio of every turn of `runs` (the runs of
    one seed, interleaved on the same machine): about 0.6 on 2 cores.
    None for runs saved before the CPU time of each turn was kept."""
    if any("cpu_turn_s" not in r for r in runs.values()):
        return None
    return float(
        np.median(
            [
                w / c
                for r in runs.values()
                for w, c in zip(r["turn_s"], r["cpu_turn_s"])
            ]
        )
    )


def steady_wall(run, typical):
    """The run's wall time with the machine's stalls taken out.

    A shared virtual machine sometimes stalls a turn for tens of seconds
    with its CPU time unchanged (one 7 s epoch took 67 s, on 12 s of CPU
    time). Otherwise a turn's wall-to-CPU ratio is steady (`typical`, over
    all runs of the seed): a turn above 1.5x that is counted at `typical`
    times its CPU time instead.
    """
    wall = np.asarray(run["turn_s"], dtype=float)
    cpu = np.asarray(run["cpu_turn_s"], dtype=float)
    stalled = wall > 1.5 * typical * cpu
    return float(np.where(stalled, typical * cpu, wall).sum())


def _steady_ratio(run, base, typical):
    if typical is None:
        return "-"
    return f"{steady_wall(run, typical) / steady_wall(base, typical):.3f}"


def _goals(key, neq, base, random, typical):
    """The issue's four goals of one NEq run, on the three clocks."""
    flops = float(np.mean(neq["flops_saved"]))
    rows = []
    clocks = {
        "time": neq["time_s"] / base["time_s"],
        "cpu": neq["cpu_s"] / base["cpu_s"],
        "steady": None
        if typical is None
        else steady_wall(neq, typical) / steady_wall(base, typical),
    }
    for clock, ratio in clocks.items():
        if ratio is None:
            continue
        rows.append(
            (
                f"{key} {clock}",
                ratio <= 1.05,
                ratio <= 0.85 if flops >= 0.30 else None,
                abs(neq["test_accuracy"] - base["test_accuracy"]) <= 0.003,
                neq["test_accuracy"] > random["test_accuracy"]
                if random is not None
                else None,
            )
        )
    return rows


if __name__ == "__main__":
    sys.exit(main())
