"""Batch normalization with a bounded scale `gamma = sigmoid(w)`.

Receding Neuron Importances (RNI, Suteu & Guo 2022) replaces the free scale
of batch normalization by `sigmoid(w)`, so that every channel's importance
lives in (0, 1) and can be pushed towards 0 by the `RecedingImportance`
regulariser (`keras_serene.regularizers.RecedingImportance`) while important
channels are left alone. The authors' layer has no shift (no `beta`); we keep
that default and offer `center=True`.

The free parameter `w` is stored in the weight named `gamma` (so the weight
names and order match `keras.layers.BatchNormalization`: `gamma`, [`beta`],
`moving_mean`, `moving_variance`); the importance is `sigmoid(gamma)`.
`to_plain_batch_normalization(model)` returns a copy of a model in which
every bounded layer is an ordinary `BatchNormalization` holding
`gamma = sigmoid(w)`, so export and slimming fold it like any other BN.

References:
    Suteu & Guo, "Receding Neuron Importances for Structured Pruning",
    arXiv:2204.06404 (the bounded BatchNorm scale `sigmoid(w)`). Authors' code:
    `xapharius/receding-neuron-importances`, `rni/cifar/sigbn.py`
    (`SigBatchNorm2d`: `weight.sigmoid()` as the BN scale, `bias = None`).
"""

import keras
from keras import ops

from keras_serene.core import checks

# Attribute set on the `gamma` variable of every bounded layer, so that
# `keras_serene.rni.importance_optimizer.ImportanceOptimizer` finds the bounded
# scales among the variables it receives without knowing the layers.
BOUNDED_SCALE_TAG = "_keras_serene_bounded_scale"
_REGISTERED_NAME = "keras_serene>BoundedBatchNormalization"


