"""The Receding Neuron Importances regulariser, `strength * sum s (1 - ln s)`.

RNI (Suteu & Guo 2022) penalises each bounded importance
`s = sigmoid(w + shift)` by `s (1 - ln s)`. Its derivative with respect to `s`
is `-ln s`: large for small importances, zero at `s = 1`. So unimportant
channels recede towards 0 while important ones are left alone, and the
importances become bimodal, unlike L1 on ordinary BN scales (network
slimming), which shrinks every scale at the same rate. With respect to the
free parameter the gradient is `-strength * ln s * s (1 - s)`.

We compute `ln s = -softplus(-(w + shift))`, which is finite for every `w`.

Paper settings: VGG-16 `strength=1e-3, shift=3`; ResNet-56 `strength=1e-4,
shift=0`.

References:
    Suteu & Guo, "Receding Neuron Importances for Structured Pruning",
    arXiv:2204.06404 (the RNI penalty `lambda sum s (1 - ln s)`). Authors' code:
    `xapharius/receding-neuron-importances`, `rni/cifar/main.py`
    (`rni_loss`: `s = (w + b).sigmoid(); (s * (1 - s.log())).sum()`).
"""

import keras
from keras import ops

from keras_serene.core import checks


@keras.saving.register_keras_serializable(package="keras_serene")
class RecedingImportance(keras.regularizers.Regularizer):
    """Regulariser `strength * sum s (1 - ln s)` with `s = sigmoid(w + shift)`.

    Meant for the free scale `w` (the `gamma` weight) of
    `keras_serene.layers.BoundedBatchNormalization`, whose importance is
    `sigmoid(w)`. `shift` moves the point where the push fades: with
    `shift=3` channels with `w` well above `-3` feel almost no pull. The
    gradient with respect to `w` is `-strength * ln s * s (1 - s)`.

    Example:

    ```python
    import keras_serene as ks

    bn = ks.layers.BoundedBatchNormalization(
        gamma_regularizer=ks.regularizers.RecedingImportance(
            strength=1e-3, shift=3.0))
    ```

    Args:
        strength: Float. The regularisation strength `lambda` (>= 0).
            Defaults to `1e-3` (the paper's VGG-16 setting).
        shift: Float. The shift `b` added to `w` before the sigmoid.
            Defaults to `3.0` (the paper's VGG-16 setting; ResNet-56 uses
            `0.0`).

    References:
        Suteu & Guo, "Receding Neuron Importances for Structured Pruning",
        https://arxiv.org/abs/2204.06404 (the RNI penalty).
    """

    def __init__(self, strength=1e-3, shift=3.0):
        owner = "RecedingImportance"
        self.strength = checks.check_number(
            owner, "strength", strength, minimum=0.0
        )
        self.shift = checks.check_number(owner, "shift", shift)

    def __call__(self, x):
        x = ops.convert_to_tensor(x)
        z = x + ops.cast(self.shift, x.dtype)
        s = ops.sigmoid(z)
        minus_log_s = ops.softplus(-z)
        return ops.cast(self.strength, x.dtype) * ops.sum(
            s * (1.0 + minus_log_s)
        )

    def get_config(self):
        return {"strength": self.strength, "shift": self.shift}
