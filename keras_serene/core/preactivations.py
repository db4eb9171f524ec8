"""Pre-activations of a model's neuron layers, read by sharing its layers.

SeReNe (Tartaglione et al., IEEE TNNLS 2022, arXiv 2102.03773, Sec. III-A,
Eq. 6-8) measures how much the outputs depend on `z_n`, the
**pre-activation** of neuron `n` (a Dense unit, a convolution output
channel); the authors' code (`EIDOSLAB/SeReNe`,
`src/utilities/pruning/sensitivity/SERENE.py`) reads it with forward and
backward hooks on each layer's output. Keras has no hooks, so
`preactivation_model(model)` builds a second functional model that calls the
**same layer objects** (same variables, no copies) and returns, next to the
model's own outputs, the pre-activation tensor of every chosen layer:

- a layer without a fused activation (`Dense(10)`, `Conv2D(..)` followed by
  `BatchNormalization`, the BN layer itself) is called as it is: its output
  is its pre-activation;
- a layer with a fused activation (`Dense(300, activation="relu")`) is
  called as two steps, its linear part `z` (computed from the layer's own
  variables by the layer table's `linear_part` for its class)
  then `layer.activation(z)`; the result equals `layer(x)`.

Because `z` lies on the path from the inputs to the outputs, a gradient tape
differentiates any output (or the loss) with respect to it. The user's model
is not modified: its config, weights and saved file stay the same (Keras
records the extra calls as additional nodes of the shared layers, as with
any layer sharing). Add a layer class with `register_linear_part`.
"""

import keras
from keras import ops

from keras_serene.core import layer_table
from keras_serene.core import neurons as neurons_lib

#: Layer class name -> `fn(layer, inputs)` giving the layer's output before
#: its bias and activation (the layer table's `linear_part` field, declared
#: in `core/layer_entries.py`). The bias is added by `linear_part`.
LINEAR_PARTS = layer_table.FieldView("linear_part")


def register_linear_part(layer_class_name, fn):
    """Declares how to compute a layer class's output before its bias and
    activation: `fn(layer, inputs) -> tensor` (the `linear_part` field of
    its layer-table row)."""
    if not callable(fn):
        raise TypeError(
            "register_linear_part: `fn` must be callable. Received "
            f"fn={fn!r} for {layer_class_name!r}."
        )
    layer_table.register_layer(layer_class_name, linear_part=fn)


def has_fused_activation(layer):
    """True when `layer` applies a non-linear activation inside its call."""
    activation = getattr(layer, "activation", None)
    return activation is not None and activation is not (
        keras.activations.linear
    )


def _core_for(layer):
    entry = layer_table.entry_for(layer)
    return None if entry is None else entry.linear_part


def check_probeable(layer, caller):
    """Raises a ValueError naming `caller` if `layer`'s pre-activation
    cannot be read (a fused activation without a registered linear part, a
    quantized kernel, an activity regularizer on a fused activation)."""
    if not has_fused_activation(layer):
        return
    where = f"layer {layer.name!r} ({type(layer).__name__})"
    if _core_for(layer) is None:
        raise ValueError(
            f"{caller}: cannot read the pre-activation of {where}: its "
            f"activation {layer.activation!r} is fused and keras_serene has "
            "no linear part for this class. Use `activation=None` followed "
            "by a separate `keras.layers.Activation` layer, or register one "
            "with `keras_serene.core.preactivations.register_linear_part`. "
            f"Supported classes: {sorted(LINEAR_PARTS)}."
        )
    if getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"{caller}: {where} is quantized "
            f"({layer.quantization_mode!r}); its pre-activation cannot be "
            "read. Train before quantizing."
        )
    if getattr(layer, "activity_regularizer", None) is not None:
        raise ValueError(
            f"{caller}: {where} has an activity regularizer and a fused "
            "activation; split the activation into its own layer."
        )


def linear_part(layer, inputs):
    """The pre-activation `z` of `layer` on `inputs` (bias included)."""
    check_probeable(layer, caller="linear_part")
    core = _core_for(layer)
    if core is None:
        raise ValueError(
            f"linear_part: no linear part registered for layer "
            f"{layer.name!r} ({type(layer).__name__})."
        )
    outputs = core(layer, inputs)
    bias = getattr(layer, "bias", None)
    if bias is None:
        return outputs
    if getattr(layer, "data_format", None) == "channels_first":
        rank = len(outputs.shape) - 2
        bias = ops.reshape(bias, (1, -1) + (1,) * rank)
    return ops.add(outputs, bias)


