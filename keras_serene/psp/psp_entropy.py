"""PSP-entropy: how class-specific each neuron's on/off state is.

The post-synaptic potential (PSP) of a neuron is its pre-activation `z`.
Binarised (on when `z > 0`) and counted per class `k` over the `M_k`
samples of that class:

    p_ik = (1 / M_k) * sum_{x in class k} [z_i(x) > 0],   n_ik = 1 - p_ik,
    both clamped to [1e-4, 0.9999],
    H_ik = -(p_ik * log2(p_ik) + n_ik * log2(n_ik)),      H_i = sum_k H_ik.

A low `H_ik` means neuron `i` is reliably on (or off) for class `k`: it is
class-specific. The paper finds that gradual, sensitivity-driven pruning
(LOBSTER) leaves higher PSP-entropy than one-shot magnitude pruning.

What "a neuron" is, selected by `per`:
- `"neuron"` (the authors' code): every element of a layer's output map is
  one neuron. For a conv layer with a `(h, w, c)` output there are
  `h * w * c` neurons, flattened in the C order of the channels-last output
  (position-major, channel-minor; the authors' PyTorch code flattens NCHW,
  channel-major, so their neuron order differs while the values agree).
  `neuron_shape` in the result gives the unflattened shape.
- `"channel"`: one neuron per output channel. The binarised indicator is
  averaged over positions together with the samples, so
  `p_ck = (1 / (M_k * P)) * sum_{x in class k} sum_{positions} [z > 0]`
  with `P` positions per map: the fraction of (sample, position) pairs of
  class `k` where channel `c` is on. For a Dense layer the two are equal.

Pre-activation: read by `keras_serene.core.preactivations`, a side model that
calls the model's own layers (same variables, nothing copied); a layer with a
fused activation (`Dense(8, activation="relu")`) is called as its linear part
then its activation, so `z` is taken before the activation. With a separate
`Activation`/`ReLU` layer the Dense/Conv output already is `z`. The user's
model is not modified.

Counts are accumulated batch by batch (on-counts per neuron and class, and
samples per class): memory depends on the layer sizes, not on the dataset.

References:
    - Tartaglione, Bragagnolo, Grangetto, "Pruning artificial neural networks:
      a way to find well-generalizing, high-entropy sharp minima", ICANN 2020,
      arXiv:2004.14765: the PSP-entropy definition (p, n, H_ik, H_i).
    - Authors' code: `EIDOSLAB/PSP-entropy`, `src/PSPentropy.py`
      (`compute_entropy_1st`), which we follow for the clamping and the
      per-element neurons.
"""

import keras
import numpy as np

from keras_serene.core import checks
from keras_serene.core import layer_table
from keras_serene.core import preactivations
from keras_serene.core.data import check_inputs_match
from keras_serene.core.data import is_dataset  # noqa: F401 (old name)
from keras_serene.core.data import iterate_batches

CLAMP_MIN = 1e-4
CLAMP_MAX = 0.9999
PER_VALUES = ("neuron", "channel")


def _is_producer(layer):
    """A layer whose output is a set of neurons' pre-activations (Dense,
    Conv, ...): one with a kernel in the layer table, chosen by default."""
    entry = layer_table.entry_for(layer)
    return bool(
        entry is not None
        and entry.axis_attribute is None
        and any(w.endswith("kernel") for w in entry.regularized_weights or ())
    )


def _is_normalizer(layer):
    """A normalization (BatchNormalization, LayerNormalization, ...),
    accepted when named: in conv -> BN -> ReLU, the BN output is what the
    activation sees."""
    entry = layer_table.entry_for(layer)
    return entry is not None and entry.axis_attribute is not None


