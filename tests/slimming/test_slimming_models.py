"""Named-architecture tests of `ks.slimming_plan` / `ks.slim`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.app import zoo  # noqa: E402
from keras_serene.slimming import SlimmingPlan  # noqa: E402
from keras_serene.slimming import register_rule  # noqa: E402
from keras_serene.slimming.rules import RULES  # noqa: E402


def _kill(model, name, channels, bias=None):
    layer = model.get_layer(name)
    weights = layer.get_weights()
    weights[0][..., list(channels)] = 0.0
    if bias is not None and len(weights) > 1:
        weights[1][list(channels)] = bias
    layer.set_weights(weights)


def _set_bn(model, name, channels, gamma=None, beta=None):
    layer = model.get_layer(name)
    weights = layer.get_weights()  # gamma, beta, mean, variance
    if gamma is not None:
        weights[0][list(channels)] = gamma
    if beta is not None:
        weights[1][list(channels)] = beta
    layer.set_weights(weights)


def _randomize_bn(model):
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, g.shape).astype("f4"),
                    rng.normal(0, 0.3, b.shape).astype("f4"),
                    rng.normal(0, 0.3, m.shape).astype("f4"),
                    rng.uniform(0.5, 1.5, v.shape).astype("f4"),
                ]
            )


def _check(model, small, seed=0):
    shape = (4,) + tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(seed).normal(size=shape).astype("float32")
    expected = np.asarray(model(x, training=False))
    got = np.asarray(small(x, training=False))
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=0)


def _residual():
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 1, name="stem")(inputs)
    y = layers.Conv2D(4, 3, padding="same", name="inner")(x)
    y = layers.ReLU()(y)
    y = layers.Conv2D(4, 1, name="branch")(y)
    s = layers.Add(name="sum")([x, y])
    s = layers.GlobalAveragePooling2D()(s)
    return keras.Model(inputs, layers.Dense(2, name="head")(s))


def test_residual_block_removes_only_channels_dead_in_every_operand():
    keras.utils.set_random_seed(0)
    model = _residual()
    # Zero constant: the padded `inner` conv reads the trunk too.
    _kill(model, "stem", [0, 1], bias=0.0)  # dead in the trunk
    _kill(model, "branch", [1, 2], bias=0.25)  # dead in the branch
    _kill(model, "inner", [3], bias=0.0)  # block-internal, zero constant
    plan = ks.slimming_plan(model)
    group = plan.group_of("stem")
    assert group is plan.group_of("branch")
    assert group.sources == ["stem", "branch"] and group.coupled
    assert group.removed == [1] and group.dead == [1]
    assert plan.group_of("inner").removed == [3]
    assert not plan.group_of("inner").coupled
    small = ks.slim(model)
    _check(model, small)
    # Before: stem 12, inner 9*4*4+4 = 148, branch 20, head 10 = 190.
    # After: stem 9, inner 9*3*3+3 = 84, branch 12, head 8 = 113.
    assert model.count_params() - small.count_params() == 190 - 113


def test_bn_gamma_zero_is_constant_and_folded():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 3, use_bias=False, name="c1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(3, 3, use_bias=False, name="c2")(x)  # valid: folds
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(3, 3, padding="same", name="c3")(x)  # padded
    model = keras.Model(inputs, layers.Flatten()(x))
    _randomize_bn(model)
    _set_bn(model, "bn1", [0, 2], gamma=0.0, beta=0.7)
    _set_bn(model, "bn2", [0], gamma=0.0, beta=0.4)  # relu(0.4) != 0
    _set_bn(model, "bn2", [1], gamma=0.0, beta=-0.4)  # relu(-0.4) == 0
    plan = ks.slimming_plan(model)
    assert plan.group_of("bn1").removed == [0, 2]
    group = plan.group_of("bn2")
    assert group.dead == [0, 1] and group.removed == [1]
    assert any("position-dependent" in r for r in group.reasons)
    before = [w.copy() for w in model.get_weights()]
    small = ks.slim(model)
    _check(model, small)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # input model untouched
    # c2 has no bias: the constant goes into bn2's moving mean.
    assert not small.get_layer("c2").use_bias
    # Before: c1 72, bn1 16, c2 9*4*3 = 108, bn2 12, c3 9*3*3+3 = 84.
    # After: c1 36, bn1 8, c2 9*2*2 = 36, bn2 8, c3 9*2*3+3 = 57.
    assert model.count_params() - small.count_params() == 292 - 145


def test_concat_block():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    a = layers.Conv2D(3, 1, activation="relu", name="a")(inputs)
    b = layers.Conv2D(4, 1, activation="relu", name="b")(a)
    x = layers.Concatenate()([a, b])
    c = layers.Conv2D(2, 1, name="c")(x)
    x = layers.Concatenate()([x, c])
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(2, name="head")(x))
    _kill(model, "a", [1], bias=0.5)
    _kill(model, "b", [0, 3], bias=-1.0)
    small = ks.slim(model)
    _check(model, small)
    # Before: a 9, b 3*4+4 = 16, c 7*2+2 = 16, head 9*2+2 = 20: 61.
    # After: a 6, b 2*2+2 = 6, c 4*2+2 = 10, head 6*2+2 = 14: 36.
    assert model.count_params() - small.count_params() == 61 - 36
    assert small.get_layer("b").kernel.shape == (1, 1, 2, 2)


def test_depthwise_separable_mobilenet_like():
    keras.utils.set_random_seed(0)
    model = zoo.mobilenet_like(input_shape=(12, 12, 1), width=8)
    _randomize_bn(model)
    convs = [la.name for la in model.layers if type(la) is layers.Conv2D]
    for name in convs:
        _kill(model, name, [0, 1])
    # Dead depthwise filter: constant at the depthwise output.
    dws = [la for la in model.layers if type(la) is layers.DepthwiseConv2D]
    weights = dws[1].get_weights()
    weights[0][:, :, 5] = 0.0
    dws[1].set_weights(weights)
    plan = ks.slimming_plan(model)
    small = ks.slim(model, plan)
    _check(model, small)
    assert plan.num_removed > 0
    assert small.count_params() < model.count_params()


def test_squeeze_excitation_block():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 1, activation="relu", name="conv")(inputs)
    s = layers.GlobalAveragePooling2D()(x)
    s = layers.Dense(2, activation="relu", name="squeeze")(s)
    s = layers.Dense(4, activation="sigmoid", name="excite")(s)
    s = layers.Reshape((1, 1, 4))(s)
    x = layers.Multiply()([x, s])
    x = layers.Conv2D(3, 1, name="out_conv")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    _kill(model, "conv", [1], bias=-1.0)  # relu(-1) = 0: 0 * gate = 0
    _kill(model, "conv", [2], bias=0.5)  # 0.5 * live gate: not constant
    plan = ks.slimming_plan(model)
    group = plan.group_of("conv")
    assert group is plan.group_of("excite") and group.coupled
    assert group.removed == [1]
    small = ks.slim(model)
    _check(model, small)
    # conv: 2 + 1, squeeze row: 2, excite column + bias: 3, out_conv row: 3.
    assert model.count_params() - small.count_params() == 3 + 2 + 3 + 3


def test_flatten_dense_after_conv_lenet5():
    keras.utils.set_random_seed(0)
    model = zoo.lenet5(input_shape=(12, 12, 1))
    _kill(model, "conv2", [0, 5, 7], bias=0.3)
    plan = ks.slimming_plan(model)
    member = [
        m
        for m in plan.group_of("conv2").members
        if m.layer == "fc1" and m.weight == "kernel"
    ][0]
    assert member.repeats == 9 and member.repeat_stride == 50
    assert member.positions([1]) == [1 + 50 * k for k in range(9)]
    small = ks.slim(model)
    _check(model, small)
    # conv2: 3 x (25 x 20 + 1), fc1 rows: 3 x 9 x 500.
    assert model.count_params() - small.count_params() == 3 * 501 + 27 * 500


def test_model_output_is_pinned():
    keras.utils.set_random_seed(0)
    model = zoo.lenet300(input_shape=(4, 4, 1))
    _kill(model, "fc3", [0])
    _kill(model, "fc2", [3], bias=0.2)
    plan = ks.slimming_plan(model)
    out_group = plan.group_of("fc3")
    assert out_group.pinned and "model output" in out_group.reasons
    assert out_group.dead == [0] and out_group.removed == []
    assert plan.group_of("fc1").pinned is False
    small = ks.slim(model)
    _check(model, small)
    assert small.output.shape == (None, 10)
    assert model.count_params() - small.count_params() == 301 + 10


def test_nested_model_is_slimmed_through():
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((6, 6, 4))
    y = layers.BatchNormalization(name="bn")(inner_in)
    y = layers.Conv2D(3, 1, name="conv")(y)
    block = keras.Model(inner_in, y, name="block")
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 1, name="stem")(inputs)
    x = block(x)
    head = keras.Sequential(
        [keras.Input((108,)), layers.Dense(2, name="fc")], name="head"
    )
    model = keras.Model(inputs, head(layers.Flatten()(x)))
    _kill(model, "stem", [2], bias=0.5)
    plan = ks.slimming_plan(model)
    assert plan.group_of("block/bn").removed == [2]
    assert plan.group_of("stem").removed == [2]
    small = ks.slim(model)
    _check(model, small)
    assert isinstance(small.get_layer("block"), keras.Model)
    assert isinstance(small.get_layer("head"), keras.Sequential)
    # stem 2 + 1, bn 4, block/conv row 3.
    assert model.count_params() - small.count_params() == 10


def test_plan_json_round_trip_str_and_edit():
    keras.utils.set_random_seed(0)
    model = _residual()
    _kill(model, "inner", [0, 3], bias=0.0)
    plan = ks.slimming_plan(model)
    again = SlimmingPlan.from_json(plan.to_json())
    assert again == plan and again.to_json() == plan.to_json()
    text = str(plan)
    assert "groups" in text and "model output" in text
    # Keep channel 3 after all: only channel 0 goes.
    group = again.group_of("inner")
    assert group.removed == [0, 3]
    group.removed, group.kept = [0], [1, 2, 3]
    small = ks.slim(model, again)
    _check(model, small)
    assert small.get_layer("inner").filters == 3
    # Removing a live channel is refused.
    group.removed, group.kept = [0, 1], [2, 3]
    with pytest.raises(ValueError, match="cannot be removed exactly"):
        ks.slim(model, again)
    with pytest.raises(ValueError, match="group_of"):
        plan.group_of("sum")


def test_unknown_layer_and_subclassed_model_errors():
    class Scale(layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((4,))
    x = layers.Dense(3, name="d")(inputs)
    model = keras.Model(inputs, layers.Dense(2)(Scale(name="scale")(x)))
    with pytest.raises(TypeError, match="'scale' of class Scale.*register"):
        ks.slim(model)
    try:
        register_rule(Scale, "transparent")
        _kill(model, "d", [1], bias=0.5)
        small = ks.slim(model)
        _check(model, small)
        assert model.count_params() - small.count_params() == 4 + 1 + 2
    finally:
        RULES.pop("Scale")

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), "f4"))
    with pytest.raises(TypeError, match="subclassed"):
        ks.slim(sub)


def test_keras_round_trip_without_keras_serene(tmp_path):
    keras.utils.set_random_seed(0)
    model = zoo.lenet5(input_shape=(12, 12, 1))
    _kill(model, "conv1", [1, 4], bias=0.1)
    small = ks.slim(model)
    path = str(tmp_path / "small.keras")
    small.save(path)
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 1)).astype("f4")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(small(x)))
    script = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({path!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"y = np.load({str(tmp_path / 'y.npy')!r})\n"
        "np.testing.assert_allclose(np.asarray(m(x)), y, atol=1e-6)\n"
        "assert 'keras_serene' not in sys.modules\n"
        "print('OK', m.count_params())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"OK {small.count_params()}" in result.stdout


def test_sequential_model_stays_sequential():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            layers.Conv2D(4, 1, name="c"),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(3),
        ]
    )
    _kill(model, "c", [1], bias=0.5)
    small = ks.slim(model)
    _check(model, small)
    assert isinstance(small, keras.Sequential)
    # c: 2 + 1, Dense rows: 36 positions x 3.
    assert model.count_params() - small.count_params() == 3 + 36 * 3


def test_softmax_sequential_pins_outputs_only():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,)),
            layers.Dense(6, activation="relu", name="hidden"),
            layers.Dense(4, activation="softmax", name="probs"),
        ]
    )
    _kill(model, "hidden", [1, 4], bias=0.3)  # relu(0.3): folded
    plan = ks.slimming_plan(model)
    out = plan.group_of("probs")
    assert out.pinned
    assert "activation 'softmax' mixes channels (probs)" in out.reasons
    assert plan.group_of("hidden").removed == [1, 4]
    small = ks.slim(model)
    _check(model, small)
    # hidden: 2 x (5 + 1), probs: 2 input rows x 4.
    assert model.count_params() - small.count_params() == 12 + 8


def test_functional_model_with_keras_ops():
    from keras import ops

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    b = layers.Conv2D(4, 1, name="b")(inputs)
    x = ops.relu(a + 3.0)  # ops.Add with a scalar, then ops.Relu
    x = ops.multiply(ops.add(x, b), 0.5)  # couples a and b
    x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(2, name="head")(x))
    assert any(
        not isinstance(op, layers.Layer) for op in model.operations
    )  # the ops are graph nodes outside model.layers
    # Channel 2 dead in both: relu(-3 + 3) + 0 = 0, padding keeps it 0.
    _kill(model, "a", [2], bias=-3.0)
    _kill(model, "b", [2], bias=0.0)
    plan = ks.slimming_plan(model)
    group = plan.group_of("a")
    assert group is plan.group_of("b") and group.coupled
    assert group.removed == [2]
    small = ks.slim(model)
    _check(model, small)
    # a and b: 2 + 1 each, head: one row of 2.
    assert model.count_params() - small.count_params() == 3 + 3 + 2


def test_dense_subclass_is_slimmed_like_dense():
    from keras_serene.core import neurons

    class MyDense(layers.Dense):
        pass

    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    x = MyDense(4, activation="relu", name="mine")(inputs)
    model = keras.Model(inputs, layers.Dense(3, name="head")(x))
    _kill(model, "mine", [0], bias=0.5)
    assert [la.name for la, _ in neurons.neuron_layers(model)] == [
        "mine",
        "head",
    ]
    small = ks.slim(model)
    _check(model, small)
    assert type(small.get_layer("mine")) is MyDense
    assert model.count_params() - small.count_params() == 6 + 3


def test_unknown_operation_stops_the_flow_with_a_reason():
    from keras import ops

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 1, name="c")(inputs)
    x = ops.flip(x, axis=1)  # not in the layer table
    x = layers.Conv2D(3, 1, name="d")(x)
    model = keras.Model(inputs, layers.Flatten()(x))
    _kill(model, "c", [1], bias=0.0)
    group = ks.slimming_plan(model).group_of("c")
    assert group.pinned and group.removed == [] and group.dead == [1]
    assert any(
        "keras.ops Flip is not in the layer table" in r for r in group.reasons
    )
    small = ks.slim(model)
    _check(model, small)
    assert small.count_params() == model.count_params()


def test_operation_with_several_outputs_is_refused_by_name():
    from keras import ops

    inputs = keras.Input((6,))
    x = layers.Dense(4, name="d")(inputs)
    first, second = ops.split(x, 2, axis=-1)
    model = keras.Model(inputs, layers.Dense(2)(ops.add(first, second)))
    with pytest.raises(
        ValueError,
        match=r"operation 'split\w*' \(keras.ops Split\) returns several",
    ):
        ks.slimming_plan(model)


def test_slim_applies_the_plan_it_is_given(monkeypatch):
    from keras_serene.slimming import apply as apply_lib

    keras.utils.set_random_seed(0)
    model = _residual()
    _kill(model, "inner", [0, 3], bias=0.0)
    plan = ks.slimming_plan(model)
    assert plan.analysis is not None
    text = plan.to_json()

    def no_new_analysis(graph):
        raise AssertionError("slim re-analysed a model it had a plan for")

    monkeypatch.setattr(apply_lib, "ChannelAnalysis", no_new_analysis)
    small = ks.slim(model, plan)
    _check(model, small)
    assert small.get_layer("inner").filters == 2
    monkeypatch.undo()
    again = SlimmingPlan.from_json(text)  # no analysis: checked, then used
    assert again.analysis is None
    assert ks.slim(model, again).count_params() == small.count_params()


def test_bounded_batch_norm_gamma_zero_is_not_constant():
    from keras_serene.rni.bounded_batch_normalization import (
        BoundedBatchNormalization,
    )

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(4, 1, name="c")(inputs)
    x = BoundedBatchNormalization(name="bbn")(x)
    model = keras.Model(inputs, layers.Flatten()(layers.Conv2D(3, 1)(x)))
    weights = model.get_layer("bbn").get_weights()
    weights[0][:] = 0.0  # sigmoid(0) = 0.5: every channel still scales x
    model.get_layer("bbn").set_weights(weights)
    group = ks.slimming_plan(model).group_of("bbn")
    assert group.dead == [] and group.removed == []
    small = ks.slim(model)
    _check(model, small)
    assert small.count_params() == model.count_params()
