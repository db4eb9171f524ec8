"""`ks.slim` on every constructor in `keras.applications` (issue 14).

Recipe (the project's pre-stop hook uses the same): random weights
(`weights=None`), half of each Conv/Dense layer's output channels zeroed
(kernel slice and bias, and the BatchNormalization right after it, so the
channel is exactly 0), slim, compare outputs in inference mode. Checked for
each model: outputs equal (<= 1e-5 relative to the output scale), the
parameter count drops by exactly what the removed channels own (worked out
from the plan's members), the input model untouched.

The default run takes a representative third; every constructor runs with

    KERAS_SERENE_ALL_APPLICATIONS=1 .venv/bin/python -m pytest \\
        tests/slimming/test_applications.py

(about 40 minutes on 2 cores; the large ones dominate).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.core.channel_rules import find_weight  # noqa: E402
from keras_serene.core.neurons import iter_layers  # noqa: E402

ALL = os.environ.get("KERAS_SERENE_ALL_APPLICATIONS", "") not in ("", "0")
CONSTRUCTORS = sorted(
    name
    for name, fn in vars(keras.applications).items()
    if callable(fn) and name[0].isupper()
)
# The smallest input each accepts (InceptionV3 and friends need 75).
SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
DEFAULT_RUN = (
    "ConvNeXtTiny",
    "DenseNet121",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "InceptionV3",
    "MobileNet",
    "MobileNetV2",
    "MobileNetV3Small",
    "NASNetMobile",
    "ResNet50",
    "ResNet50V2",
    "VGG16",
    "Xception",
)
PREPROCESSING = tuple(
    name
    for name in CONSTRUCTORS
    if name.startswith(("ConvNeXt", "EfficientNetV2", "MobileNetV3"))
)


def _producers(model):
    """(layer, output weight) of each Conv/Dense layer (incl. separable)."""
    for layer in iter_layers(model):
        if isinstance(layer, layers.DepthwiseConv2D):
            continue
        if isinstance(layer, layers.SeparableConv2D):
            yield layer, layer.pointwise_kernel
        elif isinstance(layer, (layers.Conv2D, layers.Dense)):
            yield layer, layer.kernel


def _reader_batch_norms(model):
    """Producer name -> the BatchNormalization reading its output."""
    found = {}
    for scope in [model] + [
        m for m in model.layers if isinstance(m, keras.Model)
    ]:
        if isinstance(scope, keras.Sequential):
            names = [la.name for la in scope.layers]
            for a, b in zip(names, names[1:]):
                found[a] = scope.get_layer(b)
            continue
        for entry in scope.get_config()["layers"]:
            if entry["class_name"] != "BatchNormalization":
                continue
            node = entry["inbound_nodes"][0]["args"][0]
            found[node["config"]["keras_history"][0]] = scope.get_layer(
                entry["name"]
            )
    return found


def _randomize(model, rng):
    """Random BN statistics and layer scales, so a wrong fold shows."""
    for layer in iter_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, w.shape).astype("float32")
                    if w.path.endswith(("gamma", "variance"))
                    else rng.normal(0.0, 0.3, w.shape).astype("float32")
                    for w in layer.weights
                ]
            )
        elif type(layer).__name__ == "LayerScale":
            layer.set_weights([rng.uniform(0.5, 1.5, (layer.projection_dim,))])


def kill_half(model, seed=0):
    """Zeroes half the output channels of every Conv/Dense (and its BN)."""
    rng = np.random.default_rng(seed)
    _randomize(model, rng)
    readers = _reader_batch_norms(model)
    for layer, kernel in _producers(model):
        values = kernel.numpy()
        width = values.shape[-1]
        dead = rng.choice(width, width // 2, replace=False)
        values[..., dead] = 0.0
        kernel.assign(values)
        if getattr(layer, "bias", None) is not None:
            bias = layer.bias.numpy()
            bias[dead] = 0.0
            layer.bias.assign(bias)
        bn = readers.get(layer.name)
        if isinstance(bn, layers.BatchNormalization):
            for variable in (bn.gamma, bn.beta):
                if variable is not None:
                    values = variable.numpy()
                    values[dead] = 0.0
                    variable.assign(values)
    return model


def _layer_at(model, path):
    layer = model
    for part in path.split("/"):
        layer = layer.get_layer(part)
    return layer


def expected_params(model, plan):
    """Parameters left when every removed channel takes what it owns."""
    removed = {}  # (layer path, weight) -> {axis: set of positions}
    for group in plan.groups:
        if not group.removed:
            continue
        for member in group.members:
            axes = removed.setdefault((member.layer, member.weight), {})
            axes.setdefault(member.axis, set()).update(
                member.positions(group.removed)
            )
    total = model.count_params()
    for (path, weight), axes in removed.items():
        shape = find_weight(_layer_at(model, path), weight).shape
        kept = [d - len(axes.get(a, ())) for a, d in enumerate(shape)]
        total -= int(np.prod(shape)) - int(np.prod(kept))
    return total


def _build(name, variant):
    size = SIZES.get(name, 32)
    constructor = getattr(keras.applications, name)
    if variant == "no_top":
        base = constructor(
            include_top=False, weights=None, input_shape=(size, size, 3)
        )
        x = layers.GlobalAveragePooling2D()(base.output)
        x = layers.Dense(16, activation="relu", name="my_hidden")(x)
        outputs = layers.Dense(5, activation="softmax", name="my_head")(x)
        return keras.Model(base.input, outputs, name=f"{name}_head")
    kwargs = {}
    if variant == "no_preprocessing":
        kwargs["include_preprocessing"] = False
    return constructor(
        weights=None, input_shape=(size, size, 3), classes=10, **kwargs
    )


def check_application(name, variant="default"):
    """Slims one application; returns (kept fraction, relative error)."""
    keras.utils.set_random_seed(0)
    model = kill_half(_build(name, variant))
    before = [w.copy() for w in model.get_weights()]
    plan = ks.slimming_plan(model)
    small = ks.slim(model, plan)
    size = model.input.shape[1]
    # Raw pixels, or [-1, 1] when the model leaves preprocessing to the user.
    low, high = (-1, 1) if variant == "no_preprocessing" else (0, 255)
    x = np.random.default_rng(1).uniform(low, high, (2, size, size, 3))
    x = x.astype("float32")
    expected = np.asarray(model(x, training=False))
    got = np.asarray(small(x, training=False))
    scale = float(np.abs(expected).max())
    error = float(np.abs(got - expected).max()) / scale
    assert got.shape == expected.shape
    assert error <= 1e-5, f"{name}: relative error {error:.2e}"
    assert plan.num_removed > 0
    added_bias = sum(
        int(np.prod(la.bias.shape))
        for la in iter_layers(small)
        if getattr(la, "use_bias", False)
        and not getattr(_layer_at_or_none(model, la.name), "use_bias", True)
    )
    assert small.count_params() == expected_params(model, plan) + added_bias
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the input model is untouched
    return small.count_params() / model.count_params(), error, model, plan


def _layer_at_or_none(model, name):
    for layer in iter_layers(model):
        if layer.name == name:
            return layer
    return None


CASES = [(n, "default") for n in CONSTRUCTORS]
CASES += [(n, "no_preprocessing") for n in PREPROCESSING]
CASES += [
    (n, "no_top") for n in ("MobileNetV3Small", "ResNet50", "DenseNet121")
]


def _selected(name, variant):
    if ALL:
        return True
    if variant == "default":
        return name in DEFAULT_RUN
    return name in ("MobileNetV3Small", "ResNet50")


@pytest.mark.parametrize(
    "name,variant", CASES, ids=[f"{n}-{v}" for n, v in CASES]
)
def test_application_slims_exactly(name, variant):
    if not _selected(name, variant):
        pytest.skip(
            f"{name} ({variant}) runs with KERAS_SERENE_ALL_APPLICATIONS=1"
        )
    kept, error, model, plan = check_application(name, variant)
    assert 0.0 < kept < 1.0
    print(
        f"{name} ({variant}): kept {kept:.3f} of the parameters, "
        f"max relative error {error:.1e}"
    )
    output_group = plan.groups[-1]
    assert output_group.pinned and "model output" in output_group.reasons
    # A softmax pins the classifier's outputs only: its inputs still go.
    assert any("softmax" in r for r in output_group.reasons)


def test_convnext_layer_norm_pins_stream_but_mlp_channels_go():
    keras.utils.set_random_seed(0)
    model = kill_half(_build("ConvNeXtTiny", "default"))
    plan = ks.slimming_plan(model)
    stream = plan.group_of("convnext_tiny_stage_0_block_0_depthwise_conv")
    assert stream.pinned and stream.removed == []
    assert any("LayerNormalization" in r for r in stream.reasons)
    mlp = plan.group_of("convnext_tiny_stage_0_block_0_pointwise_conv_1")
    assert not mlp.pinned and mlp.size == 4 * 96
    assert len(mlp.removed) == 4 * 96 // 2


def test_hook_recipe_mobilenet_v2():
    """The pre-stop hook's check: MobileNetV2 with its softmax head, half of
    each Conv2D's channels (except Conv_1) zeroed, slims unchanged."""
    model = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.name != "Conv_1":
            kernel = layer.kernel.numpy()
            width = kernel.shape[-1]
            kernel[..., rng.choice(width, width // 2, replace=False)] = 0
            layer.kernel.assign(kernel)
    x = rng.uniform(size=(2, 96, 96, 3)).astype("float32")
    small = ks.slim(model)
    np.testing.assert_allclose(
        np.asarray(small(x)), np.asarray(model(x)), atol=1e-6, rtol=0
    )
    # 423,018 parameters before; the dead project/expand channels go.
    assert model.count_params() == 423018
    assert small.count_params() < 0.6 * model.count_params()


TFLITE = ("MobileNetV3Small", "ConvNeXtTiny", "EfficientNetB0", "ResNet50")


@pytest.mark.parametrize("name", TFLITE)
def test_slimmed_application_exports_to_tflite(name):
    if not ALL and name != "MobileNetV3Small":
        pytest.skip(f"{name} runs with KERAS_SERENE_ALL_APPLICATIONS=1")
    keras.utils.set_random_seed(0)
    model = kill_half(_build(name, "default"))
    small = ks.slim(model)
    size = model.input.shape[1]
    x = np.random.default_rng(2).uniform(0, 255, (4, size, size, 3))
    # Builtins only, and verified against Keras on these inputs (to_tflite
    # raises otherwise); the slimmed model is smaller on disk too.
    blob = ks.to_tflite(small, representative_data=x.astype("float32"))
    ops = ks.export.tflite_ops(blob)
    assert not [op for op in ops if op.upper().startswith("FLEX")]
    assert len(blob) < 0.8 * 4 * model.count_params()
