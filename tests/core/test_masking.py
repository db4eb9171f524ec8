"""`MaskingOptimizer`: masked entries stay still, by hand on tiny tensors."""

import keras
import numpy as np
import pytest
from harness import assert_config_round_trip
from harness import assert_saving_round_trip

import keras_serene as ks
from keras_serene.core import masking as masks_lib
from keras_serene.core.masking_optimizer import MaskingOptimizer


def _kernel():
    return keras.Variable(
        np.array([[1.0, 2.0], [3.0, 4.0]], "float32"), name="kernel"
    )


def _momentum(optimizer, variable):
    inner = optimizer.inner_optimizer
    index = inner._get_variable_index(variable)
    return keras.ops.convert_to_numpy(inner.momentums[index])


@pytest.mark.parametrize("mask_gradients", [False, True])
def test_frozen_entry_holds_and_its_momentum_follows_or_decays(mask_gradients):
    # SGD(lr=0.1, momentum=0.9): m <- 0.9 m - 0.1 g; w <- w + m. g = 1.
    w = _kernel()
    optimizer = MaskingOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9), mask_gradients=mask_gradients
    )
    optimizer.build([w])
    ones = np.ones((2, 2), "float32")
    optimizer.apply([ones], [w])  # step 1, nothing masked: m = -0.1
    np.testing.assert_allclose(_momentum(optimizer, w), -0.1 * ones)
    masks_lib.set_flag(optimizer, w, masks_lib.FROZEN, [[True, False]] * 2)
    frozen_value = keras.ops.convert_to_numpy(w)[:, 0].copy()
    optimizer.apply([ones], [w])  # step 2
    optimizer.apply([ones], [w])  # step 3
    m = _momentum(optimizer, w)
    # The free column: m = 0.9 * -0.1 - 0.1 = -0.19, then -0.271.
    np.testing.assert_allclose(m[:, 1], [-0.271, -0.271], rtol=1e-6)
    if mask_gradients:  # the authors' MaskedSGD: -0.1 -> -0.09 -> -0.081
        np.testing.assert_allclose(m[:, 0], [-0.081, -0.081], rtol=1e-6)
    else:  # the state follows the gradient; only the value is held
        np.testing.assert_allclose(m[:, 0], [-0.271, -0.271], rtol=1e-6)
    value = keras.ops.convert_to_numpy(w)
    np.testing.assert_array_equal(value[:, 0], frozen_value)  # bit-exact
    # w1 = [2, 4] - 0.1 - 0.19 - 0.271.
    np.testing.assert_allclose(value[:, 1], [1.439, 3.439], rtol=1e-6)


def test_pruned_entry_stays_zero_under_adamw_decay():
    w = _kernel()
    optimizer = MaskingOptimizer(keras.optimizers.AdamW(0.1, weight_decay=0.5))
    optimizer.build([w])
    masks_lib.set_flag(
        optimizer, w, masks_lib.PRUNED, [[True, False], [False, False]], True
    )
    for _ in range(3):
        optimizer.apply([np.full((2, 2), -1.0, "float32")], [w])
    value = keras.ops.convert_to_numpy(w)
    assert value[0, 0] == 0.0
    assert np.all(value.ravel()[1:] != [2.0, 3.0, 4.0])
    assert masks_lib.mask_bytes(optimizer) == 4


def _model(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, name="fc")]
    )
    model.compile(optimizer=optimizer, loss="mse")
    return model


def test_config_round_trip_and_masks_through_keras_file(tmp_path):
    optimizer = MaskingOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9), mask_gradients=True
    )
    again = assert_config_round_trip(optimizer)
    assert again.mask_gradients is True
    assert isinstance(again.inner_optimizer, keras.optimizers.SGD)
    assert again.get_config()["inner_optimizer"]["config"]["momentum"] == 0.9
    model = _model(optimizer)
    x = np.ones((4, 3), "float32")
    model.fit(x, np.zeros((4, 2)), epochs=1, verbose=0)
    kernel = model.get_layer("fc").kernel
    where = np.array([[True, False], [False, True], [False, False]])
    masks_lib.set_flag(optimizer, kernel, masks_lib.FROZEN, where)
    masks_lib.add_flag(optimizer, kernel, masks_lib.PRUNED, ~where, zero=True)
    loaded = assert_saving_round_trip(model, x, tmp_path, "masked.keras")
    assert isinstance(loaded.optimizer, MaskingOptimizer)
    loaded_kernel = loaded.get_layer("fc").kernel
    np.testing.assert_array_equal(
        masks_lib.read_mask(loaded.optimizer, loaded_kernel),
        masks_lib.read_mask(optimizer, kernel),
    )
    np.testing.assert_array_equal(
        masks_lib.read_mask(optimizer, kernel),
        np.where(where, masks_lib.FROZEN, masks_lib.PRUNED),
    )
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_the_masking_layer_is_found_through_wrappers():
    inner = keras.optimizers.SGD(0.1)
    masking = MaskingOptimizer(inner)
    model = _model(keras.optimizers.LossScaleOptimizer(masking))
    assert masks_lib.mask_optimizer(model) is masking
    sensitivity = ks.SensitivityOptimizer(keras.optimizers.SGD(0.1))
    assert isinstance(sensitivity, MaskingOptimizer)
    assert masks_lib.mask_optimizer(sensitivity) is sensitivity
    with pytest.raises(
        ValueError, match=r"MyCallback: .*ks.MaskingOptimizer.*optimizer=SGD$"
    ):
        masks_lib.mask_optimizer(_model(inner), caller="MyCallback")


@pytest.mark.parametrize(
    "make_inner",
    [
        lambda: MaskingOptimizer(keras.optimizers.SGD(0.1)),
        lambda: ks.SensitivityOptimizer(keras.optimizers.SGD(0.1)),
        lambda: keras.optimizers.LossScaleOptimizer(
            ks.SensitivityOptimizer(keras.optimizers.SGD(0.1))
        ),
    ],
)
@pytest.mark.parametrize("outer", [MaskingOptimizer, ks.SensitivityOptimizer])
def test_a_masking_wrapper_of_a_masking_wrapper_is_refused(outer, make_inner):
    with pytest.raises(
        ValueError,
        match=rf"{outer.__name__}: `inner_optimizer` must not hold masks",
    ):
        outer(make_inner())


def test_bad_arguments_name_the_problem():
    with pytest.raises(TypeError, match="mask_gradients=1"):
        MaskingOptimizer(keras.optimizers.SGD(), mask_gradients=1)
    with pytest.raises(TypeError, match="inner_optimizer"):
        MaskingOptimizer("sgd")
    with pytest.raises(ValueError, match="set `learning_rate` on the"):
        MaskingOptimizer(keras.optimizers.SGD(), learning_rate=0.1)
    optimizer = MaskingOptimizer(keras.optimizers.SGD())
    optimizer.build([_kernel()])
    with pytest.raises(ValueError, match="set_flag: `flag` must be PRUNED"):
        masks_lib.set_flag(optimizer, optimizer._trainable_variables[0], 4, 1)
    with pytest.raises(ValueError, match="has no mask"):
        masks_lib.set_flag(optimizer, _kernel(), masks_lib.FROZEN, True)
