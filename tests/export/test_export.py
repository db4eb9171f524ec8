"""Tests of `ks.to_tflite`, `tflite_ops` and `tflite_latency`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

import keras_serene as ks  # noqa: E402
from keras_serene.export import run_tflite  # noqa: E402
from keras_serene.export import tflite_latency  # noqa: E402
from keras_serene.export import tflite_ops  # noqa: E402
from keras_serene.export.latency import summarize_latencies  # noqa: E402


def _cnn(hidden=0):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    if hidden:
        x = layers.Dense(hidden, activation="relu")(x)
    outputs = layers.Dense(3, name="fc")(x)
    return keras.Model(inputs, outputs)


def _data(n=16):
    return np.random.default_rng(1).uniform(size=(n, 8, 8, 1)).astype("f4")


def _no_flex(ops):
    return not [op for op in ops if "FLEX" in op.upper()]


def test_float_export_matches_keras_and_writes_file(tmp_path):
    model = _cnn()
    path = tmp_path / "m.tflite"
    blob = ks.to_tflite(model, str(path))
    assert path.read_bytes() == blob
    ops = tflite_ops(blob)
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    assert _no_flex(ops)
    x = _data(5)
    (out,) = run_tflite(blob, [x])
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, model(x), atol=1e-5)


def test_fixed_batch_folds_the_shape_ops():
    model = _cnn(hidden=8)
    dynamic = tflite_ops(ks.to_tflite(model))
    assert {"SHAPE", "STRIDED_SLICE", "PACK"} <= set(dynamic)
    blob = ks.to_tflite(model, batch_size=1)
    ops = tflite_ops(blob)
    assert not {"SHAPE", "STRIDED_SLICE", "PACK"} & set(ops), ops
    x = _data(1)
    (out,) = run_tflite(blob, [x])
    np.testing.assert_allclose(out, model(x), atol=1e-5)
    # int8 calibrates and verifies in batches of the fixed size.
    int8 = ks.to_tflite(
        model, quantization="int8", representative_data=_data(32),
        batch_size=4,
    )  # fmt: skip
    assert run_tflite(int8, [_data(4)])[0].shape == (4, 3)
    with pytest.raises(ValueError, match="needs at least 16 samples; got 8"):
        ks.to_tflite(model, batch_size=16)


def test_fixed_batch_of_a_two_input_model():
    a, b = keras.Input((3,)), keras.Input((2,))
    x = layers.Concatenate()([a, b])
    model = keras.Model([a, b], layers.Dense(2)(x))
    blob = ks.to_tflite(model, batch_size=2)
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(2, 3)), rng.normal(size=(2, 2))
    (out,) = run_tflite(blob, [xa.astype("f4"), xb.astype("f4")])
    np.testing.assert_allclose(out, model([xa, xb]), atol=1e-5)


@pytest.mark.parametrize("mode", ["dynamic", "float16", "int8"])
def test_quantized_exports(mode):
    model = _cnn(hidden=512)  # > 1024 weights: the converter quantizes it
    x = _data(32)
    blob = ks.to_tflite(model, quantization=mode, representative_data=x)
    ops = tflite_ops(blob)
    assert _no_flex(ops)
    if mode == "int8":
        assert "QUANTIZE" in ops
    if mode == "float16":
        assert "DEQUANTIZE" in ops
    (out,) = run_tflite(blob, [x[:4]])
    assert out.shape == (4, 3)
    # Smaller than the float32 flatbuffer (weights in 8 or 16 bits).
    assert len(blob) < len(ks.to_tflite(model, verify_samples=0))


def test_sparse_flag_converts_and_verifies():
    model = _cnn()
    weights = model.get_layer("fc").get_weights()
    weights[0][::2] = 0.0
    model.get_layer("fc").set_weights(weights)
    blob = ks.to_tflite(model, sparse=True)
    assert _no_flex(tflite_ops(blob))
    (out,) = run_tflite(blob, [_data(2)])
    np.testing.assert_allclose(out, model(_data(2)), atol=1e-5)


def test_slimmed_model_exports_smaller():
    model = _cnn()
    weights = model.get_layer("conv").get_weights()
    weights[0][..., :2] = 0.0
    weights[1][:2] = -1.0  # relu(-1) = 0: dead filters
    model.get_layer("conv").set_weights(weights)
    small = ks.slim(model)
    dense, slim_blob = ks.to_tflite(model), ks.to_tflite(small)
    assert len(slim_blob) < len(dense)
    x = _data(3)
    np.testing.assert_allclose(
        run_tflite(slim_blob, [x])[0], run_tflite(dense, [x])[0], atol=1e-5
    )


def test_errors():
    model = _cnn()
    with pytest.raises(ValueError, match="quantization='int4'"):
        ks.to_tflite(model, quantization="int4")
    with pytest.raises(ValueError, match="representative_data"):
        ks.to_tflite(model, quantization="int8")
    with pytest.raises(TypeError, match="keras.Model"):
        ks.to_tflite("model")
    with pytest.raises(ValueError, match="runs"):
        tflite_latency(b"", runs=0)


def test_verification_catches_a_too_tight_tolerance():
    model = _cnn()
    with pytest.raises(ValueError, match="differs from Keras"):
        ks.to_tflite(
            model,
            quantization="dynamic",
            representative_data=_data(),
            tolerance=1e-9,
        )


def test_latency_returns_a_positive_float():
    blob = ks.to_tflite(_cnn(), verify_samples=0)
    value = tflite_latency(blob, num_threads=1, runs=3, warmup=1)
    assert isinstance(value, float) and value > 0.0


def test_int8_with_wrongly_shaped_data_names_the_shape_not_the_array():
    model = _cnn()
    flat = _data(16).reshape(16, 64)
    with pytest.raises(ValueError) as info:
        ks.to_tflite(model, quantization="int8", representative_data=flat)
    message = str(info.value)
    assert message.startswith(
        "to_tflite: `representative_data` must have shape (batch, 8, 8, 1)"
    )
    assert "Received: representative_data=<ndarray shape=(16, 64)" in message
    assert len(message) < 300  # No array dump.
    with pytest.raises(ValueError, match=r"one array per model input \(1\)"):
        ks.to_tflite(model, representative_data=[_data(), _data()])
    with pytest.raises(ValueError, match="finite values"):
        ks.to_tflite(model, representative_data=_data() * np.nan)
    with pytest.raises(ValueError, match="at least one sample"):
        ks.to_tflite(model, representative_data=_data()[:0])


def test_int8_generator_with_wrong_shapes_fails_at_our_boundary():
    model = _cnn()

    def generator():
        for _ in range(4):
            yield [np.zeros((1, 64), "float32")]

    with pytest.raises(ValueError) as info:
        ks.to_tflite(model, quantization="int8", representative_data=generator)
    message = str(info.value)
    assert message.startswith("to_tflite: int8 calibration")
    assert "(None, 8, 8, 1)" in message and len(message) < 800
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tolerance": float("nan")}, ValueError, "tolerance=nan"),
        ({"tolerance": 0.0}, ValueError, "tolerance=0.0"),
        ({"verify_samples": -1}, ValueError, "verify_samples=-1"),
        ({"verify_samples": 2.0}, TypeError, "verify_samples=2.0"),
        ({"sparse": "yes"}, TypeError, "sparse='yes'"),
        ({"path": 3}, TypeError, "path=3"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"batch_size": "1"}, TypeError, "batch_size='1'"),
    ],
)
def test_to_tflite_argument_errors(kwargs, error, match):
    (arg,) = kwargs
    with pytest.raises(error, match=rf"to_tflite: `{arg}` must .*{match}"):
        ks.to_tflite(_cnn(), **kwargs)


def test_ops_read_from_the_schema_match_the_interpreter():
    # tflite_ops reads the flatbuffer schema (public); this cross-checks it
    # against the interpreter's private op list while LiteRT still has one.
    from ai_edge_litert.interpreter import Interpreter

    blob = ks.to_tflite(_cnn(hidden=4), verify_samples=0)
    ops = tflite_ops(blob)
    assert {"CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE"} <= set(ops)
    assert ops == sorted(set(ops)) and _no_flex(ops)
    interpreter = Interpreter(model_content=blob)
    if not hasattr(interpreter, "_get_ops_details"):
        pytest.skip("LiteRT no longer has _get_ops_details to compare with")
    private = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    assert tflite_ops(blob) == private
    with pytest.raises(ValueError, match="tflite_ops: `blob` must be"):
        tflite_ops(b"not a flatbuffer")


def test_latency_summary_by_hand():
    # Paired repeats: dense 2, 4, 2 ms; slim 1, 1, 2 ms -> ratios .5 .25 1.
    times = {"dense": [2e-3, 4e-3, 2e-3], "slim": [1e-3, 1e-3, 2e-3]}
    result = summarize_latencies(times, "dense")
    assert result["dense"]["ratio"] == 1.0
    assert result["slim"]["ratio"] == pytest.approx(0.5)
    assert result["slim"]["ratio_min"] == pytest.approx(0.25)
    assert result["slim"]["ratio_max"] == pytest.approx(1.0)
    assert result["slim"]["latency_ms"] == pytest.approx(1.0)
    assert result["dense"]["latency_ms_max"] == pytest.approx(4.0)


def test_latency_ratios_of_two_models():
    dense = ks.to_tflite(_cnn(hidden=64), verify_samples=0)
    small = ks.to_tflite(_cnn(), verify_samples=0)
    result = ks.export.latency_ratios(
        {"dense": dense, "small": small}, repeats=2, runs=3, warmup=1
    )
    assert list(result) == ["dense", "small"]
    assert result["dense"]["ratio"] == 1.0  # t / t, exactly
    assert result["small"]["ratio_min"] <= result["small"]["ratio"]
    assert result["small"]["ratio"] <= result["small"]["ratio_max"]
    assert result["small"]["repeats"] == 2
    with pytest.raises(ValueError, match="reference='nope'"):
        ks.export.latency_ratios({"dense": dense}, reference="nope")
    with pytest.raises(ValueError, match="repeats=0"):
        ks.export.latency_ratios({"dense": dense}, repeats=0)
