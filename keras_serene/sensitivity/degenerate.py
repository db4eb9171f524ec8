"""Degenerate sensitivities: S that is zero everywhere, found and named.

Two ways the decay `w <- w - decay * w * relu(1 - S)` (NeurIPS 2018, arXiv
1810.11764, Eq. 9) silently becomes a plain, uniform decay:

- the model ends in a softmax: `sum_k y_k = 1`, so the one-pass bound
  `|d(sum_k y_k / K)/dw|` of the unspecific output sensitivity and SeReNe's
  lower bound (arXiv 2102.03773, Eq. 6-8) differentiate a constant and are
  identically zero (measured: max |S| = 4.6e-11 on a digits MLP, float
  round-off). `softmax_output_layer` finds the layer; `Sensitivity.bind`
  warns at compile time.
- a whole layer's S stays zero through an epoch (dead units, an output the
  layer no longer reaches). `SensitivityWatch`, which `ks.SensitivityModel`
  adds to every `fit`, keeps the running peak of each regularized variable's
  S in the train step (one max per variable, no host sync) and warns once per
  layer, with its name, at the end of the epoch.
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_serene import KerasSereneWarning
from keras_serene.core import distribute as _distribute

#: A peak S at or below this is "zero": relu(1 - S) is 1 to float precision
#: (a softmax makes the one-pass bound ~1e-11, not exactly 0).
ZERO = 1e-8


def _is_softmax(layer):
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def _output_layers(model):
    """The layers of `model` whose output is one of the model's outputs."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1:]
    outputs = {id(t) for t in keras.tree.flatten(getattr(model, "outputs", []))}
    found = []
    for layer in model.layers:
        try:
            output = layer.output
        except (AttributeError, ValueError):  # shared layer, several nodes
            continue
        if any(id(t) in outputs for t in keras.tree.flatten(output)):
            found.append(layer)
    return found


def softmax_output_layer(model):
    """The layer producing a softmax output of `model`, or None.

    Looks through nested models; a subclassed model (no graph) gives None.
    """
    for layer in _output_layers(model):
        if isinstance(layer, keras.Model):
            inner = softmax_output_layer(layer)
            if inner is not None:
                return inner
        elif _is_softmax(layer):
            return layer
    return None


class SensitivityPeaks:
    """The running peak of S per regularized variable (graph side).

    Args:
        variables: the variables that get a sensitivity (regularized).
    """

    def __init__(self, variables):
        self.paths = [v.path for v in variables]
        self._index = {id(v): i for i, v in enumerate(variables)}
        self.peaks = keras.Variable(
            np.zeros(len(variables), "float32"),
            trainable=False,
            name="sensitivity_peaks",
        )

    def update(self, variables, sensitivities):
        """Raises each peak to `max(S)` of this step (in the train step)."""
        found = [
            (self._index[id(v)], s)
            for v, s in zip(variables, sensitivities)
            if s is not None and id(v) in self._index
        ]
        if not found:
            return
        indices = [[i] for i, _ in found]
        values = ops.stack([ops.max(ops.cast(s, "float32")) for _, s in found])
        new = ops.maximum(
            self.peaks, ops.scatter(indices, values, (len(self.paths),))
        )
        _distribute.assign_all([self.peaks], [new])

    def reset(self):
        self.peaks.assign(np.zeros(len(self.paths), "float32"))

    def zero_layers(self):
        """Names of the layers whose every regularized variable had S <=
        `ZERO` since the last reset."""
        peaks = np.asarray(keras.ops.convert_to_numpy(self.peaks))
        by_layer = {}
        for path, peak in zip(self.paths, peaks):
            layer = path.rsplit("/", 1)[0]
            by_layer[layer] = by_layer.get(layer, True) and peak <= ZERO
        return [layer for layer, zero in by_layer.items() if zero]


class SensitivityWatch(keras.callbacks.Callback):
    """Warns once per layer when its S was zero for a whole epoch.

    Added by `ks.SensitivityModel.fit`; not for direct use.
    """

    def __init__(self, peaks, estimator):
        super().__init__()
        self._peaks = peaks
        self._estimator = estimator
        self._warned = set()

    def on_epoch_begin(self, epoch, logs=None):
        self._peaks.reset()

    def on_epoch_end(self, epoch, logs=None):
        for layer in self._peaks.zero_layers():
            if layer in self._warned:
                continue
            self._warned.add(layer)
            warnings.warn(
                f"{self._estimator!r}: the sensitivity of every regularized "
                f"weight of layer {layer!r} stayed 0 through epoch "
                f"{epoch + 1}, so its decay was a plain, uniform weight "
                "decay. Check that the layer still reaches the model's "
                "output (dead units, a softmax output: see the compile "
                "warning), or use another estimator.",
                KerasSereneWarning,
                stacklevel=2,
            )