def psp_entropy(
    model,
    x,
    y=None,
    layers=None,
    per="neuron",
    batch_size=128,
    num_classes=None,
):
    """Computes the PSP-entropy of every neuron of the chosen layers.

    Each neuron's pre-activation is binarised (`z > 0`); per class `k` the
    on-probability `p_ik` is counted over that class's samples, `p_ik` and
    `1 - p_ik` are clamped to `[1e-4, 0.9999]`, and
    `H_i = sum_k -(p log2 p + (1 - p) log2 (1 - p))`. The model runs in
    inference mode, batch by batch; only counts are kept.

    Example:

    ```python
    result = ks.metrics.psp_entropy(model, x_test, y_test, per="channel")
    result["conv1"]["mean"]           # mean H over conv1's channels
    result["conv1"]["entropy"]        # (20,) H_i
    result["conv1"]["class_entropy"]  # (20, 10) H_ik
    ```

    Args:
        model: A built Functional or Sequential `keras.Model`. Not modified.
        x: Inputs as a NumPy array (or a list/dict of arrays for a
            multi-input model), or a batched `tf.data.Dataset` /
            `keras.utils.PyDataset` yielding `(x, y)` (then `y` must be
            `None`).
        y: Labels: integers of shape `(n,)` or `(n, 1)`, or one-hot of shape
            `(n, classes)`. Defaults to `None` (only for datasets).
        layers: List of layer names, or `None` for every Dense / Conv /
            EinsumDense layer of the model (output layer included).
            Normalization layers may be named explicitly. Defaults to `None`.
        per: String. `"neuron"` (every element of an output map is a neuron,
            as the authors' code) or `"channel"` (one neuron per channel, the
            on-indicator averaged over positions). Defaults to `"neuron"`.
        batch_size: Int. Samples per forward pass for array inputs.
            Defaults to `128`.
        num_classes: Int or `None`. Number of classes `K`; `None` uses the
            largest label seen plus one. Defaults to `None`.

    Returns:
        A dict from layer name (in model order) to a dict with
        `"entropy"` (`(neurons,)` float64, `H_i`), `"class_entropy"`
        (`(neurons, K)`, `H_ik`), `"on_probability"` (`(neurons, K)`,
        unclamped `p_ik`), `"mean"` (float, mean of `H_i`),
        `"neuron_shape"` (tuple; `entropy.reshape(neuron_shape)` gives the
        map) and `"class_counts"` (`(K,)`, `M_k`). A class with no sample
        has `NaN` in its `class_entropy` / `on_probability` column and is
        left out of `H_i`.

    References:
        Tartaglione et al., ICANN 2020, arXiv:2004.14765: PSP-entropy.
    """
    counter = PSPEntropyCounter(model, layers=layers, per=per)
    _validate_batch_size(batch_size, "psp_entropy")
    num_classes = _validate_num_classes(num_classes, "psp_entropy")
    check_inputs_match("psp_entropy", "x", model, x)
    for xb, yb in iterate_batches(x, y, batch_size, "psp_entropy"):
        counter.update(xb, yb, num_classes)
    return counter.result(num_classes)


class PSPEntropyCounter:
    """Streaming PSP counts for chosen layers of a model (used internally).

    Builds once a side model returning the pre-activations of the chosen
    layers (`keras_serene.core.preactivations`: it calls the model's own layers,
    so it always sees the current weights); `update()` adds one batch of
    counts, `result()` turns counts into entropies, `reset()` clears them.
    """

    def __init__(self, model, layers=None, per="neuron"):
        if not isinstance(model, keras.Model):
            raise TypeError(
                "psp_entropy: `model` must be a keras.Model. "
                f"Received: model={model!r} of type {type(model).__name__}"
            )
        if per not in PER_VALUES:
            raise ValueError(
                f"psp_entropy: `per` must be one of {PER_VALUES}. "
                f"Received: per={per!r}"
            )
        self.per = per
        self.layers = _resolve_layers(model, layers)
        probe = preactivations.preactivation_model(
            model, self.layers, caller="psp_entropy"
        )
        self._side = probe.model
        # The probe returns z in call order; map it back to `self.layers`.
        position = {id(layer): i for i, layer in enumerate(probe.layers)}
        self._order = [position[id(layer)] for layer in self.layers]
        self.reset()

    def reset(self):
        self._on = None  # list of (neurons, K) float64 on-counts
        self._class_counts = np.zeros((0,), dtype=np.float64)
        self._positions = None
        self._neuron_shapes = None

    def update(self, x_batch, y_batch, num_classes=None):
        labels = _labels_to_int(y_batch, num_classes)
        _, zs = self._side.predict_on_batch(x_batch)
        outputs = [zs[i] for i in self._order]
        if len(labels) != np.shape(outputs[0])[0]:
            raise ValueError(
                f"psp_entropy: a batch has {len(labels)} labels but "
                f"{np.shape(outputs[0])[0]} samples."
            )
        k = max(
            len(self._class_counts),
            num_classes or 0,
            int(labels.max()) + 1 if len(labels) else 0,
        )
        self._grow(k)
        onehot = np.zeros((len(labels), k), dtype=np.float64)
        onehot[np.arange(len(labels)), labels] = 1.0
        self._class_counts += onehot.sum(axis=0)
        indicators = [
            self._indicator(z, layer)
            for z, layer in zip(outputs, self.layers, strict=True)
        ]
        if self._on is None:
            self._on = [np.zeros((on.shape[1], k)) for on, _, _ in indicators]
            self._positions = [positions for _, positions, _ in indicators]
            self._neuron_shapes = [shape for _, _, shape in indicators]
        for i, (on, _, _) in enumerate(indicators):
            self._on[i] += on.T @ onehot

    def result(self, num_classes=None):
        if self._on is None or self._class_counts.sum() == 0:
            raise ValueError("psp_entropy: the data holds no samples.")
        if num_classes is not None:
            self._grow(num_classes)
        counts = self._class_counts
        present = counts > 0
        out = {}
        for layer, on, positions, shape in zip(
            self.layers,
            self._on,
            self._positions,
            self._neuron_shapes,
            strict=True,
        ):
            p = np.full(on.shape, np.nan)
            p[:, present] = on[:, present] / (counts[present] * positions)
            h_class = np.full(on.shape, np.nan)
            h_class[:, present] = _binary_entropy(p[:, present])
            h = h_class[:, present].sum(axis=1)
            out[layer.name] = {
                "entropy": h,
                "class_entropy": h_class,
                "on_probability": p,
                "mean": float(h.mean()),
                "neuron_shape": shape,
                "class_counts": counts.copy(),
            }
        return out

    def _grow(self, k):
        extra = k - len(self._class_counts)
        if extra <= 0:
            return
        self._class_counts = np.concatenate(
            [self._class_counts, np.zeros(extra)]
        )
        if self._on is not None:
            self._on = [np.pad(on, ((0, 0), (0, extra))) for on in self._on]

    def _indicator(self, z, layer):
        """Returns (on, positions, neuron_shape), `on` of shape (b, n)."""
        z = np.asarray(z)
        batch = z.shape[0]
        on = (z > 0).astype(np.float32)
        if self.per == "neuron" or on.ndim == 2:
            return on.reshape(batch, -1), 1, tuple(z.shape[1:])
        if getattr(layer, "data_format", None) == "channels_first":
            on = np.moveaxis(on, 1, -1)
        channels = on.shape[-1]
        on = on.reshape(batch, -1, channels)
        # float64: batch * positions counts may exceed float32's 2**24.
        return on.sum(axis=1, dtype=np.float64), on.shape[1], (channels,)


