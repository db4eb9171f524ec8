"""keras_serene.sensitivity: the sensitivity estimators, one per paper.

- `LossSensitivity`: LOBSTER, `S = |dL/dw|`.
- `OutputSensitivity`: NeurIPS 2018, `S = sum_k a_k |dy_k/dw|`.
- `NeuronSensitivity`: SeReNe, one sensitivity per neuron.

`get(identifier)` turns the optimizer's `sensitivity=` argument (a name or an
estimator) into an estimator.
"""

from keras_serene.sensitivity.loss_sensitivity import LossSensitivity
from keras_serene.sensitivity.neuron_sensitivity import NeuronSensitivity
from keras_serene.sensitivity.output_sensitivity import OutputSensitivity
from keras_serene.sensitivity.sensitivity import Sensitivity
from keras_serene.sensitivity.sensitivity import deserialize
from keras_serene.sensitivity.sensitivity import serialize

_BY_NAME = {
    "loss": LossSensitivity,
    "output": OutputSensitivity,
    "neuron": NeuronSensitivity,
}


def register(name, cls):
    """Makes `sensitivity=name` build `cls()`."""
    _BY_NAME[name] = cls


def get(identifier, caller="ks.sensitivity.get"):
    """Returns an estimator for a name (`"loss"`, `"output"`, `"neuron"`),
    an estimator instance, or a serialized estimator config; errors name
    `caller`."""
    if isinstance(identifier, Sensitivity):
        return identifier
    if isinstance(identifier, dict):
        estimator = deserialize(identifier)
        if isinstance(estimator, Sensitivity):
            return estimator
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    raise ValueError(
        f"{caller}: `sensitivity` must be one of {sorted(_BY_NAME)} or a "
        "`ks.sensitivity.Sensitivity` instance. "
        f"Received: sensitivity={identifier!r}"
    )
