"""Benchmark: does a partly frozen layer's weight gradient cost less on CPU?

NEq (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022, arXiv 2207.09455,
Sec. 4) counts a frozen neuron's backward FLOPs as saved. Whether that is
time depends on the kernels: a layer whose neurons are *all* frozen is
skipped (`keras_serene.neq.layer_skip`), but for a *partly* frozen one the
only way to save time is to compute the weight gradient of the unfrozen
output channels alone, `dW[..., active] = backprop_filter(x, dy[..., active])`,
and scatter it back. This script times exactly that, on the layer shapes of
`keras_serene.app.zoo.lenet5` (batch 128, float32, TensorFlow's CPU
kernels), side by side in one run: the full weight gradient, and the
gradient of a fraction of the channels taken by slicing (the cheapest
possible selection) or by `gather` (what arbitrary frozen sets need), plus
the forward pass and the input gradient for scale.

It is why `EquilibriumFreezing` does not try to compute partial weight
gradients, and why `skip_threshold` exists: on these shapes the half-layer
gradient costs about as much as the whole one, or more.

Run: `python benchmarks/neq_partial.py` (about a minute; `--repeats N`).
Prints process-CPU milliseconds per call (median of interleaved repeats)
and each variant's ratio to the full weight gradient.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

#: name -> (input height, input channels, kernel size, filters): LeNet-5's
#: convolutions (Caffe variant) on 28x28x1.
CONVS = {"conv1": (28, 1, 5, 20), "conv2": (12, 20, 5, 50)}
DENSE = {"fc1": (800, 500)}
FRACTIONS = (0.5, 0.25)


def _conv_variants(batch, height, channels, size, filters, rng):
    x = tf.constant(rng.random((batch, height, height, channels), "float32"))
    kernel = tf.constant(rng.random((size, size, channels, filters), "float32"))
    out = height - size + 1
    dy = tf.constant(rng.random((batch, out, out, filters), "float32"))
    strides = [1, 1, 1, 1]

    def filter_grad(dy_part):
        shape = [size, size, channels, dy_part.shape[-1]]
        return tf.compat.v1.nn.conv2d_backprop_filter(
            x, shape, dy_part, strides, "VALID"
        )

    variants = {
        "forward": tf.function(lambda: tf.nn.conv2d(x, kernel, 1, "VALID")),
        "input gradient": tf.function(
            lambda: tf.compat.v1.nn.conv2d_backprop_input(
                x.shape, kernel, dy, strides, "VALID"
            )
        ),
        "weight gradient": tf.function(lambda: filter_grad(dy)),
    }
    for fraction in FRACTIONS:
        k = max(1, int(round(filters * fraction)))
        picked = tf.constant(np.sort(rng.permutation(filters)[:k]))
        variants[f"weight gradient, {fraction:.0%} sliced"] = tf.function(
            lambda k=k: filter_grad(dy[..., :k])
        )
        variants[f"weight gradient, {fraction:.0%} gathered"] = tf.function(
            lambda picked=picked: filter_grad(tf.gather(dy, picked, axis=3))
        )
    return variants


def _dense_variants(batch, fan_in, units, rng):
    x = tf.constant(rng.random((batch, fan_in), "float32"))
    kernel = tf.constant(rng.random((fan_in, units), "float32"))
    dy = tf.constant(rng.random((batch, units), "float32"))
    variants = {
        "forward": tf.function(lambda: x @ kernel),
        "weight gradient": tf.function(
            lambda: tf.matmul(x, dy, transpose_a=True)
        ),
    }
    for fraction in FRACTIONS:
        k = max(1, int(round(units * fraction)))
        picked = tf.constant(np.sort(rng.permutation(units)[:k]))
        variants[f"weight gradient, {fraction:.0%} gathered"] = tf.function(
            lambda picked=picked: tf.matmul(
                x, tf.gather(dy, picked, axis=1), transpose_a=True
            )
        )
    return variants


def _time(variants, repeats, calls):
    """Median process-CPU ms per call, the variants interleaved."""
    for function in variants.values():
        function()  # trace
    samples = {name: [] for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():
            start = time.process_time()
            for _ in range(calls):
                function()
            samples[name].append((time.process_time() - start) / calls)
    return {name: 1000 * float(np.median(s)) for name, s in samples.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    layers = {
        name: _conv_variants(args.batch, *shape, rng)
        for name, shape in CONVS.items()
    }
    layers.update(
        {
            name: _dense_variants(args.batch, *shape, rng)
            for name, shape in DENSE.items()
        }
    )
    print(
        f"Process-CPU ms per call, batch {args.batch}, median of "
        f"{args.repeats} interleaved repeats of {args.calls} calls "
        f"({tf.config.threading.get_intra_op_parallelism_threads() or 'all'}"
        " intra-op threads)."
    )
    print(f"{'layer':<7} {'variant':<32} {'ms':>7} {'x full dW':>9}")
    for layer, variants in layers.items():
        times = _time(variants, args.repeats, args.calls)
        full = times["weight gradient"]
        for name, ms in times.items():
            print(f"{layer:<7} {name:<32} {ms:>7.2f} {ms / full:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