class _Preactivation(keras.layers.Layer):
    """Calls a layer as `z = linear_part(x)`, `y = activation(z)`."""

    def __init__(self, layer, **kwargs):
        super().__init__(
            name=f"{layer.name}_preactivation",
            dtype=layer.dtype_policy,
            **kwargs,
        )
        # A tuple keeps Keras from tracking the layer as a sublayer: its
        # variables belong to the user's model only.
        self._target = (layer,)

    def call(self, inputs):
        layer = self._target[0]
        z = linear_part(layer, inputs)
        return z, layer.activation(z)


class PreactivationModel:
    """A functional model returning `(outputs, [z for each probed layer])`.

    Attributes:
        model: the `keras.Model`; call it as `model(x, training=...)`.
        layers: the probed layers, aligned with the list of `z` tensors.
    """

    def __init__(self, model, layers):
        self.model = model
        self.layers = layers

    def __call__(self, inputs, training=None):
        outputs, preactivations = self.model(inputs, training=training)
        return outputs, list(preactivations)


def preactivation_model(model, layers=None, caller="preactivation_model"):
    """Returns a `PreactivationModel` sharing `model`'s layers.

    Example:

    ```python
    from keras_serene.core.preactivations import preactivation_model

    probe = preactivation_model(model)
    with tf.GradientTape() as tape:
        y, zs = probe(x, training=True)
    grads = tape.gradient(ops.sum(y), zs)   # d(sum y) / d z per layer
    ```

    Args:
        model: A built Functional or Sequential `keras.Model` (nested
            Functional/Sequential models are followed). Not modified.
        layers: List of layers of `model` to probe, or `None` for every layer
            holding neurons (the layer table's `neuron_weights`). Defaults to
            `None`.
        caller: String naming the public function in error messages.

    Returns:
        A `PreactivationModel`.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{caller}: `model` must be a keras.Model. Received "
            f"{type(model).__name__}."
        )
    if layers is None:
        layers = [layer for layer, _ in neurons_lib.neuron_layers(model)]
    layers = list(layers)
    for layer in layers:
        check_probeable(layer, caller)
    wanted = {id(layer) for layer in layers}
    found = []
    probed = _probe(model, wanted, found, caller)
    counts = {}
    for layer, _ in found:
        counts[id(layer)] = counts.get(id(layer), 0) + 1
    for layer in layers:
        count = counts.get(id(layer), 0)
        if count != 1:
            raise ValueError(
                f"{caller}: layer {layer.name!r} ({type(layer).__name__}) is "
                f"called {count} times in model {model.name!r}; reading "
                "pre-activations needs each probed layer called exactly once."
            )
    # `found` is in call order, the order of the returned `z` list.
    return PreactivationModel(probed, [layer for layer, _ in found])


def _is_graph_model(layer):
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and hasattr(layer, "operations")
    )


def _contains(model, wanted):
    return any(id(la) in wanted for la in neurons_lib.iter_layers(model))


def _probe(model, wanted, found, caller):
    """A functional model `inputs -> (outputs, [z])` over `model`'s layers."""
    local = []

    def call_function(layer, *args, **kwargs):
        if isinstance(layer, keras.Model) and _contains(layer, wanted):
            inner = _probe(layer, wanted, found, caller)
            outputs, zs = inner(*args, **kwargs)
            local.extend(zs)
            return outputs
        if id(layer) not in wanted:
            return layer(*args, **kwargs)
        if has_fused_activation(layer):
            z, outputs = _Preactivation(layer)(*args, **kwargs)
        else:
            outputs = z = layer(*args, **kwargs)
        found.append((layer, z))
        local.append(z)
        return outputs

    if not _is_graph_model(model):
        raise ValueError(
            f"{caller}: model {model.name!r} ({type(model).__name__}) is "
            "subclassed; its pre-activations cannot be read. Use a "
            "Functional or Sequential model."
        )
    if isinstance(model, keras.Sequential):
        try:
            spec = model.inputs[0]
        except (AttributeError, IndexError, ValueError, TypeError) as error:
            raise ValueError(
                f"{caller}: Sequential model {model.name!r} is not built "
                "on an input shape; start it with `keras.Input(...)`."
            ) from error
        inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype)
        outputs = inputs
        for layer in model.layers:
            outputs = call_function(layer, outputs)
    else:
        clone = keras.models.clone_model(
            model,
            clone_function=lambda layer: layer,
            call_function=call_function,
        )
        inputs, outputs = clone.input, clone.output
    return keras.Model(
        inputs, (outputs, list(local)), name=f"{model.name}_preactivations"
    )
