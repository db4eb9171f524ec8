"""The RNI training recipe: lr x 10 on the bounded scales, and its baselines.

Receding Neuron Importances trains the bounded BatchNorm scales `w`
(`keras_serene.layers.BoundedBatchNormalization`) with a learning rate ten
times the network's and no weight decay (authors' code:
`xapharius/receding-neuron-importances`, `rni/cifar/main.py`,
`get_optimiser`: SGD, momentum 0.9, Nesterov, `bn_lr = 10 * lr`,
`bn_wd = 0`). Keras optimizers have a single learning rate, so
`ImportanceOptimizer` wraps any optimizer (Keras's `LossScaleOptimizer`
pattern) and multiplies the gradients of the bounded scales by `multiplier`
before the inner step, and excludes them from the inner optimizer's weight
decay (`exclude_from_weight_decay`). For SGD, with or without (Nesterov)
momentum, scaling a variable's gradient by m is exactly scaling its
learning rate by m; for adaptive optimizers (Adam, RMSprop, ...) it is not,
and the wrapper warns.

`importance_vgg` builds the small VGG-style network used to compare RNI with
its two baselines through the same code: network slimming (L1 on ordinary
BN scales, Liu et al. 2017, arXiv:1708.06519, Eq. 1) and no regularisation.

The whole recipe (`benchmarks/rni.py` runs it for the three methods):

```python
model = importance_vgg("rni")   # or "l1" (network slimming), "none"
# In your own model: ks.layers.BoundedBatchNormalization(
#     gamma_regularizer=ks.regularizers.RecedingImportance(1e-3, 3.0))
# for RNI; keras.layers.BatchNormalization(
#     gamma_regularizer=keras.regularizers.L1(1e-4)) for network slimming.
sgd = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True,
                           weight_decay=5e-4)
model.compile(optimizer=ks.ImportanceOptimizer(sgd),  # plain sgd for L1
              loss=keras.losses.SparseCategoricalCrossentropy(
                  from_logits=True), metrics=["accuracy"])
model.fit(x, y, epochs=160)
small = ks.prune_by_importance(model, ratio=0.9)   # plain BN, no regulariser
small.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), ...)
small.fit(x, y, epochs=...)                        # fine-tune
```

References:
    Suteu & Guo, "Receding Neuron Importances for Structured Pruning",
    arXiv:2204.06404 (training details: bounded scales with lr x 10, no
    weight decay).
"""

import math
import numbers
import warnings

import keras

from keras_serene import KerasSereneWarning
from keras_serene.core.masking_optimizer import MaskingOptimizer
from keras_serene.rni.bounded_batch_normalization import BOUNDED_SCALE_TAG
from keras_serene.rni.bounded_batch_normalization import (
    BoundedBatchNormalization,
)
from keras_serene.rni.receding_importance import RecedingImportance


def is_bounded_scale(variable):
    """True when `variable` is the `gamma` of a `BoundedBatchNormalization`."""
    return bool(getattr(variable, BOUNDED_SCALE_TAG, False))


def _innermost(optimizer):
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


