"""LiteRT (TFLite) export, verified, and single-thread latency.

`to_tflite` converts a Keras model with `tf.lite.TFLiteConverter` using only
the TFLite builtin ops (the pip `ai_edge_litert` runtime has no Flex ops, so a
model that needs them fails here, loudly, instead of on the device), then
runs the flatbuffer in `ai_edge_litert` on sample inputs and compares it with
Keras (`training=False`) within a tolerance that depends on the quantization.
`tflite_latency` measures the median single-thread invoke time;
`tflite_ops` lists the operators of a flatbuffer.

Modes: `None` (float32), `"dynamic"` (int8 weights, float activations),
`"float16"` (float16 weights), `"int8"` (full integer with
`TFLITE_BUILTINS_INT8`, calibrated on `representative_data`; float input and
output). `sparse=True` adds `tf.lite.Optimize.EXPERIMENTAL_SPARSITY` so the
converter may store left-over unstructured zeros in a sparse format.

References:
    Zhu & Gupta, "To prune, or not to prune", https://arxiv.org/abs/1710.01878
    (the TFLite sparse-inference path); LiteRT conversion and quantization
    guides (ai.google.dev/edge/litert).
"""

import os
import statistics
import tempfile
import time

import keras
import numpy as np

QUANTIZATIONS = (None, "dynamic", "float16", "int8")

# Maximum absolute error allowed, relative to the largest Keras output.
DEFAULT_TOLERANCE = {
    None: 1e-4,
    "float16": 1e-2,
    "dynamic": 5e-2,
    "int8": 0.15,
}


def _interpreter(blob, num_threads=1):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=bytes(blob), num_threads=num_threads)


def tflite_ops(blob):
    """Sorted list of the operator names in a LiteRT flatbuffer.

    Example:

    >>> "CONV_2D" in tflite_ops(ks.to_tflite(model))

    Args:
        blob: Bytes. A `.tflite` flatbuffer.
    """
    interpreter = _interpreter(blob)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def _sample_inputs(model, representative_data, count, seed):
    if representative_data is not None and not callable(representative_data):
        data = representative_data
        if isinstance(data, (list, tuple)):
            return [np.asarray(d, dtype="float32")[:count] for d in data]
        return [np.asarray(data, dtype="float32")[:count]]
    rng = np.random.default_rng(seed)
    samples = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        if any(d is None for d in shape[1:]):
            raise ValueError(
                "to_tflite: input shape "
                f"{shape} has unknown dimensions; pass `representative_data` "
                "with concrete samples to verify the export."
            )
        samples.append(rng.normal(size=(count,) + shape[1:]).astype("float32"))
    return samples


def _representative_dataset(representative_data):
    if callable(representative_data):
        return representative_data
    samples = representative_data
    if not isinstance(samples, (list, tuple)):
        samples = [samples]
    samples = [np.asarray(s, dtype="float32") for s in samples]

    def generate():
        for i in range(min(len(samples[0]), 200)):
            yield [s[i : i + 1] for s in samples]

    return generate


def run_tflite(blob, inputs, num_threads=1):
    """Runs a flatbuffer on a list of input arrays; returns its outputs."""
    interpreter = _interpreter(blob, num_threads)
    details = interpreter.get_input_details()
    batch = len(inputs[0])
    for detail, array in zip(details, inputs):
        interpreter.resize_tensor_input(
            detail["index"], (batch,) + tuple(array.shape[1:])
        )
    interpreter.allocate_tensors()
    for detail, array in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], array.astype(detail["dtype"]))
    interpreter.invoke()
    return [
        interpreter.get_tensor(d["index"])
        for d in interpreter.get_output_details()
    ]


def _convert(model, quantization, representative_data, sparse):
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        ops = tf.lite.OpsSet.TFLITE_BUILTINS
        converter.target_spec.supported_ops = [ops]
        optimizations = []
        if quantization is not None:
            optimizations.append(tf.lite.Optimize.DEFAULT)
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.TFLITE_BUILTINS_INT8
            ]
            converter.representative_dataset = _representative_dataset(
                representative_data
            )
        if sparse:
            optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
        converter.optimizations = optimizations
        try:
            return converter.convert()
        except Exception as error:  # the converter raises several types
            message = str(error)
            if "Flex" in message or "Select TF" in message.replace("_", " "):
                raise ValueError(
                    f"to_tflite: model {model.name!r} needs TensorFlow ops "
                    "outside the TFLite builtins (Flex / SELECT_TF_OPS), "
                    "which the ai_edge_litert runtime does not have. Replace "
                    f"the layers that use them. Converter said: {message}"
                ) from error
            raise


