"""`strip_masks`: a plain Keras model with the masks baked into its weights.

The masks live in a `ks.MaskingOptimizer` (`keras_serene.core.masking`).
For deployment, or to hand the model to code that knows nothing of
keras_serene, `strip_masks` returns a new model built by
its config whose weights are the input's with every pruned
entry at exactly 0.0 (tfmot's `strip_pruning` pattern, without its wrappers:
the model never had any). The input model is not touched.

The copy is rebuilt from `model.get_config()` rather than by
`keras.models.clone_model`, which would also compile it with the input's
optimizer and so tie the saved file to keras_serene.
"""

import keras
import numpy as np

from keras_serene.core import masking as masks_lib


def rebuild(model, caller):
    """A new, uncompiled model from `model`'s config (weights not copied)."""
    try:
        return type(model).from_config(model.get_config())
    except Exception as error:  # Config errors vary by model kind.
        raise ValueError(
            f"{caller}: cannot rebuild model {model.name!r} of class "
            f"{type(model).__name__} from its config (a subclassed model "
            f"needs a functional or Sequential equivalent): {error}"
        ) from error


def strip_masks(model):
    """Returns a new plain model with the pruning masks baked in.

    The copy shares no variables with `model`, holds no keras_serene
    optimizer, and loads with `keras.models.load_model` in a process that
    never imported keras_serene (as long as `model` itself uses only Keras
    layers). Entries marked pruned are exactly 0.0 in it; frozen entries keep
    their values (freezing is a training-time notion).

    Example:

    ```python
    plain = ks.strip_masks(model)
    plain.save("pruned.keras")
    ```

    Args:
        model: A functional or Sequential `keras.Model`, compiled with
            a masking optimizer (`ks.SensitivityOptimizer`...) or not.

    Returns:
        A new, uncompiled `keras.Model`.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "strip_masks: `model` must be a keras.Model. Received "
            f"{type(model).__name__}."
        )
    clone = rebuild(model, caller="strip_masks")
    optimizer = None
    try:
        optimizer = masks_lib.mask_optimizer(model)
    except ValueError:
        pass
    values = []
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if optimizer is not None and optimizer.mask_for(variable) is not None:
            pruned = masks_lib.pruned(optimizer, variable)
            value = np.where(pruned, np.zeros_like(value), value)
        values.append(value)
    clone.set_weights(values)
    return clone
