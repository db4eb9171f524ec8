"""keras_serene: learn which weights and neurons matter, then remove the rest.

Sensitivity-driven pruning for Keras 3 (LOBSTER, NeurIPS 2018 output
sensitivity, SeReNe), neurons at equilibrium (NEq), PSP-entropy, receding
neuron importances (RNI), physical slimming and TFLite export.

Importing the package has no side effects besides one warning when
`TF_USE_LEGACY_KERAS=1` asks for Keras 2, which keras_serene does not support.

The public names (`ks.SensitivityOptimizer`, `ks.callbacks`, ...) are
imported on first use (PEP 562 module `__getattr__`), so `keras-serene
--help` starts without TensorFlow. The first use of any of them imports them
all, which registers every keras_serene class with Keras's serialization;
when Keras is already imported (`import keras` first, the usual order) they
are imported at once. A fresh process that only loads a `.keras` file holding
keras_serene layers should `import keras` before `import keras_serene`.
"""

import importlib as _importlib
import os as _os
import sys as _sys
import warnings as _warnings

__version__ = "0.1.0"


class KerasSereneWarning(UserWarning):
    """Warnings raised by keras_serene (turned into errors in its tests)."""


if _os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true"):
    _warnings.warn(
        "TF_USE_LEGACY_KERAS is set: keras_serene supports Keras 3 only "
        "(`import keras`), not tf_keras. Unset TF_USE_LEGACY_KERAS to use it.",
        KerasSereneWarning,
        stacklevel=2,
    )

# Public API: name -> (module, attribute or None for the module itself).
# The method packages (core, sensitivity, neq, psp, rni, slimming, export,
# app) hold the code; callbacks/layers/metrics/regularizers are faces.
_PUBLIC = {
    "callbacks": ("keras_serene.callbacks", None),
    "export": ("keras_serene.export", None),
    "layers": ("keras_serene.layers", None),
    "metrics": ("keras_serene.metrics", None),
    "regularizers": ("keras_serene.regularizers", None),
    "sensitivity": ("keras_serene.sensitivity", None),
    "datasets": ("keras_serene.app.datasets", None),
    "plots": ("keras_serene.app.plots", None),
    "report": ("keras_serene.app.report", None),
    "zoo": ("keras_serene.app.zoo", None),
    "strip_masks": ("keras_serene.core.strip", "strip_masks"),
    "summary": ("keras_serene.export.summary", "summary"),
    "to_tflite": ("keras_serene.export.tflite", "to_tflite"),
    "ImportanceOptimizer": (
        "keras_serene.rni.importance_optimizer",
        "ImportanceOptimizer",
    ),
    "prune_by_importance": (
        "keras_serene.rni.importance_pruning",
        "prune_by_importance",
    ),
    "MaskingOptimizer": (
        "keras_serene.core.masking_optimizer",
        "MaskingOptimizer",
    ),
    "SensitivityModel": (
        "keras_serene.sensitivity.sensitivity_model",
        "SensitivityModel",
    ),
    "SensitivityOptimizer": (
        "keras_serene.sensitivity.sensitivity_optimizer",
        "SensitivityOptimizer",
    ),
    "slim": ("keras_serene.slimming", "slim"),
    "slimming_plan": ("keras_serene.slimming", "slimming_plan"),
}

__all__ = sorted(["KerasSereneWarning", "__version__", *_PUBLIC])


def _load(name):
    module_name, attribute = _PUBLIC[name]
    module = _importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # Later lookups skip __getattr__.
    return value


def _load_all():
    for name in _PUBLIC:
        if name not in globals():
            _load(name)


def __getattr__(name):
    if name in _PUBLIC:
        _load_all()  # One use registers every class with Keras.
        return globals()[name]
    raise AttributeError(f"module 'keras_serene' has no attribute {name!r}")


def __dir__():
    return list(__all__)


if "keras" in _sys.modules:  # Keras is loaded: importing costs nothing more.
    _load_all()