def _binary_entropy(p):
    """-(p log2 p + n log2 n) with p and n = 1 - p clamped, as the code."""
    n = np.clip(1.0 - p, CLAMP_MIN, CLAMP_MAX)
    p = np.clip(p, CLAMP_MIN, CLAMP_MAX)
    return -(p * np.log2(p) + n * np.log2(n))


def _resolve_layers(model, names):
    if names is None:
        chosen = [la for la in model.layers if _is_producer(la)]
        if not chosen:
            raise ValueError(
                f"psp_entropy: model {model.name!r} has no Dense or Conv "
                "layer at its top level; pass `layers=[...]` naming the "
                "layers to measure."
            )
        return chosen
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(
            "psp_entropy: `layers` must be a list of layer names or None. "
            f"Received: layers={names!r}"
        )
    if not names:
        raise ValueError("psp_entropy: `layers` is empty. Received: layers=[]")
    by_name = {la.name: la for la in model.layers}
    chosen = []
    for name in names:
        if name not in by_name:
            raise ValueError(
                f"psp_entropy: model {model.name!r} has no layer named "
                f"{name!r} (top-level layers: {sorted(by_name)})."
            )
        layer = by_name[name]
        if not (_is_producer(layer) or _is_normalizer(layer)):
            raise ValueError(
                f"psp_entropy: layer {name!r} ({type(layer).__name__}) has "
                "no pre-activation output: name a layer with a kernel (Dense, "
                "Conv, ...) or a normalization (BatchNormalization, ...)."
            )
        if layer in chosen:
            raise ValueError(
                f"psp_entropy: layer {name!r} is named twice in "
                f"layers={list(names)!r}."
            )
        chosen.append(layer)
    order = {id(la): i for i, la in enumerate(model.layers)}
    return sorted(chosen, key=lambda la: order[id(la)])


def _labels_to_int(y, num_classes):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2:
        y = np.argmax(y, axis=1)
    if y.ndim != 1:
        raise ValueError(
            "psp_entropy: labels must have shape (n,), (n, 1) or one-hot "
            f"(n, classes). Received shape {y.shape}"
        )
    if y.dtype.kind == "f":
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(
                "psp_entropy: labels must be integer class indices. "
                f"Received non-integer values such as {y[np.mod(y, 1) != 0][0]}"
            )
    elif y.dtype.kind not in "iub":
        raise ValueError(
            "psp_entropy: labels must be integer class indices. "
            f"Received dtype {y.dtype}"
        )
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise ValueError(
            f"psp_entropy: labels must be >= 0. Received label {y.min()}"
        )
    if num_classes is not None and len(y) and y.max() >= num_classes:
        raise ValueError(
            f"psp_entropy: label {y.max()} is out of range for "
            f"num_classes={num_classes}."
        )
    return y


def _validate_batch_size(batch_size, caller):
    checks.check_int(caller, "batch_size", batch_size, minimum=1)


def _validate_num_classes(num_classes, caller):
    return checks.check_int(
        caller, "num_classes", num_classes, minimum=1, allow_none=True
    )
