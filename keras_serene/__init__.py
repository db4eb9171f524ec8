"""keras_serene: learn which weights and neurons matter, then remove the rest.

Sensitivity-driven pruning for Keras 3 (LOBSTER, NeurIPS 2018 output
sensitivity, SeReNe), neurons at equilibrium (NEq), PSP-entropy, receding
neuron importances (RNI), physical slimming and TFLite export.

Importing the package has no side effects besides one warning when
`TF_USE_LEGACY_KERAS=1` asks for Keras 2, which keras_serene does not support.
"""

import os
import warnings


class KerasSereneWarning(UserWarning):
    """Warnings raised by keras_serene (turned into errors in its tests)."""


if os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true"):
    warnings.warn(
        "TF_USE_LEGACY_KERAS is set: keras_serene supports Keras 3 only "
        "(`import keras`), not tf_keras. Unset TF_USE_LEGACY_KERAS to use it.",
        KerasSereneWarning,
        stacklevel=2,
    )

# Public API. Each line below is owned by the module it imports; the
# method packages (core, sensitivity, neq, psp, rni, slimming, export, app)
# hold the code, and callbacks/layers/metrics/regularizers are faces.
from keras_serene import callbacks  # noqa: E402
from keras_serene import export  # noqa: E402
from keras_serene import layers  # noqa: E402
from keras_serene import metrics  # noqa: E402
from keras_serene import regularizers  # noqa: E402
from keras_serene import sensitivity  # noqa: E402
from keras_serene.app import datasets  # noqa: E402
from keras_serene.app import plots  # noqa: E402
from keras_serene.app import report  # noqa: E402
from keras_serene.app import zoo  # noqa: E402
from keras_serene.core.strip import strip_masks  # noqa: E402
from keras_serene.export.summary import summary  # noqa: E402
from keras_serene.export.tflite import to_tflite  # noqa: E402
from keras_serene.rni.importance_optimizer import ImportanceOptimizer  # noqa: E402
from keras_serene.rni.importance_pruning import prune_by_importance  # noqa: E402
from keras_serene.sensitivity.sensitivity_model import SensitivityModel  # noqa: E402
from keras_serene.sensitivity.sensitivity_optimizer import (  # noqa: E402
    SensitivityOptimizer,
)
from keras_serene.slimming import slim  # noqa: E402
from keras_serene.slimming import slimming_plan  # noqa: E402

__version__ = "0.1.0"
