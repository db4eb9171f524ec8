"""LiteRT (TFLite) export, verified, and single-thread latency.

`to_tflite` converts a Keras model with `tf.lite.TFLiteConverter` using only
the TFLite builtin ops (the pip `ai_edge_litert` runtime has no Flex ops, so a
model that needs them fails here, loudly, instead of on the device), then
runs the flatbuffer in `ai_edge_litert` on sample inputs and compares it with
Keras (`training=False`) within a tolerance that depends on the quantization.
`tflite_ops` lists the operators of a flatbuffer (read from the flatbuffer
schema, no private interpreter API); latency lives in
`keras_serene.export.latency` (`tflite_latency`, `latency_ratios`).
Arguments are checked before converting: `representative_data` must hold
one array per model input, each a batch shaped like that input.

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
import tempfile

import keras
import numpy as np

from keras_serene.core import checks

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

    Read from the flatbuffer itself with LiteRT's generated schema
    (`ai_edge_litert.schema_py_generated`, the `.tflite` format), not from
    the interpreter's private `_get_ops_details`: builtin operators by their
    `BuiltinOperator` name (`"CONV_2D"`), custom ones by their custom code
    (Flex ops read `"FlexAddV2"`, ...).

    Example:

    >>> "CONV_2D" in tflite_ops(ks.to_tflite(model))

    Args:
        blob: Bytes. A `.tflite` flatbuffer.
    """
    from ai_edge_litert import schema_py_generated as schema

    checks.check_type("tflite_ops", "blob", blob, (bytes, bytearray))
    try:
        model = schema.Model.GetRootAs(bytes(blob), 0)
        names = {
            code: name
            for name, code in vars(schema.BuiltinOperator).items()
            if not name.startswith("_")
        }
        opcodes = []
        for i in range(model.OperatorCodesLength()):
            opcode = model.OperatorCodes(i)
            # The schema keeps codes < 127 in the deprecated int8 field.
            code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
            if code == schema.BuiltinOperator.CUSTOM:
                opcodes.append(opcode.CustomCode().decode("utf-8"))
            else:
                opcodes.append(names.get(code, f"BUILTIN_{code}"))
        used = set()
        for g in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(g)
            for j in range(subgraph.OperatorsLength()):
                used.add(opcodes[subgraph.Operators(j).OpcodeIndex()])
    except Exception as error:  # flatbuffers raises several types
        checks.fail(
            "tflite_ops",
            "blob",
            f"be a .tflite flatbuffer (reading it failed: {error})",
            blob,
        )
    return sorted(used)


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


def _representative_dataset(representative_data, batch_size=1):
    if callable(representative_data):
        return representative_data
    samples = representative_data
    if not isinstance(samples, (list, tuple)):
        samples = [samples]
    samples = [np.asarray(s, dtype="float32") for s in samples]

    def generate():
        for i in range(
            0, min(len(samples[0]), 200) - batch_size + 1, batch_size
        ):
            yield [s[i : i + batch_size] for s in samples]

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


def _signature(model, batch_size):
    """Fixed-batch input specs for `model.export` (None: dynamic batch)."""
    if batch_size is None:
        return None
    import tensorflow as tf

    specs = [
        tf.TensorSpec((batch_size,) + tuple(t.shape[1:]), t.dtype)
        for t in model.inputs
    ]
    return specs if len(specs) == 1 else [specs]


def _convert(model, quantization, representative_data, sparse, batch_size):
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        model.export(
            folder,
            format="tf_saved_model",
            verbose=False,
            input_signature=_signature(model, batch_size),
        )
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
                representative_data, batch_size or 1
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
            if quantization == "int8":
                # Calibration runs the user's generator inside the converter,
                # whose errors print the arrays; keep the message short.
                shapes = _input_shapes(model)
                short = message if len(message) < 300 else message[:297] + "..."
                raise ValueError(
                    "to_tflite: int8 calibration on `representative_data` "
                    "failed. A generator function must yield lists of one "
                    "float32 array per model input, each a batch of one "
                    f"sample with the input's shape {shapes}. "
                    f"Converter said: {short}"
                ) from None
            raise