@keras.saving.register_keras_serializable(package="keras_serene")
class BoundedBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization whose scale is `sigmoid(w)`, in (0, 1).

    Normalizes like `keras.layers.BatchNormalization` (batch statistics in
    training, moving statistics in inference) and multiplies channel `c` by
    `sigmoid(w_c)` instead of a free `gamma_c`:
    `y = sigmoid(w) * (x - mean) / sqrt(var + epsilon) [+ beta]`.
    `w` is stored in the weight named `gamma` and drawn from `N(0, 1)` by
    default; `layer.importance` is `sigmoid(gamma)`. There is no shift unless
    `center=True` (the authors' layer has none). Under a `mixed_float16`
    policy the statistics and the scale are computed in float32, as in
    Keras's own layer.

    Example:

    ```python
    import keras
    import keras_serene as ks

    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, use_bias=False),
        ks.layers.BoundedBatchNormalization(
            gamma_regularizer=ks.regularizers.RecedingImportance(1e-3, 3.0)),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    ```

    Args:
        axis: Integer. The channel axis. Defaults to `-1`.
        momentum: Float. Momentum of the moving statistics. Defaults to
            `0.99`.
        epsilon: Float. Added to the variance. Defaults to `1e-3`.
        center: Bool. Add a learned shift `beta`. Defaults to `False` (as the
            authors' layer).
        gamma_initializer: Initializer for `w` (the weight `gamma`). Defaults
            to `keras.initializers.RandomNormal(mean=0.0, stddev=1.0)`.
        gamma_regularizer: Regularizer for `w`, typically
            `keras_serene.regularizers.RecedingImportance`. Defaults to
            `None`.
        **kwargs: The other arguments of `keras.layers.BatchNormalization`
            (`beta_initializer`, `moving_mean_initializer`, `synchronized`,
            `name`, `dtype`, ...). `scale` must stay `True` and `renorm` is
            not supported.

    References:
        Suteu & Guo, "Receding Neuron Importances for Structured Pruning",
        https://arxiv.org/abs/2204.06404 (bounded scaling parameters).
    """

    def __init__(
        self,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=False,
        gamma_initializer=None,
        gamma_regularizer=None,
        **kwargs,
    ):
        owner = "BoundedBatchNormalization"
        if kwargs.get("scale", True) is not True:
            checks.fail(owner, "scale", "be True", kwargs["scale"])
        if kwargs.get("renorm", False):
            checks.fail(
                owner, "renorm", "be False (not supported)", kwargs["renorm"]
            )
        checks.check_int(owner, "axis", axis)
        checks.check_bool(owner, "center", center)
        momentum = checks.check_number(
            owner,
            "momentum",
            momentum,
            minimum=0.0,
            maximum=1.0,
            max_inclusive=False,
        )
        epsilon = checks.check_number(
            owner, "epsilon", epsilon, minimum=0.0, min_inclusive=False
        )
        if gamma_initializer is None:
            gamma_initializer = keras.initializers.RandomNormal(
                mean=0.0, stddev=1.0
            )
        super().__init__(
            axis=axis,
            momentum=momentum,
            epsilon=epsilon,
            center=center,
            gamma_initializer=gamma_initializer,
            gamma_regularizer=gamma_regularizer,
            **kwargs,
        )

    def build(self, input_shape):
        super().build(input_shape)
        setattr(self.gamma, BOUNDED_SCALE_TAG, True)

    @property
    def importance(self):
        """The channel importances `sigmoid(gamma)`, a float32 tensor."""
        if self.gamma is None:
            raise ValueError(
                f"BoundedBatchNormalization {self.name!r} is not built yet: "
                "call it on an input (or build the model) first."
            )
        return ops.sigmoid(ops.convert_to_tensor(self.gamma))

    def _statistics(self, inputs, mask):
        axes = reduction_axes(len(inputs.shape), self.axis)
        if mask is None:
            return ops.moments(
                inputs, axes=axes, synchronized=self.synchronized
            )
        if len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                "BoundedBatchNormalization expects a mask with one dimension "
                f"less than the inputs. Received: mask.shape={mask.shape}, "
                f"inputs.shape={inputs.shape}."
            )
        weights = ops.cast(ops.expand_dims(mask, axis=-1), inputs.dtype)
        weights = ops.broadcast_to(weights, ops.shape(inputs))
        count = ops.sum(weights, axis=axes) + keras.config.epsilon()
        mean = ops.sum(weights * inputs, axis=axes) / count
        shape = [1] * len(inputs.shape)
        shape[self.axis] = inputs.shape[self.axis]
        centred = inputs - ops.reshape(mean, shape)
        variance = ops.sum(weights * ops.square(centred), axis=axes) / count
        return mean, variance

    def call(self, inputs, training=None, mask=None):
        input_dtype = keras.backend.standardize_dtype(inputs.dtype)
        dtype = "float64" if input_dtype == "float64" else "float32"
        inputs = ops.cast(inputs, dtype)
        moving_mean = ops.cast(self.moving_mean, dtype)
        moving_variance = ops.cast(self.moving_variance, dtype)
        if training and self.trainable:
            mean, variance = self._statistics(inputs, mask)
            keep = self.momentum
            self.moving_mean.assign(moving_mean * keep + mean * (1.0 - keep))
            self.moving_variance.assign(
                moving_variance * keep + variance * (1.0 - keep)
            )
        else:
            mean, variance = moving_mean, moving_variance
        beta = ops.cast(self.beta, dtype) if self.center else None
        outputs = ops.batch_normalization(
            inputs,
            mean=mean,
            variance=variance,
            axis=self.axis,
            offset=beta,
            scale=ops.sigmoid(ops.cast(self.gamma, dtype)),
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)


def reduction_axes(ndim, axis):
    """The axes the batch statistics reduce over: all but the channel axis.

    Computed here rather than read from `BatchNormalization._reduction_axes`
    (a private attribute of Keras) so a Keras refactor cannot break it.
    """
    channel = axis if axis >= 0 else ndim + axis
    return [i for i in range(ndim) if i != channel]


def _plain_config(entry):
    """Turns a serialized bounded layer into a serialized plain BN."""
    config = dict(entry["config"])
    config["gamma_initializer"] = keras.initializers.serialize(
        keras.initializers.Ones()
    )
    config["gamma_regularizer"] = None
    config["gamma_constraint"] = None
    return {
        **entry,
        "module": "keras.layers",
        "class_name": "BatchNormalization",
        "registered_name": None,
        "config": config,
    }


def _convert_configs(model_config):
    """Replaces bounded layers in a (nested) serialized model config."""
    layers = []
    for entry in model_config.get("layers", []):
        if entry.get("registered_name") == _REGISTERED_NAME:
            entry = _plain_config(entry)
        elif isinstance(entry.get("config"), dict) and "layers" in entry.get(
            "config"
        ):
            entry = {**entry, "config": _convert_configs(entry["config"])}
        layers.append(entry)
    return {**model_config, "layers": layers}


def _copy_weights(old_model, new_model):
    for old, new in zip(old_model.layers, new_model.layers, strict=True):
        if isinstance(old, keras.Model):
            _copy_weights(old, new)
            continue
        weights = old.get_weights()
        if isinstance(old, BoundedBatchNormalization):
            weights[0] = ops.convert_to_numpy(old.importance)
        new.set_weights(weights)


def to_plain_batch_normalization(model):
    """Returns a copy of `model` with every bounded BN made a plain BN.

    Each `BoundedBatchNormalization` becomes a `keras.layers.BatchNormalization`
    with the same name, axis, epsilon, momentum, `center` and moving
    statistics, holding `gamma = sigmoid(w)` and no regulariser on it; every
    other layer is copied with its weights. The copy computes the same
    outputs, needs no keras_serene to load, and folds like any BN at export.
    The input model is not modified; the copy is not compiled.

    Example:

    ```python
    plain = ks.layers.to_plain_batch_normalization(model)
    ```

    Args:
        model: `keras.Model`. A Sequential or Functional model (nested
            Sequential/Functional models are converted too).

    Returns:
        A new `keras.Model`.
    """
    owner = "to_plain_batch_normalization"
    checks.check_type(owner, "model", model, keras.Model, "be a keras.Model")
    serialized = keras.saving.serialize_keras_object(model)
    if not isinstance(serialized.get("config"), dict) or (
        "layers" not in serialized["config"]
    ):
        checks.fail(
            owner,
            "model",
            "be a Sequential or Functional model (a subclassed model's "
            "config lists no layers)",
            model,
        )
    serialized.pop("compile_config", None)
    serialized["config"] = _convert_configs(serialized["config"])
    new_model = keras.saving.deserialize_keras_object(serialized)
    _copy_weights(model, new_model)
    return new_model