def to_tflite(
    model,
    path=None,
    quantization=None,
    representative_data=None,
    sparse=False,
    tolerance=None,
    verify_samples=8,
):
    """Converts a Keras model to a builtins-only LiteRT flatbuffer, verified.

    The model is exported as a SavedModel and converted with
    `TFLITE_BUILTINS` only (`TFLITE_BUILTINS_INT8` for `"int8"`); the result
    runs in `ai_edge_litert` on sample inputs (`representative_data` when
    given, else seeded normal noise) and must match Keras within `tolerance`
    times the largest Keras output, or a ValueError is raised.

    Example:

    >>> blob = ks.to_tflite(ks.slim(model), "model.tflite")
    >>> ks.export.tflite_latency(blob)

    Args:
        model: A `keras.Model` with known input shapes (but the batch).
        path: String or `None`. Where to write the flatbuffer. Defaults to
            `None` (not written).
        quantization: `None`, `"dynamic"`, `"float16"` or `"int8"`.
            Defaults to `None` (float32).
        representative_data: Array (or list of arrays, one per input) of
            samples, or a generator function as `tf.lite` expects. Required
            for `"int8"` (calibration); used for verification when given.
            Defaults to `None`.
        sparse: Bool. Adds `tf.lite.Optimize.EXPERIMENTAL_SPARSITY` for
            unstructured zeros. Defaults to `False`.
        tolerance: Float or `None`. Maximum absolute error relative to the
            largest Keras output. Defaults to `None` (`DEFAULT_TOLERANCE` of
            the mode: 1e-4 float32, 1e-2 float16, 5e-2 dynamic, 0.15 int8).
        verify_samples: Int. Number of inputs to verify on; 0 skips the
            check. Defaults to `8`.

    Returns:
        The flatbuffer as bytes.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "to_tflite: `model` must be a keras.Model. Received "
            f"{type(model).__name__}."
        )
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"to_tflite: quantization={quantization!r} is not supported. "
            f"Expected one of {QUANTIZATIONS}."
        )
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "to_tflite: quantization='int8' needs `representative_data` "
            "(a few hundred typical inputs) to calibrate the activation "
            "ranges. Received representative_data=None."
        )
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE[quantization]
    if not isinstance(verify_samples, int) or verify_samples < 0:
        raise ValueError(
            "to_tflite: verify_samples must be an int >= 0. Received "
            f"verify_samples={verify_samples!r}."
        )
    blob = _convert(model, quantization, representative_data, sparse)
    flex = [op for op in tflite_ops(blob) if op.upper().startswith("FLEX")]
    if flex:
        raise ValueError(
            f"to_tflite: the flatbuffer uses Flex ops {flex}, which the "
            "ai_edge_litert runtime does not have."
        )
    if verify_samples:
        _verify(model, blob, representative_data, verify_samples, tolerance)
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "wb") as f:
            f.write(blob)
    return blob


def _verify(model, blob, representative_data, count, tolerance):
    inputs = _sample_inputs(model, representative_data, count, seed=0)
    expected = model(inputs[0] if len(inputs) == 1 else inputs, training=False)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    got = run_tflite(blob, inputs)
    for i, (e, g) in enumerate(zip(expected, got)):
        e = np.asarray(e, dtype="float32")
        if tuple(e.shape) != tuple(g.shape):
            raise ValueError(
                f"to_tflite: output {i} has shape {tuple(g.shape)} in LiteRT "
                f"and {tuple(e.shape)} in Keras."
            )
        scale = max(float(np.abs(e).max()), 1e-6)
        error = float(np.abs(e - g.astype("float32")).max())
        if error > tolerance * scale:
            raise ValueError(
                f"to_tflite: LiteRT output {i} differs from Keras by "
                f"{error:.3g} (> tolerance {tolerance} x output scale "
                f"{scale:.3g}). The conversion changed the model's results."
            )


def tflite_latency(blob, num_threads=1, runs=50, warmup=5, inputs=None):
    """Median LiteRT invoke time (seconds) of a flatbuffer, batch of one.

    Example:

    >>> seconds = tflite_latency(ks.to_tflite(model), num_threads=1)

    Args:
        blob: Bytes. A `.tflite` flatbuffer.
        num_threads: Int. LiteRT CPU threads. Defaults to `1`.
        runs: Int. Timed invocations (the median is returned). Defaults to
            `50`.
        warmup: Int. Untimed invocations first. Defaults to `5`.
        inputs: list of arrays or `None`. One batch-of-one array per input.
            Defaults to `None` (seeded normal noise).
    """
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(
            f"tflite_latency: runs must be an int >= 1. Received runs={runs!r}."
        )
    interpreter = _interpreter(blob, num_threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for i, detail in enumerate(interpreter.get_input_details()):
        shape = tuple(int(d) for d in detail["shape"])
        value = (
            inputs[i]
            if inputs is not None
            else rng.normal(size=shape).astype("float32")
        )
        interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
