"""Tests for `ks.prune_by_importance` (RNI / network-slimming pruning)."""

import keras
import numpy as np
import pytest
from harness import assert_saving_round_trip

import keras_serene as ks
from keras_serene.rni.importance_optimizer import importance_vgg
from keras_serene.rni.importance_pruning import mask_by_importance


def _vgg(method, widths=(4, "M", 4, 4), seed=0):
    keras.utils.set_random_seed(seed)
    return importance_vgg(
        method, widths=widths, input_shape=(8, 8, 1), num_classes=3
    )


def _set(model, name, gamma, beta=None):
    layer = model.get_layer(name)
    layer.gamma.assign(np.asarray(gamma, dtype="float32"))
    if beta is not None:
        layer.beta.assign(np.asarray(beta, dtype="float32"))


def _inputs(n=4, shape=(8, 8, 1), seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape).astype("float32")


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _weights(model):
    return [w.copy() for w in model.get_weights()]


def _plain_vgg():
    """Plain BN; |gamma| sorted: .01 .02 .05 .1 .2 .3 | .4 .5 .6 .7 .8 .9."""
    model = _vgg("none")
    _set(model, "bn1", [0.1, -0.9, 0.5, 0.05], [0.3, -0.2, 0.1, 0.4])
    _set(model, "bn2", [0.3, 0.2, -0.01, 0.8], [-0.1, 0.2, 0.5, 0.3])
    _set(model, "bn3", [0.7, 0.6, 0.4, 0.02], [0.2, 0.1, -0.4, 0.6])
    return model


def test_global_quantile_on_abs_gamma():
    masked, pruned = mask_by_importance(_plain_vgg(), 0.5, min_channels=1)
    # The six smallest |gamma| of the twelve.
    assert pruned == {"bn1": [0, 3], "bn2": [0, 1, 2], "bn3": [3]}
    bn2 = masked.get_layer("bn2")
    np.testing.assert_array_equal(bn2.gamma.numpy(), np.float32([0, 0, 0, 0.8]))
    np.testing.assert_array_equal(bn2.beta.numpy(), np.float32([0, 0, 0, 0.3]))


def test_min_channels_gives_back_the_most_important():
    _, pruned = mask_by_importance(_plain_vgg(), 0.5, min_channels=2)
    # bn2 may lose 2 of its 4: its chosen .01 and .2 go, .3 stays.
    assert pruned == {"bn1": [0, 3], "bn2": [1, 2], "bn3": [3]}


def test_at_least_min_channels_per_layer():
    model = _vgg("none")
    _set(model, "bn1", [0.01, 0.02, 0.03, 0.04])
    _set(model, "bn2", [1.0, 2.0, 3.0, 4.0])
    _set(model, "bn3", [1.5, 2.5, 3.5, 4.5])
    _, pruned = mask_by_importance(model, 0.5)  # min_channels=3
    # The six smallest are bn1's four, bn2's 1.0 and bn3's 1.5; bn1 keeps 3
    # (its three most important come back; not redistributed, as the
    # authors' code).
    assert pruned == {"bn1": [0], "bn2": [0], "bn3": [0]}
    # A group smaller than min_channels keeps everything.
    small = _vgg("none", widths=(2, "M", 4))
    _set(small, "bn1", [0.001, 0.002])
    _set(small, "bn2", [1.0, 2.0, 3.0, 4.0])
    _, pruned = mask_by_importance(small, 0.5, min_channels=3)
    assert pruned == {"bn2": [0]}