def to_tflite(
    model,
    path=None,
    quantization=None,
    representative_data=None,
    sparse=False,
    tolerance=None,
    verify_samples=8,
    batch_size=None,
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
        batch_size: Int >= 1 or `None`. Fixes the inputs' batch dimension
            (`1`: a phone's one-at-a-time inference), so the shape ops a
            dynamic batch needs (`SHAPE`, `STRIDED_SLICE`, `PACK` before a
            `Flatten`'s `RESHAPE`) fold into constants: on a small model
            they are a measurable part of each invoke. Such a flatbuffer
            cannot be resized to another batch. Defaults to `None` (a
            dynamic batch).

    Returns:
        The flatbuffer as bytes.
    """
    owner = "to_tflite"
    checks.check_type(owner, "model", model, keras.Model, "be a keras.Model")
    if not model.built:
        checks.fail(owner, "model", "be built (call it on data first)", model)
    if path is not None:
        checks.check_type(
            owner, "path", path, (str, os.PathLike), "be a file path or None"
        )
    checks.check_choice(owner, "quantization", quantization, QUANTIZATIONS)
    if quantization == "int8" and representative_data is None:
        checks.fail(
            owner,
            "representative_data",
            "hold a few hundred typical inputs when quantization='int8' "
            "(they calibrate the activation ranges)",
            None,
        )
    _check_representative_data(model, representative_data)
    checks.check_bool(owner, "sparse", sparse)
    tolerance = checks.check_number(
        owner,
        "tolerance",
        tolerance,
        minimum=0.0,
        min_inclusive=False,
        allow_none=True,
    )
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE[quantization]
    checks.check_int(owner, "verify_samples", verify_samples, minimum=0)
    if batch_size is not None:
        checks.check_int(owner, "batch_size", batch_size, minimum=1)
    blob = _convert(
        model, quantization, representative_data, sparse, batch_size
    )
    flex = [op for op in tflite_ops(blob) if op.upper().startswith("FLEX")]
    if flex:
        raise ValueError(
            f"to_tflite: the flatbuffer uses Flex ops {flex}, which the "
            "ai_edge_litert runtime does not have."
        )
    if verify_samples:
        _verify(
            model,
            blob,
            representative_data,
            verify_samples,
            tolerance,
            sparse,
            quantization,
            batch_size,
        )
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with open(path, "wb") as f:
            f.write(blob)
    return blob


def _input_shapes(model):
    try:
        return [tuple(t.shape) for t in model.inputs]
    except (AttributeError, TypeError, ValueError):
        return None


def _check_representative_data(model, data):
    """Arrays of samples shaped like the model's inputs (before converting).

    A generator function is checked while the converter calibrates on it.
    """
    if data is None or callable(data):
        return
    owner = "to_tflite"
    shapes = _input_shapes(model)
    arrays = list(data) if isinstance(data, (list, tuple)) else [data]
    if shapes is not None and len(arrays) != len(shapes):
        checks.fail(
            owner,
            "representative_data",
            f"hold one array per model input ({len(shapes)}), or be a "
            "generator function",
            data,
        )
    for i, array in enumerate(arrays):
        arg = "representative_data" + (f"[{i}]" if len(arrays) > 1 else "")
        try:
            values = np.asarray(array, dtype="float32")
        except (TypeError, ValueError):
            checks.fail(owner, arg, "be an array of numbers", array)
        if values.ndim == 0 or len(values) == 0:
            checks.fail(owner, arg, "hold at least one sample", array)
        if shapes is not None:
            checks.check_sample_shape(owner, arg, values, shapes[i][1:])
        if not np.all(np.isfinite(values)):
            checks.fail(owner, arg, "hold finite values (no nan or inf)", array)
    checks.check_same_length(
        owner,
        "representative_data",
        arrays,
        names=[f"input {i}" for i in range(len(arrays))],
    )


def _verify(
    model,
    blob,
    representative_data,
    count,
    tolerance,
    sparse,
    quantization,
    batch_size=None,
):
    inputs = _sample_inputs(model, representative_data, count, seed=0)
    if batch_size is not None:  # Whole fixed-size batches only.
        kept = len(inputs[0]) // batch_size * batch_size
        if kept == 0:
            raise ValueError(
                f"to_tflite: verifying a batch_size={batch_size} export "
                f"needs at least {batch_size} samples; got "
                f"{len(inputs[0])} (raise `verify_samples` or pass more "
                "`representative_data`)."
            )
        inputs = [array[:kept] for array in inputs]
    expected = model(inputs[0] if len(inputs) == 1 else inputs, training=False)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    try:
        step = batch_size or len(inputs[0])
        chunks = [
            run_tflite(blob, [a[i : i + step] for a in inputs])
            for i in range(0, len(inputs[0]), step)
        ]
        got = [np.concatenate(parts) for parts in zip(*chunks)]
    except RuntimeError as error:  # LiteRT refuses the flatbuffer.
        hint = (
            " LiteRT's XNNPACK kernels refuse sparse int8 layers: pass "
            "sparse=False or quantization=None."
            if sparse and quantization == "int8"
            else ""
        )
        raise ValueError(
            "to_tflite: the converted flatbuffer does not run in LiteRT ("
            f"{str(error).splitlines()[0][:200]}).{hint}"
        ) from None
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


# `tflite_latency` moved to `keras_serene.export.latency`; the old import
# path keeps working.
from keras_serene.export.latency import tflite_latency  # noqa: E402, F401
