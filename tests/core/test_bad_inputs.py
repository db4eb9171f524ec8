"""The bad-input table: every public callable refuses a user mistake clearly.

Each row calls one public constructor or function with one mistake and
checks the error type and that the message names the owner (class or
function), the argument and the value received, and stays short (no array
dumps). Rows for classes other sessions own are those that already fail
clearly; the table is the place to add more.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_serene as ks

NAN, INF = float("nan"), float("inf")
X = np.random.default_rng(0).normal(size=(12, 6, 6, 1)).astype("float32")
Y = np.arange(12) % 3


def _cnn(channels=4):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(channels, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3, name="out")(h)
    return keras.Model(inputs, outputs)


def _sgd():
    return keras.optimizers.SGD(0.1)


def _logger(*args, **kwargs):
    return ks.callbacks.PSPEntropyLogger(*args, **kwargs)


def _fit_with(callback):
    model = _cnn()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(X, np.zeros((12, 3)), epochs=1, verbose=0, callbacks=[callback])


def _sparse_mlp():
    """64-128-10 with 98% of each kernel zero (a tfmot-98%-like model)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(128), keras.layers.Dense(10)]
    )
    rng = np.random.default_rng(0)
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * (rng.random(kernel.shape) < 0.02), bias])
    return model


def _blob():
    return ks.to_tflite(_cnn(), verify_samples=0)