@keras.saving.register_keras_serializable(package="keras_serene")
class ImportanceOptimizer(MaskingOptimizer):
    """Gives the bounded BN scales `multiplier` x the lr and no weight decay.

    Wraps `inner_optimizer`: the gradient of every
    `BoundedBatchNormalization` scale is multiplied by `multiplier` before
    the inner step, and those scales are excluded from the inner optimizer's
    weight decay. All other variables get the inner optimizer's step
    unchanged. With SGD (the paper's optimizer) this is exactly a learning
    rate of `multiplier * lr` on the scales. The wrapper owns no learning
    rate: `learning_rate` and `iterations` are the inner optimizer's, so
    schedules and `ReduceLROnPlateau` work. It is a masking optimizer
    (`ks.MaskingOptimizer`), so `ks.callbacks.EquilibriumFreezing` and the
    pruning callbacks find their masks in it.

    Example:

    ```python
    optimizer = ks.ImportanceOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True,
                             weight_decay=1e-4))
    model.compile(optimizer=optimizer, loss=..., metrics=["accuracy"])
    ```

    Args:
        inner_optimizer: `keras.optimizers.Optimizer`. The optimizer doing
            the step; not built yet.
        multiplier: Float. Learning-rate (gradient) multiplier for the bounded
            scales, > 0. Defaults to `10.0` (the authors' code).
        weight_decay_exclude_names: List of strings or `None`. Extra variable
            name patterns excluded from weight decay, passed as `var_names` to
            the inner optimizer's `exclude_from_weight_decay` (the wrapper
            calls it when built, which replaces any earlier call on the inner
            optimizer). Defaults to `None`.
        name: String or `None`. Defaults to `None`.

    References:
        Suteu & Guo, "Receding Neuron Importances for Structured Pruning",
        https://arxiv.org/abs/2204.06404 (training details).
    """

    def __init__(
        self,
        inner_optimizer,
        multiplier=10.0,
        weight_decay_exclude_names=None,
        name=None,
        **kwargs,
    ):
        if isinstance(inner_optimizer, keras.optimizers.Optimizer) and (
            inner_optimizer.built
        ):
            raise ValueError(
                "ImportanceOptimizer needs an `inner_optimizer` that is not "
                "built yet (its weight-decay exclusions are set at build). "
                f"Received a built {type(inner_optimizer).__name__}."
            )
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, numbers.Real)
            or not math.isfinite(multiplier)
            or multiplier <= 0
        ):
            raise ValueError(
                "ImportanceOptimizer expects a finite number > 0 for "
                f"`multiplier`. Received: multiplier={multiplier!r}."
            )
        if weight_decay_exclude_names is not None and (
            isinstance(weight_decay_exclude_names, str)
            or not all(isinstance(n, str) for n in weight_decay_exclude_names)
        ):
            raise TypeError(
                "ImportanceOptimizer expects a list of strings or None for "
                "`weight_decay_exclude_names`. Received: "
                f"weight_decay_exclude_names={weight_decay_exclude_names!r}."
            )
        super().__init__(inner_optimizer, name=name, **kwargs)
        self.multiplier = float(multiplier)
        self.weight_decay_exclude_names = (
            None
            if weight_decay_exclude_names is None
            else list(weight_decay_exclude_names)
        )
        innermost = _innermost(inner_optimizer)
        if not isinstance(innermost, keras.optimizers.SGD):
            warnings.warn(
                "ImportanceOptimizer multiplies the bounded scales' gradients "
                f"by {self.multiplier}, which equals multiplying their "
                "learning rate only for SGD; the inner optimizer is a "
                f"{type(innermost).__name__}.",
                KerasSereneWarning,
                stacklevel=2,
            )

    def build(self, var_list):
        if self.built:  # Once only: a wrapper around us may build us again.
            return
        var_list = list(var_list)
        scales = [v for v in var_list if is_bounded_scale(v)]
        if not scales:
            raise ValueError(
                "ImportanceOptimizer found no BoundedBatchNormalization scale "
                f"among the {len(var_list)} trainable variables it was built "
                "with. Use ks.layers.BoundedBatchNormalization in the model, "
                "or the inner optimizer alone."
            )
        self.inner_optimizer.exclude_from_weight_decay(
            var_list=scales, var_names=self.weight_decay_exclude_names
        )
        # Plain bools: storing the variables themselves on an optimizer
        # would make its tracker adopt them as optimizer variables.
        self._scale_flags = tuple(is_bounded_scale(v) for v in var_list)
        super().build(var_list)  # the inner optimizer, then the masks

    def apply(self, grads, trainable_variables=None):
        if not self.built and trainable_variables is None:
            raise ValueError(
                "ImportanceOptimizer.apply needs `trainable_variables` "
                "before it is built (or call `build(variables)` first)."
            )
        grads, variables, indices = self._prepare(grads, trainable_variables)
        flags = [self._scale_flags[index] for index in indices]
        grads = [
            grad * self.multiplier if grad is not None and flag else grad
            for grad, flag in zip(grads, flags, strict=True)
        ]
        self._masked_step(grads, variables, indices)

    def wrapper_config(self):
        return {
            "multiplier": self.multiplier,
            "weight_decay_exclude_names": self.weight_decay_exclude_names,
        }


_METHODS = ("rni", "l1", "none")
_DEFAULT_STRENGTH = {"rni": 1e-3, "l1": 1e-4, "none": 0.0}


