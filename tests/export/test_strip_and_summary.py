"""strip_masks and summary: plain models out, hand-counted numbers."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_serene as ks
from keras_serene.core import masking as masks


def _pruned_model():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3, activation="relu", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    model.compile(
        optimizer=ks.SensitivityOptimizer(keras.optimizers.SGD(0.1)),
        loss="mse",
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    model.fit(x, rng.normal(size=(8, 2)), epochs=1, verbose=0)
    opt = masks.mask_optimizer(model)
    hidden = model.get_layer("hidden")
    # Hidden neuron 1 loses all its incoming weights; one more entry goes.
    where = np.zeros((4, 3), bool)
    where[:, 1] = True
    where[0, 0] = True
    masks.set_flag(opt, hidden.kernel, masks.PRUNED, where, zero=True)
    return model, x


def test_strip_masks_returns_plain_new_model(tmp_path):
    model, x = _pruned_model()
    before = [w.copy() for w in model.get_weights()]
    stripped = ks.strip_masks(model)
    assert stripped is not model
    assert not stripped.compiled
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # Input untouched.
    kernel = stripped.get_layer("hidden").kernel.numpy()
    assert np.all(kernel[:, 1] == 0) and kernel[0, 0] == 0
    # Changing the copy leaves the original alone.
    stripped.get_layer("hidden").kernel.assign(np.ones((4, 3), "float32"))
    assert model.get_layer("hidden").kernel.numpy()[0, 0] == 0


def test_strip_masks_bakes_masks_even_if_values_drifted():
    model, _ = _pruned_model()
    hidden = model.get_layer("hidden")
    hidden.kernel.assign(np.ones((4, 3), "float32"))  # Masks still say 0.
    stripped = ks.strip_masks(model)
    assert np.all(stripped.get_layer("hidden").kernel.numpy()[:, 1] == 0)


def test_stripped_model_loads_without_keras_serene(tmp_path):
    model, x = _pruned_model()
    path = os.path.join(tmp_path, "plain.keras")
    ks.strip_masks(model).save(path)
    np.save(os.path.join(tmp_path, "x.npy"), x)
    expected = model.predict(x, verbose=0)
    code = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({path!r})\n"
        f"x = np.load({os.path.join(tmp_path, 'x.npy')!r})\n"
        "np.save(sys.argv[1], m.predict(x, verbose=0))\n"
        "assert 'keras_serene' not in sys.modules\n"
    )
    out = os.path.join(tmp_path, "y.npy")
    result = subprocess.run(
        [sys.executable, "-c", code, out],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-6)


def test_strip_masks_rejects_non_models():
    with pytest.raises(TypeError, match="keras.Model"):
        ks.strip_masks("model")


def test_summary_counts_by_hand():
    model, _ = _pruned_model()
    lines = []
    report = ks.summary(model, print_fn=lines.append)
    hidden, out = report["layers"]
    # hidden: 4*3 + 3 = 15 params, 5 kernel zeros (4 + 1), biases nonzero.
    assert hidden["params"] == 15 and hidden["nonzero"] == 15 - 5
    assert hidden["neurons"] == 3 and hidden["alive_neurons"] == 2
    assert out["params"] == 8 and out["alive_neurons"] == 2
    total = report["total"]
    assert total["params"] == 23 and total["nonzero"] == 18
    assert total["compression"] == pytest.approx(23 / 18)
    assert total["sparsity"] == pytest.approx(5 / 23)
    assert report["architecture"] == "4-3-2 -> 4-2-2"
    assert "4-3-2 -> 4-2-2" in lines[0] and "hidden" in lines[0]


def test_summary_counts_conv_channels():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    conv = model.get_layer("conv")
    kernel = conv.kernel.numpy()
    kernel[..., 2] = 0.0
    conv.kernel.assign(kernel)
    report = ks.summary(model, print_fn=False)
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["conv"]["neurons"] == 4 and rows["conv"]["alive_neurons"] == 3
    bn = next(r for r in report["layers"] if r["class"] == "BatchNormalization")
    assert "neurons" not in bn  # No incoming weights to be dead.
    assert report["architecture"] == "72-4-3 -> 72-3-3"


@pytest.mark.parametrize("frozen", [False, True])
def test_summary_leaves_batch_norm_statistics_out(frozen):
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, name="fc"),
        ]
    )
    conv = model.get_layer("conv")
    kernel = conv.kernel.numpy()
    kernel[..., 2] = 0.0
    conv.kernel.assign(kernel)
    model.get_layer("bn").trainable = not frozen
    rows = {r["name"]: r for r in ks.summary(model, print_fn=False)["layers"]}
    # bn: gamma 4 + beta 4 learned; moving mean (zeros) and variance: state.
    assert rows["bn"]["params"] == 8 and rows["bn"]["statistics"] == 8
    assert rows["bn"]["nonzero"] == 4  # beta starts at zero, gamma at one.
    # conv: 3*3*2*4 + 4 = 76, zeros: channel 2 (18) and the bias (4).
    assert rows["conv"]["params"] == 76 and rows["conv"]["nonzero"] == 54
    assert rows["conv"]["statistics"] == 0
    total = ks.summary(model, print_fn=False)["total"]
    assert total["params"] == 76 + 8 + 15
    assert total["nonzero"] == 54 + 4 + 12


def test_summary_rejects_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="summary: `model` must be built"):
        ks.summary(model)