def test_bounded_importance_is_sigmoid_of_w_not_abs():
    model = _vgg("rni", widths=(4, "M", 4))
    _set(model, "bn1", [-3.0, 2.0, 0.5, -0.1])
    _set(model, "bn2", [1.0, -2.0, 3.0, 0.0])
    masked, pruned = mask_by_importance(model, 0.5, min_channels=1)
    # sigmoid order: -3, -2, -0.1, 0 (|w| would pick 0, -0.1, 0.5, 1).
    assert pruned == {"bn1": [0, 3], "bn2": [1, 3]}
    bn1 = masked.get_layer("bn1")
    assert type(bn1) is keras.layers.BatchNormalization
    expected = 1 / (1 + np.exp(-np.array([-3.0, 2.0, 0.5, -0.1])))
    expected[[0, 3]] = 0.0
    np.testing.assert_allclose(bn1.gamma.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("method", ["rni", "l1"])
def test_slimmed_outputs_equal_the_masked_model(method):
    model = _vgg(method)
    rng = np.random.default_rng(5)
    for name in ("bn1", "bn2", "bn3"):
        layer = model.get_layer(name)
        layer.gamma.assign(rng.normal(size=4).astype("float32"))
        layer.moving_mean.assign(rng.normal(size=4).astype("float32"))
        if layer.center:
            layer.beta.assign(rng.normal(size=4).astype("float32"))
    before = _weights(model)
    masked, pruned = mask_by_importance(model, 0.5, min_channels=1)
    small = ks.prune_by_importance(model, 0.5, min_channels=1)
    x = _inputs()
    np.testing.assert_allclose(
        _predict(small, x), _predict(masked, x), rtol=1e-5, atol=1e-5
    )
    # Physically smaller: each conv keeps 4 - (pruned channels) filters.
    for i in (1, 2, 3):
        kept = 4 - len(pruned.get(f"bn{i}", []))
        assert small.get_layer(f"conv{i}").filters == kept
        assert small.get_layer(f"bn{i}").gamma.shape == (kept,)
    assert sum(len(c) for c in pruned.values()) == 6
    assert small.get_layer("logits").kernel.shape[0] == 4 - len(pruned["bn3"])
    # The input model is untouched.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    if method == "rni":
        assert isinstance(
            model.get_layer("bn1"), ks.layers.BoundedBatchNormalization
        )
    # Fine-tuning goes without the sparsity regulariser; the input keeps it.
    for i in (1, 2, 3):
        assert small.get_layer(f"bn{i}").gamma_regularizer is None
    assert not small.losses
    assert model.get_layer("bn1").gamma_regularizer is not None


def test_ratio_zero_keeps_every_channel():
    model = _vgg("rni")
    small = ks.prune_by_importance(model, 0.0)
    x = _inputs()
    assert small.count_params() == model.count_params()
    np.testing.assert_allclose(
        _predict(small, x), _predict(model, x), rtol=1e-5, atol=1e-6
    )


def test_keep_beta_warns_where_channels_cannot_go():
    model = _plain_vgg()
    masked, pruned = mask_by_importance(
        model, 0.5, min_channels=1, reset_beta=False
    )
    np.testing.assert_array_equal(
        masked.get_layer("bn1").beta.numpy(), np.float32([0.3, -0.2, 0.1, 0.4])
    )
    # bn1 channels 0 and 3 output relu(beta) > 0 before a padded conv.
    with pytest.warns(ks.KerasSereneWarning, match="could not be removed"):
        small = ks.prune_by_importance(
            model, 0.5, min_channels=1, reset_beta=False
        )
    x = _inputs()
    np.testing.assert_allclose(
        _predict(small, x), _predict(masked, x), rtol=1e-5, atol=1e-5
    )


def _resnet():
    """stem conv-BN, one block conv-BN-ReLU-conv-BN, Add, GAP, Dense."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(x)
    y = keras.layers.BatchNormalization(name="bn_a")(y)
    y = keras.layers.ReLU(name="relu_a")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv_b")(y)
    y = keras.layers.BatchNormalization(name="bn_b")(y)
    x = keras.layers.ReLU(name="out_relu")(keras.layers.Add(name="add")([x, y]))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    _set(model, "stem_bn", [0.01, 0.9, 0.02, 0.8], [0.1, 0.2, 0.3, 0.4])
    _set(model, "bn_b", [0.01, 0.03, 0.9, 0.7], [0.1, -0.2, 0.3, 0.1])
    _set(model, "bn_a", [0.5, 0.6, 0.04, 0.7], [0.2, 0.1, 0.3, 0.2])
    return model


def test_residual_channels_go_only_when_all_coupled_layers_agree():
    model = _resnet()
    # Coupled importance = max(stem_bn, bn_b) = [.01, .9, .9, .8]; bn_a is
    # block-internal. The two smallest of the eight: coupled 0, bn_a 2.
    masked, pruned = mask_by_importance(model, 0.25, min_channels=1)
    assert pruned == {"stem_bn": [0], "bn_b": [0], "bn_a": [2]}
    small = ks.prune_by_importance(model, 0.25, min_channels=1)
    x = _inputs(shape=(6, 6, 1))
    np.testing.assert_allclose(
        _predict(small, x), _predict(masked, x), rtol=1e-5, atol=1e-5
    )
    assert small.get_layer("stem").filters == 3
    assert small.get_layer("conv_a").filters == 3
    assert small.get_layer("conv_b").filters == 3


def test_residual_skip_prunes_block_internal_channels_only():
    _, pruned = mask_by_importance(
        _resnet(), 0.25, min_channels=1, coupled="skip"
    )
    assert pruned == {"bn_a": [2]}


def test_slimmed_model_keras_round_trip(tmp_path):
    model = _vgg("rni")
    # A compiled model (ImportanceOptimizer) prunes too; the result is not
    # compiled.
    model.compile(
        optimizer=ks.ImportanceOptimizer(keras.optimizers.SGD(0.1)),
        loss="mse",
    )
    small = ks.prune_by_importance(model, 0.5, min_channels=1)
    assert not small.compiled
    assert_saving_round_trip(small, _inputs(), tmp_path, "small.keras", rtol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"ratio": 1.0}, ValueError, "ratio"),
        ({"ratio": -0.1}, ValueError, "ratio"),
        ({"ratio": float("nan")}, ValueError, "ratio"),
        ({"ratio": "0.5"}, TypeError, "ratio"),
        ({"ratio": 0.5, "min_channels": 0}, ValueError, "min_channels"),
        ({"ratio": 0.5, "min_channels": 2.0}, TypeError, "min_channels"),
        ({"ratio": 0.5, "coupled": "all"}, ValueError, "coupled"),
        ({"ratio": 0.5, "reset_beta": 1}, TypeError, "reset_beta"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=f"prune_by_importance.*{match}"):
        ks.prune_by_importance(_vgg("rni", widths=(4,)), **kwargs)


def test_min_channels_above_every_group_is_an_error():
    # Three groups of 4 channels: min_channels=4 keeps them all.
    with pytest.raises(
        ValueError,
        match=r"prune_by_importance: `min_channels` must be smaller .*"
        r"groups have \[4\] channels, so min_channels <= 3 prunes\. "
        r"Received: min_channels=4",
    ):
        ks.prune_by_importance(_plain_vgg(), 0.5, min_channels=4)
    # ratio=0 asks for nothing: no error, nothing pruned.
    _, pruned = mask_by_importance(_plain_vgg(), 0.0, min_channels=100)
    assert pruned == {}
    # min_channels=3 leaves one channel per group to prune: bn1 0.05,
    # bn2 -0.01, bn3 0.02 (the smallest |gamma| of each group).
    _, pruned = mask_by_importance(_plain_vgg(), 0.5, min_channels=3)
    assert pruned == {"bn1": [3], "bn2": [2], "bn3": [3]}


def test_model_without_batch_normalization():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)]
    )
    with pytest.raises(ValueError, match="BatchNormalization"):
        ks.prune_by_importance(model, 0.5)
    with pytest.raises(TypeError, match="keras.Model"):
        ks.prune_by_importance(keras.layers.Dense(2), 0.5)


def test_only_pinned_batch_normalization():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3),
            keras.layers.BatchNormalization(),
        ]
    )
    with pytest.raises(ValueError, match="no prunable"):
        ks.prune_by_importance(model, 0.5)