def importance_vgg(
    method="rni",
    widths=(32, 32, "M", 64, 64, "M", 128, 128),
    input_shape=(28, 28, 1),
    num_classes=10,
    strength=None,
    shift=3.0,
    name=None,
):
    """A VGG-style CNN with BN for RNI or one of its baselines.

    Each entry of `widths` is a 3x3 `Conv2D` (no bias) -> BN -> ReLU block,
    `"M"` a 2x2 max-pooling; then global average pooling and a `Dense` head
    with logits (compile with `from_logits=True`). The BN depends on
    `method`:
    - `"rni"`: `BoundedBatchNormalization` (scale `sigmoid(w)`, `w ~ N(0,1)`,
      no shift) with `RecedingImportance(strength, shift)`; train with
      `ImportanceOptimizer`.
    - `"l1"`: network slimming, `BatchNormalization(gamma_initializer=0.5,
      gamma_regularizer=keras.regularizers.L1(strength))`.
    - `"none"`: `BatchNormalization(gamma_initializer=0.5)`, unregularised.
    The 0.5 initial scale of ordinary BN and the BN momentum 0.9 (PyTorch's
    default) follow the authors' code.

    Example:

    ```python
    from keras_serene.rni.importance_optimizer import importance_vgg

    models = {m: importance_vgg(m) for m in ("rni", "l1", "none")}
    ```

    Args:
        method: String. `"rni"`, `"l1"` or `"none"`. Defaults to `"rni"`.
        widths: Tuple of ints and `"M"`. Conv widths and poolings. Defaults
            to `(32, 32, "M", 64, 64, "M", 128, 128)`.
        input_shape: Tuple. Defaults to `(28, 28, 1)`.
        num_classes: Int. Defaults to `10`.
        strength: Float or `None`. Regularisation strength; `None` picks
            `1e-3` for `"rni"` (paper, VGG-16), `1e-4` for `"l1"` (Liu et
            al.); ignored for `"none"`. Defaults to `None`.
        shift: Float. RNI shift `b`. Defaults to `3.0` (paper, VGG-16).
        name: String or `None`. Defaults to `f"vgg_{method}"`.

    Returns:
        A new, uncompiled `keras.Model`.

    References:
        Suteu & Guo, https://arxiv.org/abs/2204.06404; Liu et al.,
        "Learning Efficient Convolutional Networks through Network
        Slimming", https://arxiv.org/abs/1708.06519 (Eq. 1).
    """
    if method not in _METHODS:
        raise ValueError(
            f"importance_vgg expects `method` in {_METHODS}. Received: "
            f"method={method!r}."
        )
    if strength is None:
        strength = _DEFAULT_STRENGTH[method]
    if not isinstance(strength, numbers.Real) or not strength >= 0:
        raise ValueError(
            "importance_vgg expects a number >= 0 for `strength`. Received: "
            f"strength={strength!r}."
        )
    for width in widths:
        if width != "M" and not (isinstance(width, int) and width > 0):
            raise ValueError(
                "importance_vgg expects positive ints or 'M' in `widths`. "
                f"Received: widths={widths!r}."
            )
    inputs = keras.Input(input_shape)
    x = inputs
    conv_index = pool_index = 0
    for width in widths:
        if width == "M":
            pool_index += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
            continue
        conv_index += 1
        x = keras.layers.Conv2D(
            width,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=f"conv{conv_index}",
        )(x)
        x = _batch_normalization(method, strength, shift, f"bn{conv_index}")(x)
        x = keras.layers.ReLU(name=f"relu{conv_index}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"vgg_{method}")


def _batch_normalization(method, strength, shift, name):
    # momentum=0.9 is PyTorch's BatchNorm default (0.1 there), as in the
    # authors' code; Keras's 0.99 needs far more steps to settle.
    if method == "rni":
        return BoundedBatchNormalization(
            momentum=0.9,
            gamma_regularizer=RecedingImportance(strength, shift),
            name=name,
        )
    regularizer = keras.regularizers.L1(strength) if method == "l1" else None
    return keras.layers.BatchNormalization(
        momentum=0.9,
        gamma_initializer=keras.initializers.Constant(0.5),
        gamma_regularizer=regularizer,
        name=name,
    )
