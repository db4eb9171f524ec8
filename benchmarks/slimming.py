"""Benchmark: what physical slimming costs and buys, measured side by side.

1. Time (`--time`): `ks.slimming_plan` + `ks.slim` on keras.applications
   ResNet50 and EfficientNetB0 (224x224, random weights, half of each
   Conv/Dense layer's channels dead with the BatchNormalization after it),
   beside `keras.models.clone_model` of the same model, the cheapest rebuild
   of a Keras model: the ratio is our overhead over it. Best of 3.
2. Latency (`--latency`): MobileNetV2 (alpha 0.35, 96x96) and ResNet50
   (64x64) with 50% and 75% of the channels of every free (not pinned)
   group zeroed (kernel slices, biases, BN `gamma`/`beta`, depthwise
   filters: the channel is exactly 0): `.tflite` bytes and single-thread
   `ai_edge_litert` latency of dense, masked + `EXPERIMENTAL_SPARSITY` and
   slim (`ks.slim`), beside the FLOPs ratio (and FLOPs8: channel counts
   rounded up to XNNPACK's 8-wide tiles). Goal: the slim latency ratio
   within 1.3x of its FLOPs ratio. Latencies are interleaved repeats
   (`ks.export.latency_ratios`), ratios to dense with their min-max.
3. `--zoo`: the same table on LeNet-300, LeNet-5 and the MobileNet-like CNN
   of `keras_serene.app.zoo` (50/75/90%).

Run: `nice -n 5 .venv/bin/python benchmarks/slimming.py` (all sections,
about 20 minutes on a shared 2-core CPU) or name the sections. Never run by
the tests; the weights are random (sizes and latencies do not depend on
training).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.app import zoo  # noqa: E402
from keras_serene.core.channel_rules import find_weight  # noqa: E402
from keras_serene.core.neurons import iter_layers  # noqa: E402
from keras_serene.export import latency_ratios  # noqa: E402


def _layer_at(model, path):
    for part in path.split("/"):
        model = model.get_layer(part)
    return model


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
            variable = find_weight(
                _layer_at(masked, member.layer), member.weight
            )
            array = np.array(variable.numpy())
            moved = np.moveaxis(array, member.axis, 0)
            moved[member.positions(chosen)] = 0.0
            variable.assign(array)
    return masked


def kill_half(model, seed=0):
    """Half of each Conv/Dense layer's output channels zeroed (kernel, bias
    and the BN right after it): the recipe of the tests."""
    rng = np.random.default_rng(seed)
    config = model.get_config()["layers"]
    readers = {}
    for entry in config:
        if entry["class_name"] == "BatchNormalization":
            source = entry["inbound_nodes"][0]["args"][0]["config"]
            readers[source["keras_history"][0]] = model.get_layer(entry["name"])
    for layer in iter_layers(model):
        if type(layer) not in (keras.layers.Conv2D, keras.layers.Dense):
            continue
        kernel = layer.kernel.numpy()
        width = kernel.shape[-1]
        dead = rng.choice(width, width // 2, replace=False)
        kernel[..., dead] = 0.0
        layer.kernel.assign(kernel)
        owners = [layer.bias] if layer.bias is not None else []
        bn = readers.get(layer.name)
        if bn is not None:
            owners += [bn.gamma, bn.beta]
        for variable in owners:
            values = variable.numpy()
            values[dead] = 0.0
            variable.assign(values)
    return model


def _macs(shape, positions, tile, axes=(-2, -1)):
    """MACs of a kernel `shape` at `positions`, the last two axes (in/out
    channels) rounded up to `tile` (XNNPACK's f32 kernels work on 8-wide
    channel tiles on AVX2: 4 channels cost as much as 8)."""
    shape = list(shape)
    for axis in axes:
        shape[axis] = -(-shape[axis] // tile) * tile
    return positions * int(np.prod(shape))


def flops(model, tile=1):
    """Multiply-accumulates of Dense, Conv2D, DepthwiseConv2D, Separable."""
    total = 0
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.Dense):
            total += _macs(layer.kernel.shape, 1, tile)
        elif isinstance(layer, keras.layers.SeparableConv2D):
            positions = int(np.prod(layer.output.shape[1:3]))
            total += _macs(layer.depthwise_kernel.shape, positions, tile, [-2])
            total += _macs(layer.pointwise_kernel.shape, positions, tile)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            positions = int(np.prod(layer.output.shape[1:3]))
            total += _macs(layer.kernel.shape, positions, tile, [-2])
        elif isinstance(layer, keras.layers.Conv2D):
            positions = int(np.prod(layer.output.shape[1:3]))
            total += _macs(layer.kernel.shape, positions, tile)
    return total


def bench_latency(name, model, fractions, runs, repeats):
    dense_flops = flops(model)
    blobs = {"dense": ks.to_tflite(model)}
    flops_ratio, tiled_ratio = {}, {}
    for fraction in fractions:
        masked = zero_channels(model, fraction)
        small = ks.slim(masked)
        blobs[f"{fraction:.0%} masked+sparse"] = ks.to_tflite(
            masked, sparse=True
        )
        blobs[f"{fraction:.0%} slim"] = ks.to_tflite(small)
        flops_ratio[fraction] = flops(small) / dense_flops
        tiled_ratio[fraction] = flops(small, 8) / flops(model, 8)
    result = latency_ratios(blobs, runs=runs, repeats=repeats)
    dense = result["dense"]
    print(
        f"\n{name}: {model.count_params():,} params, "
        f"{len(blobs['dense']):,} B, {dense['latency_ms']:.2f} ms, "
        f"{dense_flops:,} MACs"
    )
    header = (
        f"{'removed':>7} | {'bytes +sparse':>13} {'slim':>6} | "
        f"{'latency +sparse':>22} {'slim':>22} | {'FLOPs':>6} {'lat/FLOPs':>9}"
        f" | {'FLOPs8':>6} {'lat/FLOPs8':>10}"
    )
    print(header)
    print("-" * len(header))
    for fraction in fractions:
        sparse = result[f"{fraction:.0%} masked+sparse"]
        slim = result[f"{fraction:.0%} slim"]
        size = len(blobs["dense"])
        sparse_bytes = len(blobs[f"{fraction:.0%} masked+sparse"]) / size
        slim_bytes = len(blobs[f"{fraction:.0%} slim"]) / size

        def cell(r):
            return (
                f"{r['ratio']:.3f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
            )

        print(
            f"{fraction:>7.0%} | {sparse_bytes:>13.3f} {slim_bytes:>6.3f} | "
            f"{cell(sparse):>22} {cell(slim):>22} | "
            f"{flops_ratio[fraction]:>6.3f} "
            f"{slim['ratio'] / flops_ratio[fraction]:>9.2f} | "
            f"{tiled_ratio[fraction]:>6.3f} "
            f"{slim['ratio'] / tiled_ratio[fraction]:>10.2f}"
        )


def bench_time(name, model, tries=3):
    kill_half(model)
    clone, plan_s, slim_s = [], [], []
    for _ in range(tries):
        start = time.perf_counter()
        keras.models.clone_model(model)
        clone.append(time.perf_counter() - start)
        start = time.perf_counter()
        plan = ks.slimming_plan(model)
        plan_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        small = ks.slim(model, plan)
        slim_s.append(time.perf_counter() - start)
    total = min(p + s for p, s in zip(plan_s, slim_s))
    print(
        f"{name:>14} | {model.count_params():>11,} -> "
        f"{small.count_params():>11,} | {min(clone):>8.2f} s | "
        f"{min(plan_s):>6.2f} s {min(slim_s):>6.2f} s"
        f" {total:>6.2f} s | {total / min(clone):>5.2f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sections",
        nargs="*",
        default=["time", "latency"],
        choices=["time", "latency", "zoo"],
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--models", nargs="*", default=["MobileNetV2", "ResNet50"]
    )
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    if "time" in args.sections:
        print(
            "Planning + slimming time (best of 3), beside keras.models."
            "clone_model of the same model:\n"
            f"{'model':>14} | {'params before -> after':>26} | "
            f"{'clone':>10} | {'plan':>8} {'slim':>8} {'total':>8} | ratio"
        )
        bench_time("ResNet50", keras.applications.ResNet50(weights=None))
        bench_time(
            "EfficientNetB0", keras.applications.EfficientNetB0(weights=None)
        )
    print(
        "\nRatios to the dense model (1.000 = same); latency: median "
        f"single-thread ai_edge_litert invoke of {args.runs} runs, "
        f"{args.repeats} interleaved repeats (min-max), batch 1."
    )
    if "latency" in args.sections:
        models = {
            "MobileNetV2 0.35 96x96": keras.applications.MobileNetV2(
                input_shape=(96, 96, 3), alpha=0.35, weights=None
            ),
            "ResNet50 64x64": keras.applications.ResNet50(
                input_shape=(64, 64, 3), weights=None
            ),
        }
        for name, model in models.items():
            if name.split()[0] in args.models:
                bench_latency(name, model, (0.5, 0.75), args.runs, args.repeats)
    if "zoo" in args.sections:
        models = {
            "LeNet-300-100": zoo.lenet300(),
            "LeNet-5": zoo.lenet5(),
            "MobileNet-like": zoo.mobilenet_like(),
        }
        for name, model in models.items():
            bench_latency(
                name, model, (0.5, 0.75, 0.9), args.runs, args.repeats
            )


if __name__ == "__main__":
    main()
