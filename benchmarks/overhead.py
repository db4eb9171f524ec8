"""Benchmark: train-step overhead of the sensitivity estimators and of tfmot.

What it costs to train with each regularizer, as a ratio of plain SGD's
train-step time on the same model, the same data and the same batch:

- `masking`, `masking_grads`: `ks.MaskingOptimizer(SGD)` alone, the masking
  layer every keras_serene optimizer builds on (what NEq costs per step),
  and with `mask_gradients=True` (the NEq authors' MaskedSGD semantics);
- `lobster`: `ks.SensitivityOptimizer(SGD, sensitivity="loss")` (LOBSTER,
  arXiv 2011.09905: the training gradient is reused; goal <= 1.10x);
- `output`: NeurIPS 2018 output sensitivity (arXiv 1810.11764), one extra
  backward pass through `ks.SensitivityModel` (goal <= 1.7x);
- `neuron`: SeReNe's lower-bound neuron sensitivity (arXiv 2102.03773), one
  extra backward pass to the pre-activations (goal <= 1.7x);
- `neuron_loss`: SeReNe's NeuronLOBSTER variant (no extra pass);
- `output_exact`: the exact output sensitivity, K = 10 extra passes;
- `tfmot_90`, `tfmot_98`: `tensorflow_model_optimization`'s
  `prune_low_magnitude` wrapper at 90% and 98% constant sparsity, against
  its own plain-SGD baseline, in a separate process (`TF_USE_LEGACY_KERAS=1`,
  `tf_keras`), on LeNet-300 only (reference: about 1.13x and 1.5x).

Models: `keras_serene.app.zoo.lenet300` and `lenet5` (28x28x1, 10 classes,
logits), batch 100, random inputs (the step time does not depend on the
values). Timing: each variant's `fit` is compiled once (warm-up), then the
variants are timed in turn, interleaved, `--repeats` times; one timing is
the slope `(T(steps + 1) - T(1)) / steps` of two `fit` calls, so `fit`'s
fixed cost per call cancels out (`output_exact` runs `steps / 10` steps).
The table reports the median time per step and its ratio to SGD's median.
Also printed: the memory of the masks per parameter
(`keras_serene.core.masking.mask_bytes`).

Run: `python benchmarks/overhead.py --quick` (a few minutes on 2 CPU cores)
or without `--quick` for more steps and repeats. Timings on a shared
machine are noisy; the ratios of interleaved medians are the figure to read.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BATCH = 100


def _dataset(steps, seed=0):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    x = rng.random((BATCH * 8, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, BATCH * 8)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH)
    return data.prefetch(tf.data.AUTOTUNE)


def _variants(model_name, exact, jit=False, only=None):
    import keras

    import keras_serene as ks
    from keras_serene.app import zoo
    from keras_serene.core.masking_optimizer import MaskingOptimizer

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    init = zoo.get(model_name).get_weights()

    def build(kind):
        model = zoo.get(model_name)
        model.set_weights(init)
        sgd = keras.optimizers.SGD(0.1)
        if kind == "sgd":
            model.compile(optimizer=sgd, loss=loss, jit_compile=jit)
            return model, model
        if kind.startswith("masking"):
            masking = MaskingOptimizer(
                sgd, mask_gradients=kind == "masking_grads"
            )
            model.compile(optimizer=masking, loss=loss, jit_compile=jit)
            return model, model
        sensitivity = {
            "lobster": "loss",
            "output": ks.sensitivity.OutputSensitivity(),
            "output_exact": ks.sensitivity.OutputSensitivity(exact=True),
            "neuron": ks.sensitivity.NeuronSensitivity("lower_bound"),
            "neuron_loss": ks.sensitivity.NeuronSensitivity("loss"),
        }[kind]
        optimizer = ks.SensitivityOptimizer(
            sgd, sensitivity=sensitivity, decay=1e-4
        )
        trainer = model if kind == "lobster" else ks.SensitivityModel(model)
        trainer.compile(optimizer=optimizer, loss=loss, jit_compile=jit)
        return trainer, model

    kinds = ["sgd", "masking", "masking_grads", "lobster", "output", "neuron"]
    kinds.append("neuron_loss")
    if exact:
        kinds.append("output_exact")
    if only:
        kinds = [k for k in kinds if k in only or k == "sgd"]
    return {kind: build(kind) for kind in kinds}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _seconds_per_step(fit, data, steps, clock="wall"):
    """Slope of fit time over steps: `fit`'s fixed cost cancels out."""
    now = CLOCKS[clock]
    elapsed = []
    for n in (1, steps + 1):
        start = now()
        fit(data, epochs=1, steps_per_epoch=n, verbose=0, shuffle=False)
        elapsed.append(now() - start)
    return (elapsed[1] - elapsed[0]) / steps


