"""Which layers NEq watches, and the per-layer state it keeps for them.

A neuron is a Dense unit, a convolution output channel or a
BatchNormalization channel (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022,
arXiv 2207.09455, Sec. 3); `keras_serene.core.neurons` says which weights
belong to which neuron. By default every layer holding neurons is watched
except the model's output layer(s): the authors' Swin-B code (`EIDOSLAB/NEq`,
`src/models`) hooks `nn.Linear` and `nn.LayerNorm` and leaves out only the
classification head, and their CNN code hooks every `nn.Conv2d` and
`nn.BatchNorm2d`. An output layer is the layer producing a model output, or
the neuron layer feeding it through weightless layers (`Dense -> Softmax`).
`layers` (regexes a layer name must match) selects, `exclude` removes; an
output layer named by `layers` is watched.

The unwatched neuron layers stay *passive* records: they count in the
denominator of `backprop_flops_saved` and are never frozen. Each record's
backward FLOPs come from its shapes, with the share that carries the
gradient to its input apart: a skipped layer still spends that share when
a layer before it trains (`upstream_layers` reads which layers feed which
from the functional graph, `keras_serene.slimming.graph`).
"""

import re

import keras
import numpy as np

from keras_serene.core import layer_table
from keras_serene.core import neurons as neurons_lib
from keras_serene.neq.subset import CALLER
from keras_serene.slimming.graph import read_graph


class NeuronRecord:
    """One layer whose neurons may be frozen, and its NEq state."""

    def __init__(self, layer, weights):
        self.layer = layer
        self.weights = weights
        self.size = weights[0].num_neurons
        self.axis = layer_table.entry_for(layer).neuron_axis(layer)
        ids = {id(w.variable) for w in weights}
        # A layer whose every trainable variable is a neuron weight can
        # have them made non-trainable for an epoch (no weight gradients).
        self.skippable = ids == {id(v) for v in layer.trainable_variables}
        self.previous = None  # per probe batch: float32 neuron maps
        self.positions = 1
        self.flops = 0.0
        self.input_flops = 0.0
        self.reset()

    def reset(self):
        self.phi = np.ones(self.size)  # phi^(-1) = 1, as the code's buffer
        self.state = np.zeros(self.size)
        self.velocity = np.zeros(self.size)
        self.frozen = np.zeros(self.size, dtype=bool)
        self.applied = np.zeros(self.size, dtype=bool)
        self.release()
        self.flops = backprop_flops(self.layer, self.weights, self.positions)
        self.input_flops = input_gradient_flops(
            self.layer, self.weights, self.positions
        )

    def release(self):
        """Forgets which neurons were frozen without being at equilibrium
        (`EquilibriumFreezing(skip_threshold=...)` froze their layer whole)
        and for how many epochs."""
        self.forced = np.zeros(self.size, dtype=bool)
        self.frozen_for = 0


def _kernel_macs(layer, weight, positions):
    """Forward multiply-accumulates per sample of one kernel."""
    kernel_positions = positions
    if weight.kind == "second_last":  # transposed conv: input positions
        kernel_positions = positions / np.prod(getattr(layer, "strides", (1,)))
    return kernel_positions * np.prod(weight.variable.shape)


def backprop_flops(layer, weights, positions):
    """Backward FLOPs per sample: 4 x MACs per kernel, 2 per map element.

    A kernel's weight and input gradients cost one MAC (two FLOPs) each per
    forward MAC; a per-channel vector (bias, gamma, beta) one
    multiply-accumulate per output element.
    """
    size = weights[0].num_neurons
    flops = 0.0
    for weight in weights:
        if weight.kind == "vector":
            flops += 2.0 * positions * size
        else:
            flops += 4.0 * _kernel_macs(layer, weight, positions)
    return float(flops)


def input_gradient_flops(layer, weights, positions):
    """The share of `backprop_flops` that carries the gradient to the
    layer's input (two FLOPs per forward MAC of each kernel): still spent
    on a skipped layer when a layer before it trains."""
    return float(
        sum(
            2.0 * _kernel_macs(layer, w, positions)
            for w in weights
            if w.kind != "vector"
        )
    )


def upstream_layers(model):
    """`id(layer)` -> the layers whose outputs reach that layer's inputs.

    Read from the functional graph (nested models inlined); None when the
    model has none (a subclassed model).
    """
    try:
        graph = read_graph(model)
    except (TypeError, ValueError):
        return None
    before = {}  # tensor id -> layers upstream of it, itself included
    found = {}
    for node in graph.nodes:
        reaching = set()
        for tid in node.inputs:
            reaching |= before.get(tid, set())
        found.setdefault(id(node.layer), set()).update(reaching)
        for tid in node.outputs:
            before[tid] = reaching | {node.layer}
    return {key: list(layers) for key, layers in found.items()}


def _single_output(layer):
    try:
        return keras.tree.flatten(layer.output)
    except (AttributeError, ValueError):  # shared layer, or never called
        return None


def output_layers(model):
    """Names of the neuron layers that produce (or feed) a model output."""
    holds_neurons = {id(layer) for layer, _ in neurons_lib.neuron_layers(model)}
    layers = list(model.layers)
    producer = {}
    for layer in layers:
        for tensor in _single_output(layer) or ():
            producer[id(tensor)] = layer
    try:
        outputs = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError):
        outputs = []
    starts = [producer.get(id(t)) for t in outputs]
    if not any(starts) and layers:  # a Sequential model without Input
        starts = [layers[-1]]
    found = set()
    for layer in starts:
        while layer is not None and id(layer) not in holds_neurons:
            if layer.weights:
                layer = None  # a layer with weights that holds no neurons
                break
            try:
                inputs = keras.tree.flatten(layer.input)
            except (AttributeError, ValueError):
                inputs = []
            if len(inputs) != 1:
                layer = None
                break
            layer = producer.get(id(inputs[0]))
        if layer is not None:
            found.add(layer.name)
    return found


def select_records(model, layers=None, exclude=None):
    """`(watched, passive)` records of `model`'s neuron layers.

    Args:
        model: the model.
        layers: None (every neuron layer but the output ones) or a list of
            regexes: a layer is watched when `re.search` finds one in its
            name.
        exclude: None or a list of regexes: layers matching one are not
            watched.
    """
    outputs = output_layers(model) if layers is None else set()
    watched, passive = [], []
    for layer, weights in neurons_lib.neuron_layers(model):
        record = NeuronRecord(layer, weights)
        name = layer.name
        chosen = (
            name not in outputs
            if layers is None
            else any(re.search(p, name) for p in layers)
        )
        if exclude and any(re.search(p, name) for p in exclude):
            chosen = False
        (watched if chosen else passive).append(record)
    if not watched:
        names = [r.layer.name for r in passive]
        raise ValueError(
            f"{CALLER}: `layers` and `exclude` must leave a layer of model "
            f"{model.name!r} to watch (layers holding neurons: {names}; "
            f"output layers, not watched by default: {sorted(outputs)}). "
            f"Received: layers={layers!r}, exclude={exclude!r}"
        )
    return watched, passive