# (id, call, error, substrings the message must hold)
CASES = [
    # PSP-entropy: the metric and the callback.
    (
        "logger-lengths",
        lambda: _logger((X, Y[:9])),
        ValueError,
        ("PSPEntropyLogger", "`validation_data`", "(x: 12, y: 9)"),
    ),
    (
        "logger-none",
        lambda: _logger(None),
        ValueError,
        ("PSPEntropyLogger", "validation_data=None"),
    ),
    (
        "logger-unbatched",
        lambda: _logger(tf.data.Dataset.from_tensor_slices((X, Y))),
        ValueError,
        ("PSPEntropyLogger", "batched", "validation_data=<"),
    ),
    (
        "logger-frequency",
        lambda: _logger((X, Y), frequency=0),
        ValueError,
        ("PSPEntropyLogger", "`frequency`", "frequency=0"),
    ),
    (
        "logger-batch-size-float",
        lambda: _logger((X, Y), batch_size=2.5),
        TypeError,
        ("PSPEntropyLogger", "`batch_size`", "batch_size=2.5"),
    ),
    (
        "logger-per",
        lambda: _logger((X, Y), per="pixel"),
        ValueError,
        ("PSPEntropyLogger", "`per`", "per='pixel'"),
    ),
    (
        "logger-layers-str",
        lambda: _logger((X, Y), layers="conv"),
        TypeError,
        ("PSPEntropyLogger", "`layers`", "layers='conv'"),
    ),
    (
        "logger-prefix",
        lambda: _logger((X, Y), prefix=3),
        TypeError,
        ("PSPEntropyLogger", "`prefix`", "prefix=3"),
    ),
    (
        "psp-lengths",
        lambda: ks.metrics.psp_entropy(_cnn(), X, Y[:5]),
        ValueError,
        ("psp_entropy", "(x: 12, y: 5)"),
    ),
    (
        "psp-input-shape",
        lambda: ks.metrics.psp_entropy(_cnn(), X.reshape(12, 36), Y),
        ValueError,
        ("psp_entropy", "`x`", "(batch, 6, 6, 1)", "shape=(12, 36)"),
    ),
    (
        "logger-input-shape-in-fit",
        lambda: _fit_with(_logger((X.reshape(12, 36), Y))),
        ValueError,
        ("PSPEntropyLogger", "`validation_data`", "(batch, 6, 6, 1)"),
    ),
    (
        "psp-batch-size",
        lambda: ks.metrics.psp_entropy(_cnn(), X, Y, batch_size=0),
        ValueError,
        ("psp_entropy", "`batch_size`", "batch_size=0"),
    ),
    (
        "psp-num-classes",
        lambda: ks.metrics.psp_entropy(_cnn(), X, Y, num_classes=-2),
        ValueError,
        ("psp_entropy", "`num_classes`", "num_classes=-2"),
    ),
    # RNI.
    (
        "prune-min-channels-above-layer",
        lambda: ks.prune_by_importance(_cnn(16), 0.5, min_channels=100),
        ValueError,
        ("prune_by_importance", "`min_channels`", "min_channels=100", "[16]"),
    ),
    (
        "prune-ratio-nan",
        lambda: ks.prune_by_importance(_cnn(), NAN),
        ValueError,
        ("prune_by_importance", "`ratio`", "ratio=nan"),
    ),
    (
        "prune-ratio-one",
        lambda: ks.prune_by_importance(_cnn(), 1.0),
        ValueError,
        ("prune_by_importance", "`ratio`", "< 1.0", "ratio=1.0"),
    ),
    (
        "prune-model",
        lambda: ks.prune_by_importance("model", 0.5),
        TypeError,
        ("prune_by_importance", "`model`", "model='model'"),
    ),
    (
        "bounded-bn-epsilon-inf",
        lambda: ks.layers.BoundedBatchNormalization(epsilon=INF),
        ValueError,
        ("BoundedBatchNormalization", "`epsilon`", "epsilon=inf"),
    ),
    (
        "bounded-bn-momentum",
        lambda: ks.layers.BoundedBatchNormalization(momentum=1.0),
        ValueError,
        ("BoundedBatchNormalization", "`momentum`", "momentum=1.0"),
    ),
    (
        "bounded-bn-axis",
        lambda: ks.layers.BoundedBatchNormalization(axis=[1, 2]),
        TypeError,
        ("BoundedBatchNormalization", "`axis`", "axis=[1, 2]"),
    ),
    (
        "to-plain-bn-model",
        lambda: ks.layers.to_plain_batch_normalization("model"),
        TypeError,
        ("to_plain_batch_normalization", "`model`", "model='model'"),
    ),
    (
        "receding-strength-nan",
        lambda: ks.regularizers.RecedingImportance(strength=NAN),
        ValueError,
        ("RecedingImportance", "`strength`", "strength=nan"),
    ),
    (
        "receding-shift-str",
        lambda: ks.regularizers.RecedingImportance(shift="3"),
        TypeError,
        ("RecedingImportance", "`shift`", "shift='3'"),
    ),
    # Export and summary.
    (
        "tflite-int8-shape",
        lambda: ks.to_tflite(
            _cnn(), quantization="int8", representative_data=X.reshape(12, 36)
        ),
        ValueError,
        ("to_tflite", "`representative_data`", "(batch, 6, 6, 1)", "(12, 36)"),
    ),
    (
        "tflite-sparse-int8",
        lambda: ks.to_tflite(
            _sparse_mlp(),
            sparse=True,
            quantization="int8",
            representative_data=np.random.default_rng(0).random((32, 64)),
        ),  # fmt: skip
        ValueError,
        ("to_tflite", "does not run in LiteRT", "sparse=False"),
    ),
    (
        "tflite-int8-none",
        lambda: ks.to_tflite(_cnn(), quantization="int8"),
        ValueError,
        ("to_tflite", "`representative_data`", "representative_data=None"),
    ),
    (
        "tflite-quantization",
        lambda: ks.to_tflite(_cnn(), quantization="int4"),
        ValueError,
        ("to_tflite", "`quantization`", "quantization='int4'"),
    ),
    (
        "tflite-tolerance-nan",
        lambda: ks.to_tflite(_cnn(), tolerance=NAN),
        ValueError,
        ("to_tflite", "`tolerance`", "tolerance=nan"),
    ),
    (
        "tflite-model",
        lambda: ks.to_tflite("model"),
        TypeError,
        ("to_tflite", "`model`", "model='model'"),
    ),
    (
        "latency-runs",
        lambda: ks.export.tflite_latency(_blob(), runs=0),
        ValueError,
        ("tflite_latency", "`runs`", "runs=0"),
    ),
    (
        "latency-threads",
        lambda: ks.export.tflite_latency(_blob(), num_threads=0),
        ValueError,
        ("tflite_latency", "`num_threads`", "num_threads=0"),
    ),
    (
        "latency-blob",
        lambda: ks.export.tflite_latency("model.tflite"),
        TypeError,
        ("tflite_latency", "`blob`", "blob='model.tflite'"),
    ),
    (
        "latency-ratios-empty",
        lambda: ks.export.latency_ratios({}),
        ValueError,
        ("latency_ratios", "`blobs`", "blobs={}"),
    ),
    (
        "summary-model",
        lambda: ks.summary("model"),
        TypeError,
        ("summary", "`model`", "keras.Model"),
    ),
    (
        "summary-unbuilt",
        lambda: ks.summary(keras.Sequential([keras.layers.Dense(2)])),
        ValueError,
        ("summary", "`model`", "be built", "Received: model=<Sequential"),
    ),
    (
        "summary-print-fn",
        lambda: ks.summary(_cnn(), print_fn="stdout"),
        TypeError,
        ("summary", "`print_fn`", "print_fn='stdout'"),
    ),
    # Data and figures.
    (
        "plot-psp-bins",
        lambda: ks.plots.plot_psp_entropy({"fc": [0.1, 0.2]}, bins=0),
        ValueError,
        ("plot_psp_entropy", "`bins`", "bins=0"),
    ),
    (
        "datasets-name",
        lambda: ks.datasets.load("mnist"),
        ValueError,
        ("datasets.load", "`name`", "name='mnist'"),
    ),
    (
        "digits-test-fraction",
        lambda: ks.datasets.load_digits(test_fraction=1.0),
        ValueError,
        ("datasets.load_digits", "`test_fraction`", "test_fraction=1.0"),
    ),
    (
        "tfds-image-size",
        lambda: ks.datasets.load_tfds("mnist", image_size=(8,)),
        ValueError,
        ("datasets.load_tfds", "`image_size`", "image_size=(8,)"),
    ),
    (
        "plot-history-keys",
        lambda: ks.plots.plot_history({"loss": [1.0]}, keys="loss"),
        TypeError,
        ("plot_history", "`keys`", "keys='loss'"),
    ),
    # Other sessions' classes, rows that already fail clearly.
    (
        "optimizer-decay-negative",
        lambda: ks.SensitivityOptimizer(_sgd(), decay=-1.0),
        ValueError,
        ("SensitivityOptimizer", "`decay`", "decay=-1.0"),
    ),
    (
        "optimizer-inner",
        lambda: ks.SensitivityOptimizer("sgd"),
        TypeError,
        ("SensitivityOptimizer", "`inner_optimizer`", "inner_optimizer='sgd'"),
    ),
    (
        "optimizer-learning-rate",
        lambda: ks.SensitivityOptimizer(_sgd(), learning_rate=0.1),
        ValueError,
        ("SensitivityOptimizer", "`learning_rate`", "learning_rate=0.1"),
    ),
    (
        "pruning-target",
        lambda: ks.callbacks.SensitivityPruning(target_sparsity=1.5),
        ValueError,
        ("SensitivityPruning", "`target_sparsity`", "target_sparsity=1.5"),
    ),
    (
        "pruning-tolerance",
        lambda: ks.callbacks.SensitivityPruning(tolerance=-1),
        ValueError,
        ("SensitivityPruning", "`tolerance`", "tolerance=-1"),
    ),
    (
        "freezing-none",
        lambda: ks.callbacks.EquilibriumFreezing(None),
        ValueError,
        ("EquilibriumFreezing", "`validation_data`", "validation_data=None"),
    ),
    (
        "freezing-momentum",
        lambda: ks.callbacks.EquilibriumFreezing(X, velocity_momentum=2.0),
        ValueError,
        ("EquilibriumFreezing", "`velocity_momentum`", "velocity_momentum=2.0"),
    ),
    (
        "output-sensitivity-mode",
        lambda: ks.sensitivity.OutputSensitivity(mode="x"),
        ValueError,
        ("OutputSensitivity", "`mode`", "mode='x'"),
    ),
    (
        "neuron-sensitivity-estimator",
        lambda: ks.sensitivity.NeuronSensitivity(estimator="x"),
        ValueError,
        ("NeuronSensitivity", "`estimator`", "estimator='x'"),
    ),
    (
        "sensitivity-model",
        lambda: ks.SensitivityModel("x"),
        TypeError,
        ("SensitivityModel", "`model`", "model='x'"),
    ),
    (
        "importance-optimizer-inner",
        lambda: ks.ImportanceOptimizer("sgd"),
        TypeError,
        ("ImportanceOptimizer", "`inner_optimizer`", "inner_optimizer='sgd'"),
    ),
    (
        "strip-masks-model",
        lambda: ks.strip_masks("x"),
        TypeError,
        ("strip_masks", "`model`", "keras.Model"),
    ),
    (
        "optimizer-decay-nan",
        lambda: ks.SensitivityOptimizer(_sgd(), decay=NAN),
        ValueError,
        ("SensitivityOptimizer", "`decay`", "decay=nan"),
    ),
    (
        "optimizer-decay-inf",
        lambda: ks.SensitivityOptimizer(_sgd(), decay=INF),
        ValueError,
        ("SensitivityOptimizer", "`decay`", "decay=inf"),
    ),
    (
        "optimizer-nested",
        lambda: ks.SensitivityOptimizer(ks.SensitivityOptimizer(_sgd())),
        ValueError,
        ("SensitivityOptimizer", "`inner_optimizer`", "masks"),
    ),
    (
        "optimizer-sensitivity-name",
        lambda: ks.SensitivityOptimizer(_sgd(), sensitivity="lobster"),
        ValueError,
        ("SensitivityOptimizer", "`sensitivity`", "sensitivity='lobster'"),
    ),
    (
        "masking-optimizer-inner",
        lambda: ks.MaskingOptimizer("sgd"),
        TypeError,
        ("MaskingOptimizer", "`inner_optimizer`", "inner_optimizer='sgd'"),
    ),
    (
        "freezing-lengths",
        lambda: ks.callbacks.EquilibriumFreezing((X, Y[:9])),
        ValueError,
        ("EquilibriumFreezing", "`validation_data`", "(x: 12, y: 9)"),
    ),
    (
        "pruning-backup-dir",
        lambda: ks.callbacks.SensitivityPruning(backup_dir=3),
        TypeError,
        ("SensitivityPruning", "`backup_dir`", "backup_dir=3"),
    ),
    (
        "zoo-name",
        lambda: ks.zoo.get("lenet7"),
        ValueError,
        ("zoo.get", "`name`", "name='lenet7'"),
    ),
    (
        "slim-model",
        lambda: ks.slim("model.keras"),
        TypeError,
        ("slim", "`model`", "model='model.keras'"),
    ),
]


@pytest.mark.parametrize(
    "call, error, needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gets_a_clear_error(call, error, needles):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert len(message) < 600, message  # Never an array dump.


def test_the_table_covers_the_public_api():
    covered = " ".join(" ".join(c[3]) for c in CASES)
    for name in (
        "PSPEntropyLogger",
        "psp_entropy",
        "prune_by_importance",
        "BoundedBatchNormalization",
        "RecedingImportance",
        "to_tflite",
        "tflite_latency",
        "latency_ratios",
        "summary",
        "datasets.load",
        "SensitivityOptimizer",
        "SensitivityPruning",
        "EquilibriumFreezing",
        "SensitivityModel",
        "ImportanceOptimizer",
        "strip_masks",
        "MaskingOptimizer",
        "zoo.get",
        "slim",
    ):
        assert name in covered, name