def time_keras(
    model_name, steps, repeats, exact, clock="wall", jit=False, only=None
):
    """Median seconds per step of each variant, interleaved."""
    from keras_serene.core import masking as masks

    variants = _variants(model_name, exact, jit, only)
    data = _dataset(steps)
    for trainer, _ in variants.values():  # Warm-up: trace and compile.
        trainer.fit(data, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
    times = {kind: [] for kind in variants}
    for _ in range(repeats):
        for kind, (trainer, _) in variants.items():
            n = max(2, steps // 10) if kind == "output_exact" else steps
            times[kind].append(_seconds_per_step(trainer.fit, data, n, clock))
    medians = {kind: statistics.median(t) for kind, t in times.items()}
    optimizer = masks.mask_optimizer(
        next(v[0] for k, v in variants.items() if k != "sgd")
    )
    params = sum(int(v.numpy().size) for v in optimizer.masks)
    return medians, masks.mask_bytes(optimizer), params


TFMOT_WORKER = """
import json, os, statistics, sys, time
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

steps, repeats, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
now = {"wall": time.perf_counter, "cpu": time.process_time}[sys.argv[4]]
rng = np.random.default_rng(0)
x = rng.random((batch * 8, 28, 28, 1), dtype=np.float32)
y = rng.integers(0, 10, batch * 8)
data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch)
data = data.prefetch(tf.data.AUTOTUNE)

def lenet300():
    return keras.Sequential([
        keras.layers.Flatten(input_shape=(28, 28, 1)),
        keras.layers.Dense(300, activation="relu"),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10)])

init = lenet300().get_weights()
sparsity = tfmot.sparsity.keras
variants = {}
for name, target in [("sgd", None), ("tfmot_90", 0.9), ("tfmot_98", 0.98)]:
    model = lenet300()
    model.set_weights(init)
    callbacks = []
    if target is not None:
        model = sparsity.prune_low_magnitude(
            model, pruning_schedule=sparsity.ConstantSparsity(
                target, begin_step=0, frequency=100))
        callbacks = [sparsity.UpdatePruningStep()]
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    variants[name] = (model, callbacks)
for model, callbacks in variants.values():
    model.fit(data, epochs=1, steps_per_epoch=3, verbose=0,
              callbacks=callbacks)
times = {name: [] for name in variants}
for _ in range(repeats):
    for name, (model, callbacks) in variants.items():
        elapsed = []
        for n in (1, steps + 1):
            start = now()
            model.fit(data, epochs=1, steps_per_epoch=n, verbose=0,
                      callbacks=callbacks)
            elapsed.append(now() - start)
        times[name].append((elapsed[1] - elapsed[0]) / steps)
print("TFMOT_JSON", json.dumps(
    {name: statistics.median(t) for name, t in times.items()}))
"""


def time_tfmot(steps, repeats, clock="wall"):
    """tfmot on LeNet-300 in its own Keras 2 process; None if unavailable."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            TFMOT_WORKER,
            str(steps),
            str(repeats),
            str(BATCH),
            clock,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    for line in result.stdout.splitlines():
        if line.startswith("TFMOT_JSON "):
            return json.loads(line[len("TFMOT_JSON ") :])
    print("tfmot worker failed:\n" + result.stderr[-2000:], file=sys.stderr)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--no-tfmot", action="store_true")
    parser.add_argument(
        "--variants", default=None, help="comma separated (default: all)"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (steadier on a shared machine)",
    )
    parser.add_argument(
        "--jit", action="store_true", help="compile every variant with XLA"
    )
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 100)
    repeats = args.repeats or (5 if args.quick else 9)
    rows = []
    for model_name in args.models.split(","):
        only = args.variants.split(",") if args.variants else None
        medians, mask_bytes, params = time_keras(
            model_name, steps, repeats, True, args.clock, args.jit, only
        )
        base = medians["sgd"]
        for kind, seconds in medians.items():
            rows.append((model_name, kind, seconds, seconds / base))
        print(
            f"{model_name}: masks {mask_bytes:,} bytes for {params:,} "
            f"parameters ({mask_bytes / params:.2f} byte/parameter)"
        )
    if not args.no_tfmot and "lenet300" in args.models:
        tfmot = time_tfmot(steps, repeats, args.clock)
        if tfmot is not None:
            for kind in ("tfmot_90", "tfmot_98"):
                rows.append(
                    ("lenet300", kind, tfmot[kind], tfmot[kind] / tfmot["sgd"])
                )
    print(
        f"\nbatch {BATCH}, {steps} steps x {repeats} repeats, medians, "
        f"{args.clock} clock, jit_compile={args.jit}"
    )
    print(f"{'model':<10}{'variant':<14}{'ms/step':>10}{'x SGD':>8}")
    for model_name, kind, seconds, ratio in rows:
        print(f"{model_name:<10}{kind:<14}{seconds * 1e3:>10.2f}{ratio:>8.2f}")
    return rows


if __name__ == "__main__":
    main()
