"""LOBSTER's loss-based sensitivity: the training gradient's magnitude.

LOBSTER (Tartaglione, Bragagnolo, Fiandrotti, Grangetto, Neural Networks 146,
2022, arXiv 2011.09905, Eq. 7-11) takes the sensitivity of a parameter to the
loss as the magnitude of the loss gradient,

    S(L, w) = |dL/dw|,

so the regularization reuses the gradient of the training step itself: no
extra backward pass ("minimal computational overhead"). The update that
`ks.SensitivityOptimizer` then applies is
`w <- w - eta * G(dL/dw) - decay * w * relu(1 - |dL/dw|)` (Eq. 11), with the
minibatch-mean gradient from before the step, as in the authors' code
(`EIDOSLAB/LOBSTER`, `src/utilities/pruning/sensitivity/LOBSTER.py`).

`rescaled=True` is the option of the lab's later code: `S = |g| / max|g|` per
tensor, so every tensor has at least one fully sensitive entry.
"""

import keras
from keras import ops

from keras_serene.sensitivity.sensitivity import Sensitivity


@keras.saving.register_keras_serializable(package="keras_serene")
class LossSensitivity(Sensitivity):
    """Loss sensitivity `S = |dL/dw|` (LOBSTER).

    Example:

    ```python
    optimizer = ks.SensitivityOptimizer(
        keras.optimizers.SGD(0.1),
        sensitivity=ks.sensitivity.LossSensitivity(rescaled=True),
        decay=1e-4,
    )
    ```

    Args:
        rescaled: Bool. If True, `S = |g| / max|g|` per tensor (the lab's
            later option) instead of `|g|`. Defaults to `False`.

    References:
        - [Tartaglione et al., 2022](https://arxiv.org/abs/2011.09905),
          Eq. 7 and 11.
    """

    def __init__(self, rescaled=False):
        if not isinstance(rescaled, bool):
            raise TypeError(
                "LossSensitivity: `rescaled` must be a bool. "
                f"Received rescaled={rescaled!r}"
            )
        self.rescaled = rescaled

    def __call__(self, gradients, variables, state=None):
        sensitivities = []
        for g in gradients:
            s = ops.abs(g)
            if self.rescaled:
                peak = ops.max(s)
                s = ops.where(peak > 0, s / ops.maximum(peak, 1e-30), s)
            sensitivities.append(s)
        return sensitivities

    def get_config(self):
        return {"rescaled": self.rescaled}
