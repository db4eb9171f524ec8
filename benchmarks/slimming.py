"""Benchmark: what physical slimming buys on LiteRT, measured side by side.

For LeNet-300, LeNet-5 and the MobileNet-like CNN of `keras_serene.app.zoo`, at
50%, 75% and 90% of the channels of every free (not pinned) group zeroed at
random (kernel slices, biases, and the group's BN `gamma`/`beta` and
depthwise filters, so the channel is exactly 0), prints the `.tflite` size
and single-thread `ai_edge_litert` latency (median) of:
dense (untouched), masked (same shapes, zeros), masked + EXPERIMENTAL_SPARSITY
and slimmed (`ks.slim`), with the FLOPs ratio of the slimmed model. Goal: the
slimmed latency ratio within 1.3x of its FLOPs ratio. Then times `ks.slim` on
a ~5M-parameter residual CNN.

Run: `python benchmarks/slimming.py` (several minutes on a shared CPU) or
`python benchmarks/slimming.py --quick`. Never run by the tests. The weights
are random (untrained): sizes and latencies do not depend on training.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.app import zoo  # noqa: E402
from keras_serene.export import tflite_latency  # noqa: E402


def zero_channels(model, fraction, seed=0):
    """A copy of `model` with `fraction` of each free group's channels 0."""
    rng = np.random.default_rng(seed)
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    plan = ks.slimming_plan(masked)
    for group in plan.groups:
        if group.pinned:
            continue
        count = int(round(fraction * group.size))
        chosen = rng.choice(group.size, size=count, replace=False)
        for member in group.members:
            if member.role == "consumes":
                continue
            if member.weight in ("moving_mean", "moving_variance"):
                continue
            layer = masked.get_layer(member.layer)
            for variable in layer.weights:
                if variable.name == member.weight:
                    array = np.array(variable.numpy())
                    moved = np.moveaxis(array, member.axis, 0)
                    moved[member.positions(chosen)] = 0.0
                    variable.assign(array)
    return masked


def flops(model):
    """Multiply-accumulates of Dense, Conv2D and DepthwiseConv2D layers."""
    total = 0
    for layer in model.layers:
        name = type(layer).__name__
        if name == "Dense":
            total += int(np.prod(layer.kernel.shape))
        elif name in ("Conv2D", "DepthwiseConv2D"):
            out = layer.output.shape
            total += int(np.prod(out[1:3])) * int(np.prod(layer.kernel.shape))
    return total


def measure(model, runs, **kwargs):
    blob = ks.to_tflite(model, **kwargs)
    return len(blob), tflite_latency(blob, num_threads=1, runs=runs)


def bench_model(name, model, fractions, runs):
    dense_bytes, dense_latency = measure(model, runs)
    dense_flops = flops(model)
    print(
        f"\n{name}: {model.count_params():,} params, dense {dense_bytes:,} B, "
        f"{dense_latency * 1e6:.1f} us, {dense_flops:,} MACs"
    )
    header = (
        f"{'removed':>7} | {'bytes masked':>12} {'+sparse':>9} "
        f"{'slim':>9} | {'latency masked':>14} {'+sparse':>8} {'slim':>7} "
        f"| {'FLOPs':>6} {'lat/FLOPs':>9}"
    )
    print(header)
    print("-" * len(header))
    for fraction in fractions:
        masked = zero_channels(model, fraction)
        small = ks.slim(masked)
        m_bytes, m_lat = measure(masked, runs)
        s_bytes, s_lat = measure(masked, runs, sparse=True)
        slim_bytes, slim_lat = measure(small, runs)
        flops_ratio = flops(small) / dense_flops
        lat_ratio = slim_lat / dense_latency
        print(
            f"{fraction:>7.0%} | {m_bytes / dense_bytes:>12.3f} "
            f"{s_bytes / dense_bytes:>9.3f} {slim_bytes / dense_bytes:>9.3f} | "
            f"{m_lat / dense_latency:>14.3f} {s_lat / dense_latency:>8.3f} "
            f"{lat_ratio:>7.3f} | {flops_ratio:>6.3f} "
            f"{lat_ratio / flops_ratio:>9.2f}"
        )


def bench_slim_time(quick):
    width = 128 if quick else 256
    model = zoo.small_resnet(
        input_shape=(32, 32, 3), width=width, blocks=4, name="resnet_5m"
    )
    masked = zero_channels(model, 0.5)
    start = time.perf_counter()
    ks.slimming_plan(masked)
    plan_seconds = time.perf_counter() - start
    start = time.perf_counter()
    small = ks.slim(masked)
    slim_seconds = time.perf_counter() - start
    print(
        f"\nslimming time: {model.count_params():,}-parameter residual CNN, "
        f"50% of every free group's channels zeroed: slimming_plan "
        f"{plan_seconds:.2f} s, slim {slim_seconds:.2f} s "
        f"({small.count_params():,} params left)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    args = parser.parse_args()
    fractions = (0.5,) if args.quick else (0.5, 0.75, 0.9)
    runs = 20 if args.quick else 100
    keras.utils.set_random_seed(0)
    print(
        "Ratios to the dense model (1.000 = same); latency: median "
        f"single-thread ai_edge_litert invoke over {runs} runs, batch 1."
    )
    models = {
        "LeNet-300-100": zoo.lenet300(),
        "LeNet-5": zoo.lenet5(),
        "MobileNet-like": zoo.mobilenet_like(),
    }
    for name, model in models.items():
        bench_model(name, model, fractions, runs)
    bench_slim_time(args.quick)


if __name__ == "__main__":
    main()
